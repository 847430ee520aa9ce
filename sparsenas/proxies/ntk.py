"""NTK proxies registered in :data:`sparsenas.proxies.PROXIES` (``proxy(model, x, y) -> float``, higher is
better).

Each proxy computes the ``"sum_logits"`` empirical NTK (the usual NAS choice) in float64 with
the model in eval mode (BatchNorm on running statistics, see :mod:`sparsenas.ntk.empirical`);
the model's train / eval mode is restored afterwards. Metrics where lower is better are negated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

from sparsenas.ntk import metrics
from sparsenas.ntk.empirical import empirical_ntk
from sparsenas.proxies import PROXIES


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


def _kernel(model: nn.Module, x: Tensor) -> Tensor:
    with _eval_mode(model):
        return empirical_ntk(model, x, mode="sum_logits")


@PROXIES.register("ntk_condition_number")
def ntk_condition_number(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """−λmax/λmin of the NTK (−inf for a singular kernel)."""
    return -metrics.condition_number(_kernel(model, x))


@PROXIES.register("ntk_trace")
def ntk_trace(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return metrics.trace(_kernel(model, x))


@PROXIES.register("ntk_frobenius")
def ntk_frobenius(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return metrics.frobenius_norm(_kernel(model, x))


@PROXIES.register("ntk_mean")
def ntk_mean(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return metrics.mean_entry(_kernel(model, x))


@PROXIES.register("ntk_eigen_score")
def ntk_eigen_score(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return metrics.eigen_score(_kernel(model, x))


@PROXIES.register("lga")
def lga(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Label-Gradient Alignment; the batch must hold at least two classes (ValueError)."""
    return metrics.label_gradient_alignment(_kernel(model, x), y)


@PROXIES.register("ntk_regression_accuracy")
def ntk_regression_accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """NTK kernel-regression accuracy: even-indexed examples train, odd-indexed are held out
    (a shuffled class-balanced batch keeps both halves balanced); classes = max(y) + 1."""
    kernel = _kernel(model, x)
    train, test = slice(0, None, 2), slice(1, None, 2)
    return metrics.ntk_regression_accuracy(kernel[train, train], kernel[test, train], y[train],
                                           y[test], num_classes=int(y.max().item()) + 1)
