"""The node space of a parent network: sample, mutate and encode node masks.

A candidate is a list of bool [n_l] masks, one per masked layer; :func:`stack_candidates` turns K
candidates into the per-layer [K, n_l] masks that :class:`sparsenas.models.CandidateBatch` trains
together."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sparsenas.ops import pack_mask, unpack_mask
from sparsenas.sampling import kept_nodes, sample_node_masks
from sparsenas.seeds import derive_seed
from sparsenas.spaces.base import SearchSpace


BUDGETS = ("layer", "global")


NodeCandidate = list[Tensor]


def stack_candidates(candidates: Sequence[NodeCandidate]) -> list[Tensor]:
    """K candidates -> one bool [K, n_l] tensor per layer."""
    if not candidates:
        raise ValueError("stack_candidates(): argument 'candidates' must not be empty")
    return [torch.stack(per_layer) for per_layer in zip(*candidates)]


class NodeSpace(SearchSpace[NodeCandidate]):
    """Node masks of a parent with ``layer_sizes`` nodes per masked layer at sparsity ``s`` (one
    value, or one per layer).

    ``budget="layer"``: every layer keeps exactly ``kept_nodes(n_l, s_l)`` nodes.
    ``budget="global"``: the network keeps exactly ``sum_l kept_nodes(n_l, s_l)`` nodes, at least
    one per layer, spread over the layers at random (the per-layer allocation is part of what a
    search explores).
    """

    def __init__(self, layer_sizes: Sequence[int], sparsity: float | Sequence[float],
                 budget: str = "layer") -> None:
        if budget not in BUDGETS:
            raise ValueError(f"NodeSpace(): argument 'budget' must be one of {BUDGETS}, got "
                             f"{budget!r}")
        self.budget = budget
        self.layer_sizes = [int(n) for n in layer_sizes]
        sparsities = ([float(sparsity)] * len(self.layer_sizes)
                      if isinstance(sparsity, (int, float)) else [float(s) for s in sparsity])
        if len(sparsities) != len(self.layer_sizes):
            raise ValueError(f"NodeSpace(): argument 'sparsity' must have one entry per layer "
                             f"({len(self.layer_sizes)}), got {len(sparsities)}")
        self.sparsities = sparsities
        self.kept = [kept_nodes(n, s) for n, s in zip(self.layer_sizes, sparsities)]

    def sample(self, num: int, seed: int, first: int = 0) -> list[NodeCandidate]:
        """Candidates ``first .. first + num - 1``; candidate i depends only on (seed, i)."""
        per_layer = self._sample_layers(num, seed, first)
        return [[m[i] for m in per_layer] for i in range(num)]

    def _sample_layers(self, num_candidates: int, seed: int, first_candidate: int) -> list[Tensor]:
        if self.budget == "layer":
            return sample_node_masks(self.layer_sizes, self.sparsities, num_candidates, seed,
                                     first_candidate)
        masks = [torch.zeros(num_candidates, n, dtype=torch.bool) for n in self.layer_sizes]
        offsets = torch.tensor([0, *self.layer_sizes]).cumsum(0)
        total = sum(self.kept)
        for row in range(num_candidates):
            generator = torch.Generator().manual_seed(
                derive_seed("global", seed, first_candidate + row))
            flat = torch.zeros(int(offsets[-1]), dtype=torch.bool)
            for layer, n in enumerate(self.layer_sizes):  # one node per layer, so none is cut off
                flat[offsets[layer] + torch.randint(n, (1,), generator=generator)] = True
            rest = (~flat).nonzero().flatten()
            flat[rest[torch.randperm(len(rest), generator=generator)[:total - len(masks)]]] = True
            for layer in range(len(masks)):
                masks[layer][row] = flat[offsets[layer]:offsets[layer + 1]]
        return masks

    def mutate(self, candidate: NodeCandidate, seed: int, swaps: int = 1) -> NodeCandidate:
        """A neighbour of one candidate (bool [n_l] per layer): ``swaps`` times, a kept node is
        exchanged with a dropped one of the same layer (``budget="layer"``: every layer keeps its
        node count) or of any layer (``budget="global"``: the total is kept, and every layer
        keeps at least one node)."""
        generator = torch.Generator().manual_seed(seed)
        result = [m.clone() for m in candidate]
        if self.budget == "global":
            flat = torch.cat(result)
            owner = torch.cat([torch.full((n,), layer) for layer, n in
                               enumerate(self.layer_sizes)])
            for _ in range(swaps):
                counts = torch.bincount(owner[flat], minlength=len(result))
                removable = (flat & (counts[owner] > 1)).nonzero().flatten()
                dropped = (~flat).nonzero().flatten()
                if len(removable) == 0 or len(dropped) == 0:
                    break
                draw = torch.randint(len(removable), (1,), generator=generator)
                flat[removable[int(draw)]] = False
                flat[dropped[int(torch.randint(len(dropped), (1,), generator=generator))]] = True
            return list(flat.split(self.layer_sizes))

        movable = [layer for layer, m in enumerate(result) if 0 < int(m.sum()) < len(m)]
        if not movable:
            return result
        for _ in range(swaps):
            layer = movable[int(torch.randint(len(movable), (1,), generator=generator))]
            mask = result[layer]
            kept = mask.nonzero().flatten()
            dropped = (~mask).nonzero().flatten()
            mask[kept[int(torch.randint(len(kept), (1,), generator=generator))]] = False
            mask[dropped[int(torch.randint(len(dropped), (1,), generator=generator))]] = True
        return result

    def encode(self, candidate: NodeCandidate) -> str:
        """One candidate as text: per layer the hex of its bit-packed mask, layers joined by
        '.'."""
        return ".".join(bytes(pack_mask(m.cpu()).tolist()).hex() for m in candidate)

    def decode(self, text: str) -> list[Tensor]:
        """The inverse of :meth:`encode`."""
        parts = text.split(".")
        if len(parts) != len(self.layer_sizes):
            raise ValueError(f"NodeSpace.decode(): expected {len(self.layer_sizes)} layers, got "
                             f"{len(parts)}")
        try:
            return [unpack_mask(torch.tensor(list(bytes.fromhex(p)), dtype=torch.uint8), n)
                    for p, n in zip(parts, self.layer_sizes)]
        except ValueError:
            raise ValueError(f"NodeSpace.decode(): {text!r} is not an encoded node mask") from None

    def describe(self, candidate: NodeCandidate) -> dict:
        return {"kept": [int(m.sum()) for m in candidate]}
