"""SandwichStep: which children a step trains, the losses and regularisation each gets, children
computed together equal children computed one by one, the LR schedule, and epoch-by-epoch
resumption."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sparsenas.data import Dataset, load_dataset
from sparsenas.models import ElasticNet
from sparsenas.spaces.elastic import ElasticSpace
from sparsenas.store import load_checkpoint, save_checkpoint
from sparsenas.train import TrainConfig, Trainer, TrainStep
from sparsenas.train.sandwich import (SandwichStep, exponential_decay_lambda,
                                      exponential_decay_schedule)


def _model(seed: int = 0) -> ElasticNet:
    torch.manual_seed(seed)
    model = ElasticNet((1, 8, 8), 10, stem_channels=8, stage_channels=(8, 16),
                       stage_depths=(2, 2), stage_strides=(1, 2))
    with torch.no_grad():  # non-zero last γ, so every block's weights get gradients
        for stage in model.stages:
            for block in stage:
                block.bn2.weight.fill_(0.5)
    return model


def _space(model: ElasticNet) -> ElasticSpace:
    return ElasticSpace.for_model(model, resolutions=(6, 8), width_multipliers=(0.5, 0.75, 1.0))


def _batch(n: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 8, 8, generator=generator),
            torch.randint(0, 10, (n,), generator=generator))


def _sgd(step, model, lr=0.1):
    return {g: torch.optim.SGD(ps, lr=lr, **step.optimizer_options(g))
            for g, ps in step.param_groups(model).items()}


def test_sandwich_children_biggest_smallest_then_seeded_random():
    model = _model()
    space = _space(model)
    step = SandwichStep(space, seed=5, num_random=3)
    assert isinstance(step, TrainStep)
    children = step.children(model, 4)
    assert children[0] == space.biggest() and children[1] == space.smallest()
    assert len(children) == 5 and children == step.children(model, 4)
    assert children[2:] != step.children(model, 5)[2:]
    uniform = SandwichStep(space, seed=5, rule="uniform", distill=False).children(model, 4)
    assert len(uniform) == 4
    assert model.flops(uniform[0]) == max(model.flops(c) for c in uniform)


def test_step_gradient_is_lead_on_labels_plus_others_on_detached_soft_predictions():
    model = _model()
    step = SandwichStep(_space(model), seed=1, label_smoothing=0.1, distill_loss="soft_ce")
    reference = copy.deepcopy(model)
    x, y = _batch()
    children = step.children(model, 0)
    out = step(model, (x, y), _sgd(step, model, lr=1.0))
    # Independent: the loss written out child by child, gradients from one backward pass.
    reference.train()
    big = reference.run_child(x, children[0])
    total = F.cross_entropy(big, y, label_smoothing=0.1)
    target = F.softmax(big.detach(), -1)
    expected_losses = [total.detach()]
    for child in children[1:]:
        logits = reference.run_child(x, child, update_bn_stats=False)
        loss = -(target * F.log_softmax(logits, -1)).sum(-1).mean()
        expected_losses.append(loss.detach())
        total = total + loss
    total.backward()
    torch.testing.assert_close(out.loss, torch.stack(expected_losses), atol=1e-5, rtol=1e-5)
    assert out.logits.shape == (len(children), len(x), 10)
    for (name, after), before in zip(model.named_parameters(), reference.parameters()):
        grad = torch.zeros_like(before) if before.grad is None else before.grad
        torch.testing.assert_close(after, before - grad, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")
    assert model.child == _space(model).biggest()


def test_weight_decay_is_an_l2_term_on_the_biggest_child_only():
    lr, decay = 0.1, 0.01
    space = _space(_model())
    updated = []
    for weight_decay in (0.0, decay):
        model = _model()
        step = SandwichStep(space, seed=2, weight_decay=weight_decay)
        opts = _sgd(step, model, lr=lr)
        assert all(g["weight_decay"] == 0 for o in opts.values() for g in o.param_groups)
        step(model, _batch(), opts)
        updated.append(dict(model.named_parameters()))
    initial = dict(_model().named_parameters())
    for name, start in initial.items():
        difference = updated[0][name] - updated[1][name]
        decayed = name.endswith("weight") and ("conv" in name or name.startswith("classifier"))
        expected = lr * decay * start if decayed else torch.zeros_like(start)
        torch.testing.assert_close(difference, expected.detach(), atol=1e-6, rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_dropout_only_on_the_lead_child():
    model = _model()
    step = SandwichStep(_space(model), seed=3, dropout=0.5)
    x, y = _batch()
    children = step.children(model, 0)
    plain = copy.deepcopy(model).train()
    expected = [plain.run_child(x, c, update_bn_stats=False).detach() for c in children]
    out = step(model, (x, y), _sgd(step, model))
    assert not torch.allclose(out.logits[0], expected[0], atol=1e-3)
    torch.testing.assert_close(out.logits[1:], torch.stack(expected[1:]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rule, distill", [("sandwich", True), ("sandwich", False),
                                           ("uniform", False)])
def test_children_together_equal_children_one_by_one_over_steps(rule, distill):
    # Widths vary within shared depths / resolution: a space where steps batch children.
    narrow = ElasticSpace((8,), ((2,), (2,)), ((4, 6, 8), (8, 12, 16)), (3, 5))
    models, outputs, steps = [], [], []
    for batch_children in (True, False):
        model = _model()
        step = SandwichStep(narrow, seed=4, num_random=4, rule=rule, distill=distill,
                            batch_children=batch_children)
        opts = _sgd(step, model)
        outputs.append([step(model, _batch(seed=s), opts) for s in range(3)])
        models.append(model)
        steps.append(step)
    assert any(len(group) > 1 for t in range(3)
               for group in steps[0]._groups(steps[0].children(models[0], t)[1:]))
    for together, alone in zip(*outputs):
        torch.testing.assert_close(together.loss, alone.loss, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(together.logits, alone.logits, atol=1e-5, rtol=1e-4)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_exponential_decay_with_constant_ending():
    factor = exponential_decay_lambda(0.5, 2, final_fraction=0.2, warmup_steps=2)
    assert [factor(t) for t in range(8)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.5 ** 0.5, 0.5, 0.5 ** 1.5, 0.25, 0.2])
    assert factor(1000) == 0.2
    with pytest.raises(ValueError, match="decay"):
        exponential_decay_lambda(1.5, 2, 0.1)


def test_bad_step_arguments():
    space = _space(_model())
    with pytest.raises(ValueError, match="distillation"):
        SandwichStep(space, rule="uniform")
    with pytest.raises(ValueError, match="rule"):
        SandwichStep(space, rule="sometimes")
    with pytest.raises(TypeError, match="ElasticNet"):
        SandwichStep(space)(torch.nn.Linear(2, 2), _batch(), {})


def _epoch(model, step, opts, schedule, data, epoch):
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(epoch))
    for start in range(0, 256, 64):
        index = order[start:start + 64]
        step(model, (data.x_train[index], data.y_train[index]), opts)
        schedule.step()


def _fresh(space):
    model = _model()
    step = SandwichStep(space, seed=9, weight_decay=1e-4, dropout=0.1)
    opts = {g: torch.optim.SGD(ps, lr=0.1, momentum=0.9, **step.optimizer_options(g))
            for g, ps in step.param_groups(model).items()}
    schedule = exponential_decay_schedule(opts["weights"], 0.9, 2, 0.3, warmup_steps=2)
    return model, step, opts, schedule


def test_training_resumes_epoch_by_epoch_from_saved_state(tmp_path):
    data = load_dataset("digits", seed=0)
    space = _space(_model())
    model, step, opts, schedule = _fresh(space)
    for epoch in range(2):
        _epoch(model, step, opts, schedule, data, epoch)
    # The same two epochs with a save / restore into fresh objects between them.
    first, step1, opts1, schedule1 = _fresh(space)
    _epoch(first, step1, opts1, schedule1, data, 0)
    save_checkpoint(tmp_path / "supernet.safetensors", first.state_dict())
    saved = copy.deepcopy({"opt": opts1["weights"].state_dict(), "sched": schedule1.state_dict(),
                           "step": step1.state_dict()})
    resumed, step2, opts2, schedule2 = _fresh(space)
    resumed.load_state_dict(load_checkpoint(tmp_path / "supernet.safetensors")[0])
    opts2["weights"].load_state_dict(saved["opt"])
    schedule2.load_state_dict(saved["sched"])
    step2.load_state_dict(saved["step"])
    _epoch(resumed, step2, opts2, schedule2, data, 1)
    assert step2.step_index == step.step_index == 8
    assert opts2["weights"].param_groups[0]["lr"] == opts["weights"].param_groups[0]["lr"]
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=lambda m, n=name: f"{n}: {m}")


def _small_digits():
    data = load_dataset("digits", seed=0)
    return Dataset(name="digits-small", x_train=data.x_train[:192], y_train=data.y_train[:192],
                   x_val=data.x_val[:64], y_val=data.y_val[:64], x_test=data.x_test[:64],
                   y_test=data.y_test[:64], num_classes=data.num_classes)


def test_trainer_drives_the_step_and_resumes_in_pieces():
    data, space = _small_digits(), _space(_model())
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, schedule="cosine")

    def trainer():
        return Trainer(config, step=SandwichStep(space, seed=6, weight_decay=1e-4, dropout=0.1),
                       device="cpu")

    whole_trainer, whole = trainer(), _model()
    result = whole_trainer.fit(whole, data, seed=1)
    assert whole_trainer.optimizers["weights"].param_groups[0]["weight_decay"] == 0
    assert len(result.history[-1].train_loss) == 4 and len(result.history[-1].val_acc) == 1
    assert whole.child == space.biggest()
    first_trainer, pieces = trainer(), _model()
    first = first_trainer.fit(pieces, data, seed=1, end_epoch=1)
    step_state = first_trainer.step.state_dict()
    second_trainer = trainer()
    second_trainer.step.load_state_dict(step_state)
    second = second_trainer.fit(pieces, data, seed=1, start_epoch=2, state=first.state)
    assert second.history[-1].val_acc == result.history[-1].val_acc
    for (name, a), b in zip(whole.state_dict().items(), pieces.state_dict().values()):
        torch.testing.assert_close(a, b, msg=lambda m, n=name: f"{n}: {m}")
