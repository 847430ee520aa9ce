"""Physical shrinking of a network *during* training: parameters keep their identity (the same
``nn.Parameter`` objects, so optimisers' parameter groups and any references stay valid) and
lose entries along one dimension, together with every optimiser state tensor that has the
parameter's shape (SGD ``momentum_buffer``, Adam ``exp_avg`` / ``exp_avg_sq`` /
``max_exp_avg_sq``). A step after shrinking is then exactly the step a network built small with
the sliced state would take. Scalar state (Adam's ``step``) is kept as it is.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer


def slice_parameter_(param: nn.Parameter, dim: int, index: Tensor,
                     optimizers: Iterable[Optimizer] = ()) -> None:
    """Keeps the entries of ``param`` at ``index`` (1-D int64, in the order given) along ``dim``,
    in place, and slices the optimisers' state for ``param`` the same way. The gradient is
    dropped (it has the old shape)."""
    if not isinstance(param, nn.Parameter):
        raise TypeError(f"slice_parameter_(): argument 'param' must be an nn.Parameter, got "
                        f"{type(param).__name__}")
    if index.dim() != 1 or index.dtype != torch.long:
        raise ValueError(f"slice_parameter_(): argument 'index' must be a 1-D int64 tensor, got "
                         f"{tuple(index.shape)} {index.dtype}")
    old_shape = param.shape
    index = index.to(param.device)
    with torch.no_grad():
        param.data = param.data.index_select(dim, index).contiguous()
    param.grad = None
    for optimizer in optimizers:
        state = optimizer.state.get(param)
        if not state:
            continue
        for key, value in state.items():
            if isinstance(value, Tensor) and value.shape == old_shape:
                state[key] = value.index_select(dim, index.to(value.device)).contiguous()
