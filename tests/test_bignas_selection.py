"""After BigNAS training: BN calibration, calibrated child accuracy, the exported child, and
coarse-to-fine selection under FLOPs and latency budgets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsenas.methods.bignas import calibrated_accuracy, coarse_to_fine, exported_latency_ms
from sparsenas.models import ChildConfig, ElasticNet
from sparsenas.spaces.elastic import ElasticSpace
from sparsenas.train.calibration import calibrate_batchnorm


def _model() -> ElasticNet:
    torch.manual_seed(0)
    model = ElasticNet((1, 8, 8), 10, stem_channels=8, stage_channels=(8, 16),
                       stage_depths=(2, 2), stage_strides=(1, 2))
    with torch.no_grad():
        for stage in model.stages:
            for block in stage:
                block.bn2.weight.fill_(0.5)
    return model


def _batches(num: int = 3, size: int = 16, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 1, 8, 8, generator=generator) * 2 + 1 for _ in range(num)]


def _scramble_stats(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 3)
            module.num_batches_tracked.fill_(17)


def test_calibration_resets_and_recomputes_plain_statistics():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(),
                          nn.Conv2d(4, 3, 3), nn.BatchNorm2d(3)).eval()
    _scramble_stats(model, 0)
    inputs = {}
    model[1].register_forward_hook(lambda m, args, out: inputs.setdefault("bn", []).append(args[0]))
    batches = _batches()
    assert calibrate_batchnorm(model, [(b, None) for b in batches]) == 3
    seen = torch.stack([x.transpose(0, 1).flatten(1) for x in inputs["bn"]])  # [batches, C, n]
    torch.testing.assert_close(model[1].running_mean, seen.mean(-1).mean(0))
    torch.testing.assert_close(model[1].running_var, seen.var(-1, unbiased=True).mean(0))
    assert int(model[1].num_batches_tracked) == 3
    assert not model.training and model[1].momentum == 0.3 and model[4].momentum == 0.1
    with pytest.raises(ValueError, match="no batch"):
        calibrate_batchnorm(model, [])
    with pytest.raises(ValueError, match="no BatchNorm"):
        calibrate_batchnorm(nn.Linear(2, 2), _batches())


def test_child_calibration_matches_torch_batchnorm_on_the_exported_child():
    config = ChildConfig(6, (1, 2), (4, 12), (3, 5))
    supernet, reference = _model(), _model()
    _scramble_stats(supernet, 1)
    _scramble_stats(reference, 2)
    supernet.set_child(config)
    calibrate_batchnorm(supernet, _batches())
    # Independent: torch's own BatchNorm2d (momentum None) on the plain exported layers.
    plain = reference.export(config)
    calibrate_batchnorm(plain, _batches())
    calibrated = supernet.export(config)
    for (name, a), b in zip(calibrated.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, msg=lambda m, n=name: f"{n}: {m}")
    # Statistics do not depend on what was there before.
    assert not torch.allclose(calibrated.stem[1].running_mean,
                              reference.export(config).stem[1].running_mean)


def test_exported_child_accuracy_equals_calibrated_supernet_child():
    model = _model()
    config = ChildConfig(8, (2, 1), (6, 12), (5, 3))
    generator = torch.Generator().manual_seed(5)
    x, y = torch.randn(64, 1, 8, 8, generator=generator), torch.randint(0, 10, (64,),
                                                                       generator=generator)
    accuracy = calibrated_accuracy(model, config, _batches(), x, y)
    exported = model.export(config).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x))
        assert (exported(x).argmax(-1) == y).float().mean().item() == accuracy
    with pytest.raises(ValueError, match="same number"):
        calibrated_accuracy(model, config, _batches(), x[:0], y[:0])


def _space() -> ElasticSpace:
    return ElasticSpace.for_model(_model(), resolutions=(6, 8),
                                  width_multipliers=(0.5, 0.75, 1.0))


def test_coarse_to_fine_under_a_flops_budget():
    model, space = _model(), _space()
    budget = 0.5 * model.flops(space.biggest())

    def score(config):  # more channels in the last stage and a higher resolution score higher
        return config.widths[-1] + 0.1 * config.resolution - 0.01 * sum(config.kernels)

    selection = coarse_to_fine(space, score, model.flops, budget, num_mutations=15, seed=3)
    assert selection.cost <= budget and model.flops(selection.config) == selection.cost
    coarse = [t for t in selection.trials if t["stage"] == "coarse"]
    assert len(coarse) == len(space.uniform_grid())
    best_coarse = max(t["score"] for t in coarse if t["within_budget"])
    assert selection.score >= best_coarse
    assert all(t["score"] is None for t in selection.trials if not t["within_budget"])
    assert any(t["stage"] == "fine" for t in selection.trials)
    again = coarse_to_fine(space, score, model.flops, budget, num_mutations=15, seed=3)
    assert again.config == selection.config and again.trials == selection.trials


def test_a_budget_no_child_meets_raises():
    model, space = _model(), _space()
    with pytest.raises(ValueError, match="no child meets the budget"):
        coarse_to_fine(space, lambda c: 0.0, model.flops, model.flops(space.smallest()) - 1)


def test_selection_by_calibrated_accuracy_under_a_latency_budget():
    model, space = _model(), ElasticSpace((8,), ((1, 2), (1, 2)), ((4, 8), (8, 16)), (3,))
    latency = exported_latency_ms(model, batch_size=8, min_run_time=0.01)
    assert latency(space.smallest()) > 0
    generator = torch.Generator().manual_seed(4)
    x, y = torch.randn(64, 1, 8, 8, generator=generator), torch.randint(0, 10, (64,),
                                                                       generator=generator)
    selection = coarse_to_fine(space, lambda c: calibrated_accuracy(model, c, _batches(), x, y),
                               latency, budget=1e6, num_mutations=2, seed=0)
    assert selection.cost <= 1e6
    assert selection.score == max(t["score"] for t in selection.trials)
    with pytest.raises(ValueError, match="no child meets the budget"):
        coarse_to_fine(space, lambda c: 0.0, latency, budget=0.0)
