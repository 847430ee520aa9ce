"""Inference latency of networks, measured with ``torch.utils.benchmark`` (warm-up, enough
repetitions for a stable median, CUDA synchronised, a fixed number of threads)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils import benchmark


def measure_latencies(models: Sequence[nn.Module], inputs: Tensor, threads: int = 1,
                      rounds: int = 3, min_run_time: float = 0.1) -> list[float]:
    """Median seconds of one forward pass (eval mode, no autograd) of each of ``models`` on the
    batch ``inputs`` (already on the models' device). The models are timed in turn, ``rounds``
    times over, and each gets the median of its rounds, so a change in the machine's load while
    measuring affects every model alike. The values depend on the machine and its load: compare
    models measured together, never across runs."""
    if threads < 1 or rounds < 1 or min_run_time <= 0:
        raise ValueError(f"measure_latencies(): threads and rounds must be >= 1 and min_run_time "
                         f"positive, got {threads}, {rounds} and {min_run_time}")
    modes = [model.training for model in models]
    timers = []
    for model in models:
        model.eval()
        forward = torch.no_grad()(model)
        timers.append(benchmark.Timer(stmt="forward(inputs)",
                                      globals={"forward": forward, "inputs": inputs},
                                      num_threads=threads))
    try:
        times = [[timer.blocked_autorange(min_run_time=min_run_time).median for timer in timers]
                 for _ in range(rounds)]
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)
    return [float(t) for t in np.median(np.array(times), axis=0)]
