"""Level spaces: the budget is exact for every sampled and mutated configuration."""

import pytest
import torch
from torch import nn

from sparsenas.spaces.levels import (BitWidthSpace, DepthSpace, SparsityLevelSpace,
                                     compressible_layers, layer_numels, residual_blocks)


def _net():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Conv2d(1, 3, 3), nn.Linear(16, 24),
                         nn.Linear(24, 4))


def test_compressible_layers_exclude_head_and_names():
    net = _net()
    assert list(compressible_layers(net)) == ["0", "2", "3"]
    assert list(compressible_layers(net, exclude_head=False, exclude=["2"])) == ["0", "3", "4"]
    with pytest.raises(ValueError, match="exclude"):
        compressible_layers(net, exclude=["1"])
    with pytest.raises(ValueError, match="no compressible"):
        compressible_layers(nn.Sequential(nn.ReLU()))


def test_tied_weight_listed_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    net = nn.ModuleDict({"emb": emb, "fc": nn.Linear(4, 4), "head": head, "head2": head})
    assert list(compressible_layers(net, exclude_head=False)) == ["fc", "head"]


def test_residual_blocks_by_names_or_method():
    net = _net()
    assert list(residual_blocks(net, ["0", "3"])) == ["0", "3"]
    with pytest.raises(ValueError, match="residual_block_names"):
        residual_blocks(net)
    with pytest.raises(ValueError, match="not modules"):
        residual_blocks(net, ["9"])


def _walk(space, steps=60, seed=0):
    configs = space.sample(20, seed)
    current = space.start
    for step in range(steps):
        child = space.mutate(current, seed * 1000 + step)
        assert child != current
        configs.append(child)
        current = child
    return configs


def test_sparsity_budget_exact_and_levels_valid():
    numels = [8 * 16, 27, 16 * 24, 7 * 13 * 5]
    space = SparsityLevelSpace(["a", "b", "c", "d"], numels, sparsity=0.6, num_levels=3)
    total = space.total_kept(space.start)
    assert total == sum(round(0.4 * n) for n in numels)
    for config in _walk(space):
        assert space.total_kept(config) == total
        for u, level in enumerate(config):
            assert -3 <= level <= 3
            assert 0 <= space.kept(u, level) <= numels[u]
        assert space.decode(space.encode(config)) == config
    # level ℓ has sparsity s + ℓΔ/n up to the rounding of the base count
    assert space.layer_sparsity(2, 2) == pytest.approx(0.6 + 2 * space.delta / numels[2],
                                                       abs=1 / numels[2])


def test_sparsity_unreachable_target_and_bad_decode():
    with pytest.raises(ValueError, match="delta"):
        SparsityLevelSpace(["a", "b"], [10, 1000], sparsity=0.95, num_levels=4)
    space = SparsityLevelSpace(["a", "b"], [100, 100], sparsity=0.5, num_levels=2)
    with pytest.raises(ValueError, match="budget"):
        space.decode("1,0")
    with pytest.raises(ValueError):
        space.decode("x")
    with pytest.raises(ValueError):
        space.decode("3,-3")


def test_sample_and_mutate_deterministic():
    space = SparsityLevelSpace(list("abcde"), [100, 200, 300, 400, 500], 0.5, 4)
    assert space.sample(3, 7, first=2) == space.sample(5, 7)[2:]
    assert space.mutate(space.start, 11) == space.mutate(space.start, 11)
    assert len(set(space.sample(10, 1))) > 5


def test_mutation_switch_count_distribution():
    space = SparsityLevelSpace(list("abcdefgh"), [1000] * 8, 0.5, 4)
    distances = [sum(abs(v) for v in space.mutate(space.start, seed)) // 2
                 for seed in range(900)]
    # min(U1, U2): P(1) = 5/9, P(2) = 3/9, P(3) = 1/9 (swaps may cancel, so <= counts)
    share_one = sum(d == 1 for d in distances) / len(distances)
    assert 0.5 < share_one < 0.7
    assert max(distances) <= 3


def test_depth_fixed_dropped_count():
    space = DepthSpace([f"b{i}" for i in range(6)], num_dropped=2)
    for config in _walk(space):
        assert sum(config) == 2
    assert space.dropped(space.from_dropped(["b1", "b4"])) == ["b1", "b4"]
    with pytest.raises(ValueError):
        DepthSpace(["a", "b"], 2)


def test_bits_budget_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 8), nn.Linear(8, 16), nn.Linear(16, 32),
                        nn.Linear(32, 2))
    layers = compressible_layers(net)
    space = BitWidthSpace(list(layers), layer_numels(layers), bits=3)
    total = space.total_cost(space.start)
    assert space.average_bits(space.start) == 3
    seen_bits = set()
    for config in _walk(space, steps=150):
        assert space.total_cost(config) == total
        seen_bits.update(config)
        # the lone 16x32 layer has no partner of equal size: it never moves
        assert config[3] == 3
    assert {2, 4} <= seen_bits
    with pytest.raises(ValueError, match="pair up"):
        BitWidthSpace(["a", "b"], [10, 11], 3)
