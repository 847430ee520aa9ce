"""Masked conv2d: public API (a native kernel replaces the reference where one is built)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair

from sparsenas._extension import has_native_kernel
from sparsenas.ops import _reference


def masked_conv2d(
    x: Tensor,
    weight: Tensor,
    mask: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    packed: bool = False,
) -> Tensor:
    """conv2d(x, W ⊙ M) + b for one mask or K candidate masks in one call.

    Shapes:
        single mask:   x [N, C, H, W], weight [out, C / groups, kh, kw], mask like weight,
                       bias [out] -> [N, out, H', W']
        K candidates:  x [K, N, C, H, W], weight [out, C / groups, kh, kw] or [K, out, ...],
                       mask [K, out, C / groups, kh, kw], bias [out] or [K, out]
                       -> [K, N, out, H', W']

    ``mask`` is bool / uint8 (fixed), floating with the weight's dtype (soft, differentiable), or
    with ``packed=True`` uint8 [(K,) out, ceil(C / groups * kh * kw / 8)] from :func:`pack_mask`
    applied to the mask flattened per output channel.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if has_native_kernel("masked_conv2d", x.device.type):
        return torch.ops.sparsenas.masked_conv2d(
            x, weight, mask, bias, stride, padding, dilation, groups, packed)
    return _reference.masked_conv2d(x, weight, mask, bias, stride, padding, dilation, groups, packed)
