"""The runtime piece of every strategy config: where and how a study runs, never what it finds."""

from __future__ import annotations

from dataclasses import dataclass

from sparsenas.config import ConfigPiece, option
from sparsenas.train import resolve_device

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class RuntimeConfig(ConfigPiece):
    device: str = option("auto", "auto, cpu, cuda or cuda:N", runtime=True)
    threads: int = option(1, "CPU threads for torch per worker (1 avoids oversubscription on "
                             "small models and shared machines)", runtime=True)
    executor: str = option("local", "local: units run in this process; ray: ready units run as "
                                    "Ray tasks (pip install 'sparsenas[ray]')",
                           choices=EXECUTORS, runtime=True)
    workers: int = option(2, "Ray tasks in flight at once (--executor ray)", runtime=True)
    save_models: bool = option(False, "save trained finalists as safetensors under "
                                      "OUT/checkpoints", runtime=True)

    def validate(self) -> None:
        resolve_device(self.device)
        if self.threads < 1 or self.workers < 1:
            raise ValueError(f"threads and workers must be >= 1, got {self.threads} and "
                             f"{self.workers}")
