"""Philox4x32-10 and the sampling streams in numpy, bit-identical to ``csrc/common/philox.h``.

The reference samplers, and so the fallback without the extension, draw from these functions;
the native kernels are tested against them bit for bit. Words are 32-bit values held in uint64
arrays, so every 32x32-bit product is exact.

Layout of a candidate's draws (see ``philox.h``): key = (seed mod 2^32, seed >> 32) with the seed
taken modulo 2^64, counter = (block, c mod 2^32, c >> 32, purpose << 24 | stream) for candidate c.
"""

from __future__ import annotations

import numpy as np

_MASK32 = np.uint64(0xFFFF_FFFF)
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_SHIFT32 = np.uint64(32)

UNIFORM_KEY = 0
UNIFORM_TIE_KEY = 1
GUMBEL_UNIFORM = 2
MAX_STREAM = 1 << 24


def philox4x32_10(c0, c1, c2, c3, k0, k1) -> tuple[np.ndarray, ...]:
    """The four output words of Philox4x32-10 for counter (c0, c1, c2, c3) and key (k0, k1);
    arguments are broadcastable arrays of 32-bit words."""
    c0, c1, c2, c3, k0, k1 = (np.asarray(a, dtype=np.uint64) for a in (c0, c1, c2, c3, k0, k1))
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = ((p1 >> _SHIFT32) ^ c1 ^ k0, p1 & _MASK32,
                          (p0 >> _SHIFT32) ^ c3 ^ k1, p0 & _MASK32)
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def candidate_blocks(seed: int, candidates: np.ndarray, stream: int, purpose: int,
                     blocks: int) -> np.ndarray:
    """Words of blocks [0, blocks) of each candidate's stream: uint64 [len(candidates), blocks, 4]."""
    seed %= 1 << 64
    candidates = np.asarray(candidates, dtype=np.uint64)[:, None]
    block = np.arange(blocks, dtype=np.uint64)[None, :]
    words = philox4x32_10(block, candidates & _MASK32, candidates >> _SHIFT32,
                          np.uint64((purpose << 24) | stream), np.uint64(seed & 0xFFFF_FFFF),
                          np.uint64(seed >> 32))
    return np.stack(np.broadcast_arrays(*words), axis=-1)


def uniform_primary_keys(seed: int, candidates: np.ndarray, stream: int, n: int) -> np.ndarray:
    """8-bit primary key of every exact-k position: byte j % 4 (lowest first) of word
    (j // 4) % 4 of block j // 16. uint64 [len(candidates), n]."""
    words = candidate_blocks(seed, candidates, stream, UNIFORM_KEY, (n + 15) // 16)
    shifts = np.arange(0, 32, 8, dtype=np.uint64)
    octets = (words[..., None] >> shifts) & np.uint64(0xFF)
    return octets.reshape(len(candidates), 16 * words.shape[1])[:, :n]


def uniform_tie_keys(seed: int, candidates: np.ndarray, stream: int, n: int) -> np.ndarray:
    """32-bit tie key of every exact-k position: word j % 4 of block j // 4.
    uint64 [len(candidates), n]."""
    words = candidate_blocks(seed, candidates, stream, UNIFORM_TIE_KEY, (n + 3) // 4)
    return words.reshape(len(candidates), 4 * words.shape[1])[:, :n]


def gumbel_uniforms(seed: int, candidates: np.ndarray, stream: int, n: int) -> np.ndarray:
    """The uniform in (0, 1) of every position, u = (2 b + 1) 2^-53 with b the 52 bits taken from
    words (2 (j % 2), 2 (j % 2) + 1) of block j // 2. float64 [len(candidates), n]."""
    words = candidate_blocks(seed, candidates, stream, GUMBEL_UNIFORM, (n + 1) // 2)
    pairs = words.reshape(len(candidates), 2 * words.shape[1], 2)[:, :n]  # (high, low) per position
    bits = (pairs[..., 0] << np.uint64(20)) | (pairs[..., 1] >> np.uint64(12))
    return (np.uint64(2) * bits + np.uint64(1)).astype(np.float64) * 2.0**-53


def deterministic_log(x: np.ndarray) -> np.ndarray:
    """Natural log of positive normal doubles by the same correctly rounded operations, in the same
    order, as ``deterministic_log`` in ``philox.h`` (so the results are bit-identical)."""
    m, exponent = np.frexp(x)  # m in [0.5, 1)
    small = m < 0.70710678118654752440
    m = np.where(small, m * 2.0, m)
    exponent = np.where(small, exponent - 1, exponent)
    f = m - 1.0
    s = f / (f + 2.0)
    z = s * s
    series = np.full_like(z, 1.0 / 23.0)
    for denominator in (21.0, 19.0, 17.0, 15.0, 13.0, 11.0, 9.0, 7.0, 5.0, 3.0, 1.0):
        series = 1.0 / denominator + z * series
    log_m = (2.0 * s) * series
    return exponent.astype(np.float64) * 0.69314718055994530942 + log_m
