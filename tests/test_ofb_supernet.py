"""The OFB supernet: the masked LayerNorm, the searched forward against the plain ViT, physical
shrinking (outputs and optimiser state), and export to a plain ViT."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from sparsenas.methods.ofb import OFBSupernet, to_plain_vit, uniform_widths
from sparsenas.methods.ofb.supernet import _masked_layer_norm
from sparsenas.models import ViT, flops

pytestmark = pytest.mark.usefixtures("one_thread")

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


def _drop_largest_candidates(net: OFBSupernet) -> None:
    """Makes the widest candidate of every unit improbable enough to be eliminated, leaving
    the others near-uniform (2 of 3 alive) or one alive (the attention units, frozen)."""
    with torch.no_grad():
        for unit in net.units.values():
            unit.alpha.zero_()
            unit.alpha[-1] = -6.0
    for unit in net.units.values():
        assert unit.eliminate()


@pytest.mark.parametrize("hard", [False, True])
def test_shrinking_leaves_outputs_unchanged(hard):
    net = _supernet()
    _drop_largest_candidates(net)
    x = _x()
    before = net(x, hard=hard)
    widths_before = {name: unit.width for name, unit in net.units.items()}
    assert net.eliminate() == []  # nothing more dropped, but every unit shrinks
    after = net(x, hard=hard)
    assert {name: unit.width for name, unit in net.units.items()} == {
        "embed": 12, "attn_0": 4, "mlp_0": 16, "attn_1": 4, "mlp_1": 16}
    assert widths_before["embed"] == 16
    assert net.vit.blocks[0].fc1.weight.shape == (16, 12)
    assert net.vit.blocks[1].attn.qkv.weight.shape == (3 * 2 * 4, 12)
    torch.testing.assert_close(after, before)


def test_export_equals_hard_masked_supernet_and_flops_match():
    net = _supernet(seed=3)
    _drop_largest_candidates(net)
    net.eliminate()
    with torch.no_grad():  # choices below the shrunk widths (mlp_0: a tie, the first wins)
        net.units["mlp_1"].alpha.copy_(torch.tensor([0.0, 4.0, 0.0]))
        net.units["embed"].alpha.copy_(torch.tensor([3.0, 0.0, 0.0]))
    plain = to_plain_vit(net)
    assert type(plain) is ViT and not any("mask" in n for n, _ in plain.named_parameters())
    assert plain.widths.embed == 8 and plain.widths.mlp_hidden == (8, 16)
    assert plain.widths.head_dims == (4, 4)
    x = _x(seed=11)
    torch.testing.assert_close(plain(x), net(x, hard=True))
    assert plain.flops() == flops(net.chosen_widths(), (8, 8))
    # The searched network itself is left as it was.
    assert net.units["embed"].width == 12


def test_uniform_widths_take_the_largest_ratio_within_the_target():
    parent = ViT((1, 8, 8), 10, embed_dim=32, depth=2, num_heads=4).widths
    target = 0.5 * flops(parent, (8, 8))
    widths = uniform_widths(parent, (8, 8), target)
    assert flops(widths, (8, 8)) <= target
    # One more channel on every width would exceed the target.
    wider = replace(widths, embed=widths.embed + 1,
                    head_dims=tuple(d + 1 for d in widths.head_dims),
                    mlp_hidden=tuple(m + 1 for m in widths.mlp_hidden))
    assert flops(wider, (8, 8)) > target
    assert len(set(widths.head_dims)) == 1 and widths.embed < 32
    assert ViT.from_widths(widths, (8, 8)).flops() == flops(widths, (8, 8))
    with pytest.raises(ValueError, match="exceeds the parent's"):
        uniform_widths(parent, (8, 8), 2.01 * target)
    with pytest.raises(ValueError, match="of one channel per width"):
        uniform_widths(parent, (8, 8), 10.0)
