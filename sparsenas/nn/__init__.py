"""Modules: masked and score-pruned sparse layers, node masks and residual blocks."""

from sparsenas.nn.masked import MaskedConv2d, MaskedLinear, convert_to_dense, convert_to_masked
from sparsenas.nn.node_mask import NodeMask, get_node_masks, node_mask_modules, set_node_masks
from sparsenas.nn.residual import Residual
from sparsenas.nn.scored import (
    SparseConv2d,
    SparseLinear,
    init_scores_from_weights,
    model_phase,
    score_parameters,
    set_keep,
    set_phase,
    sparse_layers,
    topk_mask,
)

__all__ = [
    "MaskedConv2d",
    "MaskedLinear",
    "NodeMask",
    "Residual",
    "SparseConv2d",
    "SparseLinear",
    "convert_to_dense",
    "convert_to_masked",
    "get_node_masks",
    "init_scores_from_weights",
    "model_phase",
    "node_mask_modules",
    "score_parameters",
    "set_keep",
    "set_node_masks",
    "set_phase",
    "sparse_layers",
    "topk_mask",
]
