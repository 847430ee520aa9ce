"""Per-layer choice between dense-masked, compacted and sparse execution.

The choice rests on crossover points measured on this kind of machine and stored as data in
``sparsenas/sparse/crossovers.json``; ``python -m benchmarks.sparse --calibrate`` re-measures them
(run it on the machine that will execute the models). The rules:

- node (structured) sparsity: ``"compacted"`` once the node sparsity reaches the measured
  ``structured_min_node_sparsity`` (a compacted layer does strictly less work, so this is ~0),
  else ``"dense_masked"``;
- unstructured sparsity: ``"sparse"`` (CSR :func:`~sparsenas.sparse.ops.sparse_linear`) when the
  layer has at least ``unstructured_min_weights`` weights and its sparsity reaches the
  ``min_sparsity`` measured for the largest calibrated batch size not above the batch (the
  smallest one for smaller batches), else ``"dense_masked"``;
- N:M sparsity: ``"sparse"`` (:func:`~sparsenas.sparse.ops.nm_linear`) where the calibration found
  the N:M kernel faster than dense at that batch size, else ``"dense_masked"``.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from sparsenas.ops._checks import data_device, describe, integer, tensor

CROSSOVERS_PATH = Path(__file__).resolve().parent / "crossovers.json"

Execution = Literal["dense_masked", "compacted", "sparse"]
Structure = Literal["node", "unstructured", "nm"]


@dataclass(frozen=True)
class Crossovers:
    """Measured crossover points (see the module docstring)."""

    unstructured: tuple[tuple[int, float], ...]  # (batch, min sparsity where sparse wins)
    unstructured_min_weights: int
    nm: tuple[tuple[int, bool], ...]  # (batch, N:M kernel faster than dense)
    structured_min_node_sparsity: float

    @classmethod
    def from_json(cls, data: dict) -> Crossovers:
        return cls(
            unstructured=tuple(sorted((int(e["batch"]), float(e["min_sparsity"]))
                                      for e in data["unstructured"])),
            unstructured_min_weights=int(data["unstructured_min_weights"]),
            nm=tuple(sorted((int(e["batch"]), bool(e["faster"])) for e in data["nm"])),
            structured_min_node_sparsity=float(data["structured_min_node_sparsity"]),
        )


@lru_cache(maxsize=None)
def load_crossovers(path: Path = CROSSOVERS_PATH) -> Crossovers:
    """The stored crossover points (cached per path)."""
    return Crossovers.from_json(json.loads(Path(path).read_text()))


def _at_batch(table: tuple[tuple[int, object], ...], batch: int) -> object:
    """The entry of the largest calibrated batch <= ``batch`` (the smallest one below it)."""
    chosen = table[0][1]
    for calibrated_batch, value in table:
        if calibrated_batch <= batch:
            chosen = value
    return chosen


def select_execution(sparsity: float, structure: Structure, batch: int, in_features: int,
                     out_features: int, crossovers: Crossovers | None = None) -> Execution:
    """The execution for one linear layer [out_features, in_features] whose mask has the given
    sparsity and structure, run on ``batch`` rows at a time."""
    op = "select_execution"
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"{op}(): argument 'sparsity' must be a real number, got "
                        f"{type(sparsity).__name__}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"select_execution(): argument 'sparsity' must be in [0, 1), got "
                         f"{sparsity}")
    batch = integer(op, "batch", batch)
    if batch < 1:
        raise ValueError(f"select_execution(): argument 'batch' must be >= 1, got {batch}")
    in_features = integer(op, "in_features", in_features)
    out_features = integer(op, "out_features", out_features)
    if in_features < 1 or out_features < 1:
        raise ValueError(f"select_execution(): arguments 'in_features' and 'out_features' must be "
                         f">= 1, got {in_features} and {out_features}")
    table = crossovers if crossovers is not None else load_crossovers()
    if structure == "node":
        return "compacted" if sparsity >= table.structured_min_node_sparsity else "dense_masked"
    if structure == "unstructured":
        large_enough = in_features * out_features >= table.unstructured_min_weights
        return ("sparse" if large_enough and sparsity >= _at_batch(table.unstructured, batch)
                else "dense_masked")
    if structure == "nm":
        return "sparse" if _at_batch(table.nm, batch) else "dense_masked"
    raise ValueError(f"select_execution(): argument 'structure' must be 'node', 'unstructured' "
                     f"or 'nm', got {structure!r}")


def _check_mask(op: str, mask: Tensor) -> None:
    tensor(op, "mask", mask)
    data_device(op, "mask", mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"{op}(): argument 'mask' must be bool, got {describe(mask)}")
    if mask.dim() != 2:
        raise ValueError(f"{op}(): argument 'mask' must be [out, in], got {describe(mask)}")


def mask_structure(mask: Tensor) -> Structure:
    """'node' when every output row of the [out, in] mask is kept or removed whole (node
    sparsity), else 'unstructured'."""
    _check_mask("mask_structure", mask)
    rows_whole = mask.all(1) | ~mask.any(1)
    return "node" if bool(rows_whole.all()) else "unstructured"


def select_for_mask(mask: Tensor, batch: int, crossovers: Crossovers | None = None) -> Execution:
    """:func:`select_execution` for a bool weight mask [out, in], reading its sparsity and
    structure from the mask."""
    _check_mask("select_for_mask", mask)
    structure = mask_structure(mask)
    if structure == "node":
        sparsity = 1.0 - float(mask.any(1).float().mean())
    else:
        sparsity = 1.0 - float(mask.float().mean())
    # An all-False mask (sparsity 1) is the sparsest case the selector knows: just below 1.
    return select_execution(min(sparsity, 1.0 - 1e-9), structure, batch, mask.shape[1],
                            mask.shape[0], crossovers)
