"""Masked linear op: public API, fake kernels and autograd."""

from __future__ import annotations

import math

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


def _differentiable_backward(
    grad: Tensor, x: Tensor, weight: Tensor, mask: Tensor, packed: bool,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The gradients of x, weight and mask from differentiable torch ops (for double backward)."""
    effective_mask = _reference.dense_mask(mask, weight.shape[-1], weight.dtype, packed)
    masked_weight = weight * effective_mask
    if mask.dim() == 3:
        rows = x.reshape(x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1])
        grad_rows = grad.reshape(grad.shape[0], math.prod(grad.shape[1:-1]), grad.shape[-1])
    else:
        rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
        grad_rows = grad.reshape(math.prod(grad.shape[:-1]), grad.shape[-1])
    grad_x = (grad_rows @ masked_weight).reshape(x.shape) if needs[0] else None
    grad_effective = grad_rows.transpose(-1, -2) @ rows
    grad_weight = None
    if needs[1]:
        grad_weight = grad_effective * effective_mask
        if grad_weight.dim() > weight.dim():
            grad_weight = grad_weight.sum(0)
    grad_mask = grad_effective * weight if needs[2] else None
    return grad_x, grad_weight, grad_mask


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

    def _masked_linear_setup(ctx, inputs, output):
        x, weight, mask, bias, packed = inputs
        ctx.save_for_backward(x, weight, mask)
        ctx.packed = packed
        ctx.bias_per_candidate = bias is not None and bias.dim() == 2

    def _masked_linear_backward(ctx, grad):
        x, weight, mask = ctx.saved_tensors
        # needs_input_grad has no entry for an absent bias.
        needs_x, needs_weight, needs_mask, needs_bias = (*ctx.needs_input_grad, False, False)[:4]
        if torch.is_grad_enabled():
            # create_graph=True: the native gradient ops have no derivatives of their own.
            grad_x, grad_weight, grad_mask = _differentiable_backward(
                grad, x, weight, mask, ctx.packed, (needs_x, needs_weight, needs_mask))
        else:
            grad_x = grad_weight = grad_mask = None
            if needs_x:
                grad_x = torch.ops.sparsenas.masked_linear_grad_input(grad, weight, mask, ctx.packed)
            if needs_weight or needs_mask:
                weight_part, mask_part = torch.ops.sparsenas.masked_linear_grad_weight(
                    grad, x, weight, mask, ctx.packed, needs_weight, needs_mask)
                grad_weight = weight_part if needs_weight else None
                grad_mask = mask_part if needs_mask else None
        grad_bias = None
        if needs_bias:
            if ctx.bias_per_candidate:
                grad_bias = grad.flatten(1, -2).sum(1) if grad.dim() > 2 else grad
            else:
                grad_bias = grad.reshape(math.prod(grad.shape[:-1]), grad.shape[-1]).sum(0)
        return grad_x, grad_weight, grad_mask, grad_bias, None

    torch.library.register_autograd(
        "sparsenas::masked_linear", _masked_linear_backward, setup_context=_masked_linear_setup
    )
