"""Trainer: owns the loop (optimisers, LR schedules, evaluation, early stopping, device, AMP on
CUDA); what one step does is a pluggable :class:`~sparsenas.train.steps.TrainStep`.

It trains one network (logits [N, classes]) or K candidates together (a
:class:`sparsenas.models.CandidateBatch`, logits [K, N, classes]) on the same shuffled batches.
With the default step the loss is the sum of the candidates' mean losses, so each candidate, whose
parameters are its own, follows exactly the updates it would get if it were trained alone. Metrics
are kept per candidate. Strategies plug in through :class:`TrainerHook` (training, epoch and step
events) and through the step; they never own the loop.

Training can run in pieces: ``fit(..., start_epoch=e, end_epoch=f, state=s)`` continues from the
optimiser / scheduler state ``s`` that an earlier ``fit`` returned (``TrainResult.state``) and draws
exactly the batches an uninterrupted run would, so one-shot methods can checkpoint every epoch and
resume bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsenas.config import ConfigPiece, option
from sparsenas.data import Dataset
from sparsenas.seeds import derive_seed
from sparsenas.train.steps import StepOutput, TrainStep, candidate_logits


@dataclass(frozen=True)
class TrainConfig(ConfigPiece):
    """How candidates are trained (a config piece: each field is a CLI option)."""

    epochs: int = option(30, "epochs of full training")
    batch_size: int = option(64, "training batch size")
    lr: float = option(0.05, "learning rate")
    optimizer: str = option("sgd", "optimiser of the weights", choices=("sgd", "adam"))
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "weight decay")
    schedule: str = option("cosine", "learning-rate schedule over the epochs",
                           choices=("cosine", "constant"))
    patience: int | None = option(None, "stop when no candidate improved validation accuracy "
                                        "for this many epochs (off by default)")
    amp: bool = option(False, "bfloat16 autocast (CUDA only)")
    eval_batch_size: int = option(1024, "evaluation batch size", runtime=True)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.eval_batch_size < 1:
            raise ValueError("TrainConfig: epochs must be >= 1, batch_size >= 2 (BatchNorm) and "
                             "eval_batch_size >= 1")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig: lr must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError(f"TrainConfig: momentum must be in [0, 1) and weight_decay >= 0, got "
                             f"{self.momentum} and {self.weight_decay}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"TrainConfig: patience must be >= 1, got {self.patience}")


@dataclass
class EpochMetrics:
    """One epoch, one value per candidate in each list."""

    epoch: int
    lr: float
    train_loss: list[float]
    train_acc: list[float]
    val_loss: list[float]
    val_acc: list[float]
    seconds: float


@dataclass
class TrainResult:
    history: list[EpochMetrics]
    test_loss: list[float]
    test_acc: list[float]
    seconds: float
    stopped_early: bool
    best_val_acc: list[float] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def num_candidates(self) -> int:
        return len(self.test_acc)

    def candidate_history(self, index: int) -> list[dict]:
        """Candidate ``index``'s per-epoch metrics as plain dicts."""
        rows = []
        for metrics in self.history:
            row = asdict(metrics)
            for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
                row[key] = row[key][index]
            rows.append(row)
        return rows

    def candidate_final(self, index: int) -> dict:
        last = self.history[-1]
        return {"test_acc": self.test_acc[index], "test_loss": self.test_loss[index],
                "val_acc": last.val_acc[index], "val_loss": last.val_loss[index],
                "best_val_acc": self.best_val_acc[index], "best_epoch": self.best_epoch[index],
                "epochs": len(self.history)}


class TrainerHook:
    """Callbacks a strategy can override; setting ``trainer.stop_requested`` ends training after
    the current epoch. ``trainer.optimizers`` holds the optimisers by group while training."""

    def on_train_start(self, trainer: Trainer, model: nn.Module) -> None:
        pass

    def on_step_end(self, trainer: Trainer, model: nn.Module, step: int,
                    output: StepOutput) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, model: nn.Module, metrics: EpochMetrics) -> None:
        pass


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


_OPTIMIZER_KEYS = ("optimizer", "lr", "momentum", "weight_decay", "betas", "schedule")


class Trainer:
    def __init__(self, config: TrainConfig, hooks: Sequence[TrainerHook] = (),
                 step: TrainStep | None = None, device: str | torch.device = "auto") -> None:
        self.config = config
        self.hooks = list(hooks)
        self.step = step if step is not None else TrainStep()
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.stop_requested = False
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def _autocast(self):
        enabled = self.config.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _group_settings(self, group: str) -> dict[str, Any]:
        c = self.config
        settings = {"optimizer": c.optimizer, "lr": c.lr, "momentum": c.momentum,
                    "weight_decay": c.weight_decay, "betas": (0.9, 0.999), "schedule": c.schedule}
        overrides = self.step.optimizer_options(group)
        unknown = sorted(set(overrides) - set(_OPTIMIZER_KEYS))
        if unknown:
            raise ValueError(f"{type(self.step).__name__}.optimizer_options({group!r}): unknown "
                             f"keys {unknown}; known: {list(_OPTIMIZER_KEYS)}")
        return {**settings, **overrides}

    def _optimizers(self, model: nn.Module, epochs: int):
        optimizers, schedulers = {}, {}
        for group, params in self.step.param_groups(model).items():
            s = self._group_settings(group)
            if s["optimizer"] == "adam":
                optimizer = torch.optim.Adam(params, lr=s["lr"], betas=s["betas"],
                                             weight_decay=s["weight_decay"])
            elif s["optimizer"] == "sgd":
                optimizer = torch.optim.SGD(params, lr=s["lr"], momentum=s["momentum"],
                                            weight_decay=s["weight_decay"])
            else:
                raise ValueError(f"parameter group {group!r}: optimizer must be 'sgd' or 'adam', "
                                 f"got {s['optimizer']!r}")
            optimizers[group] = optimizer
            if callable(s["schedule"]):
                schedulers[group] = torch.optim.lr_scheduler.LambdaLR(optimizer, s["schedule"])
            elif s["schedule"] == "cosine":
                schedulers[group] = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                                               T_max=epochs)
            elif s["schedule"] != "constant":
                raise ValueError(f"parameter group {group!r}: schedule must be 'cosine', "
                                 f"'constant' or a callable epoch -> factor, got "
                                 f"{s['schedule']!r}")
        return optimizers, schedulers

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[list[float], list[float]]:
        """Mean loss and accuracy per candidate on (x, y) in eval mode."""
        was_training = model.training
        model.eval()
        loss_sum = correct = None
        for start in range(0, len(x), self.config.eval_batch_size):
            xb = x[start:start + self.config.eval_batch_size].to(self.device)
            yb = y[start:start + self.config.eval_batch_size].to(self.device)
            with self._autocast():
                logits = candidate_logits(model, xb)
            losses = F.cross_entropy(logits.transpose(1, 2), yb.expand(len(logits), -1),
                                     reduction="none").sum(1)
            hits = (logits.argmax(-1) == yb).sum(1)
            loss_sum = losses if loss_sum is None else loss_sum + losses
            correct = hits if correct is None else correct + hits
        model.train(was_training)
        return (loss_sum / len(x)).tolist(), (correct.double() / len(x)).tolist()

    def _val_batches(self, data: Dataset, seed: int, epoch: int):
        """An endless stream of shuffled validation batches for bi-level steps, drawn from its own
        (seed, epoch) stream so the training batches do not depend on it."""
        generator = torch.Generator().manual_seed(derive_seed("val-batches", seed, epoch))
        n = len(data.x_val)
        while True:
            order = torch.randperm(n, generator=generator).to(self.device)
            for start in range(0, n - 1, self.config.batch_size):
                index = order[start:start + self.config.batch_size]
                if len(index) >= 2:
                    yield data.x_val[index], data.y_val[index]

    def fit(self, model: nn.Module, data: Dataset, seed: int, epochs: int | None = None,
            start_epoch: int = 1, end_epoch: int | None = None,
            state: dict[str, Any] | None = None) -> TrainResult:
        """Trains ``model`` on data's train split (batches shuffled from ``seed``), evaluates on
        the validation split every epoch and on the test split at the end.

        ``epochs`` is the length of the whole run (schedules span it); ``start_epoch`` /
        ``end_epoch`` train only epochs start..end of it, continuing from ``state`` (the
        ``TrainResult.state`` of the run that trained the epochs before)."""
        c = self.config
        epochs = epochs or c.epochs
        end_epoch = epochs if end_epoch is None else end_epoch
        if not 1 <= start_epoch <= end_epoch <= epochs:
            raise ValueError(f"fit(): need 1 <= start_epoch <= end_epoch <= epochs, got "
                             f"{start_epoch}, {end_epoch}, {epochs}")
        if (start_epoch > 1) != (state is not None):
            raise ValueError("fit(): state is needed exactly when start_epoch > 1")
        start_time = time.perf_counter()
        model.to(self.device)
        data = data.to(self.device)
        optimizers, schedulers = self._optimizers(model, epochs)
        best_val: list[float] | None = None
        best_epoch: list[int] = []
        if state is not None:
            for group, optimizer in optimizers.items():
                optimizer.load_state_dict(state["optimizers"][group])
            for group, scheduler in schedulers.items():
                scheduler.load_state_dict(state["schedulers"][group])
            best_val, best_epoch = state["best_val_acc"], state["best_epoch"]
        self.optimizers = optimizers
        generator = torch.Generator().manual_seed(seed)
        n = len(data.x_train)
        for _ in range(1, start_epoch):  # the batch orders of the epochs trained before
            torch.randperm(n, generator=generator)
        self.stop_requested = False
        for hook in self.hooks:
            hook.on_train_start(self, model)
        history: list[EpochMetrics] = []
        steps = 0
        for epoch in range(start_epoch, end_epoch + 1):
            epoch_start = time.perf_counter()
            model.train()
            lr = next(iter(optimizers.values())).param_groups[0]["lr"]
            order = torch.randperm(n, generator=generator).to(self.device)
            val_batches = self._val_batches(data, seed, epoch) if self.step.needs_val_batch \
                else None
            loss_sum = correct = None
            seen = 0
            for start in range(0, n, c.batch_size):
                index = order[start:start + c.batch_size]
                if len(index) < 2:  # BatchNorm needs two examples
                    continue
                xb, yb = data.x_train[index], data.y_train[index]
                val_batch = next(val_batches) if val_batches is not None else None
                with self._autocast():
                    output = self.step(model, (xb, yb), optimizers, val_batch)
                steps += 1
                for hook in self.hooks:
                    hook.on_step_end(self, model, steps, output)
                with torch.no_grad():
                    batch_loss = output.loss * len(index)
                    hits = (output.logits.argmax(-1) == yb).sum(1)
                    loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
                    correct = hits if correct is None else correct + hits
                seen += len(index)
            for scheduler in schedulers.values():
                scheduler.step()
            val_loss, val_acc = self.evaluate(model, data.x_val, data.y_val)
            metrics = EpochMetrics(epoch, lr, (loss_sum / seen).tolist(),
                                   (correct.double() / seen).tolist(), val_loss, val_acc,
                                   time.perf_counter() - epoch_start)
            history.append(metrics)
            if best_val is None:
                best_val, best_epoch = list(val_acc), [epoch] * len(val_acc)
            for k, acc in enumerate(val_acc):
                if acc > best_val[k]:
                    best_val[k], best_epoch[k] = acc, epoch
            for hook in self.hooks:
                hook.on_epoch_end(self, model, metrics)
            if c.patience is not None and all(epoch - b >= c.patience for b in best_epoch):
                self.stop_requested = True
            if self.stop_requested:
                break
        test_loss, test_acc = self.evaluate(model, data.x_test, data.y_test)
        final_state = {"optimizers": {g: o.state_dict() for g, o in optimizers.items()},
                       "schedulers": {g: s.state_dict() for g, s in schedulers.items()},
                       "best_val_acc": best_val, "best_epoch": best_epoch,
                       "epoch": history[-1].epoch}
        return TrainResult(history, test_loss, test_acc, time.perf_counter() - start_time,
                           stopped_early=history[-1].epoch < end_epoch, best_val_acc=best_val,
                           best_epoch=best_epoch, state=final_state)
