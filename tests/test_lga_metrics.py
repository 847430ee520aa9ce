"""LGA study metrics: one NTK per evaluation (checked against torch.func), the label-shuffle
control, and metrics after epochs of one training run, K candidates equal to single networks."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch.func import functional_call, jacrev

from sparsenas.data import load_dataset
from sparsenas.methods.lga.metrics import (LABEL_AGNOSTIC, METRICS, check_metric, kernel_metrics,
                                           metric_batch, metrics_during_training,
                                           nonlinear_advantage, ntk_metrics, shuffled_labels)
from sparsenas.models import arch_candidate_batch, build_arch, decode_arch
from sparsenas.ntk import label_gradient_alignment
from sparsenas.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    full = load_dataset("digits", seed=0)
    return replace(full, x_train=full.x_train[:240], y_train=full.y_train[:240],
                   x_val=full.x_val[:120], y_val=full.y_val[:120])


def _jacobian_ntk(model, x):
    """Θ = J Jᵀ of the summed logits from torch.func (the independent computation)."""
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def summed(p, xi):
        return functional_call(model, (p, buffers), (xi.unsqueeze(0),)).sum()

    rows = []
    for xi in x:
        grads = jacrev(summed)(params, xi)
        rows.append(torch.cat([g.flatten() for g in grads.values()]).double())
    jac = torch.stack(rows)
    return jac @ jac.T


def test_metrics_come_from_one_ntk_and_match_torch_func(data):
    model = build_arch("cnn:w4:k3:gelu:res:keep=1/0.5", data.input_shape, 10, seed=1)
    batch = metric_batch(data, per_class=2, seed=4)
    assert len(batch.y_fit) == len(batch.y_held) == 20
    assert batch.y_fit.bincount().tolist() == [2] * 10
    model.train()
    metrics = ntk_metrics(model, batch, 10, shuffle_seed=2)
    assert model.training and set(metrics) == set(METRICS)
    kernel = _jacobian_ntk(model, torch.cat([batch.x_fit, batch.x_held]))
    expected = kernel_metrics(kernel[:20, :20], kernel[20:, :20], batch.y_fit, batch.y_held, 10)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert metrics["lga_shuffled"] == pytest.approx(
        label_gradient_alignment(kernel[:20, :20], shuffled_labels(batch.y_fit, 2)), rel=1e-6)
    assert -1 <= metrics["lga"] <= 1 and 0 <= metrics["ntk_regression_accuracy"] <= 1


def test_label_shuffle_control_keeps_label_agnostic_metrics(data):
    model = build_arch("mlp:w16:k0:tanh:plain:keep=1", data.input_shape, 10, seed=3)
    batch = metric_batch(data, per_class=4, seed=1)
    model.eval()
    kernel = _jacobian_ntk(model, torch.cat([batch.x_fit, batch.x_held]))
    fit, cross = kernel[:40, :40], kernel[40:, :40]
    true = kernel_metrics(fit, cross, batch.y_fit, batch.y_held, 10)
    shuffled = kernel_metrics(fit, cross, shuffled_labels(batch.y_fit, 0), batch.y_held, 10)
    for name in LABEL_AGNOSTIC:
        assert shuffled[name] == true[name], name  # exactly: they never read the labels
    assert shuffled["lga"] != true["lga"]
    assert sorted(shuffled_labels(batch.y_fit, 0).tolist()) == sorted(batch.y_fit.tolist())


def test_bad_input(data):
    model = build_arch("mlp:w8:k0:relu:plain:keep=1", data.input_shape, 10)
    kernel = torch.eye(10, dtype=torch.float64)
    with pytest.raises(ValueError, match="no repeated class"):
        kernel_metrics(kernel, kernel, torch.arange(10), torch.arange(10), 10)
    with pytest.raises(ValueError, match="unknown metric 'lga2'; known: condition_number"):
        check_metric("lga2")
    assert check_metric("lga") == "lga"
    batch = metric_batch(data, per_class=2, seed=0)
    with pytest.raises(ValueError, match="epoch counts >= 0"):
        metrics_during_training(model, data, batch, TrainConfig(epochs=1), seed=0, epochs=(1, -1))


def test_metrics_after_epochs_of_one_run_and_candidates_equal_singles(data):
    config = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    batch = metric_batch(data, per_class=3, seed=0)
    archs = [decode_arch(t) for t in ("mlp:w12:k0:relu:res:keep=1/1",
                                      "mlp:w12:k0:relu:res:keep=0.5/1",
                                      "mlp:w12:k0:relu:res:keep=1/0.5")]
    group = arch_candidate_batch(archs, data.input_shape, 10, seed=5)
    single = build_arch(archs[0].shape(), data.input_shape, 10)
    batched = metrics_during_training(group, data, batch, config, seed=7, epochs=(1, 2),
                                      single=single, device="cpu")
    assert len(batched) == 3 and all(sorted(r) == [0, 1, 2] for r in batched)
    for k in (0, 2):
        model = build_arch(archs[k], data.input_shape, 10, seed=5)
        alone = metrics_during_training(model, data, batch, config, seed=7, epochs=(2, 1),
                                        device="cpu")[0]
        for epoch in (0, 1, 2):
            for name in ("lga", "trace", "mean", "ntk_regression_accuracy", "lga_shuffled"):
                assert batched[k][epoch][name] == pytest.approx(alone[epoch][name], rel=1e-3,
                                                                abs=1e-6), (k, epoch, name)
        assert batched[k][2]["val_acc"] == pytest.approx(alone[2]["val_acc"])
        # The last entry is the trained network itself: one run, no retraining per epoch count.
        final = ntk_metrics(model, batch, 10)
        assert final["lga"] == pytest.approx(alone[2]["lga"], rel=1e-9)
        assert alone[1]["lga"] != alone[0]["lga"] != alone[2]["lga"]
    advantage = nonlinear_advantage(0.9, batched[0][0])
    assert advantage == pytest.approx(0.9 - batched[0][0]["ntk_regression_accuracy"])
    assert not math.isnan(batched[1][2]["condition_number"])
