#include "ops/masked_linear.h"

#include "common/checks.h"

namespace sparsenas {

MaskedLinearGeometry check_masked_weight(const char* op, const char* ref_arg, const at::Tensor& ref,
                                         const at::Tensor& weight, const at::Tensor& mask,
                                         bool packed) {
  check_floating(op, ref_arg, ref);
  check_same_dtype(op, "weight", weight, ref_arg, ref);
  check_same_device(op, "weight", weight, ref_arg, ref);
  check_same_device(op, "mask", mask, ref_arg, ref);
  check_mask_dtype(op, mask, weight, packed);
  TORCH_CHECK_VALUE(mask.dim() == 2 || mask.dim() == 3, op,
                    "(): argument 'mask' must be [out, in] or [K, out, in] (K candidates), got ",
                    describe(mask));
  MaskedLinearGeometry g;
  g.candidate_form = mask.dim() == 3;
  g.candidates = g.candidate_form ? mask.size(0) : 1;
  TORCH_CHECK_VALUE(weight.dim() == 2 || (g.candidate_form && weight.dim() == 3), op,
                    "(): argument 'weight' must be [out, in]",
                    g.candidate_form ? " or [K, out, in]" : "", ", got ", describe(weight));
  g.weight_per_candidate = weight.dim() == 3;
  if (g.weight_per_candidate) check_size(op, "weight", weight, 0, g.candidates, "K, from mask");
  g.out_features = weight.size(-2);
  g.in_features = weight.size(-1);
  const int64_t mask_cols = packed ? packed_width(g.in_features) : g.in_features;
  check_size(op, "mask", mask, mask.dim() - 2, g.out_features, "out_features, from weight");
  check_size(op, "mask", mask, mask.dim() - 1, mask_cols,
             packed ? "ceil(in_features / 8), from weight" : "in_features, from weight");
  g.bias_per_candidate = false;
  g.rows = 0;
  return g;
}

void check_masked_rows(const char* op, const char* arg, const at::Tensor& t, int64_t features,
                       const char* what, MaskedLinearGeometry& g) {
  TORCH_CHECK_VALUE(t.dim() >= 1, op, "(): argument '", arg,
                    "' must have at least one dimension, got ", describe(t));
  check_size(op, arg, t, t.dim() - 1, features, what);
  if (g.candidate_form) {
    TORCH_CHECK_VALUE(t.dim() >= 2, op, "(): argument '", arg,
                      "' must be [K, ..., features] with K candidate masks, got ", describe(t));
    check_size(op, arg, t, 0, g.candidates, "K, from mask");
  }
  int64_t rows = 1;
  for (int64_t d = g.candidate_form ? 1 : 0; d < t.dim() - 1; ++d) rows *= t.size(d);
  g.rows = rows;
  g.output_shape = t.sizes().vec();
  g.output_shape.back() = g.out_features;
}

MaskedLinearGeometry check_masked_linear(const char* op, const at::Tensor& x,
                                         const at::Tensor& weight, const at::Tensor& mask,
                                         const c10::optional<at::Tensor>& bias, bool packed) {
  MaskedLinearGeometry g = check_masked_weight(op, "x", x, weight, mask, packed);
  check_masked_rows(op, "x", x, g.in_features, "in_features, from weight", g);
  g.bias_per_candidate = check_bias(op, bias, x, g.candidate_form, g.candidates, "K, from mask",
                                    g.out_features, "out_features, from weight");
  return g;
}

MaskedLinearGeometry check_masked_linear_grad_input(const at::Tensor& grad,
                                                    const at::Tensor& weight,
                                                    const at::Tensor& mask, bool packed) {
  const char* op = "masked_linear_grad_input";
  MaskedLinearGeometry g = check_masked_weight(op, "grad", grad, weight, mask, packed);
  check_masked_rows(op, "grad", grad, g.out_features, "out_features, from weight", g);
  return g;
}

MaskedLinearGeometry check_masked_linear_grad_weight(const at::Tensor& grad, const at::Tensor& x,
                                                     const at::Tensor& weight,
                                                     const at::Tensor& mask, bool packed,
                                                     bool mask_grad) {
  const char* op = "masked_linear_grad_weight";
  MaskedLinearGeometry g = check_masked_weight(op, "x", x, weight, mask, packed);
  check_masked_rows(op, "x", x, g.in_features, "in_features, from weight", g);
  check_same_dtype(op, "grad", grad, "x", x);
  check_same_device(op, "grad", grad, "x", x);
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef(g.output_shape), op,
                    "(): argument 'grad' must have the output's shape ",
                    at::IntArrayRef(g.output_shape), ", got ", describe(grad));
  TORCH_CHECK_TYPE(!mask_grad || (!packed && at::isFloatingType(mask.scalar_type())), op,
                   "(): argument 'mask' must be a floating (soft) mask when mask_grad=True, got ",
                   describe(mask), packed ? " (packed)" : "");
  return g;
}

}  // namespace sparsenas
