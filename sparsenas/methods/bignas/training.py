"""Training a BigNAS supernet one epoch at a time, resumable from atomic per-epoch checkpoints;
shared by the ``bignas`` study (one unit per epoch) and the torchrun entry point
(:mod:`sparsenas.methods.bignas.ddp`).

Variants (the study's ablations): ``bignas`` (sandwich rule + in-place distillation),
``uniform`` (num_random + 2 uniformly sampled children on the labels), ``no-kd`` (sandwich rule,
every child on the labels). A checkpoint holds the supernet's weights, the trainer's optimiser /
scheduler state, the step counter and the supernet's architecture (checked on loading).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim import Optimizer

from sparsenas.config import ConfigPiece, option
from sparsenas.data import Dataset
from sparsenas.models.elastic import ElasticNet
from sparsenas.seeds import derive_seed
from sparsenas.spaces.elastic import ElasticSpace
from sparsenas.store.checkpoints import load_state, save_state
from sparsenas.train import StepOutput, TrainConfig, Trainer, TrainerHook, TrainResult, TrainStep
from sparsenas.train.sandwich import SandwichStep, exponential_decay_lambda
from sparsenas.train.steps import candidate_logits

VARIANTS = {"bignas": {"rule": "sandwich", "distill": True},
            "uniform": {"rule": "uniform", "distill": False},
            "no-kd": {"rule": "sandwich", "distill": False}}


@dataclass(frozen=True)
class SupernetConfig(ConfigPiece):
    """The elastic supernet and the space of its children (a config piece)."""

    stem_channels: int = option(16, "stem convolution channels")
    stage_channels: tuple[int, ...] = option((16, 32), "largest width of each stage")
    stage_depths: tuple[int, ...] = option((2, 2), "largest depth (blocks) of each stage")
    stage_strides: tuple[int, ...] = option((1, 2), "stride of each stage's first block")
    kernel_sizes: tuple[int, ...] = option((3, 5), "odd kernel sizes a stage may use")
    resolutions: tuple[int, ...] = option((6, 8), "input resolutions a child may use")
    width_multipliers: tuple[float, ...] = option((0.5, 0.75, 1.0),
                                                  "width choices as fractions of each stage's "
                                                  "largest width")

    def validate(self) -> None:
        if not len(self.stage_channels) == len(self.stage_depths) == len(self.stage_strides):
            raise ValueError(f"stage_channels, stage_depths and stage_strides must have one entry "
                             f"per stage, got {list(self.stage_channels)}, "
                             f"{list(self.stage_depths)}, {list(self.stage_strides)}")
        if min(self.stem_channels, *self.stage_channels, *self.stage_depths,
               *self.stage_strides) < 1:
            raise ValueError("stem_channels, stage_channels, stage_depths and stage_strides must "
                             "be >= 1")
        smallest = 1
        for stride in self.stage_strides:
            smallest *= stride
        if min(self.resolutions) < smallest:
            raise ValueError(f"resolutions: {min(self.resolutions)} is too small for the stem; "
                             f"the strides {list(self.stage_strides)} need at least {smallest}")
        self.space()  # kernel sizes, multipliers: checked by the space

    def space(self) -> ElasticSpace:
        return ElasticSpace.for_architecture(self.stage_depths, self.stage_channels,
                                             self.kernel_sizes, self.resolutions,
                                             self.width_multipliers)

    def build(self, data: Dataset, seed: int) -> ElasticNet:
        """The supernet for ``data`` initialised from ``seed`` (drawn on the CPU)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("supernet-init", seed))
            return ElasticNet(data.input_shape, data.num_classes, self.stem_channels,
                              self.stage_channels, self.stage_depths, self.stage_strides,
                              self.kernel_sizes)


@dataclass(frozen=True)
class SandwichConfig(ConfigPiece):
    """The BigNAS training step (a config piece); the lead child's weight decay is the training
    piece's --weight-decay, applied as an L2 term on its weights only."""

    num_random: int = option(2, "random children per step beside the biggest and smallest")
    label_smoothing: float = option(0.1, "label smoothing of the children trained on labels")
    dropout: float = option(0.0, "dropout before the classifier, on the lead child only")
    distill_loss: str = option("kl", "in-place distillation loss", choices=("kl", "soft_ce"))
    lr_decay: float = option(0.9, "learning-rate factor per epoch (exponential decay)")
    lr_final: float = option(0.05, "the decay stops at this fraction of --lr (constant ending)")

    def validate(self) -> None:
        if self.num_random < 0:
            raise ValueError(f"num_random must be >= 0, got {self.num_random}")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("label_smoothing and dropout must be in [0, 1)")
        exponential_decay_lambda(self.lr_decay, 1, self.lr_final)

    def schedule(self):
        return exponential_decay_lambda(self.lr_decay, 1, self.lr_final)

    def step(self, variant: str, space: ElasticSpace, training: TrainConfig, seed: int,
             step_class: type[SandwichStep] = SandwichStep, **extra) -> SandwichStep:
        """The step of ``variant`` (a key of :data:`VARIANTS`) over ``space``: a ``step_class``
        (a SandwichStep subclass given ``extra`` arguments, e.g. a distributed one)."""
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        return step_class(space, seed=derive_seed("sandwich", variant, seed),
                          num_random=self.num_random, label_smoothing=self.label_smoothing,
                          weight_decay=training.weight_decay, dropout=self.dropout,
                          distill_loss=self.distill_loss, schedule=self.schedule(),
                          **VARIANTS[variant], **extra)


class StandaloneStep(TrainStep):
    """One network trained alone with the supernet's recipe for its lead child: labels with
    label smoothing, the optimiser's weight decay, the exponential schedule."""

    def __init__(self, sandwich: SandwichConfig) -> None:
        self.label_smoothing = sandwich.label_smoothing
        self.schedule = sandwich.schedule()

    def optimizer_options(self, group: str) -> dict:
        return {"schedule": self.schedule}

    def __call__(self, model, batch: tuple[Tensor, Tensor], optimizers: dict[str, Optimizer],
                 val_batch=None) -> StepOutput:
        x, y = batch
        optimizer = optimizers["weights"]
        optimizer.zero_grad(set_to_none=True)
        logits = candidate_logits(model, x)[0]
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        loss.backward()
        optimizer.step()
        return StepOutput(loss.detach()[None], logits.detach()[None])


def checkpoint_path(directory: Path, variant: str, seed: int, epoch: int) -> Path:
    return Path(directory) / f"{variant}_seed{seed}_epoch{epoch:04d}.safetensors"


def save_epoch(path: Path, model: ElasticNet, step: SandwichStep, result: TrainResult,
               variant: str) -> Path:
    """The supernet after ``result``'s last epoch, atomically in one file: weights, trainer and
    step state, architecture."""
    return save_state(path, {"weights": model.state_dict(), "trainer": result.state,
                             "step": step.state_dict(), "architecture": model.architecture,
                             "variant": variant, "epoch": result.state["epoch"]})


def load_epoch(path: Path, model: ElasticNet, step: SandwichStep | None = None) -> dict:
    """Loads a :func:`save_epoch` checkpoint into ``model`` (and ``step``); returns the trainer
    state. A checkpoint of another supernet raises a one-line ValueError."""
    state = load_state(path)
    model.check_architecture(state.get("architecture", {}))
    model.load_state_dict(state["weights"])
    if step is not None:
        step.load_state_dict(state["step"])
    return state["trainer"]


def train_epoch(model: ElasticNet, step: SandwichStep, data: Dataset, training: TrainConfig,
                seed: int, epoch: int, trainer_state: dict | None,
                hooks: list[TrainerHook] | None = None,
                device: torch.device | str = "cpu") -> TrainResult:
    """Epoch ``epoch`` of ``training.epochs`` (batch order from ``seed``), continuing from the
    trainer state of the epoch before (None for the first)."""
    trainer = Trainer(training, hooks or [], step=step, device=device)
    return trainer.fit(model, data, seed=seed, start_epoch=epoch, end_epoch=epoch,
                       state=trainer_state)


__all__ = ["SandwichConfig", "StandaloneStep", "SupernetConfig", "VARIANTS", "checkpoint_path",
           "load_epoch", "save_epoch", "train_epoch"]
