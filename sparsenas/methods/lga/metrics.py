"""NTK metrics and Label-Gradient Alignment of one network, at initialisation and after a few
epochs of training.

Every metric of one evaluation comes from one empirical NTK (mode ``"sum_logits"``, float64
accumulation, BatchNorm in eval mode: per-example Jacobians are ill-defined with batch
statistics) over a *fit* batch, class-balanced from the training split, stacked with a *held-out*
batch, class-balanced from the validation split. The fit block Θ(fit, fit) gives the condition
number, trace, Frobenius norm, mean entry, eigenvalue score and LGA; the cross block
Θ(held, fit) the NTK-regression accuracy.

The label-shuffle control is LGA of the same fit block against a seeded permutation of its labels
(``lga_shuffled``). The label-agnostic metrics (:data:`LABEL_AGNOSTIC`) read the kernel only, so
shuffling leaves them unchanged by construction: :func:`kernel_metrics` computes every metric
from (kernel, labels) and the control is the same call with the labels permuted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparsenas.data import Dataset
from sparsenas.models import CandidateBatch
from sparsenas.ntk import (class_balanced_indices, condition_number, eigen_score, empirical_ntk,
                           frobenius_norm, label_gradient_alignment, mean_entry,
                           ntk_regression_accuracy, trace)
from sparsenas.seeds import derive_seed
from sparsenas.train import EpochMetrics, TrainConfig, Trainer, TrainerHook

LABEL_AGNOSTIC = ("condition_number", "trace", "frobenius_norm", "mean", "eigen_score")
METRICS = LABEL_AGNOSTIC + ("ntk_regression_accuracy", "lga", "lga_shuffled")
# Whether a larger value predicts a better network (the sign a rank correlation should have).
HIGHER_IS_BETTER = {"condition_number": False, "trace": True, "frobenius_norm": True,
                    "mean": True, "eigen_score": True, "ntk_regression_accuracy": True,
                    "lga": True, "lga_shuffled": True}


def check_metric(name: str) -> str:
    """``name`` if it is a metric of this module, else a ValueError listing the known ones."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return name


@dataclass(frozen=True)
class MetricBatch:
    """The examples every NTK of a study is taken on: x_fit [n, ...], y_fit [n] and x_held [m, ...],
    y_held [m]."""

    x_fit: Tensor
    y_fit: Tensor
    x_held: Tensor
    y_held: Tensor


def metric_batch(data: Dataset, per_class: int = 10, seed: int = 0) -> MetricBatch:
    """``per_class`` examples of every class from the training split (the fit batch: LGA needs
    repeated classes) and as many from the validation split (held out), drawn from ``seed``."""
    fit = class_balanced_indices(data.y_train, per_class, derive_seed("lga-fit", seed))
    held = class_balanced_indices(data.y_val, per_class, derive_seed("lga-held", seed))
    return MetricBatch(data.x_train[fit], data.y_train[fit], data.x_val[held], data.y_val[held])


def kernel_metrics(kernel_fit: Tensor, kernel_held_fit: Tensor, y_fit: Tensor, y_held: Tensor,
                   num_classes: int) -> dict[str, float]:
    """Every metric except the control from one kernel: Θ(fit, fit) [n, n] and Θ(held, fit)
    [m, n]. A ValueError when the fit labels hold no repeated class (LGA is undefined)."""
    if len(y_fit.unique()) == len(y_fit):
        raise ValueError("kernel_metrics(): argument 'y_fit' holds no repeated class; LGA needs "
                         "examples of one class to align (use metric_batch / "
                         "class_balanced_indices)")
    return {
        "condition_number": condition_number(kernel_fit),
        "trace": trace(kernel_fit),
        "frobenius_norm": frobenius_norm(kernel_fit),
        "mean": mean_entry(kernel_fit),
        "eigen_score": eigen_score(kernel_fit),
        "ntk_regression_accuracy": ntk_regression_accuracy(kernel_fit, kernel_held_fit, y_fit,
                                                           y_held, num_classes),
        "lga": label_gradient_alignment(kernel_fit, y_fit),
    }


def shuffled_labels(labels: Tensor, seed: int) -> Tensor:
    """A seeded permutation of ``labels`` (the label-shuffle control's targets)."""
    generator = torch.Generator().manual_seed(derive_seed("lga-shuffle", seed))
    return labels[torch.randperm(len(labels), generator=generator).to(labels.device)]


def ntk_metrics(model: nn.Module, batch: MetricBatch, num_classes: int,
                shuffle_seed: int = 0) -> dict[str, float]:
    """All of :data:`METRICS` for ``model`` (a single network) from one empirical NTK of the fit
    and held-out batches, taken in eval mode (the model's mode is restored)."""
    if isinstance(model, CandidateBatch):
        raise TypeError("ntk_metrics(): argument 'model' must be one network; for a "
                        "CandidateBatch load candidate_state_dict(k) into a single network")
    device = next(model.parameters()).device
    x = torch.cat([batch.x_fit, batch.x_held]).to(device)
    n = len(batch.x_fit)
    was_training = model.training
    model.eval()
    try:
        kernel = empirical_ntk(model, x, mode="sum_logits", dtype=torch.float64).cpu()
    finally:
        model.train(was_training)
    fit, held_fit = kernel[:n, :n], kernel[n:, :n]
    y_fit, y_held = batch.y_fit.cpu(), batch.y_held.cpu()
    metrics = kernel_metrics(fit, held_fit, y_fit, y_held, num_classes)
    metrics["lga_shuffled"] = label_gradient_alignment(fit, shuffled_labels(y_fit, shuffle_seed))
    return metrics


def nonlinear_advantage(trained_accuracy: float, init_metrics: dict[str, float]) -> float:
    """Trained accuracy − NTK-regression accuracy at initialisation: what training gains over
    the network's linearisation at init."""
    return trained_accuracy - init_metrics["ntk_regression_accuracy"]


def _check_epochs(epochs: Sequence[int]) -> tuple[int, ...]:
    values = tuple(epochs)
    if not values or not all(isinstance(e, int) and not isinstance(e, bool) for e in values):
        raise ValueError(f"argument 'epochs' must be a non-empty list of ints, got {list(values)}")
    if min(values) < 0:
        raise ValueError(f"argument 'epochs' must hold epoch counts >= 0, got {list(values)}")
    return tuple(sorted(set(values)))


class _EpochMetricsHook(TrainerHook):
    """Takes the metrics of every candidate at the end of the chosen epochs."""

    def __init__(self, measure, epochs: tuple[int, ...],
                 results: list[dict[int, dict[str, float]]]) -> None:
        self.measure, self.epochs, self.results = measure, epochs, results

    def on_epoch_end(self, trainer: Trainer, model: nn.Module, metrics: EpochMetrics) -> None:
        if metrics.epoch in self.epochs:
            for k, values in enumerate(self.measure(model)):
                values.update(train_acc=metrics.train_acc[k], val_acc=metrics.val_acc[k])
                self.results[k][metrics.epoch] = values


def metrics_during_training(model: nn.Module, data: Dataset, batch: MetricBatch,
                            config: TrainConfig, seed: int, epochs: Sequence[int] = (1, 2, 3),
                            single: nn.Module | None = None, shuffle_seed: int = 0,
                            device: str | torch.device = "auto"
                            ) -> list[dict[int, dict[str, float]]]:
    """The metrics at initialisation (key 0) and after each epoch count in ``epochs``, all from
    one training run of max(epochs) epochs (``Trainer.fit`` with the given config and seed on
    ``device``; the LR schedule therefore spans max(epochs)). After training, each epoch's entry
    also holds that epoch's ``train_acc`` and ``val_acc``.

    ``model`` is one network (returns a one-element list) or a :class:`CandidateBatch` of K
    candidates trained together (returns K results): then ``single`` is a network of the parent's
    layout into which each candidate's state is loaded to measure it.
    """
    epoch_counts = _check_epochs(epochs)
    if isinstance(model, CandidateBatch):
        if single is None:
            raise ValueError("metrics_during_training(): a CandidateBatch needs argument "
                             "'single' (a network of the parent's layout)")

        def measure(current: nn.Module) -> list[dict[str, float]]:
            single.to(next(current.parameters()).device)
            out = []
            for k in range(current.num_candidates):
                single.load_state_dict(current.candidate_state_dict(k))
                out.append(ntk_metrics(single, batch, data.num_classes, shuffle_seed))
            return out
    else:
        def measure(current: nn.Module) -> list[dict[str, float]]:
            return [ntk_metrics(current, batch, data.num_classes, shuffle_seed)]

    results = [{0: values} for values in measure(model)]
    trained = [e for e in epoch_counts if e > 0]
    if trained:
        hook = _EpochMetricsHook(measure, tuple(trained), results)
        Trainer(config, hooks=[hook], device=device).fit(model, data, seed,
                                                          epochs=max(trained))
    return results

