#include "ops/ntk.h"

#include <algorithm>
#include <string>

#include "common/checks.h"

namespace sparsenas {
namespace {

void check_common(const char* op, const at::Tensor& out, const at::Tensor& a,
                  const at::Tensor& b) {
  TORCH_CHECK_TYPE(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble, op,
                   "(): argument 'out' must be float32 or float64 (NTK blocks never accumulate in "
                   "reduced precision), got ", describe(out));
  check_floating(op, "a", a);
  check_floating(op, "b", b);
  check_same_device(op, "a", a, "out", out);
  check_same_device(op, "b", b, "out", out);
  check_dim(op, "a", a, 2, "[rows, in_features]");
  check_dim(op, "b", b, 3, "[rows, outputs, out_features]");
  check_size(op, "b", b, 0, a.size(0), "rows, from a");
}

void check_out(const char* op, const at::Tensor& out, const NtkBlockGeometry& g) {
  check_dim(op, "out", out, 2, "[rows, rows] kernel matrix");
  check_size(op, "out", out, 0, g.out_rows, "examples (× outputs unless sum_outputs)");
  check_size(op, "out", out, 1, g.out_rows, "examples (× outputs unless sum_outputs)");
}

}  // namespace

NtkBlockGeometry check_ntk_gram_block(const char* op, const at::Tensor& out, const at::Tensor& a,
                                      const at::Tensor& b, int64_t rows_per_example,
                                      bool sum_outputs) {
  check_common(op, out, a, b);
  TORCH_CHECK_VALUE(rows_per_example >= 1, op,
                    "(): argument 'rows_per_example' must be >= 1, got ", rows_per_example);
  TORCH_CHECK_VALUE(a.size(0) % rows_per_example == 0, op, "(): argument 'a' must have a multiple "
                    "of rows_per_example = ", rows_per_example, " rows, got ", describe(a));
  NtkBlockGeometry g;
  g.rows_per_example = rows_per_example;
  g.examples = a.size(0) / rows_per_example;
  g.outputs = b.size(1);
  g.in_features = a.size(1);
  g.out_features = b.size(2);
  g.out_rows = sum_outputs ? g.examples : g.examples * g.outputs;
  check_out(op, out, g);
  return g;
}

NtkBlockGeometry check_ntk_masked_block(const char* op, const at::Tensor& out,
                                        const at::Tensor& a, const at::Tensor& b,
                                        const at::Tensor& mask, bool sum_outputs) {
  check_common(op, out, a, b);
  check_same_device(op, "mask", mask, "out", out);
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool || mask.scalar_type() == at::kByte ||
                       at::isFloatingType(mask.scalar_type()),
                   op, "(): argument 'mask' must be bool, uint8 or floating, got ", describe(mask));
  check_dim(op, "mask", mask, 2, "[out_features, in_features]");
  check_size(op, "mask", mask, 0, b.size(2), "out_features, from b");
  check_size(op, "mask", mask, 1, a.size(1), "in_features, from a");
  NtkBlockGeometry g;
  g.rows_per_example = 1;
  g.examples = a.size(0);
  g.outputs = b.size(1);
  g.in_features = a.size(1);
  g.out_features = b.size(2);
  g.out_rows = sum_outputs ? g.examples : g.examples * g.outputs;
  check_out(op, out, g);
  return g;
}

NtkBlockGeometry check_ntk_gram_kernel(const char* op, at::TensorList a, at::TensorList b,
                                       at::IntArrayRef rows_per_example, bool sum_outputs,
                                       at::ScalarType dtype) {
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble, op,
                   "(): argument 'dtype' must be float32 or float64 (NTK blocks never accumulate "
                   "in reduced precision), got ", dtype_name(dtype));
  TORCH_CHECK_VALUE(!a.empty(), op, "(): argument 'a' must hold at least one tensor (one per "
                    "linear map), got an empty list");
  TORCH_CHECK_VALUE(b.size() == a.size() && rows_per_example.size() == a.size(), op,
                    "(): arguments 'a', 'b' and 'rows_per_example' must have one entry per linear "
                    "map, got ", a.size(), ", ", b.size(), " and ", rows_per_example.size());
  NtkBlockGeometry first{};
  for (size_t l = 0; l < a.size(); ++l) {
    const std::string a_arg = "a[" + std::to_string(l) + "]";
    const std::string b_arg = "b[" + std::to_string(l) + "]";
    check_floating(op, a_arg.c_str(), a[l]);
    check_floating(op, b_arg.c_str(), b[l]);
    check_same_device(op, a_arg.c_str(), a[l], "a[0]", a[0]);
    check_same_device(op, b_arg.c_str(), b[l], "a[0]", a[0]);
    check_dim(op, a_arg.c_str(), a[l], 2, "[rows, in_features]");
    check_dim(op, b_arg.c_str(), b[l], 3, "[rows, outputs, out_features]");
    check_size(op, b_arg.c_str(), b[l], 0, a[l].size(0), "rows, from a");
    const int64_t T = rows_per_example[l];
    TORCH_CHECK_VALUE(T >= 1, op, "(): argument 'rows_per_example' must hold values >= 1, got ",
                      T, " at ", l);
    TORCH_CHECK_VALUE(a[l].size(0) % T == 0, op, "(): argument '", a_arg, "' must have a multiple "
                      "of rows_per_example[", l, "] = ", T, " rows, got ", describe(a[l]));
    if (l == 0) {
      first.examples = a[0].size(0) / T;
      first.outputs = b[0].size(1);
      first.rows_per_example = T;
      first.in_features = a[0].size(1);
      first.out_features = b[0].size(2);
      first.out_rows = sum_outputs ? first.examples : first.examples * first.outputs;
    }
    check_size(op, a_arg.c_str(), a[l], 0, first.examples * T,
               "examples from a[0] × rows_per_example");
    check_size(op, b_arg.c_str(), b[l], 1, first.outputs, "outputs, from b[0]");
  }
  return first;
}

int64_t ntk_gram_chunk(const NtkBlockGeometry& g, bool sum_outputs, int64_t budget) {
  const int64_t ob = sum_outputs ? 1 : g.outputs;
  const int64_t per_example =
      std::max<int64_t>(1, g.rows_per_example * g.examples * g.rows_per_example * (1 + ob * ob));
  return std::clamp<int64_t>(budget / per_example, 1, std::max<int64_t>(g.examples, 1));
}

}  // namespace sparsenas
