"""Shared plots: each writes a non-empty PNG atomically; Pareto fronts and running bests on fixed
points."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparsenas.report.plots import (pareto_front, plot_pareto_front, plot_proxy_vs_accuracy,
                                    plot_search_trajectory, plot_tau_vs_epochs, running_best)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_pareto_front_on_fixed_points():
    costs = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 0.5]
    accuracies = [0.5, 0.7, 0.6, 0.65, 0.9, 0.9, 0.4]
    # (2, 0.6) is dominated by (2, 0.7); (3, 0.65) by (2, 0.7); (5, 0.9) by (4, 0.9).
    assert pareto_front(costs, accuracies) == [6, 0, 1, 4]
    assert pareto_front([1.0], [0.3]) == [0]
    assert pareto_front([1.0, 1.0], [0.3, 0.3]) == [0, 1]  # equal points dominate neither
    with pytest.raises(ValueError, match="one length"):
        pareto_front([1.0, 2.0], [0.1])


def test_running_best():
    assert running_best([0.1, 0.3, 0.2, math.nan, 0.5]).tolist() == [0.1, 0.3, 0.3, 0.3, 0.5]
    assert running_best([3.0, 1.0, 2.0], maximize=False).tolist() == [3.0, 1.0, 1.0]


def test_each_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    runs = {"lga": [rng.random(12).tolist() for _ in range(3)],
            "oracle": [rng.random(10).tolist() for _ in range(2)]}
    written = [
        plot_search_trajectory(runs, tmp_path / "trajectory.png", xlabel="generations"),
        plot_proxy_vs_accuracy([0.1, 0.5, math.inf, 0.3, math.nan, 0.9],
                               [0.5, 0.7, 0.2, 0.6, 0.9, 0.8], tmp_path / "scatter.png",
                               proxy_name="LGA", title="mnist1d", num_bootstrap=50),
        plot_pareto_front({"search": ([1, 2, 3], [0.5, 0.7, 0.6]),
                           "random": ([1.5, 2.5], [0.4, 0.8])}, tmp_path / "pareto.png",
                          cost_name="parameters", log_x=True),
        plot_tau_vs_epochs({"lga": {0: (0.1, -0.1, 0.3), 1: (0.4, 0.2, 0.6), 3: (0.5, 0.3, 0.7)},
                            "trace": {0: (0.2, 0.0, 0.4), 1: (0.2, 0.0, 0.4)}},
                           tmp_path / "tau.png"),
    ]
    assert [p.name for p in written] == ["trajectory.png", "scatter.png", "pareto.png", "tau.png"]
    assert all(_is_png(p) for p in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    with pytest.raises(ValueError, match="empty"):
        plot_tau_vs_epochs({}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
