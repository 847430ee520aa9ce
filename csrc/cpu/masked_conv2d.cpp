// CPU kernels of masked_conv2d and its backward: the elementwise mask kernels of the shared
// driver (csrc/ops/masked_conv2d.cpp), which runs at::convolution on masked filter blocks.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops/masked_conv2d.h"

namespace sparsenas {
namespace {

// Calls fn(mask_tag) with the element type that the mask's bytes are read as.
template <typename scalar_t, typename Fn>
void dispatch_mask(const at::Tensor& mask, bool packed, Fn&& fn) {
  if (packed || mask.scalar_type() == at::kByte) fn(uint8_t{});
  else if (mask.scalar_type() == at::kBool) fn(bool{});
  else fn(scalar_t{});
}

template <typename scalar_t, typename mask_t>
inline scalar_t mask_value(const void* mask, int64_t row, int64_t col, int64_t fan_in, bool packed) {
  if (packed) {
    const uint8_t* bits = static_cast<const uint8_t*>(mask) + row * conv_packed_width(fan_in);
    return ((bits[col >> 3] >> (col & 7)) & 1) ? scalar_t(1) : scalar_t(0);
  }
  return static_cast<scalar_t>(static_cast<const mask_t*>(mask)[row * fan_in + col]);
}

void fill_masked_rows_cpu(const at::Tensor& weight, const at::Tensor& mask, bool packed,
                          int64_t row0, const at::Tensor& block) {
  const int64_t rows = block.size(0), fan_in = block.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "masked_conv2d_fill", [&] {
    dispatch_mask<scalar_t>(mask, packed, [&](auto mask_tag) {
      using mask_t = decltype(mask_tag);
      const scalar_t* w = weight.const_data_ptr<scalar_t>();
      const void* m = mask.const_data_ptr();
      scalar_t* out = block.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(fan_in, 1)),
                       [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const scalar_t* wr = w + (row0 + r) * fan_in;
          scalar_t* o = out + r * fan_in;
          if (packed) {
            for (int64_t c = 0; c < fan_in; ++c)
              o[c] = mask_value<scalar_t, mask_t>(m, row0 + r, c, fan_in, true) != scalar_t(0) ? wr[c] : scalar_t(0);
          } else {
            // A plain elementwise product the compiler vectorizes.
            const mask_t* mr = static_cast<const mask_t*>(m) + (row0 + r) * fan_in;
            for (int64_t c = 0; c < fan_in; ++c) o[c] = wr[c] * static_cast<scalar_t>(mr[c]);
          }
        }
      });
    });
  });
}

void combine_weight_grads_cpu(const at::Tensor& g, const at::Tensor& weight, const at::Tensor& mask,
                              bool packed, const at::Tensor& grad_weight, bool accumulate,
                              const at::Tensor& grad_mask) {
  const int64_t rows = g.size(0), fan_in = g.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "masked_conv2d_combine", [&] {
    dispatch_mask<scalar_t>(mask, packed, [&](auto mask_tag) {
      using mask_t = decltype(mask_tag);
      using opmath_t = at::opmath_type<scalar_t>;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const scalar_t* w = weight.const_data_ptr<scalar_t>();
      const void* m = mask.const_data_ptr();
      scalar_t* gw = grad_weight.defined() ? grad_weight.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* gm = grad_mask.defined() ? grad_mask.mutable_data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(fan_in, 1)),
                       [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          for (int64_t c = 0; c < fan_in; ++c) {
            const int64_t i = r * fan_in + c;
            if (gw) {
              const opmath_t v = opmath_t(gp[i]) * opmath_t(mask_value<scalar_t, mask_t>(m, r, c, fan_in, packed));
              gw[i] = accumulate ? scalar_t(opmath_t(gw[i]) + v) : scalar_t(v);
            }
            if (gm) gm[i] = scalar_t(opmath_t(gp[i]) * opmath_t(w[i]));
          }
        }
      });
    });
  });
}

constexpr MaskedConvKernels kCpuKernels{&fill_masked_rows_cpu, &combine_weight_grads_cpu};

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
