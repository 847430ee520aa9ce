"""(1+λ) evolution with multi-step racing selection, one generation at a time.

The search is a state machine: a :class:`Generation` (plain data: the parent configuration, its
last fitness and how many generations are done) goes into :func:`run_generation`, which returns
the next state and one record per racing stage. A strategy stores each generation as one unit;
since all randomness of generation g is derived from (study seed, g), restarting from any stored
state continues exactly as an uninterrupted run would.

One generation: λ offspring by mutation of the parent (duplicates redrawn); then the stages
``(survivors, examples)``: each stage draws a fresh random subset of ``examples`` calibration
examples, evaluates the remaining candidates on it and keeps the ``survivors`` best; the parent
re-enters before the last stage, whose single survivor becomes the next parent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sparsenas.seeds import derive_seed
from sparsenas.spaces.levels import LevelSpace, Levels

Evaluate = Callable[[list[Levels], torch.Tensor], list[float]]
"""evaluate(configurations, example indices) -> one fitness per configuration (lower = better)."""


@dataclass(frozen=True)
class RacingStage:
    survivors: int
    examples: int


DEFAULT_STAGES = (RacingStage(8, 16), RacingStage(2, 64), RacingStage(1, 256))


@dataclass(frozen=True)
class EvolutionConfig:
    """λ = ``offspring``; ``stages`` shrink the candidates to one while the fresh calibration
    sample of each stage grows. ``seed`` is the study seed every random stream derives from."""

    offspring: int = 16
    stages: tuple[RacingStage, ...] = DEFAULT_STAGES
    seed: int = 0

    def __post_init__(self) -> None:
        stages = tuple(s if isinstance(s, RacingStage) else RacingStage(*s) for s in self.stages)
        object.__setattr__(self, "stages", stages)
        if self.offspring < 1:
            raise ValueError(f"EvolutionConfig: argument 'offspring' must be >= 1, got "
                             f"{self.offspring}")
        if not stages or stages[-1].survivors != 1:
            raise ValueError("EvolutionConfig: argument 'stages' must end with one survivor")
        previous = self.offspring
        for stage in stages:
            if not 1 <= stage.survivors <= previous or stage.examples < 1:
                raise ValueError(f"EvolutionConfig: stage {stage} must keep between 1 and "
                                 f"{previous} survivors on at least one example")
            previous = stage.survivors

    def check_pool(self, pool_size: int) -> None:
        largest = max(stage.examples for stage in self.stages)
        if pool_size < largest:
            raise ValueError(f"EvolutionConfig: the calibration pool holds {pool_size} examples, "
                             f"fewer than the {largest} a stage draws")

    def to_dict(self) -> dict[str, Any]:
        return {"offspring": self.offspring, "seed": self.seed,
                "stages": [[s.survivors, s.examples] for s in self.stages]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvolutionConfig":
        return cls(int(data["offspring"]), tuple(RacingStage(*s) for s in data["stages"]),
                   int(data["seed"]))


@dataclass(frozen=True)
class Generation:
    """The search state after ``index`` generations: the current parent and its fitness on the
    last stage of the generation that chose it (None before the first)."""

    index: int
    parent: Levels
    parent_fitness: float | None = None
    history: tuple[float, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "parent": list(self.parent),
                "parent_fitness": self.parent_fitness, "history": list(self.history)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Generation":
        return cls(int(data["index"]), tuple(int(v) for v in data["parent"]),
                   data["parent_fitness"], tuple(data.get("history", ())))


def initial_state(space: LevelSpace, parent: Levels | None = None) -> Generation:
    """Generation 0: the space's start (the uniform configuration) or ``parent``."""
    return Generation(0, space.check(space.start if parent is None else parent))


def generation_seeds(config: EvolutionConfig, index: int) -> dict[str, int]:
    """The RNG keys of generation ``index`` (what a store records to replay it)."""
    return {"mutation": derive_seed(config.seed, "evopress", "mutation", index),
            **{f"stage{j}": derive_seed(config.seed, "evopress", "stage", index, j)
               for j in range(len(config.stages))}}


def offspring(space: LevelSpace, parent: Levels, count: int, seed: int,
              max_attempts: int | None = None) -> list[Levels]:
    """``count`` distinct mutants of ``parent`` (fewer only when the space has fewer distinct
    neighbours reachable within ``max_attempts`` draws, default 50 per offspring)."""
    max_attempts = 50 * count if max_attempts is None else max_attempts
    children: list[Levels] = []
    seen = {parent}
    for attempt in range(max_attempts):
        if len(children) == count:
            break
        child = space.mutate(parent, derive_seed(seed, attempt))
        if child not in seen:
            seen.add(child)
            children.append(child)
    return children


def run_generation(state: Generation, space: LevelSpace, config: EvolutionConfig,
                   evaluate: Evaluate, pool_size: int) -> tuple[Generation, list[dict[str, Any]]]:
    """One generation from ``state``: the next state and one record per racing stage (plain
    data: generation, stage, seed, example count, encoded candidates with their fitness, and
    the survivors)."""
    config.check_pool(pool_size)
    seeds = generation_seeds(config, state.index)
    candidates = offspring(space, state.parent, config.offspring, seeds["mutation"])
    records = []
    fitness: list[float] = []
    for j, stage in enumerate(config.stages):
        if j == len(config.stages) - 1 and state.parent not in candidates:
            candidates = candidates + [state.parent]
        generator = torch.Generator().manual_seed(seeds[f"stage{j}"])
        examples = torch.randperm(pool_size, generator=generator)[:stage.examples]
        fitness = [float(f) for f in evaluate(candidates, examples)]
        if len(fitness) != len(candidates):
            raise ValueError(f"run_generation(): 'evaluate' returned {len(fitness)} values for "
                             f"{len(candidates)} candidates")
        order = sorted(range(len(candidates)), key=lambda i: (fitness[i], i))
        survivors = [candidates[i] for i in order[:stage.survivors]]
        records.append({"generation": state.index, "stage": j, "seed": seeds[f"stage{j}"],
                        "mutation_seed": seeds["mutation"], "examples": stage.examples,
                        "candidates": [space.encode(c) for c in candidates],
                        "fitness": fitness,
                        "survivors": [space.encode(c) for c in survivors]})
        fitness = [fitness[i] for i in order[:stage.survivors]]
        candidates = survivors
    best_fitness = fitness[0]
    return (Generation(state.index + 1, candidates[0], best_fitness,
                       state.history + (best_fitness,)), records)


def evolve(space: LevelSpace, config: EvolutionConfig, evaluate: Evaluate, pool_size: int,
           generations: int, state: Generation | None = None) -> Generation:
    """Runs generations until ``generations`` are done (from ``state`` when resuming)."""
    state = initial_state(space) if state is None else state
    while state.index < generations:
        state, _ = run_generation(state, space, config, evaluate, pool_size)
    return state
