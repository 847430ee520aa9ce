// Autograd of masked_linear, in C++ so that a call at batch 1 does not pay for a Python backward
// node (the formula is the same on every device; the kernels are the gradient ops).
//   ∂L/∂x = grad (W ⊙ M),  ∂L/∂W = (gradᵀ x) ⊙ M (summed over K for a shared W),
//   ∂L/∂M = (gradᵀ x) ⊙ W,  ∂L/∂b = grad summed over rows (per candidate for a [K, out] bias).
// With create_graph the gradients are built from differentiable ATen ops instead, so that they
// can be differentiated again (the gradient ops have no derivatives of their own).
// A single-mask training step on CPU may keep W ⊙ M from the forward for the input gradient
// (cpu/masked_weight.h), where that is measured faster than the gradient op.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "cpu/masked_weight.h"

namespace sparsenas {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_masked_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                              const c10::optional<at::Tensor>& bias, bool packed) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparsenas::masked_linear", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const c10::optional<at::Tensor>&, bool)>();
  return op.call(x, weight, mask, bias, packed);
}

at::Tensor call_grad_input(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& mask,
                           bool packed) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparsenas::masked_linear_grad_input", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(grad, weight, mask, packed);
}

std::tuple<at::Tensor, at::Tensor> call_grad_weight(const at::Tensor& grad, const at::Tensor& x,
                                                    const at::Tensor& weight, const at::Tensor& mask,
                                                    bool packed, bool weight_grad, bool mask_grad) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparsenas::masked_linear_grad_weight", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, bool, bool, bool)>();
  return op.call(grad, x, weight, mask, packed, weight_grad, mask_grad);
}

// The mask as a tensor of the weight's dtype (a packed row unpacked to `in` columns).
at::Tensor dense_mask(const at::Tensor& mask, int64_t in, at::ScalarType dtype, bool packed) {
  if (!packed) return mask.to(dtype);
  auto shifts = at::arange(8, mask.options());
  auto bits = mask.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and(1);
  auto sizes = mask.sizes().vec();
  sizes.back() *= 8;
  return bits.reshape(sizes).narrow(-1, 0, in).to(dtype);
}

// x [K?, ..., f] -> [K?, rows, f] (K kept in the candidate form).
at::Tensor as_rows(const at::Tensor& t, bool candidate_form) {
  const auto sizes = t.sizes();
  const int64_t first = candidate_form ? 1 : 0;
  int64_t rows = 1;
  for (int64_t d = first; d + 1 < t.dim(); ++d) rows *= sizes[d];
  return candidate_form ? t.reshape({sizes[0], rows, sizes.back()}) : t.reshape({rows, sizes.back()});
}

class MaskedLinearFunction : public torch::autograd::Function<MaskedLinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& mask, const c10::optional<at::Tensor>& bias,
                            bool packed, bool keep_masked_weight) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out, kept;
    if (keep_masked_weight) {
      kept = cpu::masked_weight(weight, mask, packed);
      out = at::linear(x, kept, bias);
    } else {
      out = call_masked_linear(x, weight, mask, bias, packed);
    }
    ctx->save_for_backward({x, weight, mask, kept});
    ctx->saved_data["packed"] = packed;
    const bool has_bias = bias.has_value() && bias->defined();
    // An absent bias has no input edge (needs_input_grad(3) would be out of range).
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["bias_per_candidate"] = has_bias && bias->dim() == 2;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &mask = saved[2], &kept = saved[3];
    const bool packed = ctx->saved_data["packed"].toBool();
    const bool candidate_form = mask.dim() == 3;
    const at::Tensor grad = grads[0].contiguous();
    const bool needs_x = ctx->needs_input_grad(0), needs_weight = ctx->needs_input_grad(1),
               needs_mask = ctx->needs_input_grad(2), needs_bias = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(3);
    at::Tensor grad_x, grad_weight, grad_mask, grad_bias;
    if (at::GradMode::is_enabled()) {
      const auto effective = dense_mask(mask, weight.size(-1), weight.scalar_type(), packed);
      const auto grad_rows = as_rows(grad, candidate_form);
      if (needs_x) grad_x = at::matmul(grad_rows, weight * effective).reshape(x.sizes());
      if (needs_weight || needs_mask) {
        const auto grad_effective = at::matmul(grad_rows.transpose(-1, -2), as_rows(x, candidate_form));
        if (needs_weight) {
          grad_weight = grad_effective * effective;
          if (grad_weight.dim() > weight.dim()) grad_weight = grad_weight.sum(0);
        }
        if (needs_mask) grad_mask = grad_effective * weight;
      }
    } else {
      if (needs_x) grad_x = kept.defined() ? at::matmul(grad, kept) : call_grad_input(grad, weight, mask, packed);
      if (needs_weight || needs_mask) {
        auto parts = call_grad_weight(grad, x, weight, mask, packed, needs_weight, needs_mask);
        if (needs_weight) grad_weight = std::get<0>(parts);
        if (needs_mask) grad_mask = std::get<1>(parts);
      }
    }
    if (needs_bias) {
      const auto grad_rows = as_rows(grad, candidate_form);
      if (ctx->saved_data["bias_per_candidate"].toBool()) grad_bias = grad_rows.sum(1);
      else if (candidate_form) grad_bias = grad_rows.sum({0, 1});
      else grad_bias = grad_rows.sum(0);
    }
    return {grad_x, grad_weight, grad_mask, grad_bias, at::Tensor(), at::Tensor()};
  }
};

// Only for a step that will need the input gradient, of one mask, on plain CPU tensors (a fake
// tensor of torch.compile has the Python key and runs the op itself).
bool keeps_masked_weight(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                         const c10::optional<at::Tensor>& bias, bool packed) {
  if (mask.dim() != 2 || !at::GradMode::is_enabled() || !x.requires_grad()) return false;
  for (const at::Tensor* t : {&x, &weight, &mask}) {
    if (!t->is_cpu() || t->layout() != at::kStrided || t->key_set().has(c10::DispatchKey::Python))
      return false;
  }
  return cpu::keeps_masked_weight(x, weight, mask, bias, packed);
}

at::Tensor masked_linear_autograd(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& mask, const c10::optional<at::Tensor>& bias,
                                  bool packed) {
  return MaskedLinearFunction::apply(x, weight, mask, bias, packed,
                                     keeps_masked_weight(x, weight, mask, bias, packed));
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsenas, Autograd, m) {
  m.impl("masked_linear", &masked_linear_autograd);
}

}  // namespace sparsenas
