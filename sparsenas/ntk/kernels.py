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
"""

from __future__ import annotations

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

    @torch.library.register_fake("sparsenas::ntk_masked_block_")
    def _ntk_masked_block_fake(out, a, b, mask, bias=True, sum_outputs=False):
        _checks.ntk_masked_block(out, a, b, mask, bias, sum_outputs)
        return None
