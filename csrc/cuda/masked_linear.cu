// CUDA kernels of masked_linear and its gradient ops: shared-memory tiled GEMMs that read W and
// the mask (bytes, bits or soft) in place while loading their tiles, so no masked copy of W is
// ever written. Accumulation is in opmath (float for bfloat16 / float16). The grid is
// (column tile, row tile, candidate), with grid-stride loops over row tiles and candidates.
//
//   forward:      y[k]  [rows, out] = x[k] [rows, in]  · (W ⊙ M)[k]^T   (+ bias)
//   grad_input:   gx[k] [rows, in]  = g[k] [rows, out] · (W ⊙ M)[k]
//   grad_weight:  G[k]  [out, in]   = g[k]^T · x[k];  gw = Σ_k G[k] ⊙ M[k] (shared weight) or
//                 G[k] ⊙ M[k];  gm[k] = G[k] ⊙ W[k]

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/checks.h"
#include "ops/masked_linear.h"

namespace sparsenas {
namespace {

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 16;
constexpr int kThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each
constexpr int kMaxGridYZ = 65535;

enum Kind { kByteMask = 0, kBitMask = 1, kSoftMask = 2 };
enum Mode { kForward = 0, kGradInput = 1, kGradWeight = 2 };

struct Params {
  const void* x;     // [K, rows, in]   forward, grad_weight
  const void* grad;  // [K, rows, out]  grad_input, grad_weight
  const void* weight;
  const void* mask;
  const void* bias;  // forward only; nullptr: none
  void* out;         // y / grad_input / grad_weight
  void* out_mask;    // grad_mask (grad_weight with mask_grad)
  int64_t candidates, rows, in, out_features;
  int64_t weight_stride, mask_stride, mask_ld, bias_stride;
  bool weight_shared;  // grad_weight: sum the masked gradients of all candidates
  bool weight_grad, mask_grad;
};

template <typename scalar_t, int kind>
__device__ __forceinline__ at::opmath_type<scalar_t> mask_at(const Params& p, int64_t k, int64_t o,
                                                             int64_t i) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = k * p.mask_stride + o * p.mask_ld;
  if constexpr (kind == kBitMask) {
    const uint8_t* bits = static_cast<const uint8_t*>(p.mask);
    return acc_t((bits[row + (i >> 3)] >> (i & 7)) & 1);
  } else if constexpr (kind == kByteMask) {
    return acc_t(static_cast<const uint8_t*>(p.mask)[row + i]);
  } else {
    return acc_t(static_cast<const scalar_t*>(p.mask)[row + i]);
  }
}

template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> weight_at(const Params& p, int64_t k, int64_t o,
                                                               int64_t i) {
  return at::opmath_type<scalar_t>(
      static_cast<const scalar_t*>(p.weight)[k * p.weight_stride + o * p.in + i]);
}

// Operand A[m, r] and B[r, n] of candidate k, per mode (r is the reduction index).
template <typename scalar_t, int kind, int mode>
__device__ __forceinline__ at::opmath_type<scalar_t> operand_a(const Params& p, int64_t k, int64_t m,
                                                               int64_t r) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (mode == kForward)
    return acc_t(static_cast<const scalar_t*>(p.x)[(k * p.rows + m) * p.in + r]);
  else if constexpr (mode == kGradInput)
    return acc_t(static_cast<const scalar_t*>(p.grad)[(k * p.rows + m) * p.out_features + r]);
  else
    return acc_t(static_cast<const scalar_t*>(p.grad)[(k * p.rows + r) * p.out_features + m]);
}

template <typename scalar_t, int kind, int mode>
__device__ __forceinline__ at::opmath_type<scalar_t> operand_b(const Params& p, int64_t k, int64_t r,
                                                               int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (mode == kForward)
    return weight_at<scalar_t>(p, k, n, r) * mask_at<scalar_t, kind>(p, k, n, r);
  else if constexpr (mode == kGradInput)
    return weight_at<scalar_t>(p, k, r, n) * mask_at<scalar_t, kind>(p, k, r, n);
  else
    return acc_t(static_cast<const scalar_t*>(p.x)[(k * p.rows + r) * p.in + n]);
}

template <typename scalar_t, int kind, int mode>
__global__ void __launch_bounds__(kThreads) masked_linear_gemm(Params p) {
  using acc_t = at::opmath_type<scalar_t>;
  // Which operand index is contiguous in memory decides the load order (coalesced reads).
  constexpr bool a_r_contiguous = mode != kGradWeight;
  constexpr bool b_r_contiguous = mode == kForward;
  __shared__ acc_t a_tile[kTileK][kTileM + 1];
  __shared__ acc_t b_tile[kTileK][kTileN + 1];
  const int tx = threadIdx.x % 16;
  const int ty = threadIdx.x / 16;
  const int64_t M = mode == kGradWeight ? p.out_features : p.rows;
  const int64_t N = mode == kForward ? p.out_features : p.in;
  const int64_t R = mode == kForward ? p.in : mode == kGradInput ? p.out_features : p.rows;
  const bool sum_candidates = mode == kGradWeight && p.weight_shared;
  const int64_t n0 = int64_t(blockIdx.x) * kTileN;

  for (int64_t m0 = int64_t(blockIdx.y) * kTileM; m0 < M; m0 += int64_t(gridDim.y) * kTileM) {
    const int64_t k_begin = sum_candidates ? 0 : blockIdx.z;
    const int64_t k_step = sum_candidates ? 1 : gridDim.z;
    acc_t total[4][4] = {};
    for (int64_t k = k_begin; k < p.candidates; k += k_step) {
      acc_t acc[4][4] = {};
      for (int64_t r0 = 0; r0 < R; r0 += kTileK) {
        for (int e = threadIdx.x; e < kTileK * kTileM; e += kThreads) {
          const int rr = a_r_contiguous ? e % kTileK : e / kTileM;
          const int mm = a_r_contiguous ? e / kTileK : e % kTileM;
          const int64_t m = m0 + mm, r = r0 + rr;
          a_tile[rr][mm] = (m < M && r < R) ? operand_a<scalar_t, kind, mode>(p, k, m, r) : acc_t(0);
        }
        for (int e = threadIdx.x; e < kTileK * kTileN; e += kThreads) {
          const int rr = b_r_contiguous ? e % kTileK : e / kTileN;
          const int nn = b_r_contiguous ? e / kTileK : e % kTileN;
          const int64_t n = n0 + nn, r = r0 + rr;
          b_tile[rr][nn] = (n < N && r < R) ? operand_b<scalar_t, kind, mode>(p, k, r, n) : acc_t(0);
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < kTileK; ++rr) {
          acc_t a[4], b[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) a[i] = a_tile[rr][ty + 16 * i];
#pragma unroll
          for (int j = 0; j < 4; ++j) b[j] = b_tile[rr][tx + 16 * j];
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
          if (m >= M || n >= N) continue;
          if constexpr (mode == kForward) {
            acc_t value = acc[i][j];
            if (p.bias != nullptr)
              value += acc_t(static_cast<const scalar_t*>(p.bias)[k * p.bias_stride + n]);
            static_cast<scalar_t*>(p.out)[(k * p.rows + m) * N + n] = scalar_t(value);
          } else if constexpr (mode == kGradInput) {
            static_cast<scalar_t*>(p.out)[(k * p.rows + m) * N + n] = scalar_t(acc[i][j]);
          } else {
            if (p.mask_grad)
              static_cast<scalar_t*>(p.out_mask)[(k * M + m) * N + n] =
                  scalar_t(acc[i][j] * weight_at<scalar_t>(p, k, m, n));
            if (p.weight_grad) {
              const acc_t masked = acc[i][j] * mask_at<scalar_t, kind>(p, k, m, n);
              if (sum_candidates) total[i][j] += masked;
              else static_cast<scalar_t*>(p.out)[(k * M + m) * N + n] = scalar_t(masked);
            }
          }
        }
      }
    }
    if (sum_candidates && p.weight_grad) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
          if (m < M && n < N) static_cast<scalar_t*>(p.out)[m * N + n] = scalar_t(total[i][j]);
        }
    }
  }
}

int mask_kind(const at::Tensor& mask, bool packed) {
  if (packed) return kBitMask;
  if (mask.scalar_type() == at::kBool || mask.scalar_type() == at::kByte) return kByteMask;
  return kSoftMask;
}

template <int mode>
void launch(const Params& p, at::ScalarType dtype, int kind, int64_t M, int64_t N, int64_t grid_z) {
  const dim3 grid(static_cast<unsigned>((N + kTileN - 1) / kTileN),
                  static_cast<unsigned>(std::min<int64_t>((M + kTileM - 1) / kTileM, kMaxGridYZ)),
                  static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(grid_z, 1), kMaxGridYZ)));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "masked_linear_cuda", [&] {
    if (kind == kBitMask) masked_linear_gemm<scalar_t, kBitMask, mode><<<grid, kThreads, 0, stream>>>(p);
    else if (kind == kByteMask) masked_linear_gemm<scalar_t, kByteMask, mode><<<grid, kThreads, 0, stream>>>(p);
    else masked_linear_gemm<scalar_t, kSoftMask, mode><<<grid, kThreads, 0, stream>>>(p);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

Params base_params(const MaskedLinearGeometry& g, const at::Tensor& w, const at::Tensor& m,
                   bool packed) {
  Params p{};
  p.weight = w.const_data_ptr();
  p.mask = m.const_data_ptr();
  p.candidates = g.candidates;
  p.rows = g.rows;
  p.in = g.in_features;
  p.out_features = g.out_features;
  p.weight_stride = g.weight_per_candidate ? g.out_features * g.in_features : 0;
  p.mask_ld = packed ? packed_width(g.in_features) : g.in_features;
  p.mask_stride = g.candidate_form ? g.out_features * p.mask_ld : 0;
  return p;
}

at::Tensor masked_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                              const c10::optional<at::Tensor>& bias, bool packed) {
  const auto g = check_masked_linear("masked_linear", x, weight, mask, bias, packed);
  c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto w = weight.contiguous();
  auto m = mask.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  auto b = has_bias ? bias->contiguous() : at::Tensor();
  auto out = at::empty({g.candidates, g.rows, g.out_features}, x.options());
  if (out.numel() == 0) return out.view(g.output_shape);
  Params p = base_params(g, w, m, packed);
  p.x = xc.const_data_ptr();
  p.bias = has_bias ? b.const_data_ptr() : nullptr;
  p.bias_stride = g.bias_per_candidate ? g.out_features : 0;
  p.out = out.data_ptr();
  launch<kForward>(p, x.scalar_type(), mask_kind(mask, packed), g.rows, g.out_features,
                   g.candidates);
  return out.view(g.output_shape);
}

at::Tensor masked_linear_grad_input_cuda(const at::Tensor& grad, const at::Tensor& weight,
                                         const at::Tensor& mask, bool packed) {
  auto g = check_masked_linear_grad_input(grad, weight, mask, packed);
  c10::cuda::CUDAGuard guard(grad.device());
  std::vector<int64_t> shape = grad.sizes().vec();
  shape.back() = g.in_features;
  auto gc = grad.contiguous();
  auto w = weight.contiguous();
  auto m = mask.contiguous();
  auto result = at::empty({g.candidates, g.rows, g.in_features}, grad.options());
  if (result.numel() == 0) return result.view(shape);
  Params p = base_params(g, w, m, packed);
  p.grad = gc.const_data_ptr();
  p.out = result.data_ptr();
  launch<kGradInput>(p, grad.scalar_type(), mask_kind(mask, packed), g.rows, g.in_features,
                     g.candidates);
  return result.view(shape);
}

std::tuple<at::Tensor, at::Tensor> masked_linear_grad_weight_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
    bool packed, bool weight_grad, bool mask_grad) {
  auto g = check_masked_linear_grad_weight(grad, x, weight, mask, packed, mask_grad);
  c10::cuda::CUDAGuard guard(x.device());
  auto grad_weight = weight_grad ? at::empty(weight.sizes(), x.options()) : at::empty({0}, x.options());
  auto grad_mask = mask_grad ? at::empty(mask.sizes(), x.options()) : at::empty({0}, x.options());
  if (g.out_features == 0 || g.in_features == 0 || !(weight_grad || mask_grad))
    return {grad_weight, grad_mask};
  if (g.candidates == 0) return {grad_weight.zero_(), grad_mask};
  auto xc = x.contiguous();
  auto gc = grad.contiguous();
  auto w = weight.contiguous();
  auto m = mask.contiguous();
  Params p = base_params(g, w, m, packed);
  p.x = xc.const_data_ptr();
  p.grad = gc.const_data_ptr();
  p.out = grad_weight.data_ptr();
  p.out_mask = grad_mask.data_ptr();
  p.weight_shared = !g.weight_per_candidate;
  p.weight_grad = weight_grad;
  p.mask_grad = mask_grad;
  // With a shared weight one block sums all candidates of its tile (grad_mask is still written
  // per candidate), so no atomics are needed.
  const int64_t grid_z = p.weight_shared ? 1 : g.candidates;
  launch<kGradWeight>(p, x.scalar_type(), mask_kind(mask, packed), g.out_features, g.in_features,
                      grid_z);
  return {grad_weight, grad_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsenas, CUDA, m) {
  m.impl("masked_linear", &masked_linear_cuda);
  m.impl("masked_linear_grad_input", &masked_linear_grad_input_cuda);
  m.impl("masked_linear_grad_weight", &masked_linear_grad_weight_cuda);
}

}  // namespace sparsenas
