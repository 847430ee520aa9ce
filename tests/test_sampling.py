import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch

from sparsenas._extension import has_native_kernel
from sparsenas.ops import pack_mask
from sparsenas.sampling import (
    _philox,
    _reference,
    gumbel_topk_masks,
    kept_nodes,
    philox4x32_10,
    sample_node_masks,
    topk_masks,
    uniform_k_masks,
)

# Random123's published Philox4x32-10 known-answer vectors: (counter, key, output).
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

SCORE_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SHAPES = [(0, 5), (3, 0), (1, 1), (5, 13), (4, 64), (3, 1000)]


def _counts(rows: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, n + 1, (rows,), generator=torch.Generator().manual_seed(seed))


def _weights(rows: int, n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(rows, n, generator=generator, dtype=torch.float64)
    weights[torch.rand(rows, n, generator=generator) < 0.3] = 0
    return weights.to(dtype)


def _require_native(op: str, device: torch.device) -> None:
    if not has_native_kernel(op, device.type):
        pytest.skip(f"no native {op} kernel for {device.type} in this build")


# ---- the generator ---------------------------------------------------------------------------

def test_python_philox_known_answers():
    for counter, key, expected in KNOWN_ANSWERS:
        words = _philox.philox4x32_10(*counter, *key)
        assert tuple(int(w) for w in words) == expected


def test_native_philox_known_answers_and_matches_python(device):
    _require_native("philox4x32_10", device)
    counter = torch.tensor([c for c, _, _ in KNOWN_ANSWERS], device=device)
    key = torch.tensor([k for _, k, _ in KNOWN_ANSWERS], device=device)
    expected = torch.tensor([e for _, _, e in KNOWN_ANSWERS], device=device)
    assert torch.equal(philox4x32_10(counter, key), expected)
    generator = torch.Generator().manual_seed(0)
    counter = torch.randint(0, 1 << 32, (257, 4), generator=generator)
    key = torch.randint(0, 1 << 32, (257, 2), generator=generator)
    assert torch.equal(philox4x32_10(counter.to(device), key.to(device)).cpu(),
                       _reference.philox4x32_10(counter, key))


def test_deterministic_log_is_accurate():
    u = _philox.gumbel_uniforms(5, np.arange(4, dtype=np.uint64), 0, 1000).ravel()
    u = np.concatenate([u, [2.0**-53, 0.5, 0.7071067811865476, 1 - 2.0**-53]])
    np.testing.assert_allclose(_philox.deterministic_log(u), np.log(u), rtol=1e-15, atol=0)


# ---- native kernels == reference, bit for bit -------------------------------------------------

@pytest.mark.parametrize("rows,n", SHAPES)
@pytest.mark.parametrize("packed", [False, True])
def test_uniform_native_matches_reference(device, rows, n, packed):
    _require_native("uniform_k_mask", device)
    k = _counts(rows, n, seed=rows * 31 + n)
    native = torch.ops.sparsenas.uniform_k_mask(k.to(device), n, 2024, 17, 3, packed)
    assert native.device.type == device.type
    assert torch.equal(native.cpu(), _reference.uniform_k_mask(k, n, 2024, 17, 3, packed))


@pytest.mark.parametrize("rows,n", SHAPES)
@pytest.mark.parametrize("dtype", SCORE_DTYPES)
def test_topk_native_matches_reference(device, rows, n, dtype):
    _require_native("topk_mask", device)
    k = _counts(rows, n, seed=n)
    scores = torch.randn(rows, n, generator=torch.Generator().manual_seed(n)).to(dtype)
    scores[:, ::3] = scores[:, :1].clone()  # ties
    for packed in (False, True):
        native = torch.ops.sparsenas.topk_mask(scores.to(device), k.to(device), packed)
        assert torch.equal(native.cpu(), _reference.topk_mask(scores, k, packed))


@pytest.mark.parametrize("rows,n", SHAPES)
@pytest.mark.parametrize("dtype", SCORE_DTYPES)
def test_gumbel_native_matches_reference(device, rows, n, dtype):
    _require_native("gumbel_topk_mask", device)
    weights = _weights(rows, n, dtype, seed=n)
    k = torch.minimum(_counts(rows, n, seed=rows), (weights > 0).sum(1))
    for packed in (False, True):
        native = torch.ops.sparsenas.gumbel_topk_mask(weights.to(device), k.to(device), -5, 40, 9,
                                                      packed)
        assert torch.equal(native.cpu(), _reference.gumbel_topk_mask(weights, k, -5, 40, 9, packed))


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
@pytest.mark.parametrize("position", [0, 12])  # a full vector of 8 positions, and the tail
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_gumbel_native_checks_weight_values(device, dtype, position, bad):
    # The CPU kernel checks the weights as it reads them; the messages are those of the tensor
    # checks, weights before k.
    _require_native("gumbel_topk_mask", device)
    weights = torch.ones(3, 13, dtype=dtype)
    weights[1, position] = bad
    weights[2, 5] = 0.0
    too_many = torch.tensor([2, 2, 13])  # row 2 has 12 positive weights
    for k in (torch.tensor([2, 2, 2]), too_many):
        with pytest.raises(ValueError, match="'weights' must be finite and non-negative"):
            torch.ops.sparsenas.gumbel_topk_mask(weights.to(device), k.to(device), 0, 0, 0, False)
    weights[1, position] = 0.0
    with pytest.raises(ValueError, match="'k' must not exceed the number of positive"):
        torch.ops.sparsenas.gumbel_topk_mask(weights.to(device), too_many.to(device), 0, 0, 0,
                                             False)


def test_uniform_wide_rows_match_reference():
    # 2^17 positions: ~512 positions share each 8-bit primary key, so the cut is decided by the
    # tie keys of a large group.
    k = torch.tensor([1 << 16, 1 << 15, 3])
    n = 1 << 17
    assert torch.equal(torch.ops.sparsenas.uniform_k_mask(k, n, 11, 0, 0, False),
                       _reference.uniform_k_mask(k, n, 11))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to compare with CPU")
def test_cpu_and_cuda_give_the_same_masks():
    cuda = torch.device("cuda")
    assert torch.equal(uniform_k_masks(64, 4099, 1000, 7, device="cuda").cpu(),
                       uniform_k_masks(64, 4099, 1000, 7))
    weights = _weights(16, 777, torch.float32, seed=1)
    assert torch.equal(gumbel_topk_masks(weights.to(cuda), 100, 3).cpu(),
                       gumbel_topk_masks(weights, 100, 3))
    for cpu_mask, cuda_mask in zip(sample_node_masks([100, 50], [0.5, 0.9], 33, 4),
                                   sample_node_masks([100, 50], [0.5, 0.9], 33, 4, device=cuda)):
        assert torch.equal(cpu_mask, cuda_mask.cpu())


def test_reference_fallback_gives_the_same_masks():
    code = (
        "import json, torch; from sparsenas.sampling import *;"
        "u = uniform_k_masks(9, 70, torch.arange(9), 123, first_candidate=4, stream=2);"
        "w = torch.rand(5, 40, generator=torch.Generator().manual_seed(0));"
        "g = gumbel_topk_masks(w, 6, 8);"
        "m = sample_node_masks([12, 30], [0.25, 0.5], 5, 99);"
        "print(json.dumps([u.tolist(), g.tolist()] + [x.tolist() for x in m]))"
    )
    env = dict(os.environ, SPARSENAS_DISABLE_EXTENSION="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                         text=True).stdout
    uniform, gumbel, *nodes = json.loads(out)
    assert uniform == uniform_k_masks(9, 70, torch.arange(9), 123, first_candidate=4,
                                      stream=2).tolist()
    w = torch.rand(5, 40, generator=torch.Generator().manual_seed(0))
    assert gumbel == gumbel_topk_masks(w, 6, 8).tolist()
    assert nodes == [x.tolist() for x in sample_node_masks([12, 30], [0.25, 0.5], 5, 99)]


# ---- exact-k uniform ---------------------------------------------------------------------------

def test_uniform_exactly_k_per_row(device):
    masks = uniform_k_masks(50, 333, 100, 1, device=device)
    assert masks.dtype == torch.bool and masks.shape == (50, 333)
    assert torch.equal(masks.sum(1).cpu(), torch.full((50,), 100))
    per_row = torch.arange(50) * 6
    masks = uniform_k_masks(50, 333, per_row.to(device), 1, device=device)
    assert torch.equal(masks.sum(1).cpu(), per_row)
    assert uniform_k_masks(4, 9, 9, 1, device=device).all()
    assert not uniform_k_masks(4, 9, 0, 1, device=device).any()


def test_uniform_inclusion_frequencies_match_k_over_n(device):
    rows, n, k = 4000, 24, 7
    counts = uniform_k_masks(rows, n, k, 12345, device=device).sum(0).double().cpu().numpy()
    p = k / n
    # Exact-k rows: the column counts have covariance B p (1 - p) n / (n - 1) (I - 11'/n).
    statistic = ((counts - rows * p) ** 2).sum() / (rows * p * (1 - p) * n / (n - 1))
    assert scipy.stats.chi2.sf(statistic, n - 1) > 1e-3


def test_uniform_subsets_are_equally_likely(device):
    rows, n, k = 20000, 6, 3
    masks = uniform_k_masks(rows, n, k, 777, device=device).cpu()
    codes = (masks.long() << torch.arange(n)).sum(1)
    subsets = [sum(1 << j for j in c) for c in itertools.combinations(range(n), k)]
    observed = [(codes == s).sum().item() for s in subsets]
    assert sum(observed) == rows
    assert scipy.stats.chisquare(observed).pvalue > 1e-3


def test_uniform_seed_stream_and_batch_split(device):
    whole = uniform_k_masks(37, 101, 40, 5, device=device)
    assert torch.equal(whole, uniform_k_masks(37, 101, 40, 5, device=device))
    assert not torch.equal(whole, uniform_k_masks(37, 101, 40, 6, device=device))
    assert not torch.equal(whole, uniform_k_masks(37, 101, 40, 5, stream=1, device=device))
    chunks = [uniform_k_masks(stop - start, 101, 40, 5, first_candidate=start, device=device)
              for start, stop in ((0, 10), (10, 11), (11, 37))]
    assert torch.equal(torch.cat(chunks), whole)
    # Candidates are not rows: every row of a batch is a different candidate.
    assert len({tuple(row.tolist()) for row in whole.cpu()}) == 37


def test_uniform_packed_equals_pack_of_bool(device):
    for n in (1, 8, 13, 64, 100):
        k = _counts(7, n, seed=n).to(device)
        bools = uniform_k_masks(7, n, k, 3, device=device)
        packed = uniform_k_masks(7, n, k, 3, packed=True, device=device)
        assert packed.dtype == torch.uint8 and packed.shape == (7, (n + 7) // 8)
        assert torch.equal(packed, pack_mask(bools))


def test_uniform_large_seeds_wrap_to_64_bits():
    assert torch.equal(uniform_k_masks(3, 50, 10, (1 << 64) - 1), uniform_k_masks(3, 50, 10, -1))
    assert not torch.equal(uniform_k_masks(3, 50, 10, 1 << 32), uniform_k_masks(3, 50, 10, 0))


# ---- top-k of scores ---------------------------------------------------------------------------

def test_topk_breaks_ties_by_lower_index(device):
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0],
                           [0.0, -0.0, 0.0, -1.0, -1.0],
                           [-0.0, 0.0, -inf, -inf, -inf],
                           [1.0, nan, inf, nan, 3.0]], device=device)
    expected = torch.tensor([[0, 1, 1, 0, 0],
                             [1, 1, 0, 0, 0],
                             [1, 0, 0, 0, 0],
                             [0, 1, 1, 1, 0]], dtype=torch.bool)
    k = torch.tensor([2, 2, 1, 3])
    assert torch.equal(topk_masks(scores, k).cpu(), expected)
    assert torch.equal(_reference.topk_mask(scores.cpu(), k), expected)


def test_topk_matches_torch_topk_and_batch_shapes(device):
    scores = torch.randn(2, 3, 50, generator=torch.Generator().manual_seed(1)).to(device)
    mask = topk_masks(scores, 7)
    expected = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(7).indices, True)
    assert torch.equal(mask, expected)
    one_row = topk_masks(scores[0, 0], torch.tensor(4))
    assert one_row.shape == (50,) and one_row.sum() == 4
    assert torch.equal(topk_masks(scores.transpose(0, 1), 7), expected.transpose(0, 1))
    assert torch.equal(topk_masks(scores, 7, packed=True), pack_mask(expected))


# ---- Gumbel-top-k ------------------------------------------------------------------------------

def test_gumbel_first_pick_frequencies_match_weights(device):
    rows = 20000
    weights = torch.tensor([0.5, 0.0, 3.0, 1.0, 2.0, 0.0, 0.25, 1.25])
    masks = gumbel_topk_masks(weights.expand(rows, -1).to(device), 1, 31337).cpu()
    observed = masks.sum(0)
    assert observed.sum() == rows and observed[weights == 0].sum() == 0
    positive = weights > 0
    expected = rows * weights[positive] / weights.sum()
    assert scipy.stats.chisquare(observed[positive].numpy(), expected.numpy()).pvalue > 1e-3


def test_gumbel_never_picks_zero_weights_and_is_reproducible(device):
    weights = _weights(30, 64, torch.float32, seed=2).to(device)
    k = (weights > 0).sum(1)
    masks = gumbel_topk_masks(weights, k, 4)
    assert torch.equal(masks, weights > 0)
    k = torch.minimum(k, torch.tensor(10, device=device))
    whole = gumbel_topk_masks(weights, k, 4)
    assert torch.equal(whole.sum(1), k)
    assert torch.equal(whole, gumbel_topk_masks(weights, k, 4))
    assert not torch.equal(whole, gumbel_topk_masks(weights, k, 5))
    halves = [gumbel_topk_masks(weights[a:b], k[a:b], 4, first_candidate=a) for a, b in ((0, 13), (13, 30))]
    assert torch.equal(torch.cat(halves), whole)
    assert torch.equal(gumbel_topk_masks(weights, k, 4, packed=True), pack_mask(whole))
    # A negative zero is a zero weight.
    assert not gumbel_topk_masks(torch.tensor([-0.0, 1.0, 1.0], device=device), 2, 0)[0]


# ---- node masks --------------------------------------------------------------------------------

def test_node_masks_exact_counts_layers_and_chunks(device):
    sizes, sparsity = [64, 64, 10], [0.5, 0.5, 0.95]
    masks = sample_node_masks(sizes, sparsity, 20, 3, device=device)
    for mask, n, s in zip(masks, sizes, sparsity):
        assert mask.shape == (20, n) and mask.device.type == device.type
        assert torch.equal(mask.sum(1).cpu(), torch.full((20,), kept_nodes(n, s)))
    assert not torch.equal(masks[0], masks[1])  # layers are independent streams
    first = sample_node_masks(sizes, sparsity, 8, 3, device=device)
    rest = sample_node_masks(sizes, sparsity, 12, 3, first_candidate=8, device=device)
    for mask, a, b in zip(masks, first, rest):
        assert torch.equal(torch.cat([a, b]), mask)
    assert torch.equal(masks[1], uniform_k_masks(20, 64, 32, 3, stream=1, device=device))
    packed = sample_node_masks(sizes, sparsity, 20, 3, device=device, packed=True)
    assert all(torch.equal(p, pack_mask(m)) for p, m in zip(packed, masks))
    assert [m.sum(1)[0].item() for m in sample_node_masks([10, 10], 0.3, 2, 1)] == [7, 7]


# ---- checks ------------------------------------------------------------------------------------

@pytest.mark.skipif(not has_native_kernel("uniform_k_mask", "cpu"), reason="extension not built")
def test_opcheck_native_ops():
    k = torch.tensor([3, 0, 5])
    scores = torch.randn(3, 10)
    weights = torch.rand(3, 10) + 0.1
    cases = [
        (torch.ops.sparsenas.uniform_k_mask.default, (k, 10, 1, 2, 3, False)),
        (torch.ops.sparsenas.uniform_k_mask.default, (k, 10, 1, 2, 3, True)),
        (torch.ops.sparsenas.topk_mask.default, (scores, k, False)),
        (torch.ops.sparsenas.gumbel_topk_mask.default, (weights, k, 5, 0, 0, True)),
        (torch.ops.sparsenas.philox4x32_10.default,
         (torch.randint(0, 1 << 32, (6, 4)), torch.randint(0, 1 << 32, (6, 2)))),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def _bad_inputs():
    scores = torch.randn(3, 8)
    weights = torch.rand(3, 8)
    return [
        (lambda: uniform_k_masks(3, 8, 9, 0), ValueError, "'k'"),
        (lambda: uniform_k_masks(3, 8, -1, 0), ValueError, "'k'"),
        (lambda: uniform_k_masks(3, 8, torch.tensor([1, 2]), 0), ValueError, "'k'"),
        (lambda: uniform_k_masks(3, 8, torch.tensor([1, 2, 9]), 0), ValueError, "'k'"),
        (lambda: uniform_k_masks(3, 8, torch.tensor([1.0, 2.0, 3.0]), 0), TypeError, "'k'"),
        (lambda: uniform_k_masks(3, 8, 2.5, 0), TypeError, "'k'"),
        (lambda: uniform_k_masks(3, 8, 2, 0.5), TypeError, "'seed'"),
        (lambda: uniform_k_masks(3, 8, 2, 1 << 64), ValueError, "'seed'"),
        (lambda: uniform_k_masks(-1, 8, 2, 0), ValueError, "'num_candidates'"),
        (lambda: uniform_k_masks(3, 8, 2, 0, first_candidate=-1), ValueError, "'first_candidate'"),
        (lambda: uniform_k_masks(3, 8, 2, 0, stream=1 << 24), ValueError, "'stream'"),
        (lambda: topk_masks(scores, 9), ValueError, "'k'"),
        (lambda: topk_masks(scores, torch.tensor([1, 2])), ValueError, "'k'"),
        (lambda: topk_masks(scores.long(), 2), TypeError, "'scores'"),
        (lambda: gumbel_topk_masks(weights.int(), 2, 0), TypeError, "'weights'"),
        (lambda: gumbel_topk_masks(weights - 0.5, 2, 0), ValueError, "'weights'"),
        (lambda: gumbel_topk_masks(weights.masked_fill(weights < 2, float("nan")), 1, 0),
         ValueError, "'weights'"),
        (lambda: gumbel_topk_masks(torch.tensor([[0.0, 1.0, 0.0]]), 2, 0), ValueError, "'k'"),
        (lambda: sample_node_masks([8, 8], 1.0, 2, 0), ValueError, "'sparsity'"),
        (lambda: sample_node_masks([8, 8], [0.5, -0.1], 2, 0), ValueError, "'sparsity'"),
        (lambda: sample_node_masks([8, 8], [0.5], 2, 0), ValueError, "'sparsity'"),
        (lambda: sample_node_masks([8, 0], 0.5, 2, 0), ValueError, "'layer_sizes'"),
        (lambda: philox4x32_10(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long)),
         ValueError, "'counter'"),
        (lambda: philox4x32_10(torch.zeros(2, 4), torch.zeros(2, 2, dtype=torch.long)),
         TypeError, "'counter'"),
        (lambda: philox4x32_10(torch.zeros(2, 4, dtype=torch.long), torch.full((2, 2), 1 << 32)),
         ValueError, "'key'"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_inputs_raise_naming_the_argument(case):
    call, error, match = _bad_inputs()[case]
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("op", ["uniform_k_mask", "topk_mask", "gumbel_topk_mask"])
def test_native_and_reference_reject_bad_counts(op):
    scores = torch.rand(2, 5)
    calls = {
        "uniform_k_mask": lambda impl, k: impl.uniform_k_mask(k, 5, 0),
        "topk_mask": lambda impl, k: impl.topk_mask(scores, k),
        "gumbel_topk_mask": lambda impl, k: impl.gumbel_topk_mask(scores, k, 0),
    }
    impls = [_reference] + ([torch.ops.sparsenas] if has_native_kernel(op, "cpu") else [])
    for impl in impls:
        with pytest.raises(ValueError, match="'k'"):
            calls[op](impl, torch.tensor([1, 6]))
        with pytest.raises(TypeError, match="'k'"):
            calls[op](impl, torch.tensor([1, 2], dtype=torch.int32))
    if op != "uniform_k_mask":
        for impl in impls:
            with pytest.raises(ValueError, match="'k'"):
                calls[op](impl, torch.tensor([1, 2, 3]))
