// CPU kernels of the NTK blocks. The Gram route runs two GEMMs per chunk of examples and one
// fused pass that adds the bias, multiplies the two Grams and reduces the T × T position pairs
// of each example pair. The masked block tiles the kernel matrix over (i, j) example tiles and,
// per output unit k, accumulates Σ_l M_kl a_il a_jl over the mask's nonzeros only (CSR of M),
// so per-example gradients are never formed.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops/ntk.h"

namespace sparsenas {
namespace {

constexpr int64_t kGramBudget = int64_t{1} << 24;  // elements of the two Gram slices per chunk
constexpr int64_t kTile = 32;                      // examples per tile of the masked block

// For examples i in [i0, i0 + count) and j in [i0, n): adds
//   Σ_{t,s} (ga[(i,t),(j,s)] + bias) gb[(i,t,o),(j,s,o')]
// to result[(i,o), (j,o')] and, for j outside the chunk, to the mirrored entry (the kernel is
// symmetric, so only chunk rows × columns from the chunk's start on are ever multiplied).
// ga [count·T, (n-i0)·T], gb [count·T·ob, (n-i0)·T·ob].
template <typename scalar_t>
void combine_grams(const scalar_t* ga, const scalar_t* gb, scalar_t* result, int64_t i0,
                   int64_t count, int64_t n, int64_t T, int64_t ob, scalar_t bias) {
  const int64_t cols = n - i0;
  const int64_t ga_cols = cols * T;
  const int64_t gb_cols = cols * T * ob;
  const int64_t res_cols = n * ob;
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> acc(cols * ob);
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t o = 0; o < ob; ++o) {
        std::fill(acc.begin(), acc.end(), scalar_t(0));
        for (int64_t t = 0; t < T; ++t) {
          const scalar_t* ga_row = ga + (i * T + t) * ga_cols;
          const scalar_t* gb_row = gb + ((i * T + t) * ob + o) * gb_cols;
          if (ob == 1 && T == 1) {
            for (int64_t j = 0; j < cols; ++j) acc[j] += (ga_row[j] + bias) * gb_row[j];
            continue;
          }
          for (int64_t j = 0; j < cols; ++j) {
            scalar_t* a = acc.data() + j * ob;
            for (int64_t s = 0; s < T; ++s) {
              const scalar_t g = ga_row[j * T + s] + bias;
              const scalar_t* gbp = gb_row + (j * T + s) * ob;
              for (int64_t o2 = 0; o2 < ob; ++o2) a[o2] += g * gbp[o2];
            }
          }
        }
        const int64_t row = (i0 + i) * ob + o;
        scalar_t* res_row = result + row * res_cols + i0 * ob;
        for (int64_t c = 0; c < cols * ob; ++c) res_row[c] += acc[c];
        // Mirror the columns beyond the chunk (rows of other chunks, disjoint across threads).
        for (int64_t c = count * ob; c < cols * ob; ++c) result[(i0 * ob + c) * res_cols + row] += acc[c];
      }
    }
  });
}

void ntk_gram_block_cpu(at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                        int64_t rows_per_example, bool bias, bool sum_outputs) {
  const auto g = check_ntk_gram_block("ntk_gram_block_", out, a, b, rows_per_example, sum_outputs);
  if (out.numel() == 0) return;
  const int64_t n = g.examples, T = g.rows_per_example, O = g.outputs, p = g.out_features;
  const int64_t ob = sum_outputs ? 1 : O;
  auto A = a.to(out.scalar_type()).contiguous();
  // Rows of B: (i, t) with all outputs side by side (sum_outputs) or (i, t, o).
  auto B = b.to(out.scalar_type()).contiguous().view({n * T * ob, (sum_outputs ? O : 1) * p});
  // Accumulate straight into out when it is contiguous; else into a scratch matrix added at the end.
  auto result = out.is_contiguous() ? out : at::zeros({g.out_rows, g.out_rows}, out.options().memory_format(at::MemoryFormat::Contiguous));
  // At least 4 chunks so the block upper triangle saves GEMM work (symmetry).
  const int64_t chunk = std::min(ntk_gram_chunk(g, sum_outputs, kGramBudget),
                                 std::max<int64_t>(1, (n + 3) / 4));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ntk_gram_block_cpu", [&] {
    for (int64_t i0 = 0; i0 < n; i0 += chunk) {
      const int64_t count = std::min(chunk, n - i0);
      auto ga = at::mm(A.narrow(0, i0 * T, count * T), A.narrow(0, i0 * T, (n - i0) * T).t());
      auto gb = at::mm(B.narrow(0, i0 * T * ob, count * T * ob),
                       B.narrow(0, i0 * T * ob, (n - i0) * T * ob).t());
      combine_grams<scalar_t>(ga.contiguous().data_ptr<scalar_t>(),
                              gb.contiguous().data_ptr<scalar_t>(), result.data_ptr<scalar_t>(),
                              i0, count, n, T, ob, bias ? scalar_t(1) : scalar_t(0));
    }
  });
  if (!result.is_same(out)) out.add_(result);
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
  const int64_t tiles = (n + kTile - 1) / kTile;
  std::vector<std::pair<int64_t, int64_t>> pairs;  // upper triangle: the kernel is symmetric
  for (int64_t ti = 0; ti < tiles; ++ti)
    for (int64_t tj = ti; tj < tiles; ++tj) pairs.emplace_back(ti, tj);

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

    at::parallel_for(0, static_cast<int64_t>(pairs.size()), 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> s(kTile * kTile), acc(kTile * ob * kTile * ob);
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
        for (int64_t r = 0; r < ni * ob; ++r) {
          for (int64_t c = 0; c < acc_cols; ++c) {
            const scalar_t v = acc[r * acc_cols + c];
            res[(i0 * ob + r) * res_cols + j0 * ob + c] += v;
            if (i0 != j0) res[(j0 * ob + c) * res_cols + i0 * ob + r] += v;
          }
        }
      }
    });
  });
  if (!result.is_same(out)) out.add_(result);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsenas, CPU, m) {
  m.impl("ntk_gram_block_", &ntk_gram_block_cpu);
  m.impl("ntk_masked_block_", &ntk_masked_block_cpu);
}

}  // namespace sparsenas
