"""masked_linear: forward and every gradient against the reference, opcheck, gradcheck,
torch.compile, and a table of bad inputs."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import SUBPROCESS_CWD

from sparsenas._extension import has_native_kernel
from sparsenas.ops import _reference, masked_linear, pack_mask

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
MASK_FORMATS = ["bool", "uint8", "soft", "packed"]
# Forms: (K candidates or None, weight per candidate, bias per candidate).
FORMS = {"single": (None, False, False), "shared": (3, False, False),
         "per_candidate": (2, True, True)}
PATH_VARIABLE = "SPARSENAS_MASKED_LINEAR_PATH"
TOLERANCE = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.float64: dict(atol=1e-10, rtol=1e-10),
             torch.bfloat16: dict(atol=4e-2, rtol=3e-2)}


def make_inputs(device, dtype, mask_format, rows, in_features, out_features, form, *, bias=True,
                seed=0, requires_grad=False):
    """Random (x, weight, mask, bias, packed) for a form of FORMS; x rows has shape ``rows``."""
    K, weight_per_candidate, bias_per_candidate = FORMS[form]
    gen = torch.Generator().manual_seed(seed)
    lead = () if K is None else (K,)
    x = torch.randn(*lead, *rows, in_features, generator=gen, dtype=torch.float64)
    weight = torch.randn(*(lead if weight_per_candidate else ()), out_features, in_features,
                         generator=gen, dtype=torch.float64) / math.sqrt(max(in_features, 1))
    keep = torch.rand(*lead, out_features, in_features, generator=gen) < 0.6
    b = None
    if bias:
        b = torch.randn(*(lead if bias_per_candidate else ()), out_features, generator=gen,
                        dtype=torch.float64)
    packed = mask_format == "packed"
    if mask_format == "bool":
        mask = keep
    elif mask_format == "uint8":
        mask = keep.to(torch.uint8)
    elif mask_format == "soft":
        mask = (torch.rand(keep.shape, generator=gen, dtype=torch.float64) * keep).to(dtype)
    else:
        mask = pack_mask(keep)
    tensors = [t.to(dtype) if t.is_floating_point() else t for t in (x, weight, b)]
    x, weight, b = (None if t is None else t.to(device).requires_grad_(requires_grad)
                    for t in tensors)
    mask = mask.to(device)
    if mask_format == "soft":
        mask.requires_grad_(requires_grad)
    return x, weight, mask, b, packed


def reference_float64(x, weight, mask, bias, packed):
    """The reference on float64 copies, with gradients to the float64 leaves."""
    leaves = [None if t is None else t.detach().double().requires_grad_(t.requires_grad)
              if t.is_floating_point() else t for t in (x, weight, mask, bias)]
    return _reference.masked_linear(*leaves, packed), leaves


def assert_matches_reference(x, weight, mask, bias, packed):
    out = masked_linear(x, weight, mask, bias, packed=packed)
    expected, leaves = reference_float64(x, weight, mask, bias, packed)
    assert out.shape == expected.shape and out.dtype == x.dtype
    tol = TOLERANCE[x.dtype]
    torch.testing.assert_close(out.double(), expected, **tol)
    inputs = [t for t in (x, weight, mask, bias) if t is not None and t.requires_grad]
    if not inputs:
        return
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64)
    grads = torch.autograd.grad(out, inputs, grad_out.to(out.device, out.dtype))
    ref_inputs = [leaf for t, leaf in zip((x, weight, mask, bias), leaves)
                  if t is not None and t.requires_grad]
    ref_grads = torch.autograd.grad(expected, ref_inputs, grad_out.to(expected.device))
    scale = max(1.0, math.sqrt(max(out.numel() // max(out.shape[-1], 1), 1)))
    for grad, ref_grad in zip(grads, ref_grads):
        assert grad.shape == ref_grad.shape and grad.dtype == x.dtype
        torch.testing.assert_close(grad.double(), ref_grad, atol=tol["atol"] * scale,
                                   rtol=tol["rtol"])


@pytest.fixture(params=["auto", "fused", "gemm"])
def kernel_path(request, monkeypatch):
    """Each CPU kernel path forced in turn (auto: the size floor keeps small shapes fused)."""
    monkeypatch.setenv(PATH_VARIABLE, request.param)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_format", MASK_FORMATS)
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("rows,in_features,out_features",
                         [((2, 3), 13, 9), ((40,), 70, 21)])
def test_forward_and_gradients_match_reference(device, kernel_path, dtype, mask_format, form, rows,
                                               in_features, out_features):
    args = make_inputs(device, dtype, mask_format, rows, in_features, out_features, form,
                       requires_grad=True)
    assert_matches_reference(*args)


@pytest.mark.parametrize("mask_format", MASK_FORMATS)
@pytest.mark.parametrize("form", ["single", "shared"])
def test_several_cache_tiles(device, kernel_path, mask_format, form):
    # Large enough for several weight tiles (forward / weight gradient) and several column tiles
    # of the input gradient, the last one partial and not byte aligned.
    args = make_inputs(device, torch.float32, mask_format, (33,), 2053, 600, form,
                       requires_grad=True)
    assert_matches_reference(*args)


@pytest.mark.parametrize("rows", [(1,), (4,), (17,), (300,)])
def test_automatic_path_matches_reference(device, rows):
    assert_matches_reference(*make_inputs(device, torch.float32, "packed", rows, 129, 67, "shared",
                                          requires_grad=True))


@pytest.mark.parametrize("rows,in_features,out_features",
                         [(rows, 300, 100) for rows in [(1,), (3,), (5,), (16,), (17,), (70,), (130,), (600,)]]
                         + [((1,), 4100, 50), ((3,), 4100, 50)])
@pytest.mark.parametrize("mask_format", ["bool", "packed", "soft"])
@pytest.mark.parametrize("form", list(FORMS))
def test_fused_kernels_across_their_blocks(device, monkeypatch, rows, in_features, out_features,
                                           mask_format, form):
    # The fused kernels' boundaries: weight rows streamed in order (<= 4 rows; a weight shared by
    # the candidates in groups of forward blocks and input-gradient segments of about 256 KiB of
    # its rows, several at 4100 columns, the last one partial, and rows ending in a partial
    # vector), dot-product forward (<= 16), x panels of 64 rows (the last one partial), chunks of
    # 512 rows, weight blocks of 48 rows and 128 columns, input-gradient column panels, and weight
    # gradients formed row by row (<= 4 rows), over one x block (<= 128 rows) or several, summed
    # over candidates for a shared weight.
    monkeypatch.setenv(PATH_VARIABLE, "fused")
    assert_matches_reference(*make_inputs(device, torch.float32, mask_format, rows, in_features,
                                          out_features, form, requires_grad=True))


@pytest.mark.parametrize("rows", [(2,), (5,), (70,), (130,)])
def test_fused_kernels_in_bfloat16(device, monkeypatch, rows):
    monkeypatch.setenv(PATH_VARIABLE, "fused")
    assert_matches_reference(*make_inputs(device, torch.bfloat16, "bool", rows, 300, 100,
                                          "per_candidate", requires_grad=True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward(device, dtype):
    x, weight, mask, bias, packed = make_inputs(device, dtype, "bool", (5,), 40, 12, "single")
    out = masked_linear(x, weight, mask, bias)
    expected, _ = reference_float64(x, weight, mask, bias, packed)
    torch.testing.assert_close(out.double(), expected, atol=4e-2, rtol=3e-2)


@pytest.mark.parametrize("mask_format", ["bool", "soft", "packed"])
@pytest.mark.parametrize("form", ["single", "per_candidate"])
def test_non_contiguous_inputs(device, kernel_path, mask_format, form):
    x, weight, mask, bias, packed = make_inputs(device, torch.float32, mask_format, (6,), 24, 10,
                                                form)
    # Same values, other strides: x and weight transposed in memory, the mask a slice of a wider
    # tensor, the bias a strided view.
    x_nc = x.transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_()
    weight_nc = weight.transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_()
    wide = torch.zeros(*mask.shape[:-1], mask.shape[-1] + 3, dtype=mask.dtype, device=device)
    wide[..., : mask.shape[-1]] = mask
    mask_nc = wide[..., : mask.shape[-1]]
    if mask_format == "soft":
        mask_nc.requires_grad_()
    bias_nc = torch.stack([bias, bias], -1)[..., 0].requires_grad_()
    assert not (x_nc.is_contiguous() or weight_nc.is_contiguous() or mask_nc.is_contiguous()
                or bias_nc.is_contiguous())
    assert_matches_reference(x_nc, weight_nc, mask_nc, bias_nc, packed)


@pytest.mark.parametrize("mask_format", ["bool", "packed", "soft"])
@pytest.mark.parametrize("rows,in_features,out_features,form",
                         [((0,), 8, 5, "single"), ((4,), 0, 5, "single"), ((4,), 8, 0, "single"),
                          ((0,), 8, 5, "shared"), ((3,), 0, 5, "per_candidate"),
                          ((3,), 8, 0, "shared")])
def test_empty_inputs(device, kernel_path, mask_format, rows, in_features, out_features, form):
    args = make_inputs(device, torch.float32, mask_format, rows, in_features, out_features, form,
                       requires_grad=True)
    assert_matches_reference(*args)


@pytest.mark.skipif(not has_native_kernel("masked_linear", "cpu"), reason="extension not built")
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_fused_kernels_of_each_cpu_capability(capability):
    # ATen's capability picks the kernels: the portable build, and the AVX2 one (16 vector
    # registers, narrower tiles) that AMD machines run, whatever this machine would pick.
    if capability == "avx2" and torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("this CPU has no AVX2")
    code = (
        "import torch\n"
        "from sparsenas._extension import has_native_kernel\n"
        "from test_masked_linear import make_inputs, assert_matches_reference\n"
        "assert has_native_kernel('masked_linear', 'cpu'), 'the native kernels did not load'\n"
        "for mask_format in ('bool', 'packed', 'soft'):\n"
        "    for rows in ((3,), (17,), (40,), (130,)):\n"
        "        for form in ('shared', 'per_candidate'):\n"
        "            assert_matches_reference(*make_inputs('cpu', torch.float32, mask_format, rows,"
        " 70, 21, form, requires_grad=True))\n"
        "print(torch.backends.cpu.get_cpu_capability())")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, **{PATH_VARIABLE: "fused"})
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                         text=True, cwd=SUBPROCESS_CWD).stdout
    assert out.strip().endswith(capability.upper())


def test_zero_candidates(device):
    x = torch.randn(0, 3, 8, device=device, requires_grad=True)
    weight = torch.randn(5, 8, device=device, requires_grad=True)
    mask = torch.ones(0, 5, 8, dtype=torch.bool, device=device)
    out = masked_linear(x, weight, mask)
    assert out.shape == (0, 3, 5)
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    assert x.grad.shape == x.shape


def test_few_rows_input_gradient_bits_do_not_depend_on_thread_timing(monkeypatch):
    # On CPU its threads sum segments of weight rows; the partial sums are added in segment order,
    # not in the order the threads happened to finish them.
    monkeypatch.setenv(PATH_VARIABLE, "fused")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for form in ("single", "shared"):
            _, weight, mask, _, packed = make_inputs("cpu", torch.float32, "bool", (1,), 700, 900,
                                                     form)
            grad = torch.randn(*mask.shape[:-2], 1, 900, generator=torch.Generator().manual_seed(2))
            first = torch.ops.sparsenas.masked_linear_grad_input(grad, weight, mask, packed)
            for _ in range(20):
                assert torch.equal(
                    torch.ops.sparsenas.masked_linear_grad_input(grad, weight, mask, packed), first)
    finally:
        torch.set_num_threads(threads)


def test_candidates_equal_separate_calls(device):
    x, weight, mask, bias, packed = make_inputs(device, torch.float32, "packed", (7,), 50, 20,
                                                "shared")
    out = masked_linear(x, weight, mask, bias, packed=packed)
    for k in range(x.shape[0]):
        single = masked_linear(x[k], weight, mask[k], bias, packed=packed)
        torch.testing.assert_close(out[k], single)


def test_weight_gradient_is_masked(device):
    x, weight, mask, bias, _ = make_inputs(device, torch.float32, "bool", (5,), 16, 8, "single",
                                           requires_grad=True)
    masked_linear(x, weight, mask, bias).square().sum().backward()
    assert torch.all(weight.grad[~mask] == 0)
    assert torch.any(weight.grad[mask] != 0)


@pytest.mark.skipif(not has_native_kernel("masked_linear", "cpu"), reason="extension not built")
def test_opcheck_native_ops(device):
    cases = [("bool", "single"), ("uint8", "shared"), ("packed", "shared"),
             ("soft", "per_candidate")]
    for mask_format, form in cases:
        x, weight, mask, bias, packed = make_inputs(device, torch.float32, mask_format, (3,), 11, 6,
                                                    form, requires_grad=True)
        torch.library.opcheck(torch.ops.sparsenas.masked_linear.default,
                              (x, weight, mask, bias, packed))
        if mask_format in ("bool", "uint8"):
            continue
        grad = torch.randn(*x.shape[:-1], weight.shape[-2], device=device)
        with torch.no_grad():
            torch.library.opcheck(torch.ops.sparsenas.masked_linear_grad_input.default,
                                  (grad, weight, mask, packed))
            soft = mask.is_floating_point()
            torch.library.opcheck(torch.ops.sparsenas.masked_linear_grad_weight.default,
                                  (grad, x, weight, mask, packed, True, soft))
            torch.library.opcheck(torch.ops.sparsenas.masked_linear_grad_weight.default,
                                  (grad, x, weight, mask, packed, False, False))


@pytest.mark.parametrize("form", list(FORMS))
def test_gradcheck_float64(device, form):
    x, weight, mask, bias, _ = make_inputs(device, torch.float64, "soft", (2, 3), 5, 4, form,
                                           requires_grad=True)

    def fn(x, weight, mask, bias):
        return masked_linear(x, weight, mask, bias)

    assert torch.autograd.gradcheck(fn, (x, weight, mask, bias))
    assert torch.autograd.gradgradcheck(fn, (x, weight, mask, bias))


def test_double_backward_with_fixed_mask(device):
    x, weight, mask, bias, packed = make_inputs(device, torch.float64, "packed", (4,), 10, 3,
                                                "shared", requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda x, weight, bias: masked_linear(x, weight, mask, bias, packed=packed),
        (x, weight, bias))


def test_torch_compile_fullgraph_forward_and_backward(device):
    torch.manual_seed(0)

    class TwoLayer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = torch.nn.Linear(12, 16)
            self.second = torch.nn.Linear(16, 4)
            self.register_buffer("first_mask", torch.rand(16, 12) < 0.5)
            self.register_buffer("second_mask", pack_mask(torch.rand(4, 16) < 0.5))

        def forward(self, x):
            hidden = F.relu(masked_linear(x, self.first.weight, self.first_mask, self.first.bias))
            return masked_linear(hidden, self.second.weight, self.second_mask, self.second.bias,
                                 packed=True)

    model = TwoLayer().to(device)
    x = torch.randn(8, 12, device=device)
    expected = model(x)
    expected.square().sum().backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, expected)
    for param, grad in zip(model.parameters(), expected_grads):
        torch.testing.assert_close(param.grad, grad)


def bad_inputs(device):
    x = torch.randn(4, 6, device=device)
    weight = torch.randn(3, 6, device=device)
    mask = torch.ones(3, 6, dtype=torch.bool, device=device)
    bias = torch.randn(3, device=device)
    kx = torch.randn(2, 4, 6, device=device)
    kmask = torch.ones(2, 3, 6, dtype=torch.bool, device=device)
    meta = torch.device("meta")
    return [
        ("x last dim", (torch.randn(4, 5, device=device), weight, mask, bias, False),
         ValueError, "'x'"),
        ("weight 1-D", (x, torch.randn(6, device=device), mask, None, False), ValueError,
         "'weight'"),
        ("mask shape", (x, weight, mask[:, :5], None, False), ValueError, "'mask'"),
        ("mask 4-D", (x, weight, mask.expand(1, 1, 3, 6), None, False), ValueError, "'mask'"),
        ("mask K vs x K", (kx, weight, torch.ones(3, 3, 6, dtype=torch.bool, device=device), None,
                           False), ValueError, "'x'"),
        ("weight K", (kx, torch.randn(3, 3, 6, device=device), kmask, None, False), ValueError,
         "'weight'"),
        ("bias K", (kx, weight, kmask, torch.randn(3, 3, device=device), False), ValueError,
         "'bias'"),
        ("bias size", (x, weight, mask, torch.randn(4, device=device), False), ValueError,
         "'bias'"),
        ("weight on meta", (x, weight.to(meta), mask, None, False), ValueError, "'weight'"),
        ("mask on meta", (x, weight, mask.to(meta), None, False), ValueError, "'mask'"),
        ("mask int32", (x, weight, mask.int(), None, False), TypeError, "'mask'"),
        ("soft mask dtype", (x, weight, mask.double(), None, False), TypeError, "'mask'"),
        ("integer x", (x.long(), weight.long(), mask, None, False), TypeError, "'x'"),
        ("float8 x", (x.to(torch.float8_e4m3fn), weight.to(torch.float8_e4m3fn), mask, None,
                      False), TypeError, "'x'"),
        ("weight dtype", (x, weight.double(), mask, None, False), TypeError, "'weight'"),
        ("bias dtype", (x, weight, mask, bias.double(), False), TypeError, "'bias'"),
        ("packed width", (x, weight, torch.zeros(3, 2, dtype=torch.uint8, device=device), None,
                          True), ValueError, "'mask'"),
        ("packed bool", (x, weight, mask, None, True), TypeError, "'mask'"),
    ]


@pytest.mark.parametrize("case", range(len(bad_inputs(torch.device("cpu")))))
def test_bad_inputs_raise_clear_errors(device, case):
    name, args, error, argument = bad_inputs(device)[case]
    with pytest.raises(error, match=argument):
        masked_linear(*args[:4], packed=args[4])


@pytest.mark.skipif(not has_native_kernel("masked_linear", "cpu"), reason="extension not built")
def test_gradient_ops_reject_bad_inputs(device):
    x = torch.randn(4, 6, device=device)
    weight = torch.randn(3, 6, device=device)
    mask = torch.ones(3, 6, dtype=torch.bool, device=device)
    grad = torch.randn(4, 3, device=device)
    ops = torch.ops.sparsenas
    with pytest.raises(ValueError, match="'grad'"):
        ops.masked_linear_grad_input(torch.randn(4, 5, device=device), weight, mask)
    with pytest.raises(ValueError, match="'grad'"):
        ops.masked_linear_grad_weight(torch.randn(4, 5, device=device), x, weight, mask)
    with pytest.raises(TypeError, match="'mask'"):
        ops.masked_linear_grad_weight(grad, x, weight, mask, False, True, True)
    with pytest.raises(TypeError, match="'grad'"):
        ops.masked_linear_grad_input(grad.long(), weight, mask)


def _path_choice_inputs(seed):
    # 64 rows of a 256 x 256 layer: above the size below which nothing is measured.
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 256, generator=gen)
    weight = torch.randn(256, 256, generator=gen)
    keep = torch.rand(256, 256, generator=gen) < 0.5
    return x, weight, keep


@pytest.mark.skipif(not has_native_kernel("masked_linear", "cpu"), reason="native CPU kernel")
def test_automatic_path_is_measured_once_and_reused(monkeypatch):
    from sparsenas._extension import native

    monkeypatch.delenv(PATH_VARIABLE, raising=False)
    x, weight, keep = _path_choice_inputs(0)
    before = native.kernel_path_choices()
    out = masked_linear(x, weight, keep)
    added = {k: v for k, v in native.kernel_path_choices().items() if k not in before}
    key = (f"masked_linear forward float32 byte rows<=64 in<=256 out<=256 single "
           f"threads={torch.get_num_threads()}")
    if key in before:  # measured by an earlier test in this process
        added[key] = before[key]
    assert set(added) == {key} and added[key] in ("fused", "gemm")
    # Later calls of the class reuse the choice, and compute exactly what that path computes.
    again = masked_linear(x, weight, keep)
    assert native.kernel_path_choices()[key] == added[key]
    monkeypatch.setenv(PATH_VARIABLE, added[key])
    forced = masked_linear(x, weight, keep)
    assert torch.equal(out, forced) and torch.equal(again, forced)


@pytest.mark.skipif(not has_native_kernel("masked_linear", "cpu"), reason="native CPU kernel")
def test_choice_measured_on_the_first_candidates_of_a_large_call(monkeypatch):
    from sparsenas._extension import native

    # Two candidates of 128 x 1024 x 700 multiply-adds each: the measurement runs on the first
    # candidate only, with the call's own (two-candidate) tensors.
    monkeypatch.delenv(PATH_VARIABLE, raising=False)
    args = make_inputs(torch.device("cpu"), torch.float32, "uint8", (128,), 1024, 700,
                       "per_candidate", requires_grad=True)
    key = (f"masked_linear grad_weight float32 byte rows<=128 in<=1024 out<=1024 candidates "
           f"threads={torch.get_num_threads()}")
    assert key not in native.kernel_path_choices()
    assert_matches_reference(*args)
    assert key in native.kernel_path_choices()


@pytest.mark.skipif(not has_native_kernel("masked_linear", "cpu"), reason="native CPU kernel")
def test_training_step_choice_is_measured_for_steps_that_need_the_input_gradient(monkeypatch):
    from sparsenas._extension import native

    monkeypatch.delenv(PATH_VARIABLE, raising=False)
    _, weight, keep = _path_choice_inputs(3)
    # rows<=256 (a class no other test measures; below 128 rows a step never keeps W ⊙ M)
    x = torch.randn(200, 256, generator=torch.Generator().manual_seed(3))
    weight = weight.requires_grad_()
    key = (f"masked_linear training_step float32 byte rows<=256 in<=256 out<=256 single "
           f"threads={torch.get_num_threads()}")
    masked_linear(x, weight, keep).sum().backward()  # no input gradient: nothing to keep
    with torch.no_grad():
        masked_linear(x.requires_grad_(), weight, keep)
    masked_linear(x.expand(2, -1, -1), weight, keep.expand(2, -1, -1)).sum().backward()
    masked_linear(x[:100].detach().requires_grad_(), weight, keep).sum().backward()
    assert key.replace("rows<=256", "rows<=128") not in native.kernel_path_choices()
    assert key not in native.kernel_path_choices()
    out = masked_linear(x, weight, keep)
    chosen = native.kernel_path_choices()[key]
    grads = torch.autograd.grad(out, (x, weight), torch.ones_like(out))
    # The choice is reused, computes what its forced path computes, and matches the reference.
    monkeypatch.setenv(PATH_VARIABLE, chosen)
    forced = masked_linear(x, weight, keep)
    assert torch.equal(out, forced)
    for grad, forced_grad in zip(grads, torch.autograd.grad(forced, (x, weight),
                                                            torch.ones_like(forced))):
        assert torch.equal(grad, forced_grad)
    assert_matches_reference(x, weight, keep, None, False)
    # The arguments are checked before the choice, with the op's messages.
    with pytest.raises(ValueError, match="'bias'"):
        masked_linear(x, weight, keep, torch.zeros(255))


@pytest.mark.skipif(not has_native_kernel("masked_linear", "cpu"), reason="native CPU kernel")
def test_training_step_of_few_rows_never_keeps_the_masked_weight(monkeypatch):
    from sparsenas._extension import native

    monkeypatch.delenv(PATH_VARIABLE, raising=False)
    x, weight, keep = _path_choice_inputs(4)
    x, weight = x[:8].requires_grad_(), weight.requires_grad_()
    out = masked_linear(x, weight, keep)
    assert not any(key.startswith("masked_linear training_step") and "rows<=8 " in key
                   for key in native.kernel_path_choices())
    grads = torch.autograd.grad(out, (x, weight), torch.ones_like(out))
    expected = F.linear(x, weight * keep)
    for grad, ref in zip(grads, torch.autograd.grad(expected, (x, weight), torch.ones_like(out))):
        torch.testing.assert_close(grad, ref)


@pytest.mark.skipif(not has_native_kernel("masked_linear", "cpu"), reason="native CPU kernel")
def test_preset_path_choice_is_used(monkeypatch):
    from sparsenas._extension import native

    monkeypatch.delenv(PATH_VARIABLE, raising=False)
    x, weight, keep = _path_choice_inputs(1)
    x = x[:48]  # rows<=64 of a new mask kind: a class no other test measures
    mask = keep.float()
    key = (f"masked_linear forward float32 soft rows<=64 in<=256 out<=256 single "
           f"threads={torch.get_num_threads()}")
    native.set_kernel_path_choices({key: "gemm"})
    chosen = native.kernel_path_choices()[key]
    auto = masked_linear(x, weight, mask)
    monkeypatch.setenv(PATH_VARIABLE, chosen)
    assert torch.equal(auto, masked_linear(x, weight, mask))
    with pytest.raises(ValueError, match="kernel path choice"):
        native.set_kernel_path_choices({key: "fastest"})


@pytest.mark.skipif(not has_native_kernel("masked_linear", "cpu"), reason="native CPU kernel")
def test_bad_path_variable_names_itself(monkeypatch):
    monkeypatch.setenv(PATH_VARIABLE, "blas")
    x, weight, keep = _path_choice_inputs(2)
    with pytest.raises(ValueError, match="SPARSENAS_MASKED_LINEAR_PATH must be 'fused', 'gemm' or "
                                         "'auto', got 'blas'"):
        masked_linear(x, weight, keep)


@pytest.mark.skipif(not has_native_kernel("masked_linear", "cpu"), reason="native CPU kernel")
def test_path_choices_are_recorded_for_later_processes(tmp_path):
    script = (
        "import torch\n"
        "from sparsenas import _extension\n"
        "from sparsenas.ops import masked_linear\n"
        "torch.set_num_threads(1)\n"
        "x, w = torch.randn(64, 256), torch.randn(256, 256)\n"
        "masked_linear(x, w, torch.rand(256, 256) < 0.5)\n"
        "masked_linear(x, w, torch.rand(256, 256) < 0.5, packed=False)\n"
        "print(_extension.kernel_path_cache_file())\n"
        "print(_extension.native.kernel_path_choices()[KEY])\n")
    key = "masked_linear forward float32 byte rows<=64 in<=256 out<=256 single threads=1"
    env = {**os.environ, "SPARSENAS_CACHE_DIR": str(tmp_path)}
    env.pop(PATH_VARIABLE, None)

    def run():
        result = subprocess.run([sys.executable, "-c", f"KEY = {key!r}\n" + script], env=env,
                                cwd=SUBPROCESS_CWD, capture_output=True, text=True, check=True)
        return result.stdout.split()[-2:]

    file, measured = run()
    lines = open(file).read().splitlines()
    assert lines == [f"{key}\t{measured}"]  # measured once, recorded at once
    # A later process runs what the record says, whatever it would measure itself.
    other = "gemm" if measured == "fused" else "fused"
    with open(file, "w") as record:
        record.write(f"{key}\t{other}\nunparseable line\n")
    assert run() == [file, other]


@pytest.mark.skipif(not has_native_kernel("masked_linear", "cpu"), reason="native CPU kernel")
def test_path_cache_is_per_cpu_model_and_vector_extensions(monkeypatch):
    from sparsenas import _extension

    model, flags = _extension._cpu_identity()
    assert model
    if platform.machine() == "x86_64":
        assert "sse2" in flags.split()  # part of x86-64 itself
    files = set()
    for identity in [(model, "avx2 fma"), (model, "avx2 avx512f fma"), ("Other CPU", "avx2 fma")]:
        monkeypatch.setattr(_extension, "_cpu_identity", lambda identity=identity: identity)
        files.add(_extension.kernel_path_cache_file())
    assert len(files) == 3
