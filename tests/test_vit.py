"""The small ViT: registry, shapes, bad input, and its FLOPs / parameter formulas against
PyTorch's own operation counter and parameter count."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sparsenas.models import (ParentConfig, ViT, create_model, flops, list_models,
                              num_parameters)

pytestmark = pytest.mark.usefixtures("one_thread")


def _vit(**kwargs) -> ViT:
    torch.manual_seed(0)
    return create_model("vit", input_shape=(1, 8, 8), num_classes=10, **kwargs)


def test_registered_and_shapes():
    assert "vit" in list_models()
    model = _vit()
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert model.pos_embed.shape == (1, 17, 64)  # 16 patches of 2x2 + the class token
    cifar = create_model("vit", input_shape=(3, 32, 32), num_classes=10, patch_size=4,
                         embed_dim=32, depth=2, num_heads=2)
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("kwargs", [
    {},
    {"embed_dim": 24, "depth": 2, "num_heads": 3, "head_dim": (5, 7), "mlp_hidden": (9, 30)},
])
def test_flops_and_parameters_match_pytorch_counts(kwargs):
    model = _vit(**kwargs)
    assert num_parameters(model, (8, 8)) == sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 1, 8, 8))
    # FlopCounterMode counts 2 FLOPs per multiply-accumulate and does not see inside the CPU
    # fused attention kernel: its q k^T and attn @ v products are added here (17 tokens).
    w = model.widths
    attention = sum(2 * 17 * 17 * w.num_heads * d for d in w.head_dims)
    assert 2 * flops(model, (8, 8)) == counter.get_total_flops() + 2 * attention
    assert model.flops() == flops(model.widths, (8, 8))


def test_flops_of_expected_widths_is_differentiable():
    model = _vit(depth=2)
    embed = torch.tensor(40.0, requires_grad=True)
    widths = model.widths.__class__(**{**model.widths.__dict__, "embed": embed})
    value = flops(widths, (8, 8))
    value.backward()
    assert embed.grad is not None and embed.grad > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"patch_size": 3}, "patch_size 3 must divide the image size 8x8"),
    ({"embed_dim": 10, "num_heads": 4}, "not divisible by num_heads"),
    ({"head_dim": (4, 4)}, "argument 'head_dim'"),
    ({"mlp_ratio": 0}, "argument 'mlp_ratio'"),
    ({"depth": 0}, "argument 'depth'"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _vit(**kwargs)


def test_flops_rejects_other_types():
    with pytest.raises(TypeError, match="expected a ViT or ViTWidths"):
        flops(torch.nn.Linear(2, 2), (8, 8))


def test_node_mask_searches_reject_the_vit_in_one_line():
    with pytest.raises(ValueError, match="model 'vit' has no node space; node-mask searches "
                                         "take cnn, mlp"):
        ParentConfig(model="vit", widths=(8,)).validate()
