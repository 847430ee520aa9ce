"""DARTS networks whose every parametric operation is score-pruned (DASS): the search network
(supernet with mixed operations weighted by softmax(α)) and the evaluation network (stacked cells
of one genotype).

Both follow the DARTS layout: a 3×3 conv stem, ``layers`` cells with reduction cells (stride 2,
channels doubled) at 1/3 and 2/3 of the depth, global average pooling and a linear classifier.
A cell takes the outputs of the two previous cells, preprocesses them to C channels, computes
``steps`` intermediate nodes, each the sum of operations on earlier nodes, and concatenates the
last ``multiplier`` nodes. Every conv, the stem and the classifier included, is a SparseConv2d /
SparseLinear, so :func:`sparsenas.nn.set_phase` prunes the whole network. Drop path and the
auxiliary head of the DARTS evaluation network are not built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsenas.nn.scored import SparseConv2d, SparseLinear

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
              "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
# Operations a derived genotype may hold ("none" only weighs edges down in the supernet).
GENOTYPE_OPS = PRIMITIVES[1:]

Edge = tuple[str, int]


@dataclass(frozen=True)
class Genotype:
    """A cell pair: ``normal`` / ``reduce`` hold two (op, input) edges per intermediate node in
    node order, inputs numbered 0 = c_{k-2}, 1 = c_{k-1}, 2.. = earlier intermediate nodes;
    ``*_concat`` are the states concatenated into the cell's output."""

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("normal", "reduce"):
            edges = tuple((str(op), int(j)) for op, j in getattr(self, name))
            object.__setattr__(self, name, edges)
            concat = tuple(int(i) for i in getattr(self, f"{name}_concat"))
            object.__setattr__(self, f"{name}_concat", concat)
        if len(self.normal) != len(self.reduce):
            raise ValueError(f"Genotype: the normal and reduction cells must have as many edges, "
                             f"got {len(self.normal)} and {len(self.reduce)}")
        for name in ("normal", "reduce"):
            _check_cell(name, getattr(self, name), getattr(self, f"{name}_concat"))

    @property
    def steps(self) -> int:
        """Intermediate nodes per cell."""
        return len(self.normal) // 2


def _check_cell(name: str, edges: tuple[Edge, ...], concat: tuple[int, ...]) -> None:
    if not edges or len(edges) % 2:
        raise ValueError(f"Genotype: cell '{name}' must have two edges per node and at least one "
                         f"node, got {len(edges)} edges")
    for position, (op, source) in enumerate(edges):
        node = position // 2
        if op not in GENOTYPE_OPS:
            raise ValueError(f"Genotype: cell '{name}', node {node}: unknown operation {op!r}; "
                             f"known: {', '.join(GENOTYPE_OPS)}")
        if not 0 <= source < node + 2:
            raise ValueError(f"Genotype: cell '{name}', node {node}: input {source} must be in "
                             f"0..{node + 1} (the cell inputs and earlier nodes)")
    states = len(edges) // 2 + 2
    if not concat or len(set(concat)) != len(concat) or not all(0 <= i < states for i in concat):
        raise ValueError(f"Genotype: cell '{name}': concat {list(concat)} must name distinct "
                         f"states in 0..{states - 1}")


# The cells DARTS (second order) found on CIFAR-10, as published by Liu et al. (2019).
DARTS_V2 = Genotype(
    normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)),
    reduce_concat=(2, 3, 4, 5),
)


def is_parametric(op: str, source: int, reduction: bool) -> bool:
    """Whether an edge holds weights: the convs, and a skip out of a reduction cell's inputs
    (a FactorizedReduce)."""
    return "conv" in op or (op == "skip_connect" and reduction and source < 2)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 affine: bool) -> None:
        super().__init__(nn.ReLU(inplace=False),
                         SparseConv2d(c_in, c_out, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


class DilConv(nn.Sequential):
    """ReLU, depthwise (dilated) conv, pointwise conv, BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 dilation: int, affine: bool) -> None:
        super().__init__(nn.ReLU(inplace=False),
                         SparseConv2d(c_in, c_in, kernel, stride, padding, dilation, groups=c_in,
                                      bias=False),
                         SparseConv2d(c_in, c_out, 1, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


class SepConv(nn.Sequential):
    """Two stacked DilConv blocks without dilation, the first carrying the stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 affine: bool) -> None:
        super().__init__(DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
                         DilConv(c_in, c_out, kernel, 1, padding, 1, affine))


class Zero(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two stride-2 1×1 convs on offset grids, concatenated."""

    def __init__(self, c_in: int, c_out: int, affine: bool) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce(): argument 'c_out' must be even, got {c_out}")
        self.conv_1 = SparseConv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = SparseConv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def make_op(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    """The DARTS operation ``name`` on ``channels`` channels."""
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels, affine)
    if name in ("sep_conv_3x3", "sep_conv_5x5"):
        kernel = int(name[-1])
        return SepConv(channels, channels, kernel, stride, kernel // 2, affine)
    if name in ("dil_conv_3x3", "dil_conv_5x5"):
        kernel = int(name[-1])
        return DilConv(channels, channels, kernel, stride, kernel - 1, 2, affine)
    raise ValueError(f"make_op(): unknown operation {name!r}; known: {', '.join(PRIMITIVES)}")


def _preprocess(c_prev_prev: int, c_prev: int, channels: int, reduction_prev: bool,
                affine: bool) -> tuple[nn.Module, nn.Module]:
    first = (FactorizedReduce(c_prev_prev, channels, affine) if reduction_prev
             else ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine))
    return first, ReLUConvBN(c_prev, channels, 1, 1, 0, affine)


def reduction_layers(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells: 1/3 and 2/3 of the depth (one cell when they coincide)."""
    return tuple(sorted({layers // 3, 2 * layers // 3}))


def _check_sizes(where: str, input_shape: Sequence[int], layers: int, steps: int,
                 multiplier: int, channels: int) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"{where}: argument 'input_shape' must be (channels, height, width), got "
                         f"{tuple(input_shape)}")
    for name, value in (("layers", layers), ("steps", steps), ("C", channels),
                        ("multiplier", multiplier)):
        if value < 1:
            raise ValueError(f"{where}: argument '{name}' must be >= 1, got {value}")
    if multiplier > steps:
        raise ValueError(f"{where}: argument 'multiplier' ({multiplier}) must not exceed "
                         f"'steps' ({steps})")
    in_channels, height, width = (int(v) for v in input_shape)
    factor = 2 ** len(reduction_layers(layers))
    if height % factor or width % factor:
        raise ValueError(f"{where}: input size {height}x{width} cannot pass "
                         f"{len(reduction_layers(layers))} reduction cells of {layers} layers; "
                         f"height and width must be multiples of {factor}")
    return in_channels, height, width


class _DartsBase(nn.Module):
    """Stem, cells, pooling and classifier shared by the search and the evaluation network."""

    def _build(self, input_shape: Sequence[int], num_classes: int, channels: int, layers: int,
               steps: int, multiplier: int, stem_multiplier: int, make_cell) -> None:
        in_channels, _, _ = _check_sizes(type(self).__name__ + "()", input_shape, layers, steps,
                                         multiplier, channels)
        if num_classes < 1:
            raise ValueError(f"{type(self).__name__}(): argument 'num_classes' must be >= 1, got "
                             f"{num_classes}")
        current = stem_multiplier * channels
        self.stem = nn.Sequential(SparseConv2d(in_channels, current, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(current))
        c_prev_prev, c_prev, current = current, current, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        reductions = reduction_layers(layers)
        for index in range(layers):
            reduction = index in reductions
            if reduction:
                current *= 2
            cell = make_cell(c_prev_prev, c_prev, current, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.out_channels
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = SparseLinear(c_prev, num_classes)

    def _head(self, state: Tensor) -> Tensor:
        return self.classifier(self.global_pooling(state).flatten(1))


class MixedOp(nn.Module):
    """Σ_o w_o · o(x) over the primitives; pools get a non-affine BN as in DARTS."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList()
        for name in PRIMITIVES:
            op = make_op(name, channels, stride, affine=False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False))
            self.ops.append(op)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class SearchCell(nn.Module):
    def __init__(self, steps: int, multiplier: int, c_prev_prev: int, c_prev: int, channels: int,
                 reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        self.reduction, self.steps, self.multiplier = reduction, steps, multiplier
        self.out_channels = multiplier * channels
        self.preprocess0, self.preprocess1 = _preprocess(c_prev_prev, c_prev, channels,
                                                         reduction_prev, affine=False)
        self.edges = nn.ModuleList(MixedOp(channels, 2 if reduction and j < 2 else 1)
                                   for i in range(steps) for j in range(i + 2))

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            states.append(sum(self.edges[offset + j](h, weights[offset + j])
                              for j, h in enumerate(states)))
            offset += len(states) - 1
        return torch.cat(states[-self.multiplier:], dim=1)


def num_edges(steps: int) -> int:
    """Mixed edges of a search cell with ``steps`` intermediate nodes (14 for 4)."""
    return sum(i + 2 for i in range(steps))


class DartsSearchNetwork(_DartsBase):
    """The DARTS supernet on sparse layers; a cell outputs its last ``multiplier`` nodes (by
    default all ``steps``). α_normal / α_reduce: [num_edges(steps), 8], one row per
    edge in cell order (node 0's inputs 0, 1, node 1's inputs 0, 1, 2, ...), columns in
    :data:`PRIMITIVES` order; initialised 1e-3 · N(0, 1) from the global generator (seed it, as
    for the weights)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, C: int = 8, layers: int = 5,
                 steps: int = 4, multiplier: int | None = None,
                 stem_multiplier: int = 3) -> None:
        super().__init__()
        multiplier = steps if multiplier is None else multiplier
        self.steps, self.multiplier = steps, multiplier
        self._build(input_shape, num_classes, C, layers, steps, multiplier, stem_multiplier,
                    lambda *sizes: SearchCell(steps, multiplier, *sizes))
        edges = num_edges(steps)
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(edges, len(PRIMITIVES)))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(edges, len(PRIMITIVES)))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce]

    def forward(self, x: Tensor) -> Tensor:
        s0 = s1 = self.stem(x)
        normal = F.softmax(self.alphas_normal, dim=-1)
        reduce = F.softmax(self.alphas_reduce, dim=-1)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
        return self._head(s1)


class EvalCell(nn.Module):
    def __init__(self, genotype: Genotype, c_prev_prev: int, c_prev: int, channels: int,
                 reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        self.reduction = reduction
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.out_channels = len(self.concat) * channels
        self.preprocess0, self.preprocess1 = _preprocess(c_prev_prev, c_prev, channels,
                                                         reduction_prev, affine=True)
        self.sources = [source for _, source in edges]
        self.ops = nn.ModuleList(make_op(op, channels, 2 if reduction and source < 2 else 1, True)
                                 for op, source in edges)

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(len(self.ops) // 2):
            a, b = 2 * node, 2 * node + 1
            states.append(self.ops[a](states[self.sources[a]])
                          + self.ops[b](states[self.sources[b]]))
        return torch.cat([states[i] for i in self.concat], dim=1)


class DartsNetwork(_DartsBase):
    """The evaluation network: ``layers`` cells of ``genotype`` (DARTS-V2 by default) on sparse
    layers."""

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 genotype: Genotype = DARTS_V2, C: int = 8, layers: int = 5,
                 stem_multiplier: int = 3) -> None:
        super().__init__()
        if not isinstance(genotype, Genotype):
            raise TypeError(f"DartsNetwork(): argument 'genotype' must be a Genotype, got "
                            f"{type(genotype).__name__}")
        self.genotype = genotype
        self._build(input_shape, num_classes, C, layers, genotype.steps, 1, stem_multiplier,
                    lambda *sizes: EvalCell(genotype, *sizes))

    def forward(self, x: Tensor) -> Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self._head(s1)
