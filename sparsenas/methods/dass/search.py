"""The DASS search schedule: dense pre-training (weights and α), pruning (scores and α, weights
frozen) and fine-tuning (weights and α under a fixed mask), with α frozen for the first warm-up
epochs; and the split of the training set into the weight and the architecture halves.

The schedule is plain data and every decision is a function of the epoch, so a strategy that
resumes at epoch e calls ``enter_phase(model, schedule, e, resumed=True)`` before loading the
checkpoint and continues exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from sparsenas.data import Dataset
from sparsenas.nn.scored import check_keep, init_scores_from_weights, model_phase, set_phase

SEARCH_PHASES = ("dense", "prune", "finetune")


@dataclass(frozen=True)
class SearchSchedule:
    """Epochs per phase (0 skips one), α frozen during the first ``warmup_epochs`` of the search,
    ``keep`` the kept fraction of the prune and fine-tune phases."""

    dense_epochs: int
    prune_epochs: int
    finetune_epochs: int
    keep: float
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        for name in ("dense_epochs", "prune_epochs", "finetune_epochs", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"SearchSchedule: argument '{name}' must be >= 0, got "
                                 f"{getattr(self, name)}")
        if self.total_epochs < 1:
            raise ValueError("SearchSchedule: the phases must have at least one epoch in all")
        check_keep(self.keep, "SearchSchedule")

    @property
    def total_epochs(self) -> int:
        return self.dense_epochs + self.prune_epochs + self.finetune_epochs

    def phase_at(self, epoch: int) -> str:
        """The phase of epoch ``epoch`` (0-based)."""
        if not 0 <= epoch < self.total_epochs:
            raise ValueError(f"SearchSchedule: epoch {epoch} is outside 0..{self.total_epochs - 1}")
        bounds = np.cumsum([self.dense_epochs, self.prune_epochs, self.finetune_epochs])
        return SEARCH_PHASES[int(np.searchsorted(bounds, epoch, side="right"))]

    def update_arch_at(self, epoch: int) -> bool:
        """Whether α trains in epoch ``epoch`` (False during the warm-up)."""
        self.phase_at(epoch)
        return epoch >= self.warmup_epochs


def enter_phase(model: nn.Module, schedule: SearchSchedule, epoch: int,
                resumed: bool = False) -> bool:
    """Puts ``model`` in the phase of ``epoch``; returns True when the phase changed (the caller
    then builds new optimisers: the parameter groups differ). Leaving the dense phase
    initialises the scores from the pre-trained weights, unless ``resumed`` (the checkpoint
    about to be loaded holds them)."""
    phase, current = schedule.phase_at(epoch), model_phase(model)
    if current == phase and not resumed:
        return False
    if current == "dense" and phase != "dense" and not resumed:
        # the first mask comes from the pre-trained weights (HYDRA's initialisation)
        init_scores_from_weights(model)
    set_phase(model, phase, keep=schedule.keep)
    return True


def search_splits(data: Dataset, seed: int) -> Dataset:
    """The split a search trains on: ``x_train`` the weight half and ``x_val`` the architecture
    half of the training set (stratified, drawn from ``seed``); ``x_test`` the held-out
    validation split, for the supernet's accuracy."""
    if len(data.x_train) < 4:
        raise ValueError(f"search_splits(): argument 'data' needs at least 4 training examples, "
                         f"got {len(data.x_train)}")
    index = np.arange(len(data.x_train))
    labels = data.y_train.cpu().numpy()
    _, counts = np.unique(labels, return_counts=True)
    weights, arch = train_test_split(index, test_size=0.5, random_state=seed % 2**32,
                                     stratify=labels if counts.min() >= 2 else None)
    weights, arch = torch.from_numpy(np.sort(weights)), torch.from_numpy(np.sort(arch))
    return Dataset(f"{data.name}-search", data.x_train[weights], data.y_train[weights],
                   data.x_train[arch], data.y_train[arch], data.x_val, data.y_val,
                   data.num_classes)
