"""Bit-packed masks: the public, checked form of the packing helpers (1 bit per weight)."""

from __future__ import annotations

from torch import Tensor

from sparsenas.ops import _checks, _reference


def pack_mask(mask: Tensor) -> Tensor:
    """bool or integer 0 / 1 [..., n] -> bit-packed uint8 [..., ceil(n / 8)] (bit j of byte b is
    column 8 b + j; padding bits are zero). Any non-zero integer counts as 1."""
    _checks.pack_mask(mask)
    _checks.data_device("pack_mask", "mask", mask)
    return _reference.pack_mask(mask.bool())


def unpack_mask(bits: Tensor, n: int) -> Tensor:
    """Bit-packed uint8 [..., ceil(n / 8)] -> bool [..., n] (bit j of byte b is column 8 b + j)."""
    n = _checks.unpack_mask(bits, n)
    _checks.data_device("unpack_mask", "bits", bits)
    return _reference.unpack_mask(bits, n)
