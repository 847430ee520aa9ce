"""The training loop every search strategy runs its candidates through, and its train steps."""

from sparsenas.train.steps import StepOutput, TrainStep, candidate_logits, candidate_losses
from sparsenas.train.trainer import (
    EpochMetrics,
    TrainConfig,
    Trainer,
    TrainerHook,
    TrainResult,
    resolve_device,
)

__all__ = ["EpochMetrics", "StepOutput", "TrainConfig", "TrainResult", "TrainStep", "Trainer",
           "TrainerHook", "candidate_logits", "candidate_losses", "resolve_device"]
