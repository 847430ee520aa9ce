#pragma once
// Sparse linear layers that skip the work of zero weights.
//
// sparse_linear:  y = x Wᵀ + b with W [out, in] stored as CSR:
//   row_ptr int32 [out + 1] (row_ptr[0] = 0, non-decreasing, row_ptr[out] = nnz),
//   col_idx int32 [nnz] (column of each stored value, in [0, in)), values [nnz] (x's dtype).
//   x [..., in] -> y [..., out]; in_features is x's last dimension.
// nm_linear:      the same with W in N:M form: in every group of M consecutive inputs of a row at
//   most N weights are stored; values [out, in / M * N] (x's dtype), indices uint8 [out, in / M * N]
//   (each value's position inside its group, in [0, M)), groups in order.
// nm_mask:        bool [out, in]: in every group of M consecutive weights of a row, the N largest
//   |w| (NaN counts as largest; ties go to the lower index).
// *_backward:     (grad_x, grad_values) for output_mask = [x needs grad, values need grad]; an
//   entry whose mask is false is returned undefined (None in Python).

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

namespace sparsenas {

struct SparseLinearGeometry {
  int64_t rows;          // product of x's leading dimensions
  int64_t in_features;   // x's last dimension
  int64_t out_features;  // row_ptr.size(0) - 1, or values.size(0) for N:M
  int64_t group_n;       // N (N:M only)
  std::vector<int64_t> output_shape;
};

SparseLinearGeometry check_sparse_linear(const char* op, const at::Tensor& x,
                                         const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                         const at::Tensor& values,
                                         const c10::optional<at::Tensor>& bias);

SparseLinearGeometry check_nm_linear(const char* op, const at::Tensor& x, const at::Tensor& values,
                                     const at::Tensor& indices, int64_t m,
                                     const c10::optional<at::Tensor>& bias);

// Checks the shape of the output cotangent of a *_backward op against the forward geometry.
void check_sparse_grad(const char* op, const at::Tensor& grad, const at::Tensor& x,
                       const SparseLinearGeometry& g);

void check_nm_mask(const char* op, const at::Tensor& weight, int64_t n, int64_t m);

}  // namespace sparsenas
