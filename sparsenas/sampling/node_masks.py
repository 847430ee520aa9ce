"""Node masks for whole networks, B candidates at once, reproducible from (seed, candidate)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


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
) -> list[Tensor]:
    """Uniform node masks for candidates ``first_candidate .. first_candidate + B - 1``.

    Every layer l of every candidate keeps exactly ``kept_nodes(n_l, s_l)`` nodes, chosen
    uniformly. Candidate i's masks depend only on (seed, i), so any split of the candidates into
    batches gives the same masks.

    Returns one bool tensor [B, n_l] per layer (B = ``num_candidates``).
    """
    sparsities = ([float(sparsity)] * len(layer_sizes) if isinstance(sparsity, (int, float))
                  else [float(s) for s in sparsity])
    if len(sparsities) != len(layer_sizes):
        raise ValueError(
            f"sample_node_masks(): argument 'sparsity' must have one entry per layer "
            f"({len(layer_sizes)}), got {len(sparsities)}")
    masks = []
    for layer, (n, s) in enumerate(zip(layer_sizes, sparsities)):
        k = kept_nodes(n, s)
        rows = torch.zeros(num_candidates, n, dtype=torch.bool)
        for row in range(num_candidates):
            generator = torch.Generator().manual_seed(
                hash((seed, first_candidate + row, layer)) & 0x7FFF_FFFF_FFFF_FFFF)
            rows[row, torch.randperm(n, generator=generator)[:k]] = True
        masks.append(rows.to(device))
    return masks
