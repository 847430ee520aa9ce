"""Batched, seeded mask sampling."""

from sparsenas.sampling.masks import gumbel_topk_masks, philox4x32_10, topk_masks, uniform_k_masks
from sparsenas.sampling.node_masks import kept_nodes, sample_node_masks

__all__ = [
    "gumbel_topk_masks",
    "kept_nodes",
    "philox4x32_10",
    "sample_node_masks",
    "topk_masks",
    "uniform_k_masks",
]
