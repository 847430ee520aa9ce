"""Metrics on an empirical NTK, Label-Gradient Alignment, rank correlations and a class-balanced
batch sampler.

Every metric takes a kernel Θ [n, n] (any mode of :func:`sparsenas.ntk.empirical_ntk` that gives
a square matrix) and returns a Python float. Spectral metrics run ``eigvalsh`` in float64. A
kernel with a non-finite entry gives ``nan`` (never an exception); shapes that are not a square
matrix raise a ValueError.
"""

from __future__ import annotations

import math

import scipy.stats
import torch
from torch import Tensor

from sparsenas.ops._checks import data_device, describe, integer, tensor

# Shift of the eigenvalues in the eigenvalue score (Mellor et al., 2020, v1: k = 1e-5).
EIGEN_SCORE_SHIFT = 1e-5


def _square(kernel: Tensor, name: str) -> Tensor:
    if not isinstance(kernel, Tensor) or kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1]:
        got = tuple(kernel.shape) if isinstance(kernel, Tensor) else type(kernel).__name__
        raise ValueError(f"{name}(): argument 'kernel' must be a square matrix [n, n], got {got}")
    if kernel.shape[0] == 0:
        raise ValueError(f"{name}(): argument 'kernel' is empty (n = 0)")
    data_device(name, "kernel", kernel)
    return kernel.detach().to(torch.float64)


def _eigenvalues(kernel: Tensor) -> Tensor:
    # Θ is symmetric in exact arithmetic; symmetrising removes rounding asymmetry only.
    return torch.linalg.eigvalsh((kernel + kernel.T) / 2)


def condition_number(kernel: Tensor) -> float:
    """λmax / λmin of Θ (float64 ``eigvalsh``; lower is better, as in TE-NAS).

    Defined values instead of errors: ``inf`` when λmin ≤ 0 (a singular or, through rounding,
    indefinite kernel), ``nan`` when Θ has a non-finite entry.
    """
    k = _square(kernel, "condition_number")
    if not torch.isfinite(k).all():
        return math.nan
    eigenvalues = _eigenvalues(k)
    smallest, largest = eigenvalues[0].item(), eigenvalues[-1].item()
    return math.inf if smallest <= 0 else largest / smallest


def trace(kernel: Tensor) -> float:
    """Σ_i Θ_ii (NASI uses the NTK trace)."""
    return _square(kernel, "trace").trace().item()


def frobenius_norm(kernel: Tensor) -> float:
    """‖Θ‖_F."""
    return torch.linalg.matrix_norm(_square(kernel, "frobenius_norm")).item()


def mean_entry(kernel: Tensor) -> float:
    """The mean of all entries of Θ (KNAS's gradient-kernel mean)."""
    return _square(kernel, "mean_entry").mean().item()


def eigen_score(kernel: Tensor) -> float:
    """−Σ_i [log(σ_i + k) + 1 / (σ_i + k)], k = 1e-5, over the eigenvalues σ_i of the normalised
    kernel C = D^{-1/2} Θ D^{-1/2} (D = diag Θ: the cosine similarities of the per-example
    gradients). Higher is better; it is largest when C is the identity (uncorrelated gradients).

    The score is the one of Mellor et al., "Neural Architecture Search without Training", arXiv
    2006.04647 v1 (2020), eq. 2, which took σ from the correlation matrix of the input Jacobians;
    here the per-example parameter gradients' normalised Gram plays that role. ``nan`` when Θ is
    not finite or has a zero on its diagonal (a zero gradient has no direction).
    """
    k = _square(kernel, "eigen_score")
    diagonal = k.diagonal()
    if not torch.isfinite(k).all() or (diagonal <= 0).any():
        return math.nan
    scale = diagonal.rsqrt()
    sigma = _eigenvalues(k * scale[:, None] * scale[None, :]) + EIGEN_SCORE_SHIFT
    # Rounding can leave an eigenvalue of a singular C slightly below -k; clamp to the shift.
    sigma = sigma.clamp_min(EIGEN_SCORE_SHIFT)
    return -(sigma.log() + sigma.reciprocal()).sum().item()


def label_gradient_alignment(kernel: Tensor, labels: Tensor) -> float:
    """LGA = ⟨Θ − μ(Θ), Y − μ(Y)⟩_F / (‖Θ − μ(Θ)‖_F ‖Y − μ(Y)‖_F), higher is better.

    Y_ij = +1 if labels i and j are equal, −1 otherwise; μ is the scalar mean of all entries.
    Raises a ValueError when the batch holds a single class (Y − μ(Y) = 0: alignment undefined);
    returns ``nan`` when Θ is constant or not finite.
    """
    k = _square(kernel, "label_gradient_alignment")
    if not isinstance(labels, Tensor) or labels.shape != (k.shape[0],):
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError("label_gradient_alignment(): argument 'labels' must be [n] with "
                         f"n = {k.shape[0]} (the kernel's size), got {got}")
    data_device("label_gradient_alignment", "labels", labels)
    labels = labels.to(k.device)
    if (labels == labels[0]).all():
        raise ValueError("label_gradient_alignment(): argument 'labels' holds a single class; "
                         "LGA needs at least two classes (use class_balanced_indices)")
    if not torch.isfinite(k).all():
        return math.nan
    same = labels[:, None] == labels[None, :]
    target = same.to(torch.float64) * 2 - 1
    centred_kernel = k - k.mean()
    centred_target = target - target.mean()
    norm = torch.linalg.matrix_norm(centred_kernel) * torch.linalg.matrix_norm(centred_target)
    if norm.item() == 0:
        return math.nan
    return ((centred_kernel * centred_target).sum() / norm).item()


def ntk_regression_accuracy(kernel_train: Tensor, kernel_test_train: Tensor, labels_train: Tensor,
                            labels_test: Tensor, num_classes: int, ridge: float = 1e-6) -> float:
    """Accuracy of NTK kernel regression on a held-out batch.

    Targets are the centred one-hot labels of the training batch, Y = onehot − 1/C. Held-out
    predictions are Θ(test, train) (Θ(train, train) + λ I)⁻¹ Y with λ = ridge · trace(Θ)/n
    (a ridge relative to the kernel's scale keeps the solve stable when Θ is near-singular);
    the predicted class is the argmax. This is the infinite-width, gradient-flow-to-convergence
    prediction of the linearised network trained with squared loss from a zero output.
    Shapes: kernel_train [n, n], kernel_test_train [m, n], labels [n] and [m]. ``nan`` when a
    kernel is not finite.
    """
    k = _square(kernel_train, "ntk_regression_accuracy")
    n = k.shape[0]
    for arg, t in (("kernel_test_train", kernel_test_train), ("labels_train", labels_train),
                   ("labels_test", labels_test)):
        tensor("ntk_regression_accuracy", arg, t)
        data_device("ntk_regression_accuracy", arg, t)
    cross = kernel_test_train.detach().to(torch.float64)
    if cross.dim() != 2 or cross.shape[1] != n:
        raise ValueError("ntk_regression_accuracy(): argument 'kernel_test_train' must be [m, n] "
                         f"with n = {n}, got {tuple(cross.shape)}")
    if labels_train.shape != (n,) or labels_test.shape != (cross.shape[0],):
        raise ValueError("ntk_regression_accuracy(): arguments 'labels_train' / 'labels_test' "
                         f"must be [{n}] / [{cross.shape[0]}], got {tuple(labels_train.shape)} / "
                         f"{tuple(labels_test.shape)}")
    if not (torch.isfinite(k).all() and torch.isfinite(cross).all()):
        return math.nan
    targets = torch.nn.functional.one_hot(labels_train.long().to(k.device), num_classes)
    targets = targets.to(torch.float64) - 1.0 / num_classes
    lam = ridge * max(k.trace().item() / n, torch.finfo(torch.float64).tiny)
    coefficients = torch.linalg.solve(k + lam * torch.eye(n, dtype=k.dtype, device=k.device),
                                      targets)
    predictions = (cross @ coefficients).argmax(1)
    return (predictions.cpu() == labels_test.long().cpu()).double().mean().item()


def kendall_tau(scores: Tensor | list[float], accuracies: Tensor | list[float]) -> float:
    """Kendall's τ-b (scipy.stats.kendalltau) between proxy scores and accuracies."""
    return float(scipy.stats.kendalltau(*_paired("kendall_tau", scores, accuracies)).statistic)


def spearman_rho(scores: Tensor | list[float], accuracies: Tensor | list[float]) -> float:
    """Spearman's ρ (scipy.stats.spearmanr) between proxy scores and accuracies."""
    return float(scipy.stats.spearmanr(*_paired("spearman_rho", scores, accuracies)).statistic)


def _paired(op: str, scores: Tensor | list[float],
            accuracies: Tensor | list[float]) -> tuple[list[float], list[float]]:
    """Both sequences as lists of one length."""
    lists = []
    for arg, values in (("scores", scores), ("accuracies", accuracies)):
        if isinstance(values, Tensor):
            data_device(op, arg, values)
            if values.dim() != 1:
                raise ValueError(f"{op}(): argument '{arg}' must be 1-D, got {describe(values)}")
            values = values.detach().cpu().tolist()
        lists.append(list(values))
    if len(lists[0]) != len(lists[1]):
        raise ValueError(f"{op}(): argument 'accuracies' must have one entry per score "
                         f"({len(lists[0])}), got {len(lists[1])}")
    return lists[0], lists[1]


def class_balanced_indices(labels: Tensor, per_class: int, seed: int,
                           num_classes: int | None = None) -> Tensor:
    """Indices of a batch with exactly ``per_class`` examples of each of ``num_classes`` classes.

    The classes (all present classes when ``num_classes`` is None, else that many drawn at
    random among them) and their examples are drawn without replacement from a generator seeded
    with ``seed``; the batch is shuffled, so a prefix split keeps classes mixed. Raises a
    ValueError when a chosen class has fewer than ``per_class`` examples.
    """
    op = "class_balanced_indices"
    tensor(op, "labels", labels)
    data_device(op, "labels", labels)
    per_class = integer(op, "per_class", per_class)
    if per_class < 1:
        raise ValueError(f"class_balanced_indices(): argument 'per_class' must be >= 1, "
                         f"got {per_class}")
    generator = torch.Generator().manual_seed(seed)
    labels = labels.detach().cpu()
    classes = labels.unique()
    if num_classes is not None:
        if not 1 <= num_classes <= len(classes):
            raise ValueError(f"class_balanced_indices(): argument 'num_classes' must be in "
                             f"[1, {len(classes)}] (classes present), got {num_classes}")
        classes = classes[torch.randperm(len(classes), generator=generator)[:num_classes]].sort().values
    chosen = []
    for cls in classes.tolist():
        members = (labels == cls).nonzero().flatten()
        if len(members) < per_class:
            raise ValueError(f"class_balanced_indices(): class {cls} has {len(members)} examples, "
                             f"fewer than per_class = {per_class}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    batch = torch.cat(chosen)
    return batch[torch.randperm(len(batch), generator=generator)]
