"""The elastic supernet: kernel centres, width prefixes, depth, resolution, FLOPs / parameters,
export, the K-children path and bad configurations."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsenas.models import ChildConfig, ElasticNet, create_model, list_models


def _supernet(seed: int = 0, **overrides) -> ElasticNet:
    options = dict(input_shape=(1, 8, 8), num_classes=10, stem_channels=8,
                   stage_channels=(8, 16), stage_depths=(2, 2), stage_strides=(1, 2),
                   kernel_sizes=(3, 5))
    options.update(overrides)
    torch.manual_seed(seed)
    model = ElasticNet(**options)
    # Non-trivial BatchNorm parameters, so zero-initialised γ does not hide a wrong path.
    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data = torch.randn(module.num_features, generator=generator)
            module.bias.data = torch.randn(module.num_features, generator=generator)
            module.running_mean = torch.randn(module.num_features, generator=generator)
            module.running_var = torch.rand(module.num_features, generator=generator) + 0.5
    return model


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for name, p in model.named_parameters()}


def _inputs(n: int = 6, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_registered_and_last_batch_norm_gamma_zero():
    assert "elastic" in list_models()
    model = create_model("elastic", input_shape=(3, 32, 32), num_classes=10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    for stage in model.stages:
        for block in stage:
            assert torch.all(block.bn2.weight == 0)
            assert torch.all(block.bn1.weight == 1)


@pytest.mark.parametrize("train", [True, False])
def test_smaller_kernel_is_the_centre_of_the_largest(train):
    model = _supernet().train(train)
    ring_zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for stage in ring_zeroed.stages:
            for block in stage:
                for conv in (block.conv1, block.conv2):
                    centre = conv.weight[..., 1:4, 1:4].clone()
                    conv.weight.zero_()
                    conv.weight[..., 1:4, 1:4] = centre
    small = ChildConfig(8, (2, 2), (6, 12), (3, 3))
    large = ChildConfig(8, (2, 2), (6, 12), (5, 5))
    x = _inputs()
    torch.testing.assert_close(model.run_child(x, small, update_bn_stats=False),
                               ring_zeroed.run_child(x, large, update_bn_stats=False))


@pytest.mark.parametrize("train", [True, False])
def test_width_prefix_equals_full_network_with_other_channels_zeroed(train):
    model = _supernet().train(train)
    widths = (5, 9)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        in_width = zeroed.stem_conv.out_channels
        for stage, width in zip(zeroed.stages, widths):
            for block in stage:
                for conv in (block.conv1, block.conv2, block.shortcut_conv):
                    if conv is not None:
                        conv.weight[width:] = 0
                for bn in (block.bn1, block.bn2, block.shortcut_bn):
                    if bn is not None:
                        bn.weight[width:] = 0
                        bn.bias[width:] = 0
            in_width = width
        zeroed.classifier.weight[:, in_width:] = 0
    x = _inputs()
    child = ChildConfig(8, (2, 2), widths, (5, 3))
    full = ChildConfig(8, (2, 2), (8, 16), (5, 3))
    torch.testing.assert_close(model.run_child(x, child, update_bn_stats=False),
                               zeroed.run_child(x, full, update_bn_stats=False))


def test_depth_keeps_first_blocks_and_resolution_resizes_input():
    model = _supernet().eval()
    x = _inputs()
    child = ChildConfig(6, (1, 1), (8, 16), (3, 3))
    # Deeper blocks whose residual branch contributes nothing leave the output unchanged.
    with torch.no_grad():
        for stage in model.stages:
            stage[1].bn2.weight.zero_()
            stage[1].bn2.bias.zero_()
    resized = F.interpolate(x, size=(6, 6), mode="bilinear", align_corners=False)
    deeper = ChildConfig(6, (2, 2), (8, 16), (3, 3))
    # A block that adds nothing still applies ReLU to a non-negative input: identity.
    torch.testing.assert_close(model.run_child(x, child), model.run_child(x, deeper))
    torch.testing.assert_close(model.run_child(x, child), model.run_child(resized, child))


def test_bn_statistics_update_only_the_child_prefix_and_only_when_asked():
    model = _supernet().train()
    before = model.stages[1][0].bn1.running_mean.clone()
    child = ChildConfig(8, (1, 1), (4, 10), (3, 3))
    model.run_child(_inputs(), child, update_bn_stats=False)
    torch.testing.assert_close(model.stages[1][0].bn1.running_mean, before)
    model.run_child(_inputs(), child)
    after = model.stages[1][0].bn1.running_mean
    assert not torch.allclose(after[:10], before[:10])
    torch.testing.assert_close(after[10:], before[10:])


@pytest.mark.parametrize("train", [True, False])
def test_children_together_equal_children_one_by_one(train):
    model = _supernet().train(train)
    configs = [ChildConfig(7, (2, 1), widths, (5, 3)) for widths in ((8, 16), (3, 7), (6, 12))]
    x = _inputs()
    target = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(0))
    together = model.run_children(x, configs)
    sum(F.cross_entropy(logits, target) for logits in together).backward()
    grads_together = _grads(model)
    model.zero_grad()
    alone = torch.stack([model.run_child(x, c, update_bn_stats=False) for c in configs])
    sum(F.cross_entropy(logits, target) for logits in alone).backward()
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in grads_together.values())
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grads_together[name], grad, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_run_children_needs_shared_depths_kernels_resolution():
    model = _supernet()
    with pytest.raises(ValueError, match="share resolution"):
        model.run_children(_inputs(), [ChildConfig(8, (2, 2), (8, 16), (5, 5)),
                                       ChildConfig(8, (1, 2), (8, 16), (5, 5))])


@pytest.mark.parametrize("config", [ChildConfig(8, (2, 2), (8, 16), (5, 5)),
                                    ChildConfig(6, (1, 2), (3, 11), (3, 5))])
def test_export_equals_supernet_child_and_its_size(config):
    model = _supernet()
    exported = model.export(config)
    assert not any(type(m).__module__.startswith("sparsenas.ops") for m in exported.modules())
    model.eval()
    exported.eval()
    x = _inputs()
    torch.testing.assert_close(exported(x), model.run_child(x, config))
    assert model.num_parameters(config) == sum(p.numel() for p in exported.parameters())
    # Multiply-accumulates counted on the exported layers' actual outputs.
    counted = []

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] ** 2
            counted.append(output[0].numel() * per_output)
        elif isinstance(module, nn.Linear):
            counted.append(module.in_features * module.out_features)

    for module in exported.modules():
        module.register_forward_hook(count)
    exported(x[:1])
    assert model.flops(config) == sum(counted)


def test_smaller_children_cost_less():
    model = _supernet()
    big, small = model.max_config(), ChildConfig(6, (1, 1), (4, 8), (3, 3))
    assert model.flops(small) < model.flops(big)
    assert model.num_parameters(small) < model.num_parameters(big)
    assert model.num_parameters(big) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("config, message", [
    (ChildConfig(1, (2, 2), (8, 16), (5, 5)), "too small for the stem"),
    (ChildConfig(8, (3, 2), (8, 16), (5, 5)), "depth of stage 0"),
    (ChildConfig(8, (2, 2), (8, 17), (5, 5)), "width of stage 1"),
    (ChildConfig(8, (2, 2), (8, 16), (5, 7)), "kernel of stage 1"),
    (ChildConfig(8, (2,), (8,), (5,)), "expected 2 stages"),
])
def test_bad_child_configs_raise(config, message):
    model = _supernet()
    with pytest.raises(ValueError, match=message):
        model.set_child(config)
    with pytest.raises(ValueError, match=message):
        model.run_child(_inputs(), config)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="kernel_sizes"):
        ElasticNet((1, 8, 8), 10, kernel_sizes=(2, 3))
    with pytest.raises(ValueError, match="'x'"):
        _supernet()(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="generator"):
        _supernet().train().run_child(_inputs(), ChildConfig(8, (2, 2), (8, 16), (5, 5)),
                                      dropout=0.2)
    with pytest.raises(TypeError, match="widths"):
        ChildConfig(8, (2, 2), [8, 16], (5, 5))


def test_config_round_trips_through_plain_data():
    config = ChildConfig(6, (1, 2), (3, 11), (3, 5))
    assert ChildConfig.from_dict(config.to_dict()) == config


def test_architecture_rebuilds_the_supernet_and_rejects_another():
    model = _supernet()
    twin = ElasticNet(**model.architecture)
    assert twin.architecture == model.architecture
    twin.load_state_dict(model.state_dict())
    model.check_architecture(twin.architecture)
    other = dict(model.architecture, stage_channels=[8, 32])
    with pytest.raises(ValueError, match="another supernet: stage_channels"):
        model.check_architecture(other)
