"""Empirical NTK, NTK metrics and Label-Gradient Alignment (the proxies built on them are in
:mod:`sparsenas.proxies.ntk`)."""

from sparsenas.ntk.empirical import MODES, empirical_ntk
from sparsenas.ntk.kernels import ntk_gram_block_, ntk_gram_kernel, ntk_masked_block_
from sparsenas.ntk.metrics import (
    class_balanced_indices,
    condition_number,
    eigen_score,
    frobenius_norm,
    kendall_tau,
    label_gradient_alignment,
    mean_entry,
    ntk_regression_accuracy,
    spearman_rho,
    trace,
)

__all__ = [
    "MODES", "class_balanced_indices", "condition_number", "eigen_score", "empirical_ntk",
    "frobenius_norm", "kendall_tau", "label_gradient_alignment", "mean_entry",
    "ntk_gram_block_", "ntk_gram_kernel", "ntk_masked_block_", "ntk_regression_accuracy",
    "spearman_rho", "trace",
]
