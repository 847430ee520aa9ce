"""Level database: pruners against direct computations, storage, lazy loading, bad input."""

import pytest
import torch
from torch import nn

from sparsenas.methods.evopress.database import (LevelDatabase, dequantise, input_hessians,
                                                 magnitude_mask, quantise_rtn, sparsegpt_prune,
                                                 wanda_mask)
from sparsenas.spaces.levels import BitWidthSpace, SparsityLevelSpace, compressible_layers


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def _calibration(seed=1, batches=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 1, 6, 6, generator=g) for _ in range(batches)]


def _space(model, sparsity=0.5):
    layers = compressible_layers(model)
    return SparsityLevelSpace(list(layers), [m.weight.numel() for m in layers.values()],
                              sparsity, num_levels=2)


def test_magnitude_masks_exact(tmp_path):
    model = _model()
    space = _space(model)
    db = LevelDatabase.build(tmp_path / "db.safetensors", model, space, _calibration())
    assert not db.changes_weights
    for unit, name in enumerate(space.unit_names):
        weight = dict(model.named_modules())[name].weight.detach()
        for level in space.values[unit]:
            kept = space.kept(unit, level)
            mask = db.mask(name, level)
            assert mask.shape == weight.shape and int(mask.sum()) == kept
            if kept == 0:
                assert not mask.any()
            else:
                threshold = weight.abs().flatten().topk(kept).values.min()
                assert torch.equal(mask, weight.abs() >= threshold)
            assert torch.equal(db.weight(name, level), weight * mask)


def test_wanda_matches_direct_computation():
    torch.manual_seed(3)
    layer = nn.Linear(12, 5)
    x = torch.randn(40, 12)
    hessian = input_hessians(layer, {"": layer}, [x])[""]
    mask = wanda_mask(layer.weight.detach(), 5 * 7, torch.diagonal(hessian).sqrt())
    score = layer.weight.detach().abs() * x.norm(dim=0)
    direct = torch.zeros_like(mask)
    direct.scatter_(1, score.topk(7, dim=1).indices, True)
    assert torch.equal(mask, direct)
    uneven = wanda_mask(layer.weight.detach(), 5 * 7 + 3, torch.diagonal(hessian).sqrt())
    assert int(uneven.sum()) == 38 and torch.all(uneven >= direct)


def test_sparsegpt_error_not_above_magnitude():
    torch.manual_seed(4)
    layer = nn.Linear(32, 16)
    # correlated inputs, where OBS updates matter
    x = torch.randn(256, 8) @ torch.randn(8, 32) + 0.1 * torch.randn(256, 32)
    hessian = input_hessians(layer, {"": layer}, [x])[""]
    weight = layer.weight.detach()
    for kept in (256, 160, 64):
        pruned, mask = sparsegpt_prune(weight, kept, hessian, block_size=8)
        assert int(mask.sum()) == kept and torch.all(pruned[~mask] == 0)
        magnitude = weight * magnitude_mask(weight, kept)
        error = lambda w: ((x @ (weight - w).T) ** 2).sum()
        assert error(pruned) <= error(magnitude)
    assert error(pruned) < 0.8 * error(magnitude)


def test_sparsegpt_database_conv_and_storage(tmp_path):
    model = _model()
    space = _space(model, 0.6)
    db = LevelDatabase.build(tmp_path / "g.safetensors", model, space, _calibration(),
                             pruner="sparsegpt", block_size=16)
    assert db.changes_weights and db.size_bytes() > 0
    reopened = LevelDatabase.open(tmp_path / "g.safetensors", model, "sparsity")
    assert reopened.loaded_layers() == []
    weight = reopened.weight("0", 1)
    assert reopened.loaded_layers() == ["0"]
    assert weight.shape == (4, 1, 3, 3)
    assert int((reopened.mask("0", 1)).sum()) == space.kept(0, 1)
    assert torch.all(weight[~reopened.mask("0", 1)] == 0)


def test_quantisation_database(tmp_path):
    model = _model()
    layers = compressible_layers(model)
    weight = layers["3"].weight.detach()
    codes, scale, zero = quantise_rtn(weight, 3, group_size=16)
    assert codes.max() <= 7
    restored = dequantise(codes, scale, zero, 16)
    assert (restored - weight).abs().max() <= scale.max() / 2 + 1e-6
    # one group directly: asymmetric min/max with 0 included
    group = weight[0, :16]
    low, high = min(group.min(), 0), max(group.max(), 0)
    step = (high - low) / 7
    direct = (torch.clamp(torch.round(group / step) + torch.round(-low / step), 0, 7)
              - torch.round(-low / step)) * step
    assert torch.allclose(restored[0, :16], direct, atol=1e-6)


def test_bits_database_and_errors(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2))
    layers = compressible_layers(model)
    space = BitWidthSpace(list(layers), [64, 64], 4)
    db = LevelDatabase.build(tmp_path / "b.safetensors", model, space, [], group_size=4)
    dense = model[0].weight.detach()
    errors = [(db.weight("0", bits) - dense).abs().max().item() for bits in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2]
    with pytest.raises(ValueError, match="bit-width"):
        db.mask("0", 4)
    with pytest.raises(ValueError, match="mode"):
        LevelDatabase.open(tmp_path / "b.safetensors", model, "sparsity")
    other = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="another model"):
        LevelDatabase.open(tmp_path / "b.safetensors", other, "bits")
    with torch.no_grad():
        model[0].weight[0, 0] += 1
    with pytest.raises(ValueError, match="another model"):
        LevelDatabase.open(tmp_path / "b.safetensors", model, "bits")
    with pytest.raises(ValueError, match="level"):
        db.weight("0", 7)
    with pytest.raises(ValueError, match="pruner"):
        LevelDatabase.build(tmp_path / "x.safetensors", model, _space(model), [], pruner="obs")
