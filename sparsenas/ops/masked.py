"""Masked linear op: public API and fake kernels (its autograd is registered in C++, in
csrc/ops/masked_linear_autograd.cpp, so that a call does not pay for a Python backward node)."""

from __future__ import annotations

import torch
from torch import Tensor

from sparsenas._extension import has_native_kernel, native
from sparsenas.ops import _checks, _reference


def masked_linear(
    x: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None = None, *, packed: bool = False
) -> Tensor:
    """y = x (W ⊙ M)ᵀ + b, for one mask or K candidate masks in one call.

    Shapes:
        single mask:   x [..., in], weight [out, in], mask [out, in], bias [out] -> [..., out]
        K candidates:  x [K, ..., in], weight [out, in] or [K, out, in], mask [K, out, in],
                       bias [out] or [K, out] -> [K, ..., out]

    ``mask`` is bool or uint8 (a fixed mask), floating with the weight's dtype (a soft mask that
    receives gradients: ∂L/∂M = ∂L/∂(W ⊙ M) ⊙ W), or with ``packed=True`` a uint8 bit-packed mask
    from :func:`pack_mask` whose last dimension is ceil(in / 8). The weight gradient is masked
    (∂L/∂W = ∂L/∂(W ⊙ M) ⊙ M, summed over the K candidates when the weight is shared).

    Deliberate edge semantics (W ⊙ M is a plain product, on every path):

    - a uint8 mask multiplies: a value of 2 scales its weight by 2 (use bool, or 0 / 1, for a
      pure keep / drop mask);
    - a masked-out weight that is inf or NaN gives NaN (inf · 0 = NaN), exactly as
      ``x @ (weight * mask).T`` would; zero such weights first if they may occur.

    Memory: the op writes no masked copy of the weight, with one exception. On CPU, a one-mask
    call of at least 128 rows whose input gradient will be needed may keep W ⊙ M from the forward
    until the backward (the one weight-sized buffer that ``F.linear(x, weight * mask)`` keeps
    too), where that training step was measured faster than masking again in the backward;
    K-candidate calls never keep one.

    All tensors must be on one CPU or CUDA device (a meta tensor is refused: the op computes
    values). Bad inputs raise ``TypeError`` (type, dtype) or ``ValueError`` (shape, device) naming
    the argument, on the native and the reference path alike.
    """
    op = "masked_linear"
    if has_native_kernel(op, _checks.kernel_device(op, "x", x)):
        _checks.native_arguments(op, (("weight", weight), ("mask", mask)), (("bias", bias),),
                                 (("packed", packed),))
        return torch.ops.sparsenas.masked_linear(x, weight, mask, bias, packed)
    _checks.data_device(op, "x", x)
    _checks.masked_linear(x, weight, mask, bias, packed)
    return _reference.masked_linear(x, weight, mask, bias, packed)


if native is not None:

    @torch.library.register_fake("sparsenas::masked_linear")
    def _masked_linear_fake(x, weight, mask, bias=None, packed=False):
        _checks.masked_linear(x, weight, mask, bias, packed)
        return x.new_empty((*x.shape[:-1], weight.shape[-2]))

    @torch.library.register_fake("sparsenas::masked_linear_grad_input")
    def _masked_linear_grad_input_fake(grad, weight, mask, packed=False):
        for arg, tensor in (("weight", weight), ("mask", mask)):
            _checks.same_device("masked_linear_grad_input", arg, tensor, "grad", grad)
        return grad.new_empty((*grad.shape[:-1], weight.shape[-1]))

    @torch.library.register_fake("sparsenas::masked_linear_grad_weight")
    def _masked_linear_grad_weight_fake(grad, x, weight, mask, packed=False, weight_grad=True,
                                        mask_grad=False):
        op = "masked_linear_grad_weight"
        _checks.masked_linear(x, weight, mask, None, packed, op=op)
        _checks.same_device(op, "grad", grad, "x", x)
        return (x.new_empty(weight.shape if weight_grad else (0,)),
                x.new_empty(mask.shape if mask_grad else (0,)))
