"""The bilevel step: first order against plain autograd, second order against central finite
differences of the unrolled objective (float64, tiny supernet), phases and parameter groups."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sparsenas.models.darts import DartsSearchNetwork
from sparsenas.nn import score_parameters, set_phase, sparse_layers
from sparsenas.train.bilevel import BilevelStep


pytestmark = pytest.mark.usefixtures("one_thread")


def _supernet(dtype=torch.float32, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DartsSearchNetwork((1, 8, 8), 3, C=2, layers=3, steps=1).to(dtype)
        with torch.no_grad():  # α away from uniform so every term matters
            for alphas in model.arch_parameters():
                alphas.normal_()
    return model


def _batches(dtype=torch.float32, n=6):
    generator = torch.Generator().manual_seed(5)
    make = lambda: (torch.randn(n, 1, 8, 8, generator=generator, dtype=dtype),
                    torch.randint(0, 3, (n,), generator=generator))
    return make(), make()


def _sgd(step, model, lr):
    return {g: torch.optim.SGD(ps, lr=lr) for g, ps in step.param_groups(model).items()}


@pytest.mark.parametrize("phase", ["dense", "prune", "finetune"])
def test_first_order_step_equals_plain_autograd(phase):
    model = _supernet(torch.float64)
    set_phase(model, phase, keep=0.3)
    reference = copy.deepcopy(model)
    batch, val_batch = _batches(torch.float64)
    step = BilevelStep(grad_clip=None)
    groups = step.param_groups(model)
    trained_name = "scores" if phase == "prune" else "weights"
    assert set(groups) == {trained_name, "arch"}
    output = step(model, batch, _sgd(step, model, 0.1), val_batch)

    arch = reference.arch_parameters()
    trained = (score_parameters(reference) if phase == "prune" else
               [p for p in reference.parameters()
                if p.requires_grad and all(p is not a for a in arch + score_parameters(reference))])
    val_loss = F.cross_entropy(reference(val_batch[0]), val_batch[1])
    with torch.no_grad():
        for a, g in zip(arch, torch.autograd.grad(val_loss, arch)):
            a.sub_(0.1 * g)
    logits = reference(batch[0])
    loss = F.cross_entropy(logits, batch[1])
    with torch.no_grad():
        for p, g in zip(trained, torch.autograd.grad(loss, trained)):
            p.sub_(0.1 * g)
    torch.testing.assert_close(output.loss, loss.detach().reshape(1))
    torch.testing.assert_close(output.logits, logits.detach().unsqueeze(0))
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=name)
    if phase == "prune":  # weights frozen
        start = _supernet(torch.float64)
        for (_, layer), (_, initial) in zip(sparse_layers(model), sparse_layers(start)):
            assert torch.equal(layer.weight, initial.weight)


def _unrolled_objective(model, batch, val_batch, xi):
    """L_val(w − ξ ∂L_train/∂w, α) on a copy, as a function of the current α."""
    model = copy.deepcopy(model)
    weights = BilevelStep().param_groups(model)["weights"]
    grads = torch.autograd.grad(F.cross_entropy(model(batch[0]), batch[1]), weights)
    with torch.no_grad():
        for p, g in zip(weights, grads):
            p.sub_(xi * g)
        return F.cross_entropy(model(val_batch[0]), val_batch[1]).item()


def _directional_derivatives(model, batch, val_batch, xi, directions, h=1e-6):
    """Central differences of the unrolled objective along each direction (a pair of α tensors)."""
    arch = model.arch_parameters()
    values = []
    for direction in directions:
        sides = []
        for sign in (1, -1):
            with torch.no_grad():
                for a, d in zip(arch, direction):
                    a.add_(sign * h * d)
            sides.append(_unrolled_objective(model, batch, val_batch, xi))
            with torch.no_grad():
                for a, d in zip(arch, direction):
                    a.sub_(sign * h * d)
        values.append((sides[0] - sides[1]) / (2 * h))
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("train_mode, radius, rtol, atol", [
    # BatchNorm on 2x2 maps of 6 examples curves the loss sharply: a small radius resolves it
    (True, 1e-4, 1e-4, 1e-6),
    # DARTS' radius on the smoother eval-mode network: its O(ε²) approximation error
    (False, 0.01, 0, 2e-4),
])
def test_second_order_gradient_matches_finite_differences(train_mode, radius, rtol, atol):
    model = _supernet(torch.float64).train(train_mode)
    batch, val_batch = _batches(torch.float64)
    step = BilevelStep(order="second", xi=0.5, hvp_radius=radius)
    weights = step.param_groups(model)["weights"]
    before = [p.detach().clone() for p in model.parameters()]
    second = step.arch_gradient(model, batch, val_batch, weights, xi=0.5)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # w restored
    first = BilevelStep().arch_gradient(model, batch, val_batch, weights, xi=0.5)

    generator = torch.Generator().manual_seed(9)
    directions = [[torch.randn(a.shape, generator=generator, dtype=torch.float64)
                   for a in model.arch_parameters()] for _ in range(4)]
    directions.append([torch.ones_like(model.alphas_normal),  # the normal cell alone
                       torch.zeros_like(model.alphas_reduce)])
    numeric = _directional_derivatives(model, batch, val_batch, 0.5, directions)
    along = lambda grads: torch.stack([sum((g * d).sum() for g, d in zip(grads, direction))
                                       for direction in directions])
    torch.testing.assert_close(along(second), numeric, rtol=rtol, atol=atol)
    # the second-order term matters here, so the check has teeth
    assert (along(first) - numeric).abs().max() > 10 * (along(second) - numeric).abs().max()


def test_update_arch_off_keeps_alpha_and_needs_no_val_batch():
    model = _supernet()
    step = BilevelStep(update_arch=False)
    alphas = [a.detach().clone() for a in model.arch_parameters()]
    batch, _ = _batches()
    output = step(model, batch, {"weights": torch.optim.SGD(step.param_groups(model)["weights"],
                                                            lr=0.1)})
    assert output.loss.shape == (1,) and output.logits.shape == (1, 6, 3)
    assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), alphas))
    with pytest.raises(ValueError, match="'val_batch'"):
        BilevelStep()(model, batch, _sgd(step, model, 0.1))


def test_options_and_bad_arguments():
    step = BilevelStep()
    assert step.needs_val_batch
    assert step.optimizer_options("arch")["optimizer"] == "adam"
    assert step.optimizer_options("weights") == {}
    with pytest.raises(ValueError, match="'order'"):
        BilevelStep(order="third")
    with pytest.raises(ValueError, match="'model'"):
        step.param_groups(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    model = _supernet()
    batch, val_batch = _batches()
    with pytest.raises(ValueError, match="lacks the group"):
        step(model, batch, {"weights": torch.optim.SGD(model.parameters(), lr=0.1)}, val_batch)


def test_search_loop_lowers_the_loss():
    model = _supernet(seed=1)
    step = BilevelStep(order="second")
    optimizers = _sgd(step, model, 0.05)
    batch, val_batch = _batches(n=8)
    losses = [step(model, batch, optimizers, val_batch).loss.item() for _ in range(4)]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("phase", ["prune", "finetune"])
def test_second_order_step_on_the_masked_ops(phase):
    model = _supernet()
    set_phase(model, phase, keep=0.3)
    masks = {name: layer.mask().clone() for name, layer in sparse_layers(model)}
    weights = {name: layer.weight.detach().clone() for name, layer in sparse_layers(model)}
    alphas = model.alphas_reduce.detach().clone()
    step = BilevelStep(order="second")
    batch, val_batch = _batches()
    output = step(model, batch, _sgd(step, model, 0.1), val_batch)
    assert torch.isfinite(output.loss).all()
    assert not torch.equal(model.alphas_reduce, alphas)
    changed = [name for name, layer in sparse_layers(model)
               if not torch.equal(layer.weight, weights[name])]
    if phase == "prune":  # scores move, weights stay
        assert not changed
    else:  # weights move under the fixed mask; pruned entries get no gradient
        assert changed
        for name, layer in sparse_layers(model):
            assert torch.equal(layer.mask(), masks[name])
            pruned = ~masks[name]
            assert torch.equal(layer.weight[pruned], weights[name][pruned])
