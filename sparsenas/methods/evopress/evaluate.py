"""Running compressed configurations of a model, and their fitness against the dense model.

Two runners give the outputs of K configurations on one input batch, ``[K, N, ...]``:

- :class:`BatchedCandidates` evaluates all K in one forward: the input is repeated K times along
  the batch dimension (candidate-major), and every compressible layer is replaced for the call by
  a K-candidate layer that runs its slice k with configuration k's level. Kernel ``"masked"``:
  one K-candidate masked op per layer (the shared weight with K bit-packed masks, or K weights
  where the database changed them); a layer at the same level in all K configurations runs as
  one plain masked op over the whole batch. Kernel ``"grouped"``: one dense call per distinct
  level among the K. Which is faster depends on K and the layer shapes (measured by
  ``benchmarks/evopress_offspring.py``). A dropped block (depth mode) passes its candidates'
  slices through unchanged and runs only the kept ones.
- :class:`SequentialCandidates` runs one configuration after another the way reference
  implementations do (swap the compressed weights into the model, run, swap the dense ones back).

Batching along the batch dimension needs a model whose forward treats examples independently
(eval mode: no BatchNorm batch statistics) and whose compressible layers and blocks take the
batch as their first dimension, which is the case for the usual MLPs, CNNs and transformers.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsenas.methods.evopress.database import LevelDatabase
from sparsenas.ops import masked_conv2d, masked_linear, pack_mask
from sparsenas.spaces.levels import LevelSpace

FITNESS_KINDS = ("kl", "loss", "perplexity")


def _parent_and_attribute(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attribute = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attribute


@contextlib.contextmanager
def _replaced(model: nn.Module, replacements: dict[str, nn.Module]) -> Iterator[None]:
    """Puts ``replacements`` (qualified name -> module) into ``model`` for the duration."""
    originals = {}
    try:
        for name, module in replacements.items():
            parent, attribute = _parent_and_attribute(model, name)
            originals[name] = getattr(parent, attribute)
            setattr(parent, attribute, module)
        yield
    finally:
        for name, module in originals.items():
            parent, attribute = _parent_and_attribute(model, name)
            setattr(parent, attribute, module)


def _layer_call(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """``layer``'s forward with ``weight`` in place of its own."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation,
                    layer.groups)


class _MaskedCandidateLayer(nn.Module):
    """A Linear / Conv2d for K configurations at once on x [K * N, ...], through the K-candidate
    masked ops: ``weight`` [out, ...] shared or [K, out, ...]; ``mask`` packed uint8
    [out, bytes] (one level for all) or [K, out, bytes]."""

    def __init__(self, layer: nn.Module, num_candidates: int, weight: Tensor,
                 mask: Tensor) -> None:
        super().__init__()
        self.layer, self.num_candidates = layer, num_candidates
        self.weight, self.mask = weight, mask

    def forward(self, x: Tensor) -> Tensor:
        layer, weight, mask = self.layer, self.weight, self.mask
        per_candidate = mask.dim() == 3
        if per_candidate:
            x = x.unflatten(0, (self.num_candidates, -1))
        if isinstance(layer, nn.Linear):
            out = masked_linear(x, weight, mask, layer.bias, packed=True)
        else:
            out = masked_conv2d(x, weight, mask, layer.bias, layer.stride, layer.padding,
                                layer.dilation, layer.groups, packed=True)
        return out.flatten(0, 1) if per_candidate else out


class _GroupedCandidateLayer(nn.Module):
    """A Linear / Conv2d for K configurations at once on x [K * N, ...]: the candidates at the
    same level share one dense call with that level's compressed weight (mutation changes few
    layers, so a layer usually holds two or three distinct levels among the K)."""

    def __init__(self, layer: nn.Module, levels: Sequence[int], weights: dict[int, Tensor]) -> None:
        super().__init__()
        self.layer, self.weights = layer, weights
        groups: dict[int, list[int]] = {}
        for k, level in enumerate(levels):
            groups.setdefault(level, []).append(k)
        self.num_candidates = len(levels)
        self.groups = {level: torch.tensor(ks) for level, ks in groups.items()}

    def forward(self, x: Tensor) -> Tensor:
        if len(self.groups) == 1:
            (level,) = self.groups
            return _layer_call(self.layer, x, self.weights[level])
        slices = x.unflatten(0, (self.num_candidates, -1))
        out = None
        for level, ks in self.groups.items():
            part = _layer_call(self.layer, slices[ks.to(x.device)].flatten(0, 1),
                               self.weights[level]).unflatten(0, (len(ks), -1))
            if out is None:
                out = part.new_empty(self.num_candidates, *part.shape[1:])
            out[ks.to(x.device)] = part
        return out.flatten(0, 1)


class _CandidateBlock(nn.Module):
    """A residual block dropped (identity) in some of K configurations, on x [K * N, ...]."""

    def __init__(self, block: nn.Module, dropped: Tensor) -> None:
        super().__init__()
        self.block, self.dropped = block, dropped

    def forward(self, x: Tensor) -> Tensor:
        if not self.dropped.any():
            return self.block(x)
        if self.dropped.all():
            return x
        slices = x.unflatten(0, (self.dropped.numel(), -1))
        kept = ~self.dropped
        out = slices.clone()
        out[kept] = self.block(slices[kept].flatten(0, 1)).unflatten(0, (int(kept.sum()), -1))
        return out.flatten(0, 1)


class _Runner(ABC):
    """Outputs [K, N, ...] of K configurations of ``space`` on one input batch."""

    def __init__(self, model: nn.Module, space: LevelSpace,
                 database: LevelDatabase | None = None) -> None:
        if space.mode in ("sparsity", "bits"):
            if database is None or database.mode != space.mode:
                raise ValueError(f"{type(self).__name__}: {space.mode} mode needs argument "
                                 f"'database' built for that mode")
            missing = set(space.unit_names) - set(database.levels)
            if missing:
                raise ValueError(f"{type(self).__name__}: the database has no levels for "
                                 f"{sorted(missing)}")
        self.model, self.space, self.database = model, space, database
        self._weights: dict[tuple[str, int], Tensor] = {}

    def final_weight(self, layer: str, level: int) -> Tensor:
        """The layer's compressed weight at ``level`` (cached)."""
        key = (layer, level)
        if key not in self._weights:
            self._weights[key] = self.database.weight(layer, level)
        return self._weights[key]

    @abstractmethod
    def __call__(self, candidates: Sequence[Sequence[int]], inputs: Tensor) -> Tensor:
        """The model's outputs for each configuration, stacked: [K, N, ...]."""


class BatchedCandidates(_Runner):
    """All K configurations in one forward (see the module docstring). ``kernel``:
    ``"masked"`` — each layer is one K-candidate masked op (the shared dense weight with K
    bit-packed masks, or K stacked weights where the database changed them), which never
    materialises K masked weights; ``"grouped"`` — each layer runs one dense call per distinct
    level among the K, with that level's compressed weight (cached)."""

    KERNELS = ("masked", "grouped")

    def __init__(self, model: nn.Module, space: LevelSpace, database: LevelDatabase | None = None,
                 kernel: str = "masked") -> None:
        if kernel not in self.KERNELS:
            raise ValueError(f"BatchedCandidates(): argument 'kernel' must be one of "
                             f"{self.KERNELS}, got {kernel!r}")
        super().__init__(model, space, database)
        self.kernel = kernel
        self._packed: dict[tuple[str, int], Tensor] = {}
        self._ones: dict[str, Tensor] = {}

    def _packed_mask(self, layer: str, level: int) -> Tensor:
        key = (layer, level)
        if key not in self._packed:
            self._packed[key] = self.database.packed_mask(layer, level).to(
                self.model.get_submodule(layer).weight.device)
        return self._packed[key]

    def _all_kept(self, name: str, layer: nn.Module) -> Tensor:
        """A packed mask that keeps every weight (for per-candidate quantised weights)."""
        if name not in self._ones:
            columns = math.prod(layer.weight.shape[1:])
            self._ones[name] = pack_mask(torch.ones(layer.weight.shape[0], columns,
                                                    dtype=torch.bool,
                                                    device=layer.weight.device))
        return self._ones[name]

    def _layer(self, name: str, levels: list[int]) -> nn.Module:
        layer = self.model.get_submodule(name)
        if self.kernel == "grouped":
            return _GroupedCandidateLayer(layer, levels, {level: self.final_weight(name, level)
                                                          for level in set(levels)})
        k = len(levels)
        shared = all(level == levels[0] for level in levels)
        if self.database.mode == "bits":
            masks = [self._all_kept(name, layer)] * (1 if shared else k)
        else:
            masks = [self._packed_mask(name, level) for level in levels[:1 if shared else k]]
        mask = masks[0] if shared else torch.stack(masks)
        if self.database.changes_weights:
            weight = (self.final_weight(name, levels[0]) if shared else
                      torch.stack([self.final_weight(name, level) for level in levels]))
        else:
            weight = layer.weight.detach().contiguous()
        return _MaskedCandidateLayer(layer, k, weight, mask)

    @torch.no_grad()
    def __call__(self, candidates: Sequence[Sequence[int]], inputs: Tensor) -> Tensor:
        k = len(candidates)
        per_unit = list(zip(*candidates))
        if self.space.mode == "depth":
            device = inputs.device
            replacements = {name: _CandidateBlock(self.model.get_submodule(name),
                                                  torch.tensor(flags, device=device).bool())
                            for name, flags in zip(self.space.unit_names, per_unit)}
        else:
            replacements = {name: self._layer(name, list(levels))
                            for name, levels in zip(self.space.unit_names, per_unit)}
        repeated = inputs.unsqueeze(0).expand(k, *inputs.shape).flatten(0, 1)
        with _replaced(self.model, replacements):
            out = self.model(repeated)
        return out.unflatten(0, (k, -1))


class SequentialCandidates(_Runner):
    """One configuration after another: compressed weights swapped into the model, one forward,
    dense weights swapped back (a dropped block is swapped for ``nn.Identity``)."""

    @torch.no_grad()
    def __call__(self, candidates: Sequence[Sequence[int]], inputs: Tensor) -> Tensor:
        outputs = []
        for candidate in candidates:
            if self.space.mode == "depth":
                dropped = {name: nn.Identity()
                           for name, flag in zip(self.space.unit_names, candidate) if flag}
                with _replaced(self.model, dropped):
                    outputs.append(self.model(inputs))
                continue
            layers = [self.model.get_submodule(name) for name in self.space.unit_names]
            dense = [layer.weight.data for layer in layers]
            try:
                for layer, name, level in zip(layers, self.space.unit_names, candidate):
                    layer.weight.data = self.final_weight(name, level)
                outputs.append(self.model(inputs))
            finally:
                for layer, weight in zip(layers, dense):
                    layer.weight.data = weight
        return torch.stack(outputs)


class Fitness:
    """Fitness of configurations on examples of a calibration pool (lower is better).

    ``kind``: ``"kl"`` — KL(dense ‖ compressed) of the output distributions (softmax over the last
    dimension), averaged over examples (and positions for sequence outputs); ``"loss"`` — mean
    cross-entropy against ``targets``; ``"perplexity"`` — exp of that loss. The dense model's
    log-probabilities are computed once per example and reused by every later call.
    """

    def __init__(self, runner: _Runner, inputs: Tensor, targets: Tensor | None = None,
                 kind: str = "kl", batch_size: int = 64) -> None:
        if kind not in FITNESS_KINDS:
            raise ValueError(f"Fitness(): argument 'kind' must be one of {FITNESS_KINDS}, got "
                             f"{kind!r}")
        if kind != "kl" and (targets is None or len(targets) != len(inputs)):
            raise ValueError(f"Fitness(): kind {kind!r} needs argument 'targets' with one entry "
                             f"per input")
        if batch_size < 1:
            raise ValueError(f"Fitness(): argument 'batch_size' must be >= 1, got {batch_size}")
        self.runner, self.inputs, self.targets = runner, inputs, targets
        self.kind, self.batch_size = kind, batch_size
        self._dense: dict[int, Tensor] = {}

    @property
    def pool_size(self) -> int:
        return len(self.inputs)

    @torch.no_grad()
    def _dense_log_probs(self, examples: Tensor) -> Tensor:
        missing = [int(i) for i in examples if int(i) not in self._dense]
        model = self.runner.model
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            log_probs = model(self.inputs[chunk]).float().log_softmax(-1)
            self._dense.update(zip(chunk, log_probs))
        return torch.stack([self._dense[int(i)] for i in examples])

    @torch.no_grad()
    def __call__(self, candidates: Sequence[Sequence[int]], examples: Tensor) -> list[float]:
        """One fitness per configuration on the pool's ``examples`` (indices)."""
        if len(examples) == 0:
            raise ValueError("Fitness(): argument 'examples' is empty")
        total = torch.zeros(len(candidates), dtype=torch.float64)
        count = 0
        for start in range(0, len(examples), self.batch_size):
            chunk = examples[start:start + self.batch_size]
            log_probs = self.runner(candidates, self.inputs[chunk]).float().log_softmax(-1)
            if self.kind == "kl":
                dense = self._dense_log_probs(chunk)
                pointwise = (dense.exp() * (dense - log_probs)).sum(-1)
            else:
                targets = self.targets[chunk].unsqueeze(0).expand(len(candidates),
                                                                  *self.targets[chunk].shape)
                pointwise = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            total += pointwise.flatten(1).double().sum(1).cpu()
            count += pointwise[0].numel()
        mean = total / count
        return (mean.exp() if self.kind == "perplexity" else mean).tolist()
