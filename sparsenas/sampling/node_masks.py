"""Node masks for whole networks, B candidates at once, reproducible from (seed, candidate)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from sparsenas.ops import _checks
from sparsenas.sampling.masks import uniform_k_masks


def kept_nodes(num_nodes: int, sparsity: float) -> int:
    """Nodes a layer of ``num_nodes`` keeps at node sparsity ``sparsity``: round((1 - s) n), at
    least one so that no layer is cut off entirely."""
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, numbers.Integral):
        raise TypeError(f"kept_nodes(): argument 'num_nodes' must be an int, got "
                        f"{type(num_nodes).__name__}")
    if num_nodes < 1:
        raise ValueError(f"kept_nodes(): argument 'num_nodes' must be >= 1, got {num_nodes}")
    sparsity = _sparsity_value("kept_nodes", sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"kept_nodes(): argument 'sparsity' must be in [0, 1), got {sparsity}")
    return max(1, round((1.0 - sparsity) * num_nodes))


def _sparsity_value(op: str, value: object) -> float:
    """A real number (a 0-d tensor counts as one) as a float."""
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_complex():
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}(): argument 'sparsity' must hold real numbers, got "
                        f"{type(value).__name__}")
    return float(value)


def sample_node_masks(
    layer_sizes: Sequence[int],
    sparsity: float | Sequence[float],
    num_candidates: int,
    seed: int,
    first_candidate: int = 0,
    device: torch.device | str = "cpu",
    *,
    packed: bool = False,
) -> list[Tensor]:
    """Uniform node masks for candidates ``first_candidate .. first_candidate + B - 1``.

    Every layer l of every candidate keeps exactly ``kept_nodes(n_l, s_l)`` nodes, chosen
    uniformly; ``sparsity`` is one value for all layers or one per layer. Candidate i's mask of
    layer l depends only on (seed, i, l) (layer l is Philox stream l of
    :func:`sparsenas.sampling.uniform_k_masks`), so any split of the candidates into batches, and
    CPU or CUDA, give the same masks.

    Returns one tensor per layer: bool [B, n_l] (B = ``num_candidates``), or uint8
    [B, ceil(n_l / 8)] with ``packed``.
    """
    op = "sample_node_masks"
    if isinstance(layer_sizes, (str, bytes, Tensor)) or not isinstance(layer_sizes, Sequence):
        raise TypeError(f"{op}(): argument 'layer_sizes' must be a sequence of ints, got "
                        f"{type(layer_sizes).__name__}")
    for n in layer_sizes:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"{op}(): argument 'layer_sizes' must hold positive ints, got {n!r}")
    scalar = (isinstance(sparsity, numbers.Real) or
              (isinstance(sparsity, Tensor) and sparsity.dim() == 0))
    if scalar:
        sparsities = [_sparsity_value(op, sparsity)] * len(layer_sizes)
    elif isinstance(sparsity, (Sequence, Tensor)) and not isinstance(sparsity, (str, bytes)):
        sparsities = [_sparsity_value(op, s) for s in sparsity]
    else:
        raise TypeError(f"{op}(): argument 'sparsity' must be a number or one number per layer, "
                        f"got {type(sparsity).__name__}")
    if len(sparsities) != len(layer_sizes):
        raise ValueError(f"{op}(): argument 'sparsity' must have one entry per layer "
                         f"({len(layer_sizes)}), got {len(sparsities)}")
    for s in sparsities:
        if not 0.0 <= s < 1.0:
            raise ValueError(f"{op}(): argument 'sparsity' must be in [0, 1), got {s}")
    device = _checks.device_argument(op, device)
    return [
        uniform_k_masks(num_candidates, int(n), kept_nodes(n, s), seed,
                        first_candidate=first_candidate, stream=layer, packed=packed,
                        device=device)
        for layer, (n, s) in enumerate(zip(layer_sizes, sparsities))
    ]
