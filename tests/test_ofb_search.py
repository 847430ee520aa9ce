"""Driving an OFB search: the joint step's groups and updates, progressive elimination with the
optimiser state sliced consistently, exact resume from saved state (shrunk shapes included), and
PMIM masking and reconstruction."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sparsenas.data import Dataset, load_dataset
from sparsenas.methods.ofb import OFBSupernet, to_plain_vit
from sparsenas.methods.ofb.objective import OFBConfig, OFBObjective, ofb_step, patch_pixels
from sparsenas.models import ViT, flops
from sparsenas.sparse import slice_parameter_
from sparsenas.store import load_checkpoint, save_checkpoint
from sparsenas.train import TrainConfig, Trainer
from sparsenas.train.joint import JointMaskStep

pytestmark = pytest.mark.usefixtures("one_thread")

RATIOS = {"embed": (0.5, 0.75, 1.0), "attn": (0.5, 1.0), "mlp": (0.25, 0.5, 1.0)}


def _supernet(seed: int = 0) -> OFBSupernet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = ViT((1, 8, 8), 4, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0)
        return OFBSupernet(vit, RATIOS, score_init=1.0).double()


def _batches(count: int, seed: int = 5, n: int = 8):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 8, 8, generator=generator, dtype=torch.float64),
             torch.randint(0, 4, (n,), generator=generator)) for _ in range(count)]


def _config(net: OFBSupernet, **kwargs) -> OFBConfig:
    return OFBConfig(target_flops=0.6 * net.original_flops, warmup_steps=6, **kwargs)


def _optimizers(step: JointMaskStep, net: OFBSupernet, weights: str = "sgd"):
    groups = step.param_groups(net)
    weight_opt = (torch.optim.SGD(groups["weights"], lr=0.05, momentum=0.9, weight_decay=1e-4)
                  if weights == "sgd" else torch.optim.Adam(groups["weights"], lr=1e-3))
    return {"weights": weight_opt,
            "arch": torch.optim.Adam(groups["arch"], lr=0.05, betas=(0.5, 0.999)),
            "scores": torch.optim.Adam(groups["scores"], lr=0.05, betas=(0.5, 0.999))}


def test_param_groups_partition_the_parameters_and_options():
    net = _supernet()
    step = ofb_step(_config(net), net, seed=1)
    groups = step.param_groups(net)
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    assert {id(p) for p in groups["arch"]} == {id(u.alpha) for u in net.units.values()}
    assert {id(p) for p in groups["scores"]} == {id(u.scores) for u in net.units.values()}
    assert step.optimizer_options("arch")["optimizer"] == "adam"
    assert step.optimizer_options("weights") == {}
    with pytest.raises(ValueError, match="unknown group 'bn'"):
        step.optimizer_options("bn")
    with pytest.raises(ValueError, match="lacks the groups \\['scores'\\]"):
        step(net, _batches(1)[0], {"weights": None, "arch": None})


def test_one_step_updates_all_three_groups_from_one_batch():
    net = _supernet()
    step = ofb_step(_config(net, pmim=False), net, seed=1)
    before = copy.deepcopy(net)
    batch = _batches(1)[0]
    out = step(net, batch, _optimizers(step, net))
    assert out.loss.shape == (1,) and out.logits.shape == (1, 8, 4)
    # The reported loss is the batch's cross-entropy under the schedule's first w_p.
    before.importance_weight.fill_(0.99)
    torch.testing.assert_close(out.loss[0], F.cross_entropy(before(batch[0]), batch[1]))
    for unit, old in zip(net.units.values(), before.units.values()):
        assert not torch.equal(unit.alpha, old.alpha)
        assert not torch.equal(unit.scores, old.scores)
    assert not torch.equal(net.vit.blocks[0].fc1.weight, before.vit.blocks[0].fc1.weight)
    assert float(net.importance_weight) == pytest.approx(0.99 + (0.1 - 0.99) / 6)


def test_target_flops_outside_the_search_range_is_rejected():
    net = _supernet()
    with pytest.raises(ValueError, match="must lie between the smallest"):
        OFBObjective(OFBConfig(target_flops=1.01 * net.original_flops, warmup_steps=5), net, 0)
    with pytest.raises(ValueError, match="must lie between the smallest"):
        OFBObjective(OFBConfig(target_flops=0.5 * net.smallest_flops(), warmup_steps=5), net, 0)
    with pytest.raises(ValueError, match="warmup_steps"):
        OFBConfig(target_flops=1.0, warmup_steps=0)


def _force_elimination(net: OFBSupernet) -> None:
    with torch.no_grad():
        for unit in net.units.values():
            unit.alpha[-1] = unit.alpha.max() - 8.0


@pytest.mark.parametrize("weights", ["sgd", "adam"])
def test_shrinking_slices_optimizer_state_consistently(weights):
    net = _supernet()
    step = ofb_step(_config(net, eliminate_every=1000), net, seed=2)
    optimizers = _optimizers(step, net, weights)
    batches = _batches(5)
    for batch in batches[:3]:
        step(net, batch, optimizers)
    _force_elimination(net)
    mlp, attn, embed = net.units["mlp_0"], net.units["attn_1"], net.units["embed"]
    mlp_keep = mlp.keep_index(16)[0]
    attn_keep = attn.keep_index(4)
    embed_keep = embed.keep_index(12)[0]
    fc1, qkv = net.vit.blocks[0].fc1.weight, net.vit.blocks[1].attn.qkv.weight
    key = "momentum_buffer" if weights == "sgd" else "exp_avg"
    old_fc1 = optimizers["weights"].state[fc1][key].clone()
    old_qkv = optimizers["weights"].state[qkv][key].clone()
    old_alpha_state = optimizers["arch"].state[mlp.alpha]["exp_avg"].clone()
    net.eliminate(optimizers.values())
    # Independent slicing of the old state: fc1 rows = kept hidden units, embedding columns.
    torch.testing.assert_close(optimizers["weights"].state[fc1][key],
                               old_fc1[mlp_keep][:, embed_keep])
    # qkv rows: for q, k and v, each head's kept channels (head h owns rows h*8 .. h*8+7).
    rows = [part * 16 + head * 8 + int(c) for part in range(3) for head in range(2)
            for c in attn_keep[head]]
    torch.testing.assert_close(optimizers["weights"].state[qkv][key],
                               old_qkv[rows][:, embed_keep])
    torch.testing.assert_close(optimizers["arch"].state[mlp.alpha]["exp_avg"], old_alpha_state)

    # A step after shrinking equals a step of a network built small with the sliced state.
    small = _supernet()
    small.resize_like(net.state_dict())
    small.load_state_dict(net.state_dict())
    small_step = ofb_step(_config(small, eliminate_every=1000), small, seed=2)
    small_step.load_state_dict(step.state_dict())
    small_optimizers = _optimizers(small_step, small, weights)
    for name, optimizer in optimizers.items():
        # A copy: load_state_dict would otherwise share the state tensors between the two.
        small_optimizers[name].load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for batch in batches[3:]:
        step(net, batch, optimizers)
        small_step(small, batch, small_optimizers)
    for (name, p), (_, q) in zip(net.state_dict().items(), small.state_dict().items()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_search_resumes_exactly_from_saved_state_with_shrunk_shapes():
    batches = _batches(12)

    def fresh():
        net = _supernet()
        with torch.no_grad():  # widest candidates improbable: they go at the first check
            for unit in net.units.values():
                unit.alpha[-1] = -2.5
        step = ofb_step(_config(net, eliminate_every=2), net, seed=4)
        return net, step, _optimizers(step, net, "adam")

    net, step, optimizers = fresh()
    for i, batch in enumerate(batches):
        step(net, batch, optimizers)
        if i == 5:
            saved = (copy.deepcopy(net.state_dict()), copy.deepcopy(step.state_dict()),
                     {k: copy.deepcopy(o.state_dict()) for k, o in optimizers.items()})
    assert saved[0]["units.embed.scores"].shape == (12,)  # shrunk before the save

    resumed, resumed_step, resumed_optimizers = fresh()
    resumed.resize_like(saved[0])
    resumed.load_state_dict(saved[0])
    resumed_step.load_state_dict(saved[1])
    resumed_optimizers = _optimizers(resumed_step, resumed, "adam")
    for key, state in saved[2].items():
        resumed_optimizers[key].load_state_dict(state)
    for batch in batches[6:]:
        resumed_step(resumed, batch, resumed_optimizers)
    assert resumed.state_dict().keys() == net.state_dict().keys()
    for (name, p), (_, q) in zip(net.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_units_freeze_and_stop_training():
    net = _supernet()
    step = ofb_step(_config(net, eliminate_every=1), net, seed=3)
    optimizers = _optimizers(step, net)
    with torch.no_grad():
        for unit in net.units.values():
            unit.alpha.copy_(torch.linspace(-10.0, 10.0, len(unit.alpha)))
    batches = _batches(3)
    step(net, batches[0], optimizers)
    assert net.all_frozen
    assert {name: unit.width for name, unit in net.units.items()} == {
        "embed": 16, "attn_0": 8, "mlp_0": 32, "attn_1": 8, "mlp_1": 32}
    frozen = copy.deepcopy([(u.alpha, u.scores) for u in net.units.values()])
    step(net, batches[1], optimizers)
    for unit, (alpha, scores) in zip(net.units.values(), frozen):
        assert torch.equal(unit.alpha, alpha) and torch.equal(unit.scores, scores)


def test_patch_masks_are_seeded_with_the_scheduled_keep_ratio():
    net = _supernet()
    objective = OFBObjective(_config(net), net, seed=9)
    twin = OFBObjective(_config(net), net, seed=9)
    first = objective.sample_patch_mask(6, 16)
    assert torch.equal(first, twin.sample_patch_mask(6, 16))
    assert (first.sum(1) == round(0.95 * 16)).all()
    objective.step = 3
    assert objective.keep_ratio() == pytest.approx(0.85)
    objective.step = 60
    assert objective.keep_ratio() == pytest.approx(0.75)
    assert (objective.sample_patch_mask(4, 16).sum(1) == 12).all()
    assert objective.importance_weight() == pytest.approx(0.1)
    assert OFBObjective(_config(net, importance_only=True), net, 0).importance_weight() == 1.0


def test_patch_pixels_match_a_direct_loop():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float64).view(2, 3, 4, 4)
    pixels = patch_pixels(x, 2)
    for i in range(2):
        for row in range(2):
            for col in range(2):
                patch = x[i, :, 2 * row:2 * row + 2, 2 * col:2 * col + 2].flatten()
                assert torch.equal(pixels[i, row * 2 + col], patch)


def test_pmim_loss_is_l1_on_masked_patches_weighted_to_the_task_loss():
    net = _supernet()
    config = _config(net, one_hot_weight=0.0, score_weight=0.0, flops_weight=0.0,
                     pmim_weight=0.5)
    objective = OFBObjective(config, net, seed=6)
    mirror = copy.deepcopy(objective.generator)
    x, y = _batches(1)[0]
    result = objective(net, x, y)
    # Recomputed by hand from the same mask.
    keep = round(0.95 * 16)
    seen = torch.rand(8, 16, generator=mirror).argsort(1) < keep
    features = net.features(x, seen)
    task = F.cross_entropy(net.classify(features), y)
    hidden = ~seen
    errors = [(net.decoder(features[i, 1 + p]) - x[i, 0, 2 * (p // 4):2 * (p // 4) + 2,
                                                   2 * (p % 4):2 * (p % 4) + 2].flatten()).abs()
              for i in range(8) for p in range(16) if hidden[i, p]]
    reconstruction = torch.cat(errors).mean()
    torch.testing.assert_close(result.task, task)
    torch.testing.assert_close(result.total, task + 0.5 * task.detach() * reconstruction
                               / reconstruction.detach())
    assert math.isclose(result.total.item(), 1.5 * task.item(), rel_tol=1e-9)


def test_search_state_round_trips_through_a_safetensors_checkpoint(tmp_path):
    net = _supernet()
    with torch.no_grad():
        for unit in net.units.values():
            unit.alpha[-1] = -2.5
    step = ofb_step(_config(net, eliminate_every=1), net, seed=8)
    optimizers = _optimizers(step, net)
    for batch in _batches(2):
        step(net, batch, optimizers)
    state = {**{f"model.{k}": v for k, v in net.state_dict().items()},
             **{f"step.{k}": v for k, v in step.state_dict().items()}}
    save_checkpoint(tmp_path / "search.safetensors", state, {"seed": "8"})
    loaded, metadata = load_checkpoint(tmp_path / "search.safetensors")
    model_state = {k[6:]: v for k, v in loaded.items() if k.startswith("model.")}
    fresh = _supernet()
    fresh.resize_like(model_state)
    fresh.load_state_dict(model_state)
    fresh_step = ofb_step(_config(fresh, eliminate_every=1), fresh, seed=8)
    fresh_step.load_state_dict({k[5:]: v for k, v in loaded.items() if k.startswith("step.")})
    assert fresh.units["embed"].width == 12 and metadata == {"seed": "8"}
    assert fresh_step.objective.step == 2
    assert torch.equal(fresh_step.objective.generator.get_state(),
                       step.objective.generator.get_state())
    x = _batches(1, seed=9)[0][0]
    torch.testing.assert_close(fresh(x), net(x), rtol=0, atol=0)


def _digits4() -> Dataset:
    data = load_dataset("digits", seed=0)
    return Dataset("digits4", data.x_train[:192], data.y_train[:192] % 4, data.x_val[:64],
                   data.y_val[:64] % 4, data.x_test[:64], data.y_test[:64] % 4, 4)


def _trainer_search():
    net = _supernet().float()
    with torch.no_grad():  # widest candidates improbable: shrinking starts in the first epoch
        for unit in net.units.values():
            unit.alpha[-1] = -2.5
    config = OFBConfig(target_flops=0.6 * net.original_flops, warmup_steps=6, eliminate_every=2)
    step = ofb_step(config, net, seed=0)
    trainer = Trainer(TrainConfig(epochs=3, batch_size=64, lr=3e-3, optimizer="adam",
                                  weight_decay=0.0), step=step, device="cpu")
    return net, step, trainer


def test_trainer_drives_the_search_in_pieces_then_the_plain_vit_fine_tunes():
    data = _digits4()
    net, _, trainer = _trainer_search()
    whole = trainer.fit(net, data, seed=0)
    assert len(whole.history) == 3
    assert all(math.isfinite(loss) for m in whole.history for loss in m.train_loss)

    first, first_step, first_trainer = _trainer_search()
    piece = first_trainer.fit(first, data, seed=0, end_epoch=1)
    saved_model = copy.deepcopy(first.state_dict())
    saved_step = copy.deepcopy(first_step.state_dict())
    saved_trainer = copy.deepcopy(piece.state)
    assert saved_model["units.embed.scores"].shape == (12,)  # shrunk within epoch 1

    resumed, resumed_step, resumed_trainer = _trainer_search()
    resumed.resize_like(saved_model)
    resumed.load_state_dict(saved_model)
    resumed_step.load_state_dict(saved_step)
    rest = resumed_trainer.fit(resumed, data, seed=0, start_epoch=2, state=saved_trainer)
    assert [m.val_acc for m in rest.history] == [m.val_acc for m in whole.history[1:]]
    for (name, p), (_, q) in zip(net.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)

    plain = to_plain_vit(net)
    x = data.x_val[:16]
    torch.testing.assert_close(plain(x), net(x, hard=True), rtol=1e-4, atol=1e-5)
    assert plain.flops() == flops(net.chosen_widths(), (8, 8))
    tuned = Trainer(TrainConfig(epochs=1, batch_size=64, lr=1e-3, optimizer="adam"),
                    device="cpu").fit(plain, data, seed=0)
    assert len(tuned.history) == 1 and 0.0 <= tuned.test_acc[0] <= 1.0


def test_slice_parameter_rejects_bad_arguments():
    with pytest.raises(TypeError, match="argument 'param' must be an nn.Parameter"):
        slice_parameter_(torch.zeros(3), 0, torch.tensor([0]))
    with pytest.raises(ValueError, match="argument 'index' must be a 1-D int64 tensor"):
        slice_parameter_(torch.nn.Parameter(torch.zeros(3)), 0, torch.tensor([[0]]))
