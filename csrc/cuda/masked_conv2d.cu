// CUDA kernels of masked_conv2d and its backward: the elementwise mask kernels of the shared
// driver (csrc/ops/masked_conv2d.cpp), which runs at::convolution (cuDNN) on masked filter
// blocks written to one small workspace. Stream order makes reusing that workspace across blocks
// and candidates safe.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ops/masked_conv2d.h"

namespace sparsenas {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)));
}

template <typename scalar_t, typename mask_t>
__device__ __forceinline__ scalar_t mask_value(const void* mask, int64_t row, int64_t col,
                                               int64_t fan_in, bool packed) {
  if (packed) {
    const uint8_t* bits = static_cast<const uint8_t*>(mask) + row * ((fan_in + 7) / 8);
    return ((bits[col >> 3] >> (col & 7)) & 1) ? scalar_t(1) : scalar_t(0);
  }
  return static_cast<scalar_t>(static_cast<const mask_t*>(mask)[row * fan_in + col]);
}

// block[i] = weight[row0 * fan_in + i] * mask(...), consecutive threads on consecutive elements.
template <typename scalar_t, typename mask_t>
__global__ void fill_masked_rows_kernel(const scalar_t* __restrict__ weight, const void* mask,
                                        scalar_t* __restrict__ block, int64_t row0, int64_t total,
                                        int64_t fan_in, bool packed) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = row0 + i / fan_in, c = i % fan_in;
    block[i] = weight[r * fan_in + c] * mask_value<scalar_t, mask_t>(mask, r, c, fan_in, packed);
  }
}

template <typename scalar_t, typename mask_t>
__global__ void combine_weight_grads_kernel(const scalar_t* __restrict__ g,
                                            const scalar_t* __restrict__ weight, const void* mask,
                                            scalar_t* __restrict__ grad_weight, bool accumulate,
                                            scalar_t* __restrict__ grad_mask, int64_t total,
                                            int64_t fan_in, bool packed) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const opmath_t gi = opmath_t(g[i]);
    if (grad_weight) {
      const opmath_t v = gi * opmath_t(mask_value<scalar_t, mask_t>(mask, i / fan_in, i % fan_in, fan_in, packed));
      grad_weight[i] = accumulate ? scalar_t(opmath_t(grad_weight[i]) + v) : scalar_t(v);
    }
    if (grad_mask) grad_mask[i] = scalar_t(gi * opmath_t(weight[i]));
  }
}

template <typename scalar_t, typename Fn>
void dispatch_mask(const at::Tensor& mask, bool packed, Fn&& fn) {
  if (packed || mask.scalar_type() == at::kByte) fn(uint8_t{});
  else if (mask.scalar_type() == at::kBool) fn(bool{});
  else fn(scalar_t{});
}

void fill_masked_rows_cuda(const at::Tensor& weight, const at::Tensor& mask, bool packed,
                           int64_t row0, const at::Tensor& block) {
  const int64_t total = block.numel(), fan_in = block.size(1);
  if (total == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "masked_conv2d_fill_cuda", [&] {
    dispatch_mask<scalar_t>(mask, packed, [&](auto mask_tag) {
      using mask_t = decltype(mask_tag);
      fill_masked_rows_kernel<scalar_t, mask_t><<<blocks_for(total), kThreads, 0, stream>>>(
          weight.const_data_ptr<scalar_t>(), mask.const_data_ptr(), block.mutable_data_ptr<scalar_t>(),
          row0, total, fan_in, packed);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void combine_weight_grads_cuda(const at::Tensor& g, const at::Tensor& weight, const at::Tensor& mask,
                               bool packed, const at::Tensor& grad_weight, bool accumulate,
                               const at::Tensor& grad_mask) {
  const int64_t total = g.numel(), fan_in = g.size(1);
  if (total == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "masked_conv2d_combine_cuda", [&] {
    dispatch_mask<scalar_t>(mask, packed, [&](auto mask_tag) {
      using mask_t = decltype(mask_tag);
      combine_weight_grads_kernel<scalar_t, mask_t><<<blocks_for(total), kThreads, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), mask.const_data_ptr(),
          grad_weight.defined() ? grad_weight.mutable_data_ptr<scalar_t>() : nullptr, accumulate,
          grad_mask.defined() ? grad_mask.mutable_data_ptr<scalar_t>() : nullptr, total, fan_in,
          packed);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

constexpr MaskedConvKernels kCudaKernels{&fill_masked_rows_cuda, &combine_weight_grads_cuda,
                                         /*group_single_image_candidates=*/false};

at::Tensor masked_conv2d_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                              const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                              c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                              bool packed) {
  c10::cuda::CUDAGuard guard(x.device());
  return masked_conv2d_forward(kCudaKernels, x, weight, mask, bias, stride, padding, dilation,
                               groups, packed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
    c10::OptionalIntArrayRef bias_sizes, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, bool packed, std::array<bool, 4> output_mask) {
  c10::cuda::CUDAGuard guard(x.device());
  return masked_conv2d_backward(kCudaKernels, grad, x, weight, mask, bias_sizes, stride, padding,
                                dilation, groups, packed, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsenas, CUDA, m) {
  m.impl("masked_conv2d", &masked_conv2d_cuda);
  m.impl("masked_conv2d_backward", &masked_conv2d_backward_cuda);
}

}  // namespace sparsenas
