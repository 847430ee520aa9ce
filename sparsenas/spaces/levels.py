"""Per-unit compression levels under an exactly kept global budget (EvoPress-style spaces).

A *unit* is something that can be compressed on its own: a ``nn.Linear`` / ``nn.Conv2d`` layer
(sparsity and bit-width modes) or a residual block (depth mode). A candidate is a tuple with one
level value per unit, and every unit's value has an integer *cost*; the budget is the candidate's
total cost, and every candidate a space produces has the same total as its start configuration.

Moves are *swaps*: one unit goes one value up, another one value down, and a swap is only made
when the two cost changes cancel exactly. Per mode:

- sparsity: level ℓ ∈ [-L, L] of a layer with n weights keeps
  ``kept(ℓ) = round((1 - s) n) - ℓ Δ`` weights (sparsity ≈ s + ℓ Δ / n), with one integer Δ shared
  by all layers, so every swap keeps the total number of non-zeros exactly;
- depth: value 1 = block dropped, 0 = kept; the cost is the number of dropped blocks;
- bit-width: value = bits of the layer from ``BIT_OPTIONS``, cost = bits x numel, so a swap needs
  two layers whose step changes bits x numel by the same amount (in practice layers of equal
  numel at equal step sizes: 2<->3, …, 5<->6 are 1-bit steps, 6<->8 a 2-bit step).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence

from torch import nn

from sparsenas.models.hf import is_conv1d
from sparsenas.spaces.base import SearchSpace

Levels = tuple[int, ...]

BIT_OPTIONS: tuple[int, ...] = (2, 3, 4, 5, 6, 8)


def compressible_layers(model: nn.Module, exclude: Iterable[str] = (),
                        exclude_head: bool = True) -> dict[str, nn.Module]:
    """The model's ``nn.Linear`` / ``nn.Conv2d`` layers by qualified name, in registration order.
    A model holding ``transformers`` Conv1D layers (GPT-2) is refused with the way to convert them
    (:class:`sparsenas.models.hf.CausalLMLogits`), rather than compressed without them.

    ``exclude`` names layers to leave out; ``exclude_head`` leaves out the last such layer (the
    output head of the usual model layouts, including a head tied to an embedding). A layer whose
    weight another compressible layer also uses is listed once, under its first name.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compressible_layers(): argument 'model' must be an nn.Module, got "
                        f"{type(model).__name__}")
    excluded = set(exclude)
    layers: dict[str, nn.Module] = {}
    seen_weights: set[int] = set()
    transposed = [name for name, module in model.named_modules() if is_conv1d(module)]
    if transposed:
        raise ValueError(f"compressible_layers(): {', '.join(transposed[:3])}"
                         f"{' …' if len(transposed) > 3 else ''} are transformers Conv1D layers "
                         f"(weight [in, out]); wrap the model in "
                         f"sparsenas.models.hf.CausalLMLogits, which turns them into nn.Linear")
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, (nn.Linear, nn.Conv2d)) and id(module.weight) not in seen_weights:
            seen_weights.add(id(module.weight))
            layers[name] = module
    unknown = excluded - set(layers)
    if unknown:
        raise ValueError(f"compressible_layers(): argument 'exclude' names {sorted(unknown)}, "
                         f"which are not Linear / Conv2d layers of the model")
    if exclude_head and layers:
        excluded.add(next(reversed(layers)))
    chosen = {name: module for name, module in layers.items() if name not in excluded}
    if not chosen:
        raise ValueError("compressible_layers(): the model has no compressible Linear / Conv2d "
                         "layers (after exclusions)")
    return chosen


def residual_blocks(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """The residual blocks that depth mode may drop, by qualified name.

    Whether a module computes ``x + f(x)`` cannot be read off a module generically, so the blocks
    are named: by ``names``, or by the model's method ``residual_block_names()`` (which
    :class:`sparsenas.models.lm.GPT` has). Dropping a block replaces it by the identity, so each
    named module must map its input to an output of the same shape.
    """
    if names is None:
        method = getattr(model, "residual_block_names", None)
        if not callable(method):
            raise ValueError(f"residual_blocks(): {type(model).__name__} has no "
                             f"residual_block_names() method; pass argument 'names'")
        names = list(method())
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise ValueError(f"residual_blocks(): argument 'names' holds {missing}, which are not "
                         f"modules of the model")
    if len(set(names)) != len(names) or not names:
        raise ValueError("residual_blocks(): argument 'names' must hold distinct module names, "
                         f"at least one, got {list(names)}")
    return {name: modules[name] for name in names}


def layer_numels(layers: dict[str, nn.Module]) -> list[int]:
    return [module.weight.numel() for module in layers.values()]


def _checked_numels(owner: str, unit_names: Sequence[str], numels: Sequence[int]) -> list[int]:
    if len(numels) != len(unit_names) or any(int(n) < 1 for n in numels):
        raise ValueError(f"{owner}(): argument 'numels' must hold one positive weight count per "
                         f"unit ({len(unit_names)}), got {list(numels)}")
    return [int(n) for n in numels]


class LevelSpace(SearchSpace[Levels]):
    """Candidates are tuples of per-unit values; ``values[u]`` is unit u's ordered value list and
    ``cost(u, v)`` an integer. ``start`` (a tuple) fixes the budget: its total cost."""

    mode = "levels"

    def __init__(self, unit_names: Sequence[str], values: Sequence[Sequence[int]],
                 cost: Callable[[int, int], int], start: Levels) -> None:
        if len(unit_names) < 2:
            raise ValueError(f"{type(self).__name__}: a budget-keeping swap needs at least two "
                             f"units, got {len(unit_names)}")
        self.unit_names = list(unit_names)
        self.values = [tuple(v) for v in values]
        self._cost = cost
        self.start = self.check(start)
        self.budget = self.total_cost(self.start)

    @property
    def num_units(self) -> int:
        return len(self.unit_names)

    def total_cost(self, candidate: Levels) -> int:
        return sum(self._cost(u, v) for u, v in enumerate(candidate))

    def check(self, candidate: Sequence[int]) -> Levels:
        candidate = tuple(int(v) for v in candidate)
        if len(candidate) != self.num_units:
            raise ValueError(f"{type(self).__name__}: a candidate needs {self.num_units} levels, "
                             f"got {len(candidate)}")
        for u, v in enumerate(candidate):
            if v not in self.values[u]:
                raise ValueError(f"{type(self).__name__}: level {v} of unit "
                                 f"{self.unit_names[u]!r} is not one of {self.values[u]}")
        return candidate

    def _swaps(self, candidate: Levels) -> list[tuple[int, int]]:
        """All (up, down) unit pairs whose one-step moves keep the total cost."""
        ups, downs = {}, {}
        for u, v in enumerate(candidate):
            position = self.values[u].index(v)
            if position + 1 < len(self.values[u]):
                ups[u] = self._cost(u, self.values[u][position + 1]) - self._cost(u, v)
            if position > 0:
                downs[u] = self._cost(u, self.values[u][position - 1]) - self._cost(u, v)
        return [(i, j) for i, up in ups.items() for j, down in downs.items()
                if i != j and up + down == 0]

    def _swap(self, candidate: Levels, rng: random.Random) -> Levels:
        pairs = self._swaps(candidate)
        if not pairs:
            return candidate
        up, down = rng.choice(pairs)
        levels = list(candidate)
        levels[up] = self.values[up][self.values[up].index(levels[up]) + 1]
        levels[down] = self.values[down][self.values[down].index(levels[down]) - 1]
        return tuple(levels)

    def mutate(self, candidate: Levels, seed: int) -> Levels:
        """min(U1, U2) swaps, U ~ uniform{1..3}; a result equal to ``candidate`` (swaps that undo
        each other) is redrawn, so the neighbour always differs."""
        candidate = self.check(candidate)
        if not self._swaps(candidate):
            raise ValueError(f"{type(self).__name__}.mutate(): no budget-keeping swap exists "
                             f"from {candidate}")
        rng = random.Random(seed)
        while True:
            swaps = min(rng.randint(1, 3), rng.randint(1, 3))
            child = candidate
            for _ in range(swaps):
                child = self._swap(child, rng)
            if child != candidate:
                return child

    def walk_length(self) -> int:
        """Swaps of the random walk that ``sample`` draws a candidate with: enough to move every
        unit across its whole range a few times."""
        return 4 * sum(len(v) for v in self.values)

    def _random(self, rng: random.Random) -> Levels:
        """A random configuration at the budget: a random walk of swaps from ``start``."""
        candidate = self.start
        for _ in range(self.walk_length()):
            candidate = self._swap(candidate, rng)
        return candidate

    def sample(self, num: int, seed: int, first: int = 0) -> list[Levels]:
        """Random configurations at the budget (candidate i drawn from (seed, i) alone)."""
        if num < 0 or first < 0:
            raise ValueError(f"{type(self).__name__}.sample(): 'num' and 'first' must be >= 0, "
                             f"got {num}, {first}")
        return [self._random(random.Random(f"{seed}:{index}"))
                for index in range(first, first + num)]

    def encode(self, candidate: Levels) -> str:
        return ",".join(str(v) for v in self.check(candidate))

    def decode(self, text: str) -> Levels:
        try:
            values = [int(part) for part in text.split(",")]
        except (AttributeError, ValueError):
            raise ValueError(f"{type(self).__name__}.decode(): {text!r} is not a comma-separated "
                             f"list of integer levels") from None
        candidate = self.check(values)
        if self.total_cost(candidate) != self.budget:
            raise ValueError(f"{type(self).__name__}.decode(): {text!r} is off the budget "
                             f"({self.total_cost(candidate)} != {self.budget})")
        return candidate

    def describe(self, candidate: Levels) -> dict:
        return {"mode": self.mode, "cost": self.total_cost(candidate),
                "levels": dict(zip(self.unit_names, candidate))}


class SparsityLevelSpace(LevelSpace):
    """Unstructured sparsity: layer u at level ℓ keeps ``kept(u, ℓ) = round((1 - s) n_u) - ℓ Δ``
    weights. ``delta=None`` takes the largest Δ for which all 2L + 1 levels are valid for every
    layer (0 <= kept <= n); a target or Δ that the levels cannot reach is a ValueError."""

    mode = "sparsity"

    def __init__(self, unit_names: Sequence[str], numels: Sequence[int], sparsity: float,
                 num_levels: int = 4, delta: int | None = None) -> None:
        if not 0.0 < sparsity < 1.0:
            raise ValueError(f"SparsityLevelSpace(): argument 'sparsity' must be in (0, 1), got "
                             f"{sparsity}")
        if num_levels < 1:
            raise ValueError(f"SparsityLevelSpace(): argument 'num_levels' must be >= 1, got "
                             f"{num_levels}")
        self.numels = _checked_numels("SparsityLevelSpace", unit_names, numels)
        self.sparsity = float(sparsity)
        self.num_levels = int(num_levels)
        self.base_kept = [round((1.0 - sparsity) * n) for n in self.numels]
        largest = min(min(k, n - k) for k, n in zip(self.base_kept, self.numels)) // num_levels
        if delta is None:
            delta = largest
        if delta < 1 or delta > largest:
            raise ValueError(f"SparsityLevelSpace(): sparsity {sparsity} with {num_levels} levels "
                             f"each way allows a step 'delta' between 1 and {largest} weights, got "
                             f"{delta}")
        self.delta = int(delta)
        levels = tuple(range(-num_levels, num_levels + 1))
        super().__init__(unit_names, [levels] * len(self.numels), self._neg_kept,
                         (0,) * len(self.numels))

    def _neg_kept(self, unit: int, level: int) -> int:
        # Higher level = fewer weights kept; the cost only has to change in opposite directions.
        return -self.kept(unit, level)

    def kept(self, unit: int, level: int) -> int:
        return self.base_kept[unit] - level * self.delta

    def total_kept(self, candidate: Levels) -> int:
        return sum(self.kept(u, v) for u, v in enumerate(candidate))

    def layer_sparsity(self, unit: int, level: int) -> float:
        return 1.0 - self.kept(unit, level) / self.numels[unit]

    def describe(self, candidate: Levels) -> dict:
        return {**super().describe(candidate), "nonzeros": self.total_kept(candidate),
                "sparsity": 1.0 - self.total_kept(candidate) / sum(self.numels)}


class DepthSpace(LevelSpace):
    """Depth: exactly ``num_dropped`` of the blocks dropped (value 1), the rest kept (value 0).
    The start drops the last ``num_dropped`` blocks."""

    mode = "depth"

    def __init__(self, block_names: Sequence[str], num_dropped: int) -> None:
        if not 0 < num_dropped < len(block_names):
            raise ValueError(f"DepthSpace(): argument 'num_dropped' must be between 1 and "
                             f"{len(block_names) - 1} for {len(block_names)} blocks, got "
                             f"{num_dropped}")
        self.num_dropped = int(num_dropped)
        start = (0,) * (len(block_names) - num_dropped) + (1,) * num_dropped
        super().__init__(block_names, [(0, 1)] * len(block_names), lambda u, v: v, start)

    def dropped(self, candidate: Levels) -> list[str]:
        return [name for name, v in zip(self.unit_names, candidate) if v]

    def from_dropped(self, names: Iterable[str]) -> Levels:
        names = set(names)
        unknown = names - set(self.unit_names)
        if unknown or len(names) != self.num_dropped:
            raise ValueError(f"DepthSpace.from_dropped(): need {self.num_dropped} block names "
                             f"from {self.unit_names}, got {sorted(names)}")
        return tuple(int(name in names) for name in self.unit_names)

    def _random(self, rng: random.Random) -> Levels:
        """A uniformly random set of ``num_dropped`` blocks."""
        return self.from_dropped(rng.sample(self.unit_names, self.num_dropped))

    def describe(self, candidate: Levels) -> dict:
        return {**super().describe(candidate), "dropped": self.dropped(candidate)}


class BitWidthSpace(LevelSpace):
    """Bit-width: layer u holds ``bits`` from ``options``; the budget is Σ bits_u · numel_u, so a
    swap (one layer a step up, another a step down) is allowed only when both steps change
    bits x numel by the same amount. Start: every layer at ``bits``."""

    mode = "bits"

    def __init__(self, unit_names: Sequence[str], numels: Sequence[int], bits: int,
                 options: Sequence[int] = BIT_OPTIONS) -> None:
        options = tuple(sorted(set(int(b) for b in options)))
        if bits not in options:
            raise ValueError(f"BitWidthSpace(): argument 'bits' must be one of {options}, got "
                             f"{bits}")
        self.numels = _checked_numels("BitWidthSpace", unit_names, numels)
        self.options = options
        super().__init__(unit_names, [options] * len(self.numels),
                         lambda u, b: b * self.numels[u], (bits,) * len(self.numels))
        if not self._swaps(self.start):
            raise ValueError("BitWidthSpace(): no two layers can trade bits at an equal "
                             "bits x numel cost (the layers' sizes do not pair up)")

    def average_bits(self, candidate: Levels) -> float:
        return self.total_cost(candidate) / sum(self.numels)

    def describe(self, candidate: Levels) -> dict:
        return {**super().describe(candidate), "average_bits": self.average_bits(candidate)}
