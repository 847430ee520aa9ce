"""Networks of the architecture space (:mod:`sparsenas.spaces.archs`): an :class:`Arch` names
one network (family, depth, width, kernel size, activation, residual blocks, node sparsity) and
:func:`build_arch` builds it as a :class:`NodeMaskedNet`.

Layout (a flat ``body``, the form :class:`CandidateBatch` converts):

- MLP: Flatten -> [Linear -> BatchNorm1d -> act -> NodeMask] x depth -> Linear head.
- CNN: [Conv -> BatchNorm2d -> act -> NodeMask (-> MaxPool)] x depth -> global average pool ->
  Linear head. On one-row inputs [C, 1, L] (MNIST-1D) the kernels are (1, k): 1-D convolutions
  along the signal, pooled by 2 while L >= 8; on images, k x k kernels pooled while the map is
  >= 4 wide.
- Residual: blocks 2 .. depth (whose input and output widths agree) are ``Residual`` blocks,
  x + block(x), with the pooling after the add.

Node sparsity: block l keeps its first ``round(keep[l] * width)`` nodes (at least one) through its
NodeMask. Which nodes are off does not matter at a random initialisation (the nodes of a layer are
exchangeable), how many does, so the prefix is the canonical mask. Architectures that differ only
in ``keep`` share a :meth:`Arch.shape` and train together as one :class:`CandidateBatch`
(:func:`arch_candidate_batch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from sparsenas.models.batched import CandidateBatch
from sparsenas.models.networks import NodeMaskedNet
from sparsenas.nn import NodeMask, Residual
from sparsenas.seeds import derive_seed

FAMILIES = ("mlp", "cnn")
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "linear": nn.Identity,
}


@dataclass(frozen=True)
class Arch:
    """One architecture. ``kernel`` is 0 for MLPs; ``keep`` holds one kept-node fraction per
    block (its length is the depth); ``residual`` needs depth >= 2."""

    family: str
    width: int
    kernel: int
    activation: str
    residual: bool
    keep: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"Arch: family must be one of {FAMILIES}, got {self.family!r}")
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"Arch: width must be a positive int, got {self.width!r}")
        if self.family == "mlp" and self.kernel != 0:
            raise ValueError(f"Arch: an MLP has kernel 0, got {self.kernel!r}")
        if self.family == "cnn" and (not isinstance(self.kernel, int) or self.kernel < 1
                                     or self.kernel % 2 == 0):
            raise ValueError(f"Arch: a CNN kernel must be a positive odd int, got {self.kernel!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Arch: activation must be one of {sorted(ACTIVATIONS)}, got "
                             f"{self.activation!r}")
        if not self.keep or not all(0.0 < f <= 1.0 for f in self.keep):
            raise ValueError(f"Arch: keep must hold one fraction in (0, 1] per block, got "
                             f"{self.keep!r}")
        if self.residual and len(self.keep) < 2:
            raise ValueError("Arch: residual blocks need depth >= 2")

    @property
    def depth(self) -> int:
        return len(self.keep)

    @property
    def kept_nodes(self) -> tuple[int, ...]:
        return tuple(max(1, round(f * self.width)) for f in self.keep)

    @property
    def node_sparsity(self) -> float:
        """The fraction of hidden nodes switched off."""
        return 1.0 - sum(self.kept_nodes) / (self.width * self.depth)

    def shape(self) -> Arch:
        """The architecture with every node kept: architectures of one shape differ only in their
        node masks and train together."""
        return replace(self, keep=(1.0,) * self.depth)

    def node_masks(self) -> list[Tensor]:
        """One bool [width] mask per block (the first kept_nodes[l] nodes on)."""
        return [torch.arange(self.width) < kept for kept in self.kept_nodes]


def _block(arch: Arch, layer: nn.Module, norm: nn.Module, dim: int, index: int) -> nn.Module:
    block = [layer, norm, ACTIVATIONS[arch.activation](), NodeMask(arch.width, dim=dim)]
    # Block 1 changes the width (input -> width); the later ones keep it and may skip.
    return Residual(*block) if arch.residual and index > 0 else nn.Sequential(*block)


def _layers(arch: Arch, input_shape: Sequence[int], num_classes: int) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    if arch.family == "mlp":
        width = int(torch.tensor(list(input_shape)).prod())
        for index in range(arch.depth):
            blocks.append(_block(arch, nn.Linear(width, arch.width), nn.BatchNorm1d(arch.width),
                                 -1, index))
            width = arch.width
        return [nn.Flatten()] + _flatten(blocks) + [nn.Linear(width, num_classes)]
    channels, height, length = int(input_shape[0]), int(input_shape[1]), int(input_shape[2])
    one_d = height == 1
    kernel = (1, arch.kernel) if one_d else (arch.kernel, arch.kernel)
    padding = (0, arch.kernel // 2) if one_d else (arch.kernel // 2, arch.kernel // 2)
    size = length if one_d else min(height, length)
    layers: list[nn.Module] = []
    for index in range(arch.depth):
        conv = nn.Conv2d(channels, arch.width, kernel, padding=padding)
        layers += _flatten([_block(arch, conv, nn.BatchNorm2d(arch.width), 1, index)])
        if size >= (8 if one_d else 4):
            layers.append(nn.MaxPool2d((1, 2) if one_d else 2))
            size //= 2
        channels = arch.width
    return layers + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]


def _flatten(blocks: list[nn.Module]) -> list[nn.Module]:
    """Plain blocks spliced into the flat body; residual blocks stay one module."""
    flat: list[nn.Module] = []
    for block in blocks:
        flat += [block] if isinstance(block, Residual) else list(block)
    return flat


def encode_arch(arch: Arch) -> str:
    """``family:w<width>:k<kernel>:<activation>:<res|plain>:keep=<f1>/<f2>/...``."""
    keep = "/".join(f"{f:g}" for f in arch.keep)
    return (f"{arch.family}:w{arch.width}:k{arch.kernel}:{arch.activation}:"
            f"{'res' if arch.residual else 'plain'}:keep={keep}")


def decode_arch(text: str) -> Arch:
    """The Arch :func:`encode_arch` wrote; a ValueError naming the text otherwise."""
    try:
        family, width, kernel, activation, skip, keep = text.split(":")
        if not (width[0] == "w" and kernel[0] == "k" and keep.startswith("keep=")
                and skip in ("res", "plain")):
            raise ValueError
        arch = Arch(family, int(width[1:]), int(kernel[1:]), activation, skip == "res",
                    tuple(float(f) for f in keep[5:].split("/")))
    except (ValueError, IndexError, AttributeError):
        raise ValueError(f"not an architecture encoding: {text!r} (expected e.g. "
                         f"'cnn:w16:k5:relu:res:keep=1/0.5')") from None
    return arch


def _as_arch(arch: Arch | str) -> Arch:
    if isinstance(arch, Arch):
        return arch
    if isinstance(arch, str):
        return decode_arch(arch)
    raise TypeError(f"argument 'arch' must be an Arch or its encoding (str), got "
                    f"{type(arch).__name__}")


def build_arch(arch: Arch | str, input_shape: Sequence[int], num_classes: int,
               seed: int = 0) -> NodeMaskedNet:
    """The network ``arch`` names (an :class:`Arch` or its encoding) for inputs [C, H, W], its
    weights initialised from ``seed`` (the global generator is left as it was) and its node
    masks set."""
    arch = _as_arch(arch)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"build_arch(): argument 'input_shape' must be [C, H, W], got "
                         f"{tuple(input_shape)}")
    if num_classes < 2:
        raise ValueError(f"build_arch(): argument 'num_classes' must be >= 2, got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("arch-init", seed))
        model = NodeMaskedNet(nn.Sequential(*_layers(arch, input_shape, num_classes)))
    model.set_candidate(arch.node_masks())
    return model


def group_by_shape(archs: Sequence[Arch]) -> list[list[int]]:
    """Indices of ``archs`` grouped by shape (first appearance order): each group trains as one
    :class:`CandidateBatch`."""
    groups: dict[Arch, list[int]] = {}
    for index, arch in enumerate(archs):
        groups.setdefault(arch.shape(), []).append(index)
    return list(groups.values())


def arch_candidate_batch(archs: Sequence[Arch], input_shape: Sequence[int], num_classes: int,
                         seed: int = 0) -> CandidateBatch:
    """The architectures of one shape as a CandidateBatch: candidate k is ``build_arch(archs[k],
    input_shape, num_classes, seed)`` (the same initial weights, its own node masks)."""
    if not archs:
        raise ValueError("arch_candidate_batch(): argument 'archs' is empty")
    shapes = {arch.shape() for arch in archs}
    if len(shapes) != 1:
        raise ValueError(f"arch_candidate_batch(): argument 'archs' must share one shape (they "
                         f"may differ in keep only), got {len(shapes)} shapes")
    parent = build_arch(archs[0].shape(), input_shape, num_classes, seed)
    masks = [torch.stack(layer) for layer in zip(*(arch.node_masks() for arch in archs))]
    return CandidateBatch(parent, masks)
