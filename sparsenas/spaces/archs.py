"""The architecture space of the NTK / LGA study: networks that differ in ways that matter —
family (MLP / CNN), depth, width, kernel size, activation (relu / tanh / gelu / linear), residual
blocks and node sparsity (the kept fraction of each block's nodes).

Candidates are :class:`sparsenas.models.Arch` values, built with
:func:`sparsenas.models.build_arch` (model ``"arch"`` in ``MODELS``). Members of one
:meth:`Arch.shape` differ only in node masks and train together
(:func:`sparsenas.models.arch_candidate_batch`); :meth:`ArchSpace.population` draws its members
shape by shape so that such groups exist.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from sparsenas.models.archs import ACTIVATIONS, FAMILIES, Arch, decode_arch, encode_arch
from sparsenas.seeds import derive_seed
from sparsenas.spaces.base import SearchSpace

_MUTABLE = ("family", "depth", "width", "kernel", "activation", "residual", "keep")


def _choices(name: str, values: Sequence, check) -> tuple:
    values = tuple(values)
    if not values or len(set(values)) != len(values) or not all(check(v) for v in values):
        raise ValueError(f"ArchSpace(): argument {name!r} must be a non-empty list of distinct "
                         f"valid values, got {list(values)}")
    return values


class ArchSpace(SearchSpace[Arch]):
    """All combinations of the given choices. Depth-1 networks have no residual variant (nothing
    to skip), MLPs no kernel; ``keep_fractions`` are drawn per block (1.0 = dense block)."""

    def __init__(self, families: Sequence[str] = FAMILIES, depths: Sequence[int] = (1, 2, 3),
                 widths: Sequence[int] = (8, 16, 32, 64), kernels: Sequence[int] = (3, 5, 7),
                 activations: Sequence[str] = ("relu", "tanh", "gelu", "linear"),
                 residual: Sequence[bool] = (False, True),
                 keep_fractions: Sequence[float] = (1.0, 0.75, 0.5)) -> None:
        self.families = _choices("families", families, lambda v: v in FAMILIES)
        self.depths = _choices("depths", depths, lambda v: isinstance(v, int) and v >= 1)
        self.widths = _choices("widths", widths, lambda v: isinstance(v, int) and v >= 2)
        self.kernels = _choices("kernels", kernels,
                                lambda v: isinstance(v, int) and v >= 1 and v % 2 == 1)
        self.activations = _choices("activations", activations, lambda v: v in ACTIVATIONS)
        self.residual = _choices("residual", residual, lambda v: isinstance(v, bool))
        self.keep_fractions = _choices("keep_fractions", keep_fractions,
                                       lambda v: 0.0 < v <= 1.0)
        if 1.0 not in self.keep_fractions:
            raise ValueError("ArchSpace(): argument 'keep_fractions' must include 1.0 (the dense "
                             "block every shape has)")
        for width in self.widths:
            kept = {max(1, round(f * width)) for f in self.keep_fractions}
            if len(kept) != len(self.keep_fractions):
                raise ValueError(f"ArchSpace(): keep_fractions {list(self.keep_fractions)} give "
                                 f"equal node counts at width {width}")

    # -- the shapes (everything but the node masks) ---------------------------------------------
    def _residual_options(self, depth: int) -> tuple[bool, ...]:
        return tuple(r for r in self.residual if depth >= 2 or not r)

    def _kernel_options(self, family: str) -> tuple[int, ...]:
        return self.kernels if family == "cnn" else (0,)

    def shapes(self) -> list[Arch]:
        """Every shape of the space (all nodes kept), in a fixed order."""
        shapes = []
        for family, depth, width, activation in itertools.product(
                self.families, self.depths, self.widths, self.activations):
            for kernel in self._kernel_options(family):
                for residual in self._residual_options(depth):
                    shapes.append(Arch(family, width, kernel, activation, residual,
                                       (1.0,) * depth))
        return shapes

    def variants(self, shape: Arch) -> list[Arch]:
        """The members of one shape: one per combination of per-block keep fractions."""
        return [replace(shape, keep=keep)
                for keep in itertools.product(self.keep_fractions, repeat=shape.depth)]

    def __len__(self) -> int:
        return sum(len(self.keep_fractions) ** shape.depth for shape in self.shapes())

    def contains(self, arch: Arch) -> bool:
        return (arch.family in self.families and arch.depth in self.depths
                and arch.width in self.widths and arch.activation in self.activations
                and arch.kernel in self._kernel_options(arch.family)
                and arch.residual in self._residual_options(arch.depth)
                and all(f in self.keep_fractions for f in arch.keep))

    # -- the SearchSpace protocol ----------------------------------------------------------------
    def sample(self, num: int, seed: int, first: int = 0) -> list[Arch]:
        """Members ``first .. first + num - 1`` of the stream ``seed``, each drawn uniformly over
        shapes, then over its shape's keep fractions (repeats possible; see population)."""
        if num < 0 or first < 0:
            raise ValueError(f"sample(): arguments 'num' and 'first' must be >= 0, got {num}, "
                             f"{first}")
        shapes = self.shapes()
        members = []
        for index in range(first, first + num):
            generator = torch.Generator().manual_seed(derive_seed("arch-sample", seed, index))
            shape = shapes[_pick(len(shapes), generator)]
            keep = tuple(self.keep_fractions[_pick(len(self.keep_fractions), generator)]
                         for _ in range(shape.depth))
            members.append(replace(shape, keep=keep))
        return members

    def population(self, num: int = 64, seed: int = 0, per_shape: int = 4) -> list[Arch]:
        """``num`` distinct members: shapes in a seeded random order, up to ``per_shape`` members
        of each (the dense one first, then seeded random node sparsities), so the population
        trains in groups of up to ``per_shape``; further rounds add more members per shape only
        when the shapes run out. A ValueError when ``num`` exceeds the space's size."""
        if num < 1 or num > len(self):
            raise ValueError(f"population(): argument 'num' must be in [1, {len(self)}] (the "
                             f"space's size), got {num}")
        if per_shape < 1:
            raise ValueError(f"population(): argument 'per_shape' must be >= 1, got {per_shape}")
        shapes = self.shapes()
        order = torch.randperm(len(shapes), generator=torch.Generator().manual_seed(
            derive_seed("arch-population", seed)))
        ordered: list[list[Arch]] = []
        for position in order.tolist():
            variants = self.variants(shapes[position])
            generator = torch.Generator().manual_seed(
                derive_seed("arch-population-variants", seed, position))
            rest = torch.randperm(len(variants) - 1, generator=generator) + 1
            ordered.append([variants[0]] + [variants[i] for i in rest.tolist()])
        members: list[Arch] = []
        for start in itertools.count(0, per_shape):
            for variants in ordered:
                for arch in variants[start:start + per_shape]:
                    members.append(arch)
                    if len(members) == num:
                        return members
        raise AssertionError("unreachable: num <= len(self)")

    def mutate(self, candidate: Arch, seed: int) -> Arch:
        """A member that differs from ``candidate`` in one property (family, depth, width,
        kernel, activation, residual, or one block's keep fraction), drawn from ``seed``."""
        if not self.contains(candidate):
            raise ValueError(f"mutate(): {encode_arch(candidate)!r} is not in this space")
        generator = torch.Generator().manual_seed(
            derive_seed("arch-mutate", seed, encode_arch(candidate)))
        neighbours = [arch for name in _MUTABLE for arch in self._neighbours(candidate, name)
                      if self.contains(arch)]
        if not neighbours:
            raise ValueError(f"mutate(): {encode_arch(candidate)!r} has no neighbour in a space "
                             f"with one member")
        return neighbours[_pick(len(neighbours), generator)]

    def _neighbours(self, arch: Arch, name: str) -> list[Arch]:
        if name == "family":
            return [replace(arch, family=f, kernel=self._kernel_options(f)[0])
                    for f in self.families if f != arch.family]
        if name == "depth":
            out = []
            for depth in self.depths:
                if depth == arch.depth:
                    continue
                keep = (arch.keep + (1.0,) * depth)[:depth]
                out.append(replace(arch, keep=keep, residual=arch.residual and depth >= 2))
            return out
        if name == "width":
            return [replace(arch, width=w) for w in self.widths if w != arch.width]
        if name == "kernel":
            return [replace(arch, kernel=k) for k in self._kernel_options(arch.family)
                    if k != arch.kernel]
        if name == "activation":
            return [replace(arch, activation=a) for a in self.activations if a != arch.activation]
        if name == "residual":
            return [replace(arch, residual=r) for r in self._residual_options(arch.depth)
                    if r != arch.residual]
        return [replace(arch, keep=arch.keep[:block] + (f,) + arch.keep[block + 1:])
                for block in range(arch.depth) for f in self.keep_fractions
                if f != arch.keep[block]]

    def encode(self, candidate: Arch) -> str:
        return encode_arch(candidate)

    def decode(self, text: str) -> Arch:
        arch = decode_arch(text)
        if not self.contains(arch):
            raise ValueError(f"decode(): {text!r} is an architecture outside this space")
        return arch

    def describe(self, candidate: Arch) -> dict[str, Any]:
        return {"family": candidate.family, "depth": candidate.depth, "width": candidate.width,
                "kernel": candidate.kernel, "activation": candidate.activation,
                "residual": candidate.residual,
                "node_sparsity": round(candidate.node_sparsity, 6),
                "shape": encode_arch(candidate.shape())}


def _pick(count: int, generator: torch.Generator) -> int:
    return int(torch.randint(count, (1,), generator=generator))
