#pragma once
// Inner loops of the masked_linear CPU kernels. They are compiled once per CPU capability
// (masked_linear_kernels_{default,avx2,avx512}.cpp include masked_linear_kernels_impl.h with
// CPU_CAPABILITY set, as ATen does for its own kernels) and csrc/cpu/masked_linear.cpp picks the
// best one the machine supports at run time.

#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>

namespace at {
class Tensor;
}

namespace sparsenas::cpu {

// How a mask is stored: bytes (bool / uint8 0-1), bits (packed, 1 bit per column) or soft
// (floating, the weight's dtype).
enum class MaskKind { kByte, kBits, kSoft };

// dst[r, c] (+)= src[r, c] * mask[r, c] for rows r in [begin, end) and c < cols. The mask of row r
// starts at mask + r * mask_ld elements of its kind (bytes for kByte / kBits); a bit-packed row
// starts at bit 0 of its first byte. src is the op's dtype, dst the op's dtype or, when
// dst_opmath, its opmath dtype (float for bfloat16 / float16: a sum over candidates stays exact).
struct MaskMultiplyArgs {
  const void* src;
  int64_t src_ld;
  const void* mask;
  int64_t mask_ld;
  void* dst;
  int64_t dst_ld;
  int64_t cols;
  bool accumulate;
  bool dst_opmath;
};
using MaskMultiplyFn = void (*)(const MaskMultiplyArgs&, int64_t begin, int64_t end);

// Bytes of a weight shared by several candidates that a loop over them holds in L2 (a per-core L2
// is 0.5-2 MiB on current x86 CPUs) while every candidate's mask rows are applied to them.
constexpr int64_t kSharedWeightBytes = 256 * 1024;

// The candidate and the block of item idx of a loop over K candidates' blocks of output rows.
// With a weight shared by the candidates (weight_stride 0), consecutive items run over groups of
// `group` blocks: one candidate's blocks of the group (its mask rows read in order), then the next
// candidate's, so that the group's weight rows come from memory once and serve every candidate
// from cache; otherwise they are one candidate's blocks, its weight streamed in order.
struct CandidateBlock {
  int64_t k;
  int64_t block;
};
inline CandidateBlock candidate_block(int64_t idx, int64_t candidates, int64_t blocks,
                                      int64_t weight_stride, int64_t group) {
  if (weight_stride != 0 || candidates == 1) return {idx / blocks, idx % blocks};
  const int64_t q = idx / (candidates * group), rem = idx % (candidates * group);
  const int64_t size = std::min(group, blocks - q * group);
  return {rem / size, q * group + rem % size};
}

// y[k, r, o] = sum_c x[k, r, c] * weight[k, o, c] * mask[k, o, c] (+ bias[k, o]) for the items
// idx in [begin, end) of blocks of output rows (candidate_block(idx, ...)). For fused_forward
// the blocks are kFusedOutBlock rows and x is opmath [K, rows, in_stride] with zero columns beyond
// in (in_stride a multiple of kFusedAlign). A stride of 0 shares weight / mask / bias between
// candidates.
struct FusedForwardArgs {
  const void* x;
  const void* weight;
  int64_t weight_stride;
  const void* mask;
  int64_t mask_stride;
  int64_t mask_ld;
  const void* bias;  // nullptr: no bias
  int64_t bias_stride;
  void* out;
  int64_t rows;
  int64_t in;
  int64_t in_stride;
  int64_t out_features;
  int64_t candidates;
  int64_t blocks_per_candidate;
};
using FusedForwardFn = void (*)(const FusedForwardArgs&, int64_t begin, int64_t end);

// panel_forward: the same product for more than a few rows of x, as y^T = (W ⊙ M) x^T, over
// blocks of kPanelOutBlock output rows. x comes transposed in panels of panel_rows rows (opmath
// [K, ceil(rows / panel_rows), in, panel_rows], zero beyond rows; in_stride is not used), the
// weight rows are masked one cache block at a time and broadcast against x panel vectors, so
// that the streamed operand is the scalar one and every x vector loaded from L1 serves several
// weight rows.
// panels[k, p] = x[k, p * panel_rows : (p + 1) * panel_rows]^T (zero beyond rows) for the items
// idx = k * panels + p in [begin, end); x is opmath [K, rows, in] and panels opmath
// [K, panels, in, panel_rows].
using PackPanelsFn = void (*)(const void* x, int64_t rows, int64_t in, void* panels,
                              int64_t begin, int64_t end);
// dst[k] = src[k]^T for the items k in [begin, end) (src opmath [K, rows, cols]).
using TransposeFn = void (*)(const void* src, int64_t rows, int64_t cols, void* dst,
                             int64_t begin, int64_t end);

// grad_input[k, r, c] = sum_o grad[k, r, o] * weight[k, o, c] * mask[k, o, c] for the items
// idx in [begin, end) of panel_rows columns each (idx = k * col_blocks + block); grad is opmath
// [K, rows, out]. For more than kFewRows rows (fewer: few_rows_grad_input).
struct FusedGradInputArgs {
  const void* grad;
  const void* weight;
  int64_t weight_stride;
  const void* mask;
  int64_t mask_stride;
  int64_t mask_ld;
  void* out;
  int64_t rows;
  int64_t in;
  int64_t out_features;
  int64_t col_blocks;
};
using FusedGradInputFn = void (*)(const FusedGradInputArgs&, int64_t begin, int64_t end);

// At most this many rows of x (or of the gradient) per candidate, a product is bound by reading
// the weight and the mask (every weight element serves only a few multiply-adds): the gradient
// kernels then stream the weight and the mask row by row, in memory order, instead of tiling.
constexpr int64_t kFewRows = 4;

// The same product for at most kFewRows gradient rows: item idx in [begin, end)
// (candidate_block(idx, candidates, segments, weight_stride, 1)) writes the products of output
// rows [s * segment_rows, (s + 1) * segment_rows) of candidate k to partial[k, s] (opmath
// [K, segments, rows, in_stride], in_stride a multiple of kFusedAlign); grad_input[k] is the sum
// of partial[k] over the segments, in their order (so that the bits do not depend on which
// thread ran which item). A weight row is contiguous and read in order.
struct FewRowsGradInputArgs {
  const void* grad;  // opmath [K, rows, out]
  const void* weight;
  int64_t weight_stride;
  const void* mask;
  int64_t mask_stride;
  int64_t mask_ld;
  void* partial;
  int64_t rows;
  int64_t in;
  int64_t in_stride;
  int64_t out_features;
  int64_t candidates;
  int64_t segments;
  int64_t segment_rows;
};
using FewRowsGradInputFn = void (*)(const FewRowsGradInputArgs&, int64_t begin, int64_t end);

// G[k] = grad_t[k] x[k] (grad_t opmath [K, out, rows]; x as column panels, opmath
// [K, in_stride / panel_rows, rows, panel_rows], zero beyond in) for the items idx in [begin, end)
// of kPanelOutBlock output rows each: grad_mask[k] = G[k] ⊙ weight[k] and grad_weight[k] =
// G[k] ⊙ mask[k] (idx = k * blocks + block), or, with sum_candidates (a weight shared by the K
// candidates), grad_weight = sum_k G[k] ⊙ mask[k] (idx = block, every candidate summed in the
// item). A null grad_weight / grad_mask is not computed (at least one is given). Up to kFewRows
// rows of x, the gradient rows are formed one at a time, in memory order.
struct FusedGradWeightArgs {
  const void* x_panels;
  const void* grad_t;
  const void* weight;
  int64_t weight_stride;
  const void* mask;
  int64_t mask_stride;
  int64_t mask_ld;
  void* grad_weight;
  void* grad_mask;
  int64_t rows;
  int64_t in;
  int64_t in_stride;
  int64_t out_features;
  int64_t candidates;
  bool sum_candidates;
};
using FusedGradWeightFn = void (*)(const FusedGradWeightArgs&, int64_t begin, int64_t end);

constexpr int64_t kFusedOutBlock = 4;
constexpr int64_t kPanelOutBlock = 48;
// Row stride of the opmath x buffers, in elements: whole blocks of the widest vector loop.
constexpr int64_t kFusedAlign = 64;

struct Kernels {
  MaskMultiplyFn mask_multiply;
  FusedForwardFn fused_forward;
  FusedForwardFn panel_forward;
  PackPanelsFn pack_panels;
  TransposeFn transpose;
  int64_t panel_rows;  // x rows per panel of panel_forward, columns per item of fused_grad_input
  FusedGradInputFn fused_grad_input;
  FewRowsGradInputFn few_rows_grad_input;
  FusedGradWeightFn fused_grad_weight;
  bool vectorized;                // AVX2 / AVX-512 (false: the portable build)
};

// The kernels of the best capability this machine (and ATen) runs, for dtype and mask kind; shared
// by masked_linear and masked_conv2d.
const Kernels& kernels(c10::ScalarType dtype, MaskKind kind);

// The kind of a mask tensor (packed: bits; bool / uint8: bytes; floating: soft).
MaskKind mask_kind(const at::Tensor& mask, bool packed);

// dst rows [0, rows) (+)= src rows * mask rows through kern.mask_multiply (see MaskMultiplyArgs):
// on the calling thread inside a parallel region, else over the threads (chunks of about 64 K
// elements claimed dynamically; below that one thread is faster than waking the others).
void mask_rows(const Kernels& kern, const void* src, int64_t src_ld, const void* mask,
               int64_t mask_ld, void* dst, int64_t dst_ld, int64_t rows, int64_t cols,
               bool accumulate, bool dst_opmath);

namespace DEFAULT {
Kernels kernels_for(c10::ScalarType dtype, MaskKind kind);
}
#if defined(__x86_64__) && defined(__GNUC__)
#define SPARSENAS_CPU_X86 1
namespace AVX2 {
Kernels kernels_for(c10::ScalarType dtype, MaskKind kind);
}
namespace AVX512 {
Kernels kernels_for(c10::ScalarType dtype, MaskKind kind);
}
#endif

}  // namespace sparsenas::cpu
