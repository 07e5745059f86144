"""Policy losses: R²VPO, ratio-variance regularisation instead of PPO's clipping (seed 001, SPEC §3).

Pure torch. The token aggregation is passed in (``aggregate(loss_mat, mask) -> scalar``), so verl's
``agg_loss`` with its ``loss_agg_mode`` and global-batch scaling plugs in without this module
knowing verl; the default is the masked token mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Aggregate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOG_RATIO_CLAMP = 20.0
"""|log ρ| is clamped here before exp, as verl's vanilla loss does (numerical safety, not a trust region)."""


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ values·mask / Σ mask over all valid tokens; (bs, T), (bs, T) -> scalar."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def importance_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """ρ_t = π_θ(y_t) / π_old(y_t) = exp(log π_θ − log π_old), (bs, T)."""
    return torch.exp(torch.clamp(log_prob - old_log_prob, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def ratio_variance(ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Var(ρ) over the valid tokens: mean_t (ρ_t − ρ̄)², ρ̄ = mean_t ρ_t (population variance). (bs, T) -> scalar."""
    mean = masked_token_mean(ratio, mask)
    return masked_token_mean((ratio - mean) ** 2, mask)


def r2vpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
    aggregate: Aggregate = masked_token_mean,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """R²VPO loss (seed 001, Eq. L_RVPO = L_PG − λ · Var(ρ), as a loss to minimise; SPEC §3):

        L = agg_t(−ρ_t · A_t) + λ · agg_t((ρ_t − sg(ρ̄))²),   ρ̄ = the micro-batch's valid-token mean of ρ

    No clipping. The penalty is the ratio variance over the micro-batch's valid tokens; with the
    token mean as ``aggregate`` it is exactly ``ratio_variance`` (value and gradient: Σ_t (ρ_t − ρ̄) = 0,
    so stopping the gradient through ρ̄ changes nothing), and with verl's ``agg_loss`` it is scaled
    across micro-batches and ranks exactly as the policy-gradient term is.

    Args:
        log_prob: (bs, T) log π_θ of the response tokens (with grad).
        old_log_prob: (bs, T) log π_old.
        advantages: (bs, T).
        mask: (bs, T) valid response tokens.
        lam: λ ≥ 0.
        aggregate: ``(loss_mat (bs, T), mask) -> scalar``.
        weights: optional (bs, T) per-token weights of the policy-gradient term (rollout IS weights).

    Returns:
        (loss, policy-gradient term, Var(ρ) detached), three scalars.
    """
    ratio = importance_ratio(log_prob, old_log_prob)
    pg_losses = -advantages * ratio
    if weights is not None:
        pg_losses = pg_losses * weights
    pg_loss = aggregate(pg_losses, mask)
    deviation = ratio - masked_token_mean(ratio, mask).detach()
    penalty = aggregate(deviation**2, mask)
    return pg_loss + lam * penalty, pg_loss, ratio_variance(ratio.detach(), mask)


def dual_lambda_update(lam: float, variance: float, target_variance: float, dual_lr: float) -> float:
    """Dual ascent on λ for the constraint Var(ρ) ≤ δ (R²VPO's primal–dual form, SPEC §3):

    λ ← max(0, λ + η · (Var(ρ) − δ))
    """
    return max(0.0, lam + dual_lr * (variance - target_variance))
