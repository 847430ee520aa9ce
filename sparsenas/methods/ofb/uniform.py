"""The uniform-width baseline of OFB's ablations: every width of the parent scaled by one keep
ratio, the largest whose FLOPs stay within the target."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sparsenas.models.vit import ViTWidths, flops

_BISECTION_STEPS = 60


def _scaled(parent: ViTWidths, ratio: float) -> ViTWidths:
    def keep(width: int) -> int:
        return max(1, round(ratio * width))

    return replace(parent, embed=keep(parent.embed),
                   head_dims=tuple(keep(d) for d in parent.head_dims),
                   mlp_hidden=tuple(keep(m) for m in parent.mlp_hidden))


def uniform_widths(parent: ViTWidths, image_size: Sequence[int],
                   target_flops: float) -> ViTWidths:
    """``parent`` with the embedding, every per-head qkv width and every MLP hidden width kept
    at one ratio r (rounded, at least one channel), r the largest with FLOPs <= target_flops."""
    if target_flops > flops(parent, image_size):
        raise ValueError(f"target_flops {target_flops:.6g} exceeds the parent's "
                         f"{flops(parent, image_size):.6g} FLOPs")
    smallest = flops(_scaled(parent, 0.0), image_size)
    if target_flops < smallest:
        raise ValueError(f"target_flops {target_flops:.6g} is below {smallest:.6g}, the FLOPs "
                         f"of one channel per width")
    low, high = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if flops(_scaled(parent, middle), image_size) <= target_flops:
            low = middle
        else:
            high = middle
    return _scaled(parent, low)
