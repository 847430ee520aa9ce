"""DARTS cell genotypes: derivation from α, a compact string form, parametric-op counts, and a
search space over genotypes (for random search and evolution over cells).

String form: ``normal=sep_conv_3x3@0,sep_conv_3x3@1,...|2,3,4,5;reduce=max_pool_3x3@0,...|2,3,4,5``
— each cell's edges as ``op@input`` (two per intermediate node, in node order), then ``|`` and the
concatenated states.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from sparsenas.models.darts import (
    DARTS_V2,
    GENOTYPE_OPS,
    PRIMITIVES,
    Edge,
    Genotype,
    is_parametric,
    num_edges,
)
from sparsenas.seeds import derive_seed
from sparsenas.spaces.base import SearchSpace

__all__ = ["DARTS_V2", "CellSpace", "Genotype", "decode_genotype", "derive_genotype",
           "encode_genotype", "param_ops"]

_NONE = PRIMITIVES.index("none")
_SKIP = PRIMITIVES.index("skip_connect")


def _derive_cell(weights: Tensor, steps: int) -> list[tuple[int, int, float]]:
    """(op index, input, weight) per kept edge: for each node the two inputs whose strongest
    non-none op weighs most, each with that op (DARTS' rule)."""
    gene = []
    start = 0
    for node in range(steps):
        rows = weights[start:start + node + 2].clone()
        rows[:, _NONE] = -float("inf")
        strongest, best_op = rows.max(dim=1)
        # stable sort: equal edges keep input order, so derivation is deterministic
        inputs = torch.sort(strongest, descending=True, stable=True).indices[:2]
        gene += [(int(best_op[j]), int(j), float(strongest[j])) for j in inputs]
        start += node + 2
    return gene


def _limit_skips(gene: list[tuple[int, int, float]], weights: Tensor, steps: int,
                 max_skip: int) -> list[tuple[int, int, float]]:
    """Replaces the weakest skip edges by their edge's next best op (not none, not skip) until
    at most ``max_skip`` remain."""
    first_row = [sum(i + 2 for i in range(node)) for node in range(steps)]
    gene = list(gene)
    while sum(op == _SKIP for op, _, _ in gene) > max_skip:
        weakest = min((position for position, (op, _, _) in enumerate(gene) if op == _SKIP),
                      key=lambda position: gene[position][2])
        _, source, _ = gene[weakest]
        row = weights[first_row[weakest // 2] + source].clone()
        row[[_NONE, _SKIP]] = -float("inf")
        replacement = int(row.argmax())
        gene[weakest] = (replacement, source, float(row[replacement]))
    return gene


def derive_genotype(alphas_normal: Tensor, alphas_reduce: Tensor, multiplier: int | None = None,
                    max_skip: int | None = None) -> Genotype:
    """The genotype DARTS derives from α ([num_edges(steps), 8] each, rows in edge order): per node
    the top-2 inputs by their strongest non-none op under softmax(α), the last ``multiplier``
    nodes (default all) concatenated. ``max_skip`` limits the skip connections of the normal cell
    (a guard against the collapse to parameter-free cells)."""
    weights = {}
    for name, alphas in (("alphas_normal", alphas_normal), ("alphas_reduce", alphas_reduce)):
        if alphas.dim() != 2 or alphas.shape[1] != len(PRIMITIVES):
            raise ValueError(f"derive_genotype(): argument '{name}' must be [edges, "
                             f"{len(PRIMITIVES)}], got {list(alphas.shape)}")
        weights[name] = torch.softmax(alphas.detach().double().cpu(), dim=-1)
    steps = next((s for s in range(1, 64) if num_edges(s) >= len(alphas_normal)), 0)
    if len(alphas_normal) != len(alphas_reduce) or num_edges(steps) != len(alphas_normal):
        raise ValueError(f"derive_genotype(): α must have num_edges(steps) rows for some steps "
                         f"(2, 5, 9, 14, ...) in both cells, got {len(alphas_normal)} and "
                         f"{len(alphas_reduce)}")
    multiplier = steps if multiplier is None else multiplier
    if not 1 <= multiplier <= steps:
        raise ValueError(f"derive_genotype(): argument 'multiplier' must be in 1..{steps}, got "
                         f"{multiplier}")
    if max_skip is not None and max_skip < 0:
        raise ValueError(f"derive_genotype(): argument 'max_skip' must be >= 0, got {max_skip}")
    normal = _derive_cell(weights["alphas_normal"], steps)
    if max_skip is not None:
        normal = _limit_skips(normal, weights["alphas_normal"], steps, max_skip)
    reduce = _derive_cell(weights["alphas_reduce"], steps)
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    return Genotype(normal=tuple((PRIMITIVES[op], j) for op, j, _ in normal),
                    normal_concat=concat,
                    reduce=tuple((PRIMITIVES[op], j) for op, j, _ in reduce),
                    reduce_concat=concat)


def encode_genotype(genotype: Genotype) -> str:
    """The compact string form (module docstring)."""
    def cell(edges: tuple[Edge, ...], concat: tuple[int, ...]) -> str:
        return ",".join(f"{op}@{j}" for op, j in edges) + "|" + ",".join(map(str, concat))
    return (f"normal={cell(genotype.normal, genotype.normal_concat)};"
            f"reduce={cell(genotype.reduce, genotype.reduce_concat)}")


_CELL = re.compile(r"^(normal|reduce)=([^|]*)\|(.*)$")
_EDGE = re.compile(r"^([a-z0-9_]+)@(\d+)$")


def decode_genotype(text: str) -> Genotype:
    """The genotype of a string from :func:`encode_genotype`; a ValueError naming what is wrong."""
    if not isinstance(text, str):
        raise TypeError(f"decode_genotype(): argument 'text' must be a str, got "
                        f"{type(text).__name__}")
    parts = text.strip().split(";")
    if len(parts) != 2:
        raise ValueError(f"genotype {text!r}: expected 'normal=...|...;reduce=...|...' (two cells "
                         f"separated by ';'), got {len(parts)} part(s)")
    cells = {}
    for part in parts:
        match = _CELL.match(part.strip())
        if match is None:
            raise ValueError(f"genotype {text!r}: cell {part!r} must read "
                             f"'normal=op@input,...|concat' or 'reduce=op@input,...|concat'")
        name, edges_text, concat_text = match.groups()
        if name in cells:
            raise ValueError(f"genotype {text!r}: cell '{name}' given twice")
        edges = []
        for item in edges_text.split(","):
            edge = _EDGE.match(item.strip())
            if edge is None:
                raise ValueError(f"genotype {text!r}: edge {item!r} of cell '{name}' must read "
                                 f"'op@input'")
            edges.append((edge.group(1), int(edge.group(2))))
        try:
            concat = tuple(int(i) for i in concat_text.split(","))
        except ValueError:
            raise ValueError(f"genotype {text!r}: concat {concat_text!r} of cell '{name}' must be "
                             f"comma-separated state indices") from None
        cells[name] = (tuple(edges), concat)
    if set(cells) != {"normal", "reduce"}:
        raise ValueError(f"genotype {text!r}: needs one 'normal' and one 'reduce' cell")
    try:
        return Genotype(cells["normal"][0], cells["normal"][1], cells["reduce"][0],
                        cells["reduce"][1])
    except ValueError as error:
        raise ValueError(f"genotype {text!r}: {error}") from None


def param_ops(genotype: Genotype) -> int:
    """Parametric operations of both cells: the convs, and the skips out of the reduction cell's
    inputs (FactorizedReduce)."""
    return (sum(is_parametric(op, j, False) for op, j in genotype.normal)
            + sum(is_parametric(op, j, True) for op, j in genotype.reduce))


class CellSpace(SearchSpace[Genotype]):
    """Genotypes with ``steps`` nodes per cell: each node takes two distinct inputs, each through
    one of the seven non-none operations; the last ``multiplier`` nodes are concatenated."""

    def __init__(self, steps: int = 4, multiplier: int | None = None) -> None:
        if steps < 1:
            raise ValueError(f"CellSpace(): argument 'steps' must be >= 1, got {steps}")
        multiplier = steps if multiplier is None else multiplier
        if not 1 <= multiplier <= steps:
            raise ValueError(f"CellSpace(): argument 'multiplier' must be in 1..{steps}, got "
                             f"{multiplier}")
        self.steps, self.multiplier = steps, multiplier
        self.concat = tuple(range(2 + steps - multiplier, steps + 2))

    def _random_cell(self, generator: torch.Generator) -> tuple[Edge, ...]:
        edges = []
        for node in range(self.steps):
            inputs = torch.randperm(node + 2, generator=generator)[:2].sort().values
            ops = torch.randint(len(GENOTYPE_OPS), (2,), generator=generator)
            edges += [(GENOTYPE_OPS[int(o)], int(j)) for o, j in zip(ops, inputs)]
        return tuple(edges)

    def sample(self, num: int, seed: int, first: int = 0) -> list[Genotype]:
        candidates = []
        for index in range(first, first + num):
            generator = torch.Generator().manual_seed(derive_seed("cell-space", seed, index))
            candidates.append(Genotype(self._random_cell(generator), self.concat,
                                       self._random_cell(generator), self.concat))
        return candidates

    def mutate(self, candidate: Genotype, seed: int) -> Genotype:
        """Changes one edge of one cell: its operation, or its input (to one the node does not
        already take; nodes with no free input change their operation)."""
        self._check(candidate)
        generator = torch.Generator().manual_seed(derive_seed("cell-mutate", seed))
        cell = "normal" if torch.randint(2, (1,), generator=generator).item() == 0 else "reduce"
        edges = list(getattr(candidate, cell))
        position = int(torch.randint(len(edges), (1,), generator=generator))
        op, source = edges[position]
        node, partner = position // 2, edges[position ^ 1][1]
        free_inputs = [j for j in range(node + 2) if j not in (source, partner)]
        change_input = free_inputs and torch.randint(2, (1,), generator=generator).item() == 1
        if change_input:
            source = free_inputs[int(torch.randint(len(free_inputs), (1,), generator=generator))]
        else:
            others = [o for o in GENOTYPE_OPS if o != op]
            op = others[int(torch.randint(len(others), (1,), generator=generator))]
        edges[position] = (op, source)
        fields = {"normal": candidate.normal, "reduce": candidate.reduce, cell: tuple(edges)}
        return Genotype(fields["normal"], candidate.normal_concat, fields["reduce"],
                        candidate.reduce_concat)

    def crossover(self, a: Genotype, b: Genotype, seed: int) -> Genotype:
        """Each node of each cell (its two edges) taken from ``a`` or ``b`` with equal odds."""
        self._check(a)
        self._check(b)
        generator = torch.Generator().manual_seed(derive_seed("cell-crossover", seed))
        cells = []
        for edges_a, edges_b in ((a.normal, b.normal), (a.reduce, b.reduce)):
            picks = torch.randint(2, (self.steps,), generator=generator).tolist()
            cells.append(tuple(edge for node, pick in enumerate(picks)
                               for edge in (edges_b if pick else edges_a)[2 * node:2 * node + 2]))
        return Genotype(cells[0], a.normal_concat, cells[1], a.reduce_concat)

    def _check(self, candidate: Genotype) -> None:
        if not isinstance(candidate, Genotype) or candidate.steps != self.steps:
            raise ValueError(f"CellSpace: a candidate must be a Genotype with {self.steps} nodes "
                             f"per cell, got {candidate!r}")

    def encode(self, candidate: Genotype) -> str:
        return encode_genotype(candidate)

    def decode(self, text: str) -> Genotype:
        genotype = decode_genotype(text)
        self._check(genotype)
        return genotype

    def describe(self, candidate: Genotype) -> dict:
        return {"param_ops": param_ops(candidate),
                "skips_normal": sum(op == "skip_connect" for op, _ in candidate.normal)}
