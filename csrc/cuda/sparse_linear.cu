// CUDA kernels of sparse_linear (CSR), nm_linear (N:M) and nm_mask.
//
// x is transposed to xT [in, B] so that a warp reading the stored column c of many batch rows
// reads one contiguous, coalesced run. One warp per output row:
//   B >= 32: lanes own batch columns (grid-stride over the batch), the row's values are
//            broadcast reads; y is written coalesced as yT [out, B].
//   B <  32: lanes split the row's stored weights and each keeps 4 batch accumulators, reduced
//            with warp shuffles, so small batches still use the whole warp.
// Accumulation in opmath (float for bfloat16 / float16). A stored index outside the matrix is
// skipped (the CPU kernel raises; checking here would cost a device synchronisation), and row_ptr
// is clamped to [0, nnz], so malformed input never reads out of bounds.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "ops/sparse_linear.h"

namespace sparsenas {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kSmallBatch = 4;

struct CsrCols {
  const int32_t* row_ptr;
  const int32_t* col;
  int64_t nnz;
  __device__ int64_t clamped(int64_t r) const {
    const int64_t p = row_ptr[r];
    return p < 0 ? 0 : (p > nnz ? nnz : p);
  }
  __device__ int64_t begin(int64_t r) const { return clamped(r); }
  __device__ int64_t end(int64_t r) const { return clamped(r + 1); }
  // Through uint32: a negative index becomes one >= 2^31 > in, skipped like any index >= in.
  __device__ int64_t column(int64_t k, int64_t /*r*/) const {
    return static_cast<uint32_t>(col[k]);
  }
};

struct NmCols {
  const uint8_t* idx;
  int64_t n;
  int64_t m;
  int64_t per_row;  // groups * n
  __device__ int64_t begin(int64_t r) const { return r * per_row; }
  __device__ int64_t end(int64_t r) const { return (r + 1) * per_row; }
  __device__ int64_t column(int64_t k, int64_t r) const {
    const int64_t i = idx[k];
    return i < m ? ((k - r * per_row) / n) * m + i : INT64_MAX;
  }
};

template <typename T>
__device__ T warp_sum(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

template <typename scalar_t, typename Cols>
__global__ void forward_wide_kernel(const scalar_t* __restrict__ xT, const scalar_t* __restrict__ values,
                                    Cols cols, scalar_t* __restrict__ yT, int64_t out, int64_t B,
                                    int64_t in) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  for (int64_t r = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / kWarp; r < out;
       r += (int64_t)gridDim.x * blockDim.x / kWarp) {
    const int64_t begin = cols.begin(r), end = cols.end(r);
    for (int64_t b = lane; b < B; b += kWarp) {
      acc_t acc = 0;
      for (int64_t k = begin; k < end; ++k) {
        const int64_t c = cols.column(k, r);
        if (c < in) acc += acc_t(values[k]) * acc_t(xT[c * B + b]);
      }
      yT[r * B + b] = scalar_t(acc);
    }
  }
}

template <typename scalar_t, typename Cols>
__global__ void forward_narrow_kernel(const scalar_t* __restrict__ xT,
                                      const scalar_t* __restrict__ values, Cols cols,
                                      scalar_t* __restrict__ yT, int64_t out, int64_t B, int64_t in) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  for (int64_t r = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / kWarp; r < out;
       r += (int64_t)gridDim.x * blockDim.x / kWarp) {
    const int64_t begin = cols.begin(r), end = cols.end(r);
    for (int64_t b0 = 0; b0 < B; b0 += kSmallBatch) {
      acc_t acc[kSmallBatch] = {};
      for (int64_t k = begin + lane; k < end; k += kWarp) {
        const int64_t c = cols.column(k, r);
        if (c >= in) continue;
        const acc_t v = values[k];
#pragma unroll
        for (int j = 0; j < kSmallBatch; ++j)
          if (b0 + j < B) acc[j] += v * acc_t(xT[c * B + b0 + j]);
      }
#pragma unroll
      for (int j = 0; j < kSmallBatch; ++j) {
        const acc_t total = warp_sum(acc[j]);
        if (lane == 0 && b0 + j < B) yT[r * B + b0 + j] = scalar_t(total);
      }
    }
  }
}

// grad_values[k] = <gT[r], xT[c]> (warp reduction over the batch) and
// gx[c, b] += values[k] * gT[r, b] (atomic, in opmath).
template <typename scalar_t, typename Cols>
__global__ void backward_kernel(const scalar_t* __restrict__ xT, const scalar_t* __restrict__ gT,
                                const scalar_t* __restrict__ values, Cols cols,
                                scalar_t* __restrict__ grad_values,
                                at::opmath_type<scalar_t>* __restrict__ gx, int64_t out,
                                int64_t B, int64_t in) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  for (int64_t r = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / kWarp; r < out;
       r += (int64_t)gridDim.x * blockDim.x / kWarp) {
    for (int64_t k = cols.begin(r), end = cols.end(r); k < end; ++k) {
      const int64_t c = cols.column(k, r);
      if (c >= in) continue;
      const acc_t v = values[k];
      acc_t partial = 0;
      for (int64_t b = lane; b < B; b += kWarp) {
        const acc_t g = gT[r * B + b];
        if (grad_values != nullptr) partial += g * acc_t(xT[c * B + b]);
        if (gx != nullptr) atomicAdd(gx + c * B + b, v * g);
      }
      if (grad_values != nullptr) {
        partial = warp_sum(partial);
        if (lane == 0) grad_values[k] = scalar_t(partial);
      }
    }
  }
}

int blocks_for(int64_t rows) {
  const int64_t warps = kWarpsPerBlock;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((rows + warps - 1) / warps, 65535)));
}

template <typename Cols>
at::Tensor forward_impl(const at::Tensor& x, const at::Tensor& values, const Cols& cols,
                        const SparseLinearGeometry& g, const c10::optional<at::Tensor>& bias) {
  const int64_t B = g.rows, in = g.in_features, out = g.out_features;
  if (B == 0 || out == 0) return at::empty(g.output_shape, x.options());
  const auto xT = x.reshape({B, in}).t().contiguous();
  const auto vals = values.contiguous();
  auto yT = at::empty({out, B}, x.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "sparse_linear_cuda", [&] {
    if (B >= kWarp) {
      forward_wide_kernel<scalar_t, Cols><<<blocks_for(out), kWarp * kWarpsPerBlock, 0, stream>>>(
          xT.data_ptr<scalar_t>(), vals.data_ptr<scalar_t>(), cols, yT.data_ptr<scalar_t>(), out,
          B, in);
    } else {
      forward_narrow_kernel<scalar_t, Cols><<<blocks_for(out), kWarp * kWarpsPerBlock, 0, stream>>>(
          xT.data_ptr<scalar_t>(), vals.data_ptr<scalar_t>(), cols, yT.data_ptr<scalar_t>(), out,
          B, in);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  auto y = yT.t();
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
  const auto xT = x.reshape({B, in}).t().contiguous();
  const auto gT = grad.reshape({B, out}).t().contiguous();
  const auto vals = values.contiguous();
  const auto opmath = at::toOpMathType(x.scalar_type());
  auto gx = output_mask[0] ? at::zeros({in, B}, x.options().dtype(opmath)) : at::Tensor();
  auto gv = output_mask[1] ? at::empty({values.numel()}, values.options()) : at::Tensor();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "sparse_linear_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, Cols><<<blocks_for(out), kWarp * kWarpsPerBlock, 0, stream>>>(
        xT.data_ptr<scalar_t>(), gT.data_ptr<scalar_t>(), vals.data_ptr<scalar_t>(), cols,
        output_mask[1] ? gv.data_ptr<scalar_t>() : nullptr,
        output_mask[0] ? gx.data_ptr<acc_t>() : nullptr, out, B, in);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (output_mask[0]) grad_x.copy_(gx.t().reshape(x.sizes()));
  if (output_mask[1]) grad_values.copy_(gv.view(values.sizes()));
  return {grad_x, grad_values};
}

at::Tensor sparse_linear_cuda(const at::Tensor& x, const at::Tensor& row_ptr,
                              const at::Tensor& col_idx, const at::Tensor& values,
                              const c10::optional<at::Tensor>& bias) {
  const auto g = check_sparse_linear("sparse_linear", x, row_ptr, col_idx, values, bias);
  c10::cuda::CUDAGuard guard(x.device());
  const auto rp = row_ptr.contiguous();
  const auto ci = col_idx.contiguous();
  return forward_impl(x, values, CsrCols{rp.data_ptr<int32_t>(), ci.data_ptr<int32_t>(), ci.numel()},
                      g, bias);
}

std::tuple<at::Tensor, at::Tensor> sparse_linear_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& row_ptr,
    const at::Tensor& col_idx, const at::Tensor& values, std::array<bool, 2> output_mask) {
  const char* op = "sparse_linear_backward";
  const auto g = check_sparse_linear(op, x, row_ptr, col_idx, values, c10::nullopt);
  c10::cuda::CUDAGuard guard(x.device());
  const auto rp = row_ptr.contiguous();
  const auto ci = col_idx.contiguous();
  return backward_impl(op, grad, x, values,
                       CsrCols{rp.data_ptr<int32_t>(), ci.data_ptr<int32_t>(), ci.numel()}, g,
                       output_mask);
}

at::Tensor nm_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
                          int64_t m, const c10::optional<at::Tensor>& bias) {
  const auto g = check_nm_linear("nm_linear", x, values, indices, m, bias);
  c10::cuda::CUDAGuard guard(x.device());
  const auto idx = indices.contiguous();
  return forward_impl(x, values,
                      NmCols{idx.data_ptr<uint8_t>(), std::max<int64_t>(g.group_n, 1), m,
                             values.size(1)},
                      g, bias);
}

std::tuple<at::Tensor, at::Tensor> nm_linear_backward_cuda(const at::Tensor& grad,
                                                           const at::Tensor& x,
                                                           const at::Tensor& values,
                                                           const at::Tensor& indices, int64_t m,
                                                           std::array<bool, 2> output_mask) {
  const char* op = "nm_linear_backward";
  const auto g = check_nm_linear(op, x, values, indices, m, c10::nullopt);
  c10::cuda::CUDAGuard guard(x.device());
  const auto idx = indices.contiguous();
  return backward_impl(op, grad, x, values,
                       NmCols{idx.data_ptr<uint8_t>(), std::max<int64_t>(g.group_n, 1), m,
                              values.size(1)},
                       g, output_mask);
}

// One thread per group of m: rank every weight against the others (m is small).
template <typename scalar_t>
__global__ void nm_mask_kernel(const scalar_t* __restrict__ w, bool* __restrict__ mask,
                               int64_t groups, int64_t n, int64_t m) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < groups;
       g += (int64_t)gridDim.x * blockDim.x) {
    const scalar_t* wg = w + g * m;
    for (int64_t i = 0; i < m; ++i) {
      const acc_t a = fabs(acc_t(wg[i]));
      const bool a_nan = isnan(a);
      int64_t rank = 0;
      for (int64_t j = 0; j < m && rank < n; ++j) {
        const acc_t b = fabs(acc_t(wg[j]));
        const bool b_nan = isnan(b);
        // |w_j| ranks before |w_i|: larger first, NaN largest, ties to the lower index.
        const bool before = (b_nan || a_nan) ? (b_nan && (!a_nan || j < i))
                                             : (b > a || (b == a && j < i));
        rank += before;
      }
      mask[g * m + i] = rank < n;
    }
  }
}

at::Tensor nm_mask_cuda(const at::Tensor& weight, int64_t n, int64_t m) {
  check_nm_mask("nm_mask", weight, n, m);
  c10::cuda::CUDAGuard guard(weight.device());
  const auto w = weight.contiguous();
  auto mask = at::empty(w.sizes(), w.options().dtype(at::kBool));
  const int64_t groups = w.numel() / m;
  if (groups == 0) return mask;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((groups + threads - 1) / threads, 65535));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "nm_mask_cuda", [&] {
    nm_mask_kernel<scalar_t><<<blocks, threads, 0, stream>>>(w.data_ptr<scalar_t>(),
                                                             mask.data_ptr<bool>(), groups, n, m);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsenas, CUDA, m) {
  m.impl("sparse_linear", &sparse_linear_cuda);
  m.impl("sparse_linear_backward", &sparse_linear_backward_cuda);
  m.impl("nm_linear", &nm_linear_cuda);
  m.impl("nm_linear_backward", &nm_linear_backward_cuda);
  m.impl("nm_mask", &nm_mask_cuda);
}

}  // namespace sparsenas
