"""Uncertainty aggregators: K ensemble member rewards -> one training reward per sample.

Each aggregator is a pure function ``fn(member_rewards (bs, K), **params) -> (bs,)`` registered by
name; the config picks one with ``aggregator=<name>`` and its parameters. Every aggregator lies
between the min and max of the members (LCB and UWO are clamped to the minimum so that a large
penalty cannot push the reward below every member). mean, member, min and softmin are monotone in
each member reward; UWO and LCB are not (raising one member can widen the spread by more).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from verl_variance.core.variance import ensemble_reward_variance


@dataclass(frozen=True)
class Aggregator:
    fn: Callable[..., torch.Tensor]
    needs_variance: bool
    """True if the formula uses the spread across members (needs K >= 2)."""


AGGREGATORS: dict[str, Aggregator] = {}


def register_aggregator(name: str, needs_variance: bool = False) -> Callable:
    """Register an aggregator under ``name`` (a re-registration replaces it)."""

    def decorator(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        AGGREGATORS[name] = Aggregator(fn=fn, needs_variance=needs_variance)
        return fn

    return decorator


@register_aggregator("mean")
def mean_reward(member_rewards: torch.Tensor) -> torch.Tensor:
    """r = (1/K) Σ_k r_k. (bs, K) -> (bs,)."""
    return member_rewards.mean(dim=1)


@register_aggregator("member")
def member_reward(member_rewards: torch.Tensor, index: int = 0) -> torch.Tensor:
    """r = r_i, one member (the paper trains policy i on head i, Section 5). (bs, K) -> (bs,)."""
    if not -member_rewards.shape[1] <= index < member_rewards.shape[1]:
        raise ValueError(f"member index {index} out of range for an ensemble of {member_rewards.shape[1]}")
    return member_rewards[:, index]


@register_aggregator("min")
def min_reward(member_rewards: torch.Tensor) -> torch.Tensor:
    """r = min_k r_k, worst case (Coste et al.). (bs, K) -> (bs,)."""
    return member_rewards.min(dim=1).values


@register_aggregator("uwo", needs_variance=True)
def uncertainty_weighted_reward(member_rewards: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Uncertainty-weighted optimisation (Coste et al.): r = max(mean_k r_k − λ · Var_k r_k, min_k r_k)."""
    penalised = member_rewards.mean(dim=1) - lam * ensemble_reward_variance(member_rewards)
    return torch.maximum(penalised, member_rewards.min(dim=1).values)


@register_aggregator("lcb", needs_variance=True)
def lower_confidence_bound_reward(member_rewards: torch.Tensor, k: float = 1.0) -> torch.Tensor:
    """Lower confidence bound (Zhang et al. 2024): r = max(mean_k r_k − k · Std_k r_k, min_k r_k)."""
    penalised = member_rewards.mean(dim=1) - k * ensemble_reward_variance(member_rewards).sqrt()
    return torch.maximum(penalised, member_rewards.min(dim=1).values)


def check_objective_weights(weights: Sequence[float] | torch.Tensor | None, num_objectives: int) -> torch.Tensor:
    """Weights w_k of K objectives as float64 (K,): non-negative, finite, summing to 1; uniform when None."""
    if weights is None:
        return torch.full((num_objectives,), 1.0 / num_objectives, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != num_objectives:
        raise ValueError(f"{w.numel()} weights for {num_objectives} objectives: give one weight per objective")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
    if abs(float(w.sum()) - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1, got {w.tolist()} (sum {float(w.sum()):.6g}); divide by their sum")
    return w


@register_aggregator("softmin")
def softmin_reward(
    member_rewards: torch.Tensor, tau: float = 1.0, weights: Sequence[float] | torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted soft minimum, RVPO's LogSumExp aggregation (seed 000, SPEC §2):

        r = −τ · log Σ_k w_k · exp(−r_k / τ),   w_k ≥ 0, Σ_k w_k = 1 (uniform 1/K by default).

    τ → 0 gives min_k r_k (over w_k > 0), τ → ∞ the weighted mean Σ_k w_k r_k; for a small spread it is
    ≈ Σ_k w_k r_k − Var_w(r)/(2τ). Computed in float64 with log-sum-exp. (bs, K) -> (bs,).
    """
    if not tau > 0:
        raise ValueError(f"softmin temperature tau must be > 0, got {tau}")
    log_w = check_objective_weights(weights, member_rewards.shape[1]).to(member_rewards.device).log()
    log_mean_exp = torch.logsumexp(-member_rewards.double() / tau + log_w, dim=1)
    return (-tau * log_mean_exp).to(member_rewards.dtype)


def aggregate(name: str, member_rewards: torch.Tensor, **params: float) -> torch.Tensor:
    """Apply the aggregator ``name`` to member rewards (bs, K) -> (bs,), validating K and the name."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; valid: {sorted(AGGREGATORS)}")
    aggregator = AGGREGATORS[name]
    if member_rewards.dim() != 2:
        raise ValueError(f"member_rewards must be (batch, K), got shape {tuple(member_rewards.shape)}")
    if aggregator.needs_variance and member_rewards.shape[1] < 2:
        raise ValueError(
            f"aggregator {name!r} uses the spread across ensemble members but got K={member_rewards.shape[1]}; "
            "use K >= 2 heads, or aggregator=mean/member/min"
        )
    return aggregator.fn(member_rewards, **params)
