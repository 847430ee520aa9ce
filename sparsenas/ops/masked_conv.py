"""Masked conv2d: public API and fake kernels over ``torch.ops.sparsenas.masked_conv2d`` (its
autograd is registered in C++, csrc/ops/masked_conv2d_autograd.cpp; the gradient op's own
registration below only refuses double backward)."""

from __future__ import annotations

import torch
from torch import Tensor

from sparsenas._extension import has_native_kernel, native
from sparsenas.ops import _checks, _reference


def masked_conv2d(
    x: Tensor,
    weight: Tensor,
    mask: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    packed: bool = False,
) -> Tensor:
    """conv2d(x, W ⊙ M) + b for one mask or K candidate masks in one call.

    Shapes:
        single mask:   x [N, C, H, W], weight [out, C / groups, kh, kw], mask like weight,
                       bias [out] -> [N, out, H', W']
        K candidates:  x [K, N, C, H, W], weight [out, C / groups, kh, kw] or [K, out, ...],
                       mask [K, out, C / groups, kh, kw], bias [out] or [K, out]
                       -> [K, N, out, H', W']

    ``mask`` is bool / uint8 (fixed), floating with the weight's dtype (soft, differentiable), or
    with ``packed=True`` uint8 [(K,) out, ceil(C / groups * kh * kw / 8)] from :func:`pack_mask`
    applied to the mask flattened per output channel.

    ``stride``, ``dilation`` (>= 1) and ``padding`` (>= 0) are ints or (height, width) pairs below
    2^31, and the padded input and the dilated kernel must stay below 2^31 per dimension. The
    edge semantics of the mask are those of :func:`sparsenas.ops.masked_linear`: a uint8 mask
    value of 2 scales its weight by 2, and an inf or NaN weight that is masked out gives NaN.
    All tensors must be on one CPU or CUDA device (a meta tensor is refused).
    """
    op = "masked_conv2d"
    if has_native_kernel(op, _checks.kernel_device(op, "x", x)):
        _checks.native_arguments(op, (("weight", weight), ("mask", mask)), (("bias", bias),),
                                 (("packed", packed),))
        return torch.ops.sparsenas.masked_conv2d(
            x, weight, mask, bias, _checks.conv_pair(op, "stride", stride, 1),
            _checks.conv_pair(op, "padding", padding, 0),
            _checks.conv_pair(op, "dilation", dilation, 1),
            _checks.integer(op, "groups", groups, 1, _checks.INT32_MAX), packed)
    _checks.data_device(op, "x", x)
    stride, padding, dilation, groups = _checks.masked_conv2d(
        x, weight, mask, bias, stride, padding, dilation, groups, packed)
    return _reference.masked_conv2d(x, weight, mask, bias, stride, padding, dilation, groups, packed)


def _conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


if native is not None:

    @torch.library.register_fake("sparsenas::masked_conv2d")
    def _masked_conv2d_fake(x, weight, mask, bias, stride, padding, dilation, groups, packed=False):
        _checks.masked_conv2d(x, weight, mask, bias, stride, padding, dilation, groups, packed)
        kh, kw = weight.shape[-2:]
        height = _conv_output_size(x.shape[-2], kh, stride[0], padding[0], dilation[0])
        width = _conv_output_size(x.shape[-1], kw, stride[1], padding[1], dilation[1])
        return x.new_empty((*x.shape[:-3], weight.shape[-4], height, width))

    @torch.library.register_fake("sparsenas::masked_conv2d_backward")
    def _masked_conv2d_backward_fake(grad, x, weight, mask, bias_sizes, stride, padding, dilation,
                                     groups, packed, output_mask):
        op = "masked_conv2d_backward"
        _checks.masked_conv2d(x, weight, mask, None, stride, padding, dilation, groups, packed,
                              op=op)
        _checks.same_device(op, "grad", grad, "x", x)
        shapes = (x.shape, weight.shape, mask.shape, bias_sizes)
        return tuple(x.new_empty(shape) if wanted else x.new_empty((0,))
                     for wanted, shape in zip(output_mask, shapes))

    def _masked_conv2d_double_backward(ctx, *grads):
        # Without this, autograd would differentiate through the kernel's inner aten calls only
        # and return silently wrong second derivatives.
        raise NotImplementedError(
            "masked_conv2d(): double backward (differentiating gradients taken with "
            "create_graph=True) is not supported")

    torch.library.register_autograd("sparsenas::masked_conv2d_backward",
                                    _masked_conv2d_double_backward)
