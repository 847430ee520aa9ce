"""The Trainer: K candidates trained together equal the same candidates trained one by one."""

from __future__ import annotations

import copy

import pytest
import torch

from sparsenas.data import load_dataset
from sparsenas.models import CandidateBatch, create_model
from sparsenas.sampling import sample_node_masks
from sparsenas.train import (StepOutput, TrainConfig, Trainer, TrainerHook, TrainStep,
                             candidate_logits, candidate_losses)


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", seed=0, num_examples=300)


def _parent():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_model("mlp", input_shape=(1, 8, 8), num_classes=10, widths=(24, 16))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_candidates_together_equal_candidates_alone(data, device, optimizer):
    config = TrainConfig(epochs=2, batch_size=32, lr=0.01, optimizer=optimizer)
    parent = _parent()
    masks = sample_node_masks(parent.layer_sizes, 0.5, 3, seed=5)
    together = Trainer(config, device=device).fit(CandidateBatch(parent, masks), data, seed=11)
    assert together.num_candidates == 3
    for k in range(3):
        single = copy.deepcopy(parent)
        single.set_candidate([m[k] for m in masks])
        alone = Trainer(config, device=device).fit(single, data, seed=11)
        assert alone.num_candidates == 1
        for mine, theirs in zip(together.history, alone.history):
            assert mine.val_loss[k] == pytest.approx(theirs.val_loss[0], rel=1e-4, abs=1e-5)
            assert mine.train_loss[k] == pytest.approx(theirs.train_loss[0], rel=1e-4, abs=1e-5)
        assert together.test_acc[k] == pytest.approx(alone.test_acc[0], abs=1.5 / 60)
    history = together.candidate_history(1)
    assert [row["epoch"] for row in history] == [1, 2] and isinstance(history[0]["val_acc"], float)
    assert together.candidate_final(1)["test_acc"] == together.test_acc[1]


def test_same_seed_same_run(data):
    config = TrainConfig(epochs=2, batch_size=32)
    first = Trainer(config).fit(_parent(), data, seed=3)
    second = Trainer(config).fit(_parent(), data, seed=3)
    other = Trainer(config).fit(_parent(), data, seed=4)
    assert [h.val_loss for h in first.history] == [h.val_loss for h in second.history]
    assert [h.train_loss for h in first.history] != [h.train_loss for h in other.history]


def test_early_stopping_and_hooks(data):
    calls = []

    class Recorder(TrainerHook):
        def on_train_start(self, trainer, model):
            calls.append("start")

        def on_epoch_end(self, trainer, model, metrics):
            calls.append(metrics.epoch)

    # A learning rate this small leaves validation accuracy flat: patience 1 stops at epoch 2.
    flat = TrainConfig(epochs=5, lr=1e-12, schedule="constant", patience=1)
    result = Trainer(flat, hooks=[Recorder()]).fit(_parent(), data, seed=0)
    assert result.stopped_early and len(result.history) == 2 and calls == ["start", 1, 2]

    class StopAfterFirst(TrainerHook):
        def on_epoch_end(self, trainer, model, metrics):
            trainer.stop_requested = True

    result = Trainer(TrainConfig(epochs=5), hooks=[StopAfterFirst()]).fit(_parent(), data, seed=0)
    assert len(result.history) == 1 and result.stopped_early


@pytest.mark.parametrize("options, match", [
    ({"epochs": 0}, "epochs"), ({"batch_size": 1}, "batch_size"), ({"lr": 0.0}, "lr"),
    ({"optimizer": "lbfgs"}, "optimizer"), ({"schedule": "step"}, "schedule"),
    ({"patience": 0}, "patience"),
])
def test_bad_config(options, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**options)


class _TwoGroupStep(TrainStep):
    """Head in its own "head" group (Adam, constant lr); body in "weights"; uses the validation
    batch for the head, as a bi-level step does."""

    needs_val_batch = True

    def __init__(self) -> None:
        self.val_sizes: list[int] = []

    def param_groups(self, model):
        head = list(model.body[-1].parameters())
        ids = {id(p) for p in head}
        return {"weights": [p for p in model.parameters() if id(p) not in ids], "head": head}

    def optimizer_options(self, group):
        return {"optimizer": "adam", "lr": 1e-3, "schedule": "constant"} if group == "head" else {}

    def __call__(self, model, batch, optimizers, val_batch=None):
        self.val_sizes.append(len(val_batch[0]))
        x_val, y_val = val_batch
        optimizers["head"].zero_grad()
        candidate_losses(candidate_logits(model, x_val), y_val).sum().backward()
        optimizers["head"].step()
        x, y = batch
        logits = candidate_logits(model, x)
        losses = candidate_losses(logits, y)
        optimizers["weights"].zero_grad()
        losses.sum().backward()
        optimizers["weights"].step()
        return StepOutput(losses.detach(), logits.detach())


def test_param_groups_val_batches_and_step_hooks(data):
    steps = []

    class Steps(TrainerHook):
        def on_step_end(self, trainer, model, step, output):
            steps.append((step, tuple(output.loss.shape)))

    step = _TwoGroupStep()
    trainer = Trainer(TrainConfig(epochs=2, batch_size=64), hooks=[Steps()], step=step)
    result = trainer.fit(_parent(), data, seed=0)
    assert set(trainer.optimizers) == {"weights", "head"}
    assert isinstance(trainer.optimizers["head"], torch.optim.Adam)
    assert trainer.optimizers["head"].param_groups[0]["lr"] == 1e-3  # constant schedule
    assert trainer.optimizers["weights"].param_groups[0]["lr"] < 0.05  # cosine schedule
    batches_per_epoch = -(-len(data.x_train) // 64)
    assert [s for s, _ in steps] == list(range(1, 2 * batches_per_epoch + 1))
    assert all(shape == (1,) for _, shape in steps)
    assert step.val_sizes and all(2 <= n <= 64 for n in step.val_sizes)
    assert len(result.history) == 2 and set(result.state["optimizers"]) == {"weights", "head"}
    with pytest.raises(ValueError, match="unknown keys"):
        class Bad(TrainStep):
            def optimizer_options(self, group):
                return {"learning_rate": 1}
        Trainer(TrainConfig(epochs=1), step=Bad()).fit(_parent(), data, seed=0)


@pytest.mark.parametrize("step", [None, _TwoGroupStep])
def test_training_in_pieces_equals_one_run(data, step):
    config = TrainConfig(epochs=3, batch_size=64, optimizer="adam")
    whole_model = _parent()
    whole = Trainer(config, step=step and step()).fit(whole_model, data, seed=5)
    model = _parent()
    first = Trainer(config, step=step and step()).fit(model, data, seed=5, end_epoch=1)
    rest = Trainer(config, step=step and step()).fit(model, data, seed=5, start_epoch=2,
                                                     state=first.state)
    assert [h.epoch for h in rest.history] == [2, 3]
    assert [h.train_loss for h in first.history + rest.history] == \
        [h.train_loss for h in whole.history]
    for a, b in zip(whole_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert rest.test_acc == whole.test_acc and rest.best_epoch == whole.best_epoch
    with pytest.raises(ValueError, match="state is needed"):
        Trainer(config).fit(_parent(), data, seed=5, start_epoch=2)


class _DecayStep(TrainStep):
    """A step whose learning rate halves every epoch, through a schedule callable."""

    def optimizer_options(self, group):
        return {"schedule": lambda epoch: 0.5 ** epoch}


def test_schedule_callable_from_the_step_sets_each_epochs_lr_and_resumes(data):
    config = TrainConfig(epochs=3, batch_size=64, lr=0.08)
    whole_model = _parent()
    whole = Trainer(config, step=_DecayStep()).fit(whole_model, data, seed=2)
    assert [h.lr for h in whole.history] == pytest.approx([0.08, 0.04, 0.02])
    model = _parent()
    first = Trainer(config, step=_DecayStep()).fit(model, data, seed=2, end_epoch=1)
    rest = Trainer(config, step=_DecayStep()).fit(model, data, seed=2, start_epoch=2,
                                                  state=first.state)
    assert [h.lr for h in rest.history] == pytest.approx([0.04, 0.02])
    for a, b in zip(whole_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)

    class Unknown(TrainStep):
        def optimizer_options(self, group):
            return {"schedule": "linear"}

    with pytest.raises(ValueError, match="schedule must be"):
        Trainer(config, step=Unknown()).fit(_parent(), data, seed=0)
