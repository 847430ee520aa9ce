"""Node masks for whole networks, B candidates at once, reproducible from (seed, candidate)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sparsenas.sampling.masks import uniform_k_masks


def kept_nodes(num_nodes: int, sparsity: float) -> int:
    """Nodes a layer of ``num_nodes`` keeps at node sparsity ``sparsity``: round((1 - s) n), at
    least one so that no layer is cut off entirely."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"kept_nodes(): argument 'sparsity' must be in [0, 1), got {sparsity}")
    return max(1, round((1.0 - sparsity) * num_nodes))


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
    sparsities = ([float(sparsity)] * len(layer_sizes) if isinstance(sparsity, (int, float))
                  else [float(s) for s in sparsity])
    if len(sparsities) != len(layer_sizes):
        raise ValueError(
            f"sample_node_masks(): argument 'sparsity' must have one entry per layer "
            f"({len(layer_sizes)}), got {len(sparsities)}")
    for n in layer_sizes:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sample_node_masks(): argument 'layer_sizes' must hold positive "
                             f"ints, got {n!r}")
    return [
        uniform_k_masks(num_candidates, n, kept_nodes(n, s), seed,
                        first_candidate=first_candidate, stream=layer, packed=packed,
                        device=device)
        for layer, (n, s) in enumerate(zip(layer_sizes, sparsities))
    ]
