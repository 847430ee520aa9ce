#include "ops/sparse_linear.h"

#include <limits>

#include "common/checks.h"

namespace sparsenas {
namespace {

void check_x_and_bias(const char* op, const at::Tensor& x, const at::Tensor& values,
                      const c10::optional<at::Tensor>& bias, int64_t out_features) {
  check_floating(op, "x", x);
  check_same_dtype(op, "values", values, "x", x);
  check_same_device(op, "values", values, "x", x);
  TORCH_CHECK_VALUE(x.dim() >= 1, op, "(): argument 'x' must have at least one dimension, got ",
                    describe(x));
  if (bias.has_value() && bias->defined()) {
    check_same_dtype(op, "bias", *bias, "x", x);
    check_same_device(op, "bias", *bias, "x", x);
    check_dim(op, "bias", *bias, 1, "[out]");
    check_size(op, "bias", *bias, 0, out_features, "out_features, from the sparse weight");
  }
}

SparseLinearGeometry geometry(const at::Tensor& x, int64_t out_features) {
  SparseLinearGeometry g;
  g.in_features = x.size(-1);
  g.out_features = out_features;
  g.rows = x.numel() / std::max<int64_t>(g.in_features, 1);
  if (g.in_features == 0) {
    g.rows = 1;
    for (int64_t d = 0; d + 1 < x.dim(); ++d) g.rows *= x.size(d);
  }
  g.group_n = 0;
  g.output_shape = x.sizes().vec();
  g.output_shape.back() = out_features;
  return g;
}

}  // namespace

SparseLinearGeometry check_sparse_linear(const char* op, const at::Tensor& x,
                                         const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                         const at::Tensor& values,
                                         const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_TYPE(row_ptr.scalar_type() == at::kInt, op,
                   "(): argument 'row_ptr' must be int32, got ", describe(row_ptr));
  TORCH_CHECK_TYPE(col_idx.scalar_type() == at::kInt, op,
                   "(): argument 'col_idx' must be int32, got ", describe(col_idx));
  check_dim(op, "row_ptr", row_ptr, 1, "[out + 1]");
  check_dim(op, "col_idx", col_idx, 1, "[nnz]");
  check_dim(op, "values", values, 1, "[nnz]");
  TORCH_CHECK_VALUE(row_ptr.size(0) >= 1, op,
                    "(): argument 'row_ptr' must have out + 1 >= 1 entries, got ", describe(row_ptr));
  check_size(op, "values", values, 0, col_idx.size(0), "nnz, from col_idx");
  check_same_device(op, "row_ptr", row_ptr, "x", x);
  check_same_device(op, "col_idx", col_idx, "x", x);
  const int64_t out_features = row_ptr.size(0) - 1;
  check_x_and_bias(op, x, values, bias, out_features);
  TORCH_CHECK_VALUE(x.size(-1) <= std::numeric_limits<int32_t>::max(), op,
                    "(): argument 'x' has more in_features than int32 column indices can address, "
                    "got ", describe(x));
  return geometry(x, out_features);
}

SparseLinearGeometry check_nm_linear(const char* op, const at::Tensor& x, const at::Tensor& values,
                                     const at::Tensor& indices, int64_t m,
                                     const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(m >= 1 && m <= 256, op, "(): argument 'm' must be in [1, 256], got ", m);
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kByte, op,
                   "(): argument 'indices' must be uint8, got ", describe(indices));
  check_dim(op, "values", values, 2, "[out, in / M * N]");
  check_dim(op, "indices", indices, 2, "[out, in / M * N]");
  check_same_device(op, "indices", indices, "x", x);
  check_x_and_bias(op, x, values, bias, values.size(0));
  check_size(op, "indices", indices, 0, values.size(0), "out_features, from values");
  check_size(op, "indices", indices, 1, values.size(1), "in / M * N, from values");
  const int64_t in = x.size(-1);
  TORCH_CHECK_VALUE(in % m == 0, op, "(): argument 'm' (", m,
                    ") must divide in_features, x's last dimension; got ", describe(x));
  auto g = geometry(x, values.size(0));
  const int64_t groups = in / m;
  if (groups == 0) {
    check_size(op, "values", values, 1, 0, "in / M * N, from x and m");
    g.group_n = 0;
  } else {
    TORCH_CHECK_VALUE(values.size(1) % groups == 0 && values.size(1) / groups <= m, op,
                      "(): argument 'values' must have N * in / M columns with N <= M (in = ", in,
                      ", M = ", m, "), got ", describe(values));
    g.group_n = values.size(1) / groups;
  }
  return g;
}

void check_sparse_grad(const char* op, const at::Tensor& grad, const at::Tensor& x,
                       const SparseLinearGeometry& g) {
  check_same_dtype(op, "grad", grad, "x", x);
  check_same_device(op, "grad", grad, "x", x);
  TORCH_CHECK_VALUE(grad.sizes().vec() == g.output_shape, op,
                    "(): argument 'grad' must have the output's shape [..., out_features], got ",
                    describe(grad));
}

void check_nm_mask(const char* op, const at::Tensor& weight, int64_t n, int64_t m) {
  check_floating(op, "weight", weight);
  check_dim(op, "weight", weight, 2, "[out, in]");
  TORCH_CHECK_VALUE(m >= 1, op, "(): argument 'm' must be >= 1, got ", m);
  TORCH_CHECK_VALUE(n >= 0 && n <= m, op, "(): argument 'n' must be in [0, m] (m = ", m, "), got ",
                    n);
  TORCH_CHECK_VALUE(weight.size(1) % m == 0, op, "(): argument 'm' (", m,
                    ") must divide in_features, weight's dimension 1; got ", describe(weight));
}

}  // namespace sparsenas
