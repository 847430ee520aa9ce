"""The small GPT-style causal LM and the byte-level standard-library text dataset."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from sparsenas.data import DATASETS, load_stdlib_text
from sparsenas.models import MODELS, create_model
from sparsenas.models.lm import GPT, perplexity, train_language_model
from sparsenas.spaces.levels import compressible_layers, residual_blocks


def test_gpt_shapes_tied_head_causal():
    model = create_model("gpt", context=16, width=32, depth=2, heads=4)
    assert isinstance(model, GPT) and "gpt" in MODELS
    assert model.head.weight is model.token_embedding.weight
    tokens = torch.randint(256, (3, 16), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (3, 16, 256)
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 256
    torch.testing.assert_close(model(changed)[:, :10], logits[:, :10])
    assert not torch.allclose(model(changed)[:, 10:], logits[:, 10:])
    with pytest.raises(ValueError, match="tokens"):
        model(torch.zeros(2, 17, dtype=torch.long))


def test_gpt_units_and_blocks():
    model = GPT(context=8, width=16, depth=3, heads=2)
    names = list(compressible_layers(model))
    assert names == [f"blocks.{b}.{layer}" for b in range(3)
                     for layer in ("attn.qkv", "attn.proj", "fc", "fc_out")]
    assert list(residual_blocks(model)) == ["blocks.0", "blocks.1", "blocks.2"]


def test_attention_matches_explicit_masked_softmax():
    model = GPT(context=8, width=16, depth=1, heads=2).eval()
    attention = model.blocks[0].attn
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(1))
    q, k, v = attention.qkv(x).view(2, 8, 3, 2, 8).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(8, 8).triu(1).bool(), float("-inf"))
    direct = attention.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 8, 16))
    torch.testing.assert_close(attention(x), direct, atol=1e-5, rtol=1e-5)


def test_stdlib_text_splits_by_file_and_deterministic(tmp_path):
    for i in range(40):
        (tmp_path / f"m{i}.py").write_text(f"def f{i}():\n    return {i} * 'x'\n" * 20)
    data = load_stdlib_text(tmp_path, context=16, train_bytes=20_000, eval_bytes=3_000)
    again = DATASETS.get("stdlib_text")(root=tmp_path, context=16, train_bytes=20_000,
                                        eval_bytes=3_000)
    assert torch.equal(data.x_train, again.x_train) and torch.equal(data.y_test, again.y_test)
    assert data.x_train.shape[1] == 16 and data.x_train.dtype == torch.int64
    torch.testing.assert_close(data.x_train[:, 1:], data.y_train[:, :-1])
    def files(x, y):  # the file numbers whose source made it into a split
        text = bytes(torch.cat([x[:, :1], y], 1).flatten().tolist()).decode()
        return set(re.findall(r"return (\d+) \*", text))

    train, val, test = (files(data.x_train, data.y_train), files(data.x_val, data.y_val),
                        files(data.x_test, data.y_test))
    assert train and val and test
    assert not (train & test or train & val or val & test)
    with pytest.raises(ValueError, match="too little"):
        load_stdlib_text(tmp_path / "missing")


@pytest.fixture
def one_thread():
    # A model this small trains fastest on one thread; more threads only contend on a shared
    # machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_lowers_held_out_perplexity(one_thread):
    data = load_stdlib_text(context=32, train_bytes=60_000, eval_bytes=8_000)
    model = GPT(context=32, width=32, depth=1, heads=2)
    before = perplexity(model, data.x_val, data.y_val)
    losses = train_language_model(model, data.x_train, data.y_train, steps=30, batch_size=16,
                                  lr=1e-2)
    after = perplexity(model, data.x_val, data.y_val)
    assert before > 200 and after < 0.3 * before and losses[-1] < losses[0]
    with torch.no_grad():
        logits = model(data.x_test)
    direct = F.cross_entropy(logits.flatten(0, 1), data.y_test.flatten()).exp().item()
    assert perplexity(model, data.x_test, data.y_test, batch_size=7) == pytest.approx(direct,
                                                                                    rel=1e-5)
