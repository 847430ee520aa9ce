"""HYDRA pruning of a trained network at a kept fraction: scores initialised from the trained
weights and trained with the weights frozen, then the mask fixed and the weights fine-tuned.

Each phase is one :meth:`sparsenas.train.Trainer.fit` (the trainer's optimiser only steps the
parameters that require gradients, which ``set_phase`` selects), so a strategy may also run the two
phases as separate units: ``start_pruning`` / ``start_finetuning`` put the network in the phase, and
a network restored from a checkpoint needs only the same call before ``load_state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparsenas.data import Dataset
from sparsenas.nn.scored import check_keep, init_scores_from_weights, set_phase, sparsity_report
from sparsenas.seeds import derive_seed
from sparsenas.train import TrainConfig, Trainer


def start_pruning(model: nn.Module, keep: float) -> None:
    """Prune phase at kept fraction ``keep``, scores initialised from the current weights."""
    set_phase(model, "prune", keep=check_keep(keep, "start_pruning()"))
    init_scores_from_weights(model)


def start_finetuning(model: nn.Module) -> None:
    """Fine-tune phase: the mask of the current scores is fixed and the weights train."""
    set_phase(model, "finetune")


@dataclass
class PruneResult:
    keep: float
    kept_fraction: float   # kept weights / weights of the sparse layers, measured on the masks
    pruned_test_acc: float  # after score training, before fine-tuning
    test_acc: float        # after fine-tuning
    test_loss: float
    best_val_acc: float
    seconds: float


def prune_and_finetune(model: nn.Module, data: Dataset, keep: float, seed: int,
                       prune: TrainConfig, finetune: TrainConfig,
                       device: str | torch.device = "auto") -> PruneResult:
    """HYDRA on a trained ``model`` (changed in place; copy it to prune one network at several
    kept fractions): ``prune.epochs`` of score training, then ``finetune.epochs`` of weight
    training under the fixed mask; batches drawn from ``seed``."""
    start_pruning(model, keep)
    pruned = Trainer(prune, device=device).fit(model, data,
                                               seed=derive_seed("hydra-prune", seed))
    start_finetuning(model)
    tuned = Trainer(finetune, device=device).fit(model, data,
                                                 seed=derive_seed("hydra-finetune", seed))
    return PruneResult(keep=float(keep), kept_fraction=sparsity_report(model)["kept_fraction"],
                       pruned_test_acc=pruned.test_acc[0], test_acc=tuned.test_acc[0],
                       test_loss=tuned.test_loss[0], best_val_acc=tuned.best_val_acc[0],
                       seconds=pruned.seconds + tuned.seconds)
