"""Score-pruned layers: top-k mask exactness, straight-through score gradient and export, each
against a plain-PyTorch computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsenas.nn import (
    SparseConv2d,
    SparseLinear,
    model_phase,
    score_parameters,
    set_keep,
    set_phase,
    topk_mask,
)
from sparsenas.nn.scored import kept_count, sparsity_report


# full float32 convolutions on CUDA: the comparisons are between different convolution calls
pytestmark = pytest.mark.usefixtures("one_thread", "exact_float32_convolutions")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_topk(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Top-``count`` of |scores| by a stable descending sort (ties: lower flat index first)."""
    order = torch.sort(scores.abs().flatten(), descending=True, stable=True).indices
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[order[:count]] = True
    return mask.view(scores.shape)


LAYERS = [
    lambda: SparseLinear(12, 7),
    lambda: SparseLinear(5, 3, bias=False),
    lambda: SparseConv2d(4, 6, 3, stride=2, padding=1),
    lambda: SparseConv2d(6, 6, 5, padding=4, dilation=2, groups=6, bias=False),
]


@pytest.mark.parametrize("keep", [1.0, 0.5, 0.3, 0.1, 0.05, 0.01])
@pytest.mark.parametrize("shape", [(7, 12), (6, 1, 3, 3), (16, 8, 3, 3)])
def test_topk_mask_keeps_exactly_the_largest_scores(device, keep, shape):
    scores = torch.randn(shape, generator=_generator(1)).to(device)
    count = max(1, round(keep * scores.numel()))
    mask = topk_mask(scores, keep)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert int(mask.sum()) == count == kept_count(scores.numel(), keep)
    plain = torch.zeros(scores.numel(), dtype=torch.bool, device=device)
    plain[scores.abs().flatten().topk(count).indices] = True
    assert torch.equal(mask, plain.view(shape))


def test_topk_mask_breaks_ties_by_index(device):
    scores = torch.tensor([[0.5, -1.0, 1.0, 0.5], [1.0, 0.2, -0.5, 1.0]], device=device)
    for count in range(1, scores.numel() + 1):
        mask = topk_mask(scores, count / scores.numel())
        assert torch.equal(mask, _reference_topk(scores, count)), count
    ties = torch.ones(40, device=device)
    assert torch.equal(topk_mask(ties, 0.25), torch.arange(40, device=device) < 10)


@pytest.mark.parametrize("make", LAYERS)
def test_scores_start_from_scaled_weights(make):
    layer = make()
    fan_in = layer.weight[0].numel()
    expected = math.sqrt(6 / fan_in) * layer.weight / layer.weight.abs().max()
    torch.testing.assert_close(layer.scores, expected, rtol=0, atol=0)
    layer.keep = 0.3
    layer.set_phase("prune")
    assert torch.equal(layer.mask(), _reference_topk(layer.weight, kept_count(layer.weight.numel(),
                                                                               0.3)))


def _plain_forward(layer, x, weight):
    if isinstance(layer, SparseLinear):
        return F.linear(x, weight, layer.bias)
    return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation,
                    layer.groups)


def _input(layer, device, dtype):
    shape = (3, 5, layer.in_features) if isinstance(layer, SparseLinear) else \
        (2, layer.in_channels, 9, 9)
    return torch.randn(shape, generator=_generator(3), dtype=dtype).to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("make", LAYERS)
def test_prune_phase_gradients_are_straight_through(device, make, dtype):
    torch.manual_seed(0)
    layer = make().to(device, dtype)
    with torch.no_grad():  # scores unrelated to the weights, so mask and weights differ
        layer.scores.copy_(torch.randn(layer.scores.shape, generator=_generator(2)))
    layer.set_phase("prune")
    layer.set_keep(0.4)
    x = _input(layer, device, dtype).requires_grad_()
    target = torch.randn_like(layer(x))
    (layer(x) * target).sum().backward()

    scores = layer.scores.detach().clone().requires_grad_()
    mask = _reference_topk(scores, kept_count(scores.numel(), 0.4)).to(dtype)
    straight_through = mask + scores - scores.detach()
    x_plain = x.detach().clone().requires_grad_()
    out = _plain_forward(layer, x_plain, layer.weight.detach() * straight_through)
    (out * target).sum().backward()

    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer(x), out, **tol)
    torch.testing.assert_close(layer.scores.grad, scores.grad, **tol)
    torch.testing.assert_close(x.grad, x_plain.grad, **tol)
    assert layer.weight.grad is None and not layer.weight.requires_grad


@pytest.mark.parametrize("make", LAYERS)
def test_phases_switch_what_trains_and_what_masks(device, make):
    layer = make().to(device)
    x = _input(layer, device, torch.float32)
    dense_out = _plain_forward(layer, x, layer.weight)
    torch.testing.assert_close(layer(x), dense_out)
    assert layer.weight.requires_grad and not layer.scores.requires_grad

    layer.set_keep(0.2)
    torch.testing.assert_close(layer(x), dense_out)  # dense ignores the kept fraction
    layer.set_phase("finetune")
    mask = layer.fixed_mask.clone()
    assert int(mask.sum()) == kept_count(mask.numel(), 0.2)
    with torch.no_grad():
        layer.scores.neg_().add_(torch.randn_like(layer.scores))  # later scores change nothing
    torch.testing.assert_close(layer(x), _plain_forward(layer, x, layer.weight * mask))
    assert layer.weight.requires_grad and not layer.scores.requires_grad
    layer(x).sum().backward()
    assert torch.all(layer.weight.grad[~mask] == 0)
    assert layer.scores.grad is None


@pytest.mark.parametrize("phase", ["dense", "prune", "finetune"])
@pytest.mark.parametrize("make", LAYERS)
def test_export_to_plain_layer_matches(device, make, phase):
    layer = make().to(device)
    layer.set_keep(0.3)
    layer.set_phase(phase)
    dense = layer.to_dense()
    assert type(dense) in (nn.Linear, nn.Conv2d)
    x = _input(layer, device, torch.float32)
    torch.testing.assert_close(dense(x), layer(x))
    kept = int((dense.weight != 0).sum())
    expected = layer.weight.numel() if phase == "dense" else kept_count(layer.weight.numel(), 0.3)
    assert kept == expected


def test_model_helpers_and_state_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(SparseConv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                          SparseLinear(4 * 6 * 6, 3))
    assert model_phase(model) == "dense"
    set_phase(model, "finetune", keep=0.25)
    assert model_phase(model) == "finetune"
    report = sparsity_report(model)
    assert report["kept_weights"] == kept_count(36, 0.25) + kept_count(432, 0.25)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(1)
    other = nn.Sequential(SparseConv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                          SparseLinear(4 * 6 * 6, 3))
    set_phase(other, "finetune", keep=0.25)
    other.load_state_dict(state)
    x = torch.randn(2, 1, 6, 6, generator=_generator(0))
    torch.testing.assert_close(other(x), model(x))
    assert len(score_parameters(model)) == 2

    model[0].set_phase("prune")
    with pytest.raises(ValueError, match="different phases"):
        model_phase(model)
    set_keep(model, 1.0)
    assert all(layer.keep == 1.0 for layer in (model[0], model[3]))


@pytest.mark.parametrize("keep", [0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_bad_kept_fraction(keep):
    with pytest.raises(ValueError, match="'keep'"):
        SparseLinear(3, 2, keep=keep)
    with pytest.raises(ValueError, match="'keep'"):
        set_keep(nn.Sequential(SparseLinear(3, 2)), keep)


def test_bad_phase_and_models_without_sparse_layers():
    with pytest.raises(ValueError, match="'phase'"):
        SparseLinear(3, 2).set_phase("train")
    with pytest.raises(ValueError, match="no SparseLinear"):
        set_phase(nn.Linear(3, 2), "prune")
