"""One BigNAS training step on an elastic supernet: the sandwich rule with in-place distillation,
and the exponentially decaying learning rate with a constant ending.

Per step (one batch, one optimiser step, gradients of all children accumulated):

* ``rule="sandwich"``: the biggest child, the smallest child and ``num_random`` random children;
  ``rule="uniform"`` (ablation): ``num_random + 2`` random children.
* The *lead* child (the biggest under the sandwich rule, the step's largest by FLOPs under the
  uniform rule) runs first, alone, on the labels with label smoothing, with dropout and with weight
  decay as an explicit L2 term on the weights it uses (so the optimiser's weight_decay is 0). It
  alone updates the running BatchNorm statistics, which serve only as a training-time monitor of
  the model: every child is BN-calibrated after training.
* The other children learn from the lead's detached soft predictions (``distill=True``, KL or soft
  cross-entropy) or from the labels (``distill=False``), without dropout or weight decay. Those that
  differ only in width run together as K candidates (``batch_children=True``).

The children of step t come from the stream ``derive_seed(seed, "sandwich", t)`` and its dropout
from ``derive_seed(seed, "dropout", t)``; the step counter is the step's only state
(:meth:`SandwichStep.state_dict`). ``schedule`` (an epoch -> LR factor callable, e.g.
:func:`exponential_decay_lambda` counted in epochs) becomes the trainer's schedule of the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from sparsenas.models.elastic import ChildConfig, ElasticNet
from sparsenas.seeds import derive_seed
from sparsenas.spaces.elastic import ElasticSpace
from sparsenas.train.steps import StepOutput, TrainStep


class SandwichStep(TrainStep):
    """BigNAS step over the children of ``space`` on an :class:`ElasticNet`. Its output holds
    one loss and logits per child of the step, in the step's order (the lead child first, then
    the smallest under the sandwich rule); the model is left with the biggest child active, so
    the trainer's evaluation measures the biggest child."""

    def __init__(self, space: ElasticSpace, *, seed: int = 0, num_random: int = 2,
                 rule: str = "sandwich", distill: bool = True, distill_loss: str = "kl",
                 label_smoothing: float = 0.1, weight_decay: float = 0.0, dropout: float = 0.0,
                 batch_children: bool = True,
                 schedule: Callable[[int], float] | None = None) -> None:
        if rule not in ("sandwich", "uniform"):
            raise ValueError(f"SandwichStep(): argument 'rule' must be 'sandwich' or 'uniform', "
                             f"got {rule!r}")
        if distill and rule != "sandwich":
            raise ValueError("SandwichStep(): in-place distillation ('distill=True') needs the "
                             "biggest child as teacher, which only rule='sandwich' trains")
        if distill_loss not in ("kl", "soft_ce"):
            raise ValueError(f"SandwichStep(): argument 'distill_loss' must be 'kl' or "
                             f"'soft_ce', got {distill_loss!r}")
        if num_random < 0:
            raise ValueError(f"SandwichStep(): argument 'num_random' must be >= 0, got "
                             f"{num_random}")
        if not 0.0 <= label_smoothing < 1.0 or not 0.0 <= dropout < 1.0 or weight_decay < 0:
            raise ValueError("SandwichStep(): 'label_smoothing' and 'dropout' must be in [0, 1) "
                             "and 'weight_decay' >= 0")
        self.space = space
        self.seed = seed
        self.num_random = num_random
        self.rule = rule
        self.distill = distill
        self.distill_loss = distill_loss
        self.label_smoothing = label_smoothing
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.batch_children = batch_children
        self.schedule = schedule
        self.step_index = 0

    def optimizer_options(self, group: str) -> dict:
        # Weight decay is the explicit L2 term on the lead child only.
        return {"weight_decay": 0.0, **({} if self.schedule is None else
                                        {"schedule": self.schedule})}

    def state_dict(self) -> dict:
        return {"step_index": self.step_index}

    def load_state_dict(self, state: dict) -> None:
        self.step_index = int(state["step_index"])

    # ---------------------------------------------------------------------------- the step
    def children(self, model: ElasticNet, step_index: int) -> list[ChildConfig]:
        """Step ``step_index``'s children, the lead child first."""
        stream = derive_seed(self.seed, "sandwich", step_index)
        if self.rule == "sandwich":
            return [self.space.biggest(), self.space.smallest(),
                    *self.space.sample(self.num_random, stream)]
        drawn = self.space.sample(self.num_random + 2, stream)
        lead = max(range(len(drawn)), key=lambda i: model.flops(drawn[i]))
        return [drawn[lead], *drawn[:lead], *drawn[lead + 1:]]

    def __call__(self, model: ElasticNet, batch: tuple[Tensor, Tensor],
                 optimizers: dict[str, Optimizer],
                 val_batch: tuple[Tensor, Tensor] | None = None) -> StepOutput:
        if not isinstance(model, ElasticNet):
            raise TypeError(f"SandwichStep: argument 'model' must be an ElasticNet, got "
                            f"{type(model).__name__}")
        optimizer = optimizers["weights"]
        optimizer.zero_grad(set_to_none=True)
        model.train()
        total, losses, logits = self.batch_objective(model, batch)
        total.backward()
        optimizer.step()
        self.step_index += 1
        model.set_child(self.space.biggest())
        return StepOutput(loss=losses, logits=logits)

    def batch_objective(self, model: ElasticNet,
                        batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """What one step back-propagates, and reports: :meth:`objective` of the batch with this
        step's children (distributed steps override it to compute a shard)."""
        x, y = batch
        return self.objective(model, x, y, self.children(model, self.step_index))

    def objective(self, model: ElasticNet, x: Tensor, y: Tensor,
                  children: list[ChildConfig]) -> tuple[Tensor, Tensor, Tensor]:
        """(the step's total loss, the children's losses [C] and logits [C, N, classes], both
        detached); ``children`` lead first. One backward of the total gives the gradient of the
        step, the sum of every child's loss gradient."""
        lead, others = children[0], children[1:]
        generator = torch.Generator().manual_seed(
            derive_seed(self.seed, "dropout", self.step_index))
        lead_logits = model.run_child(x, lead, dropout=self.dropout, generator=generator)
        lead_loss = F.cross_entropy(lead_logits, y, label_smoothing=self.label_smoothing)
        penalty = sum(w.pow(2).sum() for w in model.child_weights(lead))
        total = lead_loss + 0.5 * self.weight_decay * penalty
        teacher = lead_logits.detach()
        losses: list[Tensor | None] = [lead_loss.detach()] + [None] * len(others)
        logits: list[Tensor | None] = [teacher] + [None] * len(others)
        for group in self._groups(others):
            configs = [others[i] for i in group]
            if len(configs) == 1:
                out = model.run_child(x, configs[0], update_bn_stats=False).unsqueeze(0)
            else:
                out = model.run_children(x, configs)
            group_losses = [self._loss(out[j], y, teacher) for j in range(len(group))]
            total = total + torch.stack(group_losses).sum()
            for j, i in enumerate(group):
                losses[1 + i], logits[1 + i] = group_losses[j].detach(), out[j].detach()
        return total, torch.stack(losses), torch.stack(logits)

    def _groups(self, children: list[ChildConfig]) -> list[list[int]]:
        """Indices of children run together: equal shape keys when batching, else singletons."""
        if not self.batch_children:
            return [[i] for i in range(len(children))]
        groups: dict[tuple, list[int]] = {}
        for i, child in enumerate(children):
            groups.setdefault(child.shape_key, []).append(i)
        return list(groups.values())

    def _loss(self, logits: Tensor, labels: Tensor, teacher: Tensor) -> Tensor:
        if not self.distill:
            return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        target = F.softmax(teacher, dim=-1)
        log_probs = F.log_softmax(logits, dim=-1)
        if self.distill_loss == "kl":
            return F.kl_div(log_probs, target, reduction="batchmean")
        return -(target * log_probs).sum(-1).mean()


def exponential_decay_lambda(decay: float, steps_per_decay: float, final_fraction: float,
                             warmup_steps: int = 0) -> Callable[[int], float]:
    """The LR factor of step t: a linear warm-up over ``warmup_steps``, then ``decay ** ((t -
    warmup) / steps_per_decay)`` until it reaches ``final_fraction``, constant from there."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"exponential_decay_lambda(): argument 'decay' must be in (0, 1), got "
                         f"{decay}")
    if steps_per_decay <= 0 or warmup_steps < 0:
        raise ValueError("exponential_decay_lambda(): 'steps_per_decay' must be > 0 and "
                         "'warmup_steps' >= 0")
    if not 0.0 < final_fraction <= 1.0:
        raise ValueError(f"exponential_decay_lambda(): argument 'final_fraction' must be in "
                         f"(0, 1], got {final_fraction}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(final_fraction, math.pow(decay, (step - warmup_steps) / steps_per_decay))

    return factor


def exponential_decay_schedule(optimizer: Optimizer, decay: float, steps_per_decay: float,
                               final_fraction: float, warmup_steps: int = 0) -> LambdaLR:
    """A LambdaLR over :func:`exponential_decay_lambda` (stepped once per optimiser step or once
    per epoch, whichever unit the arguments count in); its state_dict restores the position on a
    scheduler built the same way."""
    return LambdaLR(optimizer, exponential_decay_lambda(decay, steps_per_decay, final_fraction,
                                                        warmup_steps))
