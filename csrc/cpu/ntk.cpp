// CPU kernels of the NTK blocks. Both tile the (symmetric) kernel matrix over pairs of example
// tiles (I, J) with I <= J and hand the tiles to the threads dynamically (parallel_for_dynamic),
// so a thread descheduled by another job on the same cores holds up one tile, not a static share.
// Each tile is written to its block (I, J) of the result and, off the diagonal, transposed to
// the mirror block (J, I); distinct tiles write disjoint blocks.
//
// The Gram route multiplies, per tile and linear map, two Gram slices by GEMMs in the
// accumulation dtype (Ã_I Ã_Jᵀ, with a bias as a column of ones in Ã, and B_I B_Jᵀ, n·T·ob rows
// wide: the FLOPs that matter) into per-thread scratch that stays in cache, multiplies the two
// Grams and reduces the T × T position pairs of each example pair into the tile; the tile sums
// every map before it is written, so the kernel matrix is written once. The masked block
// accumulates, per output unit k, Σ_l M_kl a_il a_jl over the mask's nonzeros only (CSR of M), so
// per-example gradients are never formed.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <utility>
#include <vector>

#include "common/parallel.h"
#include "ops/ntk.h"

namespace sparsenas {
namespace {

// Rows (examples × T × outputs) per side of a Gram-route tile: large enough for GEMMs near the
// BLAS's peak, small enough that the tile's Gram slices stay in a core's L2 cache.
constexpr int64_t kGramTileRows = 256;
constexpr int64_t kTile = 32;  // examples per tile of the masked block

// The upper triangle of tiles × tiles tile pairs, in row order.
std::vector<std::pair<int64_t, int64_t>> upper_tile_pairs(int64_t tiles) {
  std::vector<std::pair<int64_t, int64_t>> pairs;
  pairs.reserve(tiles * (tiles + 1) / 2);
  for (int64_t ti = 0; ti < tiles; ++ti)
    for (int64_t tj = ti; tj < tiles; ++tj) pairs.emplace_back(ti, tj);
  return pairs;
}

// Adds (Add) or stores the tile [rows, cols] (leading dimension ld) at (row0, col0) of result
// and, when `mirror`, its transpose at (col0, row0). The transposed writes go in column blocks so
// that the tile rows read for one block stay in L1.
template <bool Add, typename scalar_t>
void write_tile(scalar_t* result, int64_t res_cols, const scalar_t* tile, int64_t ld,
                int64_t rows, int64_t cols, int64_t row0, int64_t col0, bool mirror) {
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t* res_row = result + (row0 + r) * res_cols + col0;
    const scalar_t* tile_row = tile + r * ld;
    for (int64_t c = 0; c < cols; ++c) res_row[c] = Add ? res_row[c] + tile_row[c] : tile_row[c];
  }
  if (!mirror) return;
  constexpr int64_t kBlock = 16;
  for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
    const int64_t c1 = std::min(cols, c0 + kBlock);
    for (int64_t c = c0; c < c1; ++c) {
      scalar_t* res_row = result + (col0 + c) * res_cols + row0;
      for (int64_t r = 0; r < rows; ++r)
        res_row[r] = Add ? res_row[r] + tile[r * ld + c] : tile[r * ld + c];
    }
  }
}

// One linear map of the Gram route: A [n·T, d] (with a column of ones when the map has a bias:
// ã_it·ã_js = a_it·a_js + 1) and B [n·T·ob, K], row-major in the accumulation dtype.
struct GramLayer {
  at::Tensor A, B;
  int64_t T;
};

GramLayer gram_layer(const at::Tensor& a, const at::Tensor& b, int64_t T, bool bias,
                     bool sum_outputs, at::ScalarType dtype) {
  const int64_t rows = a.size(0), O = b.size(1), p = b.size(2);
  auto A = bias ? at::cat({a.to(dtype), at::ones({rows, 1}, a.options().dtype(dtype))}, 1)
                : a.to(dtype).contiguous();
  // Rows of B: (i, t) with all outputs side by side (sum_outputs) or (i, t, o).
  auto B = b.to(dtype).contiguous().view({sum_outputs ? rows : rows * O, (sum_outputs ? O : 1) * p});
  return {A, B, T};
}

// The Gram route of several maps, tile by tile: for examples [i0, i0 + ni) × [j0, j0 + nj),
//   tile[(i,o),(j,o')] = Σ_maps Σ_{t,s} (Ã_it · Ã_js) (B_ito · B_jso'),
// summed over the maps in per-thread scratch and then stored into (or, with `add`, added to)
// the result once: one pass over the kernel matrix however many maps there are.
template <typename scalar_t>
struct GramTiles {
  const std::vector<GramLayer>& layers;
  scalar_t* result;
  int64_t res_cols, ob;
  bool add;

  struct Scratch {
    at::Tensor ga, gb;  // the two Gram slices of one map
    std::vector<scalar_t> tile, factor;
  };

  void operator()(Scratch& s, int64_t i0, int64_t ni, int64_t j0, int64_t nj) const {
    const int64_t cols = nj * ob;
    s.tile.assign(ni * ob * cols, scalar_t(0));
    s.factor.resize(cols);
    for (const auto& layer : layers) {
      const int64_t T = layer.T;
      const int64_t ga_rows = ni * T, ga_cols = nj * T;
      const int64_t gb_rows = ga_rows * ob, gb_cols = ga_cols * ob;
      at::Tensor ga = s.ga.narrow(0, 0, ga_rows * ga_cols).view({ga_rows, ga_cols});
      at::Tensor gb = s.gb.narrow(0, 0, gb_rows * gb_cols).view({gb_rows, gb_cols});
      at::mm_out(ga, layer.A.narrow(0, i0 * T, ga_rows), layer.A.narrow(0, j0 * T, ga_cols).t());
      at::mm_out(gb, layer.B.narrow(0, i0 * T * ob, gb_rows),
                 layer.B.narrow(0, j0 * T * ob, gb_cols).t());
      const scalar_t* ga_ptr = ga.data_ptr<scalar_t>();
      const scalar_t* gb_ptr = gb.data_ptr<scalar_t>();
      if (T == 1) {
        // Row (i, o) of the tile += gb row (i, o) times ga[i, j], spread over o'.
        scalar_t* factor = s.factor.data();
        for (int64_t i = 0; i < ni; ++i) {
          const scalar_t* ga_row = ga_ptr + i * ga_cols;
          for (int64_t j = 0; j < nj; ++j)
            for (int64_t o2 = 0; o2 < ob; ++o2) factor[j * ob + o2] = ga_row[j];
          for (int64_t o = 0; o < ob; ++o) {
            scalar_t* row = s.tile.data() + (i * ob + o) * cols;
            const scalar_t* gb_row = gb_ptr + (i * ob + o) * cols;
            for (int64_t c = 0; c < cols; ++c) row[c] += factor[c] * gb_row[c];
          }
        }
        continue;
      }
      for (int64_t i = 0; i < ni; ++i) {
        for (int64_t o = 0; o < ob; ++o) {
          scalar_t* row = s.tile.data() + (i * ob + o) * cols;
          for (int64_t t = 0; t < T; ++t) {
            const scalar_t* ga_row = ga_ptr + (i * T + t) * ga_cols;
            const scalar_t* gb_row = gb_ptr + ((i * T + t) * ob + o) * gb_cols;
            for (int64_t j = 0; j < nj; ++j) {
              scalar_t* r = row + j * ob;
              for (int64_t u = 0; u < T; ++u) {
                const scalar_t g = ga_row[j * T + u];
                const scalar_t* gbp = gb_row + (j * T + u) * ob;
                for (int64_t o2 = 0; o2 < ob; ++o2) r[o2] += g * gbp[o2];
              }
            }
          }
        }
      }
    }
    const bool mirror = i0 != j0;
    const scalar_t* tile = s.tile.data();
    if (add) {
      write_tile<true>(result, res_cols, tile, cols, ni * ob, cols, i0 * ob, j0 * ob, mirror);
    } else {
      write_tile<false>(result, res_cols, tile, cols, ni * ob, cols, i0 * ob, j0 * ob, mirror);
    }
  }
};

// Stores (add = false) or adds the Gram route of `layers` into result [n·ob, n·ob] (contiguous).
void gram_route(at::Tensor& result, const std::vector<GramLayer>& layers, int64_t n, int64_t ob,
                bool add) {
  int64_t max_T = 1, max_ga = 0, max_gb = 0;
  for (const auto& layer : layers) max_T = std::max(max_T, layer.T);
  const int64_t tile = std::clamp<int64_t>(kGramTileRows / (max_T * ob), 1, n);
  for (const auto& layer : layers) {
    max_ga = std::max(max_ga, tile * layer.T * tile * layer.T);
    max_gb = std::max(max_gb, tile * layer.T * ob * tile * layer.T * ob);
  }
  const auto pairs = upper_tile_pairs((n + tile - 1) / tile);
  const int64_t num_pairs = static_cast<int64_t>(pairs.size());
  AT_DISPATCH_FLOATING_TYPES(result.scalar_type(), "ntk_gram_route_cpu", [&] {
    const GramTiles<scalar_t> gram{layers, result.data_ptr<scalar_t>(), n * ob, ob, add};
    std::vector<typename GramTiles<scalar_t>::Scratch> scratch(dynamic_workers(num_pairs));
    parallel_for_dynamic(0, num_pairs, 1, [&](int64_t begin, int64_t end, int64_t worker) {
      auto& s = scratch[worker];
      if (!s.ga.defined()) {
        s.ga = at::empty({max_ga}, result.options());
        s.gb = at::empty({max_gb}, result.options());
      }
      for (int64_t pi = begin; pi < end; ++pi) {
        const int64_t i0 = pairs[pi].first * tile, j0 = pairs[pi].second * tile;
        gram(s, i0, std::min(tile, n - i0), j0, std::min(tile, n - j0));
      }
    });
  });
}

void ntk_gram_block_cpu(at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                        int64_t rows_per_example, bool bias, bool sum_outputs) {
  const auto g = check_ntk_gram_block("ntk_gram_block_", out, a, b, rows_per_example, sum_outputs);
  if (out.numel() == 0) return;
  const std::vector<GramLayer> layers{
      gram_layer(a, b, rows_per_example, bias, sum_outputs, out.scalar_type())};
  const int64_t ob = sum_outputs ? 1 : g.outputs;
  if (out.is_contiguous()) {
    gram_route(out, layers, g.examples, ob, /*add=*/true);
    return;
  }
  auto result = at::empty({g.out_rows, g.out_rows}, out.options().memory_format(at::MemoryFormat::Contiguous));
  gram_route(result, layers, g.examples, ob, /*add=*/false);
  out.add_(result);
}

at::Tensor ntk_gram_kernel_cpu(at::TensorList a, at::TensorList b, at::IntArrayRef rows_per_example,
                               bool sum_outputs, at::ScalarType dtype) {
  const auto g =
      check_ntk_gram_kernel("ntk_gram_kernel", a, b, rows_per_example, sum_outputs, dtype);
  auto result = at::empty({g.out_rows, g.out_rows}, a[0].options().dtype(dtype));
  if (result.numel() == 0) return result;
  std::vector<GramLayer> layers;
  for (size_t l = 0; l < a.size(); ++l)
    layers.push_back(gram_layer(a[l], b[l], rows_per_example[l], false, sum_outputs, dtype));
  gram_route(result, layers, g.examples, sum_outputs ? 1 : g.outputs, /*add=*/false);
  return result;
}

void ntk_masked_block_cpu(at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                          const at::Tensor& mask, bool bias, bool sum_outputs) {
  const auto g = check_ntk_masked_block("ntk_masked_block_", out, a, b, mask, sum_outputs);
  if (out.numel() == 0) return;
  const int64_t n = g.examples, O = g.outputs, p = g.out_features, d = g.in_features;
  const int64_t ob = sum_outputs ? 1 : O;
  const auto dtype = out.scalar_type();
  auto A = a.to(dtype).contiguous();                       // [n, d]
  auto At = A.t().contiguous();                            // [d, n]
  auto Bk = b.to(dtype).permute({2, 0, 1}).contiguous();   // [p, n, O]
  auto M = mask.to(dtype).contiguous();                    // [p, d]
  // Accumulate straight into out when it is contiguous; else into a scratch matrix added at the end.
  auto result = out.is_contiguous() ? out : at::zeros({g.out_rows, g.out_rows}, out.options().memory_format(at::MemoryFormat::Contiguous));
  const auto pairs = upper_tile_pairs((n + kTile - 1) / kTile);
  const int64_t num_pairs = static_cast<int64_t>(pairs.size());

  AT_DISPATCH_FLOATING_TYPES(dtype, "ntk_masked_block_cpu", [&] {
    // CSR of the mask: the nonzeros of each output unit's row.
    const scalar_t* m = M.data_ptr<scalar_t>();
    std::vector<int64_t> row_start(p + 1, 0), cols;
    std::vector<scalar_t> vals;
    for (int64_t k = 0; k < p; ++k) {
      for (int64_t l = 0; l < d; ++l) {
        if (m[k * d + l] != scalar_t(0)) {
          cols.push_back(l);
          vals.push_back(m[k * d + l]);
        }
      }
      row_start[k + 1] = static_cast<int64_t>(cols.size());
    }
    const scalar_t* a_ptr = A.data_ptr<scalar_t>();
    const scalar_t* at_ptr = At.data_ptr<scalar_t>();
    const scalar_t* b_ptr = Bk.data_ptr<scalar_t>();
    scalar_t* res = result.data_ptr<scalar_t>();
    const scalar_t bias_value = bias ? scalar_t(1) : scalar_t(0);
    const int64_t res_cols = g.out_rows;

    // Per-thread scratch: s_ij of one output unit and the tile's accumulator.
    std::vector<std::pair<std::vector<scalar_t>, std::vector<scalar_t>>> scratch(
        dynamic_workers(num_pairs));
    parallel_for_dynamic(0, num_pairs, 1, [&](int64_t begin, int64_t end, int64_t worker) {
      auto& [s, acc] = scratch[worker];
      s.resize(kTile * kTile);
      acc.resize(kTile * ob * kTile * ob);
      for (int64_t pi = begin; pi < end; ++pi) {
        const int64_t i0 = pairs[pi].first * kTile, j0 = pairs[pi].second * kTile;
        const int64_t ni = std::min(kTile, n - i0), nj = std::min(kTile, n - j0);
        const int64_t acc_cols = nj * ob;
        std::fill(acc.begin(), acc.end(), scalar_t(0));
        for (int64_t k = 0; k < p; ++k) {
          // s_ij = bias + Σ_l M_kl a_il a_jl over the nonzeros of row k.
          std::fill(s.begin(), s.begin() + ni * nj, bias_value);
          for (int64_t ii = 0; ii < ni; ++ii) {
            const scalar_t* a_row = a_ptr + (i0 + ii) * d;
            scalar_t* s_row = s.data() + ii * nj;
            for (int64_t e = row_start[k]; e < row_start[k + 1]; ++e) {
              const scalar_t f = vals[e] * a_row[cols[e]];
              const scalar_t* at_row = at_ptr + cols[e] * n + j0;
              for (int64_t jj = 0; jj < nj; ++jj) s_row[jj] += f * at_row[jj];
            }
          }
          const scalar_t* bk = b_ptr + k * n * O;
          for (int64_t ii = 0; ii < ni; ++ii) {
            const scalar_t* bi = bk + (i0 + ii) * O;
            const scalar_t* s_row = s.data() + ii * nj;
            if (sum_outputs) {
              scalar_t* acc_row = acc.data() + ii * acc_cols;
              for (int64_t jj = 0; jj < nj; ++jj) {
                const scalar_t* bj = bk + (j0 + jj) * O;
                scalar_t dot = 0;
                for (int64_t o = 0; o < O; ++o) dot += bi[o] * bj[o];
                acc_row[jj] += s_row[jj] * dot;
              }
            } else {
              for (int64_t o = 0; o < O; ++o) {
                scalar_t* acc_row = acc.data() + (ii * O + o) * acc_cols;
                for (int64_t jj = 0; jj < nj; ++jj) {
                  const scalar_t c = bi[o] * s_row[jj];
                  const scalar_t* bj = bk + (j0 + jj) * O;
                  for (int64_t o2 = 0; o2 < O; ++o2) acc_row[jj * O + o2] += c * bj[o2];
                }
              }
            }
          }
        }
        write_tile<true>(res, res_cols, acc.data(), acc_cols, ni * ob, acc_cols, i0 * ob, j0 * ob,
                         i0 != j0);
      }
    });
  });
  if (!result.is_same(out)) out.add_(result);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsenas, CPU, m) {
  m.impl("ntk_gram_block_", &ntk_gram_block_cpu);
  m.impl("ntk_masked_block_", &ntk_masked_block_cpu);
  m.impl("ntk_gram_kernel", &ntk_gram_kernel_cpu);
}

}  // namespace sparsenas
