#pragma once
// masked_conv2d: y = conv2d(x, W ⊙ M) + b, for one mask or K candidate masks at once.
//
// Single form:      x [N, C, H, W], weight [out, C / groups, kh, kw], mask like weight, bias [out]
//                   -> [N, out, H', W']
// K-candidate form: x [K, N, C, H, W], weight [out, C / groups, kh, kw] or [K, out, ...],
//                   mask [K, out, C / groups, kh, kw], bias [out] or [K, out] -> [K, N, out, H', W']
// mask: bool, uint8 (0/1) or floating with weight's dtype (soft mask); with packed=true a uint8
// bit-packed mask [(K,) out, ceil(C / groups * kh * kw / 8)] of each output channel's flattened
// fan-in (bit j of byte b is element 8 b + j).
//
// Per candidate and per block of output channels (aligned to groups) a device kernel writes the
// masked block into a small workspace and at::convolution runs on that block. The exception is a
// batch of one image per candidate, where the devices that ask for it (MaskedConvKernels) write
// every candidate's masked filters (up to 32 MiB) and run one grouped convolution over x viewed
// as [1, K * C, H, W]. The driver below is device independent;
// each device supplies its elementwise kernels (MaskedConvKernels).

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <array>
#include <vector>

namespace sparsenas {

struct MaskedConv2dGeometry {
  int64_t candidates;         // K (1 in the single form)
  bool candidate_form;        // x was [K, N, C, H, W]
  bool weight_per_candidate;  // weight was [K, out, ...]
  bool bias_per_candidate;    // bias was [K, out]
  int64_t batch, in_channels, height, width;
  int64_t out_channels, kernel_h, kernel_w;
  int64_t groups;
  int64_t fan_in;  // C / groups * kh * kw: elements of one output channel's filter
  int64_t out_height, out_width;
  std::array<int64_t, 2> stride, padding, dilation;
  std::vector<int64_t> output_shape;  // [(K,) N, out, H', W']
};

// Validates the arguments of masked_conv2d (and of its backward op; op names the caller).
MaskedConv2dGeometry check_masked_conv2d(const char* op, const at::Tensor& x,
                                         const at::Tensor& weight, const at::Tensor& mask,
                                         const c10::optional<at::Tensor>& bias,
                                         c10::IntArrayRef stride, c10::IntArrayRef padding,
                                         c10::IntArrayRef dilation, int64_t groups, bool packed);

inline int64_t conv_packed_width(int64_t n) { return (n + 7) / 8; }

// Device kernels of the driver. Tensors are contiguous; weight and mask are one candidate's,
// viewed as [out, fan_in] (a packed mask as [out, ceil(fan_in / 8)]).
struct MaskedConvKernels {
  // block[r, :] = weight[row0 + r, :] ⊙ mask[row0 + r, :] for r < block.size(0).
  void (*fill_masked_rows)(const at::Tensor& weight, const at::Tensor& mask, bool packed,
                           int64_t row0, const at::Tensor& block);
  // With g = ∂L/∂W_eff [out, fan_in]: grad_weight = g ⊙ mask (added to it when accumulate), and
  // grad_mask = g ⊙ weight; either output may be undefined (not requested).
  void (*combine_weight_grads)(const at::Tensor& g, const at::Tensor& weight,
                               const at::Tensor& mask, bool packed, const at::Tensor& grad_weight,
                               bool accumulate, const at::Tensor& grad_mask);
  // Whether K candidates of one image each run as one grouped convolution over all of them
  // (where their filters fit one block) instead of K convolutions: measured faster on CPUs
  // (oneDNN), not yet measured on GPUs.
  bool group_single_image_candidates;
};

at::Tensor masked_conv2d_forward(const MaskedConvKernels& kernels, const at::Tensor& x,
                                 const at::Tensor& weight, const at::Tensor& mask,
                                 const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                 c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                 int64_t groups, bool packed);

// Returns (grad_x, grad_weight, grad_mask, grad_bias); an output not requested by output_mask
// is an empty tensor of shape [0]. bias_sizes is [out] or [K, out] (bias shape) when requested.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward(
    const MaskedConvKernels& kernels, const at::Tensor& grad, const at::Tensor& x,
    const at::Tensor& weight, const at::Tensor& mask, c10::OptionalIntArrayRef bias_sizes,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    bool packed, std::array<bool, 4> output_mask);

}  // namespace sparsenas
