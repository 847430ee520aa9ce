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

template <typename scalar_t, MaskKind kind>
inline at::opmath_type<scalar_t> mask_scalar(const void* mask, int64_t c) {
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
inline Vectorized<acc_t> mask_vector(const uint8_t* m, int64_t c) {
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
inline Vectorized<at::opmath_type<scalar_t>> load_opmath(const scalar_t* src, int64_t count) {
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
inline void store_scalar(const Vectorized<at::opmath_type<scalar_t>>& v, scalar_t* dst,
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
inline Vectorized<at::opmath_type<scalar_t>> mask_multiplier(const void* mask, int64_t c,
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
inline Vectorized<at::opmath_type<scalar_t>> masked_weight(const scalar_t* weight, const void* mask,
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
inline const void* mask_at(const void* mask, int64_t offset) {
  const size_t elem = kind == MaskKind::kSoft ? sizeof(scalar_t) : 1;
  return static_cast<const char*>(mask) + offset * elem;
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

template <typename acc_t>
inline acc_t reduce_sum(const Vectorized<acc_t>& v) {
  alignas(64) acc_t lanes[Vectorized<acc_t>::size()];
  v.store(lanes);
  acc_t s = 0;
  for (int64_t i = 0; i < Vectorized<acc_t>::size(); ++i) s += lanes[i];
  return s;
}

// kO masked weight rows (wm, stride ld) against kR x rows (x, stride ld): a register-blocked
// kO x kR tile of dot products.
template <int64_t kO, int64_t kR, typename acc_t, typename scalar_t>
inline void dot_block(const acc_t* wm, const acc_t* x, int64_t ld, scalar_t* y, int64_t y_ld,
                      int64_t n_out, const acc_t* bias) {
  using Vec = Vectorized<acc_t>;
  Vec acc[kO][kR];
  for (int64_t j = 0; j < kO; ++j)
    for (int64_t r = 0; r < kR; ++r) acc[j][r] = Vec(acc_t(0));
  for (int64_t c = 0; c < ld; c += Vec::size()) {
    Vec xv[kR];
    for (int64_t r = 0; r < kR; ++r) xv[r] = Vec::loadu(x + r * ld + c);
    for (int64_t j = 0; j < kO; ++j) {
      const Vec wv = Vec::loadu(wm + j * ld + c);
      for (int64_t r = 0; r < kR; ++r) acc[j][r] = at::vec::fmadd(xv[r], wv, acc[j][r]);
    }
  }
  for (int64_t r = 0; r < kR; ++r)
    for (int64_t j = 0; j < n_out; ++j) y[r * y_ld + j] = scalar_t(reduce_sum(acc[j][r]) + bias[j]);
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
  for (int64_t j = 0; j < kO; ++j)
    for (int64_t r = 0; r < kR; ++r) acc[j][r] = Vec(acc_t(0));
  auto step = [&](int64_t c, int64_t count) {
    Vec xv[kR];
    for (int64_t r = 0; r < kR; ++r) xv[r] = Vec::loadu(x + r * ld + c);
    for (int64_t j = 0; j < kO; ++j) {
      const Vec wv = masked_weight<scalar_t, kind>(w_rows[j], m_rows[j], c, count);
      for (int64_t r = 0; r < kR; ++r) acc[j][r] = at::vec::fmadd(xv[r], wv, acc[j][r]);
    }
  };
  const int64_t full = a.in / Vec::size() * Vec::size();
  for (int64_t c = 0; c < full; c += Vec::size()) step(c, Vec::size());
  if (full < a.in) step(full, a.in - full);
  for (int64_t r = 0; r < kR; ++r)
    for (int64_t j = 0; j < n_out; ++j)
      y[r * a.out_features + j] = scalar_t(reduce_sum(acc[j][r]) + bias[j]);
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
  for (int64_t idx = begin; idx < end; ++idx) {
    const int64_t k = idx / a.blocks_per_candidate;
    const int64_t o0 = (idx % a.blocks_per_candidate) * kO;
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

constexpr int64_t kGradInputVectors = 4;  // vectors per column block of fused_grad_input

// kR gradient rows x one column block: acc[r][v] += grad_t[o, r] * masked W[o, block v], o < out.
template <int64_t kR, bool kFull, typename scalar_t, MaskKind kind>
inline void grad_input_block(const FusedGradInputArgs& a, int64_t k, int64_t r0, int64_t c0,
                             int64_t n_cols) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kV = kGradInputVectors;
  Vec acc[kR][kV];
  for (int64_t r = 0; r < kR; ++r)
    for (int64_t v = 0; v < kV; ++v) acc[r][v] = Vec(acc_t(0));
  int64_t counts[kV];
  for (int64_t v = 0; v < kV; ++v)
    counts[v] = kFull ? Vec::size() : std::clamp<int64_t>(n_cols - v * Vec::size(), 0, Vec::size());
  const scalar_t* weight = static_cast<const scalar_t*>(a.weight) + k * a.weight_stride;
  const acc_t* grad_t = static_cast<const acc_t*>(a.grad_t) + k * a.out_features * a.rows + r0;
  for (int64_t o = 0; o < a.out_features; ++o) {
    const scalar_t* w_row = weight + o * a.in;
    const void* m_row = mask_at<scalar_t, kind>(a.mask, k * a.mask_stride + o * a.mask_ld);
    Vec wv[kV];
    for (int64_t v = 0; v < kV; ++v)
      wv[v] = kFull ? masked_weight<scalar_t, kind>(w_row, m_row, c0 + v * Vec::size(), Vec::size())
            : counts[v] > 0 ? masked_weight<scalar_t, kind>(w_row, m_row, c0 + v * Vec::size(), counts[v])
                            : Vec(acc_t(0));
    const acc_t* g = grad_t + o * a.rows;
    for (int64_t r = 0; r < kR; ++r) {
      const Vec gv(g[r]);
      for (int64_t v = 0; v < kV; ++v) acc[r][v] = at::vec::fmadd(gv, wv[v], acc[r][v]);
    }
  }
  scalar_t* out = static_cast<scalar_t*>(a.out) + (k * a.rows + r0) * a.in + c0;
  for (int64_t r = 0; r < kR; ++r)
    for (int64_t v = 0; v < kV; ++v)
      if (counts[v] > 0) store_scalar(acc[r][v], out + r * a.in + v * Vec::size(), counts[v]);
}

template <bool kFull, typename scalar_t, MaskKind kind>
void grad_input_rows(const FusedGradInputArgs& a, int64_t k, int64_t c0, int64_t n_cols) {
  using Vec = Vectorized<at::opmath_type<scalar_t>>;
  // Accumulators: kR x kGradInputVectors registers (of 32 with AVX-512, 16 with AVX2).
  constexpr int64_t kR = sizeof(Vec) >= 64 ? 6 : 2;
  int64_t r0 = 0;
  for (; r0 + kR <= a.rows; r0 += kR) grad_input_block<kR, kFull, scalar_t, kind>(a, k, r0, c0, n_cols);
  switch (a.rows - r0) {
    case 0: break;
    case 1: grad_input_block<1, kFull, scalar_t, kind>(a, k, r0, c0, n_cols); break;
    case 2: grad_input_block<2, kFull, scalar_t, kind>(a, k, r0, c0, n_cols); break;
    case 3: grad_input_block<3, kFull, scalar_t, kind>(a, k, r0, c0, n_cols); break;
    case 4: grad_input_block<4, kFull, scalar_t, kind>(a, k, r0, c0, n_cols); break;
    default: grad_input_block<5, kFull, scalar_t, kind>(a, k, r0, c0, n_cols); break;
  }
}

template <typename scalar_t, MaskKind kind>
void fused_grad_input(const FusedGradInputArgs& a, int64_t begin, int64_t end) {
  using Vec = Vectorized<at::opmath_type<scalar_t>>;
  const int64_t block_cols = kGradInputVectors * Vec::size();
  for (int64_t idx = begin; idx < end; ++idx) {
    const int64_t k = idx / a.col_blocks;
    const int64_t c0 = (idx % a.col_blocks) * block_cols;
    const int64_t n_cols = std::min(block_cols, a.in - c0);
    if (n_cols == block_cols) grad_input_rows<true, scalar_t, kind>(a, k, c0, n_cols);
    else grad_input_rows<false, scalar_t, kind>(a, k, c0, n_cols);
  }
}

// Vectors (columns) per step of fused_grad_weight: with kGradWeightRows rows, 16 accumulators of
// the 32 AVX-512 registers, 8 of the 16 AVX2 ones.
template <typename acc_t>
constexpr int64_t kGradWeightVectors = sizeof(Vectorized<acc_t>) >= 64 ? 4 : 2;
// Output rows per step of fused_grad_weight: kGradWeightRows x kGradWeightVectors accumulators.
constexpr int64_t kGradWeightRows = kFusedGradWeightRows;

// Output rows [o0, o0 + n_out) (n_out <= kO) x one column block [c0, c0 + kV lanes) of candidate
// k: G[k] = grad_t[k] x[k] as a kO x kV tile of accumulators, so that each x vector loaded serves
// kO rows.
template <bool kFull, int64_t kO, int64_t kV, typename acc_t>
inline void gradient_tile(const FusedGradWeightArgs& a, int64_t k, int64_t o0, int64_t n_out,
                          int64_t c0, Vectorized<acc_t> (&acc)[kO][kV]) {
  using Vec = Vectorized<acc_t>;
  const acc_t* g[kO];
  for (int64_t j = 0; j < kO; ++j)  // rows past the end repeat the last one (results unused)
    g[j] = static_cast<const acc_t*>(a.grad_t) + (k * a.out_features + o0 + std::min(j, n_out - 1)) * a.rows;
  const acc_t* xk = static_cast<const acc_t*>(a.x) + k * a.rows * a.in_stride + c0;
  for (int64_t j = 0; j < kO; ++j)
    for (int64_t v = 0; v < kV; ++v) acc[j][v] = Vec(acc_t(0));
  for (int64_t r = 0; r < a.rows; ++r) {
    Vec xv[kV];
    for (int64_t v = 0; v < kV; ++v) xv[v] = Vec::loadu(xk + r * a.in_stride + v * Vec::size());
    for (int64_t j = 0; j < kO; ++j) {
      const Vec gv(g[j][r]);
      for (int64_t v = 0; v < kV; ++v) acc[j][v] = at::vec::fmadd(gv, xv[v], acc[j][v]);
    }
  }
}

// The gradients of one tile (see gradient_tile): grad_mask[k] = G[k] ⊙ W[k] and either
// grad_weight[k] = G[k] ⊙ M[k] per candidate or, with a.sum_candidates, grad_weight =
// Σ_k G[k] ⊙ M[k] over every candidate (summed in opmath, rounded once).
template <bool kFull, int64_t kO, typename scalar_t, MaskKind kind>
inline void grad_weight_block(const FusedGradWeightArgs& a, int64_t k_first, int64_t o0,
                              int64_t n_out, int64_t c0) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kV = kGradWeightVectors<acc_t>;
  int64_t counts[kV];
  for (int64_t v = 0; v < kV; ++v)
    counts[v] = kFull ? Vec::size() : std::clamp<int64_t>(a.in - c0 - v * Vec::size(), 0, Vec::size());
  scalar_t* grad_weight = static_cast<scalar_t*>(a.grad_weight);
  scalar_t* grad_mask = static_cast<scalar_t*>(a.grad_mask);
  const int64_t k_end = a.sum_candidates ? a.candidates : k_first + 1;
  // The running sum over candidates, in L1 (the registers hold the tile's accumulators).
  alignas(64) acc_t total[kO][kV * Vec::size()];
  Vec acc[kO][kV];
  for (int64_t k = k_first; k < k_end; ++k) {
    gradient_tile<kFull, kO, kV>(a, k, o0, n_out, c0, acc);
    const scalar_t* weight = static_cast<const scalar_t*>(a.weight) + k * a.weight_stride;
    for (int64_t j = 0; j < n_out; ++j) {
      const int64_t o = o0 + j;
      const scalar_t* w_row = weight + o * a.in;
      const void* m_row = mask_at<scalar_t, kind>(a.mask, k * a.mask_stride + o * a.mask_ld);
      const int64_t dst_row = (k * a.out_features + o) * a.in;
      for (int64_t v = 0; v < kV; ++v) {
        if (!kFull && counts[v] == 0) continue;
        const int64_t c = c0 + v * Vec::size();
        if (grad_mask != nullptr)
          store_scalar(acc[j][v] * load_opmath(w_row + c, counts[v]), grad_mask + dst_row + c, counts[v]);
        if (grad_weight == nullptr) continue;
        const Vec masked = acc[j][v] * mask_multiplier<scalar_t, kind>(m_row, c, counts[v]);
        if (!a.sum_candidates) {
          store_scalar(masked, grad_weight + dst_row + c, counts[v]);
        } else {
          acc_t* t = total[j] + v * Vec::size();
          (k == k_first ? masked : masked + Vec::loadu(t)).store(t);
        }
      }
    }
  }
  if (!a.sum_candidates || grad_weight == nullptr) return;
  for (int64_t j = 0; j < n_out; ++j)
    for (int64_t v = 0; v < kV; ++v)
      if (kFull || counts[v] > 0)
        store_scalar(Vec::loadu(total[j] + v * Vec::size()),
                     grad_weight + (o0 + j) * a.in + c0 + v * Vec::size(), counts[v]);
}

template <typename scalar_t, MaskKind kind>
void fused_grad_weight(const FusedGradWeightArgs& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kO = kGradWeightRows;
  constexpr int64_t kBlock = kGradWeightVectors<acc_t> * Vec::size();
  // x rows are padded to kFusedAlign, so whole blocks of kGradWeightVectors vectors can be read.
  static_assert(kFusedAlign % kBlock == 0);
  const int64_t blocks = (a.out_features + kO - 1) / kO;
  const int64_t full = a.in / kBlock * kBlock;
  for (int64_t idx = begin; idx < end; ++idx) {
    const int64_t k = a.sum_candidates ? 0 : idx / blocks;
    const int64_t o0 = (idx % blocks) * kO;
    const int64_t n_out = std::min(kO, a.out_features - o0);
    for (int64_t c0 = 0; c0 < full; c0 += kBlock)
      grad_weight_block<true, kO, scalar_t, kind>(a, k, o0, n_out, c0);
    if (full < a.in) grad_weight_block<false, kO, scalar_t, kind>(a, k, o0, n_out, full);
  }
}

template <typename scalar_t, MaskKind kind>
Kernels kernels_for_kind() {
  using Vec = Vectorized<at::opmath_type<scalar_t>>;
  return {&mask_multiply<scalar_t, kind>, &fused_forward<scalar_t, kind>,
          &fused_grad_input<scalar_t, kind>, &fused_grad_weight<scalar_t, kind>,
          kGradInputVectors * Vec::size(),
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
