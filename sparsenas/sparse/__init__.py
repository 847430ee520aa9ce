"""Sparse execution (SPEC §2.2): compaction of node-masked networks, compressed unstructured and
N:M sparse linear layers, and the selector that picks an execution per layer."""

from sparsenas.sparse.compaction import compact, expand

__all__ = ["compact", "expand"]
