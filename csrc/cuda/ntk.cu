// CUDA kernels of the NTK blocks. The Gram route uses two GEMMs per chunk of examples (at::mm)
// and one fused kernel that adds the bias, multiplies the Grams and reduces the T × T position
// pairs. The masked block is one fused tiled kernel: a 16 × 16 thread block owns a tile of
// example pairs (i, j), stages a[I, l-chunk], a[J, l-chunk] and M[k-chunk, l-chunk] in shared
// memory, keeps s_k = bias + Σ_l M_kl a_il a_jl for a chunk of 16 output units in registers, and
// folds them with the cotangents into the kernel entries of its pair; no per-example gradient
// is ever formed.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ops/ntk.h"

namespace sparsenas {
namespace {

constexpr int64_t kGramBudget = int64_t{1} << 26;
constexpr int kTile = 16;   // examples per tile side (16 × 16 threads)
constexpr int kChunk = 16;  // output units (k) and input features (l) staged per step

// result[(i0+i)*ob + o, j*ob + o'] += Σ_{t,s} (ga[(i,t),(j,s)] + bias) gb[(i,t,o),(j,s,o')]
template <typename scalar_t>
__global__ void combine_grams_kernel(const scalar_t* __restrict__ ga,
                                     const scalar_t* __restrict__ gb, scalar_t* __restrict__ result,
                                     int64_t i0, int64_t count, int64_t n, int64_t T, int64_t ob,
                                     scalar_t bias) {
  const int64_t cols = n * ob;
  const int64_t total = count * ob * cols;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t col = idx % cols;  // (j, o'): consecutive threads read consecutive gb entries
    const int64_t row = idx / cols;  // (i, o)
    const int64_t j = col / ob, o2 = col % ob, i = row / ob, o = row % ob;
    scalar_t acc = 0;
    for (int64_t t = 0; t < T; ++t) {
      const scalar_t* ga_row = ga + (i * T + t) * (n * T) + j * T;
      const scalar_t* gb_row = gb + ((i * T + t) * ob + o) * (n * T * ob) + j * T * ob + o2;
      for (int64_t s = 0; s < T; ++s) acc += (ga_row[s] + bias) * gb_row[s * ob];
    }
    result[(i0 * ob + row) * cols + col] += acc;
  }
}

void ntk_gram_block_cuda(at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                         int64_t rows_per_example, bool bias, bool sum_outputs) {
  const auto g = check_ntk_gram_block("ntk_gram_block_", out, a, b, rows_per_example, sum_outputs);
  if (out.numel() == 0) return;
  c10::cuda::CUDAGuard guard(out.device());
  const int64_t n = g.examples, T = g.rows_per_example, O = g.outputs, p = g.out_features;
  const int64_t ob = sum_outputs ? 1 : O;
  auto A = a.to(out.scalar_type()).contiguous();
  auto B = b.to(out.scalar_type()).contiguous().view({n * T * ob, (sum_outputs ? O : 1) * p});
  // Accumulate straight into out when it is contiguous; else into a scratch matrix added at the end.
  auto result = out.is_contiguous() ? out : at::zeros({g.out_rows, g.out_rows}, out.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t chunk = ntk_gram_chunk(g, sum_outputs, kGramBudget);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ntk_gram_block_cuda", [&] {
    for (int64_t i0 = 0; i0 < n; i0 += chunk) {
      const int64_t count = std::min(chunk, n - i0);
      auto ga = at::mm(A.narrow(0, i0 * T, count * T), A.t()).contiguous();
      auto gb = at::mm(B.narrow(0, i0 * T * ob, count * T * ob), B.t()).contiguous();
      const int64_t total = count * ob * n * ob;
      const int threads = 256;
      const int blocks = static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, 65535));
      combine_grams_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
          ga.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(), result.data_ptr<scalar_t>(), i0, count,
          n, T, ob, bias ? scalar_t(1) : scalar_t(0));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (!result.is_same(out)) out.add_(result);
}

// Block (bx, by) owns examples I = [by*16, +16) × J = [bx*16, +16); thread (ty, tx) owns (i, j).
// a [n, d], b [n, O, p], mask [p, d] (all in scalar_t), result [n ob, n ob].
template <typename scalar_t>
__global__ void masked_block_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                    const scalar_t* __restrict__ mask, scalar_t* __restrict__ result,
                                    int64_t n, int64_t d, int64_t p, int64_t O, bool sum_outputs,
                                    scalar_t bias) {
  __shared__ scalar_t a_i[kTile][kChunk + 1];
  __shared__ scalar_t a_j[kTile][kChunk + 1];
  __shared__ scalar_t m_tile[kChunk][kChunk + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i = blockIdx.y * (int64_t)kTile + ty;
  const int64_t j = blockIdx.x * (int64_t)kTile + tx;
  const bool active = i < n && j < n;
  const int64_t ob = sum_outputs ? 1 : O;
  const int64_t cols = n * ob;
  scalar_t acc = 0;  // sum_outputs: the whole entry (i, j)

  for (int64_t k0 = 0; k0 < p; k0 += kChunk) {
    scalar_t s[kChunk];
#pragma unroll
    for (int kk = 0; kk < kChunk; ++kk) s[kk] = bias;
    for (int64_t l0 = 0; l0 < d; l0 += kChunk) {
      // Coalesced loads: tx runs along l.
      const int64_t l = l0 + tx;
      const int64_t row_i = blockIdx.y * (int64_t)kTile + ty, row_j = blockIdx.x * (int64_t)kTile + ty;
      a_i[ty][tx] = (row_i < n && l < d) ? a[row_i * d + l] : scalar_t(0);
      a_j[ty][tx] = (row_j < n && l < d) ? a[row_j * d + l] : scalar_t(0);
      m_tile[ty][tx] = (k0 + ty < p && l < d) ? mask[(k0 + ty) * d + l] : scalar_t(0);
      __syncthreads();
#pragma unroll
      for (int ll = 0; ll < kChunk; ++ll) {
        const scalar_t aa = a_i[ty][ll] * a_j[tx][ll];
#pragma unroll
        for (int kk = 0; kk < kChunk; ++kk) s[kk] += m_tile[kk][ll] * aa;
      }
      __syncthreads();
    }
    if (!active) continue;
    const int64_t k_count = p - k0 < kChunk ? p - k0 : int64_t{kChunk};
    if (sum_outputs) {
      for (int64_t o = 0; o < O; ++o) {
        const scalar_t* bi = b + (i * O + o) * p + k0;
        const scalar_t* bj = b + (j * O + o) * p + k0;
        for (int64_t kk = 0; kk < k_count; ++kk) acc += s[kk] * bi[kk] * bj[kk];
      }
    } else {
      for (int64_t o = 0; o < O; ++o) {
        const scalar_t* bi = b + (i * O + o) * p + k0;
        for (int64_t o2 = 0; o2 < O; ++o2) {
          const scalar_t* bj = b + (j * O + o2) * p + k0;
          scalar_t v = 0;
          for (int64_t kk = 0; kk < k_count; ++kk) v += s[kk] * bi[kk] * bj[kk];
          result[(i * O + o) * cols + j * O + o2] += v;  // this thread owns the entry
        }
      }
    }
  }
  if (active && sum_outputs) result[i * cols + j] += acc;
}

void ntk_masked_block_cuda(at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                           const at::Tensor& mask, bool bias, bool sum_outputs) {
  const auto g = check_ntk_masked_block("ntk_masked_block_", out, a, b, mask, sum_outputs);
  if (out.numel() == 0) return;
  c10::cuda::CUDAGuard guard(out.device());
  const auto dtype = out.scalar_type();
  auto A = a.to(dtype).contiguous();
  auto B = b.to(dtype).contiguous();
  auto M = mask.to(dtype).contiguous();
  // Accumulate straight into out when it is contiguous; else into a scratch matrix added at the end.
  auto result = out.is_contiguous() ? out : at::zeros({g.out_rows, g.out_rows}, out.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t tiles = (g.examples + kTile - 1) / kTile;
  const dim3 threads(kTile, kTile);
  const dim3 blocks(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(dtype, "ntk_masked_block_cuda", [&] {
    masked_block_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        A.data_ptr<scalar_t>(), B.data_ptr<scalar_t>(), M.data_ptr<scalar_t>(),
        result.data_ptr<scalar_t>(), g.examples, g.in_features, g.out_features, g.outputs,
        sum_outputs, bias ? scalar_t(1) : scalar_t(0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!result.is_same(out)) out.add_(result);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsenas, CUDA, m) {
  m.impl("ntk_gram_block_", &ntk_gram_block_cuda);
  m.impl("ntk_masked_block_", &ntk_masked_block_cuda);
}

}  // namespace sparsenas
