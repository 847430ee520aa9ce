"""NTK block operators: public API, pure-PyTorch references and fake kernels.

Both ops add one layer's contribution to an empirical-NTK matrix in place. Notation: the layer
sees ``a`` [n·T, d] (inputs; T rows per example, e.g. a convolution's output positions after
unfolding) and ``b`` [n·T, O, p] (cotangents of its outputs, one per model output o). Example
i's weight gradient for output o is G_io = Σ_t b_(i,t),o ⊗ a_(i,t); the bias gradient Σ_t b_(i,t),o.

``ntk_gram_block_``:   out[(i,o),(j,o')] += Σ_{t,s} (a_it·a_js + bias) (b_ito·b_jso')
``ntk_masked_block_``: out[(i,o),(j,o')] += Σ_kl M_kl b_iok b_jo'k a_il a_jl (+ Σ_k b_iok b_jo'k
                       with bias), T = 1; the fused kernel never forms per-example gradients.

With ``sum_outputs=True`` the output index is summed out (o' = o): out [n, n]; otherwise out is
[n·O, n·O] with row i·O + o. ``out`` is float32 or float64; inputs are converted to its dtype.

``ntk_gram_kernel`` returns the sum of the Gram-route blocks of several linear maps (without bias
terms: a bias is a column of ones appended to a map's ``a``) as a new matrix; on CPU one pass
over the kernel matrix covers every map, so the matrix is neither zeroed nor re-read per map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sparsenas._extension import has_native_kernel, native
from sparsenas.ops import _checks


def ntk_gram_block_(out: Tensor, a: Tensor, b: Tensor, rows_per_example: int = 1,
                    bias: bool = True, sum_outputs: bool = False) -> None:
    """Adds the Gram-route NTK block of a linear map to ``out`` in place (see module doc).

    Shapes: a [n·T, d], b [n·T, O, p], out [n, n] (sum_outputs) or [n·O, n·O]; T = rows_per_example.
    """
    op = "ntk_gram_block_"
    if has_native_kernel(op, _checks.kernel_device(op, "out", out)):
        _checks.native_arguments(op, (("a", a), ("b", b)), (),
                                 (("bias", bias), ("sum_outputs", sum_outputs)))
        torch.ops.sparsenas.ntk_gram_block_(
            out, a, b, _checks.integer(op, "rows_per_example", rows_per_example), bias,
            sum_outputs)
    else:
        _checks.data_device(op, "out", out)
        rows_per_example = _checks.ntk_gram_block(out, a, b, rows_per_example, bias, sum_outputs)
        out.add_(reference_gram_block(a, b, rows_per_example, bias, sum_outputs, out.dtype))


def ntk_gram_kernel(a: Sequence[Tensor], b: Sequence[Tensor], rows_per_example: Sequence[int],
                    sum_outputs: bool = False, dtype: torch.dtype = torch.float64) -> Tensor:
    """Σ_l of the Gram-route block of (a[l], b[l], rows_per_example[l]) without bias, as a new
    [n, n] (sum_outputs) or [n·O, n·O] matrix of ``dtype`` (float32 or float64).

    Shapes: a[l] [n·T_l, d_l], b[l] [n·T_l, O, p_l] with the same n and O for every map.
    """
    op = "ntk_gram_kernel"
    a, b, rows_per_example = _gram_kernel_arguments(op, a, b, rows_per_example, sum_outputs, dtype)
    if has_native_kernel(op, _checks.kernel_device(op, "a", a[0])):
        return torch.ops.sparsenas.ntk_gram_kernel(a, b, rows_per_example, sum_outputs, dtype)
    rows = a[0].shape[0] // rows_per_example[0] * (1 if sum_outputs else b[0].shape[1])
    out = torch.zeros(rows, rows, dtype=dtype, device=a[0].device)
    for a_l, b_l, T in zip(a, b, rows_per_example):
        ntk_gram_block_(out, a_l, b_l, T, False, sum_outputs)
    return out


def _gram_kernel_arguments(op: str, a: object, b: object, rows_per_example: object,
                           sum_outputs: object, dtype: object) -> tuple[list, list, list]:
    """The rules of ntk_gram_kernel (csrc/ops/ntk.cpp states the same), for both paths."""
    lists = []
    for arg, value in (("a", a), ("b", b), ("rows_per_example", rows_per_example)):
        if isinstance(value, (str, bytes, Tensor)) or not isinstance(value, Sequence):
            raise TypeError(f"{op}(): argument '{arg}' must be a list (one entry per linear map), "
                            f"got {_checks.describe(value)}")
        lists.append(list(value))
    a, b, rows_per_example = lists
    _checks.flag(op, "sum_outputs", sum_outputs)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}(): argument 'dtype' must be float32 or float64 (NTK blocks never "
                        f"accumulate in reduced precision), got {dtype}")
    if not a:
        raise ValueError(f"{op}(): argument 'a' must hold at least one tensor (one per linear "
                         "map), got an empty list")
    if not len(a) == len(b) == len(rows_per_example):
        raise ValueError(f"{op}(): arguments 'a', 'b' and 'rows_per_example' must have one entry "
                         f"per linear map, got {len(a)}, {len(b)} and {len(rows_per_example)}")
    for index, (a_l, b_l) in enumerate(zip(a, b)):
        _checks.tensor(op, f"a[{index}]", a_l)
        _checks.tensor(op, f"b[{index}]", b_l)
        rows_per_example[index] = _checks.integer(op, "rows_per_example", rows_per_example[index])
    _checks.data_device(op, "a[0]", a[0])
    for index, (a_l, b_l, T) in enumerate(zip(a, b, rows_per_example)):
        a_arg, b_arg = f"a[{index}]", f"b[{index}]"
        _checks.floating(op, a_arg, a_l)
        _checks.floating(op, b_arg, b_l)
        _checks.same_device(op, a_arg, a_l, "a[0]", a[0])
        _checks.same_device(op, b_arg, b_l, "a[0]", a[0])
        _checks.dim(op, a_arg, a_l, 2, "[rows, in_features]")
        _checks.dim(op, b_arg, b_l, 3, "[rows, outputs, out_features]")
        _checks.size(op, b_arg, b_l, 0, a_l.shape[0], "rows, from a")
        if T < 1:
            raise ValueError(f"{op}(): argument 'rows_per_example' must hold values >= 1, got {T} "
                             f"at {index}")
        if a_l.shape[0] % T:
            raise ValueError(f"{op}(): argument '{a_arg}' must have a multiple of "
                             f"rows_per_example[{index}] = {T} rows, got {_checks.describe(a_l)}")
        if index == 0:
            examples, outputs = a_l.shape[0] // T, b_l.shape[1]
        _checks.size(op, a_arg, a_l, 0, examples * T, "examples from a[0] × rows_per_example")
        _checks.size(op, b_arg, b_l, 1, outputs, "outputs, from b[0]")
    return a, b, rows_per_example


def ntk_masked_block_(out: Tensor, a: Tensor, b: Tensor, mask: Tensor, bias: bool = True,
                      sum_outputs: bool = False) -> None:
    """Adds Σ_kl M_kl b_iok b_jo'k a_il a_jl (+ the bias term) to ``out`` in place.

    Shapes: a [n, d], b [n, O, p], mask [p, d] (bool, uint8 or floating weights),
    out [n, n] (sum_outputs) or [n·O, n·O].
    """
    op = "ntk_masked_block_"
    if has_native_kernel(op, _checks.kernel_device(op, "out", out)):
        _checks.native_arguments(op, (("a", a), ("b", b), ("mask", mask)), (),
                                 (("bias", bias), ("sum_outputs", sum_outputs)))
        torch.ops.sparsenas.ntk_masked_block_(out, a, b, mask, bias, sum_outputs)
    else:
        _checks.data_device(op, "out", out)
        _checks.ntk_masked_block(out, a, b, mask, bias, sum_outputs)
        out.add_(reference_masked_block(a, b, mask, bias, sum_outputs, out.dtype))


def reference_gram_block(a: Tensor, b: Tensor, rows_per_example: int, bias: bool,
                         sum_outputs: bool, dtype: torch.dtype) -> Tensor:
    """The Gram-route block, computed densely (test oracle and fallback)."""
    T = rows_per_example
    n, (_, O, p) = a.shape[0] // T, b.shape
    A, B = a.to(dtype), b.to(dtype)
    ga = (A @ A.T + float(bias)).view(n, T, n, T)
    if sum_outputs:
        flat = B.reshape(n * T, O * p)
        return (ga * (flat @ flat.T).view(n, T, n, T)).sum((1, 3))
    flat = B.reshape(n * T * O, p)
    gb = (flat @ flat.T).view(n, T, O, n, T, O)
    return (ga[:, :, None, :, :, None] * gb).sum((1, 4)).reshape(n * O, n * O)


def reference_masked_block(a: Tensor, b: Tensor, mask: Tensor, bias: bool, sum_outputs: bool,
                           dtype: torch.dtype) -> Tensor:
    """Σ_kl M_kl b_iok b_jo'k a_il a_jl from materialised per-example gradients (test oracle)."""
    A, B, M = a.to(dtype), b.to(dtype), mask.to(dtype)
    n, O, _ = B.shape
    grads = torch.einsum("iok,il->iokl", B, A)
    block = torch.einsum("iokl,jqkl,kl->ioqj", grads, grads, M)
    if bias:
        block = block + torch.einsum("iok,jqk->ioqj", B, B)
    if sum_outputs:
        return block.diagonal(dim1=1, dim2=2).sum(-1)
    return block.permute(0, 1, 3, 2).reshape(n * O, n * O)


if native is not None:

    @torch.library.register_fake("sparsenas::ntk_gram_block_")
    def _ntk_gram_block_fake(out, a, b, rows_per_example=1, bias=True, sum_outputs=False):
        _checks.ntk_gram_block(out, a, b, rows_per_example, bias, sum_outputs)
        return None

    @torch.library.register_fake("sparsenas::ntk_gram_kernel")
    def _ntk_gram_kernel_fake(a, b, rows_per_example, sum_outputs, dtype):
        rows = a[0].shape[0] // rows_per_example[0] * (1 if sum_outputs else b[0].shape[1])
        return a[0].new_empty((rows, rows), dtype=dtype)

    @torch.library.register_fake("sparsenas::ntk_masked_block_")
    def _ntk_masked_block_fake(out, a, b, mask, bias=True, sum_outputs=False):
        _checks.ntk_masked_block(out, a, b, mask, bias, sum_outputs)
        return None
