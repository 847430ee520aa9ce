"""The node-sparsity study's groups and plots: test accuracy against sparsity and convergence
curves of search-selected masks, random masks and the dense parent."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sparsenas.report.io import save_figure  # noqa: E402
from sparsenas.store import TrialRecord  # noqa: E402

_COLOURS = {"search": "tab:blue", "random": "tab:orange", "dense": "tab:gray"}
_LABELS = {"search": "search-selected", "random": "random", "dense": "dense parent"}


def epochs_to_fraction(val_acc: list[float], fraction: float = 0.95) -> int:
    """First epoch (1-based) whose validation accuracy reaches ``fraction`` of the final one."""
    target = fraction * val_acc[-1]
    return next(epoch for epoch, acc in enumerate(val_acc, start=1) if acc >= target)


@dataclass
class Group:
    """Finished trials of one role at one sparsity, over all seeds."""

    test_acc: list[float] = field(default_factory=list)
    epochs_to_95: list[int] = field(default_factory=list)
    curves: list[list[float]] = field(default_factory=list)

    def add(self, trial: TrialRecord) -> None:
        curve = [row["val_acc"] for row in trial.epochs]
        self.test_acc.append(trial.final["test_acc"])
        self.epochs_to_95.append(epochs_to_fraction(curve))
        self.curves.append(curve)

    @property
    def mean(self) -> float:
        return float(np.mean(self.test_acc)) if self.test_acc else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.test_acc, ddof=1)) if len(self.test_acc) > 1 else 0.0


def plot_accuracy_vs_sparsity(sparsities: list[float], search: list[Group], random: list[Group],
                              dense: Group, title: str, path: str | Path) -> Path:
    """Test accuracy (mean ± std over seeds and masks) against node sparsity for search-selected
    and random masks; the dense parent as a band."""
    figure, axes = plt.subplots(figsize=(6, 4))
    offset = 0.004  # keeps the two error bars apart at equal sparsity
    for role, groups, shift in (("search", search, -offset), ("random", random, offset)):
        means = [100 * g.mean for g in groups]
        stds = [100 * g.std for g in groups]
        axes.errorbar(np.array(sparsities) + shift, means, yerr=stds, marker="o", capsize=3,
                      color=_COLOURS[role], label=_LABELS[role])
    if dense.test_acc:
        mean, std = 100 * dense.mean, 100 * dense.std
        axes.axhline(mean, color=_COLOURS["dense"], linestyle="--", label=_LABELS["dense"])
        axes.axhspan(mean - std, mean + std, color=_COLOURS["dense"], alpha=0.2)
    axes.set_xlabel("node sparsity")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def _mean_curve(group: Group) -> tuple[np.ndarray, np.ndarray]:
    length = min(len(c) for c in group.curves)  # early stopping can shorten runs
    curves = 100 * np.array([c[:length] for c in group.curves])
    return curves.mean(0), curves.std(0)


def plot_convergence(sparsities: list[float], search: list[Group], random: list[Group],
                     dense: Group, path: str | Path) -> Path:
    """Validation accuracy against epoch (mean ± std), one panel per sparsity."""
    panels_data = [(s, a, b) for s, a, b in zip(sparsities, search, random) if a.curves or b.curves]
    panels = max(1, len(panels_data))
    figure, axes = plt.subplots(1, panels, figsize=(3.5 * panels, 3.2), sharey=True,
                                squeeze=False)
    for axis, (sparsity, search_group, random_group) in zip(axes[0], panels_data):
        for role, group in (("dense", dense), ("search", search_group),
                            ("random", random_group)):
            if not group.curves:
                continue
            mean, std = _mean_curve(group)
            epochs = np.arange(1, len(mean) + 1)
            axis.plot(epochs, mean, color=_COLOURS[role], label=_LABELS[role])
            axis.fill_between(epochs, mean - std, mean + std, color=_COLOURS[role], alpha=0.2)
        axis.set_title(f"sparsity {sparsity:g}")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (%)")
    axes[0][0].legend(loc="lower right")
    return save_figure(figure, path)
