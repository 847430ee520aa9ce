"""Trainer: owns the loop (optimiser, LR schedule, evaluation, early stopping, device, AMP on CUDA).

It trains one network (logits [N, classes]) or K candidates together (a
:class:`sparsenas.models.CandidateBatch`, logits [K, N, classes]) on the same shuffled batches;
the loss is the sum of the candidates' mean losses, so each candidate, whose parameters are its
own, follows exactly the updates it would get if it were trained alone. Metrics are kept per
candidate. Search strategies plug in through :class:`TrainerHook`; they never own the loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsenas.data import Dataset


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    patience: int | None = None
    device: str = "auto"
    amp: bool = False
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.eval_batch_size < 1:
            raise ValueError("TrainConfig: epochs must be >= 1, batch_size >= 2 (BatchNorm) and "
                             "eval_batch_size >= 1")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig: lr must be positive, got {self.lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"TrainConfig: optimizer must be 'sgd' or 'adam', got "
                             f"{self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"TrainConfig: schedule must be 'cosine' or 'constant', got "
                             f"{self.schedule!r}")
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
    the current epoch."""

    def on_train_start(self, trainer: Trainer, model: nn.Module) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, model: nn.Module, metrics: EpochMetrics) -> None:
        pass


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def _per_candidate(logits: Tensor) -> Tensor:
    return logits if logits.dim() == 3 else logits.unsqueeze(0)


class Trainer:
    def __init__(self, config: TrainConfig, hooks: Sequence[TrainerHook] = ()) -> None:
        self.config = config
        self.hooks = list(hooks)
        self.device = resolve_device(config.device)
        self.stop_requested = False

    def _autocast(self):
        enabled = self.config.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum,
                               weight_decay=c.weight_decay)

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
                logits = _per_candidate(model(xb)).float()
            losses = F.cross_entropy(logits.transpose(1, 2), yb.expand(len(logits), -1),
                                     reduction="none").sum(1)
            hits = (logits.argmax(-1) == yb).sum(1)
            loss_sum = losses if loss_sum is None else loss_sum + losses
            correct = hits if correct is None else correct + hits
        model.train(was_training)
        return (loss_sum / len(x)).tolist(), (correct.double() / len(x)).tolist()

    def fit(self, model: nn.Module, data: Dataset, seed: int,
            epochs: int | None = None) -> TrainResult:
        """Trains ``model`` on data's train split (batches shuffled from ``seed``), evaluates on
        the validation split every epoch and on the test split at the end."""
        c = self.config
        epochs = epochs or c.epochs
        start_time = time.perf_counter()
        model.to(self.device)
        data = data.to(self.device)
        optimizer = self._optimizer(model)
        scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
                     if c.schedule == "cosine" else None)
        generator = torch.Generator().manual_seed(seed)
        self.stop_requested = False
        for hook in self.hooks:
            hook.on_train_start(self, model)
        history: list[EpochMetrics] = []
        best_val: list[float] | None = None
        best_epoch: list[int] = []
        n = len(data.x_train)
        for epoch in range(1, epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            lr = optimizer.param_groups[0]["lr"]
            order = torch.randperm(n, generator=generator).to(self.device)
            loss_sum = correct = None
            seen = 0
            for start in range(0, n, c.batch_size):
                index = order[start:start + c.batch_size]
                if len(index) < 2:  # BatchNorm needs two examples
                    continue
                xb, yb = data.x_train[index], data.y_train[index]
                with self._autocast():
                    logits = _per_candidate(model(xb)).float()
                losses = F.cross_entropy(logits.transpose(1, 2), yb.expand(len(logits), -1),
                                         reduction="none").mean(1)
                optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()
                optimizer.step()
                with torch.no_grad():
                    batch_loss = losses.detach() * len(index)
                    hits = (logits.argmax(-1) == yb).sum(1)
                    loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
                    correct = hits if correct is None else correct + hits
                seen += len(index)
            if scheduler is not None:
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
        return TrainResult(history, test_loss, test_acc, time.perf_counter() - start_time,
                           stopped_early=len(history) < epochs, best_val_acc=best_val,
                           best_epoch=best_epoch)
