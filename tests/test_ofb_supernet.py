"""The OFB supernet: the masked LayerNorm, the searched forward against the plain ViT, physical
shrinking (outputs and optimiser state), and export to a plain ViT."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sparsenas.methods.ofb import OFBSupernet, to_plain_vit
from sparsenas.methods.ofb.supernet import _masked_layer_norm
from sparsenas.models import ViT

RATIOS = {"embed": (0.5, 0.75, 1.0), "attn": (0.5, 1.0), "mlp": (0.25, 0.5, 1.0)}


def _supernet(seed: int = 0, depth: int = 2) -> OFBSupernet:
    torch.manual_seed(seed)
    vit = ViT((1, 8, 8), 10, embed_dim=16, depth=depth, num_heads=2, mlp_ratio=2.0)
    net = OFBSupernet(vit, RATIOS).double()
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for unit in net.units.values():
            unit.alpha.copy_(torch.randn(unit.alpha.shape, generator=generator,
                                         dtype=torch.float64))
            unit.scores.copy_(torch.randn(unit.scores.shape, generator=generator,
                                          dtype=torch.float64))
    net.importance_weight.fill_(0.4)
    return net


def _x(n: int = 5, seed: int = 7) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def test_masked_layer_norm_is_layer_norm_over_the_reserved_channels():
    norm = torch.nn.LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2, 6))
        norm.bias.copy_(torch.linspace(-1, 1, 6))
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    keep = torch.tensor([0, 2, 5])
    weights = torch.zeros(6, dtype=torch.float64).index_fill(0, keep, 1.0)
    out = _masked_layer_norm(x, norm, weights)[..., keep]
    expected = F.layer_norm(x[..., keep], (3,), norm.weight[keep], norm.bias[keep], norm.eps)
    torch.testing.assert_close(out, expected)


def test_full_width_hard_masks_equal_the_plain_parent():
    net = _supernet()
    with torch.no_grad():
        for unit in net.units.values():
            unit.alpha.zero_()
            unit.alpha[-1] = 5.0  # the full-width candidate is the most probable everywhere
    x = _x()
    torch.testing.assert_close(net(x, hard=True), net.vit(x))


def test_rejects_bad_arguments():
    vit = ViT((1, 8, 8), 10, embed_dim=16, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="missing \\['mlp'\\]"):
        OFBSupernet(vit, {"embed": (1.0,), "attn": (1.0,)})
    with pytest.raises(ValueError, match="strictly increasing"):
        OFBSupernet(vit, {**RATIOS, "mlp": (1.0, 0.5)})
    with pytest.raises(TypeError, match="must be a ViT"):
        OFBSupernet(torch.nn.Linear(2, 2), RATIOS)
