import pytest
import torch
import torch.nn.functional as F

from sparsenas._extension import has_native_kernel
from sparsenas.sparse import _reference
from sparsenas.sparse.formats import (CSRWeight, NMLinear, NMWeight, SparseLinear,
                                      magnitude_mask, semi_structured_supported)
from sparsenas.sparse.ops import nm_linear, nm_mask, sparse_linear

TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10),
             torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def random_csr(out, inn, density, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out, inn, generator=generator, dtype=torch.float64)
    mask = torch.rand(out, inn, generator=generator) < density
    return weight.to(dtype).to(device), mask.to(device)


def random_x(shape, dtype, device, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype).to(device)


# (out, in, x shape, density): batch 1 (gather path), padded widths 4 / 8 / 16 / 32, chunked
# > 32, leading dimensions, an all-empty weight.
SHAPES = [(7, 13, (13,), 0.3), (7, 13, (1, 13), 0.3), (33, 40, (3, 40), 0.1),
          (12, 20, (6, 20), 0.4), (16, 64, (2, 8, 64), 0.05), (20, 24, (17, 24), 0.5),
          (9, 10, (70, 10), 0.2), (5, 6, (4, 6), 0.0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("out,inn,x_shape,density", SHAPES)
def test_sparse_linear_matches_dense_with_gradients(device, dtype, out, inn, x_shape, density):
    weight, mask = random_csr(out, inn, density, dtype, device)
    csr = CSRWeight.from_dense(weight, mask)
    torch.testing.assert_close(csr.to_dense(), weight * mask, rtol=0, atol=0)
    x = random_x(x_shape, dtype, device).requires_grad_()
    bias = random_x((out,), dtype, device, seed=2).requires_grad_()
    values = csr.values.clone().requires_grad_()
    y = sparse_linear(x, csr.row_ptr, csr.col_idx, values, bias)
    x_ref = x.detach().double().requires_grad_()
    bias_ref = bias.detach().double().requires_grad_()
    values_ref = csr.values.double().requires_grad_()
    y_ref = _reference.sparse_linear(x_ref, csr.row_ptr, csr.col_idx, values_ref, bias_ref)
    torch.testing.assert_close(y.double(), y_ref, **TOLERANCE[dtype])
    grad = random_x(y.shape, dtype, device, seed=3)
    y.backward(grad)
    y_ref.backward(grad.double())
    for got, want in [(x.grad, x_ref.grad), (values.grad, values_ref.grad),
                      (bias.grad, bias_ref.grad)]:
        torch.testing.assert_close(got.double(), want, **TOLERANCE[dtype])


def test_sparse_linear_non_contiguous_and_empty(device):
    weight, mask = random_csr(12, 10, 0.3, torch.float32, device)
    csr = CSRWeight.from_dense(weight, mask)
    x = random_x((10, 6), torch.float32, device).t()  # [6, 10], non-contiguous
    assert not x.is_contiguous()
    strided_values = torch.stack([csr.values, csr.values], 1)[:, 0]
    torch.testing.assert_close(sparse_linear(x, csr.row_ptr, csr.col_idx, strided_values),
                               F.linear(x, weight * mask))
    empty = sparse_linear(x[:0], csr.row_ptr, csr.col_idx, csr.values)
    assert empty.shape == (0, 12)
    no_inputs = CSRWeight.from_dense(weight[:, :0], mask[:, :0])
    torch.testing.assert_close(
        sparse_linear(x[:, :0], no_inputs.row_ptr, no_inputs.col_idx, no_inputs.values),
        torch.zeros(6, 12, device=device))


def test_sparse_linear_gradcheck(device):
    weight, mask = random_csr(6, 7, 0.4, torch.float64, device)
    csr = CSRWeight.from_dense(weight, mask)
    x = random_x((3, 7), torch.float64, device).requires_grad_()
    values = csr.values.clone().requires_grad_()
    bias = random_x((6,), torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, v, b: sparse_linear(x, csr.row_ptr, csr.col_idx, v, b), (x, values, bias))


def test_nm_linear_gradcheck(device):
    weight = random_x((5, 8), torch.float64, device)
    nm = NMWeight.from_dense(weight, 2, 4)
    x = random_x((3, 8), torch.float64, device).requires_grad_()
    values = nm.values.clone().requires_grad_()
    bias = random_x((5,), torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, v, b: nm_linear(x, v, nm.indices, 4, b), (x, values, bias))


def test_opcheck_native_ops(device):
    if not has_native_kernel("sparse_linear", device.type):
        pytest.fail(f"no native sparse_linear kernel for {device.type}")
    weight, mask = random_csr(6, 8, 0.4, torch.float32, device)
    csr = CSRWeight.from_dense(weight, mask)
    nm = NMWeight.from_dense(weight, 1, 4)
    x = random_x((3, 8), torch.float32, device).requires_grad_()
    bias = random_x((6,), torch.float32, device).requires_grad_()
    values = csr.values.clone().requires_grad_()
    nm_values = nm.values.clone().requires_grad_()
    ops = torch.ops.sparsenas
    torch.library.opcheck(ops.sparse_linear, (x, csr.row_ptr, csr.col_idx, values, bias))
    torch.library.opcheck(ops.nm_linear, (x, nm_values, nm.indices, 4, bias))
    # The ops without autograd: schema and fake checks (the AOT-dispatch check is the slow one and
    # adds nothing for them).
    light = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.nm_mask, (weight, 2, 4), test_utils=light)
    grad = random_x((3, 6), torch.float32, device)
    torch.library.opcheck(ops.sparse_linear_backward,
                          (grad, x.detach(), csr.row_ptr, csr.col_idx, csr.values, [True, True]),
                          test_utils=light)
    torch.library.opcheck(ops.nm_linear_backward,
                          (grad, x.detach(), nm.values, nm.indices, 4, [True, False]),
                          test_utils=light)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 3), (0, 2), (4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_nm_mask_keeps_exactly_n_largest(device, n, m, dtype):
    weight = random_x((6, 4 * m), dtype, device)
    mask = nm_mask(weight, n, m)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert bool((mask.unflatten(-1, (-1, m)).sum(-1) == n).all())
    torch.testing.assert_close(mask, _reference.nm_mask(weight, n, m), rtol=0, atol=0)
    groups = weight.abs().unflatten(-1, (-1, m)).double()
    kept = mask.unflatten(-1, (-1, m))
    if 0 < n < m:
        smallest_kept = groups.masked_fill(~kept, float("inf")).amin(-1)
        largest_dropped = groups.masked_fill(kept, -1.0).amax(-1)
        assert bool((smallest_kept >= largest_dropped).all())


def test_nm_mask_ties_and_nan(device):
    weight = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                           [0.5, float("nan"), 2.0, -2.0, 3.0, 1.0, float("nan"), 3.0]],
                          device=device)
    expected = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 1, 0, 1, 0]],
                            dtype=torch.bool, device=device)
    assert torch.equal(nm_mask(weight, 2, 4), expected)
    assert torch.equal(_reference.nm_mask(weight, 2, 4), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("x_shape,n,m", [((1, 16), 2, 4), ((5, 16), 1, 4), ((2, 3, 16), 4, 8),
                                         ((40, 16), 2, 4), ((0, 16), 2, 4)])
def test_nm_linear_matches_dense_with_gradients(device, dtype, x_shape, n, m):
    weight = random_x((9, 16), dtype, device)
    nm = NMWeight.from_dense(weight, n, m)
    torch.testing.assert_close(nm.to_dense(), weight * nm_mask(weight, n, m), rtol=0, atol=0)
    x = random_x(x_shape, dtype, device).requires_grad_()
    values = nm.values.clone().requires_grad_()
    bias = random_x((9,), dtype, device, seed=2).requires_grad_()
    y = nm_linear(x, values, nm.indices, m, bias)
    x_ref = x.detach().double().requires_grad_()
    values_ref = nm.values.double().requires_grad_()
    y_ref = _reference.nm_linear(x_ref, values_ref, nm.indices, m, bias.detach().double())
    torch.testing.assert_close(y.double(), y_ref, **TOLERANCE[dtype])
    grad = random_x(y.shape, dtype, device, seed=3)
    y.backward(grad)
    y_ref.backward(grad.double())
    torch.testing.assert_close(x.grad.double(), x_ref.grad, **TOLERANCE[dtype])
    torch.testing.assert_close(values.grad.double(), values_ref.grad, **TOLERANCE[dtype])


def test_modules_match_masked_linear(device):
    linear = torch.nn.Linear(16, 8).to(device)
    x = random_x((5, 16), torch.float32, device)
    mask = magnitude_mask(linear.weight, 0.75)
    assert int(mask.sum()) == 32
    sparse = SparseLinear.from_linear(linear, mask)
    torch.testing.assert_close(sparse(x), F.linear(x, linear.weight * mask, linear.bias))
    nm = NMLinear.from_linear(linear, 2, 4)
    torch.testing.assert_close(
        nm(x), F.linear(x, linear.weight * nm_mask(linear.weight, 2, 4), linear.bias))
    sparse(x).sum().backward()
    assert sparse.values.grad.shape == sparse.values.shape


def test_semi_structured_path(device):
    weight = random_x((64, 64), torch.float16, device)
    nm = NMWeight.from_dense(weight, 2, 4)
    if not semi_structured_supported(device, torch.float16):
        with pytest.raises(RuntimeError, match="semi-structured"):
            nm.to_semi_structured()
        return
    x = random_x((32, 64), torch.float16, device)
    torch.testing.assert_close(F.linear(x, nm.to_semi_structured()), F.linear(x, nm.to_dense()),
                               rtol=1e-2, atol=1e-2)


def _csr(device):
    weight, mask = random_csr(4, 6, 0.5, torch.float32, device)
    return CSRWeight.from_dense(weight, mask)


BAD_INPUTS = [
    ("nm_mask n > m", lambda d: nm_mask(torch.randn(2, 8, device=d), 5, 4), ValueError, "'n'"),
    ("nm_mask m not dividing", lambda d: nm_mask(torch.randn(2, 6, device=d), 2, 4), ValueError,
     "'m'"),
    ("nm_mask integer weight", lambda d: nm_mask(torch.ones(2, 8, dtype=torch.int32, device=d),
                                                 2, 4), TypeError, "weight"),
    ("nm_linear m not dividing", lambda d: nm_linear(
        torch.randn(3, 6, device=d), torch.randn(2, 2, device=d),
        torch.zeros(2, 2, dtype=torch.uint8, device=d), 4), ValueError, "'m'"),
    ("nm_linear index dtype", lambda d: nm_linear(
        torch.randn(3, 8, device=d), torch.randn(2, 4, device=d),
        torch.zeros(2, 4, dtype=torch.int64, device=d), 4), TypeError, "indices"),
    ("nm_linear index shape", lambda d: nm_linear(
        torch.randn(3, 8, device=d), torch.randn(2, 4, device=d),
        torch.zeros(2, 3, dtype=torch.uint8, device=d), 4), ValueError, "indices"),
    ("nm_linear index >= m", lambda d: nm_linear(
        torch.randn(3, 8, device=d), torch.randn(2, 4, device=d),
        torch.full((2, 4), 7, dtype=torch.uint8, device=d), 4), ValueError, "index"),
    ("x in_features mismatch", lambda d: sparse_linear(
        torch.randn(3, 4, device=d), *_fields(_csr(d))), ValueError, "'col_idx'"),
    ("values dtype", lambda d: sparse_linear(
        torch.randn(3, 6, device=d), *_fields(_csr(d), torch.float64)), TypeError, "values"),
    ("integer x", lambda d: sparse_linear(
        torch.ones(3, 6, dtype=torch.int64, device=d), *_fields(_csr(d))), TypeError, "'x'"),
    ("int64 col_idx", lambda d: sparse_linear(
        torch.randn(3, 6, device=d), _csr(d).row_ptr, _csr(d).col_idx.long(), _csr(d).values),
     TypeError, "col_idx"),
    ("values length", lambda d: sparse_linear(
        torch.randn(3, 6, device=d), _csr(d).row_ptr, _csr(d).col_idx, _csr(d).values[:-1]),
     ValueError, "values"),
    ("bias shape", lambda d: sparse_linear(
        torch.randn(3, 6, device=d), *_fields(_csr(d)), torch.randn(5, device=d)), ValueError,
     "bias"),
    ("row_ptr decreasing", lambda d: sparse_linear(
        torch.randn(3, 6, device=d), _csr(d).row_ptr.flip(0), _csr(d).col_idx, _csr(d).values),
     ValueError, "row_ptr"),
    ("sparsity 1", lambda d: magnitude_mask(torch.randn(4, 4, device=d), 1.0), ValueError,
     "sparsity"),
    ("sparsity negative", lambda d: magnitude_mask(torch.randn(4, 4, device=d), -0.1), ValueError,
     "sparsity"),
    ("N:M mask not exact", lambda d: NMWeight.from_dense(
        torch.randn(2, 8, device=d), 2, 4, torch.ones(2, 8, dtype=torch.bool, device=d)),
     ValueError, "exactly"),
    ("CSR mask shape", lambda d: CSRWeight.from_dense(
        torch.randn(2, 8, device=d), torch.ones(2, 4, dtype=torch.bool, device=d)), ValueError,
     "mask"),
]


def _fields(csr, dtype=None):
    values = csr.values if dtype is None else csr.values.to(dtype)
    return csr.row_ptr, csr.col_idx, values


@pytest.mark.parametrize("name,call,error,match", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_clear_errors(device, name, call, error, match):
    with pytest.raises(error, match=match):
        call(device)


def test_reference_fallback_without_native_kernels(monkeypatch):
    # What SPARSENAS_DISABLE_EXTENSION=1 (or a device without kernels) runs: the references.
    import sparsenas.sparse.ops as ops

    weight, mask = random_csr(8, 12, 0.3, torch.float64, "cpu")
    csr = CSRWeight.from_dense(weight, mask)
    x = random_x((5, 12), torch.float64, "cpu")
    native = (ops.sparse_linear(x, csr.row_ptr, csr.col_idx, csr.values),
              ops.nm_linear(x, *_nm_fields(weight)), ops.nm_mask(weight, 2, 4))
    monkeypatch.setattr(ops, "has_native_kernel", lambda op, device_type: False)
    fallback = (ops.sparse_linear(x, csr.row_ptr, csr.col_idx, csr.values),
                ops.nm_linear(x, *_nm_fields(weight)), ops.nm_mask(weight, 2, 4))
    for got, want in zip(fallback, native):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="'n'"):
        ops.nm_mask(weight, 5, 4)


def _nm_fields(weight):
    nm = NMWeight.from_dense(weight, 2, 4)
    return nm.values, nm.indices, 4
