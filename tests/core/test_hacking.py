"""The reward-hacking signals against independent computations (numpy's fits, plain loops) on synthetic data."""

import math

import numpy as np
import pytest
import torch

from verl_variance.core import hacking


def test_disagreement_ratio_is_the_batch_mean_variance_over_the_baseline():
    sigma2 = torch.tensor([0.2, 0.4, 0.9])
    assert hacking.disagreement_ratio(sigma2, 0.25) == pytest.approx(0.5 / 0.25)
    with pytest.raises(ValueError, match="baseline must be > 0"):
        hacking.disagreement_ratio(sigma2, 0.0)


def test_lower_bound_gap_against_a_loop_over_samples():
    generator = torch.Generator().manual_seed(0)
    scores, trained = torch.randn(6, 4, generator=generator), torch.randn(6, generator=generator)
    gaps = []
    for row, reward in zip(scores.tolist(), trained.tolist(), strict=True):
        mean = sum(row) / len(row)
        sd = math.sqrt(sum((x - mean) ** 2 for x in row) / (len(row) - 1))
        gaps.append(reward - (mean - 2.0 * sd))
    assert hacking.lower_bound_gap(scores, trained, kappa=2.0) == pytest.approx(sum(gaps) / len(gaps))
    sds = scores.double().std(dim=1).mean().item()  # the mean as the trained reward: κ times the mean sd
    assert hacking.lower_bound_gap(scores, kappa=1.5) == pytest.approx(1.5 * sds)
    with pytest.raises(ValueError, match="K >= 2 heads"):
        hacking.lower_bound_gap(scores[:, :1])


def test_trend_is_numpys_least_squares_slope():
    values = np.random.default_rng(0).normal(size=9).cumsum()
    assert hacking.trend(values) == pytest.approx(np.polyfit(np.arange(9), values, 1)[0])
    assert hacking.trend([3.0]) == 0.0 and hacking.trend([]) == 0.0


def test_kl_acceleration_is_the_second_derivative_of_a_quadratic_and_zero_on_a_line():
    steps = np.arange(12, dtype=float)
    assert hacking.kl_acceleration(0.05 * steps**2 + 0.1 * steps, window=5) == pytest.approx(0.1)  # d²/dt² = 2·0.05
    assert hacking.kl_acceleration(0.3 * steps + 1.0, window=5) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="window must be >= 2"):
        hacking.kl_acceleration(steps, window=1)


def test_entropy_drop_and_the_trend_pair():
    assert hacking.entropy_drop(0.6, 2.0) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="entropy baseline must be > 0"):
        hacking.entropy_drop(0.6, 0.0)
    proxy, rho = [0.0, 0.1, 0.5, 1.0, 1.6], [1.0, 1.0, 1.1, 1.4, 1.9]
    slopes = hacking.proxy_disagreement_trends(proxy, rho, window=3)
    assert slopes == pytest.approx((np.polyfit(range(3), proxy[-3:], 1)[0], np.polyfit(range(3), rho[-3:], 1)[0]))
