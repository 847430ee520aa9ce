"""The protocol every search space follows: sample / mutate / encode / decode (crossover optional).

A *candidate* is one member of the space in the space's own representation (node masks, level
vectors, genotypes, child configurations …); ``sample`` and ``mutate`` both speak in candidates, so
a strategy never reshapes what one returns to feed the other. All randomness comes from explicit
seeds: candidate i of ``sample(num, seed)`` depends on (seed, i) only, whatever ``num`` and
``first`` are, and ``mutate(c, seed)`` depends on (c, seed) only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

C = TypeVar("C")


class SearchSpace(ABC, Generic[C]):
    """A space of candidates. ``encode`` gives a string that identifies a candidate (equal
    candidates encode equally), ``decode`` is its inverse; strategies store candidates encoded."""

    @abstractmethod
    def sample(self, num: int, seed: int, first: int = 0) -> list[C]:
        """Candidates ``first .. first + num - 1`` of the stream ``seed``."""

    @abstractmethod
    def mutate(self, candidate: C, seed: int) -> C:
        """A neighbour of ``candidate`` drawn from ``seed``."""

    @abstractmethod
    def encode(self, candidate: C) -> str:
        """A string that identifies ``candidate``."""

    @abstractmethod
    def decode(self, text: str) -> C:
        """The candidate ``text`` encodes; a ValueError for text that is not one."""

    def crossover(self, a: C, b: C, seed: int) -> C:
        """A child of ``a`` and ``b`` (optional: spaces without one raise)."""
        raise NotImplementedError(f"{type(self).__name__} has no crossover")

    def describe(self, candidate: C) -> dict[str, Any]:
        """Plain facts about a candidate for the store and the reports (sizes, counts …)."""
        return {}
