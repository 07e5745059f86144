"""Reward-hacking signals from the ensemble's disagreement and the trainer's own statistics (issue 31). Pure math.

Each signal is one function of what a step already carries: the K head scores of its samples (or their σ²), and
the per-step series of the proxy reward, the KL to the reference and the policy's entropy. The quantities are ours
(the papers in ``shared/seeds`` measure reward uncertainty, not its onset): they follow the symptoms verl users list
(verl issue #7004: KL acceleration, entropy collapse) and the ensemble's view of them (the policy drifting where
the heads disagree, or climbing the trained reward while the ensemble's lower bound stays). Statistics of one step
are numpy on the host (a few microseconds; the batch is small), as ``telemetry.py``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from verl_variance.core.config import HackingMonitorConfig


def disagreement_ratio(reward_variance: torch.Tensor, baseline: float) -> float:
    """ρ_t = mean_i σ²_i / σ̄²_0: the on-policy disagreement of step t against its baseline σ̄²_0 (the heads'
    mean σ² on the reward model's held-out pairs, or over the run's first steps). ρ_t > 1: the policy samples where
    the heads agree less than where they were trained.

    Args:
        reward_variance: (bs,) σ² across the heads of each sample of the step.
        baseline: σ̄²_0 > 0.
    """
    if not baseline > 0:
        raise ValueError(f"the disagreement baseline must be > 0, got {baseline}")
    return float(reward_variance.double().mean()) / baseline


def lower_bound_gap(head_scores: torch.Tensor, trained: torch.Tensor | None = None, kappa: float = 1.0) -> float:
    """g_t = mean_i [r_i − (μ_i − κ·s_i)]: how far the reward the policy is trained on stands above the ensemble's
    lower confidence bound (μ_i, s_i: mean and sample sd of sample i's K head scores). With ``trained`` None the
    trained reward is the ensemble mean and g_t = κ·mean_i s_i. A gap that grows while the bound stays is the
    policy climbing what one head (or the aggregate) says and the others do not.

    Args:
        head_scores: (bs, K) scores, K >= 2.
        trained: (bs,) the reward the policy is trained on (a head, or the configured aggregate), or None.
        kappa: κ >= 0, the bound's width in standard deviations.
    """
    if head_scores.dim() != 2 or head_scores.shape[1] < 2:
        raise ValueError(f"head_scores must be (batch, K) with K >= 2 heads, got shape {tuple(head_scores.shape)}")
    scores = head_scores.double()
    mean, sd = scores.mean(dim=1), scores.std(dim=1, unbiased=True)
    reward = mean if trained is None else trained.double()
    return float((reward - (mean - kappa * sd)).mean())


def trend(values: Sequence[float]) -> float:
    """The least-squares slope of a series against its step index (per step); 0 for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return 0.0
    steps = np.arange(values.size, dtype=np.float64)
    steps -= steps.mean()
    return float((steps * (values - values.mean())).sum() / (steps * steps).sum())


def kl_acceleration(kl: Sequence[float], window: int) -> float:
    """a_t = slope of Δkl over the last ``window`` differences: the KL's second derivative, per step². a_t > 0: the
    policy leaves the reference faster and faster (the onset verl users watch for).

    Args:
        kl: per-step mean KL to the reference, oldest first.
        window: differences in the fit, >= 2.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 differences, got {window}")
    return trend(np.diff(np.asarray(kl, dtype=np.float64)[-(window + 1) :]))


def entropy_drop(entropy: float, baseline: float) -> float:
    """d_t = (H_0 − H_t) / H_0: the fraction of its baseline entropy H_0 (the first steps') the policy has lost."""
    if not baseline > 0:
        raise ValueError(f"the entropy baseline must be > 0, got {baseline}")
    return (baseline - entropy) / baseline


def proxy_disagreement_trends(
    proxy: Sequence[float], disagreement: Sequence[float], window: int
) -> tuple[float, float]:
    """(slope of the proxy reward, slope of the disagreement ρ) over the last ``window`` steps: both rising is the
    proxy being exploited where the heads cannot judge it; a proxy that rises with a flat ρ is learning."""
    if window < 2:
        raise ValueError(f"window must be >= 2 steps, got {window}")
    return trend(list(proxy)[-window:]), trend(list(disagreement)[-window:])


@dataclass(frozen=True)
class Alarm:
    """A signal that crossed its threshold at a step."""

    step: int
    signal: str
    value: float
    threshold: float

    def line(self) -> str:
        """The console line of the alarm."""
        return (f"verl-variance hacking monitor: step {self.step}: {self.signal} {self.value:.4g} reached its "
                f"threshold {self.threshold:.4g} (hacking_monitor.{self.signal})")  # fmt: skip


VARIANCE_METRIC = "hacking/reward_variance"
"""The step's mean σ² across the heads (``batch_signals``)."""
GAP_METRIC = "hacking/lower_bound_gap"
"""The step's mean gap of the trained reward above the heads' LCB (``batch_signals``)."""
PROXY_METRIC = "critic/score/mean"
"""verl's mean sequence score: the reward the policy is trained on, before any KL."""
KL_METRICS = ("actor/reward_kl_penalty", "actor/kl_loss")
"""verl's KL to the reference, in the reward or in the actor's loss (the first a run logs)."""
ENTROPY_METRIC = "actor/entropy"
"""verl's mean policy entropy of the step's responses."""


def batch_signals(head_scores: torch.Tensor, trained: torch.Tensor, kappa: float) -> dict[str, float]:
    """The part of the signals that needs the step's samples: the mean σ² across the heads and the lower-bound gap
    (``lower_bound_gap``), as the step's ``VARIANCE_METRIC`` and ``GAP_METRIC``.

    Args:
        head_scores: (bs, K) the K head scores of the step's samples, K >= 2.
        trained: (bs,) the reward the policy is trained on (its sequence score).
        kappa: κ >= 0, the LCB's width.
    """
    variance = head_scores.double().var(dim=1, unbiased=True)
    return {VARIANCE_METRIC: float(variance.mean()), GAP_METRIC: lower_bound_gap(head_scores, trained, kappa)}


class HackingMonitor:
    """The signals of every step of a run and the alarms they raise (``HackingMonitorConfig``), from the step's
    metrics: ours (``batch_signals``) and verl's (proxy, KL, entropy), so a finished run's ``metrics.jsonl`` replays
    through it too. Each signal alarms once, at the first step it reaches its threshold; nothing alarms before the
    baseline steps have passed."""

    def __init__(self, settings: HackingMonitorConfig, baseline_variance: float | None = None) -> None:
        """``baseline_variance``: σ̄²_0 from the reward model's held-out pairs (None: the first steps' mean σ²)."""
        self.settings, self.baseline_variance = settings, baseline_variance
        self.history: dict[str, list[float]] = {"variance": [], "proxy": [], "kl": [], "entropy": []}
        self.fired: set[str] = set()

    def state_dict(self) -> dict:
        """What a checkpoint keeps, so a resumed run alarms as the uninterrupted one would."""
        return {"history": self.history, "fired": sorted(self.fired)}

    def load_state_dict(self, state: dict) -> None:
        self.history = {name: list(values) for name, values in state["history"].items()}
        self.fired = set(state["fired"])

    def _baseline(self, name: str) -> float | None:
        values = self.history[name][: self.settings.baseline_steps]
        if len(values) < self.settings.baseline_steps or len(self.history[name]) <= self.settings.baseline_steps:
            return None
        return float(np.mean(values))

    def observe(self, step: int, metrics: dict[str, float]) -> tuple[dict[str, float], list[Alarm]]:
        """One step: its ``hacking/*`` signals and the alarms they raise.

        Args:
            step: the trainer's step.
            metrics: the step's metrics: ``VARIANCE_METRIC`` and ``PROXY_METRIC`` (required), ``GAP_METRIC``, the KL
                (``KL_METRICS``) and ``ENTROPY_METRIC`` when the run logs them (a signal whose input is missing is
                not computed).
        """
        missing = [key for key in (VARIANCE_METRIC, PROXY_METRIC) if key not in metrics]
        if missing:
            raise KeyError(f"the hacking monitor needs {missing} in the step's metrics")
        settings = self.settings
        kl = next((float(metrics[key]) for key in KL_METRICS if key in metrics), None)
        entropy = float(metrics[ENTROPY_METRIC]) if ENTROPY_METRIC in metrics else None
        self.history["variance"].append(float(metrics[VARIANCE_METRIC]))
        self.history["proxy"].append(float(metrics[PROXY_METRIC]))
        values = {"lower_bound_gap": float(metrics[GAP_METRIC])} if GAP_METRIC in metrics else {}
        signals = {}
        baseline = self.baseline_variance if self.baseline_variance is not None else self._baseline("variance")
        if baseline is not None and baseline > 0:
            values["disagreement_ratio"] = self.history["variance"][-1] / baseline
        if kl is not None:
            self.history["kl"].append(kl)
            if len(self.history["kl"]) > settings.window:
                values["kl_acceleration"] = kl_acceleration(self.history["kl"], settings.window)
        if entropy is not None:
            self.history["entropy"].append(entropy)
            if (entropy_baseline := self._baseline("entropy")) is not None and entropy_baseline > 0:
                values["entropy_drop"] = entropy_drop(entropy, entropy_baseline)
        if len(self.history["proxy"]) >= settings.window and "disagreement_ratio" in values:
            ratios = [value / baseline for value in self.history["variance"]]
            proxy_slope, ratio_slope = proxy_disagreement_trends(self.history["proxy"], ratios, settings.window)
            signals |= {"hacking/proxy_slope": proxy_slope, "hacking/disagreement_slope": ratio_slope}
            values["rising_together"] = min(proxy_slope, ratio_slope)
        signals |= {f"hacking/{name}": value for name, value in values.items() if name != "lower_bound_gap"}
        alarms = []
        warming_up = len(self.history["variance"]) <= settings.baseline_steps
        for name, value in values.items():
            threshold = getattr(settings, name)
            if threshold is None or name in self.fired or warming_up or value < threshold:
                continue
            self.fired.add(name)
            alarms.append(Alarm(step, name, value, threshold))
        signals["hacking/alarms"] = float(len(self.fired))
        return signals, alarms


def replay(
    rows: Sequence[tuple[int, dict[str, float]]], settings: HackingMonitorConfig
) -> list[tuple[int, dict[str, float], list[Alarm]]]:
    """A finished run's steps through a fresh monitor: (step, signals, alarms) per step, as the run would have
    logged and raised them with ``settings`` (``rows``: (step, metrics) in step order)."""
    monitor = HackingMonitor(settings, settings.baseline_variance)
    return [(step, *monitor.observe(step, metrics)) for step, metrics in rows]
