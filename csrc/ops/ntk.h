#pragma once
// Empirical-NTK blocks of one linear map, accumulated in place into a kernel matrix.
//
// Inputs of the layer a [N, d] and per-output cotangents of its outputs b [N, O, p], where the N
// rows are n examples × T rows per example (T > 1: a convolution's output positions, unfolded).
// Per-example weight gradient for output o: G_io = Σ_t b_(it)o ⊗ a_(it).
//
// ntk_gram_block_:   out[(i,o),(j,o')] += Σ_{t,s} (a_it · a_js + bias) (b_ito · b_jso')
//                    (sum_outputs: out[i, j] += Σ_o of the same with o' = o).
// ntk_masked_block_: out[(i,o),(j,o')] += Σ_kl M_kl (b_iok b_jo'k)(a_il a_jl + bias-only term)
//                    with T = 1; the bias adds Σ_k b_iok b_jo'k. Never materialises per-example
//                    gradients: tiles over (i, j) and reads M in place.
// ntk_gram_kernel:   Σ over maps l of the ntk_gram_block_ of (a[l], b[l], rows_per_example[l])
//                    without bias (a bias is a column of ones appended to a[l]), as a new
//                    matrix of `dtype`; the CPU kernel makes one pass over it for all maps.
// out: float32 or float64 ([n, n] with sum_outputs, else [n O, n O]); a, b, mask are converted
// to out's dtype, so accumulation is never below float32.

#include <ATen/core/Tensor.h>

namespace sparsenas {

struct NtkBlockGeometry {
  int64_t examples;         // n
  int64_t rows_per_example; // T
  int64_t outputs;          // O
  int64_t in_features;      // d
  int64_t out_features;     // p
  int64_t out_rows;         // n (sum_outputs) or n * O
};

NtkBlockGeometry check_ntk_gram_block(const char* op, const at::Tensor& out, const at::Tensor& a,
                                      const at::Tensor& b, int64_t rows_per_example,
                                      bool sum_outputs);

NtkBlockGeometry check_ntk_masked_block(const char* op, const at::Tensor& out,
                                        const at::Tensor& a, const at::Tensor& b,
                                        const at::Tensor& mask, bool sum_outputs);

NtkBlockGeometry check_ntk_gram_kernel(const char* op, at::TensorList a, at::TensorList b,
                                       at::IntArrayRef rows_per_example, bool sum_outputs,
                                       at::ScalarType dtype);

// Examples per chunk of the Gram route so that its two Gram slices hold about `budget` elements.
int64_t ntk_gram_chunk(const NtkBlockGeometry& g, bool sum_outputs, int64_t budget);

}  // namespace sparsenas
