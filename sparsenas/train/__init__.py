"""The training loop every search strategy runs its candidates through."""

from sparsenas.train.trainer import (
    EpochMetrics,
    TrainConfig,
    Trainer,
    TrainerHook,
    TrainResult,
    resolve_device,
)

__all__ = ["EpochMetrics", "TrainConfig", "TrainResult", "Trainer", "TrainerHook",
           "resolve_device"]
