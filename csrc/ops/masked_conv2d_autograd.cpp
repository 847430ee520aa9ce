// Autograd of masked_conv2d, in C++ (as masked_linear's) so that a call does not pay for a
// Python backward node. The gradients come from the masked_conv2d_backward op; with
// create_graph that op is called through its own autograd registration (sparsenas/ops/
// masked_conv.py), which refuses double backward with a clear error rather than differentiating
// through the kernel's inner calls.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace sparsenas {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_masked_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                              const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                              c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                              bool packed) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparsenas::masked_conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const c10::optional<at::Tensor>&, c10::IntArrayRef,
                                         c10::IntArrayRef, c10::IntArrayRef, int64_t, bool)>();
  return op.call(x, weight, mask, bias, stride, padding, dilation, groups, packed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_masked_conv2d_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
    c10::OptionalIntArrayRef bias_sizes, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, bool packed, std::array<bool, 4> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparsenas::masked_conv2d_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, c10::OptionalIntArrayRef, c10::IntArrayRef,
                           c10::IntArrayRef, c10::IntArrayRef, int64_t, bool, std::array<bool, 4>)>();
  return op.call(grad, x, weight, mask, bias_sizes, stride, padding, dilation, groups, packed,
                 output_mask);
}

class MaskedConv2dFunction : public torch::autograd::Function<MaskedConv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& mask, const c10::optional<at::Tensor>& bias,
                            c10::IntArrayRef stride, c10::IntArrayRef padding,
                            c10::IntArrayRef dilation, int64_t groups, bool packed) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = call_masked_conv2d(x, weight, mask, bias, stride, padding, dilation, groups, packed);
    ctx->save_for_backward({x, weight, mask});
    const bool has_bias = bias.has_value() && bias->defined();
    // An absent bias has no input edge (needs_input_grad(3) would be out of range).
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["bias_sizes"] = has_bias ? bias->sizes().vec() : std::vector<int64_t>{};
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["packed"] = packed;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &mask = saved[2];
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const bool packed = ctx->saved_data["packed"].toBool();
    const std::array<bool, 4> output_mask{
        ctx->needs_input_grad(0), ctx->needs_input_grad(1),
        ctx->needs_input_grad(2) && mask.is_floating_point(),
        has_bias && ctx->needs_input_grad(3)};
    const auto bias_sizes = ctx->saved_data["bias_sizes"].toIntVector();
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const auto dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    auto run = [&] {
      return call_masked_conv2d_backward(
          grads[0], x, weight, mask,
          has_bias ? c10::OptionalIntArrayRef(bias_sizes) : c10::OptionalIntArrayRef(), stride,
          padding, dilation, groups, packed, output_mask);
    };
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> parts;
    if (at::GradMode::is_enabled()) {
      parts = run();
    } else {
      // No graph to build: straight to the kernel, past the op's own autograd registration.
      at::AutoDispatchBelowADInplaceOrView guard;
      parts = run();
    }
    auto wanted = [&](int i, const at::Tensor& t) { return output_mask[i] ? t : at::Tensor(); };
    return {wanted(0, std::get<0>(parts)), wanted(1, std::get<1>(parts)),
            wanted(2, std::get<2>(parts)), wanted(3, std::get<3>(parts)), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor masked_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& mask, const c10::optional<at::Tensor>& bias,
                                  c10::IntArrayRef stride, c10::IntArrayRef padding,
                                  c10::IntArrayRef dilation, int64_t groups, bool packed) {
  return MaskedConv2dFunction::apply(x, weight, mask, bias, stride, padding, dilation, groups,
                                     packed);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsenas, Autograd, m) {
  m.impl("masked_conv2d", &masked_conv2d_autograd);
}

}  // namespace sparsenas
