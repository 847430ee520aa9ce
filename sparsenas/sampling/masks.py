"""Batched mask sampling: exact-k uniform, top-k of scores, Gumbel-top-k.

Every random mask comes from the counter-based Philox4x32-10 generator keyed by
(seed, candidate index, stream): row r of a call is candidate ``first_candidate + r``, and its mask
depends on nothing else, so CPU and CUDA, any split of a batch into chunks, and any number of
workers give the same masks. The global torch generator is never used.

Masks are bool [..., n], or with ``packed=True`` uint8 [..., ceil(n / 8)] in the format of
:func:`sparsenas.ops.pack_mask` (bit j of byte b is position 8 b + j).
A tensor ``k`` must be on the device of the masks (of ``scores`` / ``weights``, or ``device``);
meta tensors and the meta device are refused (the masks are values).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from sparsenas._extension import has_native_kernel, native
from sparsenas.ops import _checks
from sparsenas.sampling import _reference

_SEED_RANGE = (-(1 << 63), 1 << 64)


def _seed(op: str, seed: int) -> int:
    """The seed as the int64 the ops take; [2^63, 2^64) wraps like the unsigned key it is."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{op}(): argument 'seed' must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not _SEED_RANGE[0] <= seed < _SEED_RANGE[1]:
        raise ValueError(f"{op}(): argument 'seed' must be in [-2^63, 2^64), got {seed}")
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def _int(op: str, arg: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}(): argument '{arg}' must be an int, got {type(value).__name__}")
    return int(value)


def _row_counts(op: str, k: int | Tensor, batch_shape: tuple[int, ...], n: int,
                device: torch.device) -> Tensor:
    """k as the int64 [B] tensor of per-row counts the ops take (B = prod(batch_shape))."""
    rows = math.prod(batch_shape)
    if isinstance(k, Tensor):
        _checks.data_device(op, "k", k)
        if k.device != device:
            raise ValueError(f"{op}(): argument 'k' must be on {device} (where the masks are "
                             f"made), got {_checks.describe(k)}")
        if k.dtype == torch.bool or k.is_floating_point() or k.is_complex():
            raise TypeError(f"{op}(): argument 'k' must be an int or an integer tensor, got {k.dtype}")
        if tuple(k.shape) != batch_shape:
            raise ValueError(f"{op}(): argument 'k' must be an int or a tensor of shape "
                             f"{batch_shape} (one count per row), got shape {tuple(k.shape)}")
        return k.reshape(rows).to(device=device, dtype=torch.int64)
    count = _int(op, "k", k)
    if not 0 <= count <= n:
        raise ValueError(f"{op}(): argument 'k' must be in [0, n] = [0, {n}], got {count}")
    return torch.full((rows,), count, dtype=torch.int64, device=device)


def uniform_k_masks(
    num_candidates: int,
    n: int,
    k: int | Tensor,
    seed: int,
    *,
    first_candidate: int = 0,
    stream: int = 0,
    packed: bool = False,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Masks of B = ``num_candidates`` rows of ``n`` positions with exactly k ones per row, each
    k-subset equally likely (positions are ranked by 40 random bits each; an exact tie, about
    n^2 / 2^41 per row, goes to the lower position).

    Shapes: k int or integer tensor [B] (one count per row) -> bool [B, n], or uint8
    [B, ceil(n / 8)] with ``packed``. Row r is candidate ``first_candidate + r`` and depends only on
    (seed, first_candidate + r, stream); ``stream`` in [0, 2^24) gives independent masks of the
    same candidate (e.g. one per layer).
    """
    op = "uniform_k_masks"
    rows = _int(op, "num_candidates", num_candidates)
    n = _int(op, "n", n)
    if rows < 0:
        raise ValueError(f"{op}(): argument 'num_candidates' must be >= 0, got {rows}")
    _reference.check_columns(op, "n", n)
    device = _checks.device_argument(op, device)
    counts = _row_counts(op, k, (rows,), n, device)
    args = (counts, n, _seed(op, seed), _int(op, "first_candidate", first_candidate),
            _int(op, "stream", stream), bool(packed))
    if has_native_kernel("uniform_k_mask", device.type):
        return torch.ops.sparsenas.uniform_k_mask(*args)
    return _reference.uniform_k_mask(*args)


def _batched(op: str, arg: str, x: Tensor) -> Tensor:
    _checks.tensor(op, arg, x)
    _checks.data_device(op, arg, x)
    if not x.is_floating_point():
        raise TypeError(f"{op}(): argument '{arg}' must be a floating-point tensor (float32, "
                        f"float64, bfloat16 or float16), got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{op}(): argument '{arg}' must be [..., n], got a 0-d tensor")
    _reference.check_columns(op, arg, x.shape[-1])
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _unflatten(mask: Tensor, batch_shape: tuple[int, ...]) -> Tensor:
    return mask.reshape(*batch_shape, mask.shape[-1])


def topk_masks(scores: Tensor, k: int | Tensor, *, packed: bool = False) -> Tensor:
    """The k largest scores of every row (deterministic: ties go to the lower position, NaN ranks
    above +inf).

    Shapes: scores [..., n] floating; k int or integer tensor [...] -> bool [..., n], or uint8
    [..., ceil(n / 8)] with ``packed``.
    """
    op = "topk_masks"
    rows = _batched(op, "scores", scores)
    batch_shape = tuple(scores.shape[:-1])
    counts = _row_counts(op, k, batch_shape, scores.shape[-1], scores.device)
    if has_native_kernel("topk_mask", scores.device.type):
        mask = torch.ops.sparsenas.topk_mask(rows, counts, bool(packed))
    else:
        mask = _reference.topk_mask(rows, counts, bool(packed))
    return _unflatten(mask, batch_shape)


def gumbel_topk_masks(
    weights: Tensor,
    k: int | Tensor,
    seed: int,
    *,
    first_candidate: int = 0,
    stream: int = 0,
    packed: bool = False,
) -> Tensor:
    """k positions per row drawn without replacement with probability proportional to the
    non-negative ``weights`` (Gumbel-top-k); a zero weight is never chosen, so k may not exceed a
    row's number of positive weights.

    Shapes: weights [..., n] floating; k int or integer tensor [...] -> bool [..., n], or uint8
    [..., ceil(n / 8)] with ``packed``. Row r of the flattened batch is candidate
    ``first_candidate + r`` and depends only on (seed, first_candidate + r, stream) and its weights.
    """
    op = "gumbel_topk_masks"
    rows = _batched(op, "weights", weights)
    batch_shape = tuple(weights.shape[:-1])
    counts = _row_counts(op, k, batch_shape, weights.shape[-1], weights.device)
    args = (rows, counts, _seed(op, seed), _int(op, "first_candidate", first_candidate),
            _int(op, "stream", stream), bool(packed))
    if has_native_kernel("gumbel_topk_mask", weights.device.type):
        mask = torch.ops.sparsenas.gumbel_topk_mask(*args)
    else:
        mask = _reference.gumbel_topk_mask(*args)
    return _unflatten(mask, batch_shape)


def philox4x32_10(counter: Tensor, key: Tensor) -> Tensor:
    """The Philox4x32-10 generator itself: counter int64 [N, 4] and key int64 [N, 2], both holding
    32-bit words -> int64 [N, 4] of 32-bit words (the same streams the samplers draw from)."""
    _checks.data_device("philox4x32_10", "counter", counter)
    _checks.philox4x32_10(counter, key)
    if has_native_kernel("philox4x32_10", counter.device.type):
        return torch.ops.sparsenas.philox4x32_10(counter, key)
    return _reference.philox4x32_10(counter, key)


if native is not None:

    def _empty_mask(like: Tensor, rows: int, n: int, packed: bool) -> Tensor:
        if packed:
            return like.new_empty((rows, (n + 7) // 8), dtype=torch.uint8)
        return like.new_empty((rows, n), dtype=torch.bool)

    # The fakes hold the metadata rules of the kernels, so a meta tensor among real ones raises
    # instead of producing an uninitialised mask.
    @torch.library.register_fake("sparsenas::uniform_k_mask")
    def _uniform_k_mask_fake(k, n, seed, first_candidate=0, stream=0, packed=False):
        op = "uniform_k_mask"
        _reference.check_columns(op, "n", n)
        _reference.check_counts(op, k, None, k.device)
        _reference.check_candidates(op, first_candidate, k.shape[0], stream)
        return _empty_mask(k, k.shape[0], n, packed)

    @torch.library.register_fake("sparsenas::topk_mask")
    def _topk_mask_fake(scores, k, packed=False):
        _reference.check_rows("topk_mask", "scores", scores)
        _reference.check_counts("topk_mask", k, scores.shape[0], scores.device)
        return _empty_mask(scores, scores.shape[0], scores.shape[1], packed)

    @torch.library.register_fake("sparsenas::gumbel_topk_mask")
    def _gumbel_topk_mask_fake(weights, k, seed, first_candidate=0, stream=0, packed=False):
        op = "gumbel_topk_mask"
        _reference.check_rows(op, "weights", weights)
        _reference.check_counts(op, k, weights.shape[0], weights.device)
        _reference.check_candidates(op, first_candidate, weights.shape[0], stream)
        return _empty_mask(weights, weights.shape[0], weights.shape[1], packed)

    @torch.library.register_fake("sparsenas::philox4x32_10")
    def _philox4x32_10_fake(counter, key):
        _checks.philox4x32_10(counter, key)
        return torch.empty_like(counter)
