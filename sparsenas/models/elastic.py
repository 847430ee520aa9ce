"""An elastic CNN supernet (ResNet-style stages of basic blocks) whose children share one set of
weights, as BigNAS and once-for-all train them.

A child (:class:`ChildConfig`) chooses per stage a depth (the stage's first ``d`` blocks), a width
(the first ``w`` channels of every convolution, BatchNorm and classifier column of the stage) and a
kernel size (the centre ``k x k`` of the largest kernel), plus the input resolution (the input is
resized to ``r x r``). Two ways to run children:

* :meth:`ElasticNet.run_child` runs one child on sliced weights (prefix channels, kernel centre);
* :meth:`ElasticNet.run_children` runs K children that differ only in their widths together, as K
  candidates of the K-candidate masked ops on the shared full-size weight (prefix node masks
  expanded to weight masks), one call per layer.

Both compute the same outputs and gradients. :meth:`ElasticNet.export` turns a child into a plain
compact network of ordinary layers (only its channels, kernel centres and blocks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsenas.models.batched import weight_masks
from sparsenas.models.registry import MODELS
from sparsenas.ops import masked_conv2d, masked_linear

STEM_KERNEL = 3


@dataclass(frozen=True)
class ChildConfig:
    """One child of an :class:`ElasticNet`: input resolution and, per stage, depth (blocks kept),
    width (channels kept) and kernel size."""

    resolution: int
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    kernels: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("depths", "widths", "kernels"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, int) for v in value):
                raise TypeError(f"ChildConfig: argument '{name}' must be a tuple of ints, got "
                                f"{value!r}")
        if not isinstance(self.resolution, int):
            raise TypeError(f"ChildConfig: argument 'resolution' must be an int, got "
                            f"{self.resolution!r}")
        if not len(self.depths) == len(self.widths) == len(self.kernels):
            raise ValueError(f"ChildConfig: 'depths', 'widths' and 'kernels' must have one entry "
                             f"per stage, got lengths {len(self.depths)}, {len(self.widths)}, "
                             f"{len(self.kernels)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ChildConfig:
        return cls(resolution=int(data["resolution"]),
                   depths=tuple(int(v) for v in data["depths"]),
                   widths=tuple(int(v) for v in data["widths"]),
                   kernels=tuple(int(v) for v in data["kernels"]))

    @property
    def shape_key(self) -> tuple:
        """Children with equal keys differ only in widths, so they can run together."""
        return (self.resolution, self.depths, self.kernels)


class _ElasticBlock(nn.Module):
    """Basic residual block at full size: conv k x k (stride) -> BN -> ReLU -> conv k x k -> BN,
    plus a 1 x 1 projection shortcut in a stage's first block; the last BN's γ starts at zero so
    every block starts as (almost) its shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel: int,
                 projection: bool) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel, 1, kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        nn.init.zeros_(self.bn2.weight)
        self.shortcut_conv = (nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
                              if projection else None)
        self.shortcut_bn = nn.BatchNorm2d(out_channels) if projection else None


def _kernel_centre(weight: Tensor, kernel: int) -> Tensor:
    start = (weight.shape[-1] - kernel) // 2
    return weight[..., start:start + kernel, start:start + kernel]


def _conv_output_size(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def _resize(x: Tensor, resolution: int) -> Tensor:
    if x.shape[-2:] == (resolution, resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


def _dropout(x: Tensor, rate: float, generator: torch.Generator | None) -> Tensor:
    if rate == 0.0:
        return x
    if generator is None:
        raise ValueError("ElasticNet.run_child(): dropout in train mode needs a seeded "
                         "'generator'")
    keep = torch.rand(x.shape, generator=generator, device=generator.device) >= rate
    return x * keep.to(x.device, x.dtype) / (1.0 - rate)


def _batch_norm(bn: nn.BatchNorm2d, x: Tensor, update_stats: bool) -> Tensor:
    """``bn`` restricted to the first ``x.shape[1]`` channels. In train mode with
    ``update_stats`` the running statistics of those channels are updated as nn.BatchNorm2d
    would (momentum None = cumulative average); without, batch statistics are used and the
    running ones left alone."""
    channels = x.shape[1]
    weight, bias = bn.weight[:channels], bn.bias[:channels]
    mean, var = bn.running_mean[:channels], bn.running_var[:channels]
    if not bn.training:
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, bn.eps)
    if not update_stats:
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, bn.eps)
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return F.batch_norm(x, mean, var, weight, bias, True, momentum, bn.eps)


def _candidate_batch_norm(bn: nn.BatchNorm2d, x: Tensor, channel_mask: Tensor) -> Tensor:
    """``bn`` on K candidates x [K, N, C, H, W], each normalised with its own batch statistics
    (train mode, running statistics untouched) or the running ones (eval mode); channels a
    candidate does not have are set to zero."""
    k, n, channels = x.shape[:3]
    features = x.transpose(0, 1).reshape(n, -1, *x.shape[3:])
    mean = None if bn.training else bn.running_mean[:channels].repeat(k)
    var = None if bn.training else bn.running_var[:channels].repeat(k)
    out = F.batch_norm(features, mean, var, bn.weight[:channels].repeat(k),
                       bn.bias[:channels].repeat(k), bn.training, 0.0, bn.eps)
    out = out.reshape(n, k, *x.shape[2:]).transpose(0, 1)
    return out * channel_mask.to(out.dtype)[:, None, :, None, None]


class ElasticNet(nn.Module):
    """The supernet. ``stage_channels`` / ``stage_depths`` / ``stage_strides`` give each stage's
    largest width, largest depth and the stride of its first block; ``kernel_sizes`` the odd
    kernel sizes a stage may use (the largest is stored, smaller ones are its centre).

    Shapes: x [N, C, H, W] with C = ``input_shape[0]`` -> logits [N, num_classes]; the input is
    resized to the active child's resolution.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, stem_channels: int = 16,
                 stage_channels: Sequence[int] = (16, 32, 64),
                 stage_depths: Sequence[int] = (2, 2, 2),
                 stage_strides: Sequence[int] = (1, 2, 2),
                 kernel_sizes: Sequence[int] = (3, 5)) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"ElasticNet(): argument 'input_shape' must be (C, H, W), got "
                             f"{tuple(input_shape)}")
        if not len(stage_channels) == len(stage_depths) == len(stage_strides) >= 1:
            raise ValueError("ElasticNet(): arguments 'stage_channels', 'stage_depths' and "
                             "'stage_strides' must have the same length >= 1")
        if any(v < 1 for v in (*stage_channels, *stage_depths, *stage_strides, stem_channels,
                               num_classes)):
            raise ValueError("ElasticNet(): channel counts, depths, strides and num_classes must "
                             "be >= 1")
        kernels = tuple(sorted(set(int(k) for k in kernel_sizes)))
        if not kernels or any(k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"ElasticNet(): argument 'kernel_sizes' must hold odd sizes >= 1, "
                             f"got {tuple(kernel_sizes)}")
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = num_classes
        self.stage_channels = tuple(stage_channels)
        self.stage_depths = tuple(stage_depths)
        self.stage_strides = tuple(stage_strides)
        self.kernel_sizes = kernels
        in_channels = self.input_shape[0]
        self.stem_conv = nn.Conv2d(in_channels, stem_channels, STEM_KERNEL, 1, STEM_KERNEL // 2,
                                   bias=False)
        self.stem_bn = nn.BatchNorm2d(stem_channels)
        self.stages = nn.ModuleList()
        in_channels = stem_channels
        for channels, depth, stride in zip(stage_channels, stage_depths, stage_strides):
            blocks = [_ElasticBlock(in_channels if i == 0 else channels, channels,
                                    stride if i == 0 else 1, kernels[-1], projection=i == 0)
                      for i in range(depth)]
            self.stages.append(nn.ModuleList(blocks))
            in_channels = channels
        self.classifier = nn.Linear(in_channels, num_classes)
        self.child = self.max_config()

    @property
    def architecture(self) -> dict:
        """The constructor arguments as plain data: ``ElasticNet(**net.architecture)`` builds a
        supernet of the same shape, and checkpoints carry it to be checked on loading."""
        return {"input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "stem_channels": self.stem_conv.out_channels,
                "stage_channels": list(self.stage_channels),
                "stage_depths": list(self.stage_depths),
                "stage_strides": list(self.stage_strides),
                "kernel_sizes": list(self.kernel_sizes)}

    def check_architecture(self, architecture: dict) -> None:
        """A ValueError naming the differences when ``architecture`` (e.g. from a checkpoint)
        describes another supernet than this one."""
        own = self.architecture
        differences = [f"{key} {architecture.get(key)!r} (this supernet: {own[key]!r})"
                       for key in own if architecture.get(key) != own[key]]
        if differences:
            raise ValueError("checkpoint of another supernet: " + "; ".join(differences))

    @property
    def min_resolution(self) -> int:
        """The smallest input resolution the stem takes: one pixel per stride step."""
        return math.prod(self.stage_strides)

    def max_config(self) -> ChildConfig:
        """The child that uses every block, channel and the largest kernel at the input size."""
        return ChildConfig(max(self.input_shape[1:]), self.stage_depths, self.stage_channels,
                           (self.kernel_sizes[-1],) * len(self.stage_depths))

    def check_config(self, config: ChildConfig) -> None:
        """A ValueError naming what of ``config`` this supernet cannot run."""
        if not isinstance(config, ChildConfig):
            raise TypeError(f"argument 'config' must be a ChildConfig, got "
                            f"{type(config).__name__}")
        stages = len(self.stage_depths)
        if len(config.depths) != stages:
            raise ValueError(f"child config: expected {stages} stages, got {len(config.depths)}")
        if config.resolution < self.min_resolution:
            raise ValueError(f"child config: resolution {config.resolution} is too small for the "
                             f"stem; the strides need at least {self.min_resolution}")
        for s in range(stages):
            if not 1 <= config.depths[s] <= self.stage_depths[s]:
                raise ValueError(f"child config: depth of stage {s} must be in "
                                 f"[1, {self.stage_depths[s]}], got {config.depths[s]}")
            if not 1 <= config.widths[s] <= self.stage_channels[s]:
                raise ValueError(f"child config: width of stage {s} must be in "
                                 f"[1, {self.stage_channels[s]}], got {config.widths[s]}")
            if config.kernels[s] not in self.kernel_sizes:
                raise ValueError(f"child config: kernel of stage {s} must be one of "
                                 f"{self.kernel_sizes}, got {config.kernels[s]}")

    def set_child(self, config: ChildConfig) -> None:
        """Makes ``config`` the child that :meth:`forward` runs."""
        self.check_config(config)
        self.child = config

    def forward(self, x: Tensor) -> Tensor:
        return self.run_child(x, self.child)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.input_shape[0]:
            raise ValueError(f"ElasticNet: argument 'x' must be [N, {self.input_shape[0]}, H, W], "
                             f"got {tuple(x.shape)}")

    # ----------------------------------------------------------------- one child, sliced weights
    def run_child(self, x: Tensor, config: ChildConfig, *, dropout: float = 0.0,
                  generator: torch.Generator | None = None,
                  update_bn_stats: bool = True) -> Tensor:
        """Logits [N, classes] of child ``config`` on sliced weights. In train mode, ``dropout``
        before the classifier draws its mask from ``generator`` (required then), and
        ``update_bn_stats=False`` leaves the running BatchNorm statistics unchanged."""
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"run_child(): argument 'dropout' must be in [0, 1), got {dropout}")
        self.check_config(config)
        self._check_input(x)
        h = _resize(x, config.resolution)
        h = F.relu(_batch_norm(self.stem_bn, self.stem_conv(h), update_bn_stats))
        for blocks, depth, width, kernel in zip(self.stages, config.depths, config.widths,
                                                config.kernels):
            for block in blocks[:depth]:
                h = self._block(block, h, width, kernel, update_bn_stats)
        h = _dropout(h.mean((2, 3)), dropout if self.training else 0.0, generator)
        return F.linear(h, self.classifier.weight[:, :h.shape[1]], self.classifier.bias)

    @staticmethod
    def _block(block: _ElasticBlock, x: Tensor, width: int, kernel: int,
               update_stats: bool) -> Tensor:
        in_channels = x.shape[1]
        w1 = _kernel_centre(block.conv1.weight[:width, :in_channels], kernel)
        w2 = _kernel_centre(block.conv2.weight[:width, :width], kernel)
        out = F.conv2d(x, w1, None, block.stride, kernel // 2)
        out = F.relu(_batch_norm(block.bn1, out, update_stats))
        out = _batch_norm(block.bn2, F.conv2d(out, w2, None, 1, kernel // 2), update_stats)
        if block.shortcut_conv is None:
            shortcut = x
        else:
            shortcut = F.conv2d(x, block.shortcut_conv.weight[:width, :in_channels], None,
                                block.stride)
            shortcut = _batch_norm(block.shortcut_bn, shortcut, update_stats)
        return F.relu(out + shortcut)

    # ------------------------------------------------------- K width variants, K-candidate ops
    def run_children(self, x: Tensor, configs: Sequence[ChildConfig]) -> Tensor:
        """Logits [K, N, classes] of K children that differ only in their widths, computed
        together on weights sliced to the widest of them, with prefix channel masks for the
        narrower ones. In train mode each child uses its own batch statistics and the running
        statistics are left unchanged."""
        if not configs:
            raise ValueError("run_children(): argument 'configs' must hold at least one child")
        for config in configs:
            self.check_config(config)
            if config.shape_key != configs[0].shape_key:
                raise ValueError("run_children(): argument 'configs' must share resolution, "
                                 f"depths and kernels; got {configs[0]} and {config}")
        self._check_input(x)
        k, device = len(configs), x.device
        h = _resize(x, configs[0].resolution)
        h = F.relu(_batch_norm(self.stem_bn, self.stem_conv(h), update_stats=False))
        h = h.unsqueeze(0).expand(k, *h.shape).contiguous()
        in_mask = torch.ones(k, h.shape[2], dtype=torch.bool, device=device)
        first = configs[0]
        for s, (blocks, depth, kernel) in enumerate(zip(self.stages, first.depths, first.kernels)):
            widths = torch.tensor([c.widths[s] for c in configs], device=device)
            channels = torch.arange(int(widths.max()), device=device)
            out_mask = channels[None, :] < widths[:, None]
            for i, block in enumerate(blocks[:depth]):
                h = self._candidate_block(block, h, in_mask if i == 0 else out_mask, out_mask,
                                          kernel)
            in_mask = out_mask
        pooled = h.mean((3, 4))
        weight = self.classifier.weight[:, :in_mask.shape[1]]
        mask = weight_masks(None, in_mask, weight.shape, k).to(device)
        return masked_linear(pooled, weight, mask, self.classifier.bias)

    @staticmethod
    def _candidate_conv(conv: nn.Conv2d, x: Tensor, in_mask: Tensor, out_mask: Tensor,
                        kernel: int) -> Tensor:
        weight = conv.weight[:out_mask.shape[1], :in_mask.shape[1]]
        weight = _kernel_centre(weight, kernel).contiguous()
        mask = weight_masks(out_mask, in_mask, weight.shape, len(x)).to(x.device)
        return masked_conv2d(x, weight, mask, None, conv.stride, kernel // 2)

    def _candidate_block(self, block: _ElasticBlock, x: Tensor, in_mask: Tensor,
                         out_mask: Tensor, kernel: int) -> Tensor:
        out = self._candidate_conv(block.conv1, x, in_mask, out_mask, kernel)
        out = F.relu(_candidate_batch_norm(block.bn1, out, out_mask))
        out = self._candidate_conv(block.conv2, out, out_mask, out_mask, kernel)
        out = _candidate_batch_norm(block.bn2, out, out_mask)
        if block.shortcut_conv is None:
            shortcut = x
        else:
            shortcut = self._candidate_conv(block.shortcut_conv, x, in_mask, out_mask, 1)
            shortcut = _candidate_batch_norm(block.shortcut_bn, shortcut, out_mask)
        return F.relu(out + shortcut)

    # ------------------------------------------------------------------------- child facts
    def child_weights(self, config: ChildConfig) -> list[Tensor]:
        """The convolution and classifier weights ``config`` uses (slices of the parameters,
        kernel centres), e.g. for a weight-decay term on one child."""
        self.check_config(config)
        weights = [self.stem_conv.weight]
        in_channels = self.stem_conv.out_channels
        for blocks, depth, width, kernel in zip(self.stages, config.depths, config.widths,
                                                config.kernels):
            for block in blocks[:depth]:
                weights.append(_kernel_centre(block.conv1.weight[:width, :in_channels], kernel))
                weights.append(_kernel_centre(block.conv2.weight[:width, :width], kernel))
                if block.shortcut_conv is not None:
                    weights.append(block.shortcut_conv.weight[:width, :in_channels])
                in_channels = width
        weights.append(self.classifier.weight[:, :in_channels])
        return weights

    def flops(self, config: ChildConfig) -> int:
        """Multiply-accumulates of one example through child ``config``'s convolutions and
        classifier (BatchNorm, activations and the input resize not counted)."""
        self.check_config(config)
        size = config.resolution
        in_channels = self.stem_conv.out_channels
        total = size * size * self.input_shape[0] * in_channels * STEM_KERNEL ** 2
        for s, (depth, width, kernel) in enumerate(zip(config.depths, config.widths,
                                                       config.kernels)):
            for i in range(depth):
                if i == 0:
                    size = _conv_output_size(size, kernel, self.stage_strides[s])
                    total += size * size * in_channels * width  # projection shortcut
                total += size * size * width * kernel ** 2 * (in_channels + width)
                in_channels = width
        return total + in_channels * self.num_classes

    def num_parameters(self, config: ChildConfig) -> int:
        """Parameters of child ``config`` as a compact network (what :meth:`export` holds)."""
        convs = sum(w.numel() for w in self.child_weights(config))
        stem = self.stem_conv.out_channels
        batch_norms = stem + sum(width * (2 * depth + 1)
                                 for depth, width in zip(config.depths, config.widths))
        return convs + 2 * batch_norms + self.num_classes

    # ------------------------------------------------------------------------------ export
    def export(self, config: ChildConfig, dropout: float = 0.0) -> ElasticChild:
        """Child ``config`` as a plain network of ordinary layers holding copies of only its
        channels, kernel centres and blocks (running BatchNorm statistics included), which
        computes what :meth:`run_child` computes in eval mode; ``dropout`` before its classifier
        (for training it alone)."""
        self.check_config(config)
        stem = nn.Sequential(_copy_conv(self.stem_conv.weight, 1, STEM_KERNEL // 2),
                             _copy_batch_norm(self.stem_bn, self.stem_conv.out_channels),
                             nn.ReLU())
        blocks: list[nn.Module] = []
        in_channels = self.stem_conv.out_channels
        for stage, depth, width, kernel in zip(self.stages, config.depths, config.widths,
                                               config.kernels):
            for block in stage[:depth]:
                blocks.append(_PlainBlock(block, in_channels, width, kernel))
                in_channels = width
        classifier = nn.Linear(in_channels, self.num_classes)
        with torch.no_grad():
            classifier.weight.copy_(self.classifier.weight[:, :in_channels])
            classifier.bias.copy_(self.classifier.bias)
        device = self.classifier.weight.device
        return ElasticChild(config.resolution, stem, nn.Sequential(*blocks), classifier,
                            dropout).to(device)


def _copy_conv(weight: Tensor, stride: int, padding: int) -> nn.Conv2d:
    out_channels, in_channels, kernel = weight.shape[0], weight.shape[1], weight.shape[-1]
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return conv


def _copy_batch_norm(bn: nn.BatchNorm2d, channels: int) -> nn.BatchNorm2d:
    copy = nn.BatchNorm2d(channels, eps=bn.eps, momentum=bn.momentum)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(copy, name).copy_(getattr(bn, name)[:channels])
        copy.num_batches_tracked.copy_(bn.num_batches_tracked)
    return copy


class _PlainBlock(nn.Module):
    def __init__(self, block: _ElasticBlock, in_channels: int, width: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = _copy_conv(_kernel_centre(block.conv1.weight[:width, :in_channels], kernel),
                                block.stride, kernel // 2)
        self.bn1 = _copy_batch_norm(block.bn1, width)
        self.conv2 = _copy_conv(_kernel_centre(block.conv2.weight[:width, :width], kernel), 1,
                                kernel // 2)
        self.bn2 = _copy_batch_norm(block.bn2, width)
        if block.shortcut_conv is None:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                _copy_conv(block.shortcut_conv.weight[:width, :in_channels], block.stride, 0),
                _copy_batch_norm(block.shortcut_bn, width))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ElasticChild(nn.Module):
    """An exported child: resize to ``resolution`` -> stem -> blocks -> average pool -> dropout
    -> classifier, all ordinary layers."""

    def __init__(self, resolution: int, stem: nn.Sequential, blocks: nn.Sequential,
                 classifier: nn.Linear, dropout: float = 0.0) -> None:
        super().__init__()
        self.resolution = resolution
        self.stem, self.blocks, self.classifier = stem, blocks, classifier
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.stem(_resize(x, self.resolution)))
        return self.classifier(self.dropout(h.mean((2, 3))))


MODELS.register("elastic", ElasticNet)
