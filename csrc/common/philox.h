#pragma once
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator behind every sparsenas sampler, usable from host and device code.
//
// A sampler never keeps generator state: the random bits of position j of candidate c are a pure
// function of (seed, c, stream, purpose, j), so CPU and CUDA, any batch split and any number of
// workers give the same masks. The layout (mirrored by sparsenas/sampling/_philox.py):
//   key     = (seed mod 2^32, seed >> 32)                      (seed as an unsigned 64-bit value)
//   counter = (block, c mod 2^32, c >> 32, purpose << 24 | stream)
// where `block` indexes groups of positions (16 per block for the 8-bit primary keys of exact-k
// sampling, 4 for 32-bit keys, 2 for the 52-bit Gumbel uniforms) and `stream` (< 2^24) separates independent draws of one candidate,
// e.g. the layers of a network.
//
// Everything here that involves floating point uses only correctly rounded IEEE operations in a
// fixed order (no library log, no fused multiply-add), so host, device and the numpy reference
// agree bit for bit.

#include <cstdint>
#include <cstring>

#include <limits>

#if defined(__CUDACC__)
#define SPARSENAS_HOST_DEVICE __host__ __device__ __forceinline__
#define SPARSENAS_UNROLL _Pragma("unroll")
#else
#define SPARSENAS_HOST_DEVICE inline
#define SPARSENAS_UNROLL _Pragma("GCC unroll 16")
#endif

namespace sparsenas {

struct Philox4 {
  uint32_t word[4];
};

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

SPARSENAS_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                            uint32_t k0, uint32_t k1) {
  SPARSENAS_UNROLL
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// What a block of random words is used for; part of the counter, so the draws never overlap.
enum PhiloxPurpose : uint32_t {
  kUniformKey = 0,      // exact-k uniform: primary 8-bit key of each position
  kUniformTieKey = 1,   // exact-k uniform: secondary key, consulted only when primary keys tie
  kGumbelUniform = 2,   // Gumbel-top-k: a 52-bit uniform per position
};

constexpr int64_t kMaxStream = int64_t(1) << 24;

// The counter-based draw of one candidate: block `block` of (seed, candidate, stream, purpose).
struct CandidateStream {
  uint32_t k0, k1, c1, c2, c3;

  SPARSENAS_HOST_DEVICE CandidateStream(uint64_t seed, uint64_t candidate, uint32_t stream,
                                        uint32_t purpose)
      : k0(static_cast<uint32_t>(seed)),
        k1(static_cast<uint32_t>(seed >> 32)),
        c1(static_cast<uint32_t>(candidate)),
        c2(static_cast<uint32_t>(candidate >> 32)),
        c3((purpose << 24) | stream) {}

  SPARSENAS_HOST_DEVICE Philox4 block(uint32_t index) const {
    return philox4x32_10(index, c1, c2, c3, k0, k1);
  }

  // The 32-bit key of position j: word j % 4 of block j / 4.
  SPARSENAS_HOST_DEVICE uint32_t word_at(int64_t j) const {
    return block(static_cast<uint32_t>(j >> 2)).word[j & 3];
  }
};

// Position j of a block of 8-bit keys: block j / 16, word (j / 4) % 4, byte j % 4 (lowest
// first), i.e. the block's 16 bytes in little-endian order.
SPARSENAS_HOST_DEVICE uint8_t byte_of(const Philox4& block, int64_t j) {
  return static_cast<uint8_t>(block.word[(j >> 2) & 3] >> (8 * (j & 3)));
}

// ---- deterministic floating point -------------------------------------------------------------

SPARSENAS_HOST_DEVICE double fmul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

SPARSENAS_HOST_DEVICE double fadd_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

SPARSENAS_HOST_DEVICE double fdiv_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

SPARSENAS_HOST_DEVICE uint64_t double_bits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
#endif
}

SPARSENAS_HOST_DEVICE double bits_double(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
#endif
}

// The uniform in (0, 1) of a Gumbel position: 52 random bits b, u = (2 b + 1) 2^-53 (exact).
SPARSENAS_HOST_DEVICE double uniform_open01(uint32_t high, uint32_t low) {
  const uint64_t b = (static_cast<uint64_t>(high) << 20) | (low >> 12);
  return static_cast<double>(2 * b + 1) * 0x1p-53;
}

// Natural log of a normal positive double in a fixed sequence of correctly rounded operations:
// x = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1), as an odd
// series in s truncated below double precision (|s| <= 0.1716, s^2 <= 0.0295). Accurate to a few
// ulp, and identical on every platform that rounds IEEE operations to nearest.
SPARSENAS_HOST_DEVICE double deterministic_log(double x) {
  const uint64_t bits = double_bits(x);
  int64_t exponent = static_cast<int64_t>((bits >> 52) & 0x7FF) - 1022;
  double m = bits_double((bits & 0x000FFFFFFFFFFFFFull) | (uint64_t(1022) << 52));  // [0.5, 1)
  if (m < 0.70710678118654752440) {
    m = fmul_rn(m, 2.0);
    exponent -= 1;
  }
  const double f = fadd_rn(m, -1.0);  // exact (Sterbenz)
  const double s = fdiv_rn(f, fadd_rn(f, 2.0));
  const double z = fmul_rn(s, s);
  double series = 1.0 / 23.0;
  series = fadd_rn(1.0 / 21.0, fmul_rn(z, series));
  series = fadd_rn(1.0 / 19.0, fmul_rn(z, series));
  series = fadd_rn(1.0 / 17.0, fmul_rn(z, series));
  series = fadd_rn(1.0 / 15.0, fmul_rn(z, series));
  series = fadd_rn(1.0 / 13.0, fmul_rn(z, series));
  series = fadd_rn(1.0 / 11.0, fmul_rn(z, series));
  series = fadd_rn(1.0 / 9.0, fmul_rn(z, series));
  series = fadd_rn(1.0 / 7.0, fmul_rn(z, series));
  series = fadd_rn(1.0 / 5.0, fmul_rn(z, series));
  series = fadd_rn(1.0 / 3.0, fmul_rn(z, series));
  series = fadd_rn(1.0, fmul_rn(z, series));
  const double log_m = fmul_rn(fmul_rn(2.0, s), series);
  return fadd_rn(fmul_rn(static_cast<double>(exponent), 0.69314718055994530942), log_m);
}

// Efraimidis-Spirakis / Gumbel-top-k key of a position with weight w: log(u) / w. The k largest
// keys are a sample of k without replacement with probabilities proportional to the weights; a
// zero weight (either sign) gives -inf.
SPARSENAS_HOST_DEVICE double gumbel_key(uint32_t high, uint32_t low, double weight) {
  if (weight == 0.0) return -std::numeric_limits<double>::infinity();
  return fdiv_rn(deterministic_log(uniform_open01(high, low)), weight);
}

// ---- order-preserving integer keys ------------------------------------------------------------
// Unsigned keys whose integer order is the float order (NaN above +inf, -0 equal to +0), so that
// "k largest scores" becomes "k smallest of the complemented keys" for one radix select.

SPARSENAS_HOST_DEVICE uint32_t ordered_key(float x) {
  if (x != x) return 0xFFFFFFFFu;
  if (x == 0.0f) x = 0.0f;
  uint32_t bits;
#if defined(__CUDA_ARCH__)
  bits = __float_as_uint(x);
#else
  std::memcpy(&bits, &x, sizeof bits);
#endif
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

SPARSENAS_HOST_DEVICE uint64_t ordered_key(double x) {
  if (x != x) return ~uint64_t(0);
  if (x == 0.0) x = 0.0;
  const uint64_t bits = double_bits(x);
  return (bits >> 63) ? ~bits : (bits | (uint64_t(1) << 63));
}

}  // namespace sparsenas
