"""Statistics shared by the reports: rank correlations between a proxy and accuracy with
bootstrap confidence intervals over architectures, and Welch's t-test.

The correlations are scipy.stats' (Kendall's τ-b, Spearman's ρ). Intervals are percentile
bootstrap intervals over architectures (paired resampling of the (proxy, accuracy) pairs, the
resampled indices drawn as ``scipy.stats.bootstrap`` draws them), seeded, so the same data and
seed always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

Statistic = Callable[[Sequence[float], Sequence[float]], float]


def _pairs(x: Sequence[float], y: Sequence[float], name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"{name}(): arguments 'x' and 'y' must be 1-D of one length, got shapes "
                         f"{x.shape} and {y.shape}")
    return x, y


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b of x and y (``nan`` for fewer than two pairs or a constant input)."""
    x, y = _pairs(x, y, "kendall_tau")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.kendalltau(x, y).statistic)


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ of x and y (``nan`` for fewer than two pairs or a constant input)."""
    x, y = _pairs(x, y, "spearman_rho")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def bootstrap_ci(x: Sequence[float], y: Sequence[float], statistic: Statistic,
                 num: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile-bootstrap interval of ``statistic(x, y)`` over ``num`` resamples
    of the pairs, drawn from ``seed``; resamples where the statistic is undefined (nan) are
    left out. (nan, nan) when there are fewer than three pairs or no resample is defined."""
    x, y = _pairs(x, y, "bootstrap_ci")
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"bootstrap_ci(): argument 'num' must be a positive int, got {num!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap_ci(): argument 'level' must be in (0, 1), got {level}")
    if len(x) < 3:
        return math.nan, math.nan
    # scipy.stats.bootstrap gives (nan, nan) as soon as one resample's statistic is undefined
    # (all drawn accuracies equal, common when several networks sit at chance); those resamples
    # are dropped here instead, and the interval is taken over the defined ones.
    rng = np.random.default_rng(seed)
    values = np.array([statistic(x[index], y[index])
                       for index in rng.integers(0, len(x), size=(num, len(x)))])
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def rank_correlation(x: Sequence[float], y: Sequence[float], num: int = 1000,
                     seed: int = 0) -> dict[str, float]:
    """τ, ρ and their bootstrap intervals as one row: ``kendall_tau``, ``tau_low``, ``tau_high``,
    ``spearman``, ``spearman_low``, ``spearman_high``, ``n``."""
    tau_low, tau_high = bootstrap_ci(x, y, kendall_tau, num, seed)
    rho_low, rho_high = bootstrap_ci(x, y, spearman_rho, num, seed)
    return {"kendall_tau": kendall_tau(x, y), "tau_low": tau_low, "tau_high": tau_high,
            "spearman": spearman_rho(x, y), "spearman_low": rho_low, "spearman_high": rho_high,
            "n": len(x)}


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) of the means of a and b; ``nan``
    when a group has fewer than two values or both groups are constant (no test is possible)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)
