"""NTK metrics, LGA, rank correlations, the class-balanced sampler and the registered proxies,
on hand-made matrices with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsenas.ntk import (
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
from sparsenas.ntk.metrics import EIGEN_SCORE_SHIFT
from sparsenas.proxies import get_proxy, list_proxies


def test_condition_number_known_values(device):
    assert condition_number(torch.diag(torch.tensor([1.0, 2.0, 4.0], device=device))) == \
        pytest.approx(4.0)
    rotation = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64, device=device)
    kernel = rotation @ torch.diag(torch.tensor([3.0, 0.5], dtype=torch.float64,
                                                device=device)) @ rotation.T
    assert condition_number(kernel) == pytest.approx(6.0)


def test_condition_number_defined_values(device):
    assert condition_number(torch.ones(3, 3, device=device)) == math.inf  # singular
    assert condition_number(torch.tensor([[1.0, 2.0], [2.0, 1.0]], device=device)) == math.inf
    assert condition_number(torch.zeros(2, 2, device=device)) == math.inf
    nan_kernel = torch.eye(3, device=device)
    nan_kernel[0, 1] = math.nan
    assert math.isnan(condition_number(nan_kernel))
    inf_kernel = torch.eye(3, device=device)
    inf_kernel[2, 2] = math.inf
    assert math.isnan(condition_number(inf_kernel))


def test_trace_frobenius_mean(device):
    kernel = torch.tensor([[2.0, 1.0], [1.0, 3.0]], device=device)
    assert trace(kernel) == pytest.approx(5.0)
    assert frobenius_norm(kernel) == pytest.approx(math.sqrt(15.0))
    assert mean_entry(kernel) == pytest.approx(7.0 / 4.0)


def test_eigen_score(device):
    k = EIGEN_SCORE_SHIFT
    identity_score = -3 * (math.log(1 + k) + 1 / (1 + k))
    assert eigen_score(torch.eye(3, device=device)) == pytest.approx(identity_score)
    # Scaling the examples' gradients does not change the normalised kernel.
    assert eigen_score(torch.diag(torch.tensor([2.0, 5.0, 0.1], device=device))) == \
        pytest.approx(identity_score)
    # Two parallel gradients: C = [[1, 1], [1, 1]] has eigenvalues 0 and 2.
    parallel = torch.tensor([[4.0, 2.0], [2.0, 1.0]], device=device)
    expected = -((math.log(k) + 1 / k) + (math.log(2 + k) + 1 / (2 + k)))
    assert eigen_score(parallel) == pytest.approx(expected, rel=1e-6)
    assert eigen_score(torch.eye(2, device=device)) > eigen_score(parallel)
    assert math.isnan(eigen_score(torch.diag(torch.tensor([1.0, 0.0], device=device))))


def test_lga_known_values(device):
    labels = torch.tensor([0, 0, 1, 1, 2], device=device)
    target = (labels[:, None] == labels[None, :]).double() * 2 - 1
    assert label_gradient_alignment(target, labels) == pytest.approx(1.0)
    assert label_gradient_alignment(-target + 7.0, labels) == pytest.approx(-1.0)
    assert label_gradient_alignment(3 * target + 1.0, labels) == pytest.approx(1.0)
    # A hand-computed case: labels [0, 0, 1]; Y has mean 1/9, Θ has mean 8/9.
    kernel = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 2.0]], device=device)
    small = torch.tensor([0, 0, 1], device=device)
    y = torch.tensor([[1, 1, -1], [1, 1, -1], [-1, -1, 1]], dtype=torch.float64) - 1 / 9
    centred = kernel.double().cpu() - 8 / 9
    expected = (centred * y).sum() / (centred.norm() * y.norm())
    assert label_gradient_alignment(kernel, small) == pytest.approx(expected.item())


def test_lga_edge_cases(device):
    kernel = torch.eye(4, device=device)
    with pytest.raises(ValueError, match="single class"):
        label_gradient_alignment(kernel, torch.zeros(4, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="labels"):
        label_gradient_alignment(kernel, torch.tensor([0, 1, 0], device=device))
    with pytest.raises(ValueError, match="kernel"):
        label_gradient_alignment(torch.ones(2, 3, device=device), torch.tensor([0, 1]))
    labels = torch.tensor([0, 1, 0, 1], device=device)
    assert math.isnan(label_gradient_alignment(torch.full((4, 4), 2.0, device=device), labels))
    nan_kernel = kernel.clone()
    nan_kernel[1, 2] = math.nan
    assert math.isnan(label_gradient_alignment(nan_kernel, labels))


def test_ntk_regression_accuracy(device):
    features = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).double()
    train_labels = torch.tensor([0, 1, 2, 0, 1, 2])
    test_features = features[[2, 0, 1]]
    test_labels = torch.tensor([2, 0, 1])
    kernel = (features @ features.T + 0.1 * torch.eye(6)).to(device)
    cross = (test_features @ features.T).to(device)
    assert ntk_regression_accuracy(kernel, cross, train_labels, test_labels, 3) == 1.0
    # Anti-aligned held-out kernel: every prediction is wrong.
    assert ntk_regression_accuracy(kernel, -cross, train_labels, test_labels, 3) == 0.0
    with pytest.raises(ValueError, match="kernel_test_train"):
        ntk_regression_accuracy(kernel, cross[:, :4], train_labels, test_labels, 3)
    with pytest.raises(ValueError, match="labels"):
        ntk_regression_accuracy(kernel, cross, train_labels[:5], test_labels, 3)
    bad = kernel.clone()
    bad[0, 0] = math.inf
    assert math.isnan(ntk_regression_accuracy(bad, cross, train_labels, test_labels, 3))


def test_metrics_reject_non_square():
    for metric in (condition_number, trace, frobenius_norm, mean_entry, eigen_score):
        with pytest.raises(ValueError, match="kernel"):
            metric(torch.ones(2, 3))
        with pytest.raises(ValueError, match="kernel"):
            metric(torch.ones(0, 0))


def test_rank_correlations():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman_rho(torch.tensor([1.0, 2.0, 3.0]), [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_class_balanced_indices():
    labels = torch.arange(40) % 5
    batch = class_balanced_indices(labels, per_class=3, seed=1)
    assert len(batch) == 15 and len(set(batch.tolist())) == 15
    assert torch.bincount(labels[batch], minlength=5).tolist() == [3] * 5
    assert torch.equal(batch, class_balanced_indices(labels, per_class=3, seed=1))
    assert not torch.equal(batch, class_balanced_indices(labels, per_class=3, seed=2))
    subset = class_balanced_indices(labels, per_class=2, seed=0, num_classes=2)
    counts = torch.bincount(labels[subset], minlength=5)
    assert sorted(counts.tolist()) == [0, 0, 0, 2, 2]
    with pytest.raises(ValueError, match="per_class"):
        class_balanced_indices(labels, per_class=9, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        class_balanced_indices(labels, per_class=1, seed=0, num_classes=6)


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def test_proxies_registered_and_higher_is_better():
    names = {"ntk_condition_number", "ntk_trace", "ntk_frobenius", "ntk_mean", "ntk_eigen_score",
             "lga", "ntk_regression_accuracy"}
    assert names <= set(list_proxies())
    model = _small_net().train()
    x = torch.randn(12, 4)
    y = torch.arange(12) % 3
    scores = {name: get_proxy(name)(model, x, y) for name in names}
    assert all(isinstance(v, float) for v in scores.values())
    assert model.training and model[1].training  # mode restored after eval-mode evaluation
    from sparsenas.ntk import empirical_ntk
    kernel = empirical_ntk(model.eval(), x)
    assert scores["ntk_condition_number"] == pytest.approx(-condition_number(kernel))
    assert scores["ntk_trace"] == pytest.approx(trace(kernel))
    assert scores["lga"] == pytest.approx(label_gradient_alignment(kernel, y))
    assert 0.0 <= scores["ntk_regression_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="single class"):
        get_proxy("lga")(model, x, torch.zeros(12, dtype=torch.long))
