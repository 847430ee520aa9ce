"""Aging-evolution selection (Real et al., 2019), shared by every strategy that evolves candidates
of a :class:`~sparsenas.spaces.base.SearchSpace` under any scores.

The population is the P most recently evaluated members; each child comes from a tournament (S
members drawn at random, the best wins) and is the winner mutated. Draws and mutations are keyed
by (seed, generation, child), so results depend on neither workers nor scheduling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from sparsenas.seeds import derive_seed
from sparsenas.spaces.base import SearchSpace

Member = TypeVar("Member")
Candidate = TypeVar("Candidate")


def aging_children(history: Sequence[Member], population: int, tournament: int, children: int,
                   best: Callable[[list[Member]], Member],
                   mutate: Callable[[Member, int], Candidate], seed: int,
                   generation: int) -> tuple[list[Candidate], list[Member]]:
    """One round: ``children`` tournaments of ``tournament`` members drawn from the last
    ``population`` of ``history`` (oldest first), each winner (``best`` of the drawn) mutated by
    ``mutate(winner, mutation_seed)``. Returns (children, their winners)."""
    if population < 1 or tournament < 1 or children < 1:
        raise ValueError(f"aging_children(): population, tournament and children must be >= 1, "
                         f"got {population}, {tournament}, {children}")
    members = list(history)[-population:]
    if not members:
        raise ValueError("aging_children(): argument 'history' is empty")
    offspring, winners = [], []
    for child in range(children):
        generator = torch.Generator().manual_seed(derive_seed("tournament", seed, generation,
                                                              child))
        drawn = torch.randperm(len(members), generator=generator)[:tournament]
        winner = best([members[int(i)] for i in drawn])
        offspring.append(mutate(winner, derive_seed("mutate", seed, generation, child)))
        winners.append(winner)
    return offspring, winners


def regularized_evolution(space: SearchSpace, score: Callable[[Candidate], float], evaluations: int,
                          population: int, tournament: int, seed: int) -> list[Candidate]:
    """Sequential aging evolution over ``space`` (a SearchSpace) for ``evaluations`` scorings
    (higher scores win; a tie goes to the member drawn first): ``population`` random members,
    then one child per generation. Returns every evaluated candidate in evaluation order."""
    if evaluations < population:
        raise ValueError(f"regularized_evolution(): argument 'evaluations' ({evaluations}) must "
                         f"be >= 'population' ({population})")
    history = [(candidate, score(candidate))
               for candidate in space.sample(population, derive_seed("population", seed))]

    def best(drawn: list[tuple]) -> tuple:
        return max(drawn, key=lambda pair: pair[1])

    for generation in range(1, evaluations - population + 1):
        (child,), _ = aging_children(history, population, tournament, 1, best,
                                     lambda winner, s: space.mutate(winner[0], s), seed,
                                     generation)
        history.append((child, score(child)))
    return [candidate for candidate, _ in history]


__all__ = ["aging_children", "regularized_evolution"]
