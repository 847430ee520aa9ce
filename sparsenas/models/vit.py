"""A small vision transformer, with its FLOPs and parameter count as functions of its widths.

Layout (pre-norm): a patch-embedding convolution (kernel = stride = patch size), a class token and
a learned position embedding, ``depth`` blocks of ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``,
a final LayerNorm and a linear head on the class token. Every block may have its own per-head qkv
width and MLP hidden width (a compressed ViT is still this class), while the number of heads and
the embedding width are shared by all blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsenas.models.registry import MODELS


@dataclass(frozen=True)
class ViTWidths:
    """Everything FLOPs and parameters depend on. The widths (``embed``, ``head_dims``,
    ``mlp_hidden``) may be floats or 0-dim tensors, e.g. expected widths of a search, in which
    case :func:`flops` and :func:`num_parameters` return differentiable tensors."""

    in_channels: int
    patch_size: int
    num_classes: int
    num_heads: int
    embed: int | float | Tensor
    head_dims: tuple
    mlp_hidden: tuple

    @property
    def depth(self) -> int:
        return len(self.head_dims)


def _num_tokens(widths: ViTWidths, image_size: Sequence[int]) -> tuple[int, int]:
    """(patches, tokens including the class token) for an image of ``image_size`` (H, W)."""
    height, width = (int(s) for s in image_size)
    if height % widths.patch_size or width % widths.patch_size:
        raise ValueError(f"patch_size {widths.patch_size} must divide the image size "
                         f"{height}x{width}")
    patches = (height // widths.patch_size) * (width // widths.patch_size)
    return patches, patches + 1


def _widths_of(model_or_widths: ViT | ViTWidths) -> ViTWidths:
    if isinstance(model_or_widths, ViTWidths):
        return model_or_widths
    if isinstance(model_or_widths, ViT):
        return model_or_widths.widths
    raise TypeError(f"expected a ViT or ViTWidths, got {type(model_or_widths).__name__}")


def flops(model_or_widths: ViT | ViTWidths, image_size: Sequence[int]):
    """Multiply-accumulates of one image's forward pass through the matrix products (patch
    embedding, qkv, attention scores, attention-weighted values, output projection, MLP, head);
    LayerNorm, softmax, GELU and additions are not counted."""
    w = _widths_of(model_or_widths)
    patches, tokens = _num_tokens(w, image_size)
    total = patches * w.embed * w.in_channels * w.patch_size ** 2
    for head_dim, hidden in zip(w.head_dims, w.mlp_hidden):
        qkv_width = w.num_heads * head_dim
        total = total + tokens * w.embed * 3 * qkv_width          # qkv projection
        total = total + 2 * tokens * tokens * qkv_width           # q k^T and attn @ v
        total = total + tokens * qkv_width * w.embed              # output projection
        total = total + 2 * tokens * w.embed * hidden             # fc1 and fc2
    return total + w.embed * w.num_classes


def num_parameters(model_or_widths: ViT | ViTWidths, image_size: Sequence[int]):
    """Trainable parameters of a ViT with these widths (equals ``sum(p.numel())`` of the model)."""
    w = _widths_of(model_or_widths)
    _, tokens = _num_tokens(w, image_size)
    d = w.embed
    total = d * w.in_channels * w.patch_size ** 2 + d      # patch embedding conv
    total = total + d + tokens * d                          # class token, position embedding
    for head_dim, hidden in zip(w.head_dims, w.mlp_hidden):
        qkv_width = w.num_heads * head_dim
        total = total + 4 * d                                # two LayerNorms
        total = total + d * 3 * qkv_width + 3 * qkv_width    # qkv
        total = total + qkv_width * d + d                    # output projection
        total = total + d * hidden + hidden + hidden * d + d  # fc1, fc2
    return total + 2 * d + d * w.num_classes + w.num_classes


class Attention(nn.Module):
    """Multi-head self-attention whose heads have ``head_dim`` qkv channels each."""

    def __init__(self, embed: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.qkv = nn.Linear(embed, 3 * num_heads * head_dim)
        self.proj = nn.Linear(num_heads * head_dim, embed)

    def forward(self, x: Tensor) -> Tensor:
        n, t, _ = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, t, self.num_heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, embed: int, num_heads: int, head_dim: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed)
        self.attn = Attention(embed, num_heads, head_dim)
        self.norm2 = nn.LayerNorm(embed)
        self.fc1 = nn.Linear(embed, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, embed)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def _per_block(value: int | Sequence[int], depth: int, name: str) -> tuple[int, ...]:
    values = (value,) * depth if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != depth or min(values) < 1:
        raise ValueError(f"ViT(): argument '{name}' must be a positive int or {depth} positive "
                         f"ints (one per block), got {value!r}")
    return values


class ViT(nn.Module):
    """A pre-norm vision transformer for images ``input_shape`` = (C, H, W).

    ``head_dim`` defaults to ``embed_dim // num_heads`` and ``mlp_hidden`` to
    ``round(mlp_ratio * embed_dim)``; both may be given per block (a sequence of ``depth`` ints).
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, patch_size: int = 2,
                 embed_dim: int = 64, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0,
                 head_dim: int | Sequence[int] | None = None,
                 mlp_hidden: int | Sequence[int] | None = None) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"ViT(): argument 'input_shape' must be (C, H, W), got "
                             f"{tuple(input_shape)}")
        for name, value in (("num_classes", num_classes), ("patch_size", patch_size),
                            ("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ViT(): argument '{name}' must be a positive int, got {value!r}")
        if mlp_ratio <= 0:
            raise ValueError(f"ViT(): argument 'mlp_ratio' must be positive, got {mlp_ratio}")
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(f"ViT(): embed_dim {embed_dim} is not divisible by num_heads "
                                 f"{num_heads}; pass head_dim")
            head_dim = embed_dim // num_heads
        head_dims = _per_block(head_dim, depth, "head_dim")
        hidden = _per_block(max(1, round(mlp_ratio * embed_dim)) if mlp_hidden is None
                            else mlp_hidden, depth, "mlp_hidden")
        self.image_size = (int(input_shape[1]), int(input_shape[2]))
        self.widths = ViTWidths(int(input_shape[0]), patch_size, num_classes, num_heads,
                                embed_dim, head_dims, hidden)
        _, tokens = _num_tokens(self.widths, self.image_size)
        self.patch_embed = nn.Conv2d(int(input_shape[0]), embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, d, m)
                                    for d, m in zip(head_dims, hidden))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    @classmethod
    def from_widths(cls, widths: ViTWidths, image_size: Sequence[int]) -> ViT:
        """A freshly initialised ViT with integer ``widths`` for images of ``image_size``."""
        return cls((widths.in_channels, *image_size), widths.num_classes,
                   patch_size=widths.patch_size, embed_dim=int(widths.embed), depth=widths.depth,
                   num_heads=widths.num_heads, head_dim=widths.head_dims,
                   mlp_hidden=widths.mlp_hidden)

    def residual_block_names(self) -> list[str]:
        """The blocks that depth pruning may drop (each maps x to x + f(x))."""
        return [f"blocks.{i}" for i in range(len(self.blocks))]

    def tokens(self, x: Tensor) -> Tensor:
        """Patch tokens [N, patches, embed] before the class token and position embedding."""
        return self.patch_embed(x).flatten(2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.tokens(x)
        h = torch.cat([self.cls_token.expand(len(x), -1, -1), patches], dim=1) + self.pos_embed
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)[:, 0])

    def flops(self) -> int:
        return flops(self, self.image_size)


MODELS.register("vit", ViT)
