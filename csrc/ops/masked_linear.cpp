#include "ops/masked_linear.h"

#include "common/checks.h"

namespace sparsenas {

MaskedLinearGeometry check_masked_linear(const char* op, const at::Tensor& x,
                                         const at::Tensor& weight, const at::Tensor& mask,
                                         const c10::optional<at::Tensor>& bias, bool packed) {
  check_floating(op, "x", x);
  check_same_dtype(op, "weight", weight, "x", x);
  check_same_device(op, "weight", weight, "x", x);
  check_same_device(op, "mask", mask, "x", x);
  if (packed) {
    TORCH_CHECK_TYPE(mask.scalar_type() == at::kByte, op,
                     "(): argument 'mask' must be a uint8 bit-packed mask when packed=True, got ",
                     describe(mask));
  } else {
    TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool || mask.scalar_type() == at::kByte ||
                         mask.scalar_type() == weight.scalar_type(),
                     op, "(): argument 'mask' must be bool, uint8 or ", weight.scalar_type(),
                     " (a soft mask with the weight's dtype), got ", describe(mask));
  }
  TORCH_CHECK_VALUE(mask.dim() == 2 || mask.dim() == 3, op,
                    "(): argument 'mask' must be [out, in] or [K, out, in] (K candidates), got ",
                    describe(mask));
  TORCH_CHECK_VALUE(x.dim() >= 1, op, "(): argument 'x' must have at least one dimension, got ",
                    describe(x));

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
  check_size(op, "x", x, x.dim() - 1, g.in_features, "in_features, from weight");
  if (g.candidate_form) {
    TORCH_CHECK_VALUE(x.dim() >= 2, op,
                      "(): argument 'x' must be [K, ..., in] with K candidate masks, got ",
                      describe(x));
    check_size(op, "x", x, 0, g.candidates, "K, from mask");
  }
  g.bias_per_candidate = false;
  if (bias.has_value() && bias->defined()) {
    const at::Tensor& b = *bias;
    check_same_dtype(op, "bias", b, "x", x);
    check_same_device(op, "bias", b, "x", x);
    TORCH_CHECK_VALUE(b.dim() == 1 || (g.candidate_form && b.dim() == 2), op,
                      "(): argument 'bias' must be [out]", g.candidate_form ? " or [K, out]" : "",
                      ", got ", describe(b));
    g.bias_per_candidate = b.dim() == 2;
    if (g.bias_per_candidate) check_size(op, "bias", b, 0, g.candidates, "K, from mask");
    check_size(op, "bias", b, b.dim() - 1, g.out_features, "out_features, from weight");
  }
  g.output_shape = x.sizes().vec();
  g.output_shape.back() = g.out_features;
  int64_t rows = 1;
  for (int64_t d = g.candidate_form ? 1 : 0; d < x.dim() - 1; ++d) rows *= x.size(d);
  g.rows = rows;
  return g;
}

}  // namespace sparsenas
