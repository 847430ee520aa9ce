// CPU kernels of masked_conv2d and its backward: the elementwise mask kernels of the shared
// driver (csrc/ops/masked_conv2d.cpp), which runs at::convolution on masked filter blocks. They
// are masked_linear's vectorised mask multiplies, compiled per CPU capability.

#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/masked_linear_kernels.h"
#include "ops/masked_conv2d.h"

namespace sparsenas {
namespace {

// The mask's row width in its own elements (bytes for bool / uint8 / packed masks).
int64_t mask_row_width(bool packed, int64_t fan_in) {
  return packed ? conv_packed_width(fan_in) : fan_in;
}

void fill_masked_rows_cpu(const at::Tensor& weight, const at::Tensor& mask, bool packed,
                          int64_t row0, const at::Tensor& block) {
  const int64_t rows = block.size(0), fan_in = block.size(1);
  const int64_t mask_ld = mask_row_width(packed, fan_in);
  cpu::mask_rows(cpu::kernels(weight.scalar_type(), cpu::mask_kind(mask, packed)),
                 static_cast<const char*>(weight.const_data_ptr()) + row0 * fan_in * weight.element_size(),
                 fan_in,
                 static_cast<const char*>(mask.const_data_ptr()) + row0 * mask_ld * mask.element_size(),
                 mask_ld, block.data_ptr(), fan_in, rows, fan_in, false, false);
}

void combine_weight_grads_cpu(const at::Tensor& g, const at::Tensor& weight, const at::Tensor& mask,
                              bool packed, const at::Tensor& grad_weight, bool accumulate,
                              const at::Tensor& grad_mask) {
  const int64_t rows = g.size(0), fan_in = g.size(1);
  if (grad_weight.defined())
    cpu::mask_rows(cpu::kernels(g.scalar_type(), cpu::mask_kind(mask, packed)), g.const_data_ptr(),
                   fan_in, mask.const_data_ptr(), mask_row_width(packed, fan_in),
                   grad_weight.data_ptr(), fan_in, rows, fan_in, accumulate, false);
  if (grad_mask.defined())
    cpu::mask_rows(cpu::kernels(g.scalar_type(), cpu::MaskKind::kSoft), g.const_data_ptr(), fan_in,
                   weight.const_data_ptr(), fan_in, grad_mask.data_ptr(), fan_in, rows, fan_in,
                   false, false);
}

constexpr MaskedConvKernels kCpuKernels{&fill_masked_rows_cpu, &combine_weight_grads_cpu,
                                        /*group_single_image_candidates=*/true};

at::Tensor masked_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                             const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                             c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                             bool packed) {
  return masked_conv2d_forward(kCpuKernels, x, weight, mask, bias, stride, padding, dilation,
                               groups, packed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
    c10::OptionalIntArrayRef bias_sizes, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, bool packed, std::array<bool, 4> output_mask) {
  return masked_conv2d_backward(kCpuKernels, grad, x, weight, mask, bias_sizes, stride, padding,
                                dilation, groups, packed, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsenas, CPU, m) {
  m.impl("masked_conv2d", &masked_conv2d_cpu);
  m.impl("masked_conv2d_backward", &masked_conv2d_backward_cpu);
}

}  // namespace sparsenas
