"""BatchNorm calibration: running statistics recomputed from a few batches, for networks whose
training-time statistics do not describe the network being evaluated (children of a supernet,
networks after pruning)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def calibrate_batchnorm(model: nn.Module, batches: Iterable[Tensor | tuple[Tensor, ...]]) -> int:
    """Resets the running statistics of every BatchNorm in ``model`` and recomputes them as the
    cumulative average (momentum None) over ``batches`` (inputs, or tuples whose first element is
    the input), with train-mode forward passes and no gradients; the model's modes and momenta are
    restored afterwards. Returns the number of batches used."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("calibrate_batchnorm(): argument 'model' has no BatchNorm layer")
    if any(not m.track_running_stats for m in norms):
        raise ValueError("calibrate_batchnorm(): every BatchNorm must track running statistics")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    count = 0
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
        model.train()
        with torch.no_grad():
            for batch in batches:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
                count += 1
    finally:
        for module, training in modes.items():
            module.training = training
        for norm, momentum in momenta.items():
            norm.momentum = momentum
    if count == 0:
        raise ValueError("calibrate_batchnorm(): argument 'batches' yielded no batch")
    return count
