"""Masked layers: equivalence with dense layers, state_dict, conversion helpers, torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsenas.nn import MaskedConv2d, MaskedLinear, convert_to_dense, convert_to_masked


@pytest.fixture(autouse=True)
def _exact_float32_convolutions():
    # cuDNN may run float32 convolutions in TF32 (10-bit mantissa); the comparisons here are
    # between different convolution calls, so they need full float32 on both sides.
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous


def _random_mask(shape, seed=0, device="cpu"):
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.5).to(device)


def _small_model(device):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4, bias=False), nn.ReLU(),
        nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU()),
        nn.Linear(16, 5),
    ).to(device)


@pytest.mark.parametrize("dense", [
    lambda: nn.Linear(6, 4),
    lambda: nn.Linear(6, 4, bias=False),
    lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1),
    lambda: nn.Conv2d(4, 8, (3, 2), dilation=(2, 1), groups=4, bias=False),
    lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
    lambda: nn.Conv2d(4, 6, 3, padding="same", padding_mode="circular"),
], ids=["linear", "linear-nobias", "conv", "conv-grouped", "conv-reflect", "conv-same-circular"])
def test_from_dense_and_to_dense_match_the_masked_dense_layer(device, dense):
    torch.manual_seed(0)
    layer = dense().to(device)
    mask = _random_mask(layer.weight.shape, device=device)
    masked = (MaskedLinear if isinstance(layer, nn.Linear) else MaskedConv2d).from_dense(layer, mask)
    assert isinstance(masked, type(layer)) and masked.weight is layer.weight
    assert masked.weight_mask.dtype == torch.bool and torch.equal(masked.weight_mask, mask)
    x = torch.randn(2, 6, device=device) if isinstance(layer, nn.Linear) else \
        torch.randn(2, 4, 9, 8, device=device)
    with torch.no_grad():
        layer.weight.mul_(mask)
    expected = layer(x)
    torch.testing.assert_close(masked(x), expected)
    exported = masked.to_dense()
    assert type(exported) is type(layer)
    torch.testing.assert_close(exported(x), expected)
    torch.testing.assert_close(MaskedLinear.from_dense(layer)(x) if isinstance(layer, nn.Linear)
                               else MaskedConv2d.from_dense(layer)(x), expected)


def test_gradients_reach_weight_bias_and_soft_mask(device):
    torch.manual_seed(0)
    layer = MaskedConv2d(3, 4, 3, padding=1, device=device)
    soft = torch.rand(layer.weight.shape, device=device, requires_grad=True)
    layer.set_mask(soft)
    assert layer.weight_mask.dtype == layer.weight.dtype
    x = torch.randn(2, 3, 5, 5, device=device)
    layer(x).square().sum().backward()
    weight = layer.weight.detach().requires_grad_()
    mask = soft.detach().requires_grad_()
    nn.functional.conv2d(x, weight * mask, layer.bias, padding=1).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, weight.grad)
    torch.testing.assert_close(soft.grad, mask.grad)


def test_candidate_masks_evaluate_k_candidates(device):
    torch.manual_seed(0)
    layer = MaskedConv2d(3, 4, 3, padding=1, padding_mode="reflect", device=device)
    masks = _random_mask((2, *layer.weight.shape), device=device)
    layer.set_mask(masks)
    x = torch.randn(2, 2, 3, 6, 6, device=device)
    out = layer(x)
    for k in range(2):
        single = MaskedConv2d.from_dense(layer, masks[k])
        torch.testing.assert_close(out[k], single(x[k]))
    with pytest.raises(ValueError, match="K candidate masks"):
        layer.to_dense()


def test_state_dict_round_trip_keeps_mask_values_and_dtype(device):
    torch.manual_seed(0)
    source = MaskedLinear(5, 3, device=device, mask=_random_mask((3, 5), device=device))
    target = MaskedLinear(5, 3, device=device)
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.weight_mask, source.weight_mask)
    assert torch.equal(target.weight, source.weight)
    soft = MaskedConv2d(2, 3, 3, device=device, mask=torch.rand(3, 2, 3, 3, device=device))
    fixed = MaskedConv2d(2, 3, 3, device=device)
    fixed.load_state_dict(soft.state_dict())
    assert fixed.weight_mask.dtype == torch.float32
    torch.testing.assert_close(fixed.weight_mask, soft.weight_mask)
    x = torch.randn(1, 2, 5, 5, device=device)
    torch.testing.assert_close(fixed(x), soft(x))


@pytest.mark.parametrize("bad_mask,error", [
    (torch.ones(3, 4, dtype=torch.bool), ValueError),
    (torch.ones(2, 2, 3, 5, dtype=torch.bool), ValueError),
    (torch.ones(3, 5, dtype=torch.int64), TypeError),
])
def test_set_mask_rejects_bad_masks(bad_mask, error):
    with pytest.raises(error, match="'mask'"):
        MaskedLinear(5, 3).set_mask(bad_mask)


def test_convert_helpers_round_trip_a_cnn_mlp(device):
    model = _small_model(device).eval()
    reference = _small_model(device).eval()
    x = torch.randn(2, 3, 8, 8, device=device)
    parameters = list(model.parameters())
    assert convert_to_masked(model) is model
    masked_layers = [m for m in model.modules() if isinstance(m, (MaskedLinear, MaskedConv2d))]
    assert len(masked_layers) == 4
    assert not any(type(m) in (nn.Linear, nn.Conv2d) for m in model.modules())
    assert list(model.parameters()) == parameters  # the same Parameter objects
    torch.testing.assert_close(model(x), reference(x))
    for i, layer in enumerate(masked_layers):
        layer.set_mask(_random_mask(layer.weight.shape, seed=i, device=device))
    masked_output = model(x)
    assert not torch.allclose(masked_output, reference(x))
    assert convert_to_dense(model) is model
    assert sum(type(m) in (nn.Linear, nn.Conv2d) for m in model.modules()) == 4
    assert not any(hasattr(m, "weight_mask") for m in model.modules())
    torch.testing.assert_close(model(x), masked_output)
    # A single layer converts into a new layer.
    assert isinstance(convert_to_masked(nn.Linear(3, 2)), MaskedLinear)


def test_torch_compile_fullgraph_forward_and_backward(device):
    torch.manual_seed(0)
    model = nn.Sequential(
        MaskedConv2d(3, 4, 3, padding=1, mask=_random_mask((4, 3, 3, 3))), nn.ReLU(),
        nn.Flatten(), MaskedLinear(4 * 5 * 5, 3, mask=_random_mask((3, 100), seed=1)),
    ).to(device)
    x = torch.randn(2, 3, 5, 5, device=device)
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager_out)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want)


def test_from_dense_takes_over_a_layer_pruned_with_torch_prune(device):
    from torch.nn.utils import prune

    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, 3, device=device)
    mask = _random_mask(layer.weight.shape, device=device)
    prune.custom_from_mask(layer, "weight", mask)
    masked = MaskedConv2d.from_dense(layer)
    assert masked.weight is layer.weight_orig and torch.equal(masked.weight_mask, mask)
    x = torch.randn(2, 3, 6, 6, device=device)
    torch.testing.assert_close(masked(x), layer(x))


def test_convert_keeps_a_shared_layer_shared(device):
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared).to(device)
    convert_to_masked(model)
    assert isinstance(model[0], MaskedLinear) and model[0] is model[2]
