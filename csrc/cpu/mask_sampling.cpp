// CPU kernels of the mask sampling ops. Rows run in parallel; each row turns its positions into
// unsigned integer keys in a per-thread buffer (Philox words, order-preserving score keys or
// Gumbel keys) and selects the k smallest in O(n) with a radix select: a histogram of the top
// key bits finds the bucket that holds the k-th key, and only that bucket is refined.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <iterator>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#include <immintrin.h>
#endif
#include <vector>

#include "common/philox.h"
#include "ops/mask_sampling.h"

namespace sparsenas {
namespace {

// The row loops here and in select_smallest are plain loops that the compiler vectorises; they
// are inlined into per-ISA row functions (see uniform_row).
#define SPARSENAS_ALWAYS_INLINE __attribute__((always_inline)) inline

// Primary 8-bit keys of positions [0, 16 * blocks) of one candidate. Blocks are independent, so
// the ten Philox rounds vectorise across them.
SPARSENAS_ALWAYS_INLINE void fill_uniform_keys(uint8_t* __restrict out, int64_t blocks,
                                               const CandidateStream stream) {
  for (int64_t b = 0; b < blocks; ++b) {
    const Philox4 r = philox4x32_10(static_cast<uint32_t>(b), stream.c1, stream.c2, stream.c3,
                                    stream.k0, stream.k1);
    for (int w = 0; w < 4; ++w) {
      for (int byte = 0; byte < 4; ++byte) {
        out[16 * b + 4 * w + byte] = static_cast<uint8_t>(r.word[w] >> (8 * byte));
      }
    }
  }
}

// All four words of blocks [0, blocks) of one candidate's stream, in block order.
SPARSENAS_ALWAYS_INLINE void fill_words_body(uint32_t* __restrict out, int64_t blocks,
                                             const CandidateStream stream) {
  for (int64_t b = 0; b < blocks; ++b) {
    const Philox4 r = philox4x32_10(static_cast<uint32_t>(b), stream.c1, stream.c2, stream.c3,
                                    stream.k0, stream.k1);
    for (int w = 0; w < 4; ++w) out[4 * b + w] = r.word[w];
  }
}

void fill_words_portable(uint32_t* out, int64_t blocks, const CandidateStream stream) {
  fill_words_body(out, blocks, stream);
}

// What the value checks of gumbel_topk_mask need from a row, gathered while its keys are made:
// whether every weight is finite and non-negative, and how many are positive.
struct WeightCounts {
  bool valid = true;
  int64_t positive = 0;
};

template <typename weight_t>
uint64_t gumbel_position_key(const uint32_t* words, const weight_t* w, int64_t j,
                             WeightCounts& counts) {
  const double weight = static_cast<double>(w[j]);
  counts.valid &= weight >= 0.0 && weight < std::numeric_limits<double>::infinity();
  counts.positive += weight > 0.0;
  return ~ordered_key(gumbel_key(words[2 * j], words[2 * j + 1], weight));
}

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
bool cpu_has_avx512() {
  static const bool avx512 = __builtin_cpu_supports("avx512f") &&
                             __builtin_cpu_supports("avx512dq") &&
                             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return avx512;
}

__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,prefer-vector-width=512"))) void
fill_words_avx512(uint32_t* out, int64_t blocks, const CandidateStream stream) {
  fill_words_body(out, blocks, stream);
}

// Integer work only (the floating-point Gumbel keys are vectorised with explicitly rounded
// operations below, so that they match the reference bit for bit).
void fill_words(uint32_t* out, int64_t blocks, const CandidateStream stream) {
  if (cpu_has_avx512()) fill_words_avx512(out, blocks, stream);
  else fill_words_portable(out, blocks, stream);
}
#else
void fill_words(uint32_t* out, int64_t blocks, const CandidateStream stream) {
  fill_words_portable(out, blocks, stream);
}
#endif

template <typename key_t>
struct Entry {
  key_t key;
  uint32_t tie;
  int64_t index;
};

template <typename key_t>
struct Workspace {
  std::vector<key_t> keys;
  std::vector<Entry<key_t>> boundary;
  std::vector<uint32_t> words;  // Philox output of the row
  std::vector<uint8_t> flags;   // positions in the bucket of the cut
  std::vector<uint8_t> row;    // the 0/1 row before packing
};

// Keys that never tie beyond their index (topk, Gumbel): the tie key is constant.
struct NoTieKey {
  static constexpr bool kActive = false;
  uint32_t operator()(int64_t) const { return 0; }
};

// Exact-k uniform: primary keys that tie are ordered by a 32-bit Philox word of the position.
struct UniformTieKey {
  static constexpr bool kActive = true;
  CandidateStream stream;
  uint32_t operator()(int64_t j) const { return stream.word_at(j); }
};

// Among the 256 buckets of a histogram, the one holding the need-th key: returns the bucket and
// the keys in lower buckets.
inline std::pair<uint32_t, int64_t> find_bucket(const uint32_t* histogram, int64_t need) {
  uint32_t bucket = 0;
  int64_t below = 0;
  while (below + histogram[bucket] < need) below += histogram[bucket++];
  return {bucket, below};
}

// Boundary buckets at most this large are sorted rather than split further.
constexpr size_t kSortBelow = 32;

// out[j] = 1 for the k smallest positions in the order (keys[j], tie(j), j), else 0. A radix
// select, 8 bits at a time: the first pass runs over the row, later ones only over the bucket
// that holds the cut, until it is small enough to sort.
template <typename key_t, typename TieFn>
SPARSENAS_ALWAYS_INLINE void select_smallest(const key_t* keys, int64_t n, int64_t k,
                                             const TieFn& tie, Workspace<key_t>& ws,
                                             uint8_t* __restrict out) {
  if (k == 0 || k == n) {
    std::memset(out, k == 0 ? 0 : 1, n);
    return;
  }
  int shift = static_cast<int>(sizeof(key_t)) * 8 - 8;
  uint32_t bucket;
  int64_t below, bucket_size;
  if constexpr (sizeof(key_t) == 1) {
    // Byte keys: counting passes (vectorised compares) from the expected cut of uniform keys
    // find the cut's byte in a few passes, cheaper than a histogram of the row.
    const auto count_up_to = [&](uint8_t c) {  // keys <= c
      uint32_t count = 0;
      for (int64_t i = 0; i < n; ++i) count += keys[i] <= c;
      return static_cast<int64_t>(count);
    };
    int cut = static_cast<int>(std::min<int64_t>(255, (256 * k) / n));
    int64_t up_to = count_up_to(static_cast<uint8_t>(cut));
    while (cut > 0 && up_to >= k) {
      const int64_t lower = count_up_to(static_cast<uint8_t>(cut - 1));
      if (lower < k) break;
      --cut;
      up_to = lower;
    }
    while (up_to < k) up_to = count_up_to(static_cast<uint8_t>(++cut));
    below = cut == 0 ? 0 : count_up_to(static_cast<uint8_t>(cut - 1));
    bucket = static_cast<uint32_t>(cut);
    bucket_size = up_to - below;
  } else {
    // Four interleaved histograms: consecutive equal buckets do not wait on each other's stores.
    uint32_t partial[4][256] = {};
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      ++partial[0][keys[j] >> shift];
      ++partial[1][keys[j + 1] >> shift];
      ++partial[2][keys[j + 2] >> shift];
      ++partial[3][keys[j + 3] >> shift];
    }
    for (; j < n; ++j) ++partial[0][keys[j] >> shift];
    uint32_t histogram[256];
    for (int b = 0; b < 256; ++b) {
      histogram[b] = partial[0][b] + partial[1][b] + partial[2][b] + partial[3][b];
    }
    std::tie(bucket, below) = find_bucket(histogram, k);
    bucket_size = histogram[bucket];
  }
  int64_t need = k - below;
  if (need == bucket_size) {  // the whole bucket is selected
    for (int64_t i = 0; i < n; ++i) out[i] = (keys[i] >> shift) <= bucket;
    return;
  }
  const key_t bucket_start = static_cast<key_t>(static_cast<key_t>(bucket) << shift);
  for (int64_t i = 0; i < n; ++i) out[i] = keys[i] < bucket_start;
  // The bucket's positions: flagged in a vectorised pass, then gathered skipping 32 zero flags
  // at a time.
  auto& boundary = ws.boundary;
  boundary.clear();
  ws.flags.resize(n + 32);
  uint8_t* flags = ws.flags.data();
  const key_t bucket_key = static_cast<key_t>(bucket);
  for (int64_t i = 0; i < n; ++i) flags[i] = static_cast<key_t>(keys[i] >> shift) == bucket_key;
  std::memset(flags + n, 0, 32);
  for (int64_t i = 0; i < n; i += 32) {
    uint64_t words[4];
    std::memcpy(words, flags + i, 32);
    if ((words[0] | words[1] | words[2] | words[3]) == 0) continue;
    for (int w = 0; w < 4; ++w) {
      for (uint64_t bits = words[w]; bits != 0; bits &= bits - 1) {  // flag bytes are 0 or 1
        const int64_t t = i + 8 * w + (std::countr_zero(bits) >> 3);
        boundary.push_back({keys[t], 0, t});
      }
    }
  }
  while (boundary.size() > kSortBelow && shift > 0) {
    shift -= 8;
    uint32_t histogram[256] = {};
    for (const auto& e : boundary) ++histogram[(e.key >> shift) & 0xFF];
    std::tie(bucket, below) = find_bucket(histogram, need);
    need -= below;
    size_t kept = 0;  // keeps the bucket's entries, in position order
    for (const auto& e : boundary) {
      const uint32_t digit = (e.key >> shift) & 0xFF;
      if (digit < bucket) out[e.index] = 1;
      else if (digit == bucket) boundary[kept++] = e;
    }
    boundary.resize(kept);
  }
  const auto by_key = [](const Entry<key_t>& a, const Entry<key_t>& b) {
    return a.key != b.key ? a.key < b.key : a.index < b.index;
  };
  std::sort(boundary.begin(), boundary.end(), by_key);
  if constexpr (TieFn::kActive) {
    // Only a run of equal keys that straddles the cut needs the tie keys.
    const key_t cut = boundary[need - 1].key;
    if (need < static_cast<int64_t>(boundary.size()) && boundary[need].key == cut) {
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

SPARSENAS_ALWAYS_INLINE void uniform_row_body(const CandidateStream& primary,
                                              const UniformTieKey& tie, int64_t n, int64_t k,
                                              Workspace<uint8_t>& ws, uint8_t* row) {
  if (k != 0 && k != n) {
    const int64_t blocks = (n + 15) / 16;
    ws.keys.resize(16 * blocks);
    fill_uniform_keys(ws.keys.data(), blocks, primary);
  }
  select_smallest(ws.keys.data(), n, k, tie, ws, row);
}

void uniform_row_portable(const CandidateStream& primary, const UniformTieKey& tie, int64_t n,
                          int64_t k, Workspace<uint8_t>& ws, uint8_t* row) {
  uniform_row_body(primary, tie, n, k, ws, row);
}

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
// The same row with 512-bit vectors: 16 Philox blocks and 64 byte keys per instruction, about
// twice the throughput of the portable build.
__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,prefer-vector-width=512"))) void
uniform_row_avx512(const CandidateStream& primary, const UniformTieKey& tie, int64_t n, int64_t k,
                   Workspace<uint8_t>& ws, uint8_t* row) {
  uniform_row_body(primary, tie, n, k, ws, row);
}

void uniform_row(const CandidateStream& primary, const UniformTieKey& tie, int64_t n, int64_t k,
                 Workspace<uint8_t>& ws, uint8_t* row) {
  if (cpu_has_avx512()) uniform_row_avx512(primary, tie, n, k, ws, row);
  else uniform_row_portable(primary, tie, n, k, ws, row);
}

// ~ordered_key(gumbel_key(words[2j], words[2j + 1], w[j])) for j < n (a multiple of 8), eight
// positions per vector: the operations of gumbel_key and deterministic_log in their order, each
// an explicitly rounded intrinsic (*_round_pd: the compiler cannot fuse them into multiply-adds),
// so every key is bit-identical to the portable one.
constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

__attribute__((target("avx512f"), always_inline)) inline __m512d mul_nearest(__m512d a, __m512d b) {
  return _mm512_mul_round_pd(a, b, kNearest);
}

__attribute__((target("avx512f"), always_inline)) inline __m512d add_nearest(__m512d a, __m512d b) {
  return _mm512_add_round_pd(a, b, kNearest);
}

template <typename weight_t>
__attribute__((target("avx512f,avx512dq"))) WeightCounts gumbel_keys_avx512(const uint32_t* words,
                                                                          const weight_t* w,
                                                                          int64_t n, uint64_t* keys) {
  WeightCounts counts;
  const __m512i ones = _mm512_set1_epi64(-1);
  const __m512i sign = _mm512_set1_epi64(static_cast<int64_t>(uint64_t(1) << 63));
  const __m512d two = _mm512_set1_pd(2.0);
  const double coefficients[] = {1.0 / 21.0, 1.0 / 19.0, 1.0 / 17.0, 1.0 / 15.0, 1.0 / 13.0,
                                 1.0 / 11.0, 1.0 / 9.0,  1.0 / 7.0,  1.0 / 5.0,  1.0 / 3.0, 1.0};
  for (int64_t j = 0; j < n; j += 8) {
    // Lane i holds words 2 (j + i) (low half: `high` of uniform_open01) and 2 (j + i) + 1.
    const __m512i pair = _mm512_loadu_si512(words + 2 * j);
    const __m512i high = _mm512_and_si512(pair, _mm512_set1_epi64(0xFFFFFFFFll));
    const __m512i b = _mm512_or_si512(_mm512_slli_epi64(high, 20), _mm512_srli_epi64(pair, 44));
    const __m512i odd = _mm512_add_epi64(_mm512_slli_epi64(b, 1), _mm512_set1_epi64(1));
    const __m512d u = mul_nearest(_mm512_cvtepu64_pd(odd), _mm512_set1_pd(0x1p-53));  // exact, < 2^53
    // deterministic_log(u)
    const __m512i bits = _mm512_castpd_si512(u);
    __m512i exponent = _mm512_sub_epi64(
        _mm512_and_si512(_mm512_srli_epi64(bits, 52), _mm512_set1_epi64(0x7FF)), _mm512_set1_epi64(1022));
    __m512d m = _mm512_castsi512_pd(
        _mm512_or_si512(_mm512_and_si512(bits, _mm512_set1_epi64(0x000FFFFFFFFFFFFFll)),
                        _mm512_set1_epi64(static_cast<int64_t>(uint64_t(1022) << 52))));
    const __mmask8 below = _mm512_cmp_pd_mask(m, _mm512_set1_pd(0.70710678118654752440), _CMP_LT_OQ);
    m = _mm512_mask_mul_round_pd(m, below, m, two, kNearest);
    exponent = _mm512_mask_sub_epi64(exponent, below, exponent, _mm512_set1_epi64(1));
    const __m512d f = add_nearest(m, _mm512_set1_pd(-1.0));
    const __m512d s = _mm512_div_round_pd(f, add_nearest(f, two), kNearest);
    const __m512d z = mul_nearest(s, s);
    __m512d series = _mm512_set1_pd(1.0 / 23.0);
    for (const double c : coefficients) series = add_nearest(_mm512_set1_pd(c), mul_nearest(z, series));
    const __m512d log_m = mul_nearest(mul_nearest(two, s), series);
    const __m512d log_u =
        add_nearest(mul_nearest(_mm512_cvtepi64_pd(exponent), _mm512_set1_pd(0.69314718055994530942)), log_m);
    // gumbel_key: log(u) / weight, -inf for a zero weight.
    __m512d weight;
    if constexpr (std::is_same_v<weight_t, double>) weight = _mm512_loadu_pd(w + j);
    else weight = _mm512_cvtps_pd(_mm256_loadu_ps(w + j));
    counts.valid &= (_mm512_cmp_pd_mask(weight, _mm512_setzero_pd(), _CMP_GE_OQ) &
                     _mm512_cmp_pd_mask(weight, _mm512_set1_pd(std::numeric_limits<double>::infinity()),
                                        _CMP_LT_OQ)) == 0xFF;
    counts.positive += __builtin_popcount(_mm512_cmp_pd_mask(weight, _mm512_setzero_pd(), _CMP_GT_OQ));
    __m512d key = _mm512_div_round_pd(log_u, weight, kNearest);
    key = _mm512_mask_mov_pd(key, _mm512_cmp_pd_mask(weight, _mm512_setzero_pd(), _CMP_EQ_OQ),
                             _mm512_set1_pd(-std::numeric_limits<double>::infinity()));
    // ~ordered_key(key): -0 as +0, NaN above everything.
    key = _mm512_mask_mov_pd(key, _mm512_cmp_pd_mask(key, _mm512_setzero_pd(), _CMP_EQ_OQ),
                             _mm512_setzero_pd());
    const __m512i key_bits = _mm512_castpd_si512(key);
    __m512i ordered = _mm512_mask_mov_epi64(_mm512_or_si512(key_bits, sign),
                                            _mm512_test_epi64_mask(key_bits, sign),
                                            _mm512_xor_si512(key_bits, ones));
    ordered = _mm512_mask_mov_epi64(ordered, _mm512_cmp_pd_mask(key, key, _CMP_UNORD_Q), ones);
    _mm512_storeu_si512(keys + j, _mm512_xor_si512(ordered, ones));
  }
  return counts;
}
#else
void uniform_row(const CandidateStream& primary, const UniformTieKey& tie, int64_t n, int64_t k,
                 Workspace<uint8_t>& ws, uint8_t* row) {
  uniform_row_portable(primary, tie, n, k, ws, row);
}
#endif

// The Gumbel keys of positions [0, n) of one row; the vector path for float32 / float64 weights.
template <typename weight_t>
WeightCounts gumbel_keys(const uint32_t* words, const weight_t* w, int64_t n, uint64_t* keys) {
  WeightCounts counts;
  int64_t j = 0;
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
  if constexpr (std::is_same_v<weight_t, float> || std::is_same_v<weight_t, double>) {
    if (cpu_has_avx512()) {
      j = n / 8 * 8;
      counts = gumbel_keys_avx512(words, w, j, keys);
    }
  }
#endif
  for (; j < n; ++j) keys[j] = gumbel_position_key(words, w, j, counts);
  return counts;
}

at::Tensor uniform_k_mask_cpu(const at::Tensor& k, int64_t n, int64_t seed, int64_t first_candidate,
                              int64_t stream, bool packed) {
  const auto g = check_uniform_k_mask(k, n, first_candidate, stream);
  auto out = empty_mask(k, g, packed);
  const auto counts = k.contiguous();
  const int64_t* k_row = counts.data_ptr<int64_t>();
  for_each_row<uint8_t>(out, g.rows, n, packed, [&](int64_t r, Workspace<uint8_t>& ws, uint8_t* row) {
    const uint64_t candidate = static_cast<uint64_t>(first_candidate + r);
    uniform_row(CandidateStream(seed, candidate, stream, kUniformKey),
                UniformTieKey{CandidateStream(seed, candidate, stream, kUniformTieKey)}, n,
                k_row[r], ws, row);
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
  // The weights' value checks are made on the way (a row that fails one is not sampled), and
  // their message comes from the tensor-op checks, run only then.
  std::atomic<bool> failed{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weights.scalar_type(), "gumbel_topk_mask_cpu", [&] {
    const scalar_t* data = values.data_ptr<scalar_t>();
    for_each_row<uint64_t>(out, g.rows, n, packed, [&](int64_t r, Workspace<uint64_t>& ws, uint8_t* row) {
      ws.keys.resize(n);
      const scalar_t* w = data + r * n;
      const CandidateStream draws(seed, static_cast<uint64_t>(first_candidate + r), stream,
                                  kGumbelUniform);
      // Position j draws words 2j and 2j + 1: words 2 (j % 2) and 2 (j % 2) + 1 of block j / 2.
      const int64_t blocks = (n + 1) / 2;
      ws.words.resize(4 * blocks);
      fill_words(ws.words.data(), blocks, draws);
      const auto weight_counts = gumbel_keys(ws.words.data(), w, n, ws.keys.data());
      if (!weight_counts.valid || weight_counts.positive < k_row[r]) {
        failed.store(true, std::memory_order_relaxed);
        return;
      }
      select_smallest(ws.keys.data(), n, k_row[r], NoTieKey{}, ws, row);
    });
  });
  if (failed.load()) {
    check_gumbel_weight_values(weights, k);
    TORCH_INTERNAL_ASSERT(false, "gumbel_topk_mask: a row failed the value checks that its tensor "
                                 "form passes");
  }
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
