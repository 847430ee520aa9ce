"""Baselines at the same budget as the search: uniform levels, OWL (outlier-weighted layer-wise
sparsity), the best of N random configurations, and for depth, dropping the blocks whose output
is most similar to their input (cosine similarity, as in ShortGPT-style block importance)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsenas.methods.evopress.database import input_hessians, weight_matrix
from sparsenas.methods.evopress.search import Evaluate
from sparsenas.spaces.levels import DepthSpace, Levels, LevelSpace, SparsityLevelSpace


def uniform(space: LevelSpace) -> Levels:
    """Every unit at its start level (the same sparsity / bits everywhere; for depth the start
    drops the last blocks)."""
    return space.start


def outlier_ratios(model: nn.Module, layer_names: Sequence[str], calibration: Iterable[Tensor],
                   threshold: float = 5.0) -> list[float]:
    """Per layer, the share of its Wanda scores |W_ij| · ‖X_j‖ above ``threshold`` times the
    layer's mean score (OWL's layer outlier ratio), from the dense model on ``calibration``."""
    if threshold <= 0:
        raise ValueError(f"outlier_ratios(): argument 'threshold' must be positive, got "
                         f"{threshold}")
    layers = {name: model.get_submodule(name) for name in layer_names}
    hessians = input_hessians(model, layers, calibration)
    ratios = []
    for name, layer in layers.items():
        score = weight_matrix(layer).abs().double() * torch.diagonal(hessians[name]).sqrt()
        ratios.append(float((score > threshold * score.mean()).double().mean()))
    return ratios


def snap_to_levels(space: SparsityLevelSpace, kept: Sequence[float]) -> Levels:
    """The level configuration at the space's exact budget nearest to per-layer kept counts
    ``kept`` (real numbers): each layer's ideal level (base - kept) / Δ is clipped to the range,
    rounded, and the total is brought back to zero (the budget) by moving the layers whose
    rounding error grows least."""
    ideal = [min(max((base - k) / space.delta, -space.num_levels), space.num_levels)
             for base, k in zip(space.base_kept, kept)]
    levels = [round(v) for v in ideal]
    while sum(levels) != 0:
        step = -1 if sum(levels) > 0 else 1
        movable = [u for u, v in enumerate(levels) if -space.num_levels <= v + step
                   <= space.num_levels]
        best = min(movable, key=lambda u: (abs(levels[u] + step - ideal[u])
                                           - abs(levels[u] - ideal[u]), u))
        levels[best] += step
    return space.check(levels)


def owl(space: SparsityLevelSpace, ratios: Sequence[float], lam: float = 0.08) -> Levels:
    """OWL: layer keep ratios (1 - s) + 2λ (r̂_l - mean r̂), with r̂ the outlier ratios scaled to
    [0, 1] (more outliers, more weights kept), snapped onto the level grid at the exact budget."""
    if len(ratios) != space.num_units:
        raise ValueError(f"owl(): argument 'ratios' must hold {space.num_units} values, got "
                         f"{len(ratios)}")
    if not 0 <= lam < 1:
        raise ValueError(f"owl(): argument 'lam' must be in [0, 1), got {lam}")
    low, high = min(ratios), max(ratios)
    scaled = [(r - low) / (high - low) if high > low else 0.0 for r in ratios]
    mean = sum(scaled) / len(scaled)
    keep = [(1 - space.sparsity) + 2 * lam * (r - mean) for r in scaled]
    return snap_to_levels(space, [k * n for k, n in zip(keep, space.numels)])


def best_of_random(space: LevelSpace, evaluate: Evaluate, examples: Tensor, count: int,
                   seed: int) -> tuple[Levels, float]:
    """The best (lowest fitness) of ``count`` random configurations at the budget on
    ``examples``, with its fitness."""
    if count < 1:
        raise ValueError(f"best_of_random(): argument 'count' must be >= 1, got {count}")
    candidates = space.sample(count, seed)
    fitness = evaluate(candidates, examples)
    best = min(range(len(candidates)), key=lambda i: (fitness[i], i))
    return candidates[best], float(fitness[best])


@torch.no_grad()
def block_similarities(model: nn.Module, block_names: Sequence[str],
                       calibration: Iterable[Tensor]) -> list[float]:
    """Mean cosine similarity of each block's input and output on ``calibration`` (per token
    for [N, T, d] hidden states, per example otherwise). Near 1: the block changes little."""
    sums = dict.fromkeys(block_names, 0.0)
    counts = dict.fromkeys(block_names, 0)

    def hook(name):
        def record(module, inputs, output):
            x, y = inputs[0], output
            if x.dim() == 3:
                x, y = x.flatten(0, 1), y.flatten(0, 1)
            else:
                x, y = x.flatten(1), y.flatten(1)
            similarity = F.cosine_similarity(x.double(), y.double(), dim=-1)
            sums[name] += float(similarity.sum())
            counts[name] += similarity.numel()
        return record

    handles = [model.get_submodule(name).register_forward_hook(hook(name))
               for name in block_names]
    was_training = model.training
    try:
        model.eval()
        for batch in calibration:
            model(batch)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if any(count == 0 for count in counts.values()):
        raise ValueError("block_similarities(): argument 'calibration' gave no input to some "
                         "blocks")
    return [sums[name] / counts[name] for name in block_names]


def least_important_blocks(space: DepthSpace, similarities: Sequence[float]) -> Levels:
    """Drops the ``space.num_dropped`` blocks whose output is most similar to their input."""
    if len(similarities) != space.num_units or any(math.isnan(s) for s in similarities):
        raise ValueError(f"least_important_blocks(): argument 'similarities' must hold "
                         f"{space.num_units} numbers")
    order = sorted(range(space.num_units), key=lambda u: (-similarities[u], u))
    return space.from_dropped(space.unit_names[u] for u in order[:space.num_dropped])
