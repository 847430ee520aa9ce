"""OFB's regularisers: the adaptive one-hot loss on each unit's candidate distribution, the L1
term on importance scores, and the FLOPs loss on the expected widths."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# ρ = Var(p)/Var_max is clamped to [RHO_CLAMP, 1 − RHO_CLAMP] before tan(π/2 − π·ρ), which is
# infinite at ρ = 0 (uniform p) and at ρ = 1 (one-hot p); the clamp bounds the term to
# ±cot(π·RHO_CLAMP) ≈ ±31.82 (its gradient is zero outside the clamp, where p is already
# uniform or one-hot to within 1%).
RHO_CLAMP = 0.01


def one_hot_variance_max(alive: int) -> float:
    """Var of a one-hot vector of length K′ (population variance): (K′ − 1) / K′²."""
    return (alive - 1) / alive ** 2


def adaptive_one_hot_loss(probs: Tensor, entropy_only: bool = False) -> Tensor:
    """H(p) + tan(π/2 − π·ρ)/K′ for the K′ alive candidates' probabilities ``probs`` [K′]
    (ρ = Var(p)/Var_max, clamped, see :data:`RHO_CLAMP`); ``entropy_only`` drops the tan term
    (the ablation). Zero when K′ = 1."""
    if probs.dim() != 1 or probs.numel() == 0:
        raise ValueError(f"adaptive_one_hot_loss(): argument 'probs' must be a non-empty 1-D "
                         f"tensor, got shape {tuple(probs.shape)}")
    alive = probs.numel()
    if alive == 1:
        return probs.sum() * 0.0
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
    if entropy_only:
        return entropy
    rho = probs.var(unbiased=False) / one_hot_variance_max(alive)
    rho = rho.clamp(RHO_CLAMP, 1.0 - RHO_CLAMP)
    return entropy + torch.tan(math.pi / 2 - math.pi * rho) / alive


def score_l1(scores: list[Tensor]) -> Tensor:
    """Mean σ(s) over all channels of the given score tensors: an L1 penalty on the (positive)
    importances, normalised so it does not grow with the width."""
    importances = torch.cat([torch.sigmoid(s).flatten() for s in scores])
    return importances.mean()


def flops_loss(expected: Tensor, target: float, original: float) -> Tensor:
    """((F_expected − F_target) / F_orig)²."""
    if original <= 0:
        raise ValueError(f"flops_loss(): argument 'original' must be positive, got {original}")
    return ((expected - target) / original) ** 2
