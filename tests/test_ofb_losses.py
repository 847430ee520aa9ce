"""OFB losses against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from sparsenas.methods.ofb.losses import (adaptive_one_hot_loss, flops_loss,
                                          one_hot_variance_max, score_l1)


def test_variance_max_is_the_variance_of_a_one_hot_vector():
    for alive in (2, 3, 7):
        one_hot = torch.zeros(alive, dtype=torch.float64)
        one_hot[0] = 1
        assert one_hot.var(unbiased=False).item() == pytest.approx(one_hot_variance_max(alive))


def test_uniform_probabilities():
    # K' = 4: H = ln 4 = 1.3862944; ρ = 0 is clamped to 0.01, tan(π/2 − 0.01π) = cot(0.01π)
    # = 31.8205160, divided by K' = 7.9551290; total 9.3414234.
    loss = adaptive_one_hot_loss(torch.full((4,), 0.25, dtype=torch.float64))
    assert loss.item() == pytest.approx(9.3414234, abs=1e-6)
    assert adaptive_one_hot_loss(torch.full((4,), 0.25), entropy_only=True).item() == \
        pytest.approx(1.3862944, abs=1e-6)


def test_near_one_hot_probabilities():
    # p = (0.97, 0.01, 0.01, 0.01): H = −0.97 ln 0.97 − 3 · 0.01 ln 0.01 = 0.1677005;
    # Var = (0.72² + 3 · 0.24²)/4 = 0.1728, Var_max = 3/16 = 0.1875, ρ = 0.9216;
    # tan(π/2 − 0.9216π) = −3.9776408, / 4 = −0.9944102; total −0.8267097.
    p = torch.tensor([0.97, 0.01, 0.01, 0.01], dtype=torch.float64)
    assert adaptive_one_hot_loss(p).item() == pytest.approx(-0.8267097, abs=1e-6)
    # p = (0.6, 0.4): H = 0.6730117, ρ = 0.01/0.25 = 0.04, tan(0.46π)/2 = 3.9579075.
    two = torch.tensor([0.6, 0.4], dtype=torch.float64)
    assert adaptive_one_hot_loss(two).item() == pytest.approx(4.6309192, abs=1e-6)


def test_one_hot_side_is_clamped_and_gradient_pushes_towards_one_hot():
    exact = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    # H = 0; ρ = 1 clamped to 0.99: tan(−0.49π)/3 = −31.8205160/3.
    assert adaptive_one_hot_loss(exact).item() == pytest.approx(-10.6068387, abs=1e-6)
    logits = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    adaptive_one_hot_loss(logits.softmax(0)).backward()
    assert logits.grad[0] < 0  # gradient descent raises the leading logit


def test_single_alive_candidate_and_bad_input():
    assert adaptive_one_hot_loss(torch.ones(1)).item() == 0.0
    with pytest.raises(ValueError, match="argument 'probs'"):
        adaptive_one_hot_loss(torch.ones(2, 2))


def test_score_l1_and_flops_loss():
    scores = [torch.zeros(3), torch.tensor([[100.0, -100.0]])]
    # σ values 0.5, 0.5, 0.5, 1, 0 -> mean 0.5.
    assert score_l1(scores).item() == pytest.approx(0.5)
    assert flops_loss(torch.tensor(150.0), 100.0, 200.0).item() == pytest.approx(0.0625)
    with pytest.raises(ValueError, match="argument 'original'"):
        flops_loss(torch.tensor(1.0), 1.0, 0.0)
