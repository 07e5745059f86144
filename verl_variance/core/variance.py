"""Uncertainty estimators over an ensemble's member rewards, and checks on a reward variance.

σ²(x, y) is the sample variance across K reward models trained identically (Banerjee & Gopalan,
Section 1: R̂ = r* + N(0, σ²)); with K reward heads on one backbone it comes from one forward pass.
"""

from __future__ import annotations

import math

import torch


def ensemble_reward_variance(member_rewards: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """σ²(x, y) = 1/(K − 1) · Σ_k (r_k − r̄)²  (``unbiased``; 1/K otherwise).

    Args:
        member_rewards: (bs, K) reward of every ensemble member for each sample, K ≥ 2.

    Returns:
        (bs,) per-sample variance across members.
    """
    if member_rewards.dim() != 2:
        raise ValueError(f"member_rewards must be (batch, K), got shape {tuple(member_rewards.shape)}")
    if member_rewards.shape[1] < 2:
        raise ValueError(
            f"an ensemble of {member_rewards.shape[1]} member(s) has no variance: "
            "train the reward model with K >= 2 heads (verl-variance train-rm --num-heads K)"
        )
    dtype = torch.promote_types(member_rewards.dtype, torch.float32)
    return member_rewards.to(dtype).var(dim=1, unbiased=unbiased)


def check_reward_variance(reward_variance: torch.Tensor, key: str = "reward_variance") -> torch.Tensor:
    """Validate a per-sample reward variance; return it as float32 (bs,).

    Raises ``ValueError`` naming the first bad sample for NaN/inf or negative values, and when
    every sample has variance 0 (no uncertainty signal at all: a one-head ensemble or identical heads).
    """
    variance = torch.as_tensor(reward_variance, dtype=torch.float32).reshape(-1)
    if not variance.numel():
        return variance
    host = variance.cpu().numpy()  # (bs,): numpy reductions cost microseconds, torch's tens of them
    if math.isfinite(host.sum()) and host.min() >= 0 and host.max() > 0:  # the common case
        return variance
    fix = f"the reward source must return {key!r} = the variance across >= 2 reward models, finite and >= 0"
    bad = ~torch.isfinite(variance)
    if bad.any():
        index = int(bad.nonzero()[0])
        raise ValueError(f"{key} has {int(bad.sum())} NaN/inf value(s) (first: sample {index}); {fix}")
    negative = variance < 0
    if negative.any():
        index = int(negative.nonzero()[0])
        raise ValueError(
            f"{key} has {int(negative.sum())} negative value(s) (first: sample {index} = {float(variance[index])}); "
            f"{fix}"
        )
    raise ValueError(
        f"{key} is 0 for every sample in the batch: there is no uncertainty signal, so variance-aware KL "
        f"would remove the KL penalty entirely. {fix} (an ensemble of one head, or identical heads, gives 0)"
    )


SOFTMAX_TOLERANCE = 1e-5
"""|Σ_k p_k − 1| below which a row of K scores reads as a probability vector (fp32 softmax sums to 1 ± ~1e-7)."""


def looks_softmaxed(member_rewards: torch.Tensor, tolerance: float = SOFTMAX_TOLERANCE) -> bool:
    """Whether K ≥ 2 scores per sample are class probabilities, not K rewards: every sample's scores lie in
    [0, 1] and sum to 1. A served classifier answers so when asked for its activation (vLLM's ``/classify``
    without ``"use_activation": false``); σ² across such scores measures nothing about the reward.

    Args:
        member_rewards: (bs, K) scores of every head for each sample of a batch.
    """
    if member_rewards.dim() != 2 or member_rewards.shape[1] < 2 or not member_rewards.numel():
        return False
    scores = member_rewards.double()
    in_unit_interval = bool(((scores >= 0) & (scores <= 1)).all())
    return in_unit_interval and bool(((scores.sum(dim=1) - 1).abs() <= tolerance).all())
