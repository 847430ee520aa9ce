"""Choosing a BigNAS child without retraining: each candidate is BN-calibrated and scored on
held-out data; coarse-to-fine search under a cost budget (FLOPs, or a measured latency).

Coarse: every child of the space's uniform-multiplier grid (the same depth level, width level and
kernel in every stage, at every resolution) within the budget is scored; fine: random mutations
around the best child so far, each within the budget, replace it when they score higher.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.utils.benchmark as torch_benchmark
from torch import Tensor

from sparsenas.models.elastic import ChildConfig, ElasticNet
from sparsenas.seeds import derive_seed
from sparsenas.spaces.elastic import ElasticSpace
from sparsenas.train.calibration import calibrate_batchnorm


def calibrated_accuracy(model: ElasticNet, config: ChildConfig,
                        calibration_batches: Sequence[Tensor], x: Tensor, y: Tensor,
                        batch_size: int = 1024) -> float:
    """Accuracy on (x, y) of child ``config`` after BN calibration on ``calibration_batches``;
    leaves ``config`` as the model's active child with its calibrated statistics."""
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"calibrated_accuracy(): arguments 'x' and 'y' must hold the same "
                         f"number (> 0) of examples, got {len(x)} and {len(y)}")
    model.set_child(config)
    calibrate_batchnorm(model, calibration_batches)
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(x[start:start + batch_size])
            correct += int((logits.argmax(-1) == y[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / len(x)


def exported_latency_ms(model: ElasticNet, batch_size: int = 1,
                        min_run_time: float = 0.2) -> Callable[[ChildConfig], float]:
    """A cost function: the CPU time in milliseconds of one eval-mode forward pass of the
    exported child on a batch of ``batch_size`` inputs already at the child's resolution
    (resizing belongs to the data pipeline; on small inputs it would cost more than a small
    child's layers): the fastest of the timed blocks, the one least disturbed by other processes
    on a shared machine (a median moves several-fold with the machine's load)."""
    if batch_size < 1 or min_run_time <= 0:
        raise ValueError("exported_latency_ms(): 'batch_size' must be >= 1 and 'min_run_time' > 0")

    def latency(config: ChildConfig) -> float:
        child = model.export(config).cpu().eval()
        example = torch.randn(batch_size, model.input_shape[0], config.resolution,
                              config.resolution, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            child(example)  # first-call allocations are not the child's latency
            timer = torch_benchmark.Timer(stmt="child(x)", globals={"child": child, "x": example},
                                          num_threads=torch.get_num_threads())
            return 1e3 * min(timer.blocked_autorange(min_run_time=min_run_time).times)

    return latency


@dataclass
class Selection:
    """The chosen child, its score and cost, and every candidate tried (plain-data rows)."""

    config: ChildConfig
    score: float
    cost: float
    trials: list[dict] = field(default_factory=list)


def coarse_to_fine(space: ElasticSpace, score: Callable[[ChildConfig], float],
                   cost: Callable[[ChildConfig], float], budget: float, *,
                   num_mutations: int = 20, seed: int = 0) -> Selection:
    """The best-scoring child found within ``cost(child) <= budget``: the uniform grid first,
    then ``num_mutations`` mutations (seeded from ``seed``) around the best so far. A budget that
    no grid child meets (the smallest child is on the grid) raises a ValueError."""
    if num_mutations < 0:
        raise ValueError(f"coarse_to_fine(): argument 'num_mutations' must be >= 0, got "
                         f"{num_mutations}")
    trials: list[dict] = []
    costs: dict[ChildConfig, float] = {}
    scores: dict[ChildConfig, float] = {}

    def try_child(config: ChildConfig, stage: str) -> bool:
        if config not in costs:
            costs[config] = float(cost(config))
        feasible = costs[config] <= budget
        if feasible and config not in scores:
            scores[config] = float(score(config))
        trials.append({"stage": stage, "child": space.encode(config), "cost": costs[config],
                       "within_budget": feasible, "score": scores.get(config)})
        return feasible

    feasible = [config for config in space.uniform_grid() if try_child(config, "coarse")]
    if not feasible:
        cheapest = min(costs.values())
        raise ValueError(f"coarse_to_fine(): no child meets the budget {budget:g}; the cheapest "
                         f"uniform child costs {cheapest:g}")
    best = max(feasible, key=lambda c: scores[c])
    for index in range(num_mutations):
        candidate = space.mutate(best, derive_seed(seed, "bignas-fine", index))
        if try_child(candidate, "fine") and scores[candidate] > scores[best]:
            best = candidate
    return Selection(best, scores[best], costs[best], trials)
