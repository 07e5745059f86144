"""Per-step telemetry of variance-aware KL (logged through verl's tracker under ``variance_kl/``)."""

from __future__ import annotations

import torch

QUANTILES = (0.1, 0.5, 0.9)


def _describe(name: str, values: torch.Tensor) -> dict[str, float]:
    values = values.float()
    stats = {f"{name}/mean": values.mean(), f"{name}/max": values.max(), f"{name}/min": values.min()}
    for q in QUANTILES:
        stats[f"{name}/p{int(q * 100)}"] = torch.quantile(values, q)
    return {key: float(value) for key, value in stats.items()}


def pearson_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two (n,) vectors; 0 when either is constant."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = (x.square().sum() * y.square().sum()).sqrt()
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def variance_kl_metrics(
    reward_variance: torch.Tensor,
    kl_weight: torch.Tensor,
    clipped: torch.Tensor,
    token_kl: torch.Tensor,
    response_mask: torch.Tensor,
) -> dict[str, float]:
    """Telemetry of one batch.

    Args:
        reward_variance: (bs,) σ².
        kl_weight: (bs,) w.
        clipped: (bs,) bool, where w was clipped.
        token_kl: (bs, T) unweighted KL per token (already masked).
        response_mask: (bs, T).

    Returns:
        mean/min/max/quantiles of σ² and w, the unweighted and weighted KL (mean over samples of the
        per-sample token mean), the correlation between σ² and per-sample KL, and the clipped fraction.
    """
    tokens = response_mask.sum(dim=1).clamp(min=1)
    sample_kl = (token_kl * response_mask).sum(dim=1) / tokens
    metrics = _describe("variance_kl/reward_variance", reward_variance)
    metrics.update(_describe("variance_kl/kl_weight", kl_weight))
    metrics["variance_kl/kl_unweighted"] = float(sample_kl.mean())
    metrics["variance_kl/kl_weighted"] = float((kl_weight * sample_kl).mean())
    metrics["variance_kl/corr_variance_kl"] = pearson_correlation(reward_variance, sample_kl)
    metrics["variance_kl/clipped_fraction"] = float(clipped.float().mean())
    return metrics
