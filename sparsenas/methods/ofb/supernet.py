"""The searched network: a :class:`sparsenas.models.ViT` whose widths are :class:`WidthUnit` s.

Where the bi-mask scales act (c_e: embedding, c_a: a block's attention, c_m: a block's MLP):
the residual stream is c_e ⊙ (tokens + position) and every branch output is multiplied by c_e
before it is added; every LayerNorm normalises over the reserved embedding channels only (mean
and variance weighted by the embedding unit's reserved-channel weights) and its output is
multiplied by c_e; c_a multiplies the queries and values of each head (so a score q·k is
linear in c_a, and a hard 0/1 mask is exactly a narrower head); c_m multiplies the MLP hidden
activations. Attention keeps the parent's softmax temperature 1/sqrt(head_dim) while heads
shrink. With hard masks this is exactly the narrower ViT that :func:`to_plain_vit` builds.

PMIM: masked patch tokens are replaced by a learned mask token (before the position embedding)
and a linear decoder maps each patch's output token back to its pixels.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from sparsenas.methods.ofb.units import WidthUnit
from sparsenas.models.vit import ViT, ViTWidths, flops
from sparsenas.sparse.shrink import slice_parameter_


def _masked_layer_norm(x: Tensor, norm: nn.LayerNorm, weights: Tensor) -> Tensor:
    """LayerNorm of ``x`` [..., D] whose mean and variance are weighted by ``weights`` [D]
    (0/1 weights: a LayerNorm over the weighted channels only)."""
    total = weights.sum()
    mean = (x * weights).sum(-1, keepdim=True) / total
    centred = x - mean
    var = (centred.square() * weights).sum(-1, keepdim=True) / total
    return centred * torch.rsqrt(var + norm.eps) * norm.weight + norm.bias


def _head_rows(index: Tensor, width: int) -> Tensor:
    """Flat channel indices h * width + index[h, j], head-major."""
    heads = torch.arange(index.shape[0], device=index.device)[:, None]
    return (heads * width + index).flatten()


class OFBSupernet(nn.Module):
    """A ViT with searchable widths. ``ratios`` gives the candidate keep ratios of each unit kind
    ("embed", "attn", "mlp"), validated increasing in (0, 1]. Importance scores start at
    ``score_init`` (σ(3) ≈ 0.95: early in warm-up, when w_p ≈ 1, the scales then stay near 1
    instead of halving every branch, which slowed training markedly on digits)."""

    def __init__(self, vit: ViT, ratios: dict[str, Sequence[float]],
                 score_init: float = 3.0) -> None:
        super().__init__()
        if not isinstance(vit, ViT):
            raise TypeError(f"OFBSupernet(): argument 'vit' must be a ViT, got "
                            f"{type(vit).__name__}")
        missing = {"embed", "attn", "mlp"} - set(ratios)
        if missing:
            raise ValueError(f"OFBSupernet(): argument 'ratios' must name the keep ratios of "
                             f"'embed', 'attn' and 'mlp', missing {sorted(missing)}")
        self.vit = vit
        w = vit.widths
        units = {"embed": WidthUnit(w.embed, ratios["embed"], score_init=score_init)}
        for i, (head_dim, hidden) in enumerate(zip(w.head_dims, w.mlp_hidden)):
            units[f"attn_{i}"] = WidthUnit(head_dim, ratios["attn"], groups=w.num_heads,
                                           score_init=score_init)
            units[f"mlp_{i}"] = WidthUnit(hidden, ratios["mlp"], score_init=score_init)
        self.units = nn.ModuleDict(units)
        self.attention_scales = [1.0 / math.sqrt(d) for d in w.head_dims]
        self.original_flops = float(flops(vit, vit.image_size))
        self.mask_token = nn.Parameter(torch.zeros(w.embed))
        self.decoder = nn.Linear(w.embed, w.in_channels * w.patch_size ** 2)
        # w_p of the bi-mask; set by the training objective as warm-up progresses.
        self.register_buffer("importance_weight", torch.tensor(1.0))

    # ----------------------------------------------------------------------------- parameters
    def arch_parameters(self) -> list[nn.Parameter]:
        return [unit.alpha for unit in self.units.values()]

    def score_parameters(self) -> list[nn.Parameter]:
        return [unit.scores for unit in self.units.values()]

    @property
    def all_frozen(self) -> bool:
        return all(unit.frozen for unit in self.units.values())

    # ----------------------------------------------------------------------------- widths
    def _widths(self, sizes: dict[str, object]) -> ViTWidths:
        depth = self.vit.widths.depth
        return replace(self.vit.widths, embed=sizes["embed"],
                       head_dims=tuple(sizes[f"attn_{i}"] for i in range(depth)),
                       mlp_hidden=tuple(sizes[f"mlp_{i}"] for i in range(depth)))

    def expected_flops(self) -> Tensor:
        """FLOPs of the expected widths Σ_j p_j k_j (differentiable in every α)."""
        sizes = {name: unit.expected_size() for name, unit in self.units.items()}
        return flops(self._widths(sizes), self.vit.image_size)

    def chosen_widths(self) -> ViTWidths:
        """Widths of the most probable candidate of every unit (the hard masks)."""
        return self._widths({name: unit.chosen_size() for name, unit in self.units.items()})

    def smallest_flops(self) -> float:
        """FLOPs with every unit at its smallest candidate."""
        return float(flops(self._widths({name: int(unit.sizes[0])
                                         for name, unit in self.units.items()}),
                           self.vit.image_size))

    # ----------------------------------------------------------------------------- forward
    def features(self, x: Tensor, patch_mask: Tensor | None = None,
                 hard: bool = False) -> Tensor:
        """Output tokens [N, 1 + patches, embed] after the final LayerNorm. ``patch_mask``
        [N, patches] bool, True where a patch is seen (others become the mask token)."""
        vit, w_p = self.vit, self.importance_weight
        embed_unit = self.units["embed"]
        c_e = embed_unit.scale(w_p, hard)[0]
        reserved = embed_unit.reserved(hard)[0]
        tokens = vit.tokens(x)
        if patch_mask is not None:
            tokens = torch.where(patch_mask[..., None], tokens, self.mask_token)
        h = torch.cat([vit.cls_token.expand(len(x), -1, -1), tokens], dim=1) + vit.pos_embed
        h = h * c_e
        heads = vit.widths.num_heads
        for i, block in enumerate(vit.blocks):
            c_a = self.units[f"attn_{i}"].scale(w_p, hard)[:, None, :]
            c_m = self.units[f"mlp_{i}"].scale(w_p, hard)[0]
            a = _masked_layer_norm(h, block.norm1, reserved) * c_e
            n, t, _ = a.shape
            q, k, v = block.attn.qkv(a).view(n, t, 3, heads, -1).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q * c_a, k, v * c_a,
                                                 scale=self.attention_scales[i])
            h = h + block.attn.proj(out.transpose(1, 2).reshape(n, t, -1)) * c_e
            hidden = F.gelu(block.fc1(_masked_layer_norm(h, block.norm2, reserved) * c_e)) * c_m
            h = h + block.fc2(hidden) * c_e
        return _masked_layer_norm(h, vit.norm, reserved) * c_e

    def classify(self, features: Tensor) -> Tensor:
        return self.vit.head(features[:, 0])

    def reconstruct(self, features: Tensor) -> Tensor:
        """Pixels [N, patches, C * p * p] predicted from the patch tokens."""
        return self.decoder(features[:, 1:])

    def forward(self, x: Tensor, hard: bool = False) -> Tensor:
        return self.classify(self.features(x, hard=hard))

    # ----------------------------------------------------------------------------- shrinking
    def eliminate(self, optimizers: Iterable[Optimizer] = ()) -> list[str]:
        """Drops improbable candidates of every unit and physically shrinks the units whose
        largest alive candidate is narrower than they are (weights and optimiser state).
        Returns the names of the units that changed."""
        optimizers = list(optimizers)
        changed = []
        for name, unit in self.units.items():
            dropped = unit.eliminate()
            if unit.largest_alive < unit.width:
                self.shrink_unit(name, unit.keep_index(unit.largest_alive), optimizers)
            if dropped:
                changed.append(name)
        return changed

    def shrink_unit(self, name: str, index: Tensor, optimizers: Sequence[Optimizer] = ()) -> None:
        """Keeps the channels ``index`` [groups, size] of unit ``name`` (in that order) in every
        parameter they live in and in the optimisers' state."""
        unit, vit = self.units[name], self.vit
        cut = functools.partial(slice_parameter_, optimizers=optimizers)
        flat = _head_rows(index, unit.width)
        if name == "embed":
            cut(vit.patch_embed.weight, 0, flat)
            cut(vit.patch_embed.bias, 0, flat)
            cut(vit.cls_token, 2, flat)
            cut(vit.pos_embed, 2, flat)
            for block in vit.blocks:
                for norm in (block.norm1, block.norm2):
                    cut(norm.weight, 0, flat)
                    cut(norm.bias, 0, flat)
                cut(block.attn.qkv.weight, 1, flat)
                cut(block.attn.proj.weight, 0, flat)
                cut(block.attn.proj.bias, 0, flat)
                cut(block.fc1.weight, 1, flat)
                cut(block.fc2.weight, 0, flat)
                cut(block.fc2.bias, 0, flat)
            cut(vit.norm.weight, 0, flat)
            cut(vit.norm.bias, 0, flat)
            cut(vit.head.weight, 1, flat)
            cut(self.mask_token, 0, flat)
            cut(self.decoder.weight, 1, flat)
        elif name.startswith("attn_"):
            attn = vit.blocks[int(name.split("_")[1])].attn
            qkv_width = attn.num_heads * unit.width
            rows = torch.cat([part * qkv_width + flat for part in range(3)])
            cut(attn.qkv.weight, 0, rows)
            cut(attn.qkv.bias, 0, rows)
            cut(attn.proj.weight, 1, flat)
        else:
            block = vit.blocks[int(name.split("_")[1])]
            cut(block.fc1.weight, 0, flat)
            cut(block.fc1.bias, 0, flat)
            cut(block.fc2.weight, 1, flat)
        cut(unit.scores, 0, flat)
        self._sync_shapes()

    def _sync_shapes(self) -> None:
        """Module attributes (in/out features, normalised shape, widths) from the parameters."""
        vit = self.vit
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.out_features, module.in_features = module.weight.shape
            elif isinstance(module, nn.LayerNorm):
                module.normalized_shape = tuple(module.weight.shape)
        vit.patch_embed.out_channels = vit.patch_embed.weight.shape[0]
        for name, unit in self.units.items():
            if name.startswith("attn_"):
                vit.blocks[int(name.split("_")[1])].attn.head_dim = unit.width
        vit.widths = self._widths({name: unit.width for name, unit in self.units.items()})

    def resize_like(self, state_dict: dict[str, Tensor]) -> None:
        """Shrinks every unit to the width its scores have in ``state_dict`` (keeping the first
        channels), so a checkpoint of a shrunk supernet loads into a freshly built one."""
        for name, unit in self.units.items():
            size = state_dict[f"units.{name}.scores"].shape[0] // unit.groups
            if size != unit.width:
                index = torch.arange(size, device=unit.scores.device).expand(unit.groups, size)
                self.shrink_unit(name, index)


def to_plain_vit(searched: OFBSupernet) -> ViT:
    """An ordinary ViT with the searched network's hard-mask widths whose outputs equal
    ``searched(x, hard=True)``: kept channels sliced in importance order, no masks, and each
    block's query weights rescaled so the plain attention's 1/sqrt(head_dim) temperature equals
    the parent's."""
    pruned = copy.deepcopy(searched)
    for name, unit in pruned.units.items():
        pruned.shrink_unit(name, unit.keep_index(unit.chosen_size()))
    widths = pruned.vit.widths
    plain = ViT.from_widths(widths, pruned.vit.image_size).to(searched.mask_token)
    state = pruned.vit.state_dict()
    for i, head_dim in enumerate(widths.head_dims):
        query_rows = widths.num_heads * head_dim
        factor = pruned.attention_scales[i] * math.sqrt(head_dim)
        for kind in ("weight", "bias"):
            key = f"blocks.{i}.attn.qkv.{kind}"
            state[key] = state[key].clone()
            state[key][:query_rows] *= factor
    plain.load_state_dict(state)
    return plain
