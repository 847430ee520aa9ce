"""Sparse execution ops: public API over ``torch.ops.sparsenas.*``, fakes and
autograd. Each call runs the native kernel when one exists for the input's device and the
pure-PyTorch reference otherwise."""

from __future__ import annotations

import torch
from torch import Tensor

from sparsenas._extension import has_native_kernel, native
from sparsenas.ops import _checks
from sparsenas.sparse import _reference


def sparse_linear(x: Tensor, row_ptr: Tensor, col_idx: Tensor, values: Tensor,
                  bias: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + b with W [out, in] in CSR form, skipping the zero weights.

    Shapes: x [..., in], row_ptr int32 [out + 1], col_idx int32 [nnz], values [nnz] (x's dtype),
    bias [out] -> y [..., out]. Differentiable in x, values and bias.

    ``row_ptr`` must start at 0, never decrease and end at nnz, and every ``col_idx`` must lie in
    [0, in); a CSR weight that breaks this raises ``ValueError`` (on CUDA, where checking would
    cost a device synchronisation per call, the kernel skips stored indices >= in instead).
    All tensors must be on one CPU or CUDA device (a meta tensor is refused).
    """
    op = "sparse_linear"
    if has_native_kernel(op, _checks.kernel_device(op, "x", x)):
        _checks.native_arguments(op, (("row_ptr", row_ptr), ("col_idx", col_idx),
                                      ("values", values)), (("bias", bias),))
        return torch.ops.sparsenas.sparse_linear(x, row_ptr, col_idx, values, bias)
    _checks.data_device(op, "x", x)
    _checks.sparse_linear(x, row_ptr, col_idx, values, bias)
    _checks.sparse_linear_values(row_ptr, col_idx, x.shape[-1])
    return _reference.sparse_linear(x, row_ptr, col_idx, values, bias)


def nm_linear(x: Tensor, values: Tensor, indices: Tensor, m: int,
              bias: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + b with W [out, in] in N:M form (N stored weights in every M inputs of a row).

    Shapes: x [..., in], values [out, in / m * n] (x's dtype), indices uint8 [out, in / m * n]
    (position of each value inside its group of m), bias [out] -> y [..., out]. Differentiable in
    x, values and bias. ``m`` is in [1, 256] and divides ``in``; every index is below ``m``
    (``ValueError`` otherwise). All tensors must be on one CPU or CUDA device.
    """
    op = "nm_linear"
    if has_native_kernel(op, _checks.kernel_device(op, "x", x)):
        _checks.native_arguments(op, (("values", values), ("indices", indices)), (("bias", bias),))
        return torch.ops.sparsenas.nm_linear(x, values, indices, _checks.integer(op, "m", m), bias)
    _checks.data_device(op, "x", x)
    m = _checks.nm_linear(x, values, indices, m, bias)
    _checks.nm_linear_values(indices, m)
    return _reference.nm_linear(x, values, indices, m, bias)


def nm_mask(weight: Tensor, n: int, m: int) -> Tensor:
    """bool [out, in]: in every group of ``m`` consecutive weights of a row (along the input
    dimension) keep the ``n`` largest |w|; ties go to the lower index, NaN counts as largest.
    ``m`` >= 1 divides ``in`` and 0 <= ``n`` <= ``m``."""
    op = "nm_mask"
    if has_native_kernel(op, _checks.kernel_device(op, "weight", weight)):
        return torch.ops.sparsenas.nm_mask(weight, _checks.integer(op, "n", n),
                                           _checks.integer(op, "m", m))
    _checks.data_device(op, "weight", weight)
    n, m = _checks.nm_mask(weight, n, m)
    return _reference.nm_mask(weight, n, m)


if native is not None:

    @torch.library.register_fake("sparsenas::sparse_linear")
    def _sparse_linear_fake(x, row_ptr, col_idx, values, bias=None):
        _checks.sparse_linear(x, row_ptr, col_idx, values, bias)
        return x.new_empty((*x.shape[:-1], row_ptr.shape[0] - 1))

    @torch.library.register_fake("sparsenas::nm_linear")
    def _nm_linear_fake(x, values, indices, m, bias=None):
        _checks.nm_linear(x, values, indices, m, bias)
        return x.new_empty((*x.shape[:-1], values.shape[0]))

    @torch.library.register_fake("sparsenas::sparse_linear_backward")
    def _sparse_linear_backward_fake(grad, x, row_ptr, col_idx, values, output_mask):
        op = "sparse_linear_backward"
        _checks.sparse_linear(x, row_ptr, col_idx, values, None, op=op)
        _checks.same_device(op, "grad", grad, "x", x)
        return (x.new_empty(x.shape) if output_mask[0] else None,
                values.new_empty(values.shape) if output_mask[1] else None)

    @torch.library.register_fake("sparsenas::nm_linear_backward")
    def _nm_linear_backward_fake(grad, x, values, indices, m, output_mask):
        op = "nm_linear_backward"
        _checks.nm_linear(x, values, indices, m, None, op=op)
        _checks.same_device(op, "grad", grad, "x", x)
        return (x.new_empty(x.shape) if output_mask[0] else None,
                values.new_empty(values.shape) if output_mask[1] else None)

    @torch.library.register_fake("sparsenas::nm_mask")
    def _nm_mask_fake(weight, n, m):
        _checks.nm_mask(weight, n, m)
        return weight.new_empty(weight.shape, dtype=torch.bool)

    def _bias_grad(ctx, grad: Tensor) -> Tensor | None:
        if not ctx.has_bias or not ctx.needs_input_grad[-1]:
            return None
        return grad.reshape(-1, grad.shape[-1]).sum(0)

    def _sparse_linear_setup(ctx, inputs, output):
        x, row_ptr, col_idx, values, bias = inputs
        ctx.save_for_backward(x, row_ptr, col_idx, values)
        ctx.has_bias = bias is not None

    def _sparse_linear_backward(ctx, grad):
        x, row_ptr, col_idx, values = ctx.saved_tensors
        grad_x, grad_values = torch.ops.sparsenas.sparse_linear_backward(
            grad.contiguous(), x, row_ptr, col_idx, values,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[3]])
        return grad_x, None, None, grad_values, _bias_grad(ctx, grad)

    torch.library.register_autograd("sparsenas::sparse_linear", _sparse_linear_backward,
                                    setup_context=_sparse_linear_setup)

    def _nm_linear_setup(ctx, inputs, output):
        x, values, indices, m, bias = inputs
        ctx.save_for_backward(x, values, indices)
        ctx.m = m
        ctx.has_bias = bias is not None

    def _nm_linear_backward(ctx, grad):
        x, values, indices = ctx.saved_tensors
        grad_x, grad_values = torch.ops.sparsenas.nm_linear_backward(
            grad.contiguous(), x, values, indices, ctx.m,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1]])
        return grad_x, grad_values, None, None, _bias_grad(ctx, grad)

    torch.library.register_autograd("sparsenas::nm_linear", _nm_linear_backward,
                                    setup_context=_nm_linear_setup)
