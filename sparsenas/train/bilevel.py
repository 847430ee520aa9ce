"""The DARTS bilevel step on score-pruned networks (DASS): α on the validation batch, then the
weights (or, while pruning, the scores) on the training batch, both through the network at the
phase its sparse layers are in (:func:`sparsenas.nn.set_phase`).

Parameter groups by phase:
    "dense", "finetune"   "weights" (every parameter but α and the scores) and "arch" (α)
    "prune"               "scores" and "arch"
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from sparsenas.nn.scored import model_phase, score_parameters
from sparsenas.train.steps import StepOutput, TrainStep, candidate_losses

ORDERS = ("first", "second")


def _arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    arch = getattr(model, "arch_parameters", None)
    if not callable(arch) or not arch():
        raise ValueError(f"BilevelStep: argument 'model' must have architecture parameters "
                         f"(an arch_parameters() method), got {type(model).__name__}")
    return list(arch())


def _arch_grad(loss: Tensor, arch: list[nn.Parameter]) -> list[Tensor]:
    # A network shorter than three cells has no normal cell: its α gets a zero gradient.
    grads = torch.autograd.grad(loss, arch, allow_unused=True)
    return [torch.zeros_like(a) if g is None else g for a, g in zip(arch, grads)]


def _loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The mean cross-entropy (summed over candidates) and the [K, N, classes] logits, in float32
    or, for a float64 network, float64 (the second-order gradient is checked in float64)."""
    x, y = batch
    logits = model(x)
    if logits.dtype != torch.float64:
        logits = logits.float()
    logits = logits if logits.dim() == 3 else logits.unsqueeze(0)
    return candidate_losses(logits, y).sum(), logits


@dataclass
class BilevelStep(TrainStep):
    """One DARTS search step.

    order: "first" (α follows ∂L_val/∂α at the current weights) or "second" (α follows the
        gradient of the unrolled objective L_val(w − ξ ∂L_train/∂w, α), with the Hessian-vector
        product taken by central finite differences, ε = hvp_radius / ‖∂L_val/∂w'‖ (DARTS: 0.01);
        the unrolled step is a plain gradient step).
    xi: ξ of the unrolled step; None takes the current learning rate of the trained group.
    hvp_radius: the norm of the weight perturbation of the finite differences.
    update_arch: False freezes α (warm-up epochs); the strategy switches it per epoch.
    grad_clip: the gradient-norm clip of the trained group (DARTS: 5); None for none.
    """

    needs_val_batch = True

    order: str = "first"
    xi: float | None = None
    hvp_radius: float = 0.01
    update_arch: bool = True
    grad_clip: float | None = 5.0
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"BilevelStep: argument 'order' must be 'first' or 'second', got "
                             f"{self.order!r}")
        if self.xi is not None and self.xi < 0:
            raise ValueError(f"BilevelStep: argument 'xi' must be >= 0, got {self.xi}")
        if not self.hvp_radius > 0:
            raise ValueError(f"BilevelStep: argument 'hvp_radius' must be positive, got "
                             f"{self.hvp_radius}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"BilevelStep: argument 'grad_clip' must be positive, got "
                             f"{self.grad_clip}")

    @staticmethod
    def trained_group(model: nn.Module) -> str:
        """"scores" while pruning, else "weights"."""
        return "scores" if model_phase(model) == "prune" else "weights"

    def param_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        arch = _arch_parameters(model)
        if self.trained_group(model) == "scores":
            return {"scores": score_parameters(model), "arch": arch}
        excluded = {id(p) for p in arch + score_parameters(model)}
        weights = [p for p in model.parameters() if id(p) not in excluded and p.requires_grad]
        return {"weights": weights, "arch": arch}

    def optimizer_options(self, group: str) -> dict:
        """DARTS' α optimiser; the trainer's settings for the weights and scores."""
        if group == "arch":
            return {"optimizer": "adam", "lr": self.arch_lr, "weight_decay": self.arch_weight_decay,
                    "betas": (0.5, 0.999), "schedule": "constant"}
        return {}

    def arch_gradient(self, model: nn.Module, batch: tuple[Tensor, Tensor],
                      val_batch: tuple[Tensor, Tensor], trained: list[nn.Parameter],
                      xi: float) -> list[Tensor]:
        """∂/∂α of the validation loss (first order) or of the unrolled objective (second)."""
        arch = _arch_parameters(model)
        if self.order == "first":
            return _arch_grad(_loss(model, val_batch)[0], arch)
        original = [p.detach().clone() for p in trained]
        train_grads = torch.autograd.grad(_loss(model, batch)[0], trained)
        try:
            with torch.no_grad():
                for p, g in zip(trained, train_grads):
                    p.sub_(xi * g)
            val_loss = _loss(model, val_batch)[0]
            direction = torch.autograd.grad(val_loss, trained, retain_graph=True)
            arch_grads = _arch_grad(val_loss, arch)
            hessian_vector = self._hessian_vector(model, batch, trained, original, direction)
        finally:
            with torch.no_grad():
                for p, value in zip(trained, original):
                    p.copy_(value)
        return [g - xi * h for g, h in zip(arch_grads, hessian_vector)]

    def _hessian_vector(self, model: nn.Module, batch: tuple[Tensor, Tensor],
                        trained: list[nn.Parameter], original: list[Tensor],
                        direction: tuple[Tensor, ...]) -> list[Tensor]:
        """(∂²L_train/∂α∂w) · direction at ``original`` by central differences."""
        arch = _arch_parameters(model)
        norm = torch.cat([d.flatten() for d in direction]).norm()
        if norm == 0:
            return [torch.zeros_like(a) for a in arch]
        epsilon = self.hvp_radius / norm
        sides = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, value, d in zip(trained, original, direction):
                    p.copy_(value + sign * epsilon * d)
            sides.append(_arch_grad(_loss(model, batch)[0], arch))
        return [(plus - minus) / (2 * epsilon) for plus, minus in zip(*sides)]

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor],
                 optimizers: dict[str, Optimizer],
                 val_batch: tuple[Tensor, Tensor] | None = None) -> StepOutput:
        groups = self.param_groups(model)
        name = self.trained_group(model)
        missing = [g for g in ((name, "arch") if self.update_arch else (name,))
                   if g not in optimizers]
        if missing:
            raise ValueError(f"BilevelStep: argument 'optimizers' lacks the group(s) "
                             f"{', '.join(missing)} of phase {model_phase(model)!r}")
        trained, optimizer = groups[name], optimizers[name]
        if self.update_arch:
            if val_batch is None:
                raise ValueError("BilevelStep: argument 'val_batch' is required while α is "
                                 "updated (update_arch=True)")
            xi = optimizer.param_groups[0]["lr"] if self.xi is None else self.xi
            arch_grads = self.arch_gradient(model, batch, val_batch, trained, xi)
            optimizers["arch"].zero_grad(set_to_none=True)
            for p, g in zip(groups["arch"], arch_grads):
                p.grad = g
            optimizers["arch"].step()
        loss, logits = _loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=trained)
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(trained, self.grad_clip)
        optimizer.step()
        return StepOutput(loss.detach().reshape(1), logits.detach())
