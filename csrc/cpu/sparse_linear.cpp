// CPU kernels of sparse_linear (CSR), nm_linear (N:M) and nm_mask.
//
// Layout: x is transposed (and its batch padded with zeros to a multiple of the vector width W)
// to xT [in, ldx], so every stored weight w[r, c] costs one broadcast and ldx / W vector FMAs
// over the contiguous row xT[c]: the batch is the vectorised dimension and the weight structure is
// read once per W batch columns. Rows of W are split over threads. The inner loops are fixed-width
// and compiled for AVX-512, AVX2+FMA and baseline x86-64, picked at run time (target_clones).
// bfloat16 / float16 run in float32 and round once at the end.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "ops/sparse_linear.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define SPARSENAS_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SPARSENAS_MULTIVERSION
#endif
#define SPARSENAS_INLINE __attribute__((always_inline)) inline

namespace sparsenas {
namespace {

// The stored weights of a row as (first value index, column indices, count). Columns go through
// uint32 so that a negative index becomes a huge one, caught by the range check.
struct CsrCols {
  const int32_t* row_ptr;
  const int32_t* col;
  static constexpr bool kNeedsBuffer = false;
  SPARSENAS_INLINE int64_t row(int64_t r, int32_t* /*buffer*/, const int32_t** columns) const {
    *columns = col + row_ptr[r];
    return row_ptr[r + 1] - row_ptr[r];
  }
  SPARSENAS_INLINE int64_t first(int64_t r) const { return row_ptr[r]; }
};

// N:M: value j of group g sits at column g * M + idx; the row's columns are spelled out into a
// small per-task buffer so that both formats share the row kernels. An index outside its group
// becomes -1 (out of range).
struct NmCols {
  const uint8_t* idx;
  int64_t n;
  int64_t m;
  int64_t groups;
  static constexpr bool kNeedsBuffer = true;
  SPARSENAS_INLINE int64_t row(int64_t r, int32_t* buffer, const int32_t** columns) const {
    // Locals and __restrict: the uint8 index reads may alias anything as far as the compiler
    // knows, which would otherwise reload every field on each store.
    const int32_t group_n = static_cast<int32_t>(n), group_m = static_cast<int32_t>(m);
    const int64_t count = groups * n;
    const uint8_t* __restrict ri = idx + r * count;
    int32_t* __restrict out = buffer;
    if ((group_n & (group_n - 1)) == 0) {
      // N a power of two (the usual 1:M, 2:4, 4:8): the group is k >> log2(N), a loop the
      // compiler vectorises.
      const int shift = __builtin_ctz(static_cast<unsigned>(group_n));
      for (int32_t k = 0; k < static_cast<int32_t>(count); ++k) {
        const int32_t i = ri[k];
        out[k] = i < group_m ? (k >> shift) * group_m + i : -1;
      }
      *columns = buffer;
      return count;
    }
    for (int64_t g = 0, k = 0; g < groups; ++g) {
      const int32_t base = static_cast<int32_t>(g) * group_m;
      for (int32_t j = 0; j < group_n; ++j, ++k) {
        const int32_t i = ri[k];
        out[k] = i < group_m ? base + i : -1;
      }
    }
    *columns = buffer;
    return count;
  }
  SPARSENAS_INLINE int64_t first(int64_t r) const { return r * groups * n; }
};

// W batch lanes as one GCC vector (W = 1: the scalar itself). Spelled out, not left to the
// vectoriser: with four accumulator arrays it vectorised some and left others scalar.
template <int W, typename scalar_t>
struct Lanes {
  typedef scalar_t type __attribute__((vector_size(W * sizeof(scalar_t))));
};
template <typename scalar_t>
struct Lanes<1, scalar_t> {
  using type = scalar_t;
};

template <int W, typename scalar_t>
SPARSENAS_INLINE typename Lanes<W, scalar_t>::type load_lanes(const scalar_t* p) {
  typename Lanes<W, scalar_t>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// acc += values[k] * xT[columns[k], b0 : b0 + W] for one stored weight. A function, not a
// lambda: a lambda's body is compiled for the baseline target and was not inlined into the
// target_clones callers, which made every stored weight a call.
template <int W, typename scalar_t>
SPARSENAS_INLINE void add_stored(typename Lanes<W, scalar_t>::type& acc, const scalar_t* xT,
                                 int64_t ldx, int64_t b0, const scalar_t* values,
                                 const int32_t* columns, int64_t k, uint64_t in, bool& bad) {
  const uint64_t c = static_cast<uint32_t>(columns[k]);
  if (c >= in) {
    bad = true;
    return;
  }
  acc += values[k] * load_lanes<W>(xT + c * ldx + b0);
}

// y_row[b] = sum_k values[k] * xT[columns[k], b] for the W-wide batch chunks of one row. Four
// accumulators break the FMA dependency chain through consecutive stored weights.
template <int W, typename scalar_t>
SPARSENAS_INLINE void row_forward(const scalar_t* xT, int64_t ldx, const scalar_t* values,
                                  const int32_t* columns, int64_t count, scalar_t* y_row,
                                  uint64_t in, bool& bad) {
  for (int64_t b0 = 0; b0 < ldx; b0 += W) {
    typename Lanes<W, scalar_t>::type a0 = {}, a1 = {}, a2 = {}, a3 = {};
    int64_t k = 0;
    for (; k + 4 <= count; k += 4) {
      add_stored<W>(a0, xT, ldx, b0, values, columns, k, in, bad);
      add_stored<W>(a1, xT, ldx, b0, values, columns, k + 1, in, bad);
      add_stored<W>(a2, xT, ldx, b0, values, columns, k + 2, in, bad);
      add_stored<W>(a3, xT, ldx, b0, values, columns, k + 3, in, bad);
    }
    for (; k < count; ++k) add_stored<W>(a0, xT, ldx, b0, values, columns, k, in, bad);
    const auto sum = (a0 + a1) + (a2 + a3);
    std::memcpy(y_row + b0, &sum, sizeof(sum));
  }
}

// grad_values[k] = <g_row, xT[c]> and gxT[c] += values[k] * g_row for the stored weights of one row.
template <int W, typename scalar_t>
SPARSENAS_INLINE void row_backward(const scalar_t* xT, const scalar_t* g_row, int64_t ldx,
                                   const scalar_t* values, const int32_t* columns, int64_t count,
                                   scalar_t* grad_values, scalar_t* gxT, uint64_t in, bool& bad) {
  for (int64_t k = 0; k < count; ++k) {
    const uint64_t c = static_cast<uint32_t>(columns[k]);
    if (c >= in) {
      bad = true;
      continue;
    }
    if (grad_values != nullptr) {
      const scalar_t* xr = xT + c * ldx;
      scalar_t partial[W] = {};
      for (int64_t b0 = 0; b0 < ldx; b0 += W)
        for (int i = 0; i < W; ++i) partial[i] += g_row[b0 + i] * xr[b0 + i];
      scalar_t sum = 0;
      for (int i = 0; i < W; ++i) sum += partial[i];
      grad_values[k] = sum;
    }
    if (gxT != nullptr) {
      const scalar_t v = values[k];
      scalar_t* gx = gxT + c * ldx;
      for (int64_t b0 = 0; b0 < ldx; b0 += W)
        for (int i = 0; i < W; ++i) gx[b0 + i] += v * g_row[b0 + i];
    }
  }
}

// The vector width used for a batch of B columns, and the padded leading dimension.
int width_for(int64_t B) { return B <= 1 ? 1 : B <= 4 ? 4 : B <= 8 ? 8 : B <= 16 ? 16 : 32; }
int64_t padded(int64_t B, int W) { return (B + W - 1) / W * W; }

template <int W, typename scalar_t, typename Cols>
SPARSENAS_INLINE void rows_forward(const scalar_t* xT, int64_t ldx, const scalar_t* values,
                                   const Cols& cols, int32_t* buffer, scalar_t* yT, int64_t r0,
                                   int64_t r1, int64_t in, bool& bad) {
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t* columns;
    const int64_t count = cols.row(r, buffer, &columns);
    row_forward<W>(xT, ldx, values + cols.first(r), columns, count, yT + r * ldx, in, bad);
  }
}

template <int W, typename scalar_t, typename Cols>
SPARSENAS_INLINE void rows_backward(const scalar_t* xT, const scalar_t* gT, int64_t ldx,
                                    const scalar_t* values, const Cols& cols, int32_t* buffer,
                                    scalar_t* grad_values, scalar_t* gxT, int64_t r0, int64_t r1,
                                    int64_t in, bool& bad) {
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t* columns;
    const int64_t count = cols.row(r, buffer, &columns);
    const int64_t first = cols.first(r);
    row_backward<W>(xT, gT + r * ldx, ldx, values + first, columns, count,
                    grad_values == nullptr ? nullptr : grad_values + first, gxT, in, bad);
  }
}

// One compiled entry per (dtype, format), each cloned per instruction set and dispatching on the
// batch width W.
#define SPARSENAS_ENTRIES(scalar_t, Cols, suffix)                                                \
  SPARSENAS_MULTIVERSION void forward_##suffix(int W, const scalar_t* xT, int64_t ldx,           \
                                               const scalar_t* values, const Cols& cols,         \
                                               int32_t* buffer, scalar_t* yT, int64_t r0,        \
                                               int64_t r1, int64_t in, bool& bad) {              \
    switch (W) {                                                                                 \
      case 1: rows_forward<1>(xT, ldx, values, cols, buffer, yT, r0, r1, in, bad); break;        \
      case 4: rows_forward<4>(xT, ldx, values, cols, buffer, yT, r0, r1, in, bad); break;        \
      case 8: rows_forward<8>(xT, ldx, values, cols, buffer, yT, r0, r1, in, bad); break;        \
      case 16: rows_forward<16>(xT, ldx, values, cols, buffer, yT, r0, r1, in, bad); break;      \
      default: rows_forward<32>(xT, ldx, values, cols, buffer, yT, r0, r1, in, bad); break;      \
    }                                                                                            \
  }                                                                                              \
  SPARSENAS_MULTIVERSION void backward_##suffix(                                                 \
      int W, const scalar_t* xT, const scalar_t* gT, int64_t ldx, const scalar_t* values,        \
      const Cols& cols, int32_t* buffer, scalar_t* grad_values, scalar_t* gxT, int64_t r0,       \
      int64_t r1, int64_t in, bool& bad) {                                                       \
    switch (W) {                                                                                 \
      case 1: rows_backward<1>(xT, gT, ldx, values, cols, buffer, grad_values, gxT, r0, r1, in, bad); break;   \
      case 4: rows_backward<4>(xT, gT, ldx, values, cols, buffer, grad_values, gxT, r0, r1, in, bad); break;   \
      case 8: rows_backward<8>(xT, gT, ldx, values, cols, buffer, grad_values, gxT, r0, r1, in, bad); break;   \
      case 16: rows_backward<16>(xT, gT, ldx, values, cols, buffer, grad_values, gxT, r0, r1, in, bad); break; \
      default: rows_backward<32>(xT, gT, ldx, values, cols, buffer, grad_values, gxT, r0, r1, in, bad); break; \
    }                                                                                            \
  }                                                                                              \
  SPARSENAS_INLINE void forward_entry(int W, const scalar_t* xT, int64_t ldx,                    \
                                      const scalar_t* values, const Cols& cols, int32_t* buffer, \
                                      scalar_t* yT, int64_t r0, int64_t r1, int64_t in,          \
                                      bool& bad) {                                               \
    forward_##suffix(W, xT, ldx, values, cols, buffer, yT, r0, r1, in, bad);                     \
  }                                                                                              \
  SPARSENAS_INLINE void backward_entry(int W, const scalar_t* xT, const scalar_t* gT,            \
                                       int64_t ldx, const scalar_t* values, const Cols& cols,    \
                                       int32_t* buffer, scalar_t* grad_values, scalar_t* gxT,    \
                                       int64_t r0, int64_t r1, int64_t in, bool& bad) {          \
    backward_##suffix(W, xT, gT, ldx, values, cols, buffer, grad_values, gxT, r0, r1, in, bad);  \
  }

SPARSENAS_ENTRIES(float, CsrCols, float_csr)
SPARSENAS_ENTRIES(double, CsrCols, double_csr)
SPARSENAS_ENTRIES(float, NmCols, float_nm)
SPARSENAS_ENTRIES(double, NmCols, double_nm)
#undef SPARSENAS_ENTRIES

// Per-task scratch for the N:M row's columns (empty for CSR).
template <typename Cols>
std::vector<int32_t> row_buffer(const Cols& cols) {
  if constexpr (Cols::kNeedsBuffer) return std::vector<int32_t>(cols.groups * cols.n);
  return {};
}

// The compute dtype: float and double run natively, reduced precision in float32.
at::ScalarType compute_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// x [rows, in] -> xT [in, ldx] in the compute dtype, batch padded with zeros.
at::Tensor transposed_padded(const at::Tensor& x2, int64_t ldx) {
  const auto type = compute_type(x2.scalar_type());
  // One row is its own transpose: no copy.
  if (ldx == 1 && x2.scalar_type() == type) return x2.reshape({x2.size(1), 1}).contiguous();
  auto xT = at::empty({x2.size(1), ldx}, x2.options().dtype(type));
  xT.narrow(1, 0, x2.size(0)).copy_(x2.t());
  if (ldx > x2.size(0)) xT.narrow(1, x2.size(0), ldx - x2.size(0)).zero_();
  return xT;
}

// Rows per parallel task: enough stored weights times batch columns to amortise a task.
int64_t grain_for(int64_t nnz, int64_t out, int64_t ldx) {
  const int64_t per_row = std::max<int64_t>(1, nnz / std::max<int64_t>(out, 1)) * ldx;
  return std::max<int64_t>(1, 32768 / per_row);
}

// The index ranges, checked by the row kernels while they compute (no extra pass).
void check_stored_indices(const char* op, bool valid, const CsrCols& /*cols*/, int64_t in) {
  TORCH_CHECK_VALUE(valid, op, "(): argument 'col_idx' must hold column indices in [0, "
                    "in_features = ", in, "), x's last dimension; got an index outside that range");
}

void check_stored_indices(const char* op, bool valid, const NmCols& cols, int64_t /*in*/) {
  TORCH_CHECK_VALUE(valid, op, "(): argument 'indices' must hold positions in [0, m = ", cols.m,
                    ") inside each group; got an index outside that range");
}

void check_row_ptr(const char* op, const at::Tensor& row_ptr, int64_t nnz) {
  const int32_t* p = row_ptr.data_ptr<int32_t>();
  const int64_t out = row_ptr.numel() - 1;
  bool monotone = p[0] == 0 && p[out] == nnz;
  for (int64_t r = 0; r < out && monotone; ++r) monotone = p[r] <= p[r + 1];
  TORCH_CHECK_VALUE(monotone, op,
                    "(): argument 'row_ptr' must start at 0, never decrease and end at nnz (",
                    nnz, "), the length of col_idx");
}

template <typename Cols>
at::Tensor forward_impl(const char* op, const at::Tensor& x, const at::Tensor& values,
                        const Cols& cols, const SparseLinearGeometry& g,
                        const c10::optional<at::Tensor>& bias) {
  const int64_t B = g.rows, in = g.in_features, out = g.out_features;
  if (B == 0 || out == 0) return at::empty(g.output_shape, x.options());
  const int W = width_for(B);
  const int64_t ldx = W == 1 ? 1 : padded(B, W);
  const auto xT = transposed_padded(x.reshape({B, in}), ldx);
  const auto vals = values.to(xT.scalar_type()).contiguous();
  auto yT = at::empty({out, ldx}, xT.options());
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES(xT.scalar_type(), "sparse_linear_cpu", [&] {
    const scalar_t* xp = xT.data_ptr<scalar_t>();
    const scalar_t* vp = vals.data_ptr<scalar_t>();
    scalar_t* yp = yT.data_ptr<scalar_t>();
    at::parallel_for(0, out, grain_for(values.numel(), out, ldx), [&](int64_t r0, int64_t r1) {
      bool local_bad = false;
      auto buffer = row_buffer(cols);
      forward_entry(W, xp, ldx, vp, cols, buffer.data(), yp, r0, r1, in, local_bad);
      if (local_bad) bad = true;
    });
  });
  check_stored_indices(op, !bad, cols, in);
  auto y = yT.narrow(1, 0, B).t().to(x.scalar_type());
  if (bias.has_value() && bias->defined()) y = y + *bias;
  return y.contiguous().view(g.output_shape);
}

template <typename Cols>
std::tuple<at::Tensor, at::Tensor> backward_impl(const char* op, const at::Tensor& grad,
                                                 const at::Tensor& x, const at::Tensor& values,
                                                 const Cols& cols, const SparseLinearGeometry& g,
                                                 std::array<bool, 2> output_mask) {
  check_sparse_grad(op, grad, x, g);
  const int64_t B = g.rows, in = g.in_features, out = g.out_features;
  at::Tensor grad_x, grad_values;
  if (output_mask[0]) grad_x = at::zeros(x.sizes(), x.options());
  if (output_mask[1]) grad_values = at::zeros(values.sizes(), values.options());
  if (B == 0 || out == 0 || in == 0 || values.numel() == 0 || !(output_mask[0] || output_mask[1]))
    return {grad_x, grad_values};
  // W = 1 has no special backward path: a plain width-1 loop.
  const int W = width_for(B);
  const int64_t ldx = W == 1 ? 1 : padded(B, W);
  const auto xT = transposed_padded(x.reshape({B, in}), ldx);
  const auto gT = transposed_padded(grad.reshape({B, out}), ldx);
  const auto vals = values.to(xT.scalar_type()).contiguous();
  // Each task owns a range of rows and its own grad_x buffer: no write conflicts.
  const int64_t tasks = std::min<int64_t>(at::get_num_threads(), std::max<int64_t>(1, out / 16));
  auto gv = output_mask[1] ? at::empty({values.numel()}, xT.options()) : at::Tensor();
  auto gxT = output_mask[0] ? at::zeros({tasks, in, ldx}, xT.options()) : at::Tensor();
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES(xT.scalar_type(), "sparse_linear_cpu", [&] {
    const scalar_t* xp = xT.data_ptr<scalar_t>();
    const scalar_t* gp = gT.data_ptr<scalar_t>();
    const scalar_t* vp = vals.data_ptr<scalar_t>();
    scalar_t* gvp = output_mask[1] ? gv.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = out * t / tasks, r1 = out * (t + 1) / tasks;
        scalar_t* gxp = output_mask[0] ? gxT.data_ptr<scalar_t>() + t * in * ldx : nullptr;
        bool local_bad = false;
        auto buffer = row_buffer(cols);
        backward_entry(W, xp, gp, ldx, vp, cols, buffer.data(), gvp, gxp, r0, r1, in, local_bad);
        if (local_bad) bad = true;
      }
    });
  });
  check_stored_indices(op, !bad, cols, in);
  if (output_mask[0]) grad_x.copy_(gxT.sum(0).narrow(1, 0, B).t().reshape(x.sizes()));
  if (output_mask[1]) grad_values.copy_(gv.view(values.sizes()));
  return {grad_x, grad_values};
}

at::Tensor sparse_linear_cpu(const at::Tensor& x, const at::Tensor& row_ptr,
                             const at::Tensor& col_idx, const at::Tensor& values,
                             const c10::optional<at::Tensor>& bias) {
  const char* op = "sparse_linear";
  const auto g = check_sparse_linear(op, x, row_ptr, col_idx, values, bias);
  const auto rp = row_ptr.contiguous();
  const auto ci = col_idx.contiguous();
  check_row_ptr(op, rp, ci.numel());
  return forward_impl(op, x, values, CsrCols{rp.data_ptr<int32_t>(), ci.data_ptr<int32_t>()}, g,
                      bias);
}

std::tuple<at::Tensor, at::Tensor> sparse_linear_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& row_ptr,
    const at::Tensor& col_idx, const at::Tensor& values, std::array<bool, 2> output_mask) {
  const char* op = "sparse_linear_backward";
  const auto g = check_sparse_linear(op, x, row_ptr, col_idx, values, c10::nullopt);
  const auto rp = row_ptr.contiguous();
  const auto ci = col_idx.contiguous();
  check_row_ptr(op, rp, ci.numel());
  return backward_impl(op, grad, x, values,
                       CsrCols{rp.data_ptr<int32_t>(), ci.data_ptr<int32_t>()}, g, output_mask);
}

at::Tensor nm_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
                         int64_t m, const c10::optional<at::Tensor>& bias) {
  const char* op = "nm_linear";
  const auto g = check_nm_linear(op, x, values, indices, m, bias);
  const auto idx = indices.contiguous();
  return forward_impl(op, x, values,
                      NmCols{idx.data_ptr<uint8_t>(), g.group_n, m, g.in_features / m}, g, bias);
}

std::tuple<at::Tensor, at::Tensor> nm_linear_backward_cpu(const at::Tensor& grad,
                                                          const at::Tensor& x,
                                                          const at::Tensor& values,
                                                          const at::Tensor& indices, int64_t m,
                                                          std::array<bool, 2> output_mask) {
  const char* op = "nm_linear_backward";
  const auto g = check_nm_linear(op, x, values, indices, m, c10::nullopt);
  const auto idx = indices.contiguous();
  return backward_impl(op, grad, x, values,
                       NmCols{idx.data_ptr<uint8_t>(), g.group_n, m, g.in_features / m}, g,
                       output_mask);
}

// |a| ranks before |b|: larger magnitude first, NaN largest, ties to the lower index.
template <typename T>
inline bool ranks_before(T a, int64_t i, T b, int64_t j) {
  const bool a_nan = std::isnan(a), b_nan = std::isnan(b);
  if (a_nan || b_nan) return a_nan && (!b_nan || i < j);
  return a > b || (a == b && i < j);
}

at::Tensor nm_mask_cpu(const at::Tensor& weight, int64_t n, int64_t m) {
  check_nm_mask("nm_mask", weight, n, m);
  const auto w = weight.contiguous();
  auto mask = at::empty(w.sizes(), w.options().dtype(at::kBool));
  const int64_t groups = w.numel() / m;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "nm_mask", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* wp = w.data_ptr<scalar_t>();
    bool* mp = mask.data_ptr<bool>();
    at::parallel_for(0, groups, std::max<int64_t>(1, 4096 / m), [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        const scalar_t* wg = wp + g * m;
        for (int64_t i = 0; i < m; ++i) {
          const acc_t a = std::abs(static_cast<acc_t>(wg[i]));
          int64_t rank = 0;
          for (int64_t j = 0; j < m && rank < n; ++j)
            rank += ranks_before(std::abs(static_cast<acc_t>(wg[j])), j, a, i);
          mp[g * m + i] = rank < n;
        }
      }
    });
  });
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsenas, CPU, m) {
  m.impl("sparse_linear", &sparse_linear_cpu);
  m.impl("sparse_linear_backward", &sparse_linear_backward_cpu);
  m.impl("nm_linear", &nm_linear_cpu);
  m.impl("nm_linear_backward", &nm_linear_backward_cpu);
  m.impl("nm_mask", &nm_mask_cpu);
}

}  // namespace sparsenas
