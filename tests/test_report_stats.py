"""Report statistics: rank correlations and Welch's test against scipy.stats on fixed data, and
seeded bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sparsenas.report.stats import (bootstrap_ci, kendall_tau, rank_correlation, spearman_rho,
                                    welch_p_value)

PROXY = [0.3, 1.2, -0.5, 2.2, 0.9, 0.1, 1.7, 3.0, -1.1, 0.4, 2.5, 1.0]
ACCURACY = [0.61, 0.70, 0.52, 0.81, 0.66, 0.66, 0.72, 0.86, 0.50, 0.63, 0.74, 0.71]


def test_correlations_match_scipy_and_known_values():
    assert kendall_tau(PROXY, ACCURACY) == pytest.approx(
        stats.kendalltau(PROXY, ACCURACY).statistic, abs=1e-15)
    assert spearman_rho(PROXY, ACCURACY) == pytest.approx(
        stats.spearmanr(PROXY, ACCURACY).statistic, abs=1e-15)
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # One discordant pair of six: τ = (5 - 1) / 6.
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    assert spearman_rho([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert math.isnan(kendall_tau([1.0], [2.0])) and math.isnan(spearman_rho([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="one length"):
        kendall_tau([1, 2], [1, 2, 3])


def test_bootstrap_interval_is_seeded_and_brackets_the_statistic():
    low, high = bootstrap_ci(PROXY, ACCURACY, kendall_tau, num=300, seed=4)
    assert (low, high) == bootstrap_ci(PROXY, ACCURACY, kendall_tau, num=300, seed=4)
    assert (low, high) != bootstrap_ci(PROXY, ACCURACY, kendall_tau, num=300, seed=5)
    assert -1 <= low <= kendall_tau(PROXY, ACCURACY) <= high <= 1
    # scipy's percentile bootstrap over the same seed gives the same bounds on defined data.
    reference = stats.bootstrap((PROXY, ACCURACY), kendall_tau, n_resamples=300, paired=True,
                                vectorized=False, method="percentile",
                                rng=np.random.default_rng(4)).confidence_interval
    assert (low, high) == pytest.approx((reference.low, reference.high), abs=1e-12)
    assert all(math.isnan(v) for v in bootstrap_ci([1, 2], [2, 1], kendall_tau))
    # Resamples that draw only the tied accuracies are undefined and left out, not fatal.
    low, high = bootstrap_ci([1, 2, 3, 4, 5, 6], [0.1] * 5 + [0.5], kendall_tau, num=200)
    assert 0 < low <= high <= 1
    with pytest.raises(ValueError, match="'num'"):
        bootstrap_ci(PROXY, ACCURACY, kendall_tau, num=0)


def test_rank_correlation_row_and_welch():
    row = rank_correlation(PROXY, ACCURACY, num=200, seed=1)
    assert row["kendall_tau"] == kendall_tau(PROXY, ACCURACY) and row["n"] == 12
    assert row["tau_low"] <= row["kendall_tau"] <= row["tau_high"]
    assert row["spearman_low"] <= row["spearman"] <= row["spearman_high"]
    a, b = [0.81, 0.83, 0.80, 0.85], [0.78, 0.80, 0.79]
    assert welch_p_value(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert math.isnan(welch_p_value([0.8], b)) and math.isnan(welch_p_value([1, 1], [2, 2]))
