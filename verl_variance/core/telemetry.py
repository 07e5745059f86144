"""Per-step telemetry of variance-aware KL (logged through verl's tracker under ``variance_kl/``).

The inputs are per-sample vectors (batch size), so the statistics are computed in numpy on the
host: a few microseconds each, where a small torch op costs ten times more.
"""

from __future__ import annotations

import numpy as np
import torch

QUANTILES = (0.1, 0.5, 0.9)


def pearson_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two (n,) vectors; 0 when either is constant."""
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def _describe(name: str, values: np.ndarray) -> dict[str, float]:
    stats = {f"{name}/mean": values.mean(), f"{name}/min": values.min(), f"{name}/max": values.max()}
    for q, value in zip(QUANTILES, np.quantile(values, QUANTILES), strict=True):
        stats[f"{name}/p{int(q * 100)}"] = value
    return {key: float(value) for key, value in stats.items()}


def variance_kl_metrics(
    reward_variance: torch.Tensor, kl_weight: torch.Tensor, clipped: torch.Tensor, sample_kl: torch.Tensor
) -> dict[str, float]:
    """Telemetry of one batch.

    Args:
        reward_variance: (bs,) σ².
        kl_weight: (bs,) w.
        clipped: (bs,) bool, where w was clipped.
        sample_kl: (bs,) unweighted KL of each sample, averaged over its response tokens.

    Returns:
        mean/min/max/quantiles of σ² and w, the unweighted and weighted KL (batch means), the
        correlation between σ² and per-sample KL, and the fraction of clipped weights.
    """
    variance = reward_variance.detach().cpu().double().numpy()
    weight = kl_weight.detach().cpu().double().numpy()
    kl = sample_kl.detach().cpu().double().numpy()
    metrics = _describe("variance_kl/reward_variance", variance)
    metrics.update(_describe("variance_kl/kl_weight", weight))
    metrics["variance_kl/kl_unweighted"] = float(kl.mean())
    metrics["variance_kl/kl_weighted"] = float((weight * kl).mean())
    metrics["variance_kl/corr_variance_kl"] = pearson_correlation(variance, kl)
    metrics["variance_kl/clipped_fraction"] = float(clipped.detach().cpu().numpy().mean())
    return metrics
