"""PNG plots of study results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from sparsenas.search.report import Group, StudySummary

_COLOURS = {"search": "tab:blue", "random": "tab:orange", "dense": "tab:gray"}


def _save(figure: plt.Figure, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    figure.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(figure)
    os.replace(tmp, path)


def plot_accuracy_vs_sparsity(summary: StudySummary, path: str | Path) -> Path:
    """Test accuracy (mean ± std over seeds and masks) against node sparsity for search-selected
    and random masks; the dense parent as a band."""
    figure, axes = plt.subplots(figsize=(6, 4))
    sparsities = [row.sparsity for row in summary.rows]
    offset = 0.004  # keeps the two error bars apart at equal sparsity
    for role, shift in (("search", -offset), ("random", offset)):
        groups = [getattr(row, role) for row in summary.rows]
        means = [100 * g.mean for g in groups]
        stds = [100 * g.std for g in groups]
        label = "search-selected" if role == "search" else "random"
        axes.errorbar(np.array(sparsities) + shift, means, yerr=stds, marker="o", capsize=3,
                      color=_COLOURS[role], label=label)
    if summary.dense.test_acc:
        mean, std = 100 * summary.dense.mean, 100 * summary.dense.std
        axes.axhline(mean, color=_COLOURS["dense"], linestyle="--", label="dense parent")
        axes.axhspan(mean - std, mean + std, color=_COLOURS["dense"], alpha=0.2)
    axes.set_xlabel("node sparsity")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"{summary.config['dataset']}: {summary.config['model']} "
                   f"{summary.config['widths']}")
    axes.grid(alpha=0.3)
    axes.legend()
    path = Path(path)
    _save(figure, path)
    return path


def _mean_curve(group: Group) -> tuple[np.ndarray, np.ndarray]:
    length = min(len(c) for c in group.curves)  # early stopping can shorten runs
    curves = 100 * np.array([c[:length] for c in group.curves])
    return curves.mean(0), curves.std(0)


def plot_convergence(summary: StudySummary, path: str | Path) -> Path:
    """Validation accuracy against epoch (mean ± std), one panel per sparsity."""
    rows = [row for row in summary.rows if row.search.curves or row.random.curves]
    panels = max(1, len(rows))
    figure, axes = plt.subplots(1, panels, figsize=(3.5 * panels, 3.2), sharey=True,
                                squeeze=False)
    for axis, row in zip(axes[0], rows):
        for role, group in (("dense", summary.dense), ("search", row.search),
                            ("random", row.random)):
            if not group.curves:
                continue
            mean, std = _mean_curve(group)
            epochs = np.arange(1, len(mean) + 1)
            label = {"search": "search-selected", "random": "random",
                     "dense": "dense parent"}[role]
            axis.plot(epochs, mean, color=_COLOURS[role], label=label)
            axis.fill_between(epochs, mean - std, mean + std, color=_COLOURS[role], alpha=0.2)
        axis.set_title(f"sparsity {row.sparsity:g}")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (%)")
    axes[0][0].legend(loc="lower right")
    path = Path(path)
    _save(figure, path)
    return path
