"""Masked layers: nn.Linear / nn.Conv2d that compute with W ⊙ M through the masked ops.

The mask lives in a ``weight_mask`` buffer, the name ``torch.nn.utils.prune`` uses: bool by default
(a fixed mask), or floating with the weight's dtype (a soft mask that receives gradients when it
requires them). A mask may also hold K candidates, [K, *weight.shape], with inputs that carry K in
their leading dimension. The layers subclass nn.Linear / nn.Conv2d, so code that inspects those
types (the NTK engine, optimizers, initialisers) keeps working, and any layer that carries a
``weight_mask`` buffer is a masked layer to it.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsenas.ops import masked_conv2d, masked_linear

_Layer = TypeVar("_Layer", bound="_MaskedWeight")


class _MaskedWeight:
    """The ``weight_mask`` buffer shared by the masked layers."""

    weight: nn.Parameter
    weight_mask: Tensor

    def _init_mask(self, mask: Tensor | None) -> None:
        nn.Module.register_buffer(
            self, "weight_mask", torch.ones(self.weight.shape, dtype=torch.bool,
                                            device=self.weight.device))
        if mask is not None:
            self.set_mask(mask)

    def set_mask(self, mask: Tensor) -> None:
        """Sets ``weight_mask``: bool / uint8 / floating, shaped like the weight or [K, *weight]."""
        name = type(self).__name__
        shape = tuple(self.weight.shape)
        if tuple(mask.shape[-len(shape):]) != shape or mask.dim() not in (len(shape),
                                                                            len(shape) + 1):
            raise ValueError(f"{name}.set_mask(): argument 'mask' must have the weight's shape "
                             f"{list(shape)} or [K, *{list(shape)}], got {list(mask.shape)}")
        if mask.dtype == torch.uint8:
            mask = mask.bool()
        if not (mask.dtype == torch.bool or mask.is_floating_point()):
            raise TypeError(f"{name}.set_mask(): argument 'mask' must be bool, uint8 or floating, "
                            f"got {mask.dtype}")
        if mask.is_floating_point():
            mask = mask.to(self.weight.dtype)
        self.weight_mask = mask.to(self.weight.device)

    def masked_weight(self) -> Tensor:
        """W ⊙ M (one mask only)."""
        if self.weight_mask.dim() != self.weight.dim():
            raise ValueError(f"{type(self).__name__}: a layer with K candidate masks "
                             f"{list(self.weight_mask.shape)} has no single masked weight")
        return self.weight * self.weight_mask.to(self.weight.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A stored mask may differ from the current one in dtype (soft vs fixed) or in its number
        # of candidates: take it as stored instead of casting it into the current buffer.
        stored = state_dict.get(prefix + "weight_mask")
        if isinstance(stored, Tensor) and (stored.dtype != self.weight_mask.dtype
                                           or stored.shape != self.weight_mask.shape):
            self.set_mask(stored)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _adopt_parameters(masked: _MaskedWeight, layer: nn.Module, mask: Tensor | None) -> None:
    # The masked layer shares the dense layer's Parameter objects, so optimizers and anything
    # else holding them keep working after a conversion. A layer pruned with
    # torch.nn.utils.prune (weight_orig and a weight_mask buffer) brings its mask along.
    pruned = hasattr(layer, "weight_orig") and isinstance(getattr(layer, "weight_mask", None),
                                                          Tensor)
    masked.weight = layer.weight_orig if pruned else layer.weight
    masked.bias = layer.bias
    masked.train(layer.training)
    if mask is None and pruned:
        mask = layer.weight_mask
    masked._init_mask(mask)


class MaskedLinear(_MaskedWeight, nn.Linear):
    """nn.Linear computing y = x (W ⊙ M)ᵀ + b with M in the ``weight_mask`` buffer.

    Shapes: x [..., in] -> [..., out]; with K candidate masks [K, out, in], x [K, ..., in].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 mask: Tensor | None = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_mask(mask)

    def forward(self, x: Tensor) -> Tensor:
        return masked_linear(x, self.weight, self.weight_mask, self.bias)

    @classmethod
    def from_dense(cls, layer: nn.Linear, mask: Tensor | None = None) -> MaskedLinear:
        """A MaskedLinear sharing ``layer``'s parameters, with ``mask`` (by default the mask of a
        layer pruned with torch.nn.utils.prune, else all ones)."""
        masked = cls(layer.in_features, layer.out_features, layer.bias is not None,
                     device="meta", dtype=layer.weight.dtype)
        _adopt_parameters(masked, layer, mask)
        return masked

    def to_dense(self) -> nn.Linear:
        """A plain nn.Linear whose weight is W ⊙ M (new parameters)."""
        dense = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                          device="meta", dtype=self.weight.dtype)
        dense.weight = nn.Parameter(self.masked_weight().detach().clone())
        if self.bias is not None:
            dense.bias = nn.Parameter(self.bias.detach().clone())
        return dense.train(self.training)


class MaskedConv2d(_MaskedWeight, nn.Conv2d):
    """nn.Conv2d computing conv2d(x, W ⊙ M) + b with M in the ``weight_mask`` buffer.

    Shapes: x [N, C, H, W] -> [N, out, H', W']; with K candidate masks [K, out, C / groups, kh, kw],
    x [K, N, C, H, W] -> [K, N, out, H', W']. Every padding / padding_mode of nn.Conv2d works
    ('same', 'reflect', ...): non-zero modes and 'same' pad explicitly, as nn.Conv2d does.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 mask: Tensor | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device=device, dtype=dtype)
        self._init_mask(mask)

    def forward(self, x: Tensor) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            flat = x.flatten(0, 1) if x.dim() == 5 else x
            flat = F.pad(flat, self._reversed_padding_repeated_twice, mode=mode)
            x = flat.unflatten(0, x.shape[:2]) if x.dim() == 5 else flat
            padding = (0, 0)
        return masked_conv2d(x, self.weight, self.weight_mask, self.bias, self.stride, padding,
                             self.dilation, self.groups)

    def _dense_config(self) -> dict:
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, groups=self.groups, bias=self.bias is not None,
                    padding_mode=self.padding_mode)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, mask: Tensor | None = None) -> MaskedConv2d:
        """A MaskedConv2d sharing ``layer``'s parameters, with ``mask`` (by default the mask of a
        layer pruned with torch.nn.utils.prune, else all ones)."""
        config = MaskedConv2d._dense_config(layer)
        masked = cls(**config, device="meta", dtype=layer.weight.dtype)
        _adopt_parameters(masked, layer, mask)
        return masked

    def to_dense(self) -> nn.Conv2d:
        """A plain nn.Conv2d whose weight is W ⊙ M (new parameters)."""
        dense = nn.Conv2d(**self._dense_config(), device="meta", dtype=self.weight.dtype)
        dense.weight = nn.Parameter(self.masked_weight().detach().clone())
        if self.bias is not None:
            dense.bias = nn.Parameter(self.bias.detach().clone())
        return dense.train(self.training)


_TO_MASKED: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: MaskedLinear,
                                                       nn.Conv2d: MaskedConv2d}


def _convert(module: nn.Module, replace, converted: dict[int, nn.Module]) -> nn.Module:
    # `converted` maps each visited module to its replacement, so a layer used at several places
    # of the model stays one (shared) layer after the conversion.
    if id(module) in converted:
        return converted[id(module)]
    # _modules, not named_children(): the latter lists a shared child only once.
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        new_child = _convert(child, replace, converted)
        if new_child is not child:
            setattr(module, name, new_child)
    converted[id(module)] = replace(module)
    return converted[id(module)]


def convert_to_masked(model: nn.Module) -> nn.Module:
    """Replaces every nn.Linear / nn.Conv2d of ``model`` by its masked layer (all-ones mask),
    recursively and in place, sharing the parameters; returns the model (the new layer when
    ``model`` itself is one). Subclasses of those layers are left alone: some (e.g. the output
    projection of nn.MultiheadAttention) are read by their owner without calling forward."""
    return _convert(model, lambda m: _TO_MASKED[type(m)].from_dense(m)
                    if type(m) in _TO_MASKED else m, {})


def convert_to_dense(model: nn.Module) -> nn.Module:
    """The inverse of :func:`convert_to_masked`: replaces every masked layer by a plain layer with
    W ⊙ M as its weight; returns the model (the new layer when ``model`` itself is one)."""
    return _convert(model, lambda m: m.to_dense() if isinstance(m, _MaskedWeight) else m, {})
