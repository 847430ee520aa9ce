"""Batched, seeded mask sampling (SPEC §2.3)."""

from sparsenas.sampling.node_masks import kept_nodes, sample_node_masks

__all__ = ["kept_nodes", "sample_node_masks"]
