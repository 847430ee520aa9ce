"""Cell diagrams of DARTS genotypes as PNG (matplotlib only).

Each cell is drawn left to right: the inputs c_{k-2} and c_{k-1}, the intermediate nodes 0..n-1,
and the output c_{k}; every edge carries its operation's name, and the concatenated nodes feed
c_{k} with unlabelled edges.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from sparsenas.models.darts import Edge, Genotype  # noqa: E402
from sparsenas.report.io import save_figure  # noqa: E402

_NODE_STYLE = {
    "input": dict(boxstyle="round,pad=0.35", facecolor="#a6d96a", edgecolor="black"),
    "node": dict(boxstyle="round,pad=0.35", facecolor="#abd9e9", edgecolor="black"),
    "output": dict(boxstyle="round,pad=0.35", facecolor="#fdae61", edgecolor="black"),
}


def _positions(steps: int) -> dict[int | str, tuple[float, float]]:
    """Node -> (x, y): inputs on the left, intermediate nodes on a rising diagonal, output on the
    right."""
    height = max(steps - 1, 1)
    positions: dict[int | str, tuple[float, float]] = {0: (0.0, height * 0.75),
                                                       1: (0.0, height * 0.25)}
    for node in range(steps):
        positions[node + 2] = (1.0 + node, node * height / max(steps - 1, 1))
    positions["out"] = (steps + 1.0, height * 0.5)
    return positions


def draw_cell(axes: Axes, edges: tuple[Edge, ...], concat: tuple[int, ...], title: str) -> None:
    """One cell on ``axes``: (op, input) edges, two per intermediate node, in node order."""
    steps = len(edges) // 2
    positions = _positions(steps)
    names = {0: "c_{k-2}", 1: "c_{k-1}", "out": "c_{k}"}
    names.update({node + 2: str(node) for node in range(steps)})
    for position, (op, source) in enumerate(edges):
        target = position // 2 + 2
        bend = 0.25 if position % 2 else -0.25
        _arrow(axes, positions[source], positions[target], bend)
        (x0, y0), (x1, y1) = positions[source], positions[target]
        # label near the curve's middle, pushed the way the curve bends
        mid_x = (x0 + x1) / 2 + bend * (y1 - y0) * 0.5
        mid_y = (y0 + y1) / 2 - bend * (x1 - x0) * 0.5
        axes.text(mid_x, mid_y, op, fontsize=7, ha="center", va="center",
                  bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none",
                            alpha=0.85))
    for state in concat:
        _arrow(axes, positions[state], positions["out"], 0.0, colour="gray")
    for node, (x, y) in positions.items():
        kind = "output" if node == "out" else "input" if node in (0, 1) else "node"
        axes.text(x, y, f"${names[node]}$" if node in (0, 1, "out") else names[node],
                  ha="center", va="center", fontsize=10, bbox=_NODE_STYLE[kind], zorder=3)
    xs = [x for x, _ in positions.values()]
    ys = [y for _, y in positions.values()]
    axes.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    axes.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    axes.set_title(title)
    axes.axis("off")


def _arrow(axes: Axes, start: tuple[float, float], end: tuple[float, float], bend: float,
           colour: str = "black") -> None:
    axes.annotate("", xy=end, xytext=start, zorder=1,
                  arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.0, shrinkA=14, shrinkB=14,
                                  connectionstyle=f"arc3,rad={bend}"))


def plot_genotype(genotype: Genotype, path: str | Path, title: str | None = None) -> Path:
    """The normal and the reduction cell of ``genotype`` side by side, written atomically."""
    width = 2.2 * (genotype.steps + 2)
    figure, (normal, reduce) = plt.subplots(1, 2, figsize=(2 * width, 0.9 * width / 2 + 1.5))
    draw_cell(normal, genotype.normal, genotype.normal_concat, "normal cell")
    draw_cell(reduce, genotype.reduce, genotype.reduce_concat, "reduction cell")
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(figure, path)
