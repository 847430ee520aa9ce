// Included only by masked_linear_kernels_<capability>.cpp, each with CPU_CAPABILITY (and
// CPU_CAPABILITY_<X>) defined, so that at::vec::Vectorized is that capability's vector.

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/masked_linear_kernels.h"

namespace sparsenas::cpu::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// The per-vector helpers below, and the per-vector lambdas of the kernels, are always inlined: in
// the large kernels GCC (with link-time optimisation) may otherwise leave one as a call per vector
// (seen in the 1-row forward).

template <typename scalar_t, MaskKind kind>
[[gnu::always_inline]] inline at::opmath_type<scalar_t> mask_scalar(const void* mask, int64_t c) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (kind == MaskKind::kByte) {
    return acc_t(static_cast<const uint8_t*>(mask)[c]);
  } else if constexpr (kind == MaskKind::kBits) {
    return acc_t((static_cast<const uint8_t*>(mask)[c >> 3] >> (c & 7)) & 1);
  } else {
    return acc_t(static_cast<const scalar_t*>(mask)[c]);
  }
}

// The 0 / 1 multipliers of a byte or bit mask for the lanes [c, c + size) (for bits, c is a
// multiple of the lane count, so the lanes start on a byte or nibble).
template <typename acc_t, MaskKind kind>
[[gnu::always_inline]] inline Vectorized<acc_t> mask_vector(const uint8_t* m, int64_t c) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<acc_t, float>) {
    if constexpr (kind == MaskKind::kByte) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(m + c));
      return Vectorized<float>(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)));
    } else {
      uint16_t bits;
      std::memcpy(&bits, m + (c >> 3), sizeof(bits));
      return Vectorized<float>(_mm512_maskz_mov_ps(bits, _mm512_set1_ps(1.0f)));
    }
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<acc_t, float>) {
    if constexpr (kind == MaskKind::kByte) {
      const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(m + c));
      return Vectorized<float>(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)));
    } else {
      const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
      const __m256i byte = _mm256_set1_epi32(m[c >> 3]);
      const __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(byte, lane_bits), lane_bits);
      return Vectorized<float>(_mm256_and_ps(_mm256_castsi256_ps(set), _mm256_set1_ps(1.0f)));
    }
  }
#endif
  alignas(64) acc_t lanes[Vectorized<acc_t>::size()];
  for (int64_t j = 0; j < Vectorized<acc_t>::size(); ++j)
    lanes[j] = kind == MaskKind::kByte ? acc_t(m[c + j]) : acc_t((m[(c + j) >> 3] >> ((c + j) & 7)) & 1);
  return Vectorized<acc_t>::loadu(lanes);
}

// src[c, c + count) in opmath (count <= lanes; lanes beyond count are 0).
template <typename scalar_t>
[[gnu::always_inline]] inline Vectorized<at::opmath_type<scalar_t>> load_opmath(const scalar_t* src, int64_t count) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return count == Vec::size() ? Vec::loadu(src) : Vec::loadu(src, count);
  } else {
    alignas(64) acc_t lanes[Vec::size()] = {};
    for (int64_t j = 0; j < count; ++j) lanes[j] = acc_t(src[j]);
    return Vec::loadu(lanes);
  }
}

template <typename scalar_t>
[[gnu::always_inline]] inline void store_scalar(const Vectorized<at::opmath_type<scalar_t>>& v, scalar_t* dst,
                         int64_t count) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (count == Vec::size()) v.store(dst);
    else v.store(dst, count);
  } else {
    alignas(64) acc_t lanes[Vec::size()];
    v.store(lanes);
    for (int64_t j = 0; j < count; ++j) dst[j] = scalar_t(lanes[j]);
  }
}

// The mask multipliers of columns [c, c + count) of one mask row.
template <typename scalar_t, MaskKind kind>
[[gnu::always_inline]] inline Vectorized<at::opmath_type<scalar_t>> mask_multiplier(const void* mask, int64_t c,
                                                            int64_t count) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  if constexpr (kind == MaskKind::kSoft) {
    return load_opmath(static_cast<const scalar_t*>(mask) + c, count);
  } else {
    if (count == Vec::size()) return mask_vector<acc_t, kind>(static_cast<const uint8_t*>(mask), c);
    alignas(64) acc_t lanes[Vec::size()] = {};
    for (int64_t j = 0; j < count; ++j) lanes[j] = mask_scalar<scalar_t, kind>(mask, c + j);
    return Vec::loadu(lanes);
  }
}

// weight[c, c + count) * mask[c, c + count) of one row, in opmath.
template <typename scalar_t, MaskKind kind>
[[gnu::always_inline]] inline Vectorized<at::opmath_type<scalar_t>> masked_weight(const scalar_t* weight, const void* mask,
                                                          int64_t c, int64_t count) {
  return load_opmath(weight + c, count) * mask_multiplier<scalar_t, kind>(mask, c, count);
}

// dst[c] = src[c] * mask[c] in opmath for c < n.
template <typename scalar_t, MaskKind kind>
inline void load_masked_row(const scalar_t* src, const void* mask, int64_t n,
                            at::opmath_type<scalar_t>* dst) {
  using Vec = Vectorized<at::opmath_type<scalar_t>>;
  for (int64_t c = 0; c < n; c += Vec::size()) {
    const int64_t count = std::min<int64_t>(Vec::size(), n - c);
    const auto v = masked_weight<scalar_t, kind>(src, mask, c, count);
    if (count == Vec::size()) v.store(dst + c);
    else v.store(dst + c, count);
  }
}

template <typename scalar_t, MaskKind kind>
[[gnu::always_inline]] inline const void* mask_at(const void* mask, int64_t offset) {
  const size_t elem = kind == MaskKind::kSoft ? sizeof(scalar_t) : 1;
  return static_cast<const char*>(mask) + offset * elem;
}

// How far ahead of the column in use the kernels that stream a few weight rows at once prefetch
// them, in elements. Each row is its own stream and the hardware prefetchers start over at every
// 4 KiB page (one row of a 1024-wide float weight), so without this a row's first lines wait on
// memory (measured: about 10% of the 1-row gradients of a 1024 x 1024 layer).
constexpr int64_t kPrefetchElements = 256;

// Prefetches column c + kPrefetchElements of a weight row and of its mask row (null: one not read).
template <typename scalar_t, MaskKind kind>
[[gnu::always_inline]] inline void prefetch_ahead(const scalar_t* w_row, const void* m_row, int64_t c) {
  if (w_row != nullptr) __builtin_prefetch(w_row + c + kPrefetchElements);
  if (m_row == nullptr) return;
  if constexpr (kind == MaskKind::kBits)
    __builtin_prefetch(static_cast<const uint8_t*>(m_row) + (c + kPrefetchElements) / 8);
  else
    __builtin_prefetch(mask_at<scalar_t, kind>(m_row, c + kPrefetchElements));
}

// Prefetches the cache lines of [p, p + bytes).
inline void prefetch_bytes(const void* p, int64_t bytes) {
  constexpr int64_t kLine = 64;
  for (int64_t b = 0; b < bytes; b += kLine) __builtin_prefetch(static_cast<const char*>(p) + b);
}

template <typename scalar_t, MaskKind kind, typename dst_t>
void mask_multiply_rows(const MaskMultiplyArgs& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* src = static_cast<const scalar_t*>(a.src) + r * a.src_ld;
    const void* mask = mask_at<scalar_t, kind>(a.mask, r * a.mask_ld);
    dst_t* d = static_cast<dst_t*>(a.dst) + r * a.dst_ld;
    for (int64_t c = 0; c < a.cols; c += Vec::size()) {
      const int64_t count = std::min<int64_t>(Vec::size(), a.cols - c);
      auto v = masked_weight<scalar_t, kind>(src, mask, c, count);
      if (a.accumulate) v = v + load_opmath(d + c, count);
      store_scalar(v, d + c, count);
    }
  }
}

template <typename scalar_t, MaskKind kind>
void mask_multiply(const MaskMultiplyArgs& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  if (a.dst_opmath) mask_multiply_rows<scalar_t, kind, acc_t>(a, begin, end);
  else mask_multiply_rows<scalar_t, kind, scalar_t>(a, begin, end);
}

// sums[i] = the sum of the lanes of v[i] for i < kN. A lane-count group of vectors is reduced
// together, halving the vectors at each level (a deinterleave and an add per pair), so that the
// sums of a register tile cost a few instructions each instead of a chain of scalar adds.
template <int64_t kN, typename acc_t>
[[gnu::always_inline]] inline void lane_sums(const Vectorized<acc_t>* v, acc_t* sums) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kL = Vec::size();
  for (int64_t g = 0; g < kN; g += kL) {
    const int64_t n = std::min<int64_t>(kL, kN - g);
    Vec level[kL];
    for (int64_t i = 0; i < kL; ++i) level[i] = i < n ? v[g + i] : Vec(acc_t(0));
    for (int64_t width = kL; width > 1; width /= 2)
      for (int64_t i = 0; i < width / 2; ++i) {
        const auto halves = at::vec::deinterleave2(level[2 * i], level[2 * i + 1]);
        level[i] = halves.first + halves.second;
      }
    level[0].store(sums + g, n);
  }
}

// y[r, j] = sum of the lanes of acc[j][r] + bias[j] for r < kR, j < n_out. Always inlined: the
// accumulators' address passed to a call would keep them in memory through the whole loop that
// forms them (a store and a reload per multiply-add).
template <int64_t kO, int64_t kR, typename acc_t, typename scalar_t>
[[gnu::always_inline]] inline void store_tile_sums(const Vectorized<acc_t> (&acc)[kO][kR], scalar_t* y, int64_t y_ld,
                            int64_t n_out, const acc_t* bias) {
  Vectorized<acc_t> by_row[kR * kO];
#pragma GCC unroll 8
  for (int64_t r = 0; r < kR; ++r)
#pragma GCC unroll 8
    for (int64_t j = 0; j < kO; ++j) by_row[r * kO + j] = acc[j][r];
  acc_t sums[kR * kO];
  lane_sums<kR * kO>(by_row, sums);
  for (int64_t r = 0; r < kR; ++r)
    for (int64_t j = 0; j < n_out; ++j) y[r * y_ld + j] = scalar_t(sums[r * kO + j] + bias[j]);
}

// kO masked weight rows (wm, stride ld) against kR x rows (x, stride ld): a register-blocked
// kO x kR tile of dot products.
template <int64_t kO, int64_t kR, typename acc_t, typename scalar_t>
inline void dot_block(const acc_t* wm, const acc_t* x, int64_t ld, scalar_t* y, int64_t y_ld,
                      int64_t n_out, const acc_t* bias) {
  using Vec = Vectorized<acc_t>;
  Vec acc[kO][kR];
#pragma GCC unroll 8
  for (int64_t j = 0; j < kO; ++j)
#pragma GCC unroll 8
    for (int64_t r = 0; r < kR; ++r) acc[j][r] = Vec(acc_t(0));
  for (int64_t c = 0; c < ld; c += Vec::size()) {
    Vec xv[kR];
#pragma GCC unroll 8
    for (int64_t r = 0; r < kR; ++r) xv[r] = Vec::loadu(x + r * ld + c);
#pragma GCC unroll 8
    for (int64_t j = 0; j < kO; ++j) {
      const Vec wv = Vec::loadu(wm + j * ld + c);
#pragma GCC unroll 8
      for (int64_t r = 0; r < kR; ++r) acc[j][r] = at::vec::fmadd(xv[r], wv, acc[j][r]);
    }
  }
  store_tile_sums(acc, y, y_ld, n_out, bias);
}

// acc[j][r] += x[r, c : c + count] * (W ⊙ M)[row j, c : c + count] (count <= lanes) for the kO
// weight rows w_rows / m_rows and kR x rows (stride ld). Always inlined, its loops unrolled and
// free of branches, so that the accumulators stay in registers (GCC had left them in memory, a
// store and a reload per multiply-add, which made the 1-row forward twice as slow as the BLAS's
// dense one on an AVX2 EPYC).
template <int64_t kO, int64_t kR, typename scalar_t, MaskKind kind>
[[gnu::always_inline]] inline void direct_step(Vectorized<at::opmath_type<scalar_t>> (&acc)[kO][kR],
                                               const scalar_t* const (&w_rows)[kO],
                                               const void* const (&m_rows)[kO],
                                               const at::opmath_type<scalar_t>* x, int64_t ld,
                                               int64_t c, int64_t count) {
  using Vec = Vectorized<at::opmath_type<scalar_t>>;
  Vec xv[kR];
#pragma GCC unroll 8
  for (int64_t r = 0; r < kR; ++r) xv[r] = Vec::loadu(x + r * ld + c);
#pragma GCC unroll 8
  for (int64_t j = 0; j < kO; ++j) {
    // Unconditional: a branch in this loop (prefetch_ahead's null tests) made GCC keep the
    // accumulators in memory. Only where a vector is a whole cache line, so one prefetch per line
    // of W; with narrower vectors (AVX2) the 1-row forward was faster on an EPYC without them.
    if constexpr (sizeof(Vec) >= 64) {
      __builtin_prefetch(w_rows[j] + c + kPrefetchElements);
      if constexpr (kind == MaskKind::kBits)
        __builtin_prefetch(static_cast<const uint8_t*>(m_rows[j]) + (c + kPrefetchElements) / 8);
      else
        __builtin_prefetch(mask_at<scalar_t, kind>(m_rows[j], c + kPrefetchElements));
    }
    const Vec wv = masked_weight<scalar_t, kind>(w_rows[j], m_rows[j], c, count);
#pragma GCC unroll 8
    for (int64_t r = 0; r < kR; ++r) acc[j][r] = at::vec::fmadd(xv[r], wv, acc[j][r]);
  }
}

// kO weight rows masked on the fly (read once, never stored) against kR x rows: for batches of
// at most kR rows, where a masked copy in L1 would be read only once.
template <int64_t kO, int64_t kR, typename scalar_t, MaskKind kind>
inline void direct_block(const FusedForwardArgs& a, int64_t k, int64_t o0, int64_t n_out,
                         const at::opmath_type<scalar_t>* x, scalar_t* y, const at::opmath_type<scalar_t>* bias) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  const int64_t ld = a.in_stride;
  const scalar_t* w_rows[kO];
  const void* m_rows[kO];
  for (int64_t j = 0; j < kO; ++j) {
    const int64_t o = o0 + std::min(j, n_out - 1);  // rows past the end repeat the last one
    w_rows[j] = static_cast<const scalar_t*>(a.weight) + k * a.weight_stride + o * a.in;
    m_rows[j] = mask_at<scalar_t, kind>(a.mask, k * a.mask_stride + o * a.mask_ld);
  }
  Vec acc[kO][kR];
#pragma GCC unroll 8
  for (int64_t j = 0; j < kO; ++j)
#pragma GCC unroll 8
    for (int64_t r = 0; r < kR; ++r) acc[j][r] = Vec(acc_t(0));
  const int64_t full = a.in / Vec::size() * Vec::size();
  for (int64_t c = 0; c < full; c += Vec::size())
    direct_step<kO, kR, scalar_t, kind>(acc, w_rows, m_rows, x, ld, c, Vec::size());
  if (full < a.in) direct_step<kO, kR, scalar_t, kind>(acc, w_rows, m_rows, x, ld, full, a.in - full);
  store_tile_sums(acc, y, a.out_features, n_out, bias);
}

template <typename scalar_t, MaskKind kind>
void fused_forward(const FusedForwardArgs& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kO = kFusedOutBlock;
  // Wide vectors have registers for a 4 x 4 tile of accumulators; 256-bit ones for 4 x 2.
  constexpr int64_t kR = sizeof(Vectorized<acc_t>) >= 64 ? 4 : 2;
  static_assert(kFusedAlign % Vectorized<acc_t>::size() == 0);
  const int64_t ld = a.in_stride;
  // The masked rows' buffer; a batch of at most kR rows masks in registers and needs none.
  std::vector<acc_t> wm(a.rows <= kR ? 0 : kO * ld, acc_t(0));
  const scalar_t* weight = static_cast<const scalar_t*>(a.weight);
  const scalar_t* bias = static_cast<const scalar_t*>(a.bias);
  const int64_t block_bytes = kO * std::max<int64_t>(a.in, 1) * static_cast<int64_t>(sizeof(scalar_t));
  const int64_t group = std::max<int64_t>(1, kSharedWeightBytes / block_bytes);
  for (int64_t idx = begin; idx < end; ++idx) {
    const auto [k, block] = candidate_block(idx, a.candidates, a.blocks_per_candidate, a.weight_stride, group);
    const int64_t o0 = block * kO;
    const int64_t n_out = std::min(kO, a.out_features - o0);
    if (a.rows <= kR) {
      acc_t bias_block[kO] = {};
      if (bias != nullptr)
        for (int64_t j = 0; j < n_out; ++j) bias_block[j] = acc_t(bias[k * a.bias_stride + o0 + j]);
      const acc_t* x = static_cast<const acc_t*>(a.x) + k * a.rows * ld;
      scalar_t* y = static_cast<scalar_t*>(a.out) + k * a.rows * a.out_features + o0;
      switch (a.rows) {
        case 0: break;
        case 1: direct_block<kO, 1, scalar_t, kind>(a, k, o0, n_out, x, y, bias_block); break;
        case 2: direct_block<kO, 2, scalar_t, kind>(a, k, o0, n_out, x, y, bias_block); break;
        case 3: direct_block<kO, 3, scalar_t, kind>(a, k, o0, n_out, x, y, bias_block); break;
        default: direct_block<kO, 4, scalar_t, kind>(a, k, o0, n_out, x, y, bias_block); break;
      }
      continue;
    }
    for (int64_t j = 0; j < n_out; ++j) {
      const int64_t o = o0 + j;
      load_masked_row<scalar_t, kind>(weight + k * a.weight_stride + o * a.in,
                                      mask_at<scalar_t, kind>(a.mask, k * a.mask_stride + o * a.mask_ld),
                                      a.in, wm.data() + j * ld);
    }
    for (int64_t j = n_out; j < kO; ++j) std::fill_n(wm.data() + j * ld, a.in, acc_t(0));
    acc_t bias_block[kO] = {};
    if (bias != nullptr)
      for (int64_t j = 0; j < n_out; ++j) bias_block[j] = acc_t(bias[k * a.bias_stride + o0 + j]);
    const acc_t* x = static_cast<const acc_t*>(a.x) + k * a.rows * ld;
    scalar_t* y = static_cast<scalar_t*>(a.out) + k * a.rows * a.out_features + o0;
    int64_t r = 0;
    for (; r + kR <= a.rows; r += kR)
      dot_block<kO, kR>(wm.data(), x + r * ld, ld, y + r * a.out_features, a.out_features, n_out,
                        bias_block);
    for (; r < a.rows; ++r)
      dot_block<kO, 1>(wm.data(), x + r * ld, ld, y + r * a.out_features, a.out_features, n_out,
                       bias_block);
  }
}

// Vectors per x panel of panel_forward (its accumulators: kPanelWeightRows x this many, of the 32
// AVX-512 or the 16 AVX2 registers).
template <typename acc_t>
constexpr int64_t kPanelVectors = sizeof(Vectorized<acc_t>) >= 64 ? 4 : 2;
constexpr int64_t kPanelWeightRows = 6;
// Columns of the weight per cache block: an x panel's block of them (32 KiB of float with
// AVX-512) stays in L1 while every weight row of the item is broadcast against it.
constexpr int64_t kPanelDepth = 128;

// A thread's scratch buffer of at least n elements, kept between calls: a fresh allocation of a
// few hundred KiB per call is returned to the system and page-faults again on the next.
template <typename acc_t>
acc_t* scratch(std::vector<acc_t>& buffer, int64_t n) {
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

// Where a panel tile's accumulators start and end: a buffer c (stride c_ld), read first unless
// the tile starts the sum.
template <typename acc_t>
struct BufferTile {
  acc_t* c;
  int64_t c_ld;
  bool accumulate;
  Vectorized<acc_t> load(int64_t row, int64_t v) const {
    return accumulate ? Vectorized<acc_t>::loadu(c + row * c_ld + v * Vectorized<acc_t>::size())
                      : Vectorized<acc_t>(acc_t(0));
  }
  void store(int64_t row, int64_t v, const Vectorized<acc_t>& acc) const {
    acc.store(c + row * c_ld + v * Vectorized<acc_t>::size());
  }
};

// acc[i, v] = tile.load(row0 + i, v) + sum_d a[row0 + i, d] * b[d, v] for i < kMR rows of a
// (stride a_ld) and kV vectors of a panel (b: stride b_ld), then tile.store(row0 + i, v, acc);
// a tile that has prefetch_next(row) is asked first to prefetch what its next tile will read.
// The loops are unrolled so that the accumulators live in registers.
template <int64_t kMR, int64_t kV, typename acc_t, typename Tile>
inline void panel_tile(int64_t row0, int64_t depth, const acc_t* a, int64_t a_ld, const acc_t* b,
                       int64_t b_ld, const Tile& tile) {
  using Vec = Vectorized<acc_t>;
  a += row0 * a_ld;
  Vec acc[kMR][kV];
  if constexpr (requires { tile.prefetch_next(row0); }) {
#pragma GCC unroll 32
    for (int64_t i = 0; i < kMR; ++i) tile.prefetch_next(row0 + i);
  }
#pragma GCC unroll 32
  for (int64_t i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int64_t v = 0; v < kV; ++v) acc[i][v] = tile.load(row0 + i, v);
  for (int64_t d = 0; d < depth; ++d) {
    Vec bv[kV];
#pragma GCC unroll 4
    for (int64_t v = 0; v < kV; ++v) bv[v] = Vec::loadu(b + d * b_ld + v * Vec::size());
#pragma GCC unroll 32
    for (int64_t i = 0; i < kMR; ++i) {
      const Vec av(a[i * a_ld + d]);
#pragma GCC unroll 4
      for (int64_t v = 0; v < kV; ++v) acc[i][v] = at::vec::fmadd(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 32
  for (int64_t i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int64_t v = 0; v < kV; ++v) tile.store(row0 + i, v, acc[i][v]);
}

// Rows per tile for kV panel vectors: about as many accumulators as the widest tile, so that a
// narrow (last) panel still has enough independent multiply-adds in flight.
template <int64_t kV, typename acc_t>
constexpr int64_t kPanelTileRows = kPanelWeightRows * kPanelVectors<acc_t> / kV;

// panel_tile over rows [row0, row0 + rows) of a, kMR at a time, the last ones by narrower tiles.
template <int64_t kMR, int64_t kV, typename acc_t, typename Tile>
inline void panel_tile_rows(int64_t row0, int64_t rows, int64_t depth, const acc_t* a, int64_t a_ld,
                            const acc_t* b, int64_t b_ld, const Tile& tile) {
  const int64_t end = row0 + rows;
  int64_t i = row0;
  for (; i + kMR <= end; i += kMR) panel_tile<kMR, kV>(i, depth, a, a_ld, b, b_ld, tile);
  if constexpr (kMR > 1) {
    if (i < end) panel_tile_rows<kMR / 2, kV>(i, end - i, depth, a, a_ld, b, b_ld, tile);
  }
}

// panel_tile_rows with the widest tiles for the `vectors` (<= kPanelVectors) vectors a panel has.
template <typename acc_t, typename Tile>
inline void panel_product(int64_t vectors, int64_t rows, int64_t depth, const acc_t* a,
                          int64_t a_ld, const acc_t* b, int64_t b_ld, const Tile& tile) {
  constexpr int64_t kV = kPanelVectors<acc_t>;
  constexpr int64_t kV2 = std::min<int64_t>(2, kV), kV3 = std::min<int64_t>(3, kV);
  switch (vectors) {
    case 1: panel_tile_rows<kPanelTileRows<1, acc_t>, 1>(0, rows, depth, a, a_ld, b, b_ld, tile); break;
    case 2: panel_tile_rows<kPanelTileRows<kV2, acc_t>, kV2>(0, rows, depth, a, a_ld, b, b_ld, tile); break;
    case 3: panel_tile_rows<kPanelTileRows<kV3, acc_t>, kV3>(0, rows, depth, a, a_ld, b, b_ld, tile); break;
    default: panel_tile_rows<kPanelTileRows<kV, acc_t>, kV>(0, rows, depth, a, a_ld, b, b_ld, tile); break;
  }
}

template <typename scalar_t, MaskKind kind>
void panel_forward(const FusedForwardArgs& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kMC = kPanelOutBlock, kKC = kPanelDepth, kV = kPanelVectors<acc_t>;
  constexpr int64_t kNR = kV * Vec::size();
  static_assert(kMC % kPanelWeightRows == 0);
  const int64_t panels = (a.rows + kNR - 1) / kNR;
  const int64_t c_ld = panels * kNR;
  thread_local std::vector<acc_t> wm_buffer, c_buffer;
  acc_t* wm = scratch(wm_buffer, kMC * kKC);
  acc_t* c = scratch(c_buffer, kMC * c_ld);
  const scalar_t* bias = static_cast<const scalar_t*>(a.bias);
  // An item reads a block of kMC weight rows and a candidate's x panels (rows x in): with a shared
  // weight, the items run over the block's candidates (the block read once) where x is the
  // smaller of the two, else over the candidate's blocks (its x read once).
  const int64_t group = a.rows < kMC ? 1 : a.blocks_per_candidate;
  for (int64_t idx = begin; idx < end; ++idx) {
    const auto [k, block] = candidate_block(idx, a.candidates, a.blocks_per_candidate, a.weight_stride, group);
    const int64_t o0 = block * kMC;
    const int64_t n_out = std::min(kMC, a.out_features - o0);
    const acc_t* x_panels = static_cast<const acc_t*>(a.x) + k * panels * a.in * kNR;
    for (int64_t d0 = 0; d0 < a.in; d0 += kKC) {
      const int64_t depth = std::min(kKC, a.in - d0);
      for (int64_t j = 0; j < n_out; ++j) {
        const int64_t o = o0 + j;
        // A packed row's column d0 (a multiple of 8) starts at byte d0 / 8.
        load_masked_row<scalar_t, kind>(
            static_cast<const scalar_t*>(a.weight) + k * a.weight_stride + o * a.in + d0,
            mask_at<scalar_t, kind>(a.mask, k * a.mask_stride + o * a.mask_ld +
                                                (kind == MaskKind::kBits ? d0 / 8 : d0)),
            depth, wm + j * kKC);
      }
      for (int64_t p = 0; p < panels; ++p) {
        const int64_t live = std::min(kNR, a.rows - p * kNR);
        panel_product((live + Vec::size() - 1) / Vec::size(), n_out, depth, wm, kKC,
                      x_panels + (p * a.in + d0) * kNR, kNR, BufferTile<acc_t>{c + p * kNR, c_ld, d0 > 0});
      }
    }
    scalar_t* y = static_cast<scalar_t*>(a.out) + k * a.rows * a.out_features + o0;
    for (int64_t r = 0; r < a.rows; ++r)
      for (int64_t j = 0; j < n_out; ++j) {
        const acc_t b = bias == nullptr ? acc_t(0) : acc_t(bias[k * a.bias_stride + o0 + j]);
        y[r * a.out_features + j] = scalar_t(c[j * c_ld + r] + b);
      }
  }
}

template <typename acc_t>
void pack_panels(const void* x, int64_t rows, int64_t in, void* panels, int64_t begin, int64_t end) {
  constexpr int64_t kNR = kPanelVectors<acc_t> * Vectorized<acc_t>::size();
  const int64_t count = (rows + kNR - 1) / kNR;
  for (int64_t idx = begin; idx < end; ++idx) {
    const int64_t k = idx / count, p = idx % count;
    const int64_t live = std::min(kNR, rows - p * kNR);
    acc_t* dst = static_cast<acc_t*>(panels) + idx * in * kNR;
    if (live < kNR) std::fill_n(dst, in * kNR, acc_t(0));
    at::vec::transpose_mxn<acc_t>(static_cast<const acc_t*>(x) + (k * rows + p * kNR) * in, in, dst,
                                  kNR, live, in);
  }
}

// Rows of W per cache block of fused_grad_input: the masked block (kGradInputDepth x one panel of
// columns, 32 KiB of float with AVX-512) stays in L1 while every gradient row is multiplied by it.
constexpr int64_t kGradInputDepth = 128;

// dst[k] = src[k]^T for the items k in [begin, end) (src opmath [K, rows, cols]).
template <typename acc_t>
void transpose(const void* src, int64_t rows, int64_t cols, void* dst, int64_t begin, int64_t end) {
  for (int64_t k = begin; k < end; ++k)
    at::vec::transpose_mxn<acc_t>(static_cast<const acc_t*>(src) + k * rows * cols, cols,
                                  static_cast<acc_t*>(dst) + k * rows * cols, rows, rows, cols);
}

// grad_input[k, :, block] = grad[k] (W[k] ⊙ M[k])[:, block] for column blocks of panel_rows
// columns: outer products of gradient scalars (broadcast) and masked weight vectors, the block
// masked once per kGradInputDepth rows of W and kept in L1.

// Weight rows masked and multiplied together by few_rows_grad_input: each sum vector is loaded
// and stored once per this many rows.
constexpr int64_t kFewRowsDepth = 4;
static_assert(kFewRows == 4, "the switches over few rows below cover 1 to 4 rows");

// sums[r, :in] += sum_j g[r, j] * (W ⊙ M)[j, :in] for kRows gradient rows (g: stride g_ld) and
// kDepth weight rows (w, m: strides w_ld, m_ld); sums has stride in_stride and whole vectors are
// stored (the lanes beyond in add 0).
template <int64_t kRows, int64_t kDepth, typename scalar_t, MaskKind kind>
inline void few_rows_step(const at::opmath_type<scalar_t>* g, int64_t g_ld, const scalar_t* w,
                          int64_t w_ld, const void* m, int64_t m_ld, int64_t in,
                          int64_t in_stride, at::opmath_type<scalar_t>* sums) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  Vec gv[kRows][kDepth];
  for (int64_t r = 0; r < kRows; ++r)
    for (int64_t j = 0; j < kDepth; ++j) gv[r][j] = Vec(g[r * g_ld + j]);
  auto step = [&](int64_t c, int64_t count) __attribute__((always_inline)) {
    Vec wm[kDepth];
#pragma GCC unroll 4
    for (int64_t j = 0; j < kDepth; ++j) {
      prefetch_ahead<scalar_t, kind>(w + j * w_ld, mask_at<scalar_t, kind>(m, j * m_ld), c);
      wm[j] = masked_weight<scalar_t, kind>(w + j * w_ld, mask_at<scalar_t, kind>(m, j * m_ld), c, count);
    }
#pragma GCC unroll 4
    for (int64_t r = 0; r < kRows; ++r) {
      acc_t* s = sums + r * in_stride + c;
      Vec acc = Vec::loadu(s);
#pragma GCC unroll 4
      for (int64_t j = 0; j < kDepth; ++j) acc = at::vec::fmadd(gv[r][j], wm[j], acc);
      acc.store(s);
    }
  };
  const int64_t full = in / Vec::size() * Vec::size();
  for (int64_t c = 0; c < full; c += Vec::size()) step(c, Vec::size());
  if (full < in) step(full, in - full);
}

template <int64_t kRows, typename scalar_t, MaskKind kind>
void few_rows_grad_input_item(const FewRowsGradInputArgs& a, int64_t k, int64_t s) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t* sums = static_cast<acc_t*>(a.partial) + (k * a.segments + s) * kRows * a.in_stride;
  std::fill_n(sums, kRows * a.in_stride, acc_t(0));
  const acc_t* g = static_cast<const acc_t*>(a.grad) + k * kRows * a.out_features;
  const scalar_t* w = static_cast<const scalar_t*>(a.weight) + k * a.weight_stride;
  const void* m = mask_at<scalar_t, kind>(a.mask, k * a.mask_stride);
  const int64_t o_end = std::min(a.out_features, (s + 1) * a.segment_rows);
  int64_t o = s * a.segment_rows;
  for (; o + kFewRowsDepth <= o_end; o += kFewRowsDepth)
    few_rows_step<kRows, kFewRowsDepth, scalar_t, kind>(
        g + o, a.out_features, w + o * a.in, a.in, mask_at<scalar_t, kind>(m, o * a.mask_ld),
        a.mask_ld, a.in, a.in_stride, sums);
  for (; o < o_end; ++o)
    few_rows_step<kRows, 1, scalar_t, kind>(g + o, a.out_features, w + o * a.in, a.in,
                                            mask_at<scalar_t, kind>(m, o * a.mask_ld), a.mask_ld,
                                            a.in, a.in_stride, sums);
}

template <typename scalar_t, MaskKind kind>
void few_rows_grad_input(const FewRowsGradInputArgs& a, int64_t begin, int64_t end) {
  for (int64_t idx = begin; idx < end; ++idx) {
    const auto [k, s] = candidate_block(idx, a.candidates, a.segments, a.weight_stride, 1);
    switch (a.rows) {
      case 1: few_rows_grad_input_item<1, scalar_t, kind>(a, k, s); break;
      case 2: few_rows_grad_input_item<2, scalar_t, kind>(a, k, s); break;
      case 3: few_rows_grad_input_item<3, scalar_t, kind>(a, k, s); break;
      case 4: few_rows_grad_input_item<4, scalar_t, kind>(a, k, s); break;
      default: TORCH_CHECK(false, "few_rows_grad_input: at most ", kFewRows, " rows, got ", a.rows);
    }
  }
}

template <typename scalar_t, MaskKind kind>
void fused_grad_input(const FusedGradInputArgs& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kV = kPanelVectors<acc_t>, kNR = kV * Vec::size(), kKC = kGradInputDepth;
  thread_local std::vector<acc_t> wm_buffer, c_buffer;
  acc_t* wm = scratch(wm_buffer, kKC * kNR);
  acc_t* c = scratch(c_buffer, a.rows * kNR);
  for (int64_t idx = begin; idx < end; ++idx) {
    const int64_t k = idx / a.col_blocks;
    const int64_t c0 = (idx % a.col_blocks) * kNR;
    const int64_t n_cols = std::min(kNR, a.in - c0);
    const int64_t vectors = (n_cols + Vec::size() - 1) / Vec::size();
    const acc_t* grad = static_cast<const acc_t*>(a.grad) + k * a.rows * a.out_features;
    const scalar_t* w = static_cast<const scalar_t*>(a.weight) + k * a.weight_stride + c0;
    // A packed row's column c0 (a multiple of 8) starts at byte c0 / 8.
    const void* m = mask_at<scalar_t, kind>(a.mask, k * a.mask_stride + (kind == MaskKind::kBits ? c0 / 8 : c0));
    for (int64_t d0 = 0; d0 < a.out_features; d0 += kKC) {
      const int64_t depth = std::min(kKC, a.out_features - d0);
      for (int64_t d = 0; d < depth; ++d) {
        const int64_t o = d0 + d;
        load_masked_row<scalar_t, kind>(w + o * a.in, mask_at<scalar_t, kind>(m, o * a.mask_ld),
                                        n_cols, wm + d * kNR);
        if (n_cols < kNR) std::fill(wm + d * kNR + n_cols, wm + (d + 1) * kNR, acc_t(0));
      }
      panel_product(vectors, a.rows, depth, grad + d0, a.out_features, wm, kNR,
                    BufferTile<acc_t>{c, kNR, d0 > 0});
    }
    scalar_t* out = static_cast<scalar_t*>(a.out) + k * a.rows * a.in + c0;
    for (int64_t r = 0; r < a.rows; ++r)
      for (int64_t v = 0; v < vectors; ++v) {
        const int64_t count = std::min<int64_t>(Vec::size(), n_cols - v * Vec::size());
        store_scalar(Vec::loadu(c + r * kNR + v * Vec::size()), out + r * a.in + v * Vec::size(), count);
      }
  }
}

// x rows per cache block of fused_grad_weight: a block of them (512 KiB of float at in = 1024)
// stays in L2 while the item's output rows are accumulated.
constexpr int64_t kGradWeightDepth = 128;

// Which weight gradient a MaskedGradientTile writes: none (the mask's only), each candidate's
// G ⊙ M, or a shared weight's running sum over candidates.
enum class WeightGradient { kNone, kStore, kSum };

// Where the gradient tiles of candidate k's output rows [o0, ...) and columns [c0, c0 + panel)
// end: each accumulator multiplied by the mask (grad_weight, or added to the running sum
// `total`) and by the weight (grad_mask) as it is stored, so
// that a gradient row is never written unmasked. Fixed at compile time, so that panel_tile's
// store loop unrolls with the accumulators in registers.
template <typename scalar_t, MaskKind kind, bool kMaskGradient, WeightGradient kWeight>
struct MaskedGradientTile {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  static constexpr int64_t kPanelWidth = kPanelVectors<acc_t> * Vec::size();
  const scalar_t* weight;  // row o0, column c0
  const void* mask;        // row o0, column 0
  int64_t mask_ld;
  scalar_t* grad_weight;   // row o0, column c0
  scalar_t* grad_mask;     // row o0, column c0
  acc_t* total;            // row o0, column c0
  bool first;              // the first candidate of a sum: total starts at 0
  int64_t ld;              // in: the row stride of weight and the gradients
  int64_t c0;
  int64_t n_cols;          // columns of the panel that exist (the rest is x's zero padding)
  const acc_t* partial;    // the sums over earlier blocks of x rows, or null
  int64_t sums_ld;         // the row stride of total and partial

  Vec load(int64_t row, int64_t v) const {
    return partial == nullptr ? Vec(acc_t(0)) : Vec::loadu(partial + row * sums_ld + v * Vec::size());
  }
  // Prefetches the mask (and, for the mask's gradient, the weight) of `row` in the next panel's
  // columns, which the next tile reads as it stores: each tile row is a stretch of its own page,
  // which the hardware prefetchers do not follow, and a tile's stores would otherwise wait on
  // those lines one row after another (measured with a bool mask: the weight gradient of 64-256
  // rows 2-9% faster, of 64 candidates over a shared weight at 16 rows 17%; a bit mask, 8 bytes
  // per tile row, gains nothing, nor did prefetching the lines the gradients are written to).
  void prefetch_next(int64_t row) const {
    constexpr int64_t kWeightBytes = kPanelWidth * int64_t(sizeof(scalar_t));
    const int64_t next = c0 + kPanelWidth;
    if constexpr (kMaskGradient) prefetch_bytes(weight + row * ld + kPanelWidth, kWeightBytes);
    if constexpr (kWeight != WeightGradient::kNone) {
      const auto* m = static_cast<const char*>(mask_at<scalar_t, kind>(mask, row * mask_ld));
      if constexpr (kind == MaskKind::kBits) prefetch_bytes(m + next / 8, kPanelWidth / 8);
      else if constexpr (kind == MaskKind::kByte) prefetch_bytes(m + next, kPanelWidth);
      else prefetch_bytes(m + next * int64_t(sizeof(scalar_t)), kWeightBytes);
    }
  }
  void store(int64_t row, int64_t v, const Vec& gradient) const {
    const int64_t c = v * Vec::size();
    const int64_t count = std::min<int64_t>(Vec::size(), n_cols - c);
    if (count <= 0) return;
    const int64_t at = row * ld + c;
    if constexpr (kMaskGradient)
      store_scalar(gradient * load_opmath(weight + at, count), grad_mask + at, count);
    if constexpr (kWeight != WeightGradient::kNone) {
      const Vec masked = gradient * mask_multiplier<scalar_t, kind>(
                                        mask_at<scalar_t, kind>(mask, row * mask_ld), c0 + c, count);
      if constexpr (kWeight == WeightGradient::kStore) {
        store_scalar(masked, grad_weight + at, count);
      } else {
        acc_t* t = total + row * sums_ld + c;
        (first ? masked : masked + Vec::loadu(t)).store(t);
      }
    }
  }
};

// The gradients of output rows [o0, o0 + n_out) of candidate k, written masked straight from the
// accumulators, or added to `total` (a shared weight's running sum, stride in_stride from row o0;
// null per candidate). A tile's rows are finished across every x panel before the next tile's
// (x from L2): a gradient row is one 4 KiB page at in = 1024, and a panel-by-panel order writes
// into every row of the item at once, more pages than the TLB holds. Over more than
// kGradWeightDepth x rows (a block of x in L2) the sums of the earlier blocks gather in `partial`
// (n_out x in_stride) and the last block's tiles start from them.
template <typename scalar_t, MaskKind kind, bool kMaskGradient, WeightGradient kWeight>
void masked_gradient_panels(const FusedGradWeightArgs& a, int64_t k, int64_t o0, int64_t n_out,
                            at::opmath_type<scalar_t>* total, at::opmath_type<scalar_t>* partial) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  using Tile = MaskedGradientTile<scalar_t, kind, kMaskGradient, kWeight>;
  constexpr int64_t kNR = Tile::kPanelWidth, kKC = kGradWeightDepth, kMR = kPanelWeightRows;
  const int64_t panels = a.in_stride / kNR;
  const acc_t* x_panels = static_cast<const acc_t*>(a.x_panels) + k * panels * a.rows * kNR;
  const acc_t* grad_t = static_cast<const acc_t*>(a.grad_t) + (k * a.out_features + o0) * a.rows;
  const int64_t last_block = std::max<int64_t>(a.rows - 1, 0) / kKC * kKC;
  // base + offset, or null for an output not computed.
  auto offset = [](auto* base, int64_t n) { return base == nullptr ? nullptr : base + n; };
  for (int64_t d0 = 0; d0 <= last_block; d0 += kKC) {
    const int64_t depth = std::min(kKC, a.rows - d0);
    for (int64_t i0 = 0; i0 < n_out; i0 += kMR) {
      const int64_t rows = std::min(kMR, n_out - i0);
      const acc_t* g = grad_t + i0 * a.rows + d0;
      const int64_t out_row = (k * a.out_features + o0 + i0) * a.in;
      for (int64_t p = 0; p * kNR < a.in; ++p) {
        const int64_t c0 = p * kNR, n_cols = std::min(kNR, a.in - c0);
        const int64_t vectors = (n_cols + Vec::size() - 1) / Vec::size();
        const acc_t* x = x_panels + (p * a.rows + d0) * kNR;
        acc_t* sums = offset(partial, i0 * a.in_stride + c0);
        if (d0 < last_block) {
          panel_product(vectors, rows, depth, g, a.rows, x, kNR, BufferTile<acc_t>{sums, a.in_stride, d0 > 0});
          continue;
        }
        const Tile tile{
            static_cast<const scalar_t*>(a.weight) + k * a.weight_stride + (o0 + i0) * a.in + c0,
            mask_at<scalar_t, kind>(a.mask, k * a.mask_stride + (o0 + i0) * a.mask_ld), a.mask_ld,
            offset(static_cast<scalar_t*>(a.grad_weight), out_row + c0),
            offset(static_cast<scalar_t*>(a.grad_mask), out_row + c0),
            offset(total, i0 * a.in_stride + c0), k == 0, a.in, c0, n_cols,
            last_block > 0 ? sums : nullptr, a.in_stride};
        panel_product(vectors, rows, depth, g, a.rows, x, kNR, tile);
      }
    }
  }
}

template <typename scalar_t, MaskKind kind>
void masked_gradients(const FusedGradWeightArgs& a, int64_t k, int64_t o0, int64_t n_out,
                      at::opmath_type<scalar_t>* total, at::opmath_type<scalar_t>* partial) {
  const bool mask_gradient = a.grad_mask != nullptr;
  auto run = [&]<bool kMask, WeightGradient kWeight>() {
    masked_gradient_panels<scalar_t, kind, kMask, kWeight>(a, k, o0, n_out, total, partial);
  };
  // The op computes at least one of the two gradients.
  if (a.grad_weight == nullptr) return run.template operator()<true, WeightGradient::kNone>();
  if (total == nullptr)
    return mask_gradient ? run.template operator()<true, WeightGradient::kStore>()
                         : run.template operator()<false, WeightGradient::kStore>();
  return mask_gradient ? run.template operator()<true, WeightGradient::kSum>()
                       : run.template operator()<false, WeightGradient::kSum>();
}

// The gradients of output rows [o0, o0 + n_out) of candidates [k_first, k_end) for kRows (at most
// kFewRows) rows of x, where they are bound by writing the gradients and reading the mask: each
// row G[k, o, :] = sum_r grad_t[k, o, r] x[k, r, :] is formed and written masked (or added to
// `total`, one opmath row of a shared weight's sum over the candidates) vector by vector, so that
// the gradients, the weight and the mask are streamed in memory order.
template <int64_t kRows, typename scalar_t, MaskKind kind>
void few_rows_gradients(const FusedGradWeightArgs& a, int64_t k_first, int64_t k_end, int64_t o0,
                        int64_t n_out, at::opmath_type<scalar_t>* total) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kNR = kPanelVectors<acc_t> * Vec::size();
  const int64_t panels = a.in_stride / kNR;
  auto* grad_weight = static_cast<scalar_t*>(a.grad_weight);
  auto* grad_mask = static_cast<scalar_t*>(a.grad_mask);
  for (int64_t o = o0; o < o0 + n_out; ++o) {
    for (int64_t k = k_first; k < k_end; ++k) {
      const acc_t* x = static_cast<const acc_t*>(a.x_panels) + k * panels * kRows * kNR;
      const acc_t* g = static_cast<const acc_t*>(a.grad_t) + (k * a.out_features + o) * kRows;
      Vec gv[kRows];
      for (int64_t r = 0; r < kRows; ++r) gv[r] = Vec(g[r]);
      const scalar_t* w_row = static_cast<const scalar_t*>(a.weight) + k * a.weight_stride + o * a.in;
      const void* m_row = mask_at<scalar_t, kind>(a.mask, k * a.mask_stride + o * a.mask_ld);
      const int64_t row = (k * a.out_features + o) * a.in;
      auto step = [&](int64_t c, int64_t count) __attribute__((always_inline)) {
        prefetch_ahead<scalar_t, kind>(grad_mask != nullptr ? w_row : nullptr,
                                       grad_weight != nullptr ? m_row : nullptr, c);
        // The gradient rows written are streams that restart at every page too (measured: the
        // weight gradient of one row with a bool mask 17-25% faster with these).
        if (grad_mask != nullptr) __builtin_prefetch(grad_mask + row + c + kPrefetchElements, 1);
        if (grad_weight != nullptr && total == nullptr)
          __builtin_prefetch(grad_weight + row + c + kPrefetchElements, 1);
        const acc_t* xc = x + c / kNR * kRows * kNR + c % kNR;
        Vec gradient = gv[0] * Vec::loadu(xc);
#pragma GCC unroll 4
        for (int64_t r = 1; r < kRows; ++r) gradient = at::vec::fmadd(gv[r], Vec::loadu(xc + r * kNR), gradient);
        if (grad_mask != nullptr)
          store_scalar(gradient * load_opmath(w_row + c, count), grad_mask + row + c, count);
        if (grad_weight == nullptr) return;
        const Vec masked = gradient * mask_multiplier<scalar_t, kind>(m_row, c, count);
        if (total == nullptr) store_scalar(masked, grad_weight + row + c, count);
        else (k == k_first ? masked : masked + Vec::loadu(total + c)).store(total + c);
      };
      const int64_t full = a.in / Vec::size() * Vec::size();
      for (int64_t c = 0; c < full; c += Vec::size()) step(c, Vec::size());
      if (full < a.in) step(full, a.in - full);
    }
    if (total != nullptr && grad_weight != nullptr)
      for (int64_t c = 0; c < a.in; c += Vec::size())
        store_scalar(Vec::loadu(total + c), grad_weight + o * a.in + c,
                     std::min<int64_t>(Vec::size(), a.in - c));
  }
}

// grad_mask[k] = G[k] ⊙ W[k] and either grad_weight[k] = G[k] ⊙ M[k] per candidate or, with
// a.sum_candidates, grad_weight = Σ_k G[k] ⊙ M[k] over every candidate (summed in opmath, rounded
// once), for the blocks idx in [begin, end) of kPanelOutBlock output rows.
template <typename scalar_t, MaskKind kind>
void fused_grad_weight(const FusedGradWeightArgs& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kNR = kPanelVectors<acc_t> * Vec::size();
  static_assert(kFusedAlign % kNR == 0);
  thread_local std::vector<acc_t> partial_buffer, total_buffer;
  acc_t* partial = a.rows > kGradWeightDepth ? scratch(partial_buffer, kPanelOutBlock * a.in_stride) : nullptr;
  acc_t* total = a.sum_candidates ? scratch(total_buffer, kPanelOutBlock * a.in_stride) : nullptr;
  const int64_t blocks = (a.out_features + kPanelOutBlock - 1) / kPanelOutBlock;
  for (int64_t idx = begin; idx < end; ++idx) {
    const int64_t k_first = a.sum_candidates ? 0 : idx / blocks;
    const int64_t k_end = a.sum_candidates ? a.candidates : k_first + 1;
    const int64_t o0 = (idx % blocks) * kPanelOutBlock;
    const int64_t n_out = std::min(kPanelOutBlock, a.out_features - o0);
    switch (a.rows) {
      case 1: few_rows_gradients<1, scalar_t, kind>(a, k_first, k_end, o0, n_out, total); continue;
      case 2: few_rows_gradients<2, scalar_t, kind>(a, k_first, k_end, o0, n_out, total); continue;
      case 3: few_rows_gradients<3, scalar_t, kind>(a, k_first, k_end, o0, n_out, total); continue;
      case 4: few_rows_gradients<4, scalar_t, kind>(a, k_first, k_end, o0, n_out, total); continue;
      default: break;
    }
    for (int64_t k = k_first; k < k_end; ++k) masked_gradients<scalar_t, kind>(a, k, o0, n_out, total, partial);
    // A shared weight's sum over candidates gathers in `total`, rounded once after the last one.
    if (!a.sum_candidates || a.grad_weight == nullptr) continue;
    for (int64_t j = 0; j < n_out; ++j)
      for (int64_t c = 0; c < a.in; c += Vec::size())
        store_scalar(Vec::loadu(total + j * a.in_stride + c),
                     static_cast<scalar_t*>(a.grad_weight) + (o0 + j) * a.in + c,
                     std::min<int64_t>(Vec::size(), a.in - c));
  }
}

template <typename scalar_t, MaskKind kind>
Kernels kernels_for_kind() {
  using Vec = Vectorized<at::opmath_type<scalar_t>>;
  return {&mask_multiply<scalar_t, kind>, &fused_forward<scalar_t, kind>,
          &panel_forward<scalar_t, kind>, &pack_panels<at::opmath_type<scalar_t>>, &transpose<at::opmath_type<scalar_t>>, kPanelVectors<at::opmath_type<scalar_t>> * Vec::size(),
          &fused_grad_input<scalar_t, kind>, &few_rows_grad_input<scalar_t, kind>,
          &fused_grad_weight<scalar_t, kind>,
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
          true
#else
          false
#endif
  };
}

template <typename scalar_t>
Kernels kernels_for_dtype(MaskKind kind) {
  switch (kind) {
    case MaskKind::kByte: return kernels_for_kind<scalar_t, MaskKind::kByte>();
    case MaskKind::kBits: return kernels_for_kind<scalar_t, MaskKind::kBits>();
    case MaskKind::kSoft: return kernels_for_kind<scalar_t, MaskKind::kSoft>();
  }
  TORCH_CHECK(false, "masked_linear: unknown mask kind");
}

}  // namespace

Kernels kernels_for(c10::ScalarType dtype, MaskKind kind) {
  switch (dtype) {
    case c10::ScalarType::Float: return kernels_for_dtype<float>(kind);
    case c10::ScalarType::Double: return kernels_for_dtype<double>(kind);
    case c10::ScalarType::BFloat16: return kernels_for_dtype<c10::BFloat16>(kind);
    case c10::ScalarType::Half: return kernels_for_dtype<c10::Half>(kind);
    default: TORCH_CHECK_TYPE(false, "masked_linear: unsupported dtype ", dtype);
  }
}

}  // namespace sparsenas::cpu::CPU_CAPABILITY
