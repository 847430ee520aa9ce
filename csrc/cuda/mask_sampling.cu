// CUDA kernels of the mask sampling ops: one thread block per row, a radix select over the row's
// integer keys (8 bits per pass, 256-bin shared-memory histogram, early exit as soon as the
// bucket of the k-th key is selected whole), then one pass that writes the mask (bool, or one
// packed byte per thread and step). Keys are recomputed on every pass instead of stored: Philox
// and the score loads are cheaper than a round trip of a key buffer, and no scratch is needed.
// The selected set is the one of the CPU kernel and of the reference: the k smallest keys in the
// order (key, position).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "common/philox.h"
#include "ops/mask_sampling.h"

namespace sparsenas {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPerThread = 8;  // consecutive positions per thread and step: one packed byte
constexpr int64_t kTile = int64_t(kThreads) * kPerThread;

template <typename key_t>
__device__ __forceinline__ bool same_high_bits(key_t a, key_t b, int shift) {
  return shift >= static_cast<int>(sizeof(key_t) * 8) || (a >> shift) == (b >> shift);
}

// Exact-k uniform: key = 8-bit primary key << 32 | 32-bit tie key (40 significant bits). Half a
// Philox block holds the primary keys of a thread's 8 positions; the tie key is computed only
// where it can matter: when the comparison reaches below bit 32 and the primary key equals the
// prefix's.
struct UniformKeys {
  using key_t = uint64_t;
  static constexpr int kBits = 40;
  uint64_t seed;
  int64_t first_candidate;
  uint32_t stream;
  int64_t n;

  struct Row {
    CandidateStream primary, tie;
    int64_t n;
    __device__ void load(int64_t base, key_t keys[kPerThread], key_t prefix, int low_bit) const {
      const Philox4 block = primary.block(static_cast<uint32_t>(base >> 4));
#pragma unroll
      for (int t = 0; t < kPerThread; ++t) {
        const uint8_t key = byte_of(block, (base & 15) + t);
        uint32_t low = 0;
        if (low_bit < 32 && key == static_cast<uint8_t>(prefix >> 32) && base + t < n) {
          low = tie.word_at(base + t);
        }
        keys[t] = (static_cast<uint64_t>(key) << 32) | low;
      }
    }
  };

  __device__ Row row(int64_t r) const {
    const uint64_t candidate = static_cast<uint64_t>(first_candidate + r);
    return Row{CandidateStream(seed, candidate, stream, kUniformKey),
               CandidateStream(seed, candidate, stream, kUniformTieKey), n};
  }
};

// Top-k of scores: complemented order-preserving keys, so the largest score is the smallest key.
template <typename scalar_t>
struct ScoreKeys {
  using wide_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  using key_t = std::conditional_t<std::is_same_v<scalar_t, double>, uint64_t, uint32_t>;
  static constexpr int kBits = sizeof(key_t) * 8;
  const scalar_t* scores;
  int64_t n;

  struct Row {
    const scalar_t* x;
    int64_t n;
    __device__ void load(int64_t base, key_t keys[kPerThread], key_t, int) const {
#pragma unroll
      for (int t = 0; t < kPerThread; ++t) {
        if (base + t < n) keys[t] = ~ordered_key(static_cast<wide_t>(x[base + t]));
      }
    }
  };

  __device__ Row row(int64_t r) const { return Row{scores + r * n, n}; }
};

// Gumbel-top-k: complemented keys of log(u) / w, two positions per Philox block.
template <typename scalar_t>
struct GumbelKeys {
  using key_t = uint64_t;
  static constexpr int kBits = 64;
  const scalar_t* weights;
  uint64_t seed;
  int64_t first_candidate;
  uint32_t stream;
  int64_t n;

  struct Row {
    CandidateStream draws;
    const scalar_t* w;
    int64_t n;
    __device__ void load(int64_t base, key_t keys[kPerThread], key_t, int) const {
#pragma unroll
      for (int q = 0; q < kPerThread / 2; ++q) {
        const int64_t j = base + 2 * q;
        if (j >= n) break;
        const Philox4 bits = draws.block(static_cast<uint32_t>(j >> 1));
        keys[2 * q] = ~ordered_key(gumbel_key(bits.word[0], bits.word[1], static_cast<double>(w[j])));
        if (j + 1 < n) {
          keys[2 * q + 1] =
              ~ordered_key(gumbel_key(bits.word[2], bits.word[3], static_cast<double>(w[j + 1])));
        }
      }
    }
  };

  __device__ Row row(int64_t r) const {
    return Row{CandidateStream(seed, static_cast<uint64_t>(first_candidate + r), stream,
                               kGumbelUniform),
               weights + r * n, n};
  }
};

// Exclusive prefix sum over the block of one int per thread; `total` gets the block's sum.
__device__ int block_exclusive_sum(int value, int* warp_totals, int& total) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  int inclusive = value;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int other = __shfl_up_sync(0xFFFFFFFFu, inclusive, d);
    if (lane >= d) inclusive += other;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  int before = 0;
  total = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const int t = warp_totals[w];
    if (w < warp) before += t;
    total += t;
  }
  __syncthreads();
  return before + inclusive - value;
}

template <typename Keys>
__global__ void __launch_bounds__(kThreads)
select_kernel(const Keys keys_of, const int64_t* __restrict__ counts, int64_t n,
              uint8_t* __restrict__ out, bool packed) {
  using key_t = typename Keys::key_t;
  constexpr int kBits = Keys::kBits;  // significant bits of a key
  __shared__ unsigned histogram[256];
  __shared__ key_t chosen_prefix;
  __shared__ unsigned chosen_need, chosen_count;
  __shared__ int warp_totals[kWarps];

  const int64_t r = blockIdx.x;
  const int64_t width = packed ? (n + 7) / 8 : n;
  uint8_t* row_out = out + r * width;
  const int64_t k = counts[r];
  if (k == 0 || k == n) {
    for (int64_t i = threadIdx.x; i < width; i += kThreads) {
      uint8_t fill = k == 0 ? 0 : 1;
      if (packed && k == n) fill = (i == width - 1 && n % 8) ? (1u << (n % 8)) - 1 : 0xFF;
      row_out[i] = fill;
    }
    return;
  }
  const auto keys_row = keys_of.row(r);

  // Invariant: the keys whose bits >= shift equal the prefix's hold the remaining `need`
  // selections (1 <= need <= their number); smaller keys are all selected.
  key_t prefix = 0;
  int shift = kBits;
  unsigned need = static_cast<unsigned>(k);
  bool whole_bucket = false;
  while (shift > 0) {
    const int digit_shift = shift - 8;
    for (int i = threadIdx.x; i < 256; i += kThreads) histogram[i] = 0;
    __syncthreads();
    for (int64_t base = int64_t(threadIdx.x) * kPerThread; base < n; base += kTile) {
      key_t keys[kPerThread];
      keys_row.load(base, keys, prefix, digit_shift);
#pragma unroll
      for (int t = 0; t < kPerThread; ++t) {
        if (base + t < n && same_high_bits(keys[t], prefix, shift)) {
          atomicAdd(&histogram[(keys[t] >> digit_shift) & 0xFF], 1u);
        }
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // warp 0 finds the digit of the need-th key
      const int lane = threadIdx.x;
      unsigned bins[8];
      unsigned sum = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        bins[i] = histogram[lane * 8 + i];
        sum += bins[i];
      }
      unsigned inclusive = sum;
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const unsigned other = __shfl_up_sync(0xFFFFFFFFu, inclusive, d);
        if (lane >= d) inclusive += other;
      }
      unsigned before = inclusive - sum;
      if (before < need && need <= inclusive) {
        for (int i = 0; i < 8; ++i) {
          if (before + bins[i] >= need) {
            chosen_prefix = prefix | (static_cast<key_t>(lane * 8 + i) << digit_shift);
            chosen_need = need - before;
            chosen_count = bins[i];
            break;
          }
          before += bins[i];
        }
      }
    }
    __syncthreads();
    prefix = chosen_prefix;
    need = chosen_need;
    shift = digit_shift;
    if (chosen_count == need) {
      whole_bucket = true;
      break;
    }
  }

  // Write pass. Selected: keys below the prefix, and keys equal to it, all of them when the
  // bucket is taken whole, otherwise (equal full keys) the first `need` in position order.
  int taken = 0;  // equal keys already passed, in position order
  for (int64_t tile = 0; tile < n; tile += kTile) {
    const int64_t base = tile + int64_t(threadIdx.x) * kPerThread;
    key_t keys[kPerThread];
    unsigned selected = 0, equal = 0;
    if (base < n) {
      keys_row.load(base, keys, prefix, shift);
#pragma unroll
      for (int t = 0; t < kPerThread; ++t) {
        if (base + t >= n) continue;
        const key_t high = shift >= kBits ? key_t(0) : keys[t] >> shift;
        const key_t cut = shift >= kBits ? key_t(0) : prefix >> shift;
        if (high < cut || (whole_bucket && high == cut)) selected |= 1u << t;
        else if (high == cut) equal |= 1u << t;
      }
    }
    if (!whole_bucket) {  // block-uniform branch
      int total;
      int rank = taken + block_exclusive_sum(__popc(equal), warp_totals, total);
      for (int t = 0; t < kPerThread; ++t) {
        if ((equal >> t) & 1u) {
          if (rank < static_cast<int>(need)) selected |= 1u << t;
          ++rank;
        }
      }
      taken += total;
    }
    if (base < n) {
      if (packed) {
        row_out[base / 8] = static_cast<uint8_t>(selected);
      } else {
#pragma unroll
        for (int t = 0; t < kPerThread; ++t) {
          if (base + t < n) row_out[base + t] = (selected >> t) & 1u;
        }
      }
    }
  }
}

template <typename Keys>
void launch_select(const Keys& keys, const at::Tensor& k, const at::Tensor& out, int64_t rows,
                   int64_t n, bool packed) {
  if (rows == 0 || n == 0) return;
  TORCH_CHECK_VALUE(rows <= INT32_MAX, "mask sampling: at most 2^31 - 1 rows per call, got ", rows);
  select_kernel<Keys><<<static_cast<unsigned>(rows), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      keys, k.data_ptr<int64_t>(), n, reinterpret_cast<uint8_t*>(out.data_ptr()), packed);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor uniform_k_mask_cuda(const at::Tensor& k, int64_t n, int64_t seed, int64_t first_candidate,
                               int64_t stream, bool packed) {
  const auto g = check_uniform_k_mask(k, n, first_candidate, stream);
  c10::cuda::CUDAGuard guard(k.device());
  auto counts = k.contiguous();
  auto out = empty_mask(k, g, packed);
  launch_select(UniformKeys{static_cast<uint64_t>(seed), first_candidate,
                            static_cast<uint32_t>(stream), n},
                counts, out, g.rows, n, packed);
  return out;
}

at::Tensor topk_mask_cuda(const at::Tensor& scores, const at::Tensor& k, bool packed) {
  const auto g = check_topk_mask(scores, k);
  c10::cuda::CUDAGuard guard(scores.device());
  auto values = scores.contiguous();
  auto counts = k.contiguous();
  auto out = empty_mask(scores, g, packed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scores.scalar_type(), "topk_mask_cuda", [&] {
    launch_select(ScoreKeys<scalar_t>{values.data_ptr<scalar_t>(), g.columns}, counts, out, g.rows,
                  g.columns, packed);
  });
  return out;
}

at::Tensor gumbel_topk_mask_cuda(const at::Tensor& weights, const at::Tensor& k, int64_t seed,
                                 int64_t first_candidate, int64_t stream, bool packed) {
  const auto g = check_gumbel_topk_mask(weights, k, first_candidate, stream);
  check_gumbel_weight_values(weights, k);
  c10::cuda::CUDAGuard guard(weights.device());
  auto values = weights.contiguous();
  auto counts = k.contiguous();
  auto out = empty_mask(weights, g, packed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weights.scalar_type(), "gumbel_topk_mask_cuda", [&] {
    launch_select(GumbelKeys<scalar_t>{values.data_ptr<scalar_t>(), static_cast<uint64_t>(seed),
                                       first_candidate, static_cast<uint32_t>(stream), g.columns},
                  counts, out, g.rows, g.columns, packed);
  });
  return out;
}

__global__ void philox_kernel(const int64_t* __restrict__ counter, const int64_t* __restrict__ key,
                              int64_t* __restrict__ out, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Philox4 r = philox4x32_10(
        static_cast<uint32_t>(counter[4 * i]), static_cast<uint32_t>(counter[4 * i + 1]),
        static_cast<uint32_t>(counter[4 * i + 2]), static_cast<uint32_t>(counter[4 * i + 3]),
        static_cast<uint32_t>(key[2 * i]), static_cast<uint32_t>(key[2 * i + 1]));
#pragma unroll
    for (int w = 0; w < 4; ++w) out[4 * i + w] = r.word[w];
  }
}

at::Tensor philox4x32_10_cuda(const at::Tensor& counter, const at::Tensor& key) {
  check_philox4x32_10(counter, key);
  c10::cuda::CUDAGuard guard(counter.device());
  auto c = counter.contiguous();
  auto k = key.contiguous();
  auto out = at::empty_like(c);
  const int64_t count = c.size(0);
  if (count > 0) {
    const int blocks = static_cast<int>(std::min<int64_t>((count + 255) / 256, 65535));
    philox_kernel<<<blocks, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        c.data_ptr<int64_t>(), k.data_ptr<int64_t>(), out.data_ptr<int64_t>(), count);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsenas, CUDA, m) {
  m.impl("uniform_k_mask", &uniform_k_mask_cuda);
  m.impl("topk_mask", &topk_mask_cuda);
  m.impl("gumbel_topk_mask", &gumbel_topk_mask_cuda);
  m.impl("philox4x32_10", &philox4x32_10_cuda);
}

}  // namespace sparsenas
