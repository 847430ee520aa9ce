"""Node masks: the representation of structured (unit / channel) sparsity shared by the search
spaces, the samplers, compaction and the NTK engine.

A node mask of a layer is a bool tensor [n] over its output units (Linear) or channels (Conv2d),
or [K, n] for K candidates evaluated together. A model carries it in a :class:`NodeMask` module
placed where the unit's output leaves its block (after Linear/Conv2d, BatchNorm and activation),
so a masked node contributes nothing downstream and compaction can remove it exactly. A network's
node masks are a ``dict`` from the ``NodeMask`` modules' names to their masks, in forward order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NodeMask(nn.Module):
    """Multiplies the features of dimension ``dim`` by a bool mask (all ones by default).

    Shapes:
        mask [n]: x [..., n] (``dim=-1``, after Linear) or x [N, n, H, W] (``dim=1``, after Conv2d).
        mask [K, n]: x carries K candidates in its leading dimension, x [K, ..., n] or
        [K, N, n, H, W]; candidate k is multiplied by mask[k].
    """

    def __init__(self, num_nodes: int, dim: int = -1) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.dim = dim
        self.register_buffer("mask", torch.ones(num_nodes, dtype=torch.bool))

    def set_mask(self, mask: Tensor) -> None:
        if mask.dtype != torch.bool or mask.shape[-1] != self.num_nodes or mask.dim() > 2:
            raise ValueError(
                f"NodeMask.set_mask(): argument 'mask' must be bool [{self.num_nodes}] or "
                f"[K, {self.num_nodes}], got {tuple(mask.shape)} {mask.dtype}"
            )
        self.mask = mask.to(self.mask.device)

    def forward(self, x: Tensor) -> Tensor:
        mask = self.mask.to(x.dtype)
        if mask.dim() == 1:
            shape = [1] * x.dim()
            shape[self.dim] = self.num_nodes
            return x * mask.view(shape)
        # [K, n]: the candidate dimension leads, the feature dimension is shifted by one.
        feature_dim = self.dim % (x.dim() - 1) + 1 if self.dim >= 0 else self.dim
        shape = [1] * x.dim()
        shape[0] = mask.shape[0]
        shape[feature_dim] = self.num_nodes
        return x * mask.view(shape)

    def extra_repr(self) -> str:
        return f"num_nodes={self.num_nodes}, dim={self.dim}"


def node_mask_modules(model: nn.Module) -> dict[str, NodeMask]:
    """The model's NodeMask modules by name, in registration (forward) order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, NodeMask)}


def get_node_masks(model: nn.Module) -> dict[str, Tensor]:
    """The model's current node masks by NodeMask module name."""
    return {name: m.mask for name, m in node_mask_modules(model).items()}


def set_node_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Sets the given NodeMask modules' masks; unknown names raise a KeyError naming them."""
    modules = node_mask_modules(model)
    unknown = sorted(set(masks) - set(modules))
    if unknown:
        raise KeyError(f"set_node_masks(): no NodeMask module named {unknown}; "
                       f"the model has {list(modules)}")
    for name, mask in masks.items():
        modules[name].set_mask(mask)
