#pragma once
// Batched mask sampling: B rows of n positions, k_r of them selected in row r.
//
//   uniform_k_mask(k [B], n, seed, first_candidate, stream, packed): k_r positions uniformly at
//       random; row r is candidate first_candidate + r, selected = the k_r smallest in the order
//       (8-bit primary key, 32-bit tie key, position), the keys being Philox draws of
//       (seed, candidate, stream) as laid out in csrc/common/philox.h. Every k-subset is equally
//       likely up to ties of the 40 random bits (probability ~ n^2 / 2^41 per row).
//   topk_mask(scores [B, n], k [B], packed): the k_r largest scores, ties to the lower position,
//       NaN above +inf.
//   gumbel_topk_mask(weights [B, n], k [B], seed, first_candidate, stream, packed): k_r positions
//       without replacement with probability proportional to the non-negative weights: the k_r
//       largest Gumbel keys log(u) / w, ties to the lower position; a zero weight is never chosen.
//   philox4x32_10(counter [N, 4], key [N, 2]) -> [N, 4]: the raw generator (int64 tensors holding
//       32-bit words), for known-answer tests and for users who want the same streams.
//
// Output: bool [B, n], or with packed=true uint8 [B, ceil(n / 8)] where bit j of byte b is
// position 8 b + j and the padding bits are zero.

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace sparsenas {

struct SamplingGeometry {
  int64_t rows;     // B
  int64_t columns;  // n
};

// Each validates its op's arguments (types, shapes, devices, value ranges) and returns B and n.
SamplingGeometry check_uniform_k_mask(const at::Tensor& k, int64_t n, int64_t first_candidate,
                                      int64_t stream);
SamplingGeometry check_topk_mask(const at::Tensor& scores, const at::Tensor& k);
// gumbel_topk_mask's checks without its value checks (check_gumbel_weight_values), which a kernel
// may make as it reads the weights.
SamplingGeometry check_gumbel_topk_mask(const at::Tensor& weights, const at::Tensor& k,
                                        int64_t first_candidate, int64_t stream);
// Weights finite and non-negative, and k at most each row's positive weights (tensor ops: two
// passes over the weights and a few temporaries).
void check_gumbel_weight_values(const at::Tensor& weights, const at::Tensor& k);
void check_philox4x32_10(const at::Tensor& counter, const at::Tensor& key);

// An uninitialised output of the requested format on `like`'s device.
at::Tensor empty_mask(const at::Tensor& like, const SamplingGeometry& g, bool packed);

inline int64_t mask_width(int64_t n, bool packed) { return packed ? (n + 7) / 8 : n; }

}  // namespace sparsenas
