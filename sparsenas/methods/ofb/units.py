"""Searchable width units and the bi-mask.

A unit is one width of the network (the MLP hidden width of a block, the per-head qkv width of a
block's attention, the embedding width shared by all blocks). It holds ``groups`` rows of
``width`` channels (one row per attention head, otherwise one row), K candidate kept sizes
k_1 < … < k_K (from keep ratios of the parent width), architecture logits α [K] and importance
scores s, one per channel.

Bi-mask. Candidate j keeps the first k_j positions of a staircase (prefix mask M_j); the soft
staircase is m̄ = Σ_j p_j M_j with p = softmax(α) over the alive candidates. Position i of the
staircase goes to the channel of importance rank i in its row (highest s first), which gives the
soft mask m̃. A channel's activation is scaled by ``w_p·σ(s) + (1 − w_p)·m̃``: α gets gradients
through m̃, s through σ(s), and w_p moves the weight from importance to sparsity over warm-up.
The scale is zero on channels that no alive candidate keeps, so removing them physically
changes nothing.

Elimination drops candidates with p ≤ 0.2/K′ (K′ alive; p is renormalised over the alive ones).
A unit with one candidate left is frozen: its mask is the hard mask of that candidate (ones once
the unit is shrunk to it) and α and s receive no gradient any more.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# Candidates whose probability falls to this fraction of uniform (1/K′) are dropped.
ELIMINATION_FACTOR = 0.2


def validate_ratios(ratios: Sequence[float], name: str = "ratios") -> tuple[float, ...]:
    """``ratios`` as a tuple of floats, checked to be strictly increasing and in (0, 1]."""
    values = tuple(float(r) for r in ratios)
    if not values:
        raise ValueError(f"argument '{name}' must hold at least one keep ratio")
    if any(not 0.0 < r <= 1.0 for r in values):
        raise ValueError(f"argument '{name}' must hold keep ratios in (0, 1], got {values}")
    if any(a >= b for a, b in zip(values, values[1:])):
        raise ValueError(f"argument '{name}' must be strictly increasing, got {values}")
    return values


def kept_sizes(width: int, ratios: Sequence[float], name: str = "ratios") -> list[int]:
    """Channels kept by each ratio of a ``width``-channel unit (at least one); ratios so close
    that they keep the same number of channels are rejected."""
    sizes = [max(1, round(r * width)) for r in validate_ratios(ratios, name)]
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"argument '{name}' {tuple(ratios)} keeps {sizes} of {width} channels: "
                         f"two candidates keep the same width")
    return sizes


def importance_ranks(scores: Tensor) -> Tensor:
    """Rank of every channel within its row, 0 for the highest score (ties: lower index first)."""
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


class WidthUnit(nn.Module):
    """One searchable width (see the module docstring). ``scores`` is stored flat,
    [groups * width], row-major, so physical shrinking slices it like any other parameter."""

    def __init__(self, width: int, ratios: Sequence[float], groups: int = 1,
                 score_init: float = 0.0) -> None:
        super().__init__()
        if width < 1 or groups < 1:
            raise ValueError(f"WidthUnit(): width and groups must be >= 1, got {width}, {groups}")
        sizes = kept_sizes(width, ratios)
        self.groups = groups
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.long))
        self.register_buffer("alive", torch.ones(len(sizes), dtype=torch.bool))
        self.alpha = nn.Parameter(torch.zeros(len(sizes)))
        self.scores = nn.Parameter(torch.full((groups * width,), float(score_init)))

    @property
    def width(self) -> int:
        """Channels per row held now (shrinks with the largest alive candidate)."""
        return self.scores.shape[0] // self.groups

    @property
    def num_alive(self) -> int:
        return int(self.alive.sum())

    @property
    def frozen(self) -> bool:
        return self.num_alive == 1

    @property
    def largest_alive(self) -> int:
        return int(self.sizes[self.alive].max())

    def row_scores(self) -> Tensor:
        return self.scores.view(self.groups, self.width)

    def probs(self) -> Tensor:
        """p over all K candidates, zero for eliminated ones (softmax over the alive logits)."""
        return self.alpha.masked_fill(~self.alive, float("-inf")).softmax(0)

    def alive_probs(self) -> Tensor:
        """p over the K′ alive candidates only."""
        return self.probs()[self.alive]

    def staircase(self) -> Tensor:
        """m̄ [width]: Σ_j p_j M_j; position i (importance rank i) has weight Σ_{k_j > i} p_j."""
        positions = torch.arange(self.width, device=self.sizes.device)
        prefix = (positions[None, :] < self.sizes[:, None]).to(self.alpha.dtype)
        return self.probs() @ prefix

    def soft_mask(self) -> Tensor:
        """m̃ [groups, width]: the staircase re-indexed by each row's importance ranks."""
        return self.staircase()[importance_ranks(self.row_scores().detach())]

    def chosen_size(self) -> int:
        """Kept channels of the most probable alive candidate."""
        return int(self.sizes[int(self.probs().argmax())])

    def hard_mask(self) -> Tensor:
        """[groups, width] 0/1: the most probable candidate's channels (highest scores)."""
        ranks = importance_ranks(self.row_scores().detach())
        return (ranks < self.chosen_size()).to(self.scores.dtype)

    def reserved(self, hard: bool = False) -> Tensor:
        """Channel weights of the reserved channels: m̃ while searching, the hard mask when
        ``hard`` or frozen."""
        return self.hard_mask() if hard or self.frozen else self.soft_mask()

    def scale(self, importance_weight: float | Tensor, hard: bool = False) -> Tensor:
        """[groups, width] activation scale: w_p·σ(s) + (1 − w_p)·m̃ on the channels some alive
        candidate keeps, 0 elsewhere; the hard mask when ``hard`` or frozen."""
        if hard or self.frozen:
            return self.hard_mask()
        ranks = importance_ranks(self.row_scores().detach())
        in_reach = (ranks < self.largest_alive).to(self.scores.dtype)
        mixed = (importance_weight * torch.sigmoid(self.row_scores())
                 + (1.0 - importance_weight) * self.soft_mask())
        return mixed * in_reach

    def expected_size(self) -> Tensor:
        """Σ_j p_j k_j, the expected kept channels per row (differentiable in α; a constant once
        frozen, so α gets no gradient any more)."""
        sizes = self.sizes.to(self.alpha.dtype)
        if self.frozen:
            return sizes[self.alive][0]
        return self.probs() @ sizes

    def eliminate(self, factor: float = ELIMINATION_FACTOR) -> bool:
        """Drops alive candidates with p ≤ factor/K′; True when any was dropped."""
        if self.frozen:
            return False
        probs = self.probs().detach()
        dropped = self.alive & (probs <= factor / self.num_alive)
        if not dropped.any():
            return False
        self.alive &= ~dropped
        return True

    def keep_index(self, size: int) -> Tensor:
        """[groups, size]: each row's ``size`` most important channels, most important first."""
        order = torch.argsort(self.row_scores().detach(), dim=-1, descending=True, stable=True)
        return order[:, :size]

    def extra_repr(self) -> str:
        return (f"groups={self.groups}, width={self.width}, sizes={self.sizes.tolist()}, "
                f"alive={self.alive.tolist()}")
