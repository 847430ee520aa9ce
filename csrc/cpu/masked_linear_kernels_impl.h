// Included only by masked_linear_kernels_<capability>.cpp, each with CPU_CAPABILITY (and
// CPU_CAPABILITY_<X>) defined, so that at::vec::Vectorized is that capability's vector.

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/masked_linear_kernels.h"

namespace sparsenas::cpu::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// lut[b][j] = bit j of b, so that a byte of a packed mask multiplies 8 columns with one vector op.
template <typename acc_t>
const std::array<std::array<acc_t, 8>, 256>& bit_lut() {
  static const auto lut = [] {
    std::array<std::array<acc_t, 8>, 256> t{};
    for (int b = 0; b < 256; ++b)
      for (int j = 0; j < 8; ++j) t[b][j] = acc_t((b >> j) & 1);
    return t;
  }();
  return lut;
}

template <typename scalar_t, typename acc_t>
inline void to_opmath(const scalar_t* src, int64_t n, acc_t* dst) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(dst, src, n * sizeof(acc_t));
  } else {
    using VecS = Vectorized<scalar_t>;
    using VecF = Vectorized<float>;
    int64_t c = 0;
    for (; c + VecS::size() <= n; c += VecS::size()) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(VecS::loadu(src + c));
      lo.store(dst + c);
      hi.store(dst + c + VecF::size());
    }
    for (; c < n; ++c) dst[c] = acc_t(src[c]);
  }
}

// dst[c] = src[c] * mask[c] in opmath for c < n.
template <typename scalar_t, MaskKind kind>
inline void load_masked_row(const scalar_t* src, const void* mask, int64_t n,
                            at::opmath_type<scalar_t>* dst) {
  using acc_t = at::opmath_type<scalar_t>;
  to_opmath(src, n, dst);
  if constexpr (kind == MaskKind::kByte) {
    const uint8_t* m = static_cast<const uint8_t*>(mask);
    for (int64_t c = 0; c < n; ++c) dst[c] *= acc_t(m[c]);
  } else if constexpr (kind == MaskKind::kBits) {
    const uint8_t* bits = static_cast<const uint8_t*>(mask);
    const auto& lut = bit_lut<acc_t>();
    const int64_t full = n / 8;
    for (int64_t b = 0; b < full; ++b) {
      const acc_t* l = lut[bits[b]].data();
      acc_t* d = dst + 8 * b;
      for (int j = 0; j < 8; ++j) d[j] *= l[j];
    }
    for (int64_t c = 8 * full; c < n; ++c) dst[c] *= acc_t((bits[c >> 3] >> (c & 7)) & 1);
  } else {
    const scalar_t* m = static_cast<const scalar_t*>(mask);
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      for (int64_t c = 0; c < n; ++c) dst[c] *= m[c];
    } else {
      for (int64_t c = 0; c < n; ++c) dst[c] *= acc_t(m[c]);
    }
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
  std::vector<acc_t> row(a.cols);
  for (int64_t r = begin; r < end; ++r) {
    load_masked_row<scalar_t, kind>(static_cast<const scalar_t*>(a.src) + r * a.src_ld,
                                    mask_at<scalar_t, kind>(a.mask, r * a.mask_ld), a.cols,
                                    row.data());
    dst_t* d = static_cast<dst_t*>(a.dst) + r * a.dst_ld;
    if (a.accumulate) {
      for (int64_t c = 0; c < a.cols; ++c) d[c] = dst_t(acc_t(d[c]) + row[c]);
    } else if constexpr (std::is_same_v<dst_t, acc_t>) {
      std::memcpy(d, row.data(), a.cols * sizeof(acc_t));
    } else {
      for (int64_t c = 0; c < a.cols; ++c) d[c] = dst_t(row[c]);
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

template <typename scalar_t, MaskKind kind>
void fused_forward(const FusedForwardArgs& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kO = kFusedOutBlock;
  // Wide vectors have registers for a 4 x 4 tile of accumulators; 256-bit ones for 4 x 2.
  constexpr int64_t kR = sizeof(Vectorized<acc_t>) >= 64 ? 4 : 2;
  static_assert(kFusedAlign % Vectorized<acc_t>::size() == 0);
  const int64_t ld = a.in_stride;
  std::vector<acc_t> wm(kO * ld, acc_t(0));
  const scalar_t* weight = static_cast<const scalar_t*>(a.weight);
  const scalar_t* bias = static_cast<const scalar_t*>(a.bias);
  for (int64_t idx = begin; idx < end; ++idx) {
    const int64_t k = idx / a.blocks_per_candidate;
    const int64_t o0 = (idx % a.blocks_per_candidate) * kO;
    const int64_t n_out = std::min(kO, a.out_features - o0);
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

template <typename scalar_t>
Kernels kernels_for_dtype(MaskKind kind) {
  switch (kind) {
    case MaskKind::kByte:
      return {&mask_multiply<scalar_t, MaskKind::kByte>, &fused_forward<scalar_t, MaskKind::kByte>};
    case MaskKind::kBits:
      return {&mask_multiply<scalar_t, MaskKind::kBits>, &fused_forward<scalar_t, MaskKind::kBits>};
    case MaskKind::kSoft:
      return {&mask_multiply<scalar_t, MaskKind::kSoft>, &fused_forward<scalar_t, MaskKind::kSoft>};
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
