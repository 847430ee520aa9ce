"""The space of an elastic supernet's children (:class:`sparsenas.models.ChildConfig`): input
resolutions, and per stage the depths, widths and kernel sizes a child may take.

Every stage offers the same number of depth choices and of width choices, so "level j" of a
dimension means the j-th smallest choice in every stage: the uniform-multiplier grid that
coarse selection scans is the product of the resolutions, depth levels, width levels and kernels.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import torch

from sparsenas.models.elastic import ChildConfig, ElasticNet
from sparsenas.seeds import derive_seed
from sparsenas.spaces.base import SearchSpace

_ENCODING = re.compile(r"r(\d+)-d([\d.]+)-w([\d.]+)-k([\d.]+)")


def _choices(name: str, values: Sequence[int]) -> tuple[int, ...]:
    choices = tuple(sorted(set(int(v) for v in values)))
    if not choices or choices[0] < 1:
        raise ValueError(f"ElasticSpace(): argument '{name}' must hold positive ints, got "
                         f"{tuple(values)}")
    return choices


def _stage_choices(name: str, per_stage: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    stages = tuple(_choices(f"{name}[{s}]", values) for s, values in enumerate(per_stage))
    if not stages or len({len(c) for c in stages}) != 1:
        raise ValueError(f"ElasticSpace(): argument '{name}' must give every stage the same "
                         f"number of choices, got {[list(c) for c in stages]}")
    return stages


class ElasticSpace(SearchSpace[ChildConfig]):
    """Children built from ``resolutions``, per-stage ``depths`` and ``widths`` (same number of
    choices in every stage) and ``kernels`` (one choice per stage from this set)."""

    def __init__(self, resolutions: Sequence[int], depths: Sequence[Sequence[int]],
                 widths: Sequence[Sequence[int]], kernels: Sequence[int]) -> None:
        self.resolutions = _choices("resolutions", resolutions)
        self.depths = _stage_choices("depths", depths)
        self.widths = _stage_choices("widths", widths)
        self.kernels = _choices("kernels", kernels)
        if len(self.depths) != len(self.widths):
            raise ValueError(f"ElasticSpace(): arguments 'depths' and 'widths' must cover the "
                             f"same stages, got {len(self.depths)} and {len(self.widths)}")
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError(f"ElasticSpace(): argument 'kernels' must hold odd sizes, got "
                             f"{self.kernels}")

    @classmethod
    def for_architecture(cls, stage_depths: Sequence[int], stage_channels: Sequence[int],
                         kernel_sizes: Sequence[int], resolutions: Sequence[int],
                         width_multipliers: Sequence[float] = (0.5, 0.75, 1.0),
                         depth_levels: int | None = None) -> ElasticSpace:
        """The children of a supernet with these stages: widths ``round(m * max width)`` for
        each multiplier, the ``depth_levels`` largest depths of each stage (all depths of the
        shallowest stage by default), every kernel size."""
        shallowest = min(stage_depths)
        levels = shallowest if depth_levels is None else depth_levels
        if not 1 <= levels <= shallowest:
            raise ValueError(f"ElasticSpace.for_model(): argument 'depth_levels' must be in "
                             f"[1, {shallowest}], got {depth_levels}")
        if any(not 0 < m <= 1 for m in width_multipliers):
            raise ValueError(f"ElasticSpace.for_model(): argument 'width_multipliers' must be in "
                             f"(0, 1], got {tuple(width_multipliers)}")
        depths = [range(d - levels + 1, d + 1) for d in stage_depths]
        widths = [[max(1, round(m * c)) for m in width_multipliers] for c in stage_channels]
        return cls(resolutions, depths, widths, kernel_sizes)

    @classmethod
    def for_model(cls, model: ElasticNet, resolutions: Sequence[int],
                  width_multipliers: Sequence[float] = (0.5, 0.75, 1.0),
                  depth_levels: int | None = None) -> ElasticSpace:
        """The space of ``model``'s children (:meth:`for_architecture` of its stages), checked to
        be runnable by it."""
        space = cls.for_architecture(model.stage_depths, model.stage_channels, model.kernel_sizes,
                                     resolutions, width_multipliers, depth_levels)
        for config in (space.smallest(), space.biggest()):
            model.check_config(config)
        return space

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def biggest(self) -> ChildConfig:
        return self._uniform(-1, -1, -1, self.kernels[-1])

    def smallest(self) -> ChildConfig:
        return self._uniform(0, 0, 0, self.kernels[0])

    def _uniform(self, resolution: int, depth_level: int, width_level: int,
                 kernel: int) -> ChildConfig:
        return ChildConfig(self.resolutions[resolution],
                           tuple(d[depth_level] for d in self.depths),
                           tuple(w[width_level] for w in self.widths),
                           (kernel,) * self.num_stages)

    def uniform_grid(self) -> list[ChildConfig]:
        """Every child whose stages all take the same depth level, width level and kernel, at
        every resolution (smallest first)."""
        return [self._uniform(r, d, w, k) for r, d, w, k in itertools.product(
            range(len(self.resolutions)), range(len(self.depths[0])),
            range(len(self.widths[0])), self.kernels)]

    def _genes(self) -> list[tuple[int, ...]]:
        """The choices of each gene: resolution, then per stage depth, width, kernel."""
        genes = [self.resolutions]
        for depths, widths in zip(self.depths, self.widths):
            genes += [depths, widths, self.kernels]
        return genes

    def _from_genes(self, values: Sequence[int]) -> ChildConfig:
        stages = [values[1 + 3 * s:4 + 3 * s] for s in range(self.num_stages)]
        return ChildConfig(int(values[0]), tuple(int(s[0]) for s in stages),
                           tuple(int(s[1]) for s in stages), tuple(int(s[2]) for s in stages))

    def _to_genes(self, config: ChildConfig) -> list[int]:
        values = [config.resolution]
        for depth, width, kernel in zip(config.depths, config.widths, config.kernels):
            values += [depth, width, kernel]
        return values

    def sample(self, num: int, seed: int, first: int = 0) -> list[ChildConfig]:
        """Children ``first .. first + num - 1`` of stream ``seed``, each gene uniform over its
        choices; child i depends on (seed, i) only."""
        if num < 0 or first < 0:
            raise ValueError(f"ElasticSpace.sample(): arguments 'num' and 'first' must be >= 0, "
                             f"got {num} and {first}")
        genes = self._genes()
        children = []
        for index in range(first, first + num):
            generator = torch.Generator().manual_seed(derive_seed(seed, "elastic-child", index))
            picks = torch.randint(0, 1 << 30, (len(genes),), generator=generator).tolist()
            children.append(self._from_genes([g[p % len(g)] for g, p in zip(genes, picks)]))
        return children

    def mutate(self, candidate: ChildConfig, seed: int, rate: float | None = None) -> ChildConfig:
        """A neighbour of ``candidate``: each gene moves to an adjacent choice with probability
        ``rate`` (default one over the number of genes); at least one gene that can move does."""
        self.check(candidate)
        genes = self._genes()
        rate = 1.0 / len(genes) if rate is None else rate
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"ElasticSpace.mutate(): argument 'rate' must be in [0, 1], got "
                             f"{rate}")
        movable = [i for i, g in enumerate(genes) if len(g) > 1]
        if not movable:
            return candidate
        generator = torch.Generator().manual_seed(derive_seed(seed, "elastic-mutate"))
        chosen = (torch.rand(len(genes), generator=generator) < rate).tolist()
        if not any(chosen[i] for i in movable):
            chosen[movable[int(torch.randint(len(movable), (1,), generator=generator))]] = True
        directions = torch.randint(0, 2, (len(genes),), generator=generator).tolist()
        values = self._to_genes(candidate)
        for i, choices in enumerate(genes):
            if not chosen[i] or len(choices) == 1:
                continue
            position = choices.index(values[i])
            step = 1 if directions[i] else -1
            if not 0 <= position + step < len(choices):
                step = -step
            values[i] = choices[position + step]
        return self._from_genes(values)

    def check(self, candidate: ChildConfig) -> None:
        """A ValueError naming the first part of ``candidate`` outside this space."""
        if not isinstance(candidate, ChildConfig):
            raise TypeError(f"argument 'candidate' must be a ChildConfig, got "
                            f"{type(candidate).__name__}")
        if len(candidate.depths) != self.num_stages:
            raise ValueError(f"child {candidate}: expected {self.num_stages} stages, got "
                             f"{len(candidate.depths)}")
        names = ["resolution"] + [f"{part} of stage {s}" for s in range(self.num_stages)
                                  for part in ("depth", "width", "kernel")]
        for name, value, choices in zip(names, self._to_genes(candidate), self._genes()):
            if value not in choices:
                raise ValueError(f"child config outside the space: {name} must be one of "
                                 f"{choices}, got {value}")

    def encode(self, candidate: ChildConfig) -> str:
        self.check(candidate)
        return (f"r{candidate.resolution}-d{'.'.join(map(str, candidate.depths))}"
                f"-w{'.'.join(map(str, candidate.widths))}"
                f"-k{'.'.join(map(str, candidate.kernels))}")

    def decode(self, text: str) -> ChildConfig:
        match = _ENCODING.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"ElasticSpace.decode(): argument 'text' must look like "
                             f"'r32-d1.2-w8.16-k3.5', got {text!r}")
        try:
            resolution, *stages = match.groups()
            depths, widths, kernels = (tuple(int(v) for v in s.split(".")) for s in stages)
        except ValueError:
            raise ValueError(f"ElasticSpace.decode(): malformed numbers in {text!r}") from None
        if not len(depths) == len(widths) == len(kernels):
            raise ValueError(f"ElasticSpace.decode(): depths, widths and kernels of {text!r} "
                             f"must have one entry per stage")
        candidate = ChildConfig(int(resolution), depths, widths, kernels)
        self.check(candidate)
        return candidate

    def describe(self, candidate: ChildConfig) -> dict:
        return candidate.to_dict()
