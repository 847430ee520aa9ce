// CUDA kernel of masked_linear: one thread per output element, reading W and M in place (no
// masked copy of W is written).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ops/masked_linear.h"

namespace sparsenas {
namespace {

template <typename scalar_t, typename mask_t>
__global__ void masked_linear_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                                     const mask_t* __restrict__ m, scalar_t* __restrict__ out,
                                     int64_t K, int64_t rows, int64_t in, int64_t out_f,
                                     int64_t w_stride, int64_t m_stride, bool packed) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = K * rows * out_f;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t o = idx % out_f;
    const int64_t r = (idx / out_f) % rows;
    const int64_t k = idx / (out_f * rows);
    const scalar_t* xr = x + (k * rows + r) * in;
    const scalar_t* wr = w + k * w_stride + o * in;
    acc_t acc = 0;
    if (packed) {
      const uint8_t* bits = reinterpret_cast<const uint8_t*>(m) + k * m_stride + o * ((in + 7) / 8);
      for (int64_t i = 0; i < in; ++i)
        if ((bits[i >> 3] >> (i & 7)) & 1) acc += acc_t(xr[i]) * acc_t(wr[i]);
    } else {
      const mask_t* mr = m + k * m_stride + o * in;
      for (int64_t i = 0; i < in; ++i) acc += acc_t(xr[i]) * acc_t(wr[i]) * acc_t(mr[i]);
    }
    out[idx] = scalar_t(acc);
  }
}

at::Tensor masked_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                              const c10::optional<at::Tensor>& bias, bool packed) {
  const auto g = check_masked_linear("masked_linear", x, weight, mask, bias, packed);
  c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto w = weight.contiguous();
  auto m = mask.contiguous();
  auto out = at::empty({g.candidates, g.rows, g.out_features}, x.options());
  const int64_t total = out.numel();
  if (total > 0) {
    const int threads = 256;
    const int blocks = static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, 65535));
    auto stream = c10::cuda::getCurrentCUDAStream();
    const int64_t w_stride = g.weight_per_candidate ? g.out_features * g.in_features : 0;
    const int64_t m_stride =
        g.candidate_form ? g.out_features * (packed ? packed_width(g.in_features) : g.in_features) : 0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "masked_linear_cuda", [&] {
      auto launch = [&](auto mask_tag) {
        using mask_t = decltype(mask_tag);
        masked_linear_kernel<scalar_t, mask_t><<<blocks, threads, 0, stream>>>(
            xc.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
            reinterpret_cast<const mask_t*>(m.data_ptr()), out.data_ptr<scalar_t>(), g.candidates,
            g.rows, g.in_features, g.out_features, w_stride, m_stride, packed);
      };
      if (packed || m.scalar_type() == at::kByte) launch(uint8_t{});
      else if (m.scalar_type() == at::kBool) launch(bool{});
      else launch(scalar_t{});
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (bias.has_value() && bias->defined()) {
    out.add_(g.bias_per_candidate ? bias->unsqueeze(1) : bias->view({1, 1, g.out_features}));
  }
  return out.view(g.output_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsenas, CUDA, m) { m.impl("masked_linear", &masked_linear_cuda); }

}  // namespace sparsenas
