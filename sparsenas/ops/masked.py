"""Masked linear and conv ops: public API, fake kernels and autograd."""

from __future__ import annotations

import torch
from torch import Tensor

from sparsenas._extension import has_native_kernel, native
from sparsenas.ops import _reference


def masked_linear(
    x: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None = None, *, packed: bool = False
) -> Tensor:
    """y = x (W ⊙ M)ᵀ + b, for one mask or K candidate masks in one call.

    Shapes:
        single mask:   x [..., in], weight [out, in], mask [out, in], bias [out] -> [..., out]
        K candidates:  x [K, ..., in], weight [out, in] or [K, out, in], mask [K, out, in],
                       bias [out] or [K, out] -> [K, ..., out]

    ``mask`` is bool or uint8 (a fixed mask), floating with the weight's dtype (a soft mask that
    receives gradients), or with ``packed=True`` a uint8 bit-packed mask from :func:`pack_mask`
    whose last dimension is ceil(in / 8).
    """
    if has_native_kernel("masked_linear", x.device.type):
        return torch.ops.sparsenas.masked_linear(x, weight, mask, bias, packed)
    return _reference.masked_linear(x, weight, mask, bias, packed)


if native is not None:

    @torch.library.register_fake("sparsenas::masked_linear")
    def _masked_linear_fake(x, weight, mask, bias=None, packed=False):
        return x.new_empty((*x.shape[:-1], weight.shape[-2]))

    def _masked_linear_setup(ctx, inputs, output):
        x, weight, mask, bias, packed = inputs
        ctx.save_for_backward(x, weight, mask)
        ctx.packed = packed
        ctx.bias_shape = None if bias is None else bias.shape

    def _masked_linear_backward(ctx, grad):
        x, weight, mask = ctx.saved_tensors
        effective_mask = _reference.dense_mask(mask, weight.shape[-1], weight.dtype, ctx.packed)
        candidate_form = mask.dim() == 3
        if candidate_form:
            rows = x.reshape(x.shape[0], -1, x.shape[-1])
            grad_rows = grad.reshape(grad.shape[0], -1, grad.shape[-1])
            grad_effective = grad_rows.transpose(1, 2) @ rows
        else:
            rows = x.reshape(-1, x.shape[-1])
            grad_rows = grad.reshape(-1, grad.shape[-1])
            grad_effective = grad_rows.t() @ rows
        grad_x = grad_weight = grad_mask = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = masked_linear(grad, weight.transpose(-1, -2).contiguous(),
                                   effective_mask.transpose(-1, -2).contiguous())
        if ctx.needs_input_grad[1]:
            if candidate_form and weight.dim() == 2:
                grad_weight = (grad_effective * effective_mask).sum(0)
            else:
                grad_weight = grad_effective * effective_mask
        if ctx.needs_input_grad[2]:
            grad_mask = grad_effective * weight
        if ctx.bias_shape is not None and ctx.needs_input_grad[3]:
            if candidate_form and len(ctx.bias_shape) == 2:
                grad_bias = grad_rows.sum(1)
            else:
                grad_bias = grad_rows.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_weight, grad_mask, grad_bias, None

    torch.library.register_autograd(
        "sparsenas::masked_linear", _masked_linear_backward, setup_context=_masked_linear_setup
    )
