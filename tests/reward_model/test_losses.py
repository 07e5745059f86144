"""Bradley–Terry losses against hand computations."""

import math

import pytest
import torch

from verl_variance.reward_model.losses import bradley_terry_loss, ensemble_bradley_terry_loss


def test_bradley_terry_matches_hand_computation():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    expected = (math.log(1 + math.exp(-1.0)) + math.log(2.0) + math.log(1 + math.exp(2.0))) / 3
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_is_finite_for_huge_gaps():
    loss = bradley_terry_loss(torch.tensor([-1000.0]), torch.tensor([1000.0]))
    assert loss.item() == pytest.approx(2000.0)


def test_ensemble_loss_is_the_sum_of_per_head_losses():
    torch.manual_seed(0)
    chosen, rejected = torch.randn(16, 4), torch.randn(16, 4)
    total, per_head = ensemble_bradley_terry_loss(chosen, rejected)
    assert per_head.shape == (4,)
    for k in range(4):
        assert per_head[k].item() == pytest.approx(bradley_terry_loss(chosen[:, k], rejected[:, k]).item(), rel=1e-6)
    assert total.item() == pytest.approx(per_head.sum().item(), rel=1e-6)


def test_each_head_gets_only_its_own_gradient():
    generator = torch.Generator().manual_seed(0)
    chosen = torch.randn(8, 3, generator=generator).requires_grad_()
    rejected = torch.randn(8, 3, generator=generator)
    ensemble_bradley_terry_loss(chosen, rejected)[0].backward()
    alone = chosen.detach()[:, 1].clone().requires_grad_()
    bradley_terry_loss(alone, rejected[:, 1]).backward()
    torch.testing.assert_close(chosen.grad[:, 1], alone.grad)


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\(batch, K\)"):
        ensemble_bradley_terry_loss(torch.zeros(3), torch.zeros(3))
