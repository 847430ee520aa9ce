#pragma once
// masked_linear: y = x (W ⊙ M)^T + b, for one mask or K candidate masks at once, and its gradient
// ops.
//
// Single form:      x [..., in], weight [out, in],            mask [out, in],    bias [out]
// K-candidate form: x [K, ..., in], weight [out, in] or [K, out, in], mask [K, out, in],
//                   bias [out] or [K, out]; output [K, ..., out].
// mask: bool, uint8 (0/1) or floating with weight's dtype (soft mask); with packed=true a uint8
// bit-packed mask whose last dimension is ceil(in / 8) (bit j of byte b is column 8 b + j).
//
// Gradient ops (grad has the output's shape):
//   masked_linear_grad_input(grad, weight, mask)  = grad (W ⊙ M)                 -> x's shape
//   masked_linear_grad_weight(grad, x, weight, mask, packed, weight_grad, mask_grad)
//     -> ((grad^T x) ⊙ M, summed over K when weight is shared,   weight's shape (or [0]))
//        ((grad^T x) ⊙ W per candidate,                          mask's shape   (or [0]))

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

namespace sparsenas {

struct MaskedLinearGeometry {
  int64_t candidates;         // K (1 in the single form)
  bool candidate_form;        // mask was [K, out, in]
  bool weight_per_candidate;  // weight was [K, out, in]
  bool bias_per_candidate;    // bias was [K, out]
  int64_t rows;               // rows of x per candidate (product of the middle dimensions)
  int64_t in_features;
  int64_t out_features;
  std::vector<int64_t> output_shape;  // of the forward output [(K,) ..., out]
};

// Validates weight and mask (against ref, the tensor whose dtype and device they must share).
MaskedLinearGeometry check_masked_weight(const char* op, const char* ref_arg, const at::Tensor& ref,
                                         const at::Tensor& weight, const at::Tensor& mask,
                                         bool packed);

// Validates a row tensor (x or grad) whose last dimension must be `features`, and fills rows and
// output_shape of g (output_shape: t's shape with the last dimension set to out_features).
void check_masked_rows(const char* op, const char* arg, const at::Tensor& t, int64_t features,
                       const char* what, MaskedLinearGeometry& g);

// Validates the arguments of masked_linear.
MaskedLinearGeometry check_masked_linear(const char* op, const at::Tensor& x,
                                         const at::Tensor& weight, const at::Tensor& mask,
                                         const c10::optional<at::Tensor>& bias, bool packed);

// Validates the arguments of masked_linear_grad_input (grad [(K,) ..., out]).
MaskedLinearGeometry check_masked_linear_grad_input(const at::Tensor& grad,
                                                    const at::Tensor& weight,
                                                    const at::Tensor& mask, bool packed);

// Validates the arguments of masked_linear_grad_weight (grad: the forward output's shape; a mask
// gradient needs a floating, unpacked mask).
MaskedLinearGeometry check_masked_linear_grad_weight(const at::Tensor& grad, const at::Tensor& x,
                                                     const at::Tensor& weight,
                                                     const at::Tensor& mask, bool packed,
                                                     bool mask_grad);

inline int64_t packed_width(int64_t n) { return (n + 7) / 8; }

}  // namespace sparsenas
