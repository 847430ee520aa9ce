"""K candidates of one parent trained together through the K-candidate masked ops: per-candidate
weights [K, ...] from one shared initialisation θ0, or (``shared_weights=True``) one weight tensor
shared by all candidates, as in weight-sharing supernets.

Candidate k's node masks are expanded to weight masks: in layer l, row o (and bias o) is masked
when node o of layer l is off, and column i when input node i (node i of layer l - 1) is off; the
NodeMask layers stay in place, so a switched-off node also leaves BatchNorm and the activation at
exactly zero. Residual blocks (:class:`sparsenas.nn.Residual`) are converted block by block;
after one, a node is live when it is live on the skip path or in the block. Element-wise
activations (ReLU, tanh, GELU, ...) apply to all candidates at once. Candidate k therefore computes
what the parent computes with candidate k's node masks set (in train and eval mode). With
per-candidate weights its gradients are the ones that network would get: the candidates'
parameters are disjoint, so summing their losses trains each one independently. With shared
weights the Linear / Conv2d weights and biases are one tensor whose gradient is the sum of the
candidates' gradients; BatchNorm stays per candidate (different sub-networks have different
statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsenas.models.networks import NodeMaskedNet
from sparsenas.nn import NodeMask, Residual
from sparsenas.ops import masked_conv2d, masked_linear


def weight_masks(out_nodes: Tensor | None, in_nodes: Tensor | None, weight_shape: Sequence[int],
                 num_candidates: int) -> Tensor:
    """bool [K, *weight_shape]: row o kept iff out_nodes[k, o], column i iff in_nodes[k, i]
    (None = all nodes kept). Extra trailing weight dims (conv kernels) are broadcast."""
    out_features, in_features, *kernel = weight_shape
    mask = torch.ones(num_candidates, out_features, in_features, dtype=torch.bool)
    if out_nodes is not None:
        mask = mask & out_nodes.cpu()[:, :, None]
    if in_nodes is not None:
        mask = mask & in_nodes.cpu()[:, None, :]
    return mask.view(num_candidates, out_features, in_features, *[1] * len(kernel)).expand(
        num_candidates, out_features, in_features, *kernel).contiguous()


def _compute_dtype(x: Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _candidate_parameter(tensor: Tensor, num_candidates: int, shared: bool) -> nn.Parameter:
    """The parent's tensor as one shared parameter, or as K per-candidate copies [K, ...]."""
    tensor = tensor.detach()
    if shared:
        return nn.Parameter(tensor.clone())
    return nn.Parameter(tensor.expand(num_candidates, *tensor.shape).clone())


class _CandidateLinear(nn.Module):
    def __init__(self, layer: nn.Linear, out_nodes: Tensor | None, in_nodes: Tensor | None,
                 num_candidates: int, shared: bool) -> None:
        super().__init__()
        k = num_candidates
        self.weight = _candidate_parameter(layer.weight, k, shared)
        self.register_buffer("weight_mask", weight_masks(out_nodes, in_nodes,
                                                         layer.weight.shape, k))
        self.bias = (_candidate_parameter(layer.bias, k, shared)
                     if layer.bias is not None else None)
        self.register_buffer("bias_mask", torch.ones(k, layer.out_features, dtype=torch.bool)
                             if out_nodes is None else out_nodes.clone())

    def forward(self, x: Tensor) -> Tensor:
        dtype = _compute_dtype(x)
        bias = None if self.bias is None else (self.bias * self.bias_mask).to(dtype)
        return masked_linear(x.to(dtype), self.weight.to(dtype), self.weight_mask, bias)


class _CandidateConv2d(nn.Module):
    def __init__(self, layer: nn.Conv2d, out_nodes: Tensor | None, in_nodes: Tensor | None,
                 num_candidates: int, shared: bool) -> None:
        super().__init__()
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError("CandidateBatch: only Conv2d with groups=1, zero padding and numeric "
                             "padding is supported")
        k = num_candidates
        self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
        self.weight = _candidate_parameter(layer.weight, k, shared)
        self.register_buffer("weight_mask", weight_masks(out_nodes, in_nodes,
                                                         layer.weight.shape, k))
        self.bias = (_candidate_parameter(layer.bias, k, shared)
                     if layer.bias is not None else None)
        self.register_buffer("bias_mask", torch.ones(k, layer.out_channels, dtype=torch.bool)
                             if out_nodes is None else out_nodes.clone())

    def forward(self, x: Tensor) -> Tensor:
        dtype = _compute_dtype(x)
        bias = None if self.bias is None else (self.bias * self.bias_mask).to(dtype)
        return masked_conv2d(x.to(dtype), self.weight.to(dtype), self.weight_mask, bias,
                             self.stride, self.padding, self.dilation)


class _CandidateBatchNorm(nn.Module):
    """K independent BatchNorms: x [K, N, C, ...] normalised as one BatchNorm over K * C
    features, which keeps each candidate's statistics its own."""

    def __init__(self, layer: nn.modules.batchnorm._BatchNorm, num_candidates: int) -> None:
        super().__init__()
        if not (layer.affine and layer.track_running_stats):
            raise ValueError("CandidateBatch: BatchNorm needs affine=True and "
                             "track_running_stats=True")
        k = num_candidates
        self.eps, self.momentum = layer.eps, layer.momentum
        self.weight = nn.Parameter(layer.weight.detach().expand(k, -1).clone())
        self.bias = nn.Parameter(layer.bias.detach().expand(k, -1).clone())
        self.register_buffer("running_mean", layer.running_mean.expand(k, -1).clone())
        self.register_buffer("running_var", layer.running_var.expand(k, -1).clone())
        self.register_buffer("num_batches_tracked", layer.num_batches_tracked.clone())

    def forward(self, x: Tensor) -> Tensor:
        k, n = x.shape[:2]
        features = x.transpose(0, 1).reshape(n, -1, *x.shape[3:])
        if self.training:
            self.num_batches_tracked.add_(1)
        momentum = self.momentum
        if momentum is None:
            momentum = 1.0 / float(self.num_batches_tracked)
        out = F.batch_norm(features, self.running_mean.view(-1), self.running_var.view(-1),
                           self.weight.reshape(-1), self.bias.reshape(-1), self.training,
                           momentum, self.eps)
        return out.reshape(n, k, *x.shape[2:]).transpose(0, 1)


class _PerExample(nn.Module):
    """Applies a per-example module (pooling, flatten) to x [K, N, ...]."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        out = self.module(x.flatten(0, 1))
        return out.unflatten(0, x.shape[:2])


@dataclass
class _Walk:
    """Where a conversion stands: the layer masks, the next one to use, the node mask on the
    current features (None: all nodes live), and whether weights are shared."""

    masks: list[Tensor]
    shared_weights: bool
    mask_index: int = 0
    in_nodes: Tensor | None = None


class _CandidateResidual(nn.Sequential):
    """x + f(x) on x [K, N, ...]; a Sequential like :class:`sparsenas.nn.Residual`, so the
    parameter names match the parent's."""

    def forward(self, x: Tensor) -> Tensor:
        return x + super().forward(x)


# Element-wise modules act on x [K, N, ...] exactly as on each candidate's x [N, ...].
_ELEMENTWISE = (nn.ReLU, nn.Identity, nn.Tanh, nn.GELU, nn.SiLU, nn.Sigmoid, nn.LeakyReLU,
                nn.ELU)
_PER_EXAMPLE = (nn.Flatten, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


class CandidateBatch(nn.Module):
    """K candidates of ``parent`` (a :class:`NodeMaskedNet`), each starting from the parent's
    current weights θ0, with candidate k's node masks ``[m[k] for m in node_masks]``.

    Shapes: ``node_masks`` one bool [K, n_l] per NodeMask layer; forward x [N, ...] (one batch
    shared by all candidates) -> logits [K, N, classes]. ``shared_weights``: the candidates share
    the parent's Linear / Conv2d weights and biases (one tensor each) instead of K copies.
    """

    def __init__(self, parent: NodeMaskedNet, node_masks: Sequence[Tensor],
                 shared_weights: bool = False) -> None:
        super().__init__()
        sizes = parent.layer_sizes
        if len(node_masks) != len(sizes):
            raise ValueError(f"CandidateBatch(): argument 'node_masks' must hold {len(sizes)} "
                             f"layer masks, got {len(node_masks)}")
        k = node_masks[0].shape[0] if node_masks else 1
        for layer, (mask, n) in enumerate(zip(node_masks, sizes)):
            if mask.dtype != torch.bool or tuple(mask.shape) != (k, n):
                raise ValueError(f"CandidateBatch(): argument 'node_masks'[{layer}] must be bool "
                                 f"[{k}, {n}], got {tuple(mask.shape)} {mask.dtype}")
        self.num_candidates = k
        self._parent_shapes = {k: v.shape for k, v in parent.state_dict().items()}
        device = next(parent.parameters()).device
        walk = _Walk([m.to(device) for m in node_masks], shared_weights)
        self.body = nn.Sequential(*self._convert(list(parent.body), walk)).to(device)

    def _convert(self, modules: list[nn.Module], walk: _Walk) -> list[nn.Module]:
        """The K-candidate form of ``modules`` in forward order."""
        k = self.num_candidates
        layers: list[nn.Module] = []
        for position, module in enumerate(modules):
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                out_nodes = self._next_node_mask(modules, position, walk)
                wrap = _CandidateLinear if isinstance(module, nn.Linear) else _CandidateConv2d
                layers.append(wrap(module, out_nodes, walk.in_nodes, k, walk.shared_weights))
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                layers.append(_CandidateBatchNorm(module, k))
            elif isinstance(module, NodeMask):
                node_mask = NodeMask(module.num_nodes, module.dim)
                node_mask.set_mask(walk.masks[walk.mask_index])
                layers.append(node_mask)
                walk.in_nodes = walk.masks[walk.mask_index]
                walk.mask_index += 1
            elif isinstance(module, Residual):
                skipped = walk.in_nodes
                layers.append(_CandidateResidual(*self._convert(list(module), walk)))
                # x + f(x): a node is live when it is live on either path.
                if skipped is None or walk.in_nodes is None:
                    walk.in_nodes = None
                else:
                    walk.in_nodes = skipped | walk.in_nodes
            elif isinstance(module, _ELEMENTWISE):
                layers.append(module)
            elif isinstance(module, _PER_EXAMPLE):
                layers.append(_PerExample(module))
            else:
                raise ValueError(f"CandidateBatch: unsupported layer {type(module).__name__}")
        return layers

    @staticmethod
    def _next_node_mask(modules: list[nn.Module], position: int, walk: _Walk) -> Tensor | None:
        """The node mask on a weighted layer's outputs: the next NodeMask of the same block
        (before any other weighted layer or residual block), else None (all outputs live)."""
        for module in modules[position + 1:]:
            if isinstance(module, NodeMask):
                return walk.masks[walk.mask_index]
            if isinstance(module, (nn.Linear, nn.Conv2d, Residual)):
                return None
        return None

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x.unsqueeze(0).expand(self.num_candidates, *x.shape).contiguous())

    def candidate_state_dict(self, index: int) -> dict[str, Tensor]:
        """Candidate ``index`` as a state dict of the parent (node masks included): loading it
        into the parent gives the single network this candidate is."""
        state: dict[str, Tensor] = {}
        for key, value in self.body.state_dict().items():
            if key.endswith(("weight_mask", "bias_mask")):
                continue
            parent_key = "body." + key.replace(".module.", ".")
            shared = value.shape == self._parent_shapes.get(parent_key)
            state[parent_key] = value if shared else value[index]
        missing = set(self._parent_shapes) - set(state)
        if missing:
            raise RuntimeError(f"candidate_state_dict(): no value for {sorted(missing)}")
        return {key: state[key].detach().clone() for key in self._parent_shapes}
