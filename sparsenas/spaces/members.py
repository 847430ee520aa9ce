"""A search space restricted to a finite set of members of another space: what a search over
architectures that were already measured (a tabular benchmark) walks through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from sparsenas.seeds import derive_seed
from sparsenas.spaces.base import SearchSpace

C = TypeVar("C")


class MemberSpace(SearchSpace[C]):
    """The ``members`` of ``space`` (distinct encodings). ``sample`` draws members uniformly;
    ``mutate`` applies ``space.mutate`` until it lands on another member (``attempts`` tries),
    else draws a random other member, so a search never leaves the measured set."""

    def __init__(self, space: SearchSpace[C], members: Sequence[C], attempts: int = 64) -> None:
        self.space = space
        self.members = list(members)
        self.index = {space.encode(m): i for i, m in enumerate(self.members)}
        if len(self.index) != len(self.members) or len(self.members) < 2:
            raise ValueError(f"MemberSpace(): argument 'members' must hold at least two distinct "
                             f"candidates, got {len(self.members)} with {len(self.index)} "
                             f"distinct")
        if attempts < 1:
            raise ValueError(f"MemberSpace(): argument 'attempts' must be >= 1, got {attempts}")
        self.attempts = attempts

    def __len__(self) -> int:
        return len(self.members)

    def sample(self, num: int, seed: int, first: int = 0) -> list[C]:
        if num < 0 or first < 0:
            raise ValueError(f"sample(): arguments 'num' and 'first' must be >= 0, got {num}, "
                             f"{first}")
        return [self.members[_pick(len(self.members), derive_seed("member-sample", seed, i))]
                for i in range(first, first + num)]

    def mutate(self, candidate: C, seed: int) -> C:
        text = self.encode(candidate)
        current = candidate
        for attempt in range(self.attempts):
            current = self.space.mutate(current, derive_seed("member-mutate", seed, attempt))
            neighbour = self.index.get(self.space.encode(current))
            if neighbour is not None and self.space.encode(current) != text:
                return self.members[neighbour]
        others = [m for m in self.members if self.space.encode(m) != text]
        return others[_pick(len(others), derive_seed("member-jump", seed))]

    def encode(self, candidate: C) -> str:
        text = self.space.encode(candidate)
        if text not in self.index:
            raise ValueError(f"encode(): {text!r} is not a member of this space")
        return text

    def decode(self, text: str) -> C:
        if text not in self.index:
            raise ValueError(f"decode(): {text!r} is not a member of this space")
        return self.members[self.index[text]]

    def describe(self, candidate: C) -> dict[str, Any]:
        return self.space.describe(candidate)


def _pick(count: int, seed: int) -> int:
    return int(torch.randint(count, (1,), generator=torch.Generator().manual_seed(seed)))
