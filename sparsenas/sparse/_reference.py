"""Pure-PyTorch references of the sparse execution ops: the test oracle of the native kernels,
the fallback without the extension, and a benchmark baseline. Clarity over speed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def csr_to_dense(row_ptr: Tensor, col_idx: Tensor, values: Tensor, in_features: int) -> Tensor:
    """CSR (int32 row_ptr [out + 1], col_idx [nnz], values [nnz]) -> dense [out, in];
    differentiable in ``values``."""
    out_features = row_ptr.numel() - 1
    rows = torch.repeat_interleave(
        torch.arange(out_features, device=values.device), row_ptr.long().diff())
    dense = values.new_zeros(out_features, in_features)
    return dense.index_put((rows, col_idx.long()), values, accumulate=True)


def sparse_linear(x: Tensor, row_ptr: Tensor, col_idx: Tensor, values: Tensor,
                  bias: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + b with W in CSR form; x [..., in] -> [..., out]."""
    return F.linear(x, csr_to_dense(row_ptr, col_idx, values, x.shape[-1]), bias)


def nm_to_dense(values: Tensor, indices: Tensor, m: int, in_features: int) -> Tensor:
    """N:M (values, uint8 indices [out, in / m * n]) -> dense [out, in]; differentiable in
    ``values``."""
    groups = in_features // m
    n = values.shape[-1] // groups if groups else 0
    group_start = torch.arange(groups, device=values.device).repeat_interleave(n) * m
    columns = group_start + indices.long()
    return values.new_zeros(values.shape[0], in_features).scatter_add(1, columns, values)


def nm_linear(x: Tensor, values: Tensor, indices: Tensor, m: int,
              bias: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + b with W in N:M form; x [..., in] -> [..., out]."""
    return F.linear(x, nm_to_dense(values, indices, m, x.shape[-1]), bias)


def nm_mask(weight: Tensor, n: int, m: int) -> Tensor:
    """bool [out, in]: the n largest |w| of every m consecutive weights of a row (NaN largest,
    ties to the lower index)."""
    groups = weight.abs().unflatten(-1, (-1, m))
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
    return mask.flatten(-2)
