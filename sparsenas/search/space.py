"""The node space of a parent network: sample, mutate and encode node masks (SPEC §1.1)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch
from torch import Tensor

from sparsenas.ops import pack_mask, unpack_mask
from sparsenas.sampling import kept_nodes, sample_node_masks


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on ``parts`` (ints, floats, strings), stable across
    processes and machines (unlike ``hash`` of strings)."""
    digest = hashlib.blake2b(json.dumps(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class NodeSpace:
    """Node masks of a parent with ``layer_sizes`` nodes per masked layer, each layer keeping
    exactly ``kept_nodes(n_l, s_l)`` nodes at sparsity ``s`` (one value, or one per layer for a
    per-layer budget)."""

    def __init__(self, layer_sizes: Sequence[int], sparsity: float | Sequence[float]) -> None:
        self.layer_sizes = [int(n) for n in layer_sizes]
        sparsities = ([float(sparsity)] * len(self.layer_sizes)
                      if isinstance(sparsity, (int, float)) else [float(s) for s in sparsity])
        if len(sparsities) != len(self.layer_sizes):
            raise ValueError(f"NodeSpace(): argument 'sparsity' must have one entry per layer "
                             f"({len(self.layer_sizes)}), got {len(sparsities)}")
        self.sparsities = sparsities
        self.kept = [kept_nodes(n, s) for n, s in zip(self.layer_sizes, sparsities)]

    def sample(self, num_candidates: int, seed: int, first_candidate: int = 0) -> list[Tensor]:
        """Candidates ``first_candidate ..`` as one bool [B, n_l] per layer; candidate i depends
        only on (seed, i)."""
        return sample_node_masks(self.layer_sizes, self.sparsities, num_candidates, seed,
                                 first_candidate)

    def mutate(self, masks: Sequence[Tensor], seed: int, swaps: int = 1) -> list[Tensor]:
        """A neighbour of one candidate (bool [n_l] per layer): ``swaps`` times, a kept node of
        a random layer is exchanged with a dropped one, so every layer keeps its node count."""
        generator = torch.Generator().manual_seed(seed)
        result = [m.clone() for m in masks]
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

    def encode(self, masks: Sequence[Tensor]) -> str:
        """One candidate (bool [n_l] per layer) as text: per layer the hex of its bit-packed
        mask, layers joined by '.'."""
        return ".".join(bytes(pack_mask(m.cpu()).tolist()).hex() for m in masks)

    def decode(self, text: str) -> list[Tensor]:
        """The inverse of :meth:`encode`."""
        parts = text.split(".")
        if len(parts) != len(self.layer_sizes):
            raise ValueError(f"NodeSpace.decode(): expected {len(self.layer_sizes)} layers, got "
                             f"{len(parts)}")
        return [unpack_mask(torch.tensor(list(bytes.fromhex(p)), dtype=torch.uint8), n)
                for p, n in zip(parts, self.layer_sizes)]
