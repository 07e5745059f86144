"""The reward-hacking signals against independent computations (numpy's fits, plain loops) on synthetic data."""

import json
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


def _heads(spread: float, bs: int = 16, k: int = 4, seed: int = 0) -> torch.Tensor:
    """(bs, K) head scores whose across-head variance is exactly ``spread**2`` for every sample."""
    offsets = torch.randn(k, generator=torch.Generator().manual_seed(seed)).double()
    offsets = (offsets - offsets.mean()) / offsets.std() * spread
    return torch.randn(bs, 1, generator=torch.Generator().manual_seed(seed + 1)).double() + offsets


def _run(settings, spreads, kls=None, entropies=None):
    monitor = hacking.HackingMonitor(settings)
    fired, metrics = [], []
    for step, spread in enumerate(spreads, start=1):
        heads = _heads(spread, seed=step)
        kl = None if kls is None else kls[step - 1]
        entropy = None if entropies is None else entropies[step - 1]
        proxy = heads.mean(dim=1) + 0.1 * step
        logged = hacking.batch_signals(heads, proxy, settings.kappa) | {hacking.PROXY_METRIC: float(proxy.mean())}
        logged |= {} if kl is None else {"actor/reward_kl_penalty": kl}
        logged |= {} if entropy is None else {hacking.ENTROPY_METRIC: entropy}
        step_metrics, alarms = monitor.observe(step, logged)
        metrics.append(step_metrics)
        fired += [(alarm.step, alarm.signal) for alarm in alarms]
    return fired, metrics


def test_the_disagreement_alarm_fires_once_at_a_known_onset_and_never_on_a_flat_run():
    from verl_variance.core.config import HackingMonitorConfig

    settings = HackingMonitorConfig(enable=True, baseline_steps=2, disagreement_ratio=1.5, entropy_drop=None)
    flat, _ = _run(settings, [0.5] * 10)
    assert flat == []
    # σ² = spread²: 0.25 for steps 1-4, then 0.25·(1 + 0.2·(t − 4)): ratio 1.4 at step 6, 1.6 at step 7
    spreads = [0.5] * 4 + [0.5 * math.sqrt(1 + 0.2 * (t - 4)) for t in range(5, 12)]
    fired, metrics = _run(settings, spreads)
    assert fired == [(7, "disagreement_ratio")]
    assert metrics[6]["hacking/disagreement_ratio"] == pytest.approx(1.6)
    assert "hacking/disagreement_ratio" not in metrics[0] and metrics[-1]["hacking/alarms"] == 1.0


def test_kl_acceleration_and_entropy_alarms_on_their_onsets():
    from verl_variance.core.config import HackingMonitorConfig

    settings = HackingMonitorConfig(enable=True, window=3, baseline_steps=2, disagreement_ratio=None,
                                    kl_acceleration=0.05, entropy_drop=0.5)  # fmt: skip
    kls = [0.1 * t for t in range(1, 7)] + [0.6 + 0.1 * n * n for n in range(1, 6)]  # a line, then a parabola
    entropies = [2.0] * 8 + [1.2, 0.9, 0.6]  # drop 0.4 at step 9, 0.55 at step 10
    fired, _ = _run(settings, [0.5] * 11, kls, entropies)
    assert (10, "entropy_drop") in fired  # 0.4 of the baseline lost at step 9, 0.55 at step 10
    first_kl = next(step for step, signal in fired if signal == "kl_acceleration")
    assert first_kl == 8  # the first window of differences that holds the parabola's second difference 0.2
    assert len(fired) == 2


def test_monitor_settings_out_of_range_name_the_key():
    from verl_variance.core.config import HackingMonitorConfig

    for bad, message in (({"window": 1}, "window must be >= 2"),
                         ({"entropy_drop": 1.5}, "entropy_drop is a fraction in \\(0, 1\\]"),
                         ({"action": "pause"}, "action='pause' is unknown"), ({"kappa": -1}, "kappa must be >= 0"),
                         ({"kl_acceleration": float("nan")}, "kl_acceleration must be a finite number or null")):
        with pytest.raises(ValueError, match=f"hacking_monitor.{message}"):
            HackingMonitorConfig(**bad)


def test_batch_signals_are_the_mean_variance_and_the_gap():
    generator = torch.Generator().manual_seed(3)
    scores, trained = torch.randn(5, 3, generator=generator), torch.randn(5, generator=generator)
    signals = hacking.batch_signals(scores, trained, kappa=0.5)
    assert signals[hacking.VARIANCE_METRIC] == pytest.approx(float(np.var(scores.numpy(), axis=1, ddof=1).mean()))
    assert signals[hacking.GAP_METRIC] == pytest.approx(hacking.lower_bound_gap(scores, trained, 0.5))


def test_a_monitor_restored_from_its_state_alarms_as_the_uninterrupted_one():
    """Resume: the state a checkpoint keeps (history, signals already fired) gives the same later alarms."""
    from verl_variance.core.config import HackingMonitorConfig

    settings = HackingMonitorConfig(enable=True, baseline_steps=2, disagreement_ratio=1.5, entropy_drop=None)
    rows = [{hacking.VARIANCE_METRIC: v, hacking.GAP_METRIC: 0.1, hacking.PROXY_METRIC: 0.0}
            for v in (0.2, 0.2, 0.25, 0.35, 0.2, 0.5)]  # fmt: skip
    whole = hacking.HackingMonitor(settings)
    expected = [whole.observe(step, row) for step, row in enumerate(rows, start=1)]
    first = hacking.HackingMonitor(settings)
    for step, row in enumerate(rows[:4], start=1):
        first.observe(step, row)
    resumed = hacking.HackingMonitor(settings)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [resumed.observe(step, row) for step, row in enumerate(rows[4:], start=5)] == expected[4:]
    assert [alarm.step for _, alarms in expected for alarm in alarms] == [4]  # fired once, not again at step 6
    with pytest.raises(KeyError, match=r"needs \['hacking/reward_variance'\]"):
        whole.observe(7, {hacking.GAP_METRIC: 0.0, hacking.PROXY_METRIC: 0.0})
