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
from sparsenas.ntk import MODES, empirical_ntk, ntk_gram_block_, ntk_masked_block_
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
@pytest.mark.parametrize("variant", ["plain", "node_masks", "weight_mask", "masks_arg"])
def test_cnn_matches_jacobian_contraction(device, mode, variant):
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
