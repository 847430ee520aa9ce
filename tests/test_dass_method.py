"""DASS pieces: the three-phase schedule driven epoch by epoch with the bilevel step (and resumed
from a safetensors checkpoint to the same α), the search split, and HYDRA pruning."""

from __future__ import annotations

import copy

import pytest
import torch

from sparsenas.data import load_dataset
from sparsenas.methods.dass import (
    SearchSchedule,
    enter_phase,
    prune_and_finetune,
    search_splits,
    start_finetuning,
    start_pruning,
)
from sparsenas.models.darts import DartsNetwork, DartsSearchNetwork
from sparsenas.nn import model_phase, sparse_layers
from sparsenas.nn.scored import kept_count
from sparsenas.spaces.cells import DARTS_V2, derive_genotype
from sparsenas.store import load_checkpoint, save_checkpoint
from sparsenas.train import TrainConfig, Trainer, TrainStep
from sparsenas.train.bilevel import BilevelStep


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", seed=0, num_examples=120, num_classes=4)


def test_schedule_phases_and_warmup():
    schedule = SearchSchedule(dense_epochs=2, prune_epochs=1, finetune_epochs=2, keep=0.1,
                              warmup_epochs=1)
    assert [schedule.phase_at(e) for e in range(5)] == ["dense", "dense", "prune", "finetune",
                                                        "finetune"]
    assert [schedule.update_arch_at(e) for e in range(5)] == [False, True, True, True, True]
    assert SearchSchedule(0, 0, 1, keep=0.5).phase_at(0) == "finetune"
    with pytest.raises(ValueError, match="outside"):
        schedule.phase_at(5)
    with pytest.raises(ValueError, match="'keep'"):
        SearchSchedule(1, 1, 1, keep=0.0)
    with pytest.raises(ValueError, match="'prune_epochs'"):
        SearchSchedule(1, -1, 1, keep=0.5)


def test_search_splits_halve_the_training_set(data):
    split = search_splits(data, seed=3)
    assert len(split.x_train) + len(split.x_val) == len(data.x_train)
    assert abs(len(split.x_train) - len(split.x_val)) <= 1
    assert torch.equal(split.x_test, data.x_val)
    rows = {tuple(x.flatten().tolist()) for x in torch.cat([split.x_train, split.x_val])}
    assert len(rows) == len(data.x_train)
    assert torch.equal(search_splits(data, seed=3).x_train, split.x_train)


def _batches(split, epoch, batch_size=16):
    """A plain epoch of (train, val) batch pairs, shuffled from the epoch number."""
    generator = torch.Generator().manual_seed(epoch)
    train = torch.randperm(len(split.x_train), generator=generator)
    val = torch.randperm(len(split.x_val), generator=generator)
    for start in range(0, min(len(train), len(val)) - batch_size + 1, batch_size):
        t, v = train[start:start + batch_size], val[start:start + batch_size]
        yield (split.x_train[t], split.y_train[t]), (split.x_val[v], split.y_val[v])


def _optimizers(step, model):
    return {group: torch.optim.Adam(params, lr=3e-3) if group == "arch"
            else torch.optim.SGD(params, lr=0.05, momentum=0.9)
            for group, params in step.param_groups(model).items()}


def _search(model, split, schedule, epochs, optimizers=None):
    step = BilevelStep()
    for epoch in epochs:
        if enter_phase(model, schedule, epoch) or optimizers is None:
            optimizers = _optimizers(step, model)
        step.update_arch = schedule.update_arch_at(epoch)
        for batch, val_batch in _batches(split, epoch):
            step(model, batch, optimizers, val_batch)
    return optimizers


def _supernet():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return DartsSearchNetwork((1, 8, 8), 4, C=2, layers=3, steps=2)


def test_three_phase_search_resumes_to_the_same_alpha(data, tmp_path):
    split = search_splits(data, seed=0)
    schedule = SearchSchedule(dense_epochs=1, prune_epochs=1, finetune_epochs=1, keep=0.2,
                              warmup_epochs=1)
    model = _supernet()
    start_alphas = [a.detach().clone() for a in model.arch_parameters()]
    _search(model, split, schedule, [0])
    assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), start_alphas))

    interrupted = copy.deepcopy(model)
    optimizers = _search(interrupted, split, schedule, [1])  # prune phase
    assert model_phase(interrupted) == "prune"
    weights = {name: layer.weight.detach().clone() for name, layer in sparse_layers(model)}
    assert all(torch.equal(layer.weight, weights[name])
               for name, layer in sparse_layers(interrupted))  # frozen while pruning
    save_checkpoint(tmp_path / "epoch1.safetensors", interrupted.state_dict())
    optimizer_states = {g: copy.deepcopy(o.state_dict()) for g, o in optimizers.items()}

    _search(model, split, schedule, [1, 2])  # uninterrupted
    assert model_phase(model) == "finetune"

    resumed = _supernet()
    enter_phase(resumed, schedule, 1, resumed=True)
    state, _ = load_checkpoint(tmp_path / "epoch1.safetensors")
    resumed.load_state_dict(state)
    step = BilevelStep()
    optimizers = _optimizers(step, resumed)
    for group, optimizer in optimizers.items():
        optimizer.load_state_dict(optimizer_states[group])
    _search(resumed, split, schedule, [2], optimizers)
    for a, b in zip(resumed.arch_parameters(), model.arch_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert derive_genotype(*resumed.arch_parameters()) == derive_genotype(*model.arch_parameters())
    assert not torch.equal(model.alphas_normal, start_alphas[0])


def test_prune_and_finetune_keeps_the_fraction(data):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DartsNetwork((1, 8, 8), 4, genotype=DARTS_V2, C=2, layers=3)
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05)
    result = prune_and_finetune(model, data, keep=0.1, seed=0, prune=config, finetune=config,
                                device="cpu")
    layers = [layer for _, layer in sparse_layers(model)]
    expected = sum(kept_count(layer.weight.numel(), 0.1) for layer in layers)
    total = sum(layer.weight.numel() for layer in layers)
    assert result.kept_fraction == pytest.approx(expected / total)
    assert model_phase(model) == "finetune"
    assert 0.0 <= result.test_acc <= 1.0 and 0.0 <= result.pruned_test_acc <= 1.0
    for layer in layers:
        exported = layer.to_dense()
        assert int((exported.weight != 0).sum()) <= kept_count(layer.weight.numel(), 0.1)
    with pytest.raises(ValueError, match="'keep'"):
        prune_and_finetune(model, data, keep=1.5, seed=0, prune=config, finetune=config)


def test_bilevel_step_drives_the_trainer(data):
    split = search_splits(data, seed=0)
    model = _supernet()
    step = BilevelStep()
    assert isinstance(step, TrainStep)
    start = model.alphas_normal.detach().clone()
    trainer = Trainer(TrainConfig(epochs=1, batch_size=16, lr=0.05), step=step, device="cpu")
    result = trainer.fit(model, split, seed=0)
    assert set(trainer.optimizers) == {"weights", "arch"}
    assert isinstance(trainer.optimizers["arch"], torch.optim.Adam)
    assert not torch.equal(model.alphas_normal, start)
    assert 0.0 <= result.test_acc[0] <= 1.0


def _evaluation_network():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return DartsNetwork((1, 8, 8), 4, genotype=DARTS_V2, C=2, layers=3)


def test_hydra_phase_resumes_epoch_by_epoch_from_a_checkpoint(data, tmp_path):
    config = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    whole = _evaluation_network()
    start_pruning(whole, 0.2)
    Trainer(config, device="cpu").fit(whole, data, seed=4)

    first = _evaluation_network()
    start_pruning(first, 0.2)
    piece = Trainer(config, device="cpu").fit(first, data, seed=4, end_epoch=1)
    save_checkpoint(tmp_path / "prune.safetensors", first.state_dict())

    resumed = _evaluation_network()
    start_pruning(resumed, 0.2)  # the checkpoint then overwrites the freshly initialised scores
    resumed.load_state_dict(load_checkpoint(tmp_path / "prune.safetensors")[0])
    Trainer(config, device="cpu").fit(resumed, data, seed=4, start_epoch=2,
                                      state=copy.deepcopy(piece.state))
    for (name, a), (_, b) in zip(sparse_layers(resumed), sparse_layers(whole)):
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(a.mask(), b.mask()), name

    start_finetuning(resumed)
    restored = _evaluation_network()
    start_finetuning(restored)
    restored.load_state_dict(resumed.state_dict())
    assert all(torch.equal(a.fixed_mask, b.fixed_mask)
               for (_, a), (_, b) in zip(sparse_layers(restored), sparse_layers(resumed)))
