"""The EvoPress API on a Hugging Face causal LM object: a tiny randomly initialised GPT-2 built from
a GPT2Config (no weights or tokenizer downloaded). ``transformers`` is in the ``test`` extra."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from sparsenas.methods.evopress.database import LevelDatabase
from sparsenas.methods.evopress.evaluate import BatchedCandidates, Fitness, SequentialCandidates
from sparsenas.methods.evopress.search import EvolutionConfig, initial_state, run_generation
from sparsenas.models.hf import CausalLMLogits
from sparsenas.spaces.levels import (BitWidthSpace, SparsityLevelSpace, compressible_layers,
                                     layer_numels)


def _gpt2():
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # transformers initialises from the global generator
        return GPT2LMHeadModel(config).eval()


def _tokens(n=12, seed=1):
    return torch.randint(64, (n, 16), generator=torch.Generator().manual_seed(seed))


def test_conv1d_refused_then_wrapped_exactly(one_thread):
    hf = _gpt2()
    with pytest.raises(ValueError, match=r"Conv1D layers \(weight \[in, out\]\); wrap the "
                                         r"model in .*CausalLMLogits"):
        compressible_layers(hf)
    tokens = _tokens()
    with torch.no_grad():
        expected = hf(input_ids=tokens).logits
        model = CausalLMLogits(hf)
        torch.testing.assert_close(model(tokens), expected, atol=1e-5, rtol=1e-5)
    layers = compressible_layers(model)
    # 4 projections per block; the head (tied to the token embedding) is left out
    assert len(layers) == 8 and all(isinstance(m, torch.nn.Linear) for m in layers.values())
    assert "model.transformer.h.0.attn.c_attn" in layers
    assert layers["model.transformer.h.0.attn.c_attn"].weight.shape == (96, 32)


@pytest.mark.parametrize("pruner", ["magnitude", "sparsegpt"])
def test_sparsity_search_on_gpt2_keeps_budget_and_matches_plain_masking(tmp_path, one_thread,
                                                                         pruner):
    reference = _gpt2()  # an untouched copy with Conv1D layers, masked by hand below
    model = CausalLMLogits(copy.deepcopy(reference))
    layers = compressible_layers(model)
    space = SparsityLevelSpace(list(layers), layer_numels(layers), 0.6, num_levels=2)
    database = LevelDatabase.build(tmp_path / "db.safetensors", model, space,
                                   [_tokens(8, 2)], pruner=pruner, block_size=16)
    candidates = space.sample(3, 0)
    tokens = _tokens(6, 3)
    batched = BatchedCandidates(model, space, database)(candidates, tokens)
    torch.testing.assert_close(batched, SequentialCandidates(model, space, database)(
        candidates, tokens), atol=1e-5, rtol=1e-5)
    # independent: the compressed weights written (transposed) into the original Conv1D model
    plain = copy.deepcopy(reference)
    with torch.no_grad():
        for name, level in zip(space.unit_names, candidates[1]):
            conv1d = plain.get_submodule(name.removeprefix("model."))
            conv1d.weight.copy_(database.weight(name, level).T)
        torch.testing.assert_close(batched[1], plain(input_ids=tokens).logits, atol=1e-5,
                                   rtol=1e-5)
    nonzeros = {sum(int(database.mask(name, level).sum())
                    for name, level in zip(space.unit_names, c)) for c in candidates}
    assert nonzeros == {space.total_kept(space.start)}
    fitness = Fitness(BatchedCandidates(model, space, database), _tokens(16, 4))
    state, records = run_generation(initial_state(space), space,
                                    EvolutionConfig(4, ((2, 4), (1, 8)), seed=0), fitness, 16)
    assert state.index == 1 and space.total_cost(state.parent) == space.budget
    assert all(space.total_cost(space.decode(c)) == space.budget
               for r in records for c in r["candidates"])


def test_bits_on_gpt2(tmp_path, one_thread):
    model = CausalLMLogits(_gpt2())
    layers = compressible_layers(model)
    space = BitWidthSpace(list(layers), layer_numels(layers), 3)
    database = LevelDatabase.build(tmp_path / "bits.safetensors", model, space, [_tokens(4)],
                                   group_size=16)
    candidates = [space.start] + space.sample(2, 1)
    tokens = _tokens(4, 5)
    torch.testing.assert_close(BatchedCandidates(model, space, database)(candidates, tokens),
                               SequentialCandidates(model, space, database)(candidates, tokens),
                               atol=1e-5, rtol=1e-5)
    assert {space.total_cost(c) for c in candidates} == {3 * sum(space.numels)}
