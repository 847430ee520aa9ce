"""masked_conv2d: native kernels against the reference, gradients, opcheck and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from sparsenas._extension import has_native_kernel
from sparsenas.ops import _reference, masked_conv2d, pack_mask


@pytest.fixture(autouse=True)
def _exact_float32_convolutions():
    # cuDNN may run float32 convolutions in TF32 (10-bit mantissa); the comparisons here are
    # between different convolution calls, so they need full float32 on both sides.
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous

# (N, C, H, W, out, kh, kw, stride, padding, dilation, groups)
CONFIGS = [
    (2, 4, 8, 8, 6, 3, 3, 1, 1, 1, 1),
    (2, 6, 9, 7, 4, 3, 2, (2, 1), (1, 0), 1, 2),
    (1, 4, 10, 10, 4, 3, 3, 1, 2, 2, 1),
    (2, 4, 7, 7, 8, 3, 3, 1, 1, 1, 4),  # depthwise, channel multiplier 2
    (3, 5, 4, 4, 3, 1, 1, 1, 0, 1, 1),
]
TOLERANCES = {torch.float32: (1e-4, 1e-4), torch.float64: (1e-10, 1e-10),
              torch.bfloat16: (3e-2, 3e-2), torch.float16: (4e-3, 4e-3)}


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def _inputs(config, device, dtype, mask_format="bool", candidates=None, weight_per_candidate=False,
            bias_per_candidate=False, seed=0):
    N, C, H, W, out, kh, kw, stride, padding, dilation, groups = config
    gen = torch.Generator().manual_seed(seed)
    lead = () if candidates is None else (candidates,)
    x = torch.randn(*lead, N, C, H, W, generator=gen, dtype=torch.float64)
    weight = torch.randn(*(lead if weight_per_candidate else ()), out, C // groups, kh, kw,
                         generator=gen, dtype=torch.float64)
    mask_shape = (*lead, out, C // groups, kh, kw)
    if mask_format == "soft":
        mask = torch.rand(mask_shape, generator=gen, dtype=torch.float64).to(dtype)
    else:
        mask = torch.rand(mask_shape, generator=gen) < 0.6
        if mask_format == "uint8":
            mask = mask.to(torch.uint8)
        elif mask_format == "packed":
            mask = pack_mask(mask.flatten(-3))
    bias = torch.randn(*(lead if bias_per_candidate else ()), out, generator=gen,
                       dtype=torch.float64)
    tensors = [t.to(device=device, dtype=dtype) for t in (x, weight, bias)]
    geometry = (_pair(stride), _pair(padding), _pair(dilation), groups)
    return tensors[0], tensors[1], mask.to(device), tensors[2], geometry


def test_native_kernel_is_built(device):
    assert has_native_kernel("masked_conv2d", device.type)
    assert has_native_kernel("masked_conv2d_backward", device.type)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mask_format", ["bool", "uint8", "soft", "packed"])
def test_forward_matches_reference(device, config, dtype, mask_format):
    x, weight, mask, bias, geometry = _inputs(config, device, dtype, mask_format)
    packed = mask_format == "packed"
    out = masked_conv2d(x, weight, mask, bias, *geometry, packed=packed)
    expected = _reference.masked_conv2d(x, weight, mask, bias, *geometry, packed)
    assert out.shape == expected.shape and out.dtype == dtype
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("mask_format", ["bool", "packed"])
@pytest.mark.parametrize("weight_per_candidate,bias_per_candidate", [(False, False), (True, True)])
def test_candidates_match_reference_and_single_calls(device, config, mask_format,
                                                     weight_per_candidate, bias_per_candidate):
    x, weight, mask, bias, geometry = _inputs(config, device, torch.float32, mask_format, 3,
                                              weight_per_candidate, bias_per_candidate)
    packed = mask_format == "packed"
    out = masked_conv2d(x, weight, mask, bias, *geometry, packed=packed)
    expected = _reference.masked_conv2d(x, weight, mask, bias, *geometry, packed)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    for k in range(3):
        single = masked_conv2d(x[k], weight[k] if weight_per_candidate else weight, mask[k],
                               bias[k] if bias_per_candidate else bias, *geometry, packed=packed)
        torch.testing.assert_close(out[k], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_format", ["bool", "packed", "soft"])
@pytest.mark.parametrize("weight_per_candidate,bias_per_candidate",
                         [(False, False), (False, True), (True, True)])
def test_one_image_per_candidate_matches_single_calls(device, mask_format, weight_per_candidate,
                                                      bias_per_candidate):
    # With one image per candidate the CPU kernels run every candidate in one grouped
    # convolution: each candidate's output and gradients must be those of its own call.
    config = (1, 6, 9, 7, 4, 3, 2, (2, 1), (1, 0), 1, 2)
    x, weight, mask, bias, geometry = _inputs(config, device, torch.float64, mask_format, 3,
                                              weight_per_candidate, bias_per_candidate)
    packed = mask_format == "packed"
    x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    leaves = [x, weight, bias] + ([mask] if mask_format == "soft" else [])
    for leaf in leaves:
        leaf.requires_grad_()
    out = masked_conv2d(x, weight, mask, bias, *geometry, packed=packed)
    single = torch.stack([
        masked_conv2d(x[k], weight[k] if weight_per_candidate else weight, mask[k],
                      bias[k] if bias_per_candidate else bias, *geometry, packed=packed)
        for k in range(3)])
    torch.testing.assert_close(out, single)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64).to(device)
    for got, want in zip(torch.autograd.grad(out, leaves, grad_out),
                         torch.autograd.grad(single, leaves, grad_out)):
        torch.testing.assert_close(got, want)


def _gradients(fn, tensors, grad_out):
    out = fn(*tensors)
    return torch.autograd.grad(out, [t for t in tensors if t.requires_grad], grad_out)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("candidates,weight_per_candidate,bias_per_candidate",
                         [(None, False, False), (2, False, False), (2, True, True)])
def test_gradients_match_reference_soft_mask(device, config, dtype, candidates,
                                             weight_per_candidate, bias_per_candidate):
    x, weight, mask, bias, geometry = _inputs(config, device, dtype, "soft", candidates,
                                              weight_per_candidate, bias_per_candidate)
    tensors = [t.requires_grad_() for t in (x, weight, mask, bias)]
    out = masked_conv2d(*tensors, *geometry)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    native = torch.autograd.grad(out, tensors, grad_out)
    expected = _gradients(lambda *t: _reference.masked_conv2d(*t, *geometry), tensors, grad_out)
    atol, rtol = TOLERANCES[dtype]
    scale = 4 if dtype == torch.bfloat16 else 1  # bf16 gradients sum many rounded products
    for name, got, want in zip(["x", "weight", "mask", "bias"], native, expected):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, atol=atol * scale, rtol=rtol * scale, msg=name)


@pytest.mark.parametrize("mask_format", ["bool", "uint8", "packed"])
def test_gradients_with_fixed_mask_are_masked(device, mask_format):
    x, weight, mask, bias, geometry = _inputs(CONFIGS[1], device, torch.float64, mask_format, 2)
    x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()
    packed = mask_format == "packed"
    out = masked_conv2d(x, weight, mask, bias, *geometry, packed=packed)
    grad_out = torch.randn_like(out)
    native = torch.autograd.grad(out, (x, weight, bias), grad_out)
    expected = torch.autograd.grad(
        _reference.masked_conv2d(x, weight, mask, bias, *geometry, packed), (x, weight, bias),
        grad_out)
    for got, want in zip(native, expected):
        torch.testing.assert_close(got, want)


def test_non_contiguous_inputs(device):
    x, weight, mask, bias, geometry = _inputs(CONFIGS[0], device, torch.float32, "soft", 2, True,
                                              True)
    x_nc = x.transpose(-1, -2).contiguous().transpose(-1, -2)[..., ::2, :]
    weight_nc = weight.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    mask_nc = mask.transpose(-1, -2).contiguous().transpose(-1, -2)
    bias_nc = bias.t().contiguous().t()
    assert not (x_nc.is_contiguous() or weight_nc.is_contiguous() or mask_nc.is_contiguous())
    tensors = [t.requires_grad_() for t in (x_nc, weight_nc, mask_nc, bias_nc)]
    out = masked_conv2d(*tensors, *geometry)
    expected = _reference.masked_conv2d(*tensors, *geometry)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    grad_out = torch.randn_like(out).transpose(-1, -2).contiguous().transpose(-1, -2)
    for got, want in zip(torch.autograd.grad(out, tensors, grad_out),
                         torch.autograd.grad(expected, tensors, grad_out)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    channels_last = x[0].contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        masked_conv2d(channels_last, weight[0], mask[0], bias[0], *geometry),
        _reference.masked_conv2d(x[0], weight[0], mask[0], bias[0], *geometry), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("N,C,out,K", [(0, 4, 6, None), (2, 4, 0, None), (2, 4, 6, 0),
                                       (0, 4, 6, 2), (2, 0, 6, None), (2, 0, 6, 2)])
def test_empty_inputs(device, N, C, out, K):
    # F.conv2d rejects some of these (no output or input channels, K = 0 groups), so the
    # expectation is explicit: the output is the bias, every other gradient is zero.
    lead = () if K is None else (K,)
    x = torch.randn(*lead, N, C, 5, 5, device=device, requires_grad=True)
    weight = torch.randn(out, C, 3, 3, device=device, requires_grad=True)
    mask = torch.rand(*lead, out, C, 3, 3, device=device).requires_grad_()
    bias = torch.randn(out, device=device, requires_grad=True)
    y = masked_conv2d(x, weight, mask, bias, padding=1)
    assert y.shape == (*lead, N, out, 5, 5)
    torch.testing.assert_close(y, bias.detach().view(out, 1, 1).expand(y.shape))
    grads = torch.autograd.grad(y.sum(), (x, weight, mask, bias))
    for got, tensor in zip(grads[:3], (x, weight, mask)):
        torch.testing.assert_close(got, torch.zeros_like(tensor))
    torch.testing.assert_close(grads[3], torch.full_like(bias, y.numel() / max(out, 1)))


@pytest.mark.parametrize("groups,channels", [(1, 44445), (4, 120000)])
def test_filters_larger_than_the_workspace_are_split_into_blocks(device, groups, channels):
    # More than 2^20 filter elements per call: blocks of output channels within one group, or
    # blocks of several whole groups.
    gen = torch.Generator().manual_seed(0)
    out = 3 if groups == 1 else 4
    x = torch.randn(1, channels, 3, 3, generator=gen).to(device).requires_grad_()
    weight = torch.randn(out, channels // groups, 3, 3, generator=gen).to(device).requires_grad_()
    mask = torch.rand(weight.shape, generator=gen).to(device) < 0.5
    y = masked_conv2d(x, weight, mask, groups=groups)
    expected = _reference.masked_conv2d(x, weight, mask, groups=groups)
    torch.testing.assert_close(y, expected, atol=1e-3, rtol=1e-4)
    grad_out = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, (x, weight), grad_out),
                         torch.autograd.grad(expected, (x, weight), grad_out)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("candidates", [None, 2])
def test_gradcheck_float64(device, candidates):
    config = (1, 2, 4, 4, 2, 2, 2, 2, 1, 1, 2)
    x, weight, mask, bias, geometry = _inputs(config, device, torch.float64, "soft", candidates,
                                              weight_per_candidate=False,
                                              bias_per_candidate=candidates is not None)
    tensors = [t.requires_grad_() for t in (x, weight, mask, bias)]
    assert torch.autograd.gradcheck(lambda *t: masked_conv2d(*t, *geometry), tensors)


def test_double_backward_raises_instead_of_returning_wrong_values(device):
    x, weight, mask, bias, geometry = _inputs(CONFIGS[0], device, torch.float64, "soft")
    x.requires_grad_(), weight.requires_grad_()
    out = masked_conv2d(x, weight, mask, bias, *geometry)
    (grad_x,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        grad_x.sum().backward()


def _opcheck_samples(device):
    samples = []
    small, grouped = (1, 2, 4, 4, 2, 2, 2, 1, 1, 1, 1), (1, 4, 5, 4, 4, 3, 2, 2, (1, 0), 1, 2)
    for config, mask_format, candidates in [(small, "soft", None), (grouped, "packed", 2)]:
        x, weight, mask, bias, geometry = _inputs(config, device, torch.float32, mask_format,
                                                  candidates)
        x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()
        if mask_format == "soft":
            mask.requires_grad_()
        samples.append((x, weight, mask, bias, *map(list, geometry[:3]), geometry[3],
                        mask_format == "packed"))
    return samples


def test_opcheck(device):
    for args in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.sparsenas.masked_conv2d, args)
        x, weight, mask, bias, stride, padding, dilation, groups, packed = args
        out = torch.ops.sparsenas.masked_conv2d(*args)
        grad = torch.randn_like(out)
        output_mask = [True, True, mask.is_floating_point(), True]
        torch.library.opcheck(
            torch.ops.sparsenas.masked_conv2d_backward,
            (grad, x.detach(), weight.detach(), mask.detach(), list(bias.shape), stride, padding,
             dilation, groups, packed, output_mask))


def _bad_inputs():
    x = torch.randn(2, 4, 6, 6)
    w = torch.randn(6, 4, 3, 3)
    m = torch.ones(6, 4, 3, 3, dtype=torch.bool)
    b = torch.randn(6)
    ok = dict(x=x, weight=w, mask=m, bias=b, stride=1, padding=1, dilation=1, groups=1,
              packed=False)
    xk = torch.randn(3, 2, 4, 6, 6)
    mk = torch.ones(3, 6, 4, 3, 3, dtype=torch.bool)
    return [
        ("integer x", dict(x=x.long()), TypeError, "'x'"),
        ("weight dtype", dict(weight=w.double()), TypeError, "'weight'"),
        ("bias dtype", dict(bias=b.double()), TypeError, "'bias'"),
        ("mask dtype", dict(mask=m.long()), TypeError, "'mask'"),
        ("soft mask of another dtype", dict(mask=m.double()), TypeError, "'mask'"),
        ("packed mask not uint8", dict(mask=m.flatten(1), packed=True), TypeError, "'mask'"),
        ("x 3-D", dict(x=x[0]), ValueError, "'x'"),
        ("weight 3-D", dict(weight=w[0]), ValueError, "'weight'"),
        ("weight in-channels", dict(weight=w[:, :3], mask=m[:, :3]), ValueError, "'weight'"),
        ("groups not dividing channels", dict(groups=3, weight=w[:, :1], mask=m[:, :1]),
         ValueError, "'groups'"),
        ("groups not dividing out channels",
         dict(groups=4, weight=w[:, :1], mask=m[:, :1]), ValueError, "'groups'"),
        ("groups zero", dict(groups=0), ValueError, "'groups'"),
        ("mask wrong shape", dict(mask=m[:, :, :2]), ValueError, "'mask'"),
        ("mask wrong rank", dict(mask=m[0]), ValueError, "'mask'"),
        ("packed mask wrong width", dict(mask=pack_mask(m.flatten(1))[:, :3], packed=True),
         ValueError, "'mask'"),
        ("mask K for single x", dict(mask=mk), ValueError, "'mask'"),
        ("mask K mismatch", dict(x=xk, mask=mk[:2]), ValueError, "'mask'"),
        ("weight K mismatch", dict(x=xk, mask=mk, weight=w.expand(2, -1, -1, -1, -1)), ValueError,
         "'weight'"),
        ("bias K mismatch", dict(x=xk, mask=mk, bias=b.expand(2, -1)), ValueError, "'bias'"),
        ("bias wrong size", dict(bias=b[:5]), ValueError, "'bias'"),
        ("stride zero", dict(stride=0), ValueError, "'stride'"),
        ("negative padding", dict(padding=-1), ValueError, "'padding'"),
        ("dilation zero", dict(dilation=0), ValueError, "'dilation'"),
        ("output size zero", dict(padding=0, dilation=4), ValueError, "'x'"),
        ("mask on another device", dict(mask=m.to("meta")), ValueError, "'mask'"),
        ("weight on another device", dict(weight=w.to("meta")), ValueError, "'weight'"),
        ("bias on another device", dict(bias=b.to("meta")), ValueError, "'bias'"),
    ], ok


BAD_INPUTS, OK_ARGS = _bad_inputs()


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_clear_errors(case):
    _, override, error, argument = case
    args = dict(OK_ARGS, **override)
    masked_conv2d(**OK_ARGS)  # the unmodified arguments are valid
    with pytest.raises(error, match=argument):
        masked_conv2d(**args)
