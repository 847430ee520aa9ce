"""Train steps: what one optimisation step does on one batch, the seam through which one-shot
methods change training without owning the loop.

The :class:`~sparsenas.train.Trainer` owns the loop (epochs, shuffled batches, schedules,
evaluation, hooks, device, autocast); a step owns the update: which parameter groups exist (each
gets its own optimiser, e.g. "weights", "arch", "scores"), how each group's optimiser differs from
the trainer's settings, and what happens for one batch (forward, losses, backward, which optimisers
step). A step that sets ``needs_val_batch`` also receives a batch of the validation split (bi-level
steps: architecture on validation, weights on training data).

A model's output is the logits of one network [N, classes] or of K candidates [K, N, classes]
(:class:`sparsenas.models.CandidateBatch`); steps see them as [K, N, classes] and report one
loss per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer


@dataclass
class StepOutput:
    """loss: [K] each candidate's training loss on the batch; logits: [K, N, classes] (both
    detached, for the trainer's bookkeeping)."""

    loss: Tensor
    logits: Tensor


def candidate_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The model's logits as [K, N, classes] in float32 (K = 1 for a single network)."""
    logits = model(x)
    return (logits if logits.dim() == 3 else logits.unsqueeze(0)).float()


def candidate_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy per candidate: logits [K, N, classes], labels [N] -> [K]."""
    return F.cross_entropy(logits.transpose(1, 2), y.expand(len(logits), -1),
                           reduction="none").mean(1)


class TrainStep:
    """The standard step: every trainable parameter in one "weights" group, cross-entropy per
    candidate, their sum back-propagated (candidates with disjoint parameters are thus each trained
    as if alone; candidates sharing one weight tensor sum their gradients into it), one optimiser
    step. Subclasses override what they change."""

    needs_val_batch: bool = False

    def param_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        return {"weights": [p for p in model.parameters() if p.requires_grad]}

    def optimizer_options(self, group: str) -> dict:
        """Overrides of the trainer's optimiser settings for ``group`` (keys: optimizer, lr,
        momentum, weight_decay, betas, schedule). ``schedule`` is "cosine", "constant" or a
        callable ``factor(e)``: the learning rate of epoch e + 1 (e counts from 0) is ``lr *
        factor(e)`` (a LambdaLR stepped once per epoch, resumable like the others)."""
        return {}

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor],
                 optimizers: dict[str, Optimizer],
                 val_batch: tuple[Tensor, Tensor] | None = None) -> StepOutput:
        x, y = batch
        logits = candidate_logits(model, x)
        losses = candidate_losses(logits, y)
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        for optimizer in optimizers.values():
            optimizer.step()
        return StepOutput(losses.detach(), logits.detach())
