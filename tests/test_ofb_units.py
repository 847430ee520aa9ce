"""OFB width units: ratio checks, the staircase / bi-mask against a direct loop, elimination."""

from __future__ import annotations

import math

import pytest
import torch

from sparsenas.methods.ofb import WidthUnit, importance_ranks, kept_sizes

pytestmark = pytest.mark.usefixtures("one_thread")


def _unit(width=6, ratios=(0.25, 0.5, 1.0), groups=2, seed=0) -> WidthUnit:
    unit = WidthUnit(width, ratios, groups=groups).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        unit.alpha.copy_(torch.randn(unit.alpha.shape, generator=generator, dtype=torch.float64))
        unit.scores.copy_(torch.randn(unit.scores.shape, generator=generator,
                                      dtype=torch.float64))
    return unit


def _direct_soft_mask(unit: WidthUnit) -> list[list[float]]:
    """m̃[g][c] = Σ_j p_j [rank of c in row g < k_j], ranks counted channel by channel."""
    alpha = unit.alpha.detach().tolist()
    alive = unit.alive.tolist()
    exps = [math.exp(a) if keep else 0.0 for a, keep in zip(alpha, alive)]
    probs = [e / sum(exps) for e in exps]
    sizes = unit.sizes.tolist()
    scores = unit.row_scores().detach().tolist()
    out = []
    for row in scores:
        mask_row = []
        for c, s in enumerate(row):
            rank = sum(1 for d, other in enumerate(row) if other > s or (other == s and d < c))
            mask_row.append(sum(p for p, k in zip(probs, sizes) if rank < k))
        out.append(mask_row)
    return out


def test_kept_sizes_and_bad_ratios():
    assert kept_sizes(64, (0.25, 0.5, 0.75, 1.0)) == [16, 32, 48, 64]
    assert kept_sizes(4, (0.1, 1.0)) == [1, 4]
    for ratios, match in [((0.5, 0.25), "strictly increasing"), ((0.5, 0.5), "strictly"),
                          ((0.0, 1.0), r"in \(0, 1\]"), ((0.5, 1.5), r"in \(0, 1\]"),
                          ((), "at least one"), ((0.5, 0.52), "keep the same width")]:
        with pytest.raises(ValueError, match=match):
            kept_sizes(8, ratios)


def test_importance_ranks_highest_first_ties_by_index():
    ranks = importance_ranks(torch.tensor([[0.5, 2.0, 0.5, -1.0]]))
    assert ranks.tolist() == [[1, 0, 2, 3]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_mask_matches_direct_loop(seed):
    unit = _unit(seed=seed)
    expected = torch.tensor(_direct_soft_mask(unit), dtype=torch.float64)
    torch.testing.assert_close(unit.soft_mask(), expected, rtol=0, atol=1e-12)
    # The highest-scoring channel of each row always gets the top of the staircase (1).
    top = unit.row_scores().argmax(-1)
    assert torch.allclose(unit.soft_mask()[torch.arange(2), top],
                          torch.ones(2, dtype=torch.float64))


def test_bi_mask_scale_matches_direct_formula_and_has_gradients():
    unit = _unit(width=8, ratios=(0.25, 0.5, 0.75), seed=3)
    w_p = 0.3
    soft = torch.tensor(_direct_soft_mask(unit), dtype=torch.float64)
    ranks = importance_ranks(unit.row_scores().detach())
    expected = (w_p * torch.sigmoid(unit.row_scores().detach()) + (1 - w_p) * soft) * (ranks < 6)
    scale = unit.scale(w_p)
    torch.testing.assert_close(scale.detach(), expected, rtol=0, atol=1e-12)
    scale.sum().backward()
    assert unit.alpha.grad.abs().sum() > 0 and unit.scores.grad.abs().sum() > 0
    # Channels no candidate keeps get neither signal nor score gradient.
    assert unit.scores.grad.view(2, 8)[ranks >= 6].abs().sum() == 0


def test_elimination_renormalises_and_freezes():
    unit = WidthUnit(8, (0.25, 0.5, 1.0))
    with torch.no_grad():
        unit.alpha.copy_(torch.tensor([1.0, 3.0, -3.0]))
    p = unit.probs()
    assert p[2] <= 0.2 / 3 < p[0]
    assert unit.eliminate()
    assert unit.alive.tolist() == [True, True, False] and unit.largest_alive == 4
    e = math.exp(2.0)
    torch.testing.assert_close(unit.probs(), torch.tensor([1 / (1 + e), e / (1 + e), 0.0]))
    assert not unit.frozen
    with torch.no_grad():
        unit.alpha[1] = 10.0
    assert unit.eliminate() and unit.frozen and unit.chosen_size() == 4
    assert not unit.eliminate()
    # A frozen unit's scale is its hard mask, so α and s get no gradient.
    assert unit.scale(0.5).requires_grad is False
