"""sparsenas operators: the typed public API over ``torch.ops.sparsenas.*`` and its references."""

from sparsenas.ops._reference import pack_mask, unpack_mask
from sparsenas.ops.masked import masked_linear

__all__ = ["masked_linear", "pack_mask", "unpack_mask"]
