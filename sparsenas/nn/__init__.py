"""Modules: masked layers and node masks."""

from sparsenas.nn.node_mask import NodeMask, get_node_masks, node_mask_modules, set_node_masks

__all__ = ["NodeMask", "get_node_masks", "node_mask_modules", "set_node_masks"]
