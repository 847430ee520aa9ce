"""One-stage mask search step: network weights, architecture logits and importance scores are
updated together from the same batch's loss, each by its own optimiser.

The model exposes ``arch_parameters()`` and ``score_parameters()``; every other trainable
parameter is a weight. What the loss is (and what happens between steps, e.g. dropping
candidates and shrinking the network) belongs to a method's :class:`JointObjective`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor, nn
from torch.optim import Optimizer

from sparsenas.train.steps import StepOutput, TrainStep

GROUPS = ("weights", "arch", "scores")


@dataclass
class JointLoss:
    total: Tensor    # scalar minimised by all three groups
    task: Tensor     # scalar task (classification) loss, reported as the step's loss
    logits: Tensor   # [N, classes]


class JointObjective(Protocol):
    def __call__(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> JointLoss: ...

    def after_step(self, model: nn.Module, optimizers: dict[str, Optimizer]) -> None: ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


class JointMaskStep(TrainStep):
    """A train step with parameter groups "weights", "arch" and "scores". ``options`` maps a
    group to its optimiser overrides (e.g. Adam with its own learning rate for "arch"). The
    step's progress (:meth:`state_dict`) is the objective's; checkpoint it with the model."""

    def __init__(self, objective: JointObjective,
                 options: dict[str, dict] | None = None) -> None:
        options = dict(options or {})
        unknown = sorted(set(options) - set(GROUPS))
        if unknown:
            raise ValueError(f"JointMaskStep(): argument 'options' names unknown groups "
                             f"{unknown}; the groups are {list(GROUPS)}")
        self.objective = objective
        self.options = options

    def param_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        arch, scores = list(model.arch_parameters()), list(model.score_parameters())
        searched = {id(p) for p in arch + scores}
        weights = [p for p in model.parameters() if p.requires_grad and id(p) not in searched]
        return {"weights": weights, "arch": arch, "scores": scores}

    def optimizer_options(self, group: str) -> dict:
        if group not in GROUPS:
            raise ValueError(f"JointMaskStep.optimizer_options(): unknown group {group!r}; the "
                             f"groups are {list(GROUPS)}")
        return dict(self.options.get(group, {}))

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor],
                 optimizers: dict[str, Optimizer],
                 val_batch: tuple[Tensor, Tensor] | None = None) -> StepOutput:
        missing = [g for g in GROUPS if g not in optimizers]
        if missing:
            raise ValueError(f"JointMaskStep(): argument 'optimizers' lacks the groups {missing}")
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        inputs, targets = batch
        result = self.objective(model, inputs, targets)
        result.total.backward()
        for group in GROUPS:
            optimizers[group].step()
        self.objective.after_step(model, optimizers)
        return StepOutput(loss=result.task.detach().reshape(1),
                          logits=result.logits.detach().unsqueeze(0))

    def state_dict(self) -> dict[str, Tensor]:
        """The objective's progress (tensors only, so it fits a safetensors checkpoint)."""
        return self.objective.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.objective.load_state_dict(state)
