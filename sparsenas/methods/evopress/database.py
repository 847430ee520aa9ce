"""The level database: every compressible layer's compressed weights at every level, built once
from calibration data and stored in one safetensors file.

Sparsity mode stores, per layer and level, the mask of exactly ``space.kept(layer, level)`` kept
weights, bit-packed with :func:`sparsenas.ops.pack_mask` (rows = output units, a conv weight
flattened per output channel); SparseGPT also changes the kept weights, so it stores them too.
Bit-width mode stores group-wise round-to-nearest codes (uint8) with per-group scale and zero.

The pruners see a layer's weight as ``[out, in]`` (conv: ``[out, C/groups · kh · kw]``) and its
inputs as the rows of ``X`` (conv: the unfolded patches), all taken from the *dense* model, so
every layer's levels are built independently of the others' (what lets the search combine them).
- magnitude: the ``kept`` largest |W| of the layer;
- Wanda: score |W_ij| · ‖X_j‖, pruned row by row (each row keeps ``kept // out`` weights, the
  ``kept % out`` left over go to the rows with the best next score);
- SparseGPT: the blocked OBS algorithm on H = XᵀX/rows + λI (λ = ``damp`` · mean diag), the mask of
  each column block chosen by W²/[H⁻¹]²_jj before the block's updates, with the prune count
  split over the blocks in proportion to their width so the layer keeps exactly ``kept`` weights.
  Inputs that are always zero (diag H = 0) get a unit diagonal and keep their weights: those
  weights do not change the output on the calibration data.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from sparsenas.ops import pack_mask, unpack_mask
from sparsenas.spaces.levels import BitWidthSpace, LevelSpace, SparsityLevelSpace
from sparsenas.store import save_checkpoint

PRUNERS = ("magnitude", "wanda", "sparsegpt")
FORMAT = "sparsenas-evopress-database/1"


def model_fingerprint(model: nn.Module) -> str:
    """The names and shapes of the model's parameters and buffers."""
    return ";".join(f"{name}:{'x'.join(map(str, t.shape))}"
                    for name, t in model.state_dict().items())


def model_hash(model: nn.Module) -> str:
    """A hash of the model's parameter and buffer values (bit-exact)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()


def weight_matrix(layer: nn.Module) -> Tensor:
    """The layer's weight as [out, in] (a conv weight flattened per output channel)."""
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


def layer_input_rows(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's input as rows of its weight matrix's input dimension."""
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or isinstance(layer.padding, str):
            raise ValueError("level database: Conv2d layers need groups=1 and numeric padding")
        patches = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def input_hessians(model: nn.Module, layers: dict[str, nn.Module],
                   batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """H = XᵀX / rows (float64) per layer, from the dense model's inputs on ``batches``."""
    sums = {name: None for name in layers}
    rows = dict.fromkeys(layers, 0)

    def hook(name):
        def record(module, inputs, output):
            x = layer_input_rows(module, inputs[0].detach()).double()
            sums[name] = x.T @ x if sums[name] is None else sums[name] + x.T @ x
            rows[name] += x.shape[0]
        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        was_training = model.training
        model.eval()
        for batch in batches:
            model(batch)
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    if any(count == 0 for count in rows.values()):
        raise ValueError("level database: argument 'calibration' gave no input to some layers")
    return {name: sums[name] / rows[name] for name in layers}


def magnitude_mask(weight: Tensor, kept: int) -> Tensor:
    """bool [out, in]: the ``kept`` largest |W| (ties: the earlier index)."""
    order = torch.sort(weight.abs().flatten(), descending=True, stable=True).indices
    mask = torch.zeros(weight.numel(), dtype=torch.bool)
    mask[order[:kept]] = True
    return mask.view(weight.shape)


def wanda_mask(weight: Tensor, kept: int, input_norms: Tensor) -> Tensor:
    """bool [out, in]: row-wise largest |W_ij| · ‖X_j‖, ``kept`` in all."""
    rows, cols = weight.shape
    score = weight.abs().double() * input_norms.double()[None, :]
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    per_row, extra = divmod(kept, rows)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask.scatter_(1, order[:, :per_row], True)
    if extra:
        next_scores = score.gather(1, order[:, per_row:per_row + 1]).squeeze(1)
        chosen = torch.sort(next_scores, descending=True, stable=True).indices[:extra]
        mask[chosen, order[chosen, per_row]] = True
    return mask


def sparsegpt_prune(weight: Tensor, kept: int, hessian: Tensor, block_size: int = 128,
                    damp: float = 0.01) -> tuple[Tensor, Tensor]:
    """(pruned and updated weight [out, in], bool mask [out, in]) keeping exactly ``kept``."""
    rows, cols = weight.shape
    w = weight.double().clone()
    h = hessian.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.diagonal(h).mean() * torch.eye(cols, dtype=h.dtype)
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    pruned_total = weight.numel() - kept
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = w[:, start:end].clone()
        block_inv = h_inv[start:end, start:end]
        errors = torch.zeros_like(block)
        count = round(pruned_total * end / cols) - round(pruned_total * start / cols)
        score = block ** 2 / torch.diagonal(block_inv)[None, :] ** 2
        order = torch.sort(score.flatten(), stable=True).indices[:count]
        block_pruned = torch.zeros(block.numel(), dtype=torch.bool)
        block_pruned[order] = True
        block_pruned = block_pruned.view(block.shape)
        for i in range(end - start):
            column = block[:, i]
            quantised = torch.where(block_pruned[:, i], 0.0, column)
            error = (column - quantised) / block_inv[i, i]
            block[:, i:] -= error[:, None] * block_inv[i, i:][None, :]
            block[:, i] = quantised
            errors[:, i] = error
        w[:, start:end] = block
        w[:, end:] -= errors @ h_inv[start:end, end:]
        pruned[:, start:end] = block_pruned
    mask = ~pruned
    return (w * mask).to(weight.dtype), mask


def quantise_rtn(weight: Tensor, bits: int, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric round-to-nearest per group of ``group_size`` input columns:
    (codes uint8 [out, in], scale [out, groups], zero [out, groups])."""
    rows, cols = weight.shape
    groups = -(-cols // group_size)
    padded = F.pad(weight.float(), (0, groups * group_size - cols))
    grouped = padded.view(rows, groups, group_size)
    # Padding columns are zeros, so the range of a short last group includes 0 (harmless: RTN
    # ranges usually include 0 anyway).
    low = grouped.amin(-1).clamp(max=0.0)
    high = grouped.amax(-1).clamp(min=0.0)
    levels = 2 ** bits - 1
    scale = ((high - low) / levels).clamp(min=1e-12)
    zero = torch.round(-low / scale)
    codes = torch.clamp(torch.round(grouped / scale[..., None]) + zero[..., None], 0, levels)
    return codes.flatten(1)[:, :cols].to(torch.uint8), scale, zero


def dequantise(codes: Tensor, scale: Tensor, zero: Tensor, group_size: int) -> Tensor:
    group_of_column = torch.arange(codes.shape[1]) // group_size
    return (codes.float() - zero[:, group_of_column]) * scale[:, group_of_column]


def _key(layer: str, level: int, part: str) -> str:
    return f"{layer}|{level}|{part}"


class LevelDatabase:
    """Compressed weights of every layer at every level, in a safetensors file, loaded lazily
    one layer at a time. Build with :meth:`build`, reopen with :meth:`open`."""

    def __init__(self, path: str | Path, model: nn.Module, mode: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"LevelDatabase: argument 'path' {str(self.path)!r} is not a file")
        with safe_open(str(self.path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"LevelDatabase: {str(self.path)!r} is not a level database")
        if mode is not None and meta["mode"] != mode:
            raise ValueError(f"LevelDatabase: {str(self.path)!r} was built for mode "
                             f"{meta['mode']!r}, not {mode!r}")
        if meta["fingerprint"] != model_fingerprint(model) or meta["model_hash"] != model_hash(model):
            raise ValueError(f"LevelDatabase: {str(self.path)!r} was built for another model "
                             f"(parameter shapes or values differ)")
        self.mode, self.pruner = meta["mode"], meta["pruner"]
        self.group_size = int(meta["group_size"])
        self.levels: dict[str, list[int]] = json.loads(meta["levels"])
        modules = dict(model.named_modules())
        self._shapes = {name: tuple(modules[name].weight.shape) for name in self.levels}
        self._dense = {name: modules[name].weight for name in self.levels}
        self._cache: dict[str, dict[str, Tensor]] = {}

    @classmethod
    def build(cls, path: str | Path, model: nn.Module, space: LevelSpace,
              calibration: Iterable[Tensor], pruner: str = "magnitude", group_size: int = 32,
              block_size: int = 128, damp: float = 0.01) -> "LevelDatabase":
        """Builds the database of ``space``'s layers (a :class:`SparsityLevelSpace` or a
        :class:`BitWidthSpace` whose unit names are modules of ``model``) and writes it to
        ``path``; ``calibration`` yields model input batches (used by Wanda and SparseGPT)."""
        if isinstance(space, SparsityLevelSpace):
            mode = "sparsity"
            if pruner not in PRUNERS:
                raise ValueError(f"LevelDatabase.build(): argument 'pruner' must be one of "
                                 f"{PRUNERS}, got {pruner!r}")
        elif isinstance(space, BitWidthSpace):
            mode, pruner = "bits", "rtn"
        else:
            raise TypeError(f"LevelDatabase.build(): argument 'space' must be a "
                            f"SparsityLevelSpace or BitWidthSpace, got {type(space).__name__}")
        if group_size < 1:
            raise ValueError(f"LevelDatabase.build(): argument 'group_size' must be >= 1, got "
                             f"{group_size}")
        modules = dict(model.named_modules())
        layers = {name: modules.get(name) for name in space.unit_names}
        if any(not isinstance(m, (nn.Linear, nn.Conv2d)) for m in layers.values()):
            raise ValueError("LevelDatabase.build(): the space's units must be Linear / Conv2d "
                             "layers of argument 'model'")
        hessians = (input_hessians(model, layers, calibration)
                    if pruner in ("wanda", "sparsegpt") else {})
        tensors: dict[str, Tensor] = {}
        for unit, (name, layer) in enumerate(layers.items()):
            weight = weight_matrix(layer).cpu()
            for level in space.values[unit]:
                if mode == "bits":
                    codes, scale, zero = quantise_rtn(weight, level, group_size)
                    tensors.update({_key(name, level, "codes"): codes,
                                    _key(name, level, "scale"): scale,
                                    _key(name, level, "zero"): zero})
                    continue
                kept = space.kept(unit, level)
                if pruner == "magnitude":
                    mask = magnitude_mask(weight, kept)
                elif pruner == "wanda":
                    mask = wanda_mask(weight, kept, torch.diagonal(hessians[name]).sqrt())
                else:
                    pruned, mask = sparsegpt_prune(weight, kept, hessians[name], block_size,
                                                   damp)
                    tensors[_key(name, level, "weight")] = pruned.float()
                tensors[_key(name, level, "mask")] = pack_mask(mask)
        metadata = {"format": FORMAT, "mode": mode, "pruner": pruner,
                    "group_size": str(group_size), "fingerprint": model_fingerprint(model),
                    "model_hash": model_hash(model),
                    "levels": json.dumps({name: list(space.values[u])
                                          for u, name in enumerate(space.unit_names)})}
        save_checkpoint(path, tensors, metadata)
        return cls(path, model, mode)

    @classmethod
    def open(cls, path: str | Path, model: nn.Module, mode: str) -> "LevelDatabase":
        """The database at ``path``; a ValueError if it was built for another model or mode."""
        return cls(path, model, mode)

    @property
    def changes_weights(self) -> bool:
        """Whether a level changes kept weights (SparseGPT, quantisation), not only masks them."""
        return self.pruner in ("sparsegpt", "rtn")

    def _layer(self, layer: str) -> dict[str, Tensor]:
        if layer not in self.levels:
            raise ValueError(f"LevelDatabase: unknown layer {layer!r}; known: "
                             f"{', '.join(self.levels)}")
        if layer not in self._cache:
            with safe_open(str(self.path), framework="pt") as handle:
                prefix = f"{layer}|"
                self._cache[layer] = {key[len(prefix):]: handle.get_tensor(key)
                                      for key in handle.keys() if key.startswith(prefix)}
        return self._cache[layer]

    def _check_level(self, layer: str, level: int) -> None:
        if level not in self.levels.get(layer, ()):
            raise ValueError(f"LevelDatabase: layer {layer!r} has no level {level}; levels: "
                             f"{self.levels.get(layer)}")

    def loaded_layers(self) -> list[str]:
        return list(self._cache)

    def packed_mask(self, layer: str, level: int) -> Tensor:
        """uint8 [out, ceil(in / 8)]: the mask as stored, bit-packed per output row (a conv
        weight flattened per output channel), the format the masked ops take with packed=True."""
        if self.mode != "sparsity":
            raise ValueError("LevelDatabase.mask(): a bit-width database holds no masks")
        self._check_level(layer, level)
        return self._layer(layer)[f"{level}|mask"]

    def mask(self, layer: str, level: int) -> Tensor:
        """bool, shaped like the layer's weight (sparsity mode)."""
        packed = self.packed_mask(layer, level)
        shape = self._shapes[layer]
        return unpack_mask(packed, math.prod(shape[1:])).reshape(shape)

    def weight(self, layer: str, level: int) -> Tensor:
        """The layer's compressed weight at ``level``, shaped like its weight."""
        self._check_level(layer, level)
        stored = self._layer(layer)
        shape = self._shapes[layer]
        dense = self._dense[layer].detach()
        if self.mode == "bits":
            value = dequantise(stored[f"{level}|codes"], stored[f"{level}|scale"],
                               stored[f"{level}|zero"], self.group_size)
        elif self.pruner == "sparsegpt":
            value = stored[f"{level}|weight"]
        else:
            return dense * self.mask(layer, level).to(dense.device)
        return value.reshape(shape).to(dense.dtype).to(dense.device)

    def size_bytes(self) -> int:
        return os.path.getsize(self.path)
