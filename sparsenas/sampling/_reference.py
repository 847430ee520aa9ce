"""Pure numpy / PyTorch references of the mask sampling ops (the test oracle, the fallback without
the extension, and a benchmark baseline). They produce the same masks as the native kernels bit
for bit, and check their arguments the same way.

All take row counts ``k`` as an int64 tensor [B] and return bool [B, n] or, with ``packed``, the
uint8 [B, ceil(n / 8)] format of :func:`sparsenas.ops.pack_mask`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from sparsenas.ops import _checks, pack_mask
from sparsenas.sampling import _philox

_MAX_COLUMNS = 1 << 31


def check_columns(op: str, arg: str, n: int) -> None:
    if not 0 <= n < _MAX_COLUMNS:
        raise ValueError(f"{op}(): argument '{arg}' (the number of positions per row) must be in "
                         f"[0, 2^31), got {n}")


def check_counts(op: str, k: Tensor, rows: int | None, device: torch.device) -> None:
    """The metadata rules of the per-row counts (also run by the fake kernels)."""
    if k.dtype != torch.int64:
        raise TypeError(f"{op}(): argument 'k' must be an int64 tensor of per-row counts, got "
                        f"{_checks.describe(k)}")
    if k.dim() != 1:
        raise ValueError(f"{op}(): argument 'k' must be 1-D [B] (one count per row), got "
                         f"{_checks.describe(k)}")
    if rows is not None:
        _checks.size(op, "k", k, 0, rows, "B, the number of rows")
    if k.device != device:
        raise ValueError(f"{op}(): argument 'k' must be on {device}, got {_checks.describe(k)}")


def _check_k(op: str, k: Tensor, rows: int | None, n: int, device: torch.device) -> None:
    check_counts(op, k, rows, device)
    if k.numel() and not bool(((k >= 0) & (k <= n)).all()):
        raise ValueError(f"{op}(): argument 'k' must have every value in [0, n] = [0, {n}], got "
                         f"values in [{int(k.min())}, {int(k.max())}]")


def check_candidates(op: str, first_candidate: int, rows: int, stream: int) -> None:
    if not 0 <= first_candidate <= (1 << 63) - 1 - rows:
        raise ValueError(f"{op}(): argument 'first_candidate' must be in [0, 2^63 - B), got "
                         f"{first_candidate}")
    if not 0 <= stream < _philox.MAX_STREAM:
        raise ValueError(f"{op}(): argument 'stream' must be in [0, 2^24), got {stream}")


def check_rows(op: str, arg: str, x: Tensor) -> None:
    _checks.floating(op, arg, x)
    _checks.dim(op, arg, x, 2, "[B, n]")
    check_columns(op, arg, x.shape[1])


def _mask_from_order(order: Tensor, k: Tensor, packed: bool) -> Tensor:
    """Row r selects its first k[r] positions of ``order`` (positions in selection order)."""
    ranks = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    mask = ranks < k.to(order.device)[:, None]
    return pack_mask(mask) if packed else mask


def _candidates(first_candidate: int, rows: int) -> np.ndarray:
    return np.arange(first_candidate, first_candidate + rows, dtype=np.uint64)


def uniform_k_mask(k: Tensor, n: int, seed: int, first_candidate: int = 0, stream: int = 0,
                   packed: bool = False) -> Tensor:
    """Row r (candidate first_candidate + r) keeps the k[r] positions with the smallest
    (primary key, tie key, position), the keys being Philox words of (seed, candidate, stream)."""
    op = "uniform_k_mask"
    check_columns(op, "n", n)
    _check_k(op, k, None, n, k.device)
    rows = k.shape[0]
    check_candidates(op, first_candidate, rows, stream)
    candidates = _candidates(first_candidate, rows)
    primary = _philox.uniform_primary_keys(seed, candidates, stream, n)
    tie = _philox.uniform_tie_keys(seed, candidates, stream, n)
    position = np.broadcast_to(np.arange(n), primary.shape)
    order = np.lexsort((position, tie, primary), axis=-1)
    return _mask_from_order(torch.from_numpy(order).to(k.device), k, packed)


def topk_mask(scores: Tensor, k: Tensor, packed: bool = False) -> Tensor:
    """Row r keeps its k[r] largest scores; ties go to the lower position, NaN ranks above +inf."""
    op = "topk_mask"
    check_rows(op, "scores", scores)
    _check_k(op, k, scores.shape[0], scores.shape[1], scores.device)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return _mask_from_order(order, k, packed)


def gumbel_topk_mask(weights: Tensor, k: Tensor, seed: int, first_candidate: int = 0,
                     stream: int = 0, packed: bool = False) -> Tensor:
    """Row r keeps k[r] positions drawn without replacement with probability proportional to its
    weights: the k[r] largest keys log(u) / w (ties to the lower position, zero weight -> -inf)."""
    op = "gumbel_topk_mask"
    check_rows(op, "weights", weights)
    rows, n = weights.shape
    _check_k(op, k, rows, n, weights.device)
    check_candidates(op, first_candidate, rows, stream)
    if weights.numel() and not bool((torch.isfinite(weights) & (weights >= 0)).all()):
        raise ValueError(f"{op}(): argument 'weights' must be finite and non-negative, got "
                         f"{_checks.describe(weights)} with a negative, infinite or NaN entry")
    if k.numel() and not bool(((weights > 0).sum(1) >= k).all()):
        raise ValueError(f"{op}(): argument 'k' must not exceed the number of positive "
                         "'weights' in its row (a zero weight is never chosen)")
    u = _philox.gumbel_uniforms(seed, _candidates(first_candidate, rows), stream, n)
    w = weights.detach().to("cpu", torch.float64).numpy()
    with np.errstate(divide="ignore"):
        keys = np.where(w == 0, -np.inf, _philox.deterministic_log(u) / w)
    position = np.broadcast_to(np.arange(n), keys.shape)
    order = np.lexsort((position, -keys), axis=-1)
    return _mask_from_order(torch.from_numpy(order).to(weights.device), k, packed)


def philox4x32_10(counter: Tensor, key: Tensor) -> Tensor:
    """Philox4x32-10 of counter int64 [N, 4] and key int64 [N, 2] (32-bit words) -> int64 [N, 4]."""
    op = "philox4x32_10"
    _checks.philox4x32_10(counter, key)
    for arg, t in (("counter", counter), ("key", key)):
        _checks.words_values(op, arg, t)
    c = counter.cpu().numpy().astype(np.uint64)
    k = key.cpu().numpy().astype(np.uint64)
    words = _philox.philox4x32_10(c[:, 0], c[:, 1], c[:, 2], c[:, 3], k[:, 0], k[:, 1])
    return torch.from_numpy(np.stack(words, axis=-1).astype(np.int64)).to(counter.device)
