"""Baselines at the search's budget: uniform, OWL, best of random, block importance."""

import pytest
import torch
from torch import nn

from sparsenas.methods.evopress.baselines import (best_of_random, block_similarities,
                                                  least_important_blocks, outlier_ratios, owl,
                                                  snap_to_levels, uniform)
from sparsenas.models.lm import GPT
from sparsenas.spaces.levels import (DepthSpace, SparsityLevelSpace, compressible_layers,
                                     layer_numels)


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[2].weight[:, :3] *= 40  # outliers in layer "2"
    return model


def test_outlier_ratios_match_direct_computation():
    model = _model()
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))
    ratios = outlier_ratios(model, ["0", "2", "4"], [x[:30], x[30:]], threshold=3.0)
    inputs = {"0": x, "2": torch.relu(model[0](x)), "4": torch.relu(model[2](torch.relu(
        model[0](x))))}
    for ratio, name in zip(ratios, ["0", "2", "4"]):
        score = model.get_submodule(name).weight.abs() * inputs[name].norm(dim=0)
        assert ratio == pytest.approx((score > 3 * score.mean()).float().mean().item(), abs=1e-6)
    assert ratios[1] > ratios[0]


def test_owl_budget_exact_and_keeps_outlier_layers_denser():
    model = _model()
    layers = compressible_layers(model)
    space = SparsityLevelSpace(list(layers), layer_numels(layers), 0.7, num_levels=3)
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))
    ratios = outlier_ratios(model, space.unit_names, [x])
    levels = owl(space, ratios, lam=0.1)
    assert space.total_kept(levels) == space.total_kept(uniform(space))
    most, least = ratios.index(max(ratios)), ratios.index(min(ratios))
    assert space.layer_sparsity(most, levels[most]) < space.layer_sparsity(least, levels[least])
    assert owl(space, ratios, lam=0.0) == uniform(space)


def test_snap_to_levels_nearest_exact_budget():
    space = SparsityLevelSpace(list("abcd"), [1000] * 4, 0.5, num_levels=2)
    d = space.delta
    kept = [500 - 1.4 * d, 500 + 0.4 * d, 500 + 0.6 * d, 500 + 5 * d]
    levels = snap_to_levels(space, kept)
    assert sum(levels) == 0 and levels[3] == -2
    # ideal (1.4, -0.4, -0.6, -2 after clipping) rounds to (1, 0, -1, -2), sum -2; the two
    # cheapest +1 moves: 'c' (-1 -> 0, error 0.4 -> 0.6) then 'a' (1 -> 2, error 0.4 -> 0.6)
    assert levels == (2, 0, 0, -2)


def test_best_of_random_is_the_minimum():
    space = SparsityLevelSpace(list("abcde"), [500] * 5, 0.5, num_levels=2)
    evaluate = lambda cands, ex: [float(sum((v - 1) ** 2 for v in c)) for c in cands]
    best, fitness = best_of_random(space, evaluate, torch.arange(3), count=20, seed=4)
    samples = space.sample(20, 4)
    assert fitness == min(evaluate(samples, None)) and best in samples


class Residual(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        with torch.no_grad():
            self.fc.weight.mul_(scale)
            self.fc.bias.mul_(scale)

    def forward(self, x):
        return x + self.fc(x)


def test_block_similarity_drops_the_near_identity_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(Residual(3.0), Residual(0.01), Residual(2.0), Residual(0.1))
    x = torch.randn(32, 8)
    similarities = block_similarities(model, ["0", "1", "2", "3"], [x])
    assert similarities[1] == pytest.approx(
        torch.nn.functional.cosine_similarity(model[0](x), model[1](model[0](x)),
                                              dim=-1).mean().item(), rel=1e-5)
    space = DepthSpace(["0", "1", "2", "3"], 2)
    assert space.dropped(least_important_blocks(space, similarities)) == ["1", "3"]


def test_block_similarity_on_gpt_tokens():
    model = GPT(context=8, width=16, depth=3, heads=2)
    tokens = torch.randint(256, (4, 8), generator=torch.Generator().manual_seed(0))
    similarities = block_similarities(model, model.residual_block_names(), [tokens])
    assert len(similarities) == 3 and all(-1 <= s <= 1 for s in similarities)
