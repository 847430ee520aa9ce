"""Inference latency of a network, measured with ``torch.utils.benchmark`` (warm-up, enough
repetitions for a stable median, CUDA synchronised, a fixed number of threads)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils import benchmark


def measure_latency(model: nn.Module, inputs: Tensor, threads: int = 1,
                    min_run_time: float = 0.2) -> float:
    """Median seconds of one forward pass of ``model`` (eval mode, no autograd) on the batch
    ``inputs``, which should already be on the model's device. The result depends on the
    machine and its load: report it with the machine, never compare it across runs."""
    if threads < 1 or min_run_time <= 0:
        raise ValueError(f"measure_latency(): threads must be >= 1 and min_run_time positive, got "
                         f"{threads} and {min_run_time}")
    was_training = model.training
    model.eval()

    @torch.no_grad()
    def forward() -> Tensor:
        return model(inputs)

    try:
        timer = benchmark.Timer(stmt="forward()", globals={"forward": forward},
                                num_threads=threads)
        measurement = timer.blocked_autorange(min_run_time=min_run_time)
    finally:
        model.train(was_training)
    return float(measurement.median)
