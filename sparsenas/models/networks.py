"""Over-parameterised parents for node-mask search: an MLP and a small CNN.

Each hidden block is ``Linear|Conv2d -> BatchNorm -> ReLU -> NodeMask``, so a node (hidden unit or
channel) that its mask switches off contributes nothing downstream. The whole network is one flat
``nn.Sequential`` (``body``) ending in a Linear classifier head, the layout that
:class:`sparsenas.models.CandidateBatch` turns into K candidates trained together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sparsenas.nn import NodeMask, node_mask_modules


class NodeMaskedNet(nn.Module):
    """A parent network: ``body`` is a flat Sequential of the layers in forward order. Every
    registered node-masked parent takes ``widths`` (nodes per masked layer) as its size option."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    @property
    def layer_sizes(self) -> list[int]:
        """Node counts of the NodeMask layers, in forward order (the node space's shape)."""
        return [m.num_nodes for m in node_mask_modules(self).values()]

    @property
    def node_mask_names(self) -> list[str]:
        return list(node_mask_modules(self))

    def set_candidate(self, masks: Sequence[Tensor]) -> None:
        """Sets one node mask per NodeMask layer (bool [n_l] each, or [K, n_l])."""
        modules = list(node_mask_modules(self).values())
        if len(masks) != len(modules):
            raise ValueError(f"set_candidate(): argument 'masks' must hold {len(modules)} layer "
                             f"masks, got {len(masks)}")
        for module, mask in zip(modules, masks):
            module.set_mask(mask)


class MLP(NodeMaskedNet):
    """Flatten -> [Linear -> BatchNorm1d -> ReLU -> NodeMask] per hidden width -> Linear head."""

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 widths: Sequence[int] = (256, 256)) -> None:
        if not widths:
            raise ValueError("MLP(): argument 'widths' must name at least one hidden width")
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(torch.tensor(input_shape).prod())
        for units in widths:
            layers += [nn.Linear(width, units), nn.BatchNorm1d(units), nn.ReLU(),
                       NodeMask(units, dim=-1)]
            width = units
        layers.append(nn.Linear(width, num_classes))
        super().__init__(nn.Sequential(*layers))


class CNN(NodeMaskedNet):
    """[Conv3x3 -> BatchNorm2d -> ReLU -> NodeMask (-> MaxPool2d while the map is >= 4 wide)] per
    channel width -> global average pool -> Linear head."""

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 widths: Sequence[int] = (32, 64)) -> None:
        if not widths:
            raise ValueError("CNN(): argument 'widths' must name at least one channel width")
        in_channels, height = int(input_shape[0]), int(min(input_shape[1:]))
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width),
                       nn.ReLU(), NodeMask(width, dim=1)]
            if height >= 4:
                layers.append(nn.MaxPool2d(2))
                height //= 2
            in_channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes)]
        super().__init__(nn.Sequential(*layers))
