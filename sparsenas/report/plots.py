"""Plots every method uses: search trajectories, proxy against accuracy with Kendall's τ, Pareto
fronts of accuracy against a cost, and τ against training epochs per metric.

Plain functions of plain data (lists, arrays, dicts) and a path; each writes one PNG atomically
(:func:`sparsenas.report.io.save_figure`) and returns the path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sparsenas.report.io import save_figure  # noqa: E402
from sparsenas.report.stats import bootstrap_ci, kendall_tau  # noqa: E402


def _finish(figure: plt.Figure, axes: plt.Axes, path: str | Path, xlabel: str, ylabel: str,
            title: str | None = None, legend_size: float | None = 10) -> Path:
    """Labels, grid and legend (``legend_size`` None: no legend; ``title`` None: keep it), then
    the atomic save."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title is not None:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    if legend_size is not None:
        axes.legend(fontsize=legend_size)
    return save_figure(figure, path)


def _non_empty(name: str, values: Mapping | Sequence) -> None:
    if len(values) == 0:
        raise ValueError(f"argument {name!r} is empty: nothing to plot")


def running_best(scores: Sequence[float], maximize: bool = True) -> np.ndarray:
    """The best score seen after each evaluation (nan scores are skipped)."""
    values = np.asarray(scores, dtype=np.float64)
    filled = np.where(np.isnan(values), -np.inf if maximize else np.inf, values)
    best = np.maximum.accumulate(filled) if maximize else np.minimum.accumulate(filled)
    return np.where(np.isinf(best), np.nan, best)


def plot_search_trajectory(runs: Mapping[str, Sequence[Sequence[float]]], path: str | Path,
                           xlabel: str = "evaluations", ylabel: str = "best score",
                           title: str = "", maximize: bool = True) -> Path:
    """Best score so far against evaluations (or generations): one line per label, the mean over
    that label's runs (each a list of scores, one per evaluation) with a ± std band. Runs of one
    label are cut to the shortest."""
    _non_empty("runs", runs)
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, label_runs in runs.items():
        _non_empty(f"runs[{label!r}]", label_runs)
        length = min(len(run) for run in label_runs)
        if length == 0:
            raise ValueError(f"argument 'runs[{label!r}]' holds an empty run")
        curves = np.array([running_best(run[:length], maximize) for run in label_runs])
        mean, std = np.nanmean(curves, 0), np.nanstd(curves, 0)
        steps = np.arange(1, length + 1)
        line, = axes.plot(steps, mean, label=f"{label} ({len(label_runs)} runs)")
        axes.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    return _finish(figure, axes, path, xlabel, ylabel, title)


def plot_proxy_vs_accuracy(proxy: Sequence[float], accuracy: Sequence[float], path: str | Path,
                           proxy_name: str = "proxy", accuracy_name: str = "test accuracy",
                           title: str = "", log_x: bool = False, num_bootstrap: int = 1000,
                           seed: int = 0) -> Path:
    """A scatter of proxy scores against accuracies, titled with Kendall's τ over the pairs whose
    proxy is defined (not nan; ±inf ranks as an extreme) and its bootstrap 95% interval. Points
    with an infinite proxy are counted in τ but cannot be drawn; the title says how many."""
    x, y = np.asarray(proxy, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"arguments 'proxy' and 'accuracy' must be 1-D of one length, got "
                         f"shapes {x.shape} and {y.shape}")
    _non_empty("proxy", x)
    defined = ~np.isnan(x) & ~np.isnan(y)
    tau = kendall_tau(x[defined], y[defined])
    low, high = bootstrap_ci(x[defined], y[defined], kendall_tau, num_bootstrap, seed)
    drawn = defined & np.isfinite(x)
    if log_x:
        drawn &= x > 0
    figure, axes = plt.subplots(figsize=(5, 4))
    axes.scatter(x[drawn], y[drawn], s=18, alpha=0.8)
    if log_x:
        axes.set_xscale("log")
    interval = "" if math.isnan(low) else f" [{low:.2f}, {high:.2f}]"
    heading = f"Kendall τ = {tau:.3f}{interval}, n = {int(defined.sum())}"
    hidden = int(defined.sum() - drawn.sum())
    if hidden:
        heading += f" ({hidden} not drawn)"
    axes.set_title(f"{title}\n{heading}" if title else heading, fontsize=10)
    return _finish(figure, axes, path, proxy_name, accuracy_name, legend_size=None)


def pareto_front(costs: Sequence[float], accuracies: Sequence[float]) -> list[int]:
    """Indices of the non-dominated points (no other point has a cost as low and an accuracy as
    high, one of them strictly), ordered by cost."""
    c, a = np.asarray(costs, dtype=np.float64), np.asarray(accuracies, dtype=np.float64)
    if c.ndim != 1 or c.shape != a.shape:
        raise ValueError(f"arguments 'costs' and 'accuracies' must be 1-D of one length, got "
                         f"shapes {c.shape} and {a.shape}")
    front = []
    for i in range(len(c)):
        dominated = (c <= c[i]) & (a >= a[i]) & ((c < c[i]) | (a > a[i]))
        if not dominated.any():
            front.append(i)
    return sorted(front, key=lambda i: (c[i], -a[i]))


def plot_pareto_front(series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                      path: str | Path, cost_name: str = "FLOPs",
                      accuracy_name: str = "test accuracy", title: str = "",
                      log_x: bool = False) -> Path:
    """Accuracy against a cost (FLOPs, parameters, latency …) for several labelled series of
    (costs, accuracies); each series' non-dominated points are joined by a step line."""
    _non_empty("series", series)
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, (costs, accuracies) in series.items():
        front = pareto_front(costs, accuracies)
        c, a = np.asarray(costs, dtype=np.float64), np.asarray(accuracies, dtype=np.float64)
        points = axes.scatter(c, a, s=14, alpha=0.5, label=label)
        axes.step(c[front], a[front], where="post", color=points.get_facecolor()[0][:3],
                  linewidth=1.5)
    if log_x:
        axes.set_xscale("log")
    return _finish(figure, axes, path, cost_name, accuracy_name, title)


def plot_tau_vs_epochs(curves: Mapping[str, Mapping[int, tuple[float, float, float]]],
                       path: str | Path, title: str = "") -> Path:
    """Kendall's τ against training epochs (0 = at initialisation), one line per metric from
    ``{metric: {epochs: (tau, low, high)}}``, with its interval as a band."""
    _non_empty("curves", curves)
    figure, axes = plt.subplots(figsize=(6, 4))
    for metric, points in curves.items():
        _non_empty(f"curves[{metric!r}]", points)
        epochs = sorted(points)
        tau, low, high = (np.array([points[e][i] for e in epochs], dtype=np.float64)
                          for i in range(3))
        line, = axes.plot(epochs, tau, marker="o", label=metric)
        axes.fill_between(epochs, low, high, color=line.get_color(), alpha=0.15)
    axes.axhline(0.0, color="black", linewidth=0.8)
    return _finish(figure, axes, path, "training epochs before the metric (0 = at initialisation)",
                   "Kendall τ with final accuracy", title, legend_size=8)
