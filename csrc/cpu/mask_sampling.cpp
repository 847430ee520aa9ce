// CPU kernels of the mask sampling ops. Rows run in parallel; each row turns its positions into
// unsigned integer keys in a per-thread buffer (Philox words, order-preserving score keys or
// Gumbel keys) and selects the k smallest in O(n): a histogram of the top key bits finds the
// bucket that holds the k-th key, and only that bucket (O(1) keys for random keys) is ordered.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/philox.h"
#include "ops/mask_sampling.h"

namespace sparsenas {
namespace {

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
// Philox is plain 32x32->64-bit integer arithmetic: AVX-512 / AVX2 run 8 / 4 blocks at once.
#define SPARSENAS_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SPARSENAS_VECTOR_CLONES
#endif

// Primary keys of positions [0, 4 * blocks) of one candidate; blocks are independent, so the
// compiler vectorises the ten Philox rounds across them.
SPARSENAS_VECTOR_CLONES void fill_uniform_keys(uint32_t* __restrict out, int64_t blocks,
                                               const CandidateStream stream) {
  for (int64_t b = 0; b < blocks; ++b) {
    const Philox4 r = philox4x32_10(static_cast<uint32_t>(b), stream.c1, stream.c2, stream.c3,
                                    stream.k0, stream.k1);
    out[4 * b] = r.word[0];
    out[4 * b + 1] = r.word[1];
    out[4 * b + 2] = r.word[2];
    out[4 * b + 3] = r.word[3];
  }
}

template <typename key_t>
struct Entry {
  key_t key;
  uint32_t tie;
  int64_t index;
};

template <typename key_t>
struct Workspace {
  std::vector<key_t> keys;
  std::vector<uint32_t> histogram;
  std::vector<Entry<key_t>> boundary;
  std::vector<uint8_t> row;  // the 0/1 row before packing
};

// Keys that never tie beyond their index (topk, Gumbel): the tie key is constant.
struct NoTieKey {
  static constexpr bool kActive = false;
  uint32_t operator()(int64_t) const { return 0; }
};

// Exact-k uniform: primary keys that tie are ordered by a second Philox word of the position.
struct UniformTieKey {
  static constexpr bool kActive = true;
  CandidateStream stream;
  uint32_t operator()(int64_t j) const { return stream.word_at(j); }
};

int ceil_log2(int64_t n) {
  int bits = 0;
  while ((int64_t(1) << bits) < n) ++bits;
  return bits;
}

// out[j] = 1 for the k smallest positions in the order (keys[j], tie(j), j), else 0.
template <typename key_t, typename TieFn>
void select_smallest(const key_t* keys, int64_t n, int64_t k, const TieFn& tie,
                     Workspace<key_t>& ws, uint8_t* __restrict out) {
  if (k == 0 || k == n) {
    std::memset(out, k == 0 ? 0 : 1, n);
    return;
  }
  // About one bucket per position, so the bucket of the k-th key is small for random keys.
  const int bits = std::clamp(ceil_log2(n), 8, 16);
  const int shift = static_cast<int>(sizeof(key_t)) * 8 - bits;
  ws.histogram.assign(size_t(1) << bits, 0);
  uint32_t* histogram = ws.histogram.data();
  for (int64_t j = 0; j < n; ++j) ++histogram[keys[j] >> shift];
  int64_t below = 0;
  key_t bucket = 0;
  while (below + histogram[bucket] < k) below += histogram[bucket++];
  const int64_t need = k - below;
  if (need == histogram[bucket]) {  // the whole bucket is selected
    for (int64_t j = 0; j < n; ++j) out[j] = (keys[j] >> shift) <= bucket;
    return;
  }
  const key_t bucket_start = bucket << shift;
  for (int64_t j = 0; j < n; ++j) out[j] = keys[j] < bucket_start;
  auto& boundary = ws.boundary;
  boundary.clear();
  for (int64_t j = 0; j < n; ++j) {
    if ((keys[j] >> shift) == bucket) boundary.push_back({keys[j], 0, j});
  }
  const auto by_key = [](const Entry<key_t>& a, const Entry<key_t>& b) {
    return a.key != b.key ? a.key < b.key : a.index < b.index;
  };
  std::sort(boundary.begin(), boundary.end(), by_key);
  if constexpr (TieFn::kActive) {
    // Only a run of equal keys that straddles the cut needs the tie keys.
    const key_t cut = boundary[need - 1].key;
    if (boundary[need].key == cut) {
      auto first = std::partition_point(boundary.begin(), boundary.end(),
                                        [&](const Entry<key_t>& e) { return e.key < cut; });
      auto last = std::partition_point(boundary.begin(), boundary.end(),
                                       [&](const Entry<key_t>& e) { return e.key <= cut; });
      for (auto it = first; it != last; ++it) it->tie = tie(it->index);
      std::sort(first, last, [](const Entry<key_t>& a, const Entry<key_t>& b) {
        return a.tie != b.tie ? a.tie < b.tie : a.index < b.index;
      });
    }
  }
  for (int64_t i = 0; i < need; ++i) out[boundary[i].index] = 1;
}

// Bit-packs a 0/1 row: bit j of byte b is position 8 b + j, padding bits zero.
void pack_row(const uint8_t* row, int64_t n, uint8_t* out) {
  const int64_t full = n / 8;
  for (int64_t b = 0; b < full; ++b) {
    uint64_t bytes;
    std::memcpy(&bytes, row + 8 * b, 8);
    // Byte j of `bytes` (0 or 1) lands on bit 56 + j of the product; no two terms overlap.
    out[b] = static_cast<uint8_t>((bytes * 0x0102040810204080ull) >> 56);
  }
  if (n % 8) {
    uint8_t last = 0;
    for (int64_t j = 8 * full; j < n; ++j) last |= row[j] << (j - 8 * full);
    out[full] = last;
  }
}

// Runs fill_row(r, ws, row_out) for every row in parallel; row_out is the output row itself or
// the workspace row that is then packed.
template <typename key_t, typename FillRow>
void for_each_row(at::Tensor& out, int64_t rows, int64_t n, bool packed, const FillRow& fill_row) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1));
  const int64_t width = mask_width(n, packed);
  uint8_t* base = reinterpret_cast<uint8_t*>(out.data_ptr());
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    Workspace<key_t> ws;
    if (packed) ws.row.resize(n);
    for (int64_t r = begin; r < end; ++r) {
      uint8_t* destination = base + r * width;
      if (packed) {
        fill_row(r, ws, ws.row.data());
        pack_row(ws.row.data(), n, destination);
      } else {
        fill_row(r, ws, destination);
      }
    }
  });
}

at::Tensor uniform_k_mask_cpu(const at::Tensor& k, int64_t n, int64_t seed, int64_t first_candidate,
                              int64_t stream, bool packed) {
  const auto g = check_uniform_k_mask(k, n, first_candidate, stream);
  auto out = empty_mask(k, g, packed);
  const auto counts = k.contiguous();
  const int64_t* k_row = counts.data_ptr<int64_t>();
  const int64_t blocks = (n + 3) / 4;
  for_each_row<uint32_t>(out, g.rows, n, packed, [&](int64_t r, Workspace<uint32_t>& ws, uint8_t* row) {
    const uint64_t candidate = static_cast<uint64_t>(first_candidate + r);
    const CandidateStream primary(seed, candidate, stream, kUniformKey);
    if (k_row[r] != 0 && k_row[r] != n) {
      ws.keys.resize(4 * blocks);
      fill_uniform_keys(ws.keys.data(), blocks, primary);
    }
    const UniformTieKey tie{CandidateStream(seed, candidate, stream, kUniformTieKey)};
    select_smallest(ws.keys.data(), n, k_row[r], tie, ws, row);
  });
  return out;
}

at::Tensor topk_mask_cpu(const at::Tensor& scores, const at::Tensor& k, bool packed) {
  const auto g = check_topk_mask(scores, k);
  auto out = empty_mask(scores, g, packed);
  const auto values = scores.contiguous();
  const auto counts = k.contiguous();
  const int64_t* k_row = counts.data_ptr<int64_t>();
  const int64_t n = g.columns;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scores.scalar_type(), "topk_mask_cpu", [&] {
    // float64 keeps all 64 bits; narrower types are exact as float.
    using key_t = std::conditional_t<std::is_same_v<scalar_t, double>, uint64_t, uint32_t>;
    using wide_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* data = values.data_ptr<scalar_t>();
    for_each_row<key_t>(out, g.rows, n, packed, [&](int64_t r, Workspace<key_t>& ws, uint8_t* row) {
      ws.keys.resize(n);
      const scalar_t* x = data + r * n;
      // Complemented, so the largest score has the smallest key.
      for (int64_t j = 0; j < n; ++j) ws.keys[j] = ~ordered_key(static_cast<wide_t>(x[j]));
      select_smallest(ws.keys.data(), n, k_row[r], NoTieKey{}, ws, row);
    });
  });
  return out;
}

at::Tensor gumbel_topk_mask_cpu(const at::Tensor& weights, const at::Tensor& k, int64_t seed,
                                int64_t first_candidate, int64_t stream, bool packed) {
  const auto g = check_gumbel_topk_mask(weights, k, first_candidate, stream);
  auto out = empty_mask(weights, g, packed);
  const auto values = weights.contiguous();
  const auto counts = k.contiguous();
  const int64_t* k_row = counts.data_ptr<int64_t>();
  const int64_t n = g.columns;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weights.scalar_type(), "gumbel_topk_mask_cpu", [&] {
    const scalar_t* data = values.data_ptr<scalar_t>();
    for_each_row<uint64_t>(out, g.rows, n, packed, [&](int64_t r, Workspace<uint64_t>& ws, uint8_t* row) {
      ws.keys.resize(n);
      const scalar_t* w = data + r * n;
      const CandidateStream draws(seed, static_cast<uint64_t>(first_candidate + r), stream,
                                  kGumbelUniform);
      for (int64_t j = 0; j < n; j += 2) {
        const Philox4 bits = draws.block(static_cast<uint32_t>(j >> 1));
        ws.keys[j] = ~ordered_key(gumbel_key(bits.word[0], bits.word[1], static_cast<double>(w[j])));
        if (j + 1 < n) {
          ws.keys[j + 1] =
              ~ordered_key(gumbel_key(bits.word[2], bits.word[3], static_cast<double>(w[j + 1])));
        }
      }
      select_smallest(ws.keys.data(), n, k_row[r], NoTieKey{}, ws, row);
    });
  });
  return out;
}

at::Tensor philox4x32_10_cpu(const at::Tensor& counter, const at::Tensor& key) {
  check_philox4x32_10(counter, key);
  const auto c = counter.contiguous();
  const auto k = key.contiguous();
  auto out = at::empty_like(c);
  const int64_t* cp = c.data_ptr<int64_t>();
  const int64_t* kp = k.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, c.size(0), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Philox4 r = philox4x32_10(
          static_cast<uint32_t>(cp[4 * i]), static_cast<uint32_t>(cp[4 * i + 1]),
          static_cast<uint32_t>(cp[4 * i + 2]), static_cast<uint32_t>(cp[4 * i + 3]),
          static_cast<uint32_t>(kp[2 * i]), static_cast<uint32_t>(kp[2 * i + 1]));
      for (int w = 0; w < 4; ++w) op[4 * i + w] = r.word[w];
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsenas, CPU, m) {
  m.impl("uniform_k_mask", &uniform_k_mask_cpu);
  m.impl("topk_mask", &topk_mask_cpu);
  m.impl("gumbel_topk_mask", &gumbel_topk_mask_cpu);
  m.impl("philox4x32_10", &philox4x32_10_cpu);
}

}  // namespace sparsenas
