"""Compressed weight formats for unstructured (CSR) and N:M sparsity, and modules built on them.

Why CSR and not blocked (BSR): a random unstructured mask at 95% sparsity leaves most small blocks
non-empty (a 4x4 block is empty with probability 0.95^16 = 44%), so BSR stores and multiplies
~11x more values than CSR, and torch's BSR rows in ``benchmarks/results/sparse_cpu_*.md`` are
slower than CSR. Indices are int32: half the index traffic of int64.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparsenas.ops import _checks
from sparsenas.sparse import _reference
from sparsenas.sparse.ops import nm_linear, nm_mask, sparse_linear


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """bool mask of ``weight``'s shape keeping its round((1 - sparsity) * numel) largest |w|
    (unstructured; ties go to the lower flat index)."""
    _checks.tensor("magnitude_mask", "weight", weight)
    _checks.data_device("magnitude_mask", "weight", weight)
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"magnitude_mask(): argument 'sparsity' must be a real number, got "
                        f"{type(sparsity).__name__}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"magnitude_mask(): argument 'sparsity' must be in [0, 1), got {sparsity}")
    keep = round((1.0 - sparsity) * weight.numel())
    order = torch.sort(weight.detach().abs().flatten(), descending=True, stable=True).indices
    mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    mask[order[:keep]] = True
    return mask.view(weight.shape)


def _check_mask(op: str, weight: Tensor, mask: Tensor) -> None:
    _checks.tensor(op, "mask", mask)
    _checks.same_device(op, "mask", mask, "weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"{op}(): argument 'weight' must be 2-D [out, in], got "
                         f"{tuple(weight.shape)}")
    if mask.shape != weight.shape:
        raise ValueError(f"{op}(): argument 'mask' must have the weight's shape "
                         f"{tuple(weight.shape)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{op}(): argument 'mask' must be bool, got {mask.dtype}")


@dataclass
class CSRWeight:
    """W [out, in] in CSR form: int32 row_ptr [out + 1], int32 col_idx [nnz], values [nnz]."""

    row_ptr: Tensor
    col_idx: Tensor
    values: Tensor
    in_features: int

    @classmethod
    def from_dense(cls, weight: Tensor, mask: Tensor | None = None) -> CSRWeight:
        """Stores the weights where ``mask`` is True (by default: the non-zero weights)."""
        _checks.tensor("CSRWeight.from_dense", "weight", weight)
        _checks.data_device("CSRWeight.from_dense", "weight", weight)
        mask = weight.ne(0) if mask is None else mask
        _check_mask("CSRWeight.from_dense", weight, mask)
        rows, cols = mask.nonzero(as_tuple=True)
        counts = torch.bincount(rows, minlength=weight.shape[0])
        row_ptr = torch.zeros(weight.shape[0] + 1, dtype=torch.int32, device=weight.device)
        row_ptr[1:] = counts.cumsum(0)
        return cls(row_ptr, cols.to(torch.int32), weight.detach()[rows, cols].clone(),
                   weight.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row_ptr.numel() - 1, self.in_features)

    @property
    def density(self) -> float:
        return self.values.numel() / max(1, self.shape[0] * self.shape[1])

    def to_dense(self) -> Tensor:
        return _reference.csr_to_dense(self.row_ptr, self.col_idx, self.values, self.in_features)

    def linear(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        return sparse_linear(x, self.row_ptr, self.col_idx, self.values, bias)


def semi_structured_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's 2:4 semi-structured sparse matmul can run here: a CUDA device of compute
    capability 8.0 or newer (sparse tensor cores), float16 / bfloat16, and a torch that has it."""
    return (device.type == "cuda" and torch.cuda.is_available()
            and torch.cuda.get_device_capability(device) >= (8, 0)
            and dtype in (torch.float16, torch.bfloat16)
            and hasattr(torch.sparse, "to_sparse_semi_structured"))


@dataclass
class NMWeight:
    """W [out, in] in N:M form: values [out, in / m * n] and uint8 indices (the position of each
    value inside its group of m consecutive inputs), groups in order."""

    values: Tensor
    indices: Tensor
    n: int
    m: int
    in_features: int

    @classmethod
    def from_dense(cls, weight: Tensor, n: int, m: int, mask: Tensor | None = None) -> NMWeight:
        """Stores the weights of an N:M mask (by default :func:`nm_mask` of the magnitudes)."""
        _checks.tensor("NMWeight.from_dense", "weight", weight)
        _checks.data_device("NMWeight.from_dense", "weight", weight)
        mask = nm_mask(weight.detach(), n, m) if mask is None else mask
        _check_mask("NMWeight.from_dense", weight, mask)
        n, m = _checks.nm_sizes("NMWeight.from_dense", weight, n, m)
        if m > 256:
            raise ValueError(f"NMWeight.from_dense(): argument 'm' must be in [1, 256] (uint8 "
                             f"indices), got {m}")
        groups = mask.unflatten(-1, (-1, m))
        if not bool((groups.sum(-1) == n).all()):
            raise ValueError(f"NMWeight.from_dense(): argument 'mask' must keep exactly n = {n} "
                             f"of every m = {m} consecutive weights")
        # Kept positions first, in increasing order inside each group.
        positions = torch.sort(groups.to(torch.uint8), dim=-1, descending=True,
                               stable=True).indices[..., :n]
        values = weight.detach().unflatten(-1, (-1, m)).gather(-1, positions)
        return cls(values.flatten(-2).contiguous(), positions.flatten(-2).to(torch.uint8),
                   n, m, weight.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.values.shape[0], self.in_features)

    def to_dense(self) -> Tensor:
        return _reference.nm_to_dense(self.values, self.indices, self.m, self.in_features)

    def linear(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        return nm_linear(x, self.values, self.indices, self.m, bias)

    def to_semi_structured(self) -> Tensor:
        """The weight as torch's semi-structured 2:4 sparse tensor (for ``F.linear`` on sparse
        tensor cores). Raises ``RuntimeError`` where that path is unavailable (see
        :func:`semi_structured_supported`)."""
        if (self.n, self.m) != (2, 4):
            raise RuntimeError(f"NMWeight.to_semi_structured(): needs a 2:4 weight, got "
                               f"{self.n}:{self.m}")
        if not semi_structured_supported(self.values.device, self.values.dtype):
            raise RuntimeError(
                "NMWeight.to_semi_structured(): torch's semi-structured sparsity needs a CUDA "
                f"GPU with compute capability >= 8.0 and float16/bfloat16, got "
                f"{self.values.device} {self.values.dtype}")
        return torch.sparse.to_sparse_semi_structured(self.to_dense())


class SparseLinear(nn.Module):
    """A Linear layer whose weight is stored and multiplied in CSR form (unstructured sparsity).

    Trainable: ``values`` and ``bias`` are parameters; the sparsity pattern is fixed."""

    def __init__(self, weight: CSRWeight, bias: Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.in_features, weight.shape[0]
        self.register_buffer("row_ptr", weight.row_ptr)
        self.register_buffer("col_idx", weight.col_idx)
        self.values = nn.Parameter(weight.values)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor | None = None) -> SparseLinear:
        return cls(CSRWeight.from_dense(linear.weight, mask), linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return sparse_linear(x, self.row_ptr, self.col_idx, self.values, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.values.numel()}")


class NMLinear(nn.Module):
    """A Linear layer whose weight is stored and multiplied in N:M form."""

    def __init__(self, weight: NMWeight, bias: Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.in_features, weight.shape[0]
        self.n, self.m = weight.n, weight.m
        self.register_buffer("indices", weight.indices)
        self.values = nn.Parameter(weight.values)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, n: int, m: int,
                    mask: Tensor | None = None) -> NMLinear:
        return cls(NMWeight.from_dense(linear.weight, n, m, mask), linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return nm_linear(x, self.values, self.indices, self.m, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"n={self.n}, m={self.m}")
