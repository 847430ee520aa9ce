"""Score-pruned layers (HYDRA / DASS): a weight W, a score S of the same shape, and a mask that
keeps the top-k entries of |S| per layer, k = round(keep · numel).

Phases (``set_phase``):
    "dense"     the plain layer; W trained, S unused.
    "prune"     W frozen; the mask is recomputed from S at every forward and passed to the masked
                ops as a float tensor, whose backward hands ∂L/∂M = ∂L/∂(W ⊙ M) ⊙ W to S unchanged
                (straight-through), so S is trained.
    "finetune"  the mask of the current scores is frozen into the ``fixed_mask`` buffer; W trained.

The mask buffer is called ``fixed_mask`` rather than ``weight_mask``: other code reads a
``weight_mask`` buffer as the mask a layer computes with, which holds here only in "finetune".
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from sparsenas.ops import masked_conv2d, masked_linear

PHASES = ("dense", "prune", "finetune")


def check_keep(keep: float, where: str) -> float:
    """``keep`` as a float in (0, 1]; a ValueError naming ``where`` otherwise."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ValueError(f"{where}: argument 'keep' must be a kept fraction in (0, 1], got "
                         f"{keep!r}")
    return float(keep)


def kept_count(numel: int, keep: float) -> int:
    """How many of ``numel`` entries a kept fraction ``keep`` keeps: round(keep · numel), at least
    one (a layer that keeps nothing would cut the network)."""
    return max(1, min(numel, round(keep * numel)))


def topk_mask(scores: Tensor, keep: float) -> Tensor:
    """Bool mask of ``scores``' shape keeping the kept_count(numel, keep) largest |scores|.

    The threshold comes from a selection (``torch.kthvalue``), not a sort; entries equal to the
    threshold are kept in flattened-index order, so ties are broken the same way on every run and
    device (as a stable descending sort would)."""
    magnitude = scores.detach().abs().flatten()
    count = kept_count(magnitude.numel(), keep)
    if count == magnitude.numel():
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = magnitude.kthvalue(magnitude.numel() - count + 1).values
    above = magnitude > threshold
    at = magnitude == threshold
    room = count - above.sum()
    mask = above | (at & (at.cumsum(0) <= room))
    return mask.view(scores.shape)


class _StraightThroughTopK(torch.autograd.Function):
    """Forward: the 0/1 top-k mask of the scores; backward: the mask's gradient passed unchanged."""

    @staticmethod
    def forward(ctx, scores: Tensor, keep: float) -> Tensor:
        return topk_mask(scores, keep).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class _Scored:
    """Scores, kept fraction, phase and fixed mask shared by SparseLinear and SparseConv2d."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    scores: nn.Parameter
    fixed_mask: Tensor

    def _init_scores(self, keep: float) -> None:
        self.keep = check_keep(keep, type(self).__name__)
        self.phase = "dense"
        self.scores = nn.Parameter(torch.empty_like(self.weight), requires_grad=False)
        nn.Module.register_buffer(self, "fixed_mask", torch.ones_like(self.weight,
                                                                      dtype=torch.bool))
        self.init_scores_from_weights()

    @torch.no_grad()
    def init_scores_from_weights(self) -> None:
        """HYDRA's scaled initialisation S = sqrt(6 / fan_in) · W / max|W|, so the first mask keeps
        the largest-magnitude weights."""
        fan_in = nn.init._calculate_correct_fan(self.weight, "fan_in")
        largest = self.weight.abs().max().clamp_min(torch.finfo(self.weight.dtype).tiny)
        self.scores.copy_(math.sqrt(6.0 / fan_in) * self.weight / largest)

    def set_keep(self, keep: float) -> None:
        """Sets the kept fraction; in "finetune" the fixed mask is recomputed from the scores."""
        self.keep = check_keep(keep, f"{type(self).__name__}.set_keep()")
        if self.phase == "finetune":
            self.fixed_mask = topk_mask(self.scores, self.keep)

    def set_phase(self, phase: str) -> None:
        """Switches to "dense", "prune" or "finetune" (see the module docstring); sets which of
        W, bias and S require gradients."""
        if phase not in PHASES:
            raise ValueError(f"{type(self).__name__}.set_phase(): argument 'phase' must be one of "
                             f"{', '.join(PHASES)}, got {phase!r}")
        self.phase = phase
        self.weight.requires_grad_(phase != "prune")
        if self.bias is not None:
            self.bias.requires_grad_(phase != "prune")
        self.scores.requires_grad_(phase == "prune")
        self.fixed_mask = (topk_mask(self.scores, self.keep) if phase == "finetune"
                           else torch.ones_like(self.weight, dtype=torch.bool))

    def mask(self) -> Tensor:
        """The bool mask this layer computes with in its current phase."""
        if self.phase == "dense":
            return torch.ones_like(self.weight, dtype=torch.bool)
        if self.phase == "prune":
            return topk_mask(self.scores, self.keep)
        return self.fixed_mask

    def _forward_mask(self) -> Tensor | None:
        """None in "dense" (the plain op), the straight-through float mask in "prune", the fixed
        bool mask in "finetune"."""
        if self.phase == "dense":
            return None
        if self.phase == "prune":
            return _StraightThroughTopK.apply(self.scores, self.keep)
        return self.fixed_mask

    def _dense_parameters(self, dense: nn.Module) -> nn.Module:
        dense.weight = nn.Parameter((self.weight * self.mask()).detach().clone())
        if self.bias is not None:
            dense.bias = nn.Parameter(self.bias.detach().clone())
        return dense.train(self.training)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, keep={self.keep}, phase={self.phase}"


class SparseLinear(_Scored, nn.Linear):
    """nn.Linear with HYDRA scores: x [..., in] -> [..., out], computing with W ⊙ top-k(|S|)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, keep: float = 1.0,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_scores(keep)

    def forward(self, x: Tensor) -> Tensor:
        mask = self._forward_mask()
        if mask is None:
            return nn.functional.linear(x, self.weight, self.bias)
        return masked_linear(x, self.weight, mask, self.bias)

    def to_dense(self) -> nn.Linear:
        """A plain nn.Linear whose weight is W ⊙ M with the current phase's mask."""
        dense = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                          device="meta", dtype=self.weight.dtype)
        return self._dense_parameters(dense)


class SparseConv2d(_Scored, nn.Conv2d):
    """nn.Conv2d (zero padding, any stride / dilation / groups) with HYDRA scores:
    x [N, C, H, W] -> [N, out, H', W'], computing with W ⊙ top-k(|S|)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, keep: float = 1.0,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if isinstance(padding, str):
            raise ValueError(f"SparseConv2d(): argument 'padding' must be an int or a pair, got "
                             f"{padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, device=device, dtype=dtype)
        self._init_scores(keep)

    def forward(self, x: Tensor) -> Tensor:
        mask = self._forward_mask()
        if mask is None:
            return self._conv_forward(x, self.weight, self.bias)
        return masked_conv2d(x, self.weight, mask, self.bias, self.stride, self.padding,
                             self.dilation, self.groups)

    def to_dense(self) -> nn.Conv2d:
        """A plain nn.Conv2d whose weight is W ⊙ M with the current phase's mask."""
        dense = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                          self.padding, self.dilation, self.groups, self.bias is not None,
                          device="meta", dtype=self.weight.dtype)
        return self._dense_parameters(dense)


def sparse_layers(model: nn.Module) -> Iterator[tuple[str, _Scored]]:
    """(name, layer) for every SparseLinear / SparseConv2d of ``model``."""
    return ((name, m) for name, m in model.named_modules() if isinstance(m, _Scored))


def _layers_or_error(model: nn.Module, where: str) -> list[_Scored]:
    layers = [layer for _, layer in sparse_layers(model)]
    if not layers:
        raise ValueError(f"{where}: argument 'model' has no SparseLinear / SparseConv2d layer")
    return layers


def set_phase(model: nn.Module, phase: str, keep: float | None = None) -> None:
    """Sets the phase (and the kept fraction, when given) of every sparse layer of ``model``."""
    layers = _layers_or_error(model, "set_phase()")
    if keep is not None:
        keep = check_keep(keep, "set_phase()")
    for layer in layers:
        if keep is not None:
            layer.keep = keep
        layer.set_phase(phase)


def set_keep(model: nn.Module, keep: float) -> None:
    """Sets the kept fraction of every sparse layer of ``model``."""
    keep = check_keep(keep, "set_keep()")
    for layer in _layers_or_error(model, "set_keep()"):
        layer.set_keep(keep)


def model_phase(model: nn.Module) -> str:
    """The phase all sparse layers of ``model`` share; a ValueError when they differ."""
    phases = {layer.phase for layer in _layers_or_error(model, "model_phase()")}
    if len(phases) != 1:
        raise ValueError(f"model_phase(): the sparse layers are in different phases "
                         f"({', '.join(sorted(phases))}); set one with set_phase()")
    return phases.pop()


def init_scores_from_weights(model: nn.Module) -> None:
    """HYDRA's scaled score initialisation on every sparse layer of ``model``."""
    for layer in _layers_or_error(model, "init_scores_from_weights()"):
        layer.init_scores_from_weights()


def score_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The score tensors of ``model``'s sparse layers, in module order."""
    return [layer.scores for _, layer in sparse_layers(model)]


def sparsity_report(model: nn.Module) -> dict[str, float]:
    """Kept weights / all weights over the sparse layers, with their current masks."""
    kept = total = 0
    for _, layer in sparse_layers(model):
        kept += int(layer.mask().sum())
        total += layer.weight.numel()
    return {"kept_weights": kept, "weights": total, "kept_fraction": kept / max(total, 1)}
