"""Variance-weighted KL penalty (Banerjee & Gopalan, Theorem 3.6 and Section 5). Pure tensor math.

The PPO reward of the paper's experiment is, per sample,

    R(x, y) = r(x, y) − β · w(x, y) · ln(π(y|x) / π0(y|x)),

where ``w`` grows with the reward model's uncertainty σ²(x, y): the policy is held closer to the
reference where the reward cannot be trusted. Theorem 3.6 uses ``w = σ²``; the experiment (Section 5)
uses ``w = σ``. Both are registered weightings; an optional batch normalisation ``w / mean(w)``
keeps β on its usual scale, and ``w`` can be clipped to ``[min_weight, max_weight]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

KL_WEIGHTINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def register_kl_weighting(name: str) -> Callable:
    """Register ``fn(reward_variance (bs,)) -> kl_weight (bs,)`` under ``name`` (idempotent)."""

    def decorator(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        KL_WEIGHTINGS[name] = fn
        return fn

    return decorator


@register_kl_weighting("std")
def std_weight(reward_variance: torch.Tensor) -> torch.Tensor:
    """w = σ = sqrt(σ²): the paper's PPO experiment (Section 5). Shape (bs,) -> (bs,)."""
    return reward_variance.sqrt()


@register_kl_weighting("variance")
def variance_weight(reward_variance: torch.Tensor) -> torch.Tensor:
    """w = σ²: the variance-constrained problem of Theorem 3.6. Shape (bs,) -> (bs,)."""
    return reward_variance.clone()


@dataclass
class KLWeights:
    """Per-sample KL weights and which of them were clipped."""

    kl_weight: torch.Tensor
    """(bs,) the weight w(x, y) multiplying each sample's KL."""
    clipped: torch.Tensor
    """(bs,) bool, True where w was clipped to min_weight or max_weight."""


def kl_weight(
    reward_variance: torch.Tensor,
    weighting: str = "std",
    normalize: bool = False,
    min_weight: float = 0.0,
    max_weight: float | None = None,
) -> KLWeights:
    """Per-sample KL weight from the reward variance.

    w = f(σ²) with f = sqrt ("std") or identity ("variance"); if ``normalize``, w ← w / mean_batch(w);
    then w ← clip(w, min_weight, max_weight).

    Args:
        reward_variance: (bs,) σ²(x, y) ≥ 0, finite (see ``core.variance.check_reward_variance``).
        weighting: a key of ``KL_WEIGHTINGS``.
        normalize: divide by the batch mean so the average weight is 1 (β keeps its usual scale).
        min_weight, max_weight: clip range applied last (``max_weight=None``: no upper bound).

    Returns:
        ``KLWeights`` with ``kl_weight`` (bs,) and ``clipped`` (bs,) bool.
    """
    if weighting not in KL_WEIGHTINGS:
        raise ValueError(f"unknown KL weighting {weighting!r}; valid: {sorted(KL_WEIGHTINGS)}")
    weight = KL_WEIGHTINGS[weighting](reward_variance.double())  # float64: a constant batch normalises to exactly 1
    if normalize:
        mean = weight.mean()
        if not mean > 0:
            raise ValueError("cannot normalize KL weights: every weight in the batch is 0 (all reward variances are 0)")
        weight = weight / mean
    upper = float("inf") if max_weight is None else max_weight
    clipped = (weight < min_weight) | (weight > upper)
    return KLWeights(kl_weight=weight.clamp(min=min_weight, max=upper).float(), clipped=clipped)


def variance_weighted_kl_penalty(token_kl: torch.Tensor, kl_weight: torch.Tensor) -> torch.Tensor:
    """Per-token penalty w(x, y) · kl_t.

    Args:
        token_kl: (bs, response_length) a verl KL estimate per token (k1: ln π/π0).
        kl_weight: (bs,) per-sample weights.

    Returns:
        (bs, response_length).
    """
    return kl_weight.to(token_kl.dtype)[:, None] * token_kl


def variance_aware_token_rewards(
    token_level_scores: torch.Tensor, token_kl: torch.Tensor, kl_weight: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """R_t = r_t − β · w(x, y) · kl_t (Section 5, per token).

    Args:
        token_level_scores: (bs, response_length) rewards (the sequence reward sits on the last token).
        token_kl: (bs, response_length) KL estimate per token, 0 outside the response.
        kl_weight: (bs,) per-sample weights w.
        kl_coef: β.

    Returns:
        (bs, response_length) token-level rewards. β · w is formed per sample first, so a weight of
        exactly 1 gives verl's stock ``r_t − β · kl_t`` bit for bit.
    """
    return token_level_scores - variance_weighted_kl_penalty(token_kl, kl_coef * kl_weight)


def kl_penalty_to_go(token_penalty: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Σ_{t' ≥ t} p_{t'}: the penalty still ahead of each response token (a per-token return).

    Args:
        token_penalty: (bs, response_length) β · w · kl_t, 0 outside the response.
        response_mask: (bs, response_length).

    Returns:
        (bs, response_length), 0 outside the response.
    """
    masked = token_penalty * response_mask
    return masked.flip(-1).cumsum(-1).flip(-1) * response_mask
