import copy

import pytest
import torch
from torch import nn

from sparsenas.nn import NodeMask, node_mask_modules, set_node_masks
from sparsenas.sparse import compact, expand


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(12, 40), nn.BatchNorm1d(40), nn.ReLU(), NodeMask(40),
        nn.Linear(40, 30), nn.Sigmoid(), NodeMask(30),
        nn.Linear(30, 5),
    )


class ResidualCNN(nn.Module):
    """Stem -> residual block whose output carries the stem's mask -> depthwise conv -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.stem_mask = NodeMask(16, dim=1)
        self.conv1 = nn.Conv2d(16, 24, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.mask1 = NodeMask(24, dim=1)
        self.conv2 = nn.Conv2d(24, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.mask2 = NodeMask(16, dim=1)
        self.depthwise = nn.Conv2d(16, 32, 3, padding=1, groups=16, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(32 * 4 * 4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.stem_mask(self.stem(x))
        branch = self.mask1(torch.relu(self.bn1(self.conv1(residual))))
        branch = self.mask2(torch.relu(self.bn2(self.conv2(branch))))
        out = torch.relu(self.depthwise(branch + residual))
        return self.head(self.flatten(self.pool(out)))


def randomise(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator, dtype=torch.float64))
                module.running_var.copy_(torch.rand(n, generator=generator, dtype=torch.float64) + 0.5)
                module.weight.copy_(torch.randn(n, generator=generator, dtype=torch.float64))
                module.bias.copy_(torch.randn(n, generator=generator, dtype=torch.float64))
    return model.eval()


def random_mask(n: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    keep = max(1, round((1 - sparsity) * n))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:keep]] = True
    return mask


def masked(model: nn.Module, sparsity: float, seed: int, tie: dict[str, str] | None = None):
    generator = torch.Generator().manual_seed(seed)
    masks = {name: random_mask(m.num_nodes, sparsity, generator)
             for name, m in node_mask_modules(model).items()}
    for name, source in (tie or {}).items():
        masks[name] = masks[source]
    set_node_masks(model, masks)
    return model


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_compacted_mlp_equals_masked(sparsity):
    model = masked(randomise(mlp().double(), 0), sparsity, seed=1)
    small = compact(model)
    x = torch.randn(9, 12, dtype=torch.float64)
    torch.testing.assert_close(small(x), model(x), rtol=1e-12, atol=1e-12)
    kept = [int(m.mask.sum()) for m in node_mask_modules(model).values()]
    assert small.get_submodule("0").weight.shape == (kept[0], 12)
    assert small.get_submodule("1").running_var.shape == (kept[0],)
    assert small.get_submodule("4").weight.shape == (kept[1], kept[0])
    assert small.get_submodule("7").weight.shape == (5, kept[1])
    assert not node_mask_modules(small)


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_compacted_residual_cnn_equals_masked(sparsity):
    model = masked(randomise(ResidualCNN().double(), 0), sparsity, seed=2,
                   tie={"mask2": "stem_mask"})
    small = compact(model)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(small(x), model(x), rtol=1e-12, atol=1e-12)
    kept_stem = int(model.stem_mask.mask.sum())
    assert small.get_submodule("stem.0").out_channels == kept_stem
    assert small.conv1.weight.shape[:2] == (int(model.mask1.mask.sum()), kept_stem)
    assert small.depthwise.groups == kept_stem and small.depthwise.out_channels == 2 * kept_stem
    assert small.head.in_features == 2 * kept_stem * 16
    assert not node_mask_modules(small)


def test_node_masks_argument_leaves_model_untouched():
    model = randomise(mlp().double(), 0)
    before = copy.deepcopy(model.state_dict())
    generator = torch.Generator().manual_seed(3)
    masks = {name: random_mask(m.num_nodes, 0.5, generator)
             for name, m in node_mask_modules(model).items()}
    small = compact(model, masks)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    set_node_masks(model, masks)
    x = torch.randn(5, 12, dtype=torch.float64)
    torch.testing.assert_close(small(x), model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [mlp, ResidualCNN])
def test_expand_round_trip(make):
    tie = {"mask2": "stem_mask"} if make is ResidualCNN else None
    parent = masked(randomise(make().double(), 0), 0.5, seed=4, tie=tie)
    original = copy.deepcopy(parent.state_dict())
    small = compact(parent)
    # Compacting and expanding unchanged weights restores the parent bit for bit.
    expand(small, parent)
    for key, value in parent.state_dict().items():
        assert torch.equal(value, original[key]), key
    # Trained (here: perturbed) compacted weights return into the parent exactly.
    with torch.no_grad():
        for p in small.parameters():
            p.add_(torch.randn_like(p))
    expand(small, parent)
    shape = (6, 12) if make is mlp else (2, 3, 8, 8)
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(parent(x), small(x), rtol=1e-12, atol=1e-12)
    for key, value in compact(parent).state_dict().items():
        torch.testing.assert_close(value, small.state_dict()[key], rtol=0, atol=0)


def test_unresolvable_mask_is_kept_and_exact():
    # A mask after a residual add has no single producer: it stays, the result is still exact.
    class AddThenMask(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(6, 8)
            self.mask = NodeMask(8)
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            return self.out(self.mask(self.a(x) + self.b(x)))

    model = masked(AddThenMask().double(), 0.5, seed=5)
    small = compact(model)
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(small(x), model(x), rtol=1e-12, atol=1e-12)
    assert "mask" in node_mask_modules(small)


def test_residual_with_different_masks_raises():
    model = masked(ResidualCNN().double(), 0.5, seed=6)  # mask2 differs from stem_mask
    with pytest.raises(ValueError, match="residual add"):
        compact(model)


def test_depthwise_bias_after_mask_raises():
    model = ResidualCNN().double()
    model.depthwise.bias = nn.Parameter(torch.ones(32, dtype=torch.float64))
    model = masked(model, 0.5, seed=2, tie={"mask2": "stem_mask"})
    with pytest.raises(ValueError, match="depthwise conv with a bias"):
        compact(model)


def test_batchnorm_after_mask_raises():
    model = nn.Sequential(nn.Linear(4, 8), NodeMask(8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    model = masked(model, 0.5, seed=7)
    with pytest.raises(ValueError, match="BatchNorm"):
        compact(model)


def test_candidate_masks_rejected():
    model = mlp()
    node_mask_modules(model)["3"].set_mask(torch.ones(2, 40, dtype=torch.bool))
    with pytest.raises(ValueError, match="single"):
        compact(model)
