// CPU kernels of masked_linear and its gradient ops. The ops write no full masked copy of W (only
// a single-mask training step may keep one, where measured faster: cpu/masked_weight.h):
// - fused kernels (masked_linear_kernels_impl.h, SIMD per CPU capability) mask one cache block of
//   the weight at a time (in registers for a few rows of x, else into an L1 buffer in opmath)
//   and multiply it in register tiles (outer products against panels of x or of the gradient;
//   dot products with x rows for a forward of at most 16 rows), so that W ⊙ M is never written
//   out; the weight gradient is masked as its tiles are stored; for at most kFewRows rows of x,
//   where the products are bound by memory, the gradient kernels stream the weight, the mask and
//   the weight gradient row by row instead, and K candidates sharing a weight take turns on each
//   cached block of its rows;
// - otherwise the masked weight is built one cache-sized tile at a time and a GEMM reads it
//   while it is still in cache (tiles of output rows for the forward and the weight gradient,
//   tiles of input columns for the input gradient, so that every GEMM sums over its whole
//   reduction dimension at once and the result is written, never accumulated). Each thread
//   masks its own tiles and runs their GEMMs itself, all in one parallel region whose tiles are
//   claimed dynamically: a thread descheduled by other work on the machine delays the call by
//   one tile at most, not by its whole share, and a call pays for one region, not two per tile.
// Which of the two paths runs is measured per shape class on first use (choose_path below).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <bit>
#include <limits>
#include <string>

#include "common/checks.h"
#include "common/parallel.h"
#include "cpu/masked_linear_kernels.h"
#include "cpu/masked_weight.h"
#include "cpu/path_choice.h"
#include "ops/masked_linear.h"

namespace sparsenas::cpu {

const Kernels& kernels(at::ScalarType dtype, MaskKind kind) {
  // The capability ATen itself runs at (it honours ATEN_CPU_CAPABILITY); one table per
  // (dtype, kind), filled on first use.
  static const std::string capability = at::get_cpu_capability();
  auto select = [](at::ScalarType d, MaskKind k) {
#ifdef SPARSENAS_CPU_X86
    if (capability == "AVX512") return AVX512::kernels_for(d, k);
    if (capability == "AVX2") return AVX2::kernels_for(d, k);
#endif
    return DEFAULT::kernels_for(d, k);
  };
  static const auto table = [&] {
    std::array<std::array<Kernels, 3>, 4> t{};
    const at::ScalarType dtypes[] = {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf};
    for (int d = 0; d < 4; ++d)
      for (int k = 0; k < 3; ++k) t[d][k] = select(dtypes[d], static_cast<MaskKind>(k));
    return t;
  }();
  const int d = dtype == at::kFloat ? 0 : dtype == at::kDouble ? 1 : dtype == at::kBFloat16 ? 2 : 3;
  return table[d][static_cast<int>(kind)];
}

MaskKind mask_kind(const at::Tensor& mask, bool packed) {
  if (packed) return MaskKind::kBits;
  if (mask.scalar_type() == at::kBool || mask.scalar_type() == at::kByte) return MaskKind::kByte;
  return MaskKind::kSoft;
}

void mask_rows(const Kernels& kern, const void* src, int64_t src_ld, const void* mask,
               int64_t mask_ld, void* dst, int64_t dst_ld, int64_t rows, int64_t cols,
               bool accumulate, bool dst_opmath) {
  const MaskMultiplyArgs args{src, src_ld, mask, mask_ld, dst, dst_ld, cols, accumulate, dst_opmath};
  const int64_t chunk = std::max<int64_t>(1, 65536 / std::max<int64_t>(cols, 1));
  parallel_for_dynamic(0, rows, chunk, [&](int64_t begin, int64_t end, int64_t) {
    kern.mask_multiply(args, begin, end);
  });
}

}  // namespace sparsenas::cpu

namespace sparsenas {
namespace {

using cpu::kernels;
using cpu::mask_kind;
using cpu::mask_rows;
using cpu::KernelPath;
using cpu::MaskKind;

// The fused forward runs over chunks of this many x rows, whose opmath copy stays in L2.
constexpr int64_t kFusedChunkRows = 128;
// The panel forward (x transposed, weight rows broadcast) serves calls of more than this many
// rows (fewer: the dot-product kernels, which read x rows directly) and runs over chunks of at
// most kPanelChunkRows, whose x panels stay in L2.
constexpr int64_t kPanelMinRows = 16;
constexpr int64_t kPanelChunkRows = 512;
// A one-mask training step of fewer rows keeps W ⊙ M only when a path is forced
// (keeps_masked_weight).
constexpr int64_t kKeepMinRows = 128;
// A masked tile spans at least this many rows (or columns) of the weight: the tile is the GEMM's
// B operand, and with a narrower one the BLAS runs well below its peak (MKL on AVX-512: a GEMM
// over 64-row tiles of a 1024x1024 weight takes 1.4-1.8x the whole product at 16-64 rows of x;
// 256-row tiles match it), which costs more than a tile that spills from L2.
constexpr int64_t kMinTileExtent = 256;
// At most this many elements per tile (4 MiB of float), so that a tile stays in L2 or L3.
constexpr int64_t kMaxTileElements = int64_t{1} << 20;
// A contiguous weight or mask with its per-candidate and per-row strides (in its elements).
struct Operand {
  at::Tensor tensor;
  int64_t candidate_stride;
  int64_t ld;
  int64_t elem_size;
  const char* at(int64_t k, int64_t row, int64_t col) const {
    return static_cast<const char*>(tensor.const_data_ptr()) +
           (k * candidate_stride + row * ld + col) * elem_size;
  }
};

Operand weight_operand(const at::Tensor& weight, const MaskedLinearGeometry& g) {
  auto w = weight.contiguous();
  return {w, g.weight_per_candidate ? g.out_features * g.in_features : 0, g.in_features,
          static_cast<int64_t>(w.element_size())};
}

Operand mask_operand(const at::Tensor& mask, const MaskedLinearGeometry& g, bool packed) {
  auto m = mask.contiguous();
  const int64_t ld = packed ? packed_width(g.in_features) : g.in_features;
  return {m, g.candidate_form ? g.out_features * ld : 0, ld,
          static_cast<int64_t>(m.element_size())};
}

// Tile rows (or columns) of a weight of `total` x `other_extent`, for a GEMM with `rows` rows of
// x: `total` cut evenly into tiles at least kMinTileExtent wide and at least as wide as `rows`
// (rounded up to 16), within kMaxTileElements, a multiple of 16 (so that column tiles of a
// packed mask start on a byte). A GEMM over many rows is compute bound and runs best as few large
// products: a weight that fits one tile is one BLAS call, which the BLAS parallelises itself.
int64_t tile_extent(int64_t other_extent, int64_t total, int64_t rows) {
  const int64_t wanted = std::max(kMinTileExtent, (rows + 15) / 16 * 16);
  const int64_t tiles = std::max<int64_t>(1, total / wanted);
  const int64_t even = ((total + tiles - 1) / tiles + 15) / 16 * 16;
  const int64_t cache_bound = std::max<int64_t>(16, kMaxTileElements / std::max<int64_t>(other_extent, 1) / 16 * 16);
  return std::min({even, cache_bound, total});
}

// Calls fn(item, tile) for items [0, items) on the threads of one parallel region, items claimed
// dynamically; `tile` is the calling thread's own scratch tensor of tile_shape. ATen ops in fn see
// the caller's thread-local state (dispatch keys, grad mode), which worker threads do not inherit.
template <typename Fn>
void for_each_tile(int64_t items, at::IntArrayRef tile_shape, const at::TensorOptions& options,
                   const Fn& fn) {
  std::vector<int64_t> shape{dynamic_workers(items)};
  shape.insert(shape.end(), tile_shape.begin(), tile_shape.end());
  auto buffers = at::empty(shape, options);
  const at::ThreadLocalState caller;
  parallel_for_dynamic(0, items, 1, [&](int64_t begin, int64_t end, int64_t worker) {
    at::ThreadLocalStateGuard state(caller);
    auto tile = buffers[worker];
    for (int64_t item = begin; item < end; ++item) fn(item, tile);
  });
}

// The row stride of the fused kernels' opmath row buffers: in rounded up to whole kFusedAlign.
int64_t fused_row_stride(int64_t in) {
  return (in + cpu::kFusedAlign - 1) / cpu::kFusedAlign * cpu::kFusedAlign;
}

// x [K, rows, in] (contiguous) as opmath [K, rows, in_stride], zero padded (the fused kernels'
// layout); x itself when it already is.
at::Tensor padded_opmath_rows(const at::Tensor& x3) {
  const int64_t in = x3.size(2);
  const int64_t in_stride = fused_row_stride(in);
  if (in_stride == in && at::toOpMathType(x3.scalar_type()) == x3.scalar_type()) return x3;
  auto buffer = at::empty({x3.size(0), x3.size(1), in_stride},
                          x3.options().dtype(at::toOpMathType(x3.scalar_type())));
  buffer.narrow(2, 0, in).copy_(x3);
  if (in_stride > in) buffer.narrow(2, in, in_stride - in).zero_();
  return buffer;
}

// grad [K, rows, out] as opmath [K, out, rows] (the fused weight gradient's layout).
at::Tensor transposed_opmath(const cpu::Kernels& kern, const at::Tensor& g3) {
  const auto g = g3.to(at::toOpMathType(g3.scalar_type())).contiguous();
  auto result = at::empty({g.size(0), g.size(2), g.size(1)}, g.options());
  parallel_for_dynamic(0, g.size(0), 1, [&](int64_t begin, int64_t end, int64_t) {
    kern.transpose(g.const_data_ptr(), g.size(1), g.size(2), result.data_ptr(), begin, end);
  });
  return result;
}

// Items per dynamically claimed chunk of a fused kernel's loop: at least `grain` (enough work to
// amortise a claim), and about eight chunks per thread, so that each thread streams long
// contiguous runs of weight rows (interleaving single blocks between threads defeats the
// hardware prefetchers) while a descheduled thread still holds up only an eighth of its share.
int64_t fused_chunk(int64_t items, int64_t grain) {
  return std::max(grain, items / (8 * std::max<int64_t>(at::get_num_threads(), 1)));
}

// ---- path choice ----

constexpr const char* kPathVariable = "SPARSENAS_MASKED_LINEAR_PATH";
// Below this many multiply-adds per candidate the fused kernels win everywhere (a GEMM call and a
// tile allocation cost more than the whole product), so nothing is measured.
constexpr int64_t kMeasureMinMacs = int64_t{1} << 15;
// A measurement runs on at most this many multiply-adds (a prefix of the candidates), timed five
// times per path; a single candidate above it is timed three times per path.
constexpr int64_t kMeasureMacs = int64_t{1} << 27;

const char* dtype_name(at::ScalarType dtype) {
  return dtype == at::kFloat ? "float32" : dtype == at::kDouble ? "float64"
       : dtype == at::kBFloat16 ? "bfloat16" : "float16";
}
const char* kind_name(MaskKind kind) {
  return kind == MaskKind::kByte ? "byte" : kind == MaskKind::kBits ? "packed" : "soft";
}
int64_t size_class(int64_t n) { return static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(std::max<int64_t>(n, 1)))); }

// The shape class a choice holds for: sizes rounded up to powers of two, the candidate layout and
// the thread count (crossovers move with all of them).
std::string path_key(const char* stage, at::ScalarType dtype, MaskKind kind,
                     const MaskedLinearGeometry& g) {
  const char* layout = g.candidates == 1 ? "single" : g.weight_per_candidate ? "candidates" : "candidates-shared-weight";
  return std::string("masked_linear ") + stage + " " + dtype_name(dtype) + " " + kind_name(kind) + " rows<=" +
         std::to_string(size_class(g.rows)) + " in<=" + std::to_string(size_class(g.in_features)) +
         " out<=" + std::to_string(size_class(g.out_features)) + " " + layout +
         " threads=" + std::to_string(at::get_num_threads());
}

// The path for one call: forced by SPARSENAS_MASKED_LINEAR_PATH, or measured once per shape class by
// running the stage with both paths on its first candidates (measure(path, part): part is g cut to
// those candidates).
template <typename Measure>
KernelPath choose_path(const char* stage, at::ScalarType dtype, MaskKind kind,
                       const MaskedLinearGeometry& g, Measure&& measure) {
  if (const auto forced = cpu::forced_path(kPathVariable)) return *forced;
  const int64_t macs = g.rows * g.in_features * g.out_features;
  if (macs < kMeasureMinMacs) return KernelPath::kFused;
  const int64_t count = std::clamp<int64_t>(kMeasureMacs / macs, 1, g.candidates);
  // On a shared (virtual) machine a burst of other work can slow any one run by 2x, and a wrong
  // choice lasts (it is recorded), so the measurement errs on the side of runs.
  const int repeats = count * macs <= kMeasureMacs ? 5 : 3;
  auto part = g;
  part.candidates = count;
  return cpu::measured_path(path_key(stage, dtype, kind, g), repeats,
                            [&](KernelPath path) { measure(path, part); });
}

// The first `count` candidates of a K-candidate operand (a shared one as it is).
at::Tensor leading(const at::Tensor& t, bool per_candidate, int64_t count) {
  return per_candidate ? t.narrow(0, 0, count) : t;
}

// ---- forward ----

// x [K, rows, in] as opmath [K, panels, in, panel_rows], zero beyond rows (panel_forward's layout).
at::Tensor transposed_opmath_panels(const cpu::Kernels& kern, const at::Tensor& x3) {
  const int64_t K = x3.size(0), rows = x3.size(1), in = x3.size(2);
  const int64_t panels = (rows + kern.panel_rows - 1) / kern.panel_rows;
  const auto x = x3.to(at::toOpMathType(x3.scalar_type())).contiguous();
  auto result = at::empty({K, panels, in, kern.panel_rows}, x.options());
  parallel_for_dynamic(0, K * panels, 1, [&](int64_t begin, int64_t end, int64_t) {
    kern.pack_panels(x.const_data_ptr(), rows, in, result.data_ptr(), begin, end);
  });
  return result;
}

void forward_panels(const cpu::Kernels& kern, const MaskedLinearGeometry& g, const at::Tensor& x3,
                    const Operand& w, const Operand& m, const at::Tensor& b, const at::Tensor& out) {
  const int64_t K = g.candidates, rows = g.rows, in = g.in_features, out_f = g.out_features;
  const int64_t blocks = (out_f + cpu::kPanelOutBlock - 1) / cpu::kPanelOutBlock;
  const char* bias_data = b.defined() ? static_cast<const char*>(b.const_data_ptr()) : nullptr;
  const int64_t bias_stride = g.bias_per_candidate ? out_f : 0;
  for (int64_t r0 = 0; r0 < rows; r0 += kPanelChunkRows) {
    const int64_t n = std::min(kPanelChunkRows, rows - r0);
    auto chunk = x3.narrow(1, r0, n);
    auto panels = transposed_opmath_panels(kern, chunk);
    // A chunk of rows is written as its own [K, n, out] block, copied into place unless it is all.
    auto dst = n == rows ? out : at::empty({K, n, out_f}, out.options());
    const cpu::FusedForwardArgs args{panels.const_data_ptr(), w.tensor.const_data_ptr(), w.candidate_stride,
                                     m.tensor.const_data_ptr(), m.candidate_stride, m.ld, bias_data,
                                     bias_stride, dst.data_ptr(), n, in, 0, out_f, K, blocks};
    const int64_t items = K * blocks;
    const int64_t grain = std::max<int64_t>(1, 65536 / (cpu::kPanelOutBlock * in * n));
    parallel_for_dynamic(0, items, fused_chunk(items, grain), [&](int64_t begin, int64_t end, int64_t) {
      kern.panel_forward(args, begin, end);
    });
    if (n != rows) out.narrow(1, r0, n).copy_(dst);
  }
}

void forward_fused(const cpu::Kernels& kern, const MaskedLinearGeometry& g, const at::Tensor& x3,
                   const Operand& w, const Operand& m, const at::Tensor& b, const at::Tensor& out) {
  const int64_t K = g.candidates, rows = g.rows, in = g.in_features, out_f = g.out_features;
  if (kern.vectorized && rows > kPanelMinRows) return forward_panels(kern, g, x3, w, m, b, out);
  auto xbuf = padded_opmath_rows(x3);
  const int64_t in_stride = xbuf.size(2);
  const int64_t blocks = (out_f + cpu::kFusedOutBlock - 1) / cpu::kFusedOutBlock;
  auto run = [&](const cpu::FusedForwardArgs& args, int64_t items, int64_t chunk_rows) {
    const int64_t grain =
        std::max<int64_t>(1, 65536 / (cpu::kFusedOutBlock * in_stride * std::max<int64_t>(chunk_rows, 1)));
    parallel_for_dynamic(0, items, fused_chunk(items, grain), [&](int64_t begin, int64_t end, int64_t) {
      kern.fused_forward(args, begin, end);
    });
  };
  const char* bias_data = b.defined() ? static_cast<const char*>(b.const_data_ptr()) : nullptr;
  const int64_t bias_stride = g.bias_per_candidate ? out_f : 0;
  if (rows <= kFusedChunkRows) {
    run({xbuf.const_data_ptr(), w.tensor.const_data_ptr(), w.candidate_stride,
         m.tensor.const_data_ptr(), m.candidate_stride, m.ld, bias_data, bias_stride,
         out.data_ptr(), rows, in, in_stride, out_f, K, blocks},
        K * blocks, rows);
    return;
  }
  // Chunks of rows, one candidate at a time: each chunk's x stays in L2 while every masked
  // weight row is multiplied into it.
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t r0 = 0; r0 < rows; r0 += kFusedChunkRows) {
      const int64_t n = std::min(kFusedChunkRows, rows - r0);
      run({static_cast<const char*>(xbuf.const_data_ptr()) + (k * rows + r0) * in_stride * xbuf.element_size(),
           w.at(k, 0, 0), 0, m.at(k, 0, 0), 0, m.ld,
           bias_data ? bias_data + k * bias_stride * b.element_size() : nullptr, 0,
           static_cast<char*>(out.data_ptr()) + (k * rows + r0) * out_f * out.element_size(), n,
           in, in_stride, out_f, 1, blocks},
          blocks, n);
    }
  }
}

void forward_gemm(const cpu::Kernels& kern, const MaskedLinearGeometry& g, const at::Tensor& x3,
                  const Operand& w, const Operand& m, const at::Tensor& b, const at::Tensor& out) {
  const int64_t in = g.in_features, out_f = g.out_features;
  const int64_t tile_rows = tile_extent(in, out_f, g.rows);
  const int64_t tiles = (out_f + tile_rows - 1) / tile_rows;
  const int64_t items = g.candidates * tiles;
  for_each_tile(items, {tile_rows, in}, x3.options(), [&](int64_t item, const at::Tensor& tile) {
    const int64_t k = item / tiles, o0 = item % tiles * tile_rows;
    const int64_t n = std::min(tile_rows, out_f - o0);
    mask_rows(kern, w.at(k, o0, 0), in, m.at(k, o0, 0), m.ld, tile.data_ptr(), in, n, in, false,
              false);
    auto dst = out[k].narrow(1, o0, n);
    if (b.defined()) {
      at::addmm_out(dst, (g.bias_per_candidate ? b[k] : b).narrow(0, o0, n).unsqueeze(0), x3[k],
                    tile.narrow(0, 0, n).t());
    } else {
      at::mm_out(dst, x3[k], tile.narrow(0, 0, n).t());
    }
  });
}

// out [K, rows, out] = the forward of the first g.candidates candidates by `path`.
void forward_by(KernelPath path, const cpu::Kernels& kern, const MaskedLinearGeometry& g,
                const at::Tensor& x3, const Operand& w, const Operand& m, const at::Tensor& b,
                const at::Tensor& out) {
  if (path == KernelPath::kFused) forward_fused(kern, g, x3, w, m, b, out);
  else forward_gemm(kern, g, x3, w, m, b, out);
}

at::Tensor masked_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                             const c10::optional<at::Tensor>& bias, bool packed) {
  const auto g = check_masked_linear("masked_linear", x, weight, mask, bias, packed);
  const int64_t K = g.candidates, rows = g.rows, in = g.in_features, out_f = g.out_features;
  auto out = at::empty({K, rows, out_f}, x.options());
  if (out.numel() == 0) return out.view(g.output_shape);
  const bool has_bias = bias.has_value() && bias->defined();
  auto b = has_bias ? bias->contiguous() : at::Tensor();
  if (in == 0) {
    out.zero_();
    if (has_bias) out.add_(g.bias_per_candidate ? b.unsqueeze(1) : b.view({1, 1, out_f}));
    return out.view(g.output_shape);
  }
  const auto w = weight_operand(weight, g);
  const auto m = mask_operand(mask, g, packed);
  const auto kind = mask_kind(mask, packed);
  const auto& kern = kernels(x.scalar_type(), kind);
  auto x3 = x.contiguous().view({K, rows, in});
  const auto path = choose_path("forward", x.scalar_type(), kind, g,
                                [&](KernelPath p, const MaskedLinearGeometry& part) {
    const int64_t count = part.candidates;
    forward_by(p, kern, part, x3.narrow(0, 0, count), w, m,
               has_bias ? leading(b, g.bias_per_candidate, count) : b,
               at::empty({count, rows, out_f}, x.options()));
  });
  forward_by(path, kern, g, x3, w, m, b, out);
  return out.view(g.output_shape);
}

// ---- gradient of the input: grad (W ⊙ M) ----

// Output rows per item of few_rows_grad_input. One candidate's weight: enough items for dynamic
// scheduling (those of fused_chunk), at least kMinSegmentRows rows each. A weight shared by
// several candidates: segments of kSharedWeightBytes (see candidate_block).
constexpr int64_t kMinSegmentRows = 16;

void grad_input_few_rows(const cpu::Kernels& kern, const MaskedLinearGeometry& g,
                         const at::Tensor& grad, const Operand& w, const Operand& m,
                         const at::Tensor& result) {
  const int64_t K = g.candidates, rows = g.rows, in = g.in_features, out_f = g.out_features;
  int64_t segment_rows;
  if (w.candidate_stride == 0 && K > 1) {
    segment_rows = std::max<int64_t>(kMinSegmentRows, cpu::kSharedWeightBytes / (in * w.elem_size));
  } else {
    const int64_t wanted = (8 * std::max<int64_t>(at::get_num_threads(), 1) + K - 1) / K;
    segment_rows = std::max(kMinSegmentRows, (out_f + wanted - 1) / wanted);
  }
  const int64_t segments = (out_f + segment_rows - 1) / segment_rows;
  const int64_t items = K * segments, chunk = fused_chunk(items, 1);
  const int64_t in_stride = fused_row_stride(in);
  auto partial = at::empty({K, segments, rows, in_stride}, grad.options());
  const cpu::FewRowsGradInputArgs args{grad.const_data_ptr(), w.tensor.const_data_ptr(),
                                       w.candidate_stride, m.tensor.const_data_ptr(),
                                       m.candidate_stride, m.ld, partial.data_ptr(), rows, in,
                                       in_stride, out_f, K, segments, segment_rows};
  parallel_for_dynamic(0, items, chunk, [&](int64_t begin, int64_t end, int64_t) {
    kern.few_rows_grad_input(args, begin, end);
  });
  // A reduction over a leading dimension adds its slices in order.
  result.copy_(partial.sum(1).narrow(2, 0, in));
}

void grad_input_fused(const cpu::Kernels& kern, const MaskedLinearGeometry& g,
                      const at::Tensor& g3, const Operand& w, const Operand& m,
                      const at::Tensor& result) {
  const int64_t K = g.candidates, rows = g.rows, in = g.in_features, out_f = g.out_features;
  // g3 may hold more candidates than g (a measurement runs on the first ones).
  const auto grad = g3.narrow(0, 0, K).to(at::toOpMathType(g3.scalar_type())).contiguous();
  if (rows <= cpu::kFewRows) return grad_input_few_rows(kern, g, grad, w, m, result);
  const int64_t col_blocks = (in + kern.panel_rows - 1) / kern.panel_rows;
  const cpu::FusedGradInputArgs args{grad.const_data_ptr(), w.tensor.const_data_ptr(),
                                     w.candidate_stride, m.tensor.const_data_ptr(),
                                     m.candidate_stride, m.ld, result.data_ptr(), rows, in,
                                     out_f, col_blocks};
  const int64_t grain =
      std::max<int64_t>(1, 65536 / (kern.panel_rows * out_f * std::max<int64_t>(rows, 1)));
  parallel_for_dynamic(0, K * col_blocks, fused_chunk(K * col_blocks, grain), [&](int64_t begin, int64_t end, int64_t) {
    kern.fused_grad_input(args, begin, end);
  });
}

void grad_input_gemm(const cpu::Kernels& kern, const MaskedLinearGeometry& g, bool packed,
                     const at::Tensor& g3, const Operand& w, const Operand& m,
                     const at::Tensor& result) {
  const int64_t in = g.in_features, out_f = g.out_features;
  // Column tiles of the masked weight: [out, cols], each a complete GEMM over out.
  const int64_t tile_cols = tile_extent(out_f, in, g.rows);
  const int64_t tiles = (in + tile_cols - 1) / tile_cols;
  const int64_t items = g.candidates * tiles;
  for_each_tile(items, {out_f, tile_cols}, g3.options(), [&](int64_t item, const at::Tensor& tile) {
    const int64_t k = item / tiles, c0 = item % tiles * tile_cols;
    const int64_t n = std::min(tile_cols, in - c0);
    // A packed row's column c0 (a multiple of 16) starts at byte c0 / 8.
    mask_rows(kern, w.at(k, 0, c0), in, m.at(k, 0, packed ? c0 / 8 : c0), m.ld, tile.data_ptr(),
              tile_cols, out_f, n, false, false);
    auto dst = result[k].narrow(1, c0, n);
    at::mm_out(dst, g3[k], tile.narrow(1, 0, n));
  });
}

void grad_input_by(KernelPath path, const cpu::Kernels& kern, const MaskedLinearGeometry& g,
                   bool packed, const at::Tensor& g3, const Operand& w, const Operand& m,
                   const at::Tensor& result) {
  if (path == KernelPath::kFused) grad_input_fused(kern, g, g3, w, m, result);
  else grad_input_gemm(kern, g, packed, g3, w, m, result);
}

// grad_input = grad (W ⊙ M): [(K,) ..., out] -> [(K,) ..., in].
at::Tensor masked_linear_grad_input_cpu(const at::Tensor& grad, const at::Tensor& weight,
                                        const at::Tensor& mask, bool packed) {
  auto g = check_masked_linear_grad_input(grad, weight, mask, packed);
  const int64_t K = g.candidates, rows = g.rows, in = g.in_features, out_f = g.out_features;
  std::vector<int64_t> shape = grad.sizes().vec();
  shape.back() = in;
  auto result = at::empty({K, rows, in}, grad.options());
  if (result.numel() == 0) return result.view(shape);
  if (out_f == 0) return result.zero_().view(shape);
  const auto w = weight_operand(weight, g);
  const auto m = mask_operand(mask, g, packed);
  const auto kind = mask_kind(mask, packed);
  const auto& kern = kernels(grad.scalar_type(), kind);
  auto g3 = grad.contiguous().view({K, rows, out_f});
  const auto path = choose_path("grad_input", grad.scalar_type(), kind, g,
                                [&](KernelPath p, const MaskedLinearGeometry& part) {
    grad_input_by(p, kern, part, packed, g3.narrow(0, 0, part.candidates), w, m,
                  at::empty({part.candidates, rows, in}, grad.options()));
  });
  grad_input_by(path, kern, g, packed, g3, w, m, result);
  return result.view(shape);
}

// ---- gradients of the weight and the mask ----

struct GradWeightOutputs {
  at::Tensor grad_weight;  // undefined: not computed
  at::Tensor grad_mask;    // undefined: not computed
};

void grad_weight_fused(const cpu::Kernels& by_mask, const MaskedLinearGeometry& g,
                       const at::Tensor& x3, const at::Tensor& g3, const Operand& w,
                       const Operand& m, const GradWeightOutputs& outs) {
  const int64_t K = g.candidates, rows = g.rows, in = g.in_features, out_f = g.out_features;
  // x3 / g3 may hold more candidates than g (a measurement runs on the first ones).
  auto xbuf = padded_opmath_rows(x3.narrow(0, 0, K));
  const int64_t in_stride = xbuf.size(2), panel = by_mask.panel_rows;
  const auto x_panels = xbuf.view({K, rows, in_stride / panel, panel}).permute({0, 2, 1, 3}).contiguous();
  const auto grad_t = transposed_opmath(by_mask, g3.narrow(0, 0, K));
  // A weight shared by K > 1 candidates gets the sum of their gradients.
  const bool sum_candidates = outs.grad_weight.defined() && !g.weight_per_candidate && K > 1;
  const cpu::FusedGradWeightArgs args{
      x_panels.const_data_ptr(), grad_t.const_data_ptr(), w.tensor.const_data_ptr(),
      w.candidate_stride, m.tensor.const_data_ptr(), m.candidate_stride, m.ld,
      outs.grad_weight.defined() ? outs.grad_weight.data_ptr() : nullptr,
      outs.grad_mask.defined() ? outs.grad_mask.data_ptr() : nullptr, rows, in, in_stride, out_f,
      K, sum_candidates};
  const int64_t blocks = (out_f + cpu::kPanelOutBlock - 1) / cpu::kPanelOutBlock;
  const int64_t items = sum_candidates ? blocks : K * blocks;
  const int64_t work_per_item = cpu::kPanelOutBlock * in * std::max<int64_t>(rows, 1) *
                                (sum_candidates ? K : 1);
  parallel_for_dynamic(0, items, fused_chunk(items, std::max<int64_t>(1, 65536 / work_per_item)),
                       [&](int64_t begin, int64_t end, int64_t) {
                         by_mask.fused_grad_weight(args, begin, end);
                       });
}

void grad_weight_gemm(const cpu::Kernels& by_mask, const cpu::Kernels& by_weight,
                      const MaskedLinearGeometry& g, const at::Tensor& x3, const at::Tensor& g3,
                      const Operand& w, const Operand& m, const GradWeightOutputs& outs) {
  const int64_t K = g.candidates, in = g.in_features, out_f = g.out_features;
  const bool weight_grad = outs.grad_weight.defined();
  const bool shared_sum = weight_grad && !g.weight_per_candidate;
  // A sum over candidates of a reduced dtype is kept in float and rounded once at the end.
  const bool opmath_sum =
      shared_sum && K > 1 && at::toOpMathType(x3.scalar_type()) != x3.scalar_type();
  auto sum = opmath_sum ? at::empty({out_f, in}, x3.options().dtype(at::kFloat)) : outs.grad_weight;
  // A shared weight's tile sums over every candidate in one item (no two items write one row).
  const int64_t tile_rows = tile_extent(in, out_f, g.rows);
  const int64_t tiles = (out_f + tile_rows - 1) / tile_rows;
  const int64_t items = shared_sum ? tiles : K * tiles;
  auto tile_gradients = [&](int64_t k, int64_t o0, int64_t n, const at::Tensor& tile) {
    auto gt = tile.narrow(0, 0, n);
    at::mm_out(gt, g3[k].narrow(1, o0, n).t(), x3[k]);
    if (weight_grad) {
      const int64_t dst_k = g.weight_per_candidate ? k : 0;
      mask_rows(by_mask, gt.const_data_ptr(), in, m.at(k, o0, 0), m.ld,
                static_cast<char*>(sum.data_ptr()) + (dst_k * out_f + o0) * in * sum.element_size(),
                in, n, in, shared_sum && k > 0, opmath_sum);
    }
    if (outs.grad_mask.defined()) {
      mask_rows(by_weight, gt.const_data_ptr(), in, w.at(k, o0, 0), in,
                static_cast<char*>(outs.grad_mask.data_ptr()) + (k * out_f + o0) * in * outs.grad_mask.element_size(),
                in, n, in, false, false);
    }
  };
  for_each_tile(items, {tile_rows, in}, x3.options(), [&](int64_t item, const at::Tensor& tile) {
    const int64_t o0 = item % tiles * tile_rows;
    const int64_t n = std::min(tile_rows, out_f - o0);
    if (shared_sum) {
      for (int64_t k = 0; k < K; ++k) tile_gradients(k, o0, n, tile);
    } else {
      tile_gradients(item / tiles, o0, n, tile);
    }
  });
  if (opmath_sum) outs.grad_weight.copy_(sum);
}

// ((grad^T x) ⊙ M summed over K when the weight is shared, (grad^T x) ⊙ W per candidate).
std::tuple<at::Tensor, at::Tensor> masked_linear_grad_weight_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
    bool packed, bool weight_grad, bool mask_grad) {
  auto g = check_masked_linear_grad_weight(grad, x, weight, mask, packed, mask_grad);
  const int64_t K = g.candidates, rows = g.rows, in = g.in_features, out_f = g.out_features;
  auto grad_weight = weight_grad ? at::empty(weight.sizes(), x.options()) : at::empty({0}, x.options());
  auto grad_mask = mask_grad ? at::empty(mask.sizes(), x.options()) : at::empty({0}, x.options());
  if (out_f == 0 || in == 0 || !(weight_grad || mask_grad)) return {grad_weight, grad_mask};
  if (K == 0) {
    grad_weight.zero_();
    return {grad_weight, grad_mask};
  }
  const auto w = weight_operand(weight, g);
  const auto m = mask_operand(mask, g, packed);
  const auto kind = mask_kind(mask, packed);
  const auto& by_mask = kernels(x.scalar_type(), kind);
  const auto& by_weight = kernels(x.scalar_type(), MaskKind::kSoft);
  auto x3 = x.contiguous().view({K, rows, in});
  auto g3 = grad.contiguous().view({K, rows, out_f});
  const GradWeightOutputs outs{weight_grad ? grad_weight : at::Tensor(),
                               mask_grad ? grad_mask : at::Tensor()};
  auto run = [&](KernelPath p, const MaskedLinearGeometry& part, const GradWeightOutputs& o) {
    if (p == KernelPath::kFused) grad_weight_fused(by_mask, part, x3, g3, w, m, o);
    else grad_weight_gemm(by_mask, by_weight, part, x3, g3, w, m, o);
  };
  const auto path = choose_path("grad_weight", x.scalar_type(), kind, g,
                                [&](KernelPath p, const MaskedLinearGeometry& part) {
    run(p, part, {weight_grad ? at::empty_like(grad_weight) : at::Tensor(),
                  mask_grad ? at::empty_like(grad_mask) : at::Tensor()});
  });
  run(path, g, outs);
  return {grad_weight, grad_mask};
}

}  // namespace

namespace cpu {

at::Tensor masked_weight(const at::Tensor& weight, const at::Tensor& mask, bool packed) {
  auto w = weight.contiguous();
  auto m = mask.contiguous();
  auto result = at::empty(w.sizes(), w.options());
  if (result.numel() == 0) return result;
  const int64_t out_f = w.size(0), in = w.size(1);
  mask_rows(kernels(w.scalar_type(), mask_kind(m, packed)), w.const_data_ptr(), in,
            m.const_data_ptr(), packed ? packed_width(in) : in, result.data_ptr(), in, out_f, in,
            false, false);
  return result;
}

bool keeps_masked_weight(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                         const c10::optional<at::Tensor>& bias, bool packed) {
  const auto g = check_masked_linear("masked_linear", x, weight, mask, bias, packed);
  if (g.candidate_form) return false;
  // Below kKeepMinRows rows keeping W ⊙ M (a weight-sized buffer allocated, written and read
  // twice per step) does not pay: in the benchmark's training steps of 16 and 64 rows on an
  // Intel Xeon the GEMM path, which keeps it, was slower than the fused kernels in every row, yet
  // the timing below picked keeping it at 64 rows in 6 of 16 rows of one run, each then 8-50%
  // slower than the fused kernels (the timing reuses one buffer in a tight loop; a real step
  // allocates it afresh among its other buffers). On AMD the fused kernels fare better still
  // against the BLAS. (A forced path still decides.)
  if (g.rows < kKeepMinRows && !cpu::forced_path(kPathVariable)) return false;
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto x2 = x.detach().reshape({g.rows, g.in_features});
  at::Tensor grad;  // made on the first timed run only: a recorded choice costs no allocation
  // Both ways of a step, timed as a whole: keeping W ⊙ M moves the forward to the GEMM path,
  // which is slower than the fused kernel at few rows, and saves the input gradient's masking.
  const auto way = choose_path("training_step", x.scalar_type(), mask_kind(mask, packed), g,
                               [&](KernelPath p, const MaskedLinearGeometry&) {
    if (!grad.defined()) grad = at::randn({g.rows, g.out_features}, x.options());
    if (p == KernelPath::kFused) {
      masked_linear_cpu(x2, weight, mask, c10::nullopt, packed);
      masked_linear_grad_input_cpu(grad, weight, mask, packed);
    } else {
      const auto kept = masked_weight(weight, mask, packed);
      at::mm(x2, kept.t());
      at::mm(grad, kept);
    }
  });
  return way == KernelPath::kGemm;
}

}  // namespace cpu

TORCH_LIBRARY_IMPL(sparsenas, CPU, m) {
  m.impl("masked_linear", &masked_linear_cpu);
  m.impl("masked_linear_grad_input", &masked_linear_grad_input_cpu);
  m.impl("masked_linear_grad_weight", &masked_linear_grad_weight_cpu);
}

}  // namespace sparsenas
