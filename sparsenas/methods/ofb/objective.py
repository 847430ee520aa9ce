"""The OFB training objective, driven one batch at a time by
:class:`sparsenas.train.joint.JointMaskStep`.

Loss on a batch: cross-entropy + ``one_hot_weight`` · mean over the unfrozen units of the
adaptive one-hot loss + ``score_weight`` · L1 of the unfrozen units' importances +
``flops_weight`` · FLOPs loss of the expected widths + (PMIM) λ · L1 reconstruction of the masked
patches, with λ = ``pmim_weight`` · CE / L_rec (both detached), so the reconstruction term has the
classification loss's magnitude whatever the pixel scale.

Schedules over ``warmup_steps`` optimisation steps (then constant): w_p of the bi-mask from
``importance_start`` (0.99) to ``importance_end`` (0.1); PMIM keep ratio from ``keep_start``
(0.95) to ``keep_end`` (0.75). Every ``eliminate_every`` steps improbable candidates are dropped
and the network shrinks physically with its optimiser state. The progress (step count and the
patch-masking generator) is in :meth:`OFBObjective.state_dict`, so a search resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim import Optimizer

from sparsenas.methods.ofb.losses import adaptive_one_hot_loss, flops_loss, score_l1
from sparsenas.methods.ofb.supernet import OFBSupernet
from sparsenas.seeds import derive_seed
from sparsenas.train.joint import JointLoss, JointMaskStep


@dataclass(frozen=True)
class OFBConfig:
    """Plain-data settings of a search. ``target_flops`` is in the units of
    :func:`sparsenas.models.vit.flops` (multiply-accumulates per image); ``eliminate_every`` is in
    optimisation steps (a few checks per epoch: steps per epoch // 3, say). The loss weights and
    learning rates are defaults that reached one-hot choices within ~10 epochs on digits with a
    2-block, 32-wide ViT; they are not tuned beyond that."""

    target_flops: float
    warmup_steps: int
    eliminate_every: int = 10
    one_hot_weight: float = 0.3
    score_weight: float = 0.01
    flops_weight: float = 100.0
    pmim: bool = True
    pmim_weight: float = 1.0
    entropy_only: bool = False
    importance_only: bool = False
    importance_start: float = 0.99
    importance_end: float = 0.1
    keep_start: float = 0.95
    keep_end: float = 0.75
    arch_lr: float = 0.05
    score_lr: float = 0.01

    def __post_init__(self) -> None:
        if self.target_flops <= 0:
            raise ValueError(f"OFBConfig: target_flops must be positive, got {self.target_flops}")
        if self.warmup_steps < 1 or self.eliminate_every < 1:
            raise ValueError(f"OFBConfig: warmup_steps and eliminate_every must be >= 1, got "
                             f"{self.warmup_steps} and {self.eliminate_every}")
        for name in ("importance_start", "importance_end", "keep_start", "keep_end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"OFBConfig: {name} must be in [0, 1], got {value}")
        if self.keep_end <= 0.0:
            raise ValueError(f"OFBConfig: keep_end must be positive, got {self.keep_end}")
        for name in ("one_hot_weight", "score_weight", "flops_weight", "pmim_weight", "arch_lr",
                     "score_lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"OFBConfig: {name} must be >= 0, got {getattr(self, name)}")


def _linear(start: float, end: float, progress: float) -> float:
    return start + (end - start) * min(1.0, progress)


def patch_pixels(x: Tensor, patch_size: int) -> Tensor:
    """[N, patches, C * p * p]: each patch's pixels, patches row-major as the patch embedding."""
    return F.unfold(x, patch_size, stride=patch_size).transpose(1, 2)


class OFBObjective:
    """See the module docstring. ``seed`` keys the patch-masking generator."""

    def __init__(self, config: OFBConfig, supernet: OFBSupernet, seed: int) -> None:
        smallest, original = supernet.smallest_flops(), supernet.original_flops
        if not smallest <= config.target_flops <= original:
            raise ValueError(f"target_flops {config.target_flops:.6g} must lie between the "
                             f"smallest candidate network's {smallest:.6g} and the parent's "
                             f"{original:.6g} FLOPs")
        self.config = config
        self.seed = seed
        self.step = 0
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "ofb", "pmim"))

    # ----------------------------------------------------------------------------- schedules
    @property
    def progress(self) -> float:
        return self.step / self.config.warmup_steps

    def importance_weight(self) -> float:
        if self.config.importance_only:
            return 1.0
        return _linear(self.config.importance_start, self.config.importance_end, self.progress)

    def keep_ratio(self) -> float:
        return _linear(self.config.keep_start, self.config.keep_end, self.progress)

    def sample_patch_mask(self, batch: int, patches: int) -> Tensor:
        """[batch, patches] bool, True for seen patches: round(keep_ratio · patches) per image
        (at least one), chosen uniformly from the seeded generator."""
        keep = max(1, round(self.keep_ratio() * patches))
        order = torch.rand(batch, patches, generator=self.generator).argsort(dim=1)
        return order < keep

    # ----------------------------------------------------------------------------- loss
    def __call__(self, model: OFBSupernet, inputs: Tensor, targets: Tensor) -> JointLoss:
        config = self.config
        model.importance_weight.fill_(self.importance_weight())
        patch_mask = None
        if config.pmim:
            patch_size = model.vit.widths.patch_size
            patches = (inputs.shape[-2] // patch_size) * (inputs.shape[-1] // patch_size)
            patch_mask = self.sample_patch_mask(len(inputs), patches).to(inputs.device)
        features = model.features(inputs, patch_mask)
        logits = model.classify(features)
        task = F.cross_entropy(logits, targets)
        total = task + config.flops_weight * flops_loss(model.expected_flops(),
                                                        config.target_flops, model.original_flops)
        searching = [unit for unit in model.units.values() if not unit.frozen]
        if searching:
            one_hot = torch.stack([adaptive_one_hot_loss(unit.alive_probs(), config.entropy_only)
                                   for unit in searching]).mean()
            importances = score_l1([unit.scores for unit in searching])
            total = total + config.one_hot_weight * one_hot + config.score_weight * importances
        if patch_mask is not None and not patch_mask.all():
            hidden = ~patch_mask
            target = patch_pixels(inputs, model.vit.widths.patch_size)[hidden]
            reconstruction = (model.reconstruct(features)[hidden] - target).abs().mean()
            weight = config.pmim_weight * task.detach() / reconstruction.detach().clamp_min(1e-12)
            total = total + weight * reconstruction
        return JointLoss(total=total, task=task, logits=logits)

    def after_step(self, model: OFBSupernet, optimizers: dict[str, Optimizer]) -> None:
        self.step += 1
        model.importance_weight.fill_(self.importance_weight())
        if self.step % self.config.eliminate_every == 0 and not model.all_frozen:
            model.eliminate(optimizers.values())

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Tensor]:
        return {"step": torch.tensor(self.step), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])


def ofb_step(config: OFBConfig, supernet: OFBSupernet, seed: int) -> JointMaskStep:
    """The joint step of an OFB search: Adam (constant learning rate, no weight decay) for the
    architecture logits and the importance scores; the trainer's settings for the weights."""
    search_options = {"optimizer": "adam", "weight_decay": 0.0, "betas": (0.5, 0.999),
                      "schedule": "constant"}
    return JointMaskStep(OFBObjective(config, supernet, seed),
                         options={"arch": {**search_options, "lr": config.arch_lr},
                                  "scores": {**search_options, "lr": config.score_lr}})
