"""The architecture space: distinct populations, encode / decode, mutate, the networks it builds,
and groups of one shape trained as K candidates equal to their single networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsenas.models import (MODELS, Arch, arch_candidate_batch, build_arch, create_model,
                              decode_arch, encode_arch, group_by_shape)
from sparsenas.nn import NodeMask, Residual
from sparsenas.spaces import SPACES
from sparsenas.spaces.archs import ArchSpace

pytestmark = pytest.mark.usefixtures("one_thread")


def test_default_population_is_distinct_varied_and_grouped():
    space = ArchSpace()
    population = space.population()
    assert len(population) == 64 == len(set(population)) >= 60
    assert population == space.population(64, seed=0)
    assert population != space.population(64, seed=1)
    assert {a.family for a in population} == {"mlp", "cnn"}
    assert len({a.activation for a in population}) >= 3
    assert len({a.depth for a in population}) >= 2 and {a.residual for a in population} == {
        False, True}
    assert len({a.node_sparsity for a in population}) >= 5
    groups = group_by_shape(population)
    assert sorted(i for g in groups for i in g) == list(range(64))
    assert all(len({population[i].shape() for i in g}) == 1 for g in groups)
    assert max(len(g) for g in groups) == 4 and len(groups) <= 22
    assert len(space) == 4800 and len(space.shapes()) == 320
    assert SPACES.get("arch") is ArchSpace


def test_population_larger_than_the_space_is_refused():
    space = ArchSpace(families=("mlp",), depths=(1,), widths=(8,), activations=("relu",),
                      keep_fractions=(1.0, 0.5))
    assert len(space) == 2 and len(space.population(2, seed=0, per_shape=1)) == 2
    with pytest.raises(ValueError, match=r"'num' must be in \[1, 2\]"):
        space.population(3)


def test_encode_decode_round_trip_and_bad_text():
    space = ArchSpace()
    for arch in space.population(64, seed=3) + space.sample(20, seed=4):
        text = space.encode(arch)
        assert space.decode(text) == arch and decode_arch(text) == arch
    for bad in ("", "cnn:w8", "rnn:w8:k3:relu:plain:keep=1", "cnn:w8:k4:relu:plain:keep=1",
                "mlp:w8:k0:relu:res:keep=1", "mlp:wx:k0:relu:plain:keep=1"):
        with pytest.raises(ValueError):
            space.decode(bad)
    with pytest.raises(ValueError, match="outside this space"):
        space.decode("mlp:w12:k0:relu:plain:keep=1")


def test_sample_stream_and_mutate_are_seeded():
    space = ArchSpace()
    assert space.sample(5, seed=7, first=3) == space.sample(8, seed=7)[3:]
    arch = space.population(1, seed=2)[0]
    for seed in range(30):
        child = space.mutate(arch, seed)
        assert child != arch and space.contains(child) and child == space.mutate(arch, seed)
        differing = [name for name in ("family", "width", "kernel", "activation", "residual")
                     if getattr(child, name) != getattr(arch, name)]
        assert len(differing) <= 2 and (differing or child.keep != arch.keep)
    assert len({space.mutate(arch, seed) for seed in range(30)}) > 5


def _conv_kernels(model: nn.Module) -> list[tuple[int, int]]:
    return [m.kernel_size for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_build_layouts_and_seeded_init():
    state = torch.random.get_rng_state()
    one_d = build_arch(Arch("cnn", 8, 5, "gelu", True, (1.0, 0.5, 0.75)), (1, 1, 40), 10, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert _conv_kernels(one_d) == [(1, 5)] * 3
    assert sum(isinstance(m, Residual) for m in one_d.modules()) == 2
    assert sum(isinstance(m, nn.GELU) for m in one_d.modules()) == 3
    assert [int(m.mask.sum()) for m in one_d.modules() if isinstance(m, NodeMask)] == [8, 4, 6]
    assert one_d(torch.randn(3, 1, 1, 40)).shape == (3, 10)
    image = create_model("arch", arch="cnn:w8:k3:linear:plain:keep=1/0.5", input_shape=(1, 8, 8),
                         num_classes=10)
    assert _conv_kernels(image) == [(3, 3)] * 2 and not any(
        isinstance(m, (nn.ReLU, Residual)) for m in image.modules())
    mlp = MODELS.get("arch")(arch=Arch("mlp", 16, 0, "tanh", False, (0.75,)),
                             input_shape=(1, 8, 8), num_classes=10)
    assert mlp(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    a = build_arch("mlp:w16:k0:relu:res:keep=1/1", (1, 1, 40), 10, seed=5)
    b = build_arch("mlp:w16:k0:relu:res:keep=1/0.5", (1, 1, 40), 10, seed=5)
    c = build_arch("mlp:w16:k0:relu:res:keep=1/1", (1, 1, 40), 10, seed=6)
    assert torch.equal(a.body[1].weight, b.body[1].weight)
    assert not torch.equal(a.body[1].weight, c.body[1].weight)
    with pytest.raises(TypeError, match="'arch'"):
        build_arch(3, (1, 1, 40), 10)
    with pytest.raises(ValueError, match="input_shape"):
        build_arch(Arch("mlp", 4, 0, "relu", False, (1.0,)), (40,), 10)


@pytest.mark.parametrize("shape, input_shape", [
    ("cnn:w6:k5:tanh:res:keep=1/1", (1, 1, 16)),
    ("cnn:w6:k3:gelu:res:keep=1/1/1", (1, 8, 8)),
    ("mlp:w12:k0:linear:res:keep=1/1/1", (1, 8, 8)),
])
def test_candidates_of_one_shape_equal_their_single_networks(shape, input_shape):
    base = decode_arch(shape)
    archs = [base] + [Arch(base.family, base.width, base.kernel, base.activation, True, keep)
                      for keep in ((0.5,) * base.depth, (1.0,) + (0.5,) * (base.depth - 1))]
    batch = arch_candidate_batch(archs, input_shape, 3, seed=2)
    singles = [build_arch(arch, input_shape, 3, seed=2) for arch in archs]
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(6, *input_shape, generator=generator),
                torch.randint(3, (6,), generator=generator)) for _ in range(3)]
    batch_opt = torch.optim.SGD(batch.parameters(), lr=0.1, momentum=0.9)
    single_opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in singles]
    for x, y in batches:
        logits = batch(x)
        for k, (model, opt) in enumerate(zip(singles, single_opts)):
            single_logits = model(x)
            torch.testing.assert_close(logits[k], single_logits, rtol=1e-5, atol=1e-5)
            opt.zero_grad()
            F.cross_entropy(single_logits, y).backward()
            opt.step()
        batch_opt.zero_grad()
        F.cross_entropy(logits.transpose(1, 2), y.expand(len(archs), -1), reduction="none").mean(
            1).sum().backward()
        batch_opt.step()
    batch.eval()
    x = batches[0][0]
    for k, model in enumerate(singles):
        model.eval()
        torch.testing.assert_close(batch(x)[k], model(x), rtol=1e-4, atol=1e-5)
        restored = build_arch(archs[k], input_shape, 3, seed=9)
        restored.load_state_dict(batch.candidate_state_dict(k))
        restored.eval()
        torch.testing.assert_close(restored(x), model(x), rtol=1e-4, atol=1e-5)


def test_candidate_batch_refuses_mixed_shapes():
    with pytest.raises(ValueError, match="one shape"):
        arch_candidate_batch([decode_arch("mlp:w8:k0:relu:plain:keep=1"),
                              decode_arch("mlp:w16:k0:relu:plain:keep=1")], (1, 8, 8), 10)


def test_arch_is_a_model_but_not_a_node_search_parent():
    from sparsenas.models import ParentConfig

    with pytest.raises(ValueError, match="model 'arch' has no node space"):
        ParentConfig(model="arch", widths=(8,)).validate()
    ParentConfig(model="cnn", widths=(8,)).validate()
