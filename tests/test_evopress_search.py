"""EvoPress search: batched vs one-at-a-time evaluation, fitness, racing generations, resume."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsenas.methods.evopress.database import LevelDatabase
from sparsenas.methods.evopress.evaluate import BatchedCandidates, Fitness, SequentialCandidates
from sparsenas.methods.evopress.search import (EvolutionConfig, Generation, initial_state,
                                               offspring, run_generation)
from sparsenas.models.lm import GPT
from sparsenas.spaces.levels import (BitWidthSpace, DepthSpace, SparsityLevelSpace,
                                     compressible_layers, layer_numels)


class Residual(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 16), Residual(16), Residual(16), Residual(16),
                          nn.Linear(16, 16), nn.Linear(16, 5))
    return model.eval()


def _inputs(n=48):
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(2))


def _sparsity_setup(tmp_path, pruner="magnitude", sparsity=0.6):
    model = _model()
    layers = compressible_layers(model)
    space = SparsityLevelSpace(list(layers), layer_numels(layers), sparsity, num_levels=2)
    db = LevelDatabase.build(tmp_path / f"{pruner}.safetensors", model, space,
                             [_inputs()], pruner=pruner, block_size=8)
    return model, space, db


@pytest.mark.parametrize("kernel", ["masked", "grouped"])
@pytest.mark.parametrize("pruner", ["magnitude", "sparsegpt"])
def test_batched_matches_sequential_sparsity(tmp_path, pruner, kernel):
    model, space, db = _sparsity_setup(tmp_path, pruner)
    candidates = [space.start] + space.sample(4, 3) + [space.start]
    x = _inputs(10)
    batched = BatchedCandidates(model, space, db, kernel)(candidates, x)
    sequential = SequentialCandidates(model, space, db)(candidates, x)
    assert batched.shape == (6, 10, 5)
    torch.testing.assert_close(batched, sequential, atol=1e-5, rtol=1e-5)
    # an independent plain computation for one candidate
    with torch.no_grad():
        copy = _model()
        for name, level in zip(space.unit_names, candidates[2]):
            copy.get_submodule(name).weight.copy_(db.weight(name, level))
        torch.testing.assert_close(batched[2], copy(x), atol=1e-5, rtol=1e-5)
    # the model is left dense
    torch.testing.assert_close(model(x), _model()(x))


@pytest.mark.parametrize("kernel", ["masked", "grouped"])
def test_batched_matches_sequential_bits_and_depth(tmp_path, kernel):
    model = _model()
    layers = compressible_layers(model, exclude=["0", "3"])
    space = BitWidthSpace(list(layers), layer_numels(layers), 3)
    db = LevelDatabase.build(tmp_path / "b.safetensors", model, space, [], group_size=8)
    candidates = [space.start] + space.sample(3, 1)
    x = _inputs(6)
    torch.testing.assert_close(BatchedCandidates(model, space, db, kernel)(candidates, x),
                               SequentialCandidates(model, space, db)(candidates, x),
                               atol=1e-5, rtol=1e-5)
    depth = DepthSpace(["4", "5", "6"], 1)
    candidates = depth.sample(3, 0)
    batched = BatchedCandidates(model, depth)(candidates, x)
    torch.testing.assert_close(batched, SequentialCandidates(model, depth)(candidates, x))
    with torch.no_grad():
        direct = nn.Sequential(*[m for i, m in enumerate(model)
                                 if str(i) not in depth.dropped(candidates[1])])(x)
    torch.testing.assert_close(batched[1], direct)
    with pytest.raises(ValueError, match="database"):
        BatchedCandidates(model, space)
    with pytest.raises(ValueError, match="kernel"):
        BatchedCandidates(model, space, db, "fast")


@pytest.mark.parametrize("kernel", ["masked", "grouped"])
def test_batched_on_the_gpt(tmp_path, kernel):
    model = GPT(context=8, width=16, depth=3, heads=2).eval()
    tokens = torch.randint(256, (5, 8), generator=torch.Generator().manual_seed(0))
    layers = compressible_layers(model)
    space = SparsityLevelSpace(list(layers), layer_numels(layers), 0.5, num_levels=2)
    db = LevelDatabase.build(tmp_path / "gpt.safetensors", model, space, [tokens],
                             pruner="wanda")
    candidates = space.sample(4, 0)
    torch.testing.assert_close(BatchedCandidates(model, space, db, kernel)(candidates, tokens),
                               SequentialCandidates(model, space, db)(candidates, tokens),
                               atol=1e-5, rtol=1e-5)
    depth = DepthSpace(model.residual_block_names(), 1)
    candidates = depth.sample(3, 0)
    torch.testing.assert_close(BatchedCandidates(model, depth)(candidates, tokens),
                               SequentialCandidates(model, depth)(candidates, tokens))


def test_fitness_kl_loss_and_dense_cache(tmp_path):
    model, space, db = _sparsity_setup(tmp_path)
    x = _inputs()
    targets = torch.arange(len(x)) % 5
    calls = []
    model[0].register_forward_hook(lambda *a: calls.append(1))
    kl = Fitness(BatchedCandidates(model, space, db), x, kind="kl", batch_size=16)
    candidates = [space.start, space.mutate(space.start, 0)]
    examples = torch.tensor([3, 1, 40, 7, 22])
    values = kl(candidates, examples)
    assert len(calls) == 1  # dense outputs, once
    kl(candidates, examples)
    assert len(calls) == 1
    with torch.no_grad():
        dense = model(x[examples]).log_softmax(-1)
        for value, candidate in zip(values, candidates):
            compressed = SequentialCandidates(model, space, db)([candidate], x[examples])[0]
            direct = F.kl_div(compressed.log_softmax(-1), dense, log_target=True,
                              reduction="batchmean")
            assert value == pytest.approx(direct.item(), rel=1e-5)
    assert Fitness(BatchedCandidates(model, space, db), x)([space.start], examples)[0] > 0
    loss = Fitness(SequentialCandidates(model, space, db), x, targets, kind="loss")
    ppl = Fitness(SequentialCandidates(model, space, db), x, targets, kind="perplexity")
    with torch.no_grad():
        out = SequentialCandidates(model, space, db)([candidates[1]], x[examples])[0]
    direct = F.cross_entropy(out, targets[examples]).item()
    assert loss(candidates[1:], examples)[0] == pytest.approx(direct, rel=1e-5)
    assert ppl(candidates[1:], examples)[0] == pytest.approx(torch.tensor(direct).exp().item(),
                                                             rel=1e-5)
    with pytest.raises(ValueError, match="targets"):
        Fitness(BatchedCandidates(model, space, db), x, kind="loss")


def _toy():
    space = SparsityLevelSpace([f"l{i}" for i in range(6)], [400] * 6, 0.5, num_levels=3)
    target = torch.tensor([3, -3, 2, -2, 1, -1], dtype=torch.float64)

    def evaluate(candidates, examples):
        noise = examples.double().mean() / 1000  # depends on the sample, equally for all
        return [float(((torch.tensor(c).double() - target) ** 2).sum() + noise)
                for c in candidates]

    return space, evaluate


def test_generation_records_and_budget():
    space, evaluate = _toy()
    config = EvolutionConfig(offspring=8, stages=((4, 5), (2, 10), (1, 20)), seed=3)
    state, records = run_generation(initial_state(space), space, config, evaluate, pool_size=30)
    assert [r["examples"] for r in records] == [5, 10, 20]
    assert [len(r["candidates"]) for r in records] == [8, 4, 3]  # parent re-enters at the end
    assert space.encode(space.start) in records[-1]["candidates"]
    assert len(set(records[0]["candidates"])) == 8
    for record in records:
        for text in record["candidates"]:
            assert space.total_kept(space.decode(text)) == space.total_kept(space.start)
    assert state.index == 1 and space.encode(state.parent) == records[-1]["survivors"][0]
    with pytest.raises(ValueError, match="pool"):
        run_generation(initial_state(space), space, config, evaluate, pool_size=19)
    with pytest.raises(ValueError, match="one survivor"):
        EvolutionConfig(stages=((4, 5), (2, 10)))


def test_evolution_improves_and_resumes_exactly():
    space, evaluate = _toy()
    config = EvolutionConfig(offspring=6, stages=((3, 4), (1, 8)), seed=5)
    state = initial_state(space)
    straight = []
    for _ in range(30):
        state, records = run_generation(state, space, config, evaluate, 16)
        straight.append(records)
    assert state.history[-1] < state.history[0] < evaluate([space.start], torch.arange(8))[0]
    # resume from a state stored as JSON after 12 generations
    resumed = initial_state(space)
    for _ in range(12):
        resumed, _ = run_generation(resumed, space, config, evaluate, 16)
    resumed = Generation.from_dict(json.loads(json.dumps(resumed.to_dict())))
    again = EvolutionConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    for g in range(12, 30):
        resumed, records = run_generation(resumed, space, again, evaluate, 16)
        assert records == straight[g]
    assert resumed == state


def test_offspring_distinct_and_capped():
    depth = DepthSpace(["a", "b", "c"], 1)
    children = offspring(depth, depth.start, 10, seed=1)
    assert len(children) == len(set(children)) == 2  # only two other single-block drops exist


def test_search_lowers_kl_on_a_model(tmp_path):
    model, space, db = _sparsity_setup(tmp_path, sparsity=0.7)
    fitness = Fitness(BatchedCandidates(model, space, db), _inputs(64), kind="kl")
    config = EvolutionConfig(offspring=8, stages=((2, 16), (1, 64)), seed=0)
    state = initial_state(space)
    for _ in range(8):
        state, _ = run_generation(state, space, config, fitness, 64)
    everything = torch.arange(64)
    assert fitness([state.parent], everything)[0] < fitness([space.start], everything)[0]
    assert space.total_kept(state.parent) == space.total_kept(space.start)


@pytest.mark.parametrize("mode", ["sparsity", "depth", "bits"])
def test_every_evaluated_configuration_keeps_the_budget(tmp_path, mode):
    model = GPT(context=8, width=16, depth=4, heads=2).eval()
    tokens = torch.randint(256, (32, 8), generator=torch.Generator().manual_seed(0))
    layers = compressible_layers(model)
    if mode == "depth":
        space, db = DepthSpace(model.residual_block_names(), 2), None
    elif mode == "bits":
        space = BitWidthSpace(list(layers), layer_numels(layers), 3)
        db = LevelDatabase.build(tmp_path / "b.safetensors", model, space, [], group_size=8)
    else:
        space = SparsityLevelSpace(list(layers), layer_numels(layers), 0.6, num_levels=3)
        db = LevelDatabase.build(tmp_path / "s.safetensors", model, space, [tokens])
    fitness = Fitness(BatchedCandidates(model, space, db), tokens)
    evaluated = []

    def evaluate(candidates, examples):
        evaluated.extend(candidates)
        return fitness(candidates, examples)

    state = initial_state(space)
    config = EvolutionConfig(offspring=4, stages=((2, 8), (1, 16)), seed=1)
    for _ in range(4):
        state, _ = run_generation(state, space, config, evaluate, len(tokens))
    assert len(set(evaluated)) > 4
    assert {space.total_cost(c) for c in evaluated} == {space.budget}
    assert space.total_cost(state.parent) == space.budget


@pytest.mark.parametrize("name, widths", [("mlp", {"widths": (32, 32)}),
                                          ("cnn", {"widths": (8, 16)})])
def test_runtime_models_with_batchnorm(tmp_path, name, widths):
    from sparsenas.models import create_model

    torch.manual_seed(0)
    model = create_model(name, input_shape=(1, 8, 8), num_classes=10, **widths).eval()
    x = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    layers = compressible_layers(model)
    space = SparsityLevelSpace(list(layers), layer_numels(layers), 0.7, num_levels=2)
    db = LevelDatabase.build(tmp_path / "m.safetensors", model, space, [x], pruner="sparsegpt")
    candidates = space.sample(3, 0)
    expected = SequentialCandidates(model, space, db)(candidates, x)
    for kernel in ("masked", "grouped"):
        torch.testing.assert_close(BatchedCandidates(model, space, db, kernel)(candidates, x),
                                   expected, atol=1e-5, rtol=1e-5)
