"""sparsenas: sparse neural architecture search on fast masked, sparse and NTK torch operators."""

from sparsenas._extension import info
from sparsenas import ops

__version__ = "0.1.0"

__all__ = ["info", "ops", "__version__"]
