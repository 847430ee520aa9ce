"""Pure-PyTorch references of every sparsenas op.

Each is the test oracle of its native kernels, the fallback when the extension (or a kernel for a
device) is absent, and the baseline of its benchmark. They favour clarity over speed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def unpack_mask(bits: Tensor, n: int) -> Tensor:
    """Bit-packed uint8 [..., ceil(n / 8)] -> bool [..., n] (bit j of byte b is column 8 b + j)."""
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    unpacked = (bits.unsqueeze(-1) >> shifts).bitwise_and_(1).bool()
    return unpacked.flatten(-2)[..., :n]


def pack_mask(mask: Tensor) -> Tensor:
    """bool / 0-1 [..., n] -> bit-packed uint8 [..., ceil(n / 8)]."""
    n = mask.shape[-1]
    padded = torch.nn.functional.pad(mask.to(torch.uint8), (0, (-n) % 8))
    weights = torch.tensor([1 << j for j in range(8)], device=mask.device, dtype=torch.uint8)
    return (padded.unflatten(-1, (-1, 8)) * weights).sum(-1, dtype=torch.uint8)


def dense_mask(mask: Tensor, in_features: int, dtype: torch.dtype, packed: bool) -> Tensor:
    """Any accepted mask format as a tensor of ``dtype`` that multiplies the weight."""
    if packed:
        mask = unpack_mask(mask, in_features)
    return mask.to(dtype)


def masked_linear(
    x: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None = None, packed: bool = False
) -> Tensor:
    """y = x (W ⊙ M)ᵀ + b; with M [K, out, in], x [K, ..., in] -> [K, ..., out]."""
    masked_weight = weight * dense_mask(mask, weight.shape[-1], weight.dtype, packed)
    if mask.dim() == 2:
        return torch.nn.functional.linear(x, masked_weight, bias)
    if masked_weight.dim() == 2:
        masked_weight = masked_weight.expand(mask.shape[0], -1, -1)
    rows = x.reshape(x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1])
    out = torch.bmm(rows, masked_weight.transpose(1, 2))
    if bias is not None:
        out = out + (bias.unsqueeze(1) if bias.dim() == 2 else bias)
    return out.reshape(*x.shape[:-1], weight.shape[-2])


def masked_conv2d(
    x: Tensor,
    weight: Tensor,
    mask: Tensor,
    bias: Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    packed: bool = False,
) -> Tensor:
    """conv2d(x, W ⊙ M) + b; with M [K, out, in/groups, kh, kw], x [K, N, C, H, W] -> [K, N, ...].

    A packed mask holds each output channel's in/groups * kh * kw mask bits: [(K,) out, ceil(. / 8)].
    """
    if packed:
        mask = unpack_mask(mask, math.prod(weight.shape[-3:])).unflatten(-1, weight.shape[-3:])
    masked_weight = weight * mask.to(weight.dtype)
    conv = torch.nn.functional.conv2d
    if mask.dim() == 4:
        return conv(x, masked_weight, bias, stride, padding, dilation, groups)
    K, N = x.shape[:2]
    if masked_weight.dim() == 4:
        masked_weight = masked_weight.expand(K, *masked_weight.shape)
    if bias is not None and bias.dim() == 1:
        bias = bias.expand(K, -1)
    # The K candidates as one grouped convolution over K * C channels.
    stacked = x.transpose(0, 1).reshape(N, K * x.shape[2], *x.shape[3:])
    out = conv(stacked, masked_weight.reshape(-1, *masked_weight.shape[2:]),
               None if bias is None else bias.reshape(-1), stride, padding, dilation, K * groups)
    return out.reshape(N, K, weight.shape[-4], *out.shape[2:]).transpose(0, 1)
