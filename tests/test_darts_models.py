"""DARTS search and evaluation networks on sparse layers: layout, shapes, registry, bad sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsenas.models import MODELS, DartsNetwork, DartsSearchNetwork, Genotype, create_model
from sparsenas.models.darts import DARTS_V2, PRIMITIVES, MixedOp, make_op, reduction_layers
from sparsenas.nn import SparseConv2d, SparseLinear, model_phase, set_phase, sparse_layers


pytestmark = pytest.mark.usefixtures("one_thread")


def _seeded(build, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _only_sparse_parametric_layers(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert isinstance(module, (SparseConv2d, SparseLinear)), name


def test_search_network_layout_and_shapes():
    model = _seeded(lambda: create_model("darts-search", input_shape=(1, 8, 8), num_classes=10,
                                         C=2, layers=3, steps=4))
    assert isinstance(model, DartsSearchNetwork)
    assert model.alphas_normal.shape == (14, 8) and model.alphas_reduce.shape == (14, 8)
    assert [cell.reduction for cell in model.cells] == [False, True, True]
    assert all(len(cell.edges) == 14 for cell in model.cells)
    assert isinstance(model.stem[0], SparseConv2d) and isinstance(model.classifier, SparseLinear)
    _only_sparse_parametric_layers(model)
    logits = model(torch.randn(3, 1, 8, 8))
    assert logits.shape == (3, 10)
    logits.sum().backward()
    assert model.alphas_normal.grad is not None and model.alphas_reduce.grad is not None


def test_mixed_op_is_the_softmax_weighted_sum():
    op = _seeded(lambda: MixedOp(4, 1)).eval()
    x = torch.randn(2, 4, 6, 6)
    weights = torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    expected = sum(w * o(x) for w, o in zip(weights, op.ops))
    torch.testing.assert_close(op(x, weights), expected)
    # standard DARTS ops: sep conv = two depthwise + pointwise blocks, dil conv dilated depthwise
    sep = make_op("sep_conv_5x5", 4, 2, affine=True)
    depthwise = [m for m in sep.modules() if isinstance(m, SparseConv2d) and m.groups == 4]
    assert [m.kernel_size for m in depthwise] == [(5, 5), (5, 5)]
    assert [m.stride for m in depthwise] == [(2, 2), (1, 1)]
    dil = make_op("dil_conv_3x3", 4, 1, affine=True)
    assert [m.dilation for m in dil.modules() if isinstance(m, SparseConv2d)] == [(2, 2), (1, 1)]
    assert type(make_op("skip_connect", 4, 2, affine=True)).__name__ == "FactorizedReduce"
    assert make_op("none", 4, 2, affine=True)(x).abs().sum() == 0


def test_evaluation_network_follows_the_genotype():
    model = _seeded(lambda: create_model("darts", input_shape=(3, 16, 16), num_classes=10,
                                         genotype=DARTS_V2, C=2, layers=5))
    assert isinstance(model, DartsNetwork)
    assert [cell.reduction for cell in model.cells] == [False, True, False, True, False]
    normal, reduce = model.cells[0], model.cells[1]
    assert [type(op).__name__ for op in normal.ops] == [
        "SepConv", "SepConv", "SepConv", "SepConv", "SepConv", "Identity", "Identity", "DilConv"]
    assert [type(op).__name__ for op in reduce.ops] == [
        "MaxPool2d", "MaxPool2d", "Identity", "MaxPool2d", "MaxPool2d", "Identity", "Identity",
        "MaxPool2d"]
    _only_sparse_parametric_layers(model)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_phase_helpers_reach_every_sparse_layer():
    model = _seeded(lambda: DartsSearchNetwork((1, 8, 8), 4, C=4, layers=2, steps=2))
    set_phase(model, "prune", keep=0.1)
    layers = [layer for _, layer in sparse_layers(model)]
    assert len(layers) > 20 and all(layer.keep == 0.1 for layer in layers)
    assert model_phase(model) == "prune"
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert all(layer.scores.grad is not None for layer in layers)
    assert all(layer.weight.grad is None for layer in layers)


def test_small_and_odd_configurations():
    one = _seeded(lambda: DartsNetwork((1, 8, 8), 3, Genotype((("sep_conv_3x3", 0),
                                                                ("skip_connect", 1)), (2,),
                                                               (("avg_pool_3x3", 1),
                                                                ("dil_conv_5x5", 0)), (2,)),
                                       C=2, layers=1))
    assert one(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert reduction_layers(1) == (0,) and reduction_layers(2) == (0, 1)
    assert reduction_layers(8) == (2, 5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_shape=(1, 6, 6)), "multiples of 4"),
    (dict(input_shape=(1, 8, 10)), "multiples of 4"),
    (dict(input_shape=(8, 8)), "'input_shape'"),
    (dict(layers=0), "'layers'"),
    (dict(steps=0), "'steps'"),
    (dict(C=0), "'C'"),
    (dict(num_classes=0), "'num_classes'"),
])
def test_bad_sizes_raise_clear_errors(kwargs, message):
    config = dict(input_shape=(1, 8, 8), num_classes=10, C=2, layers=3, steps=2, multiplier=2)
    config.update(kwargs)
    with pytest.raises(ValueError, match=message):
        DartsSearchNetwork(**config)


def test_bad_genotype_argument():
    with pytest.raises(TypeError, match="'genotype'"):
        DartsNetwork((1, 8, 8), 10, genotype="sep_conv_3x3")
    assert {"darts", "darts-search"} <= set(MODELS.names())
