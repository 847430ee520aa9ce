"""Parent models, the registry, and the K-candidate batched form's equivalence with the parent."""

from __future__ import annotations

import copy

import pytest
import torch

from sparsenas.models import CandidateBatch, create_model, list_models
from sparsenas.sampling import sample_node_masks


def _parent(name: str, device: torch.device, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kwargs = {"widths": (12, 10) if name == "mlp" else (6, 5)}
        return create_model(name, input_shape=(1, 8, 8), num_classes=4, **kwargs).to(device)


def _single(parent, masks, k):
    single = copy.deepcopy(parent)
    single.set_candidate([m[k] for m in masks])
    return single


def test_registry_lists_and_rejects_unknown():
    assert {"mlp", "cnn"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        create_model("vgg", input_shape=(1, 8, 8), num_classes=10)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_batched_candidates_match_single_networks(name, device):
    torch.manual_seed(1)
    parent = _parent(name, device).double()
    masks = sample_node_masks(parent.layer_sizes, 0.5, 3, seed=7, device=device)
    batch = CandidateBatch(parent, masks)
    singles = [_single(parent, masks, k) for k in range(3)]
    x = torch.randn(16, 1, 8, 8, device=device, dtype=torch.float64)
    y = torch.randint(0, 4, (16,), device=device)
    batch_opt = torch.optim.SGD(batch.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    single_opts = [torch.optim.SGD(s.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
                   for s in singles]
    for _ in range(3):  # train mode: per-candidate batch statistics and updates
        logits = batch(x)
        loss = sum(torch.nn.functional.cross_entropy(logits[k], y) for k in range(3))
        batch_opt.zero_grad()
        loss.backward()
        batch_opt.step()
        for k, (single, opt) in enumerate(zip(singles, single_opts)):
            single_logits = single(x)
            torch.testing.assert_close(logits[k], single_logits)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(single_logits, y).backward()
            opt.step()
    batch.eval()
    logits = batch(x)
    for k, single in enumerate(singles):
        single.eval()
        torch.testing.assert_close(logits[k], single(x))
        exported = copy.deepcopy(parent)
        exported.load_state_dict(batch.candidate_state_dict(k))
        exported.eval()
        torch.testing.assert_close(exported(x), logits[k])
        assert [m.sum().item() for m in exported.state_dict().values() if m.dtype == torch.bool] \
            == [m[k].sum().item() for m in masks]


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_shared_weights_sum_the_candidates_gradients(name, device):
    parent = _parent(name, device).double()
    masks = sample_node_masks(parent.layer_sizes, 0.5, 3, seed=3, device=device)
    batch = CandidateBatch(parent, masks, shared_weights=True)
    x = torch.randn(16, 1, 8, 8, device=device, dtype=torch.float64)
    y = torch.randint(0, 4, (16,), device=device)
    logits = batch(x)
    sum(torch.nn.functional.cross_entropy(logits[k], y) for k in range(3)).backward()
    shared = {n: p for n, p in batch.named_parameters() if n.endswith(("weight", "bias"))
              and p.dim() == dict(parent.named_parameters())[
                  n.replace(".module.", ".")].dim()}
    assert shared, "no shared parameter"
    expected = {n: torch.zeros_like(p) for n, p in shared.items()}
    for k in range(3):
        single = _single(parent, masks, k)
        single_logits = single(x)
        torch.testing.assert_close(logits[k], single_logits)
        torch.nn.functional.cross_entropy(single_logits, y).backward()
        params = dict(single.named_parameters())
        for n in shared:
            expected[n] += params[n.replace(".module.", ".")].grad
    for n, p in shared.items():
        torch.testing.assert_close(p.grad, expected[n])
    exported = copy.deepcopy(parent)
    exported.load_state_dict(batch.candidate_state_dict(1))
    exported.train()
    torch.testing.assert_close(exported(x), logits[1].detach())


def test_batched_rejects_wrong_masks():
    parent = _parent("mlp", torch.device("cpu"))
    with pytest.raises(ValueError, match="node_masks"):
        CandidateBatch(parent, [torch.ones(2, 12, dtype=torch.bool)])
    with pytest.raises(ValueError, match="node_masks"):
        CandidateBatch(parent, [torch.ones(2, 12, dtype=torch.bool),
                                torch.ones(3, 10, dtype=torch.bool)])
