#pragma once
// Training steps of a single-mask masked_linear on CPU that keep W ⊙ M: the forward writes the
// masked weight once and both the forward and the input gradient are plain BLAS products on it
// (two masking passes per step instead of three; the memory is the one weight-sized buffer that
// F.linear(x, weight * mask) keeps too). Whether that beats running each stage by its own path is
// measured per shape class, like the paths themselves (cpu/path_choice.h).

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace sparsenas::cpu {

// Whether a training step of masked_linear(x, weight, mask, bias, packed) (forward and input
// gradient) keeps the masked weight: forced by SPARSENAS_MASKED_LINEAR_PATH ("gemm" keeps it,
// "fused" does not), or measured once per shape class. The arguments are checked as the op
// checks them (same messages). Single-mask CPU calls only.
bool keeps_masked_weight(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                         const c10::optional<at::Tensor>& bias, bool packed);

// W ⊙ M as a tensor of the weight's shape and dtype ([out, in]; a packed mask unpacked).
at::Tensor masked_weight(const at::Tensor& weight, const at::Tensor& mask, bool packed);

}  // namespace sparsenas::cpu
