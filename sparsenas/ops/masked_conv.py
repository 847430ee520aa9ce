"""Masked conv2d: public API, fake kernels and autograd over ``torch.ops.sparsenas.masked_conv2d``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair

from sparsenas._extension import has_native_kernel, native
from sparsenas.ops import _reference


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
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if has_native_kernel("masked_conv2d", x.device.type):
        return torch.ops.sparsenas.masked_conv2d(
            x, weight, mask, bias, stride, padding, dilation, groups, packed)
    return _reference.masked_conv2d(x, weight, mask, bias, stride, padding, dilation, groups, packed)


def _conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_fake_devices(op: str, tensors: dict[str, Tensor | None]) -> None:
    # A tensor on the meta device next to real ones dispatches to the fake kernel, so the fake
    # repeats the native kernel's device check instead of returning an uninitialised tensor.
    x = tensors["x"]
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != x.device:
            raise ValueError(f"{op}(): argument '{name}' must be on the same device as 'x' "
                             f"({x.device}), got a tensor on {tensor.device}")


if native is not None:

    @torch.library.register_fake("sparsenas::masked_conv2d")
    def _masked_conv2d_fake(x, weight, mask, bias, stride, padding, dilation, groups, packed=False):
        _check_fake_devices("masked_conv2d", {"x": x, "weight": weight, "mask": mask, "bias": bias})
        kh, kw = weight.shape[-2:]
        height = _conv_output_size(x.shape[-2], kh, stride[0], padding[0], dilation[0])
        width = _conv_output_size(x.shape[-1], kw, stride[1], padding[1], dilation[1])
        return x.new_empty((*x.shape[:-3], weight.shape[-4], height, width))

    @torch.library.register_fake("sparsenas::masked_conv2d_backward")
    def _masked_conv2d_backward_fake(grad, x, weight, mask, bias_sizes, stride, padding, dilation,
                                     groups, packed, output_mask):
        _check_fake_devices("masked_conv2d_backward",
                            {"x": x, "grad": grad, "weight": weight, "mask": mask})
        shapes = (x.shape, weight.shape, mask.shape, bias_sizes)
        return tuple(x.new_empty(shape) if wanted else x.new_empty((0,))
                     for wanted, shape in zip(output_mask, shapes))

    def _masked_conv2d_setup(ctx, inputs, output):
        x, weight, mask, bias, stride, padding, dilation, groups, packed = inputs
        ctx.save_for_backward(x, weight, mask)
        ctx.conv_args = (stride, padding, dilation, groups, packed)
        ctx.bias_shape = None if bias is None else list(bias.shape)

    def _masked_conv2d_backward(ctx, grad):
        x, weight, mask = ctx.saved_tensors
        stride, padding, dilation, groups, packed = ctx.conv_args
        needs = ctx.needs_input_grad
        output_mask = [needs[0], needs[1], needs[2] and mask.is_floating_point(),
                       ctx.bias_shape is not None and needs[3]]
        grads = torch.ops.sparsenas.masked_conv2d_backward(
            grad, x, weight, mask, ctx.bias_shape, stride, padding, dilation, groups, packed,
            output_mask)
        grad_x, grad_weight, grad_mask, grad_bias = (g if wanted else None
                                                     for g, wanted in zip(grads, output_mask))
        return grad_x, grad_weight, grad_mask, grad_bias, None, None, None, None, None

    torch.library.register_autograd(
        "sparsenas::masked_conv2d", _masked_conv2d_backward, setup_context=_masked_conv2d_setup
    )

    def _masked_conv2d_double_backward(ctx, *grads):
        # Without this, autograd would differentiate through the kernel's inner aten calls only
        # and return silently wrong second derivatives.
        raise NotImplementedError(
            "masked_conv2d(): double backward (differentiating gradients taken with "
            "create_graph=True) is not supported")

    torch.library.register_autograd("sparsenas::masked_conv2d_backward",
                                    _masked_conv2d_double_backward)
