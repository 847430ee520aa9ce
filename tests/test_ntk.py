"""empirical_ntk against an independent torch.func Jacobian contraction, and the NTK block ops
against their references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from sparsenas._extension import has_native_kernel
from sparsenas.nn import NodeMask
from sparsenas.ntk import empirical
from sparsenas.ntk import MODES, empirical_ntk, ntk_gram_block_, ntk_gram_kernel, ntk_masked_block_
from sparsenas.ntk.kernels import reference_gram_block, reference_masked_block


class WeightMaskedLinear(nn.Linear):
    """A Linear carrying a weight_mask buffer (effective weight W ⊙ M), as MaskedLinear does."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("weight_mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.weight_mask, self.bias)


class WeightMaskedConv2d(nn.Conv2d):
    def __init__(self, *args, mask: Tensor, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.weight_mask, self.bias)



def reference_ntk(model: nn.Module, x: Tensor, mode: str,
                  masks: dict[str, Tensor] | None = None) -> Tensor:
    """J Jᵀ from torch.func.jacrev over every trainable parameter, in float64."""
    model = model.double()
    x = x.double()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = dict(model.named_buffers())
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    jac = jacrev(lambda p: functional_call(model, {**p, **buffers, **frozen}, (x,)))(params)
    n = x.shape[0]
    blocks = []
    for name, j in jac.items():
        if masks and name in masks:
            j = j * masks[name].double()
        blocks.append(j.reshape(n, -1, j[0, 0].numel()))
    J = torch.cat(blocks, dim=-1)  # [n, O, P]
    O = J.shape[1]
    if mode == "full":
        return J.reshape(n * O, -1) @ J.reshape(n * O, -1).T
    if mode == "sum_logits":
        return J.sum(1) @ J.sum(1).T
    if mode == "trace":
        return torch.einsum("iop,jop->ij", J, J)
    return J.square().sum(-1)


def mlp(node_masks: bool = False, weight_mask: bool = False) -> nn.Module:
    torch.manual_seed(0)
    second = (WeightMaskedLinear(12, 10, torch.rand(10, 12) < 0.6) if weight_mask
              else nn.Linear(12, 10))
    layers = [nn.Linear(5, 12), nn.Tanh()]
    if node_masks:
        layers.append(NodeMask(12))
        layers[-1].set_mask(torch.tensor([True, False] * 6))
    layers += [second, nn.ReLU(), nn.Linear(10, 3)]
    return nn.Sequential(*layers)


class ResidualCNN(nn.Module):
    def __init__(self, weight_mask: bool = False, node_masks: bool = False) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        if weight_mask:
            self.grouped = WeightMaskedConv2d(8, 8, 3, padding=1, groups=2,
                                              mask=torch.rand(8, 4, 3, 3) < 0.5)
        else:
            self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.node_mask = NodeMask(8, dim=1)
        if node_masks:
            self.node_mask.set_mask(torch.tensor([True, True, False, True, False, True, True,
                                                  False]))
        self.pointwise = nn.Conv2d(8, 6, 1, bias=False)
        self.head = nn.Linear(6 * 2 * 2, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn(self.stem(x)))
        h = h + self.node_mask(F.relu(self.grouped(h)))
        h = F.max_pool2d(self.pointwise(h), 2)
        return self.head(h.flatten(1))


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    model = model.to(device)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", ["plain", "node_masks", "weight_mask", "masks_arg"])
def test_mlp_matches_jacobian_contraction(device, mode, variant):
    model = _prepare(mlp(node_masks=variant == "node_masks", weight_mask=variant == "weight_mask"),
                     device).double()
    x = torch.randn(7, 5, device=device, dtype=torch.float64)
    masks = None
    if variant == "masks_arg":
        masks = {"0.weight": torch.rand(12, 5, device=device) < 0.5}
    expected = reference_ntk(model, x, mode, masks)
    got = empirical_ntk(model, x, mode=mode, masks=masks)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    chunked = empirical_ntk(model, x, mode=mode, masks=masks, chunk_size=3)
    torch.testing.assert_close(chunked, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant, route", [
    ("plain", "cheapest"), ("node_masks", "cheapest"), ("weight_mask", "cheapest"),
    ("masks_arg", "cheapest"), ("plain", "gram"), ("node_masks", "gram"), ("plain", "materialised"),
])
def test_cnn_matches_jacobian_contraction(device, mode, variant, route, monkeypatch):
    if route != "cheapest":
        monkeypatch.setattr(empirical, "_prefer_materialised", lambda *args: route != "gram")
    model = _prepare(ResidualCNN(weight_mask=variant == "weight_mask",
                                 node_masks=variant == "node_masks"), device).double()
    x = torch.randn(5, 3, 8, 8, device=device, dtype=torch.float64)
    masks = None
    if variant == "masks_arg":
        masks = {"stem.weight": torch.rand(8, 3, 3, 3, device=device) < 0.5,
                 "head.weight": torch.rand(4, 24, device=device) < 0.5}
    expected = reference_ntk(model, x, mode, masks)
    got = empirical_ntk(model, x, mode=mode, masks=masks, chunk_size=2)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_eval_batchnorm_is_exact_without_the_fallback(device, mode, monkeypatch):
    """Eval-mode BatchNorm1d / 2d (one with a frozen scale) are formed directly, not by
    torch.func, and exactly."""
    torch.manual_seed(3)
    conv = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(),
                         nn.Flatten(), nn.Linear(4 * 5 * 5, 6), nn.BatchNorm1d(6), nn.GELU(),
                         nn.Linear(6, 3))
    conv[5].weight.requires_grad_(False)
    model = _prepare(conv, device).double()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(5, 2, 5, 5, device=device, dtype=torch.float64)
    expected = reference_ntk(model, x, mode)

    def no_fallback(*args, **kwargs):
        raise AssertionError("an eval-mode BatchNorm went to the torch.func fallback")

    with monkeypatch.context() as patch:
        patch.setattr(empirical, "_add_fallback", no_fallback)
        got = empirical_ntk(model, x, mode=mode, chunk_size=2)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


class SharedAndNormed(nn.Module):
    """Parameters only the exact fallback can handle: LayerNorm, a Linear applied twice, a weight
    tied between two Linears, and a frozen weight with a trainable bias."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.inp = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.shared = nn.Linear(6, 6)
        self.tied_a = nn.Linear(6, 6, bias=False)
        self.tied_b = nn.Linear(6, 6)
        self.tied_b.weight = self.tied_a.weight
        self.frozen = nn.Linear(6, 2)
        self.frozen.weight.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.norm(self.inp(x)))
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        h = torch.tanh(self.tied_b(torch.tanh(self.tied_a(h))))
        return self.frozen(h)


@pytest.mark.parametrize("mode", MODES)
def test_fallback_parameters_are_exact(device, mode):
    model = SharedAndNormed().to(device).double()
    x = torch.randn(6, 4, device=device, dtype=torch.float64)
    masks = {"shared.weight": torch.rand(6, 6, device=device) < 0.5}
    torch.testing.assert_close(empirical_ntk(model, x, mode=mode, masks=masks, chunk_size=4),
                               reference_ntk(model, x, mode, masks), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("geometry", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1)),
    dict(kernel_size=3, stride=2, padding=2, groups=2),
    dict(kernel_size=1),
])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_unfold_is_im2col_in_patch_order(device, geometry, layout):
    conv = nn.Conv2d(4, 6, **geometry).to(device)
    x = torch.randn(3, 4, 9, 7, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(3, 4, 9, 14, device=device)[..., ::2]
    patches = empirical._unfold(x, conv)
    expected = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    kh, kw = conv.kernel_size
    g = conv.groups
    expected = (expected.reshape(3, g, 4 // g, kh, kw, -1).permute(0, 5, 1, 3, 4, 2)
                .reshape(3, expected.shape[-1], -1))
    torch.testing.assert_close(patches, expected, rtol=0, atol=0)
    # _patch_order puts a weight in the same column order: patches · weight = the convolution.
    weight = empirical._patch_order(conv.weight.detach(), g)          # [g, p, d]
    out = torch.einsum("ntgd,gpd->ngpt", patches.view(3, -1, g, weight.shape[-1]), weight)
    torch.testing.assert_close(out.reshape(3, 6, -1) + conv.bias.detach()[:, None],
                               conv(x).detach().flatten(2))


@pytest.mark.parametrize("rows, columns", [(5, 37), (256, 300), (300, 37), (300, 301),
                                           (641, 700)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_from_lower_blocks(device, rows, columns, dtype):
    x = torch.randn(rows, columns, device=device, dtype=dtype)
    gram = empirical._gram(x)
    # float32 sums of ~columns unit products: their rounding scales with the row length
    torch.testing.assert_close(gram, x @ x.T, rtol=1e-5, atol=1e-6 * columns)
    assert torch.equal(gram, gram.T)


@pytest.mark.parametrize("mode", MODES)
def test_cnn_with_many_kernel_rows(device, mode):
    """n·O = 320 kernel rows (the Gram of the streamed per-example gradients in row blocks), a
    dilated non-square strided convolution, a masks entry on it, chunks."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1)),
                          nn.Tanh(), nn.Conv2d(4, 3, 3, padding=1), nn.Flatten(),
                          nn.Linear(3 * 3 * 5, 8)).to(device).double()
    x = torch.randn(40, 2, 7, 6, device=device, dtype=torch.float64)
    masks = {"0.weight": torch.rand(4, 2, 3, 2, device=device) < 0.5}
    expected = reference_ntk(model, x, mode, masks)
    got = empirical_ntk(model, x, mode=mode, masks=masks, chunk_size=16)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


class UnusedBranch(nn.Module):
    """A convolution whose output the model computes but does not use: its cotangents are None,
    its NTK contribution zero."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.stem = nn.Conv2d(2, 3, 3, padding=1)
        self.unused = nn.Conv2d(3, 5, 3, padding=1)
        self.head = nn.Linear(3 * 5 * 5, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.stem(x))
        self.unused(h)
        return self.head(h.flatten(1))


@pytest.mark.parametrize("mode", MODES)
def test_layer_outside_the_output_graph_adds_nothing(device, mode, monkeypatch):
    monkeypatch.setattr(empirical, "_prefer_materialised", lambda *args: True)
    model = UnusedBranch().to(device).double()
    x = torch.randn(6, 2, 5, 5, device=device, dtype=torch.float64)
    torch.testing.assert_close(empirical_ntk(model, x, mode=mode, chunk_size=4),
                               reference_ntk(model, x, mode), rtol=1e-10, atol=1e-10)


def test_sequence_inputs_to_linear(device):
    # A Linear applied to [n, T, d] (tokens): T rows per example.
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 5), nn.GELU(), nn.Flatten(), nn.Linear(20, 2)).to(device)
    model = model.double()
    x = torch.randn(4, 4, 3, device=device, dtype=torch.float64)
    for mode in MODES:
        torch.testing.assert_close(empirical_ntk(model, x, mode=mode),
                                   reference_ntk(model, x, mode), rtol=1e-10, atol=1e-10)


def test_float32_model_accumulates_in_float64(device):
    model = _prepare(ResidualCNN(), device)
    x = torch.randn(6, 3, 8, 8, device=device)
    got = empirical_ntk(model, x, mode="full")
    assert got.dtype == torch.float64
    expected = reference_ntk(model, x, "full")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    got32 = empirical_ntk(model.float(), x, mode="full", dtype=torch.float32)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), expected, rtol=1e-4,
                               atol=1e-4 * expected.abs().max().item())


def test_float32_accumulation_error_bound(device):
    """dtype=float32 on a model large enough for many tiles: max |Θ32 − Θ64| / max |Θ64| stays
    at float32 rounding level (the benchmark's rel_error reports the same quantity)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(8, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(),
                          nn.Linear(48, 6)).to(device).eval()
    x = torch.randn(50, 8, device=device)
    got = empirical_ntk(model, x, mode="full", dtype=torch.float32)
    exact = empirical_ntk(model.double(), x.double(), mode="full")
    error = ((got.double() - exact).abs().max() / exact.abs().max()).item()
    assert error < 1e-6


def test_modes_are_consistent(device):
    model = _prepare(mlp(), device).double()
    x = torch.randn(6, 5, device=device, dtype=torch.float64)
    full = empirical_ntk(model, x, mode="full").view(6, 3, 6, 3)
    torch.testing.assert_close(empirical_ntk(model, x, mode="sum_logits"), full.sum((1, 3)))
    torch.testing.assert_close(empirical_ntk(model, x, mode="trace"),
                               full.diagonal(dim1=1, dim2=3).sum(-1))
    torch.testing.assert_close(empirical_ntk(model, x, mode="diagonal"),
                               full.diagonal(dim1=0, dim2=2).diagonal())


@pytest.mark.parametrize("case, error, match", [
    ({"mode": "logits"}, ValueError, "mode"),
    ({"masks": {"0.weight": torch.ones(3, 3, dtype=torch.bool)}}, ValueError, "masks"),
    ({"masks": {"0.bias": torch.ones(12, dtype=torch.bool)}}, ValueError, "masks"),
    ({"masks": {"missing.weight": torch.ones(12, 5)}}, ValueError, "masks"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"dtype": torch.float16}, TypeError, "dtype"),
])
def test_empirical_ntk_bad_arguments(case, error, match):
    with pytest.raises(error, match=match):
        empirical_ntk(mlp().eval(), torch.randn(4, 5), **case)


def test_empirical_ntk_bad_models():
    with pytest.raises(ValueError, match="model"):
        empirical_ntk(nn.Sequential(nn.ReLU()), torch.randn(3, 4))
    frozen = nn.Linear(4, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="model"):
        empirical_ntk(frozen, torch.randn(3, 4))
    with pytest.raises(ValueError, match="BatchNorm"):
        empirical_ntk(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train(), torch.randn(3, 4))
    with pytest.raises(TypeError, match="model"):
        empirical_ntk(lambda x: x, torch.randn(3, 4))
    with pytest.raises(TypeError, match="x"):
        empirical_ntk(nn.Linear(4, 2), [1.0, 2.0])


# ---- the block operators ------------------------------------------------------------------


def _assert_close_scaled(got: Tensor, expected: Tensor, tol: float) -> None:
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * scale)


def _gram_inputs(device, n, T, O, d, p, dtype):
    generator = torch.Generator().manual_seed(n * 100 + T * 10 + O)
    a = torch.randn(n * T, d, generator=generator, dtype=torch.float64).to(device, dtype)
    b = torch.randn(n * T, O, p, generator=generator, dtype=torch.float64).to(device, dtype)
    return a, b


@pytest.mark.parametrize("n, T, O, d, p", [(5, 1, 1, 7, 3), (6, 1, 3, 4, 5), (4, 3, 2, 6, 3),
                                           (3, 4, 1, 0, 2), (0, 2, 2, 3, 3), (70, 1, 1, 9, 4)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sum_outputs", [True, False])
@pytest.mark.parametrize("dtype, out_dtype", [(torch.float64, torch.float64),
                                              (torch.float32, torch.float32),
                                              (torch.float32, torch.float64),
                                              (torch.bfloat16, torch.float32)])
def test_gram_block_matches_reference(device, n, T, O, d, p, bias, sum_outputs, dtype, out_dtype):
    a, b = _gram_inputs(device, n, T, O, d, p, dtype)
    rows = n if sum_outputs else n * O
    start = torch.randn(rows, rows, dtype=out_dtype, device=device)
    out = start.clone()
    ntk_gram_block_(out, a, b, T, bias, sum_outputs)
    expected = start + reference_gram_block(a, b, T, bias, sum_outputs, out_dtype)
    tol = 1e-10 if out_dtype == torch.float64 else 1e-4
    _assert_close_scaled(out, expected, tol)


@pytest.mark.parametrize("n, O, d, p", [(5, 1, 7, 3), (6, 3, 4, 5), (40, 2, 9, 6), (0, 2, 3, 3),
                                        (3, 2, 0, 4)])
@pytest.mark.parametrize("mask_kind", ["bool", "uint8", "float"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sum_outputs", [True, False])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float64])
def test_masked_block_matches_reference(device, n, O, d, p, mask_kind, bias, sum_outputs,
                                        out_dtype):
    a, b = _gram_inputs(device, n, 1, O, d, p, torch.float32)
    generator = torch.Generator().manual_seed(7)
    mask = torch.rand(p, d, generator=generator).to(device)
    mask = {"bool": mask < 0.5, "uint8": (mask < 0.5).to(torch.uint8), "float": mask}[mask_kind]
    rows = n if sum_outputs else n * O
    start = torch.randn(rows, rows, dtype=out_dtype, device=device)
    out = start.clone()
    ntk_masked_block_(out, a, b, mask, bias, sum_outputs)
    expected = start + reference_masked_block(a, b, mask, bias, sum_outputs, out_dtype)
    tol = 1e-10 if out_dtype == torch.float64 else 1e-4
    _assert_close_scaled(out, expected, tol)


# Kernels larger than one tile of the native Gram route (256 rows of examples × T × outputs) and
# of the masked block (32 examples), so that several tiles, their mirrors and ragged edges occur.
@pytest.mark.parametrize("n, T, O", [(60, 1, 10), (30, 3, 4), (300, 1, 1)])
@pytest.mark.parametrize("sum_outputs", [True, False])
def test_gram_block_over_many_tiles(device, n, T, O, sum_outputs):
    a, b = _gram_inputs(device, n, T, O, 7, 5, torch.float64)
    rows = n if sum_outputs else n * O
    start = torch.randn(rows, rows, dtype=torch.float64, device=device)
    out = start.clone()
    ntk_gram_block_(out, a, b, T, True, sum_outputs)
    expected = start + reference_gram_block(a, b, T, True, sum_outputs, torch.float64)
    _assert_close_scaled(out, expected, 1e-10)
    strided = torch.zeros(rows, 2 * rows, dtype=torch.float64, device=device)[:, ::2]
    ntk_gram_block_(strided, a, b, T, True, sum_outputs)
    _assert_close_scaled(strided, expected - start, 1e-10)


@pytest.mark.parametrize("sum_outputs", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_kernel_is_the_sum_of_gram_blocks(device, sum_outputs, dtype):
    n, O = 45, 6
    maps = [_gram_inputs(device, n, T, O, d, p, torch.float32) + (T,)
            for T, d, p in ((1, 9, 4), (3, 5, 7), (1, 0, 3), (2, 4, 1))]
    got = ntk_gram_kernel([m[0] for m in maps], [m[1] for m in maps], [m[2] for m in maps],
                          sum_outputs, dtype)
    assert got.dtype == dtype
    expected = sum(reference_gram_block(a, b, T, False, sum_outputs, torch.float64)
                   for a, b, T in maps)
    _assert_close_scaled(got.double(), expected, 1e-10 if dtype == torch.float64 else 1e-5)


def test_engine_fuses_the_most_common_rows_per_example(device, monkeypatch):
    """Gram-route layers with the most common T go to ntk_gram_kernel in one call (its tiles
    are sized by the largest T); the others are added per layer; the sum is the same."""
    n, O = 12, 3
    terms = [_gram_inputs(device, n, T, O, d, p, torch.float64) + (T,)
             for T, d, p in ((1, 5, 4), (4, 3, 2), (1, 6, 3))]
    fused = []
    monkeypatch.setattr(empirical, "ntk_gram_kernel", lambda a, b, T, *rest: fused.append(
        tuple(T)) or ntk_gram_kernel(a, b, T, *rest))
    parts = empirical._KernelParts((n * O, n * O), torch.float64, device, False, gram=terms)
    got = parts.kernel()
    assert fused == [(1, 1)]
    expected = sum(reference_gram_block(a, b, T, False, False, torch.float64) for a, b, T in terms)
    _assert_close_scaled(got, expected, 1e-10)


def test_gram_kernel_bias_is_a_column_of_ones(device):
    a, b = _gram_inputs(device, 40, 1, 7, 6, 5, torch.float64)
    with_ones = torch.cat([a, torch.ones(40, 1, dtype=torch.float64, device=device)], 1)
    got = ntk_gram_kernel([with_ones], [b], [1])
    _assert_close_scaled(got, reference_gram_block(a, b, 1, True, False, torch.float64), 1e-10)


@pytest.mark.parametrize("op", ["gram", "kernel", "masked"])
def test_block_ops_do_not_depend_on_the_thread_count(device, op):
    """Tiles are claimed dynamically, so which thread computes a tile varies from run to run;
    each tile's arithmetic must not (same bits with 1 or 2 threads, and from run to run)."""
    a, b = _gram_inputs(device, 70, 1, 5, 9, 6, torch.float32)
    mask = (torch.rand(6, 9, generator=torch.Generator().manual_seed(3)) < 0.5).to(device)

    def compute() -> Tensor:
        if op == "kernel":
            return ntk_gram_kernel([a, a[:, :4]], [b, b[:, :, :2]], [1, 1], False, torch.float32)
        out = torch.zeros(350, 350, device=device)
        if op == "gram":
            ntk_gram_block_(out, a, b)
        else:
            ntk_masked_block_(out, a, b, mask)
        return out

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = compute()
        torch.set_num_threads(2)
        results = [compute() for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    for result in results:
        assert torch.equal(result, single)


def test_masked_block_with_full_mask_equals_gram_block(device):
    a, b = _gram_inputs(device, 9, 1, 2, 6, 4, torch.float64)
    masked = torch.zeros(18, 18, dtype=torch.float64, device=device)
    gram = masked.clone()
    ntk_masked_block_(masked, a, b, torch.ones(4, 6, dtype=torch.bool, device=device))
    ntk_gram_block_(gram, a, b)
    torch.testing.assert_close(masked, gram)


def test_block_ops_non_contiguous(device):
    a, b = _gram_inputs(device, 6, 1, 2, 5, 4, torch.float64)
    a_nc = torch.stack([a, -a], -1)[..., 0]
    assert not a_nc.is_contiguous() and not b.transpose(1, 2).is_contiguous()
    b_nc = b.transpose(1, 2).contiguous().transpose(1, 2)
    out = torch.zeros(24, 24, dtype=torch.float64, device=device).T[:12, :12]
    ntk_gram_block_(out, a_nc, b_nc)
    torch.testing.assert_close(out, reference_gram_block(a, b, 1, True, False, torch.float64))
    mask = (torch.rand(5, 4) < 0.5).to(device).T
    out2 = torch.zeros(12, 12, dtype=torch.float64, device=device)
    assert not mask.is_contiguous()
    ntk_masked_block_(out2, a_nc, b_nc, mask)
    torch.testing.assert_close(out2, reference_masked_block(a, b, mask, True, False, torch.float64))


def _native(op: str, device: torch.device) -> bool:
    return has_native_kernel(op, device.type)


def test_block_ops_opcheck(device):
    if not (_native("ntk_gram_block_", device) and _native("ntk_masked_block_", device)):
        pytest.fail("the NTK block ops have no native kernel on this device")
    a, b = _gram_inputs(device, 5, 2, 2, 4, 3, torch.float32)
    out = torch.zeros(10, 10, device=device)
    torch.library.opcheck(torch.ops.sparsenas.ntk_gram_block_, (out, a, b, 2, True, False))
    mask = torch.rand(3, 4, device=device) < 0.5
    out_sum = torch.zeros(10, 10, device=device)
    torch.library.opcheck(torch.ops.sparsenas.ntk_masked_block_,
                          (out_sum, a[:10], b[:10], mask, False, True))
    if _native("ntk_gram_kernel", device):
        torch.library.opcheck(torch.ops.sparsenas.ntk_gram_kernel,
                              ([a, a[:5]], [b, b[:5]], [2, 1], False, torch.float64))


@pytest.mark.parametrize("op, args, error, match", [
    ("gram", lambda a, b, o, m: (o.bfloat16(), a, b), TypeError, "out"),
    ("gram", lambda a, b, o, m: (o, a[0], b), ValueError, "'a'"),
    ("gram", lambda a, b, o, m: (o, a, b[:-1]), ValueError, "'b'"),
    ("gram", lambda a, b, o, m: (o, a, b[:, :, 0]), ValueError, "'b'"),
    ("gram", lambda a, b, o, m: (o[:-1], a, b), ValueError, "'out'"),
    ("gram", lambda a, b, o, m: (o, a, b, 0), ValueError, "rows_per_example"),
    ("gram", lambda a, b, o, m: (o, a, b, 4), ValueError, "'a'"),
    ("gram", lambda a, b, o, m: (o, a.long(), b), TypeError, "'a'"),
    ("masked", lambda a, b, o, m: (o, a, b, m[:, :-1]), ValueError, "mask"),
    ("masked", lambda a, b, o, m: (o, a, b, m.long()), TypeError, "mask"),
    ("masked", lambda a, b, o, m: (o, a, b, m[0]), ValueError, "mask"),
    ("masked", lambda a, b, o, m: (o.half(), a, b, m), TypeError, "out"),
])
def test_block_ops_bad_inputs(device, op, args, error, match):
    a, b = _gram_inputs(device, 6, 1, 2, 4, 3, torch.float64)
    out = torch.zeros(12, 12, dtype=torch.float64, device=device)
    mask = torch.ones(3, 4, dtype=torch.bool, device=device)
    fn = ntk_gram_block_ if op == "gram" else ntk_masked_block_
    with pytest.raises(error, match=match):
        fn(*args(a, b, out, mask))


def test_reference_path_without_extension():
    import os
    import subprocess
    import sys

    code = (
        "import torch, tests.test_ntk as t\n"
        "from sparsenas._extension import has_native_kernel\n"
        "from sparsenas.ntk import empirical_ntk\n"
        "assert not has_native_kernel('ntk_gram_block_', 'cpu')\n"
        "m = t.mlp(weight_mask=True).double().eval(); x = torch.randn(5, 5, dtype=torch.float64)\n"
        "for mode in ('full', 'trace'):\n"
        "    torch.testing.assert_close(empirical_ntk(m, x, mode=mode), t.reference_ntk(m, x, mode))\n"
        "m = t._prepare(t.ResidualCNN(), torch.device('cpu')).double()\n"
        "x = torch.randn(3, 3, 8, 8, dtype=torch.float64)\n"
        "torch.testing.assert_close(empirical_ntk(m, x, mode='full'), t.reference_ntk(m, x, 'full'))\n"
        "print('ok')\n")
    env = dict(os.environ, SPARSENAS_DISABLE_EXTENSION="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip().endswith("ok")
