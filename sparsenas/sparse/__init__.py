"""Sparse execution: compaction of node-masked networks, compressed unstructured (CSR)
and N:M sparse linear layers, and the selector that picks an execution per layer from measured
crossover points (re-measured by ``python -m benchmarks.sparse --calibrate``), and in-place
shrinking of parameters with their optimiser state while training."""

from sparsenas.sparse.compaction import compact, expand
from sparsenas.sparse.formats import (CSRWeight, NMLinear, NMWeight, SparseLinear, magnitude_mask,
                                      semi_structured_supported)
from sparsenas.sparse.ops import nm_linear, nm_mask, sparse_linear
from sparsenas.sparse.selector import select_execution, select_for_mask
from sparsenas.sparse.shrink import slice_parameter_

__all__ = ["CSRWeight", "NMLinear", "NMWeight", "SparseLinear", "compact", "expand",
           "magnitude_mask", "nm_linear", "nm_mask", "select_execution", "select_for_mask",
           "semi_structured_supported", "slice_parameter_", "sparse_linear"]
