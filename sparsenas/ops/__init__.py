"""sparsenas operators: the typed public API over ``torch.ops.sparsenas.*`` and its references."""

from sparsenas.ops.mask_packing import pack_mask, unpack_mask
from sparsenas.ops.masked import masked_linear
from sparsenas.ops.masked_conv import masked_conv2d

__all__ = ["masked_conv2d", "masked_linear", "pack_mask", "unpack_mask"]
