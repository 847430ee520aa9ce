"""Modules: masked layers and node masks."""

from sparsenas.nn.masked import MaskedConv2d, MaskedLinear, convert_to_dense, convert_to_masked
from sparsenas.nn.node_mask import NodeMask, get_node_masks, node_mask_modules, set_node_masks

__all__ = [
    "MaskedConv2d",
    "MaskedLinear",
    "NodeMask",
    "convert_to_dense",
    "convert_to_masked",
    "get_node_masks",
    "node_mask_modules",
    "set_node_masks",
]
