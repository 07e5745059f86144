"""R²VPO's loss and dual step (seed 001): against an independent formula, value and gradient."""

import pytest
import torch

from verl_variance.core.losses import dual_lambda_update, masked_token_mean, r2vpo_loss, ratio_variance


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    old = -torch.rand(4, 6, generator=generator, dtype=torch.float64) * 3
    new = (old + 0.3 * torch.randn(4, 6, generator=generator, dtype=torch.float64)).requires_grad_(True)
    advantages = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    return new, old, advantages, mask


def _independent(new, old, advantages, mask, lam):
    """-mean(rho * A) + lam * Var(rho) over the valid tokens, with torch.var (population) on the selected tokens."""
    rho = torch.exp(new - old)[mask]
    return -(rho * advantages[mask]).mean() + lam * torch.var(rho, unbiased=False)


@pytest.mark.parametrize("lam", [0.0, 0.7, 5.0])
def test_loss_and_gradient_match_an_independent_formula(lam):
    new, old, advantages, mask = _batch()
    loss, pg_loss, variance = r2vpo_loss(new, old, advantages, mask, lam)
    (grad,) = torch.autograd.grad(loss, new)
    new_ref = new.detach().clone().requires_grad_(True)
    expected = _independent(new_ref, old, advantages, mask, lam)
    (grad_ref,) = torch.autograd.grad(expected, new_ref)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)
    assert grad[~mask].abs().max() == 0  # padding gets no gradient
    rho = torch.exp(new - old).detach()[mask]
    assert variance.item() == pytest.approx(torch.var(rho, unbiased=False).item(), rel=1e-12)
    assert pg_loss.item() == pytest.approx(-(rho * advantages[mask]).mean().item(), rel=1e-12)


def test_lambda_zero_is_the_unclipped_policy_gradient():
    """With lam = 0 nothing is clipped: the gradient is -A * rho per token, however far rho is from 1."""
    new, old, advantages, mask = _batch(1)
    new = (new + 2.0).detach().requires_grad_(True)  # ratios near e^2, far outside any PPO clip range
    loss, _, _ = r2vpo_loss(new, old, advantages, mask, 0.0)
    (grad,) = torch.autograd.grad(loss, new)
    rho = torch.exp(new - old).detach()
    expected = -advantages * rho * mask / mask.sum()
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_custom_aggregation_scales_both_terms():
    new, old, advantages, mask = _batch(2)

    def token_sum(values, m):  # e.g. verl's token-mean over a global token count: a constant factor
        return (values * m).sum() / 100.0

    loss, pg_loss, _ = r2vpo_loss(new, old, advantages, mask, 2.0, aggregate=token_sum)
    loss_mean, pg_mean, _ = r2vpo_loss(new, old, advantages, mask, 2.0)
    factor = mask.sum().item() / 100.0
    assert loss.item() == pytest.approx(loss_mean.item() * factor, rel=1e-12)
    assert pg_loss.item() == pytest.approx(pg_mean.item() * factor, rel=1e-12)


def test_ratio_variance_is_zero_on_policy():
    _, old, _, mask = _batch()
    assert ratio_variance(torch.exp(old - old), mask).item() == 0.0
    assert masked_token_mean(torch.ones(2, 2), torch.zeros(2, 2)).item() == 0.0  # an empty mask is not NaN


def test_dual_update_moves_lambda_toward_the_constraint():
    assert dual_lambda_update(1.0, variance=0.3, target_variance=0.1, dual_lr=2.0) == pytest.approx(1.4)
    assert dual_lambda_update(1.0, variance=0.05, target_variance=0.1, dual_lr=2.0) == pytest.approx(0.9)
    assert dual_lambda_update(0.05, variance=0.0, target_variance=0.1, dual_lr=2.0) == 0.0  # never below 0


def test_ratio_variance_falls_as_lambda_grows():
    """A small controlled optimisation: 50 Adam steps on the R²VPO loss from the same start; the final
    ratio variance decreases strictly with lambda."""
    _, old, advantages, mask = _batch(3)
    finals = []
    for lam in (0.0, 1.0, 10.0, 100.0):
        new = old.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([new], lr=0.05)
        for _ in range(50):
            optimizer.zero_grad()
            loss, _, _ = r2vpo_loss(new, old, advantages, mask, lam)
            loss.backward()
            optimizer.step()
        finals.append(ratio_variance(torch.exp(new - old).detach(), mask).item())
    assert finals == sorted(finals, reverse=True) and len(set(finals)) == 4, finals
    assert finals[-1] < 0.1 * finals[0]
