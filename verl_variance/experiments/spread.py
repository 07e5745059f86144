"""What drives the spread of the study's policies, and how many policies its question needs.

The study (``study.py``) trains one policy per (reward head h, seed s) and method: a crossed heads × seeds
design with one policy per cell. Its headline is the variance ratio of the judge reward across policies
(``report.variance_ratio``); this module says

- where that variance comes from: ``variance_components`` (head, seed, their interaction, the evaluation's noise);
- whether the KL term the method reshapes acts at all: ``kl_give_back`` (what β·KL takes from each response's
  reward, against the proxy reward's spread) and ``disagreement`` (the heads' σ² on the reference's samples, on the
  trained policies' and over training);
- how many policies per method the ratio's interval needs to tell the paper's effect from none
  (``policies_for_power``).

``analyze(runs, policies, noise)`` gathers them for ``report.build_report``; ``plot_spread`` draws them.
Input runs carry, besides ``report``'s keys, what ``study.dump_statistics`` reads off the validation dumps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, stats

COMPONENTS = ("head", "seed", "interaction", "evaluation")
PAPER_RATIOS = {"figure_7": 0.012 / 0.06, "figure_12": 0.016 / 0.038}
"""The paper's variance ratios, variance-aware / vanilla (SPEC §1: 40 policies each; 100 each)."""
SCORE_METRIC, REWARD_METRIC = "critic/score/mean", "critic/rewards/mean"
"""verl's per-response score (the reward model's) and reward after the in-reward KL penalty, batch means."""
VARIANCE_METRIC = "variance_kl/reward_variance/mean"
"""The heads' σ² on the batch, logged every step by the variance-aware runs."""


def variance_components(values: np.ndarray, evaluation_noise: float | None = None) -> dict[str, Any]:
    """Variance components of a crossed heads × seeds table with one observation per cell (two-way random
    effects ANOVA, method of moments).

    Model: y_hs = μ + a_h + b_s + (ab)_hs + e_hs with var(a) = σ²_head, var(b) = σ²_seed, var(ab) =
    σ²_interaction and e the evaluation's own noise (the judge's finite samples), var(e) = ``evaluation_noise``
    (``report.evaluation_noise``'s floor; None: not separated, left in the interaction). With H heads and S
    seeds, the mean squares have E[MS_head] = σ²_res + S σ²_head, E[MS_seed] = σ²_res + H σ²_seed and
    E[MS_res] = σ²_res = σ²_interaction + σ²_evaluation, so

        σ²_head = (MS_head − MS_res) / S,  σ²_seed = (MS_seed − MS_res) / H,  σ²_interaction = MS_res − noise

    (unbiased; an estimate below 0 is reported as is in ``estimate`` and as 0 in ``component``).

    Args:
        values: (H, S) judge reward of the policy trained on head h with seed s; H, S >= 2.
        evaluation_noise: the variance the evaluation adds to each value, or None.

    Returns:
        ``estimate`` and ``component`` (clipped at 0) per name of ``COMPONENTS``; ``share``: each component's
        fraction of their sum (None if all are 0); ``mean_squares`` and ``df`` of head, seed and residual;
        ``total_variance``: the sample variance (ddof=1) of all H·S values; ``shape``: [H, S].
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or min(values.shape) < 2:
        raise ValueError(f"expected an (H, S) table with H, S >= 2 (heads x seeds), got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("the heads x seeds table holds a non-finite value")
    heads, seeds = values.shape
    grand = values.mean()
    head_means, seed_means = values.mean(axis=1), values.mean(axis=0)
    residual = values - head_means[:, None] - seed_means[None, :] + grand
    df = {"head": heads - 1, "seed": seeds - 1, "residual": (heads - 1) * (seeds - 1)}
    mean_squares = {
        "head": float(seeds * ((head_means - grand) ** 2).sum() / df["head"]),
        "seed": float(heads * ((seed_means - grand) ** 2).sum() / df["seed"]),
        "residual": float((residual**2).sum() / df["residual"]),
    }
    noise = 0.0 if evaluation_noise is None else float(evaluation_noise)
    estimate = {
        "head": (mean_squares["head"] - mean_squares["residual"]) / seeds,
        "seed": (mean_squares["seed"] - mean_squares["residual"]) / heads,
        "interaction": mean_squares["residual"] - noise,
        "evaluation": noise if evaluation_noise is not None else None,
    }
    component = {name: (None if value is None else max(float(value), 0.0)) for name, value in estimate.items()}
    total = sum(value for value in component.values() if value is not None)
    return {
        "estimate": {name: (None if value is None else float(value)) for name, value in estimate.items()},
        "component": component,
        "share": {name: (None if value is None or total == 0 else value / total) for name, value in component.items()},
        "mean_squares": mean_squares,
        "df": df,
        "total_variance": float(values.var(ddof=1)),
        "shape": [heads, seeds],
    }


def ratio_interval_power(ratio: float, n: int, alpha: float = 0.05) -> float:
    """Probability that the 1 − ``alpha`` F interval of s²_aware / s²_vanilla (``report.variance_ratio``) lies below
    1 when the true ratio is ``ratio`` and each method has ``n`` policies with normal judge rewards.

    The observed ratio is ``ratio`` · F with F ~ F(n − 1, n − 1); the interval's upper end is observed /
    F_{α/2}(n − 1, n − 1), below 1 iff F < F_{α/2} / ``ratio``.
    """
    if n < 2:
        raise ValueError(f"n={n}: the variance of fewer than 2 policies is undefined")
    if not 0 < ratio:
        raise ValueError(f"ratio={ratio}: expected a positive variance ratio")
    df = n - 1
    return float(stats.f.cdf(stats.f.ppf(alpha / 2, df, df) / ratio, df, df))


def policies_for_power(ratio: float, power: float = 0.8, alpha: float = 0.05, max_n: int = 10_000) -> int:
    """The smallest n (policies per method) at which the ratio's 1 − ``alpha`` interval excludes 1 with probability
    >= ``power`` when the true variance ratio is ``ratio`` < 1 (``ratio_interval_power``)."""
    if not 0 < ratio < 1:
        raise ValueError(f"ratio={ratio}: the interval can exclude 1 from below only for a true ratio in (0, 1)")
    if not 0 < power < 1:
        raise ValueError(f"power={power}: expected a probability in (0, 1)")
    for n in range(2, max_n + 1):
        if ratio_interval_power(ratio, n, alpha) >= power:
            return n
    raise ValueError(f"more than {max_n} policies per method are needed for ratio {ratio} at power {power}")


def paired_variance_ratio(
    vanilla: np.ndarray, aware: np.ndarray, alpha: float = 0.05, n_boot: int = 4000, seed: int = 0
) -> dict[str, Any]:
    """The variance ratio s²_aware / s²_vanilla of paired policies (the same head and seed: the same samples until the
    two policies part), with intervals that use the pairing.

    The F interval of ``report.variance_ratio`` assumes independent methods; here the two rewards of a cell are
    correlated, and the Pitman–Morgan test is the exact test for normal pairs: var(a) = θ·var(v) iff
    corr(a + √θ·v, a − √θ·v) = 0, tested with t = r·√((n − 2) / (1 − r²)) on n − 2 degrees of freedom. ``ci95``:
    the θ it does not reject (test inversion on a log grid, then the boundaries refined); ``p``: its p-value at θ =
    1. The test trusts normality, and a few pairs can carry it, so also: ``bootstrap_ci95`` (percentile bootstrap
    over the pairs, ``n_boot`` resamples from ``seed``) and ``leave_one_out`` (the ratio and the test's p without each
    pair: its range shows whether one pair makes the result).

    Args:
        vanilla, aware: (n,) judge rewards of the n cells, in the same cell order; n >= 4.
    """
    vanilla, aware = np.asarray(vanilla, dtype=float), np.asarray(aware, dtype=float)
    n = vanilla.size
    if vanilla.shape != aware.shape or vanilla.ndim != 1 or n < 4:
        raise ValueError(f"expected two (n,) arrays of paired rewards with n >= 4, got {vanilla.shape}, {aware.shape}")
    if vanilla.var() == 0 or aware.var() == 0:
        raise ValueError("a method's rewards are all equal: no variance ratio")

    def t_statistic(theta: float, a: np.ndarray = aware, v: np.ndarray = vanilla) -> float:
        r = np.corrcoef(a + np.sqrt(theta) * v, a - np.sqrt(theta) * v)[0, 1]
        return float(r * np.sqrt((a.size - 2) / max(1 - r**2, 1e-300)))

    critical = stats.t.ppf(1 - alpha / 2, n - 2)
    grid = np.exp(np.linspace(np.log(1e-4), np.log(1e4), 401))
    inside = np.array([abs(t_statistic(theta)) <= critical for theta in grid])
    bounds: list[float | None] = [None, None]
    if inside.any():
        first, last = np.flatnonzero(inside)[[0, -1]]
        gap = lambda theta: abs(t_statistic(theta)) - critical  # noqa: E731
        if first > 0:
            bounds[0] = float(optimize.brentq(gap, grid[first - 1], grid[first]))
        if last < grid.size - 1:
            bounds[1] = float(optimize.brentq(gap, grid[last], grid[last + 1]))

    def ratio(a: np.ndarray, v: np.ndarray) -> float:
        return float(a.var(ddof=1) / v.var(ddof=1))

    def p_value(a: np.ndarray, v: np.ndarray) -> float:
        return float(2 * stats.t.sf(abs(t_statistic(1.0, a, v)), a.size - 2))

    rng = np.random.default_rng(seed)
    resampled = [ratio(aware[i], vanilla[i]) for i in rng.integers(0, n, (n_boot, n)) if vanilla[i].var() > 0]
    drops = [(ratio(np.delete(aware, k), np.delete(vanilla, k)), p_value(np.delete(aware, k), np.delete(vanilla, k)))
             for k in range(n)]  # fmt: skip
    return {
        "n": int(n),
        "ratio": ratio(aware, vanilla),
        "correlation": float(np.corrcoef(aware, vanilla)[0, 1]),
        "ci95": bounds,
        "p": p_value(aware, vanilla),
        "bootstrap_ci95": [float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5))],
        "leave_one_out": {
            "ratio": [min(r for r, _ in drops), max(r for r, _ in drops)],
            "p": [min(p for _, p in drops), max(p for _, p in drops)],
        },
    }


def paired_comparison(policies: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``paired_variance_ratio`` over the cells (head, seed) both methods trained, with the cells listed; None with
    fewer than 4 such cells."""
    rewards = {(p["method"], p["head"], p["seed"]): p["judge_reward"] for p in policies}
    cells = sorted({(h, s) for m, h, s in rewards if m == "vanilla" and ("variance_aware", h, s) in rewards})
    if len(cells) < 4:
        return None
    vanilla = np.array([rewards[("vanilla", *cell)] for cell in cells])
    aware = np.array([rewards[("variance_aware", *cell)] for cell in cells])
    return {**paired_variance_ratio(vanilla, aware), "cells": [list(cell) for cell in cells]}


def _window_mean(run: dict[str, Any], metric: str, first: bool = False) -> float | None:
    """Mean of ``metric`` over the first or last quarter of the run's steps that log it (None if none does)."""
    steps = sorted((int(step), values) for step, values in run["steps"].items())
    return _quarter_mean([float(values[metric]) for _, values in steps if metric in values], first)


def _quarter_mean(values: list[float], first: bool = False) -> float | None:
    """Mean of the first or last quarter (at least one) of ``values`` in step order; None if there are none."""
    if not values:
        return None
    window = max(1, math.ceil(0.25 * len(values)))
    return float(np.mean(values[:window] if first else values[-window:]))


def training_variance(run: dict[str, Any]) -> list[tuple[int, float]]:
    """(step, the heads' mean σ² over that step's training samples) of a run, in step order: from verl's rollout
    dumps (``ensemble_variance_training``, every method) or else from what the variance-aware penalty logs
    (``variance_kl/reward_variance/mean``); empty if neither was recorded."""
    if run.get("ensemble_variance_training"):
        return [(int(step), float(value)) for step, value in run["ensemble_variance_training"]]
    steps = sorted((int(step), values) for step, values in run["steps"].items())
    return [(step, float(values[VARIANCE_METRIC])) for step, values in steps if VARIANCE_METRIC in values]


def kl_give_back(run: dict[str, Any]) -> dict[str, Any]:
    """How much of a response's reward the KL term takes, against what the reward model moves.

    ``penalty`` = score − reward after the penalty (``critic/score/mean`` − ``critic/rewards/mean``), i.e.
    β·Σ_t w_t·KL_t per response averaged over the last quarter of the steps (w = 1 for vanilla PPO);
    ``proxy_gain`` = the score's last-quarter mean − its first-quarter mean; ``proxy_spread`` = the standard
    deviation of the proxy score over the final validation samples (``proxy_final_std``); ``penalty_over_spread``
    and ``penalty_over_gain``. A number whose inputs were not logged, or whose denominator is 0, is None.
    """
    last_score, first_score = _window_mean(run, SCORE_METRIC), _window_mean(run, SCORE_METRIC, first=True)
    last_reward = _window_mean(run, REWARD_METRIC)
    penalty = None if last_score is None or last_reward is None else last_score - last_reward
    gain = None if last_score is None else last_score - first_score
    spread = run.get("proxy_final_std")
    return {
        "penalty": penalty,
        "proxy_gain": gain,
        "proxy_spread": spread,
        "penalty_over_spread": penalty / spread if penalty is not None and spread else None,
        "penalty_over_gain": penalty / abs(gain) if penalty is not None and gain else None,
    }


def disagreement(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The heads' disagreement (mean σ² across heads of a sample's K scores) where each policy generates.

    ``reference``: on the reference policy's validation samples (the same for every run); per method:
    ``final`` (mean over its policies of the mean σ² on their final validation samples), ``final_over_reference``;
    and over training, where recorded (``training_variance``): ``training_first`` and ``training_last`` (first- and
    last-quarter means, averaged over the runs). None when the dumps carry no σ² (a reward without
    ``reward_variance``).
    """
    with_variance = [run for run in runs if run.get("ensemble_variance_final") is not None]
    if not with_variance:
        return None
    reference = float(np.mean([run["ensemble_variance_reference"] for run in with_variance]))
    result: dict[str, Any] = {"reference": reference}
    for method in sorted({run["method"] for run in with_variance}):
        own = [run for run in with_variance if run["method"] == method]
        final = float(np.mean([run["ensemble_variance_final"] for run in own]))
        during = [[value for _, value in training_variance(run)] for run in own]
        first = [value for values in during if (value := _quarter_mean(values, first=True)) is not None]
        last = [value for values in during if (value := _quarter_mean(values)) is not None]
        result[method] = {
            "final": final,
            "final_over_reference": final / reference if reference else None,
            "training_first": float(np.mean(first)) if first else None,
            "training_last": float(np.mean(last)) if last else None,
        }
    return result


def decomposition(policies: list[dict[str, Any]], noise_floor: float | None) -> dict[str, Any]:
    """``variance_components`` of each method's judge rewards over its complete heads × seeds grid (None for a
    method whose policies do not fill a grid of at least 2 heads × 2 seeds)."""
    result: dict[str, Any] = {}
    for method in sorted({policy["method"] for policy in policies}):
        cells = {(p["head"], p["seed"]): p["judge_reward"] for p in policies if p["method"] == method}
        heads, seeds = sorted({h for h, _ in cells}), sorted({s for _, s in cells})
        complete = len(heads) >= 2 and len(seeds) >= 2 and len(cells) == len(heads) * len(seeds)
        table = np.array([[cells[(h, s)] for s in seeds] for h in heads]) if complete else None
        result[method] = None if table is None else variance_components(table, noise_floor)
    return result


def power(n_per_method: int, target: float = 0.8) -> dict[str, Any]:
    """At the paper's ratios (``PAPER_RATIOS``): the probability that this study's interval excludes 1, and the
    policies per method that reach ``target``."""
    return {
        name: {
            "ratio": ratio,
            "power_at_n": ratio_interval_power(ratio, n_per_method) if n_per_method >= 2 else None,
            "n_for_power": policies_for_power(ratio, target),
        }
        for name, ratio in PAPER_RATIOS.items()
    } | {"n": n_per_method, "target_power": target}


def analyze(runs: list[dict[str, Any]], policies: list[dict[str, Any]], noise_floor: float | None) -> dict[str, Any]:
    """The report's ``spread`` section: ``paired`` (``paired_comparison``), ``decomposition``, ``disagreement``,
    ``kl_give_back`` (per method: the mean of each number of ``kl_give_back`` over its policies, and per policy) and
    ``power``."""
    give_back = {f"{run['method']}/{run['policy']}": kl_give_back(run) for run in runs}
    per_method = {}
    for method in sorted({run["method"] for run in runs}):
        rows = [give_back[f"{run['method']}/{run['policy']}"] for run in runs if run["method"] == method]
        per_method[method] = {
            key: (float(np.mean(values)) if (values := [row[key] for row in rows if row[key] is not None]) else None)
            for key in rows[0]
        }
    n = min((sum(p["method"] == method for p in policies) for method in per_method), default=0)
    return {
        "paired": paired_comparison(policies),
        "decomposition": decomposition(policies, noise_floor),
        "disagreement": disagreement(runs),
        "kl_give_back": {"per_method": per_method, "per_policy": give_back},
        "power": power(n),
    }


def spread_lines(spread: dict[str, Any]) -> list[str]:
    """The ``spread`` section in words: one line per finding, whatever the numbers are."""
    lines = []
    paired = spread.get("paired")
    if paired is not None:
        low, high = ("n/a" if value is None else f"{value:.3f}" for value in paired["ci95"])
        boot, drop = paired["bootstrap_ci95"], paired["leave_one_out"]
        lines.append(
            f"paired by (head, seed), {paired['n']} cells, correlation {paired['correlation']:.3f} between methods: "
            f"variance ratio {paired['ratio']:.3f} [Pitman-Morgan 95% {low}, {high}], p={paired['p']:.3g}; "
            f"bootstrap over cells [{boot[0]:.3f}, {boot[1]:.3f}]; without one cell: ratio {drop['ratio'][0]:.3f} to "
            f"{drop['ratio'][1]:.3f}, p {drop['p'][0]:.3g} to {drop['p'][1]:.3g}"
        )
    for method, parts in spread["decomposition"].items():
        if parts is None:
            lines.append(f"{method}: no complete heads x seeds grid (>= 2 x 2): no variance decomposition")
            continue
        shares = ", ".join(
            f"{name} {parts['component'][name]:.2e} ({parts['share'][name]:.0%})"
            for name in COMPONENTS
            if parts["component"][name] is not None and parts["share"][name] is not None
        )
        lines.append(f"{method} judge-reward variance over {parts['shape'][0]} heads x {parts['shape'][1]} seeds: "
                     f"{shares or 'all components 0'}")  # fmt: skip
    for method, row in spread["kl_give_back"]["per_method"].items():
        text = {key: "n/a" if value is None else f"{value:.4g}" for key, value in row.items()}
        lines.append(f"{method}: the KL term takes {text['penalty']} of a response's reward (final quarter) "
                     f"against a proxy-score spread of {text['proxy_spread']} (sd): {text['penalty_over_spread']} "
                     f"of it; proxy gain {text['proxy_gain']}")  # fmt: skip
    agreement = spread["disagreement"]
    if agreement is not None:
        parts = [f"reference samples {agreement['reference']:.4f}"]
        for method in (key for key in agreement if key != "reference"):
            row = agreement[method]
            during = ("" if row["training_first"] is None else
                      f", during training {row['training_first']:.4f} -> {row['training_last']:.4f}")  # fmt: skip
            parts.append(f"{method} final samples {row['final']:.4f}{during}")
        lines.append("heads' disagreement (mean sigma^2): " + "; ".join(parts))
    power_row = spread["power"]
    lines.append(
        f"power at n={power_row['n']} per method: "
        + "; ".join(
            f"{name.replace('_', ' ')} ratio {row['ratio']:.2f}: "
            + ("n/a" if row["power_at_n"] is None else f"{row['power_at_n']:.2f}")
            + f" ({row['n_for_power']} per method for {power_row['target_power']:.0%})"
            for name, row in power_row.items()
            if isinstance(row, dict)
        )
    )
    return lines


def plot_spread(spread: dict[str, Any], runs: list[dict[str, Any]], path: Path) -> Path:
    """Left: each method's variance components of the judge reward (stacked bars). Middle: the heads' disagreement
    on the reference's samples (line) and on each policy's final samples (dots), per method. Right: the
    disagreement on the training samples, step by step (each method's mean over its runs; ``training_variance``)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(14.4, 4.0), dpi=100)
    components, agreement, during = figure.subplots(1, 3)
    colors = {"head": "tab:orange", "seed": "tab:purple", "interaction": "tab:gray", "evaluation": "tab:olive"}
    methods = list(spread["decomposition"])
    for x, method in enumerate(methods):
        parts, bottom = spread["decomposition"][method], 0.0
        for name in COMPONENTS:
            value = None if parts is None else parts["component"][name]
            if value:
                components.bar(x, value, bottom=bottom, color=colors[name], label=name if x == 0 else None)
                bottom += value
    components.set_xticks(range(len(methods)), [m.replace("_", "-") for m in methods])
    components.set_ylabel("variance of the judge reward")
    components.set_title("Across-policy variance: heads x seeds")
    if components.get_legend_handles_labels()[0]:
        components.legend(fontsize="small")
    else:
        components.text(0.5, 0.5, "no complete heads x seeds grid", ha="center", transform=components.transAxes)
    with_variance = [run for run in runs if run.get("ensemble_variance_final") is not None]
    for x, method in enumerate(methods):
        values = [run["ensemble_variance_final"] for run in with_variance if run["method"] == method]
        agreement.plot(np.full(len(values), x) + np.linspace(-0.15, 0.15, len(values)), values, "o", alpha=0.7)
    if spread["disagreement"] is not None:
        agreement.axhline(spread["disagreement"]["reference"], color="indigo", linestyle="--",
                          label="reference policy's samples")  # fmt: skip
        agreement.legend(fontsize="small")
    agreement.set_xticks(range(len(methods)), [m.replace("_", "-") for m in methods])
    agreement.set_ylabel("mean sigma^2 across heads (final samples)")
    agreement.set_title("Heads' disagreement where the policies generate")
    for method in methods:
        by_step: dict[int, list[float]] = {}
        for run in runs:
            if run["method"] == method:
                for step, value in training_variance(run):
                    by_step.setdefault(step, []).append(value)
        if by_step:
            steps = sorted(by_step)
            during.plot(steps, [np.mean(by_step[step]) for step in steps], marker=".", label=method.replace("_", "-"))
    if during.get_legend_handles_labels()[0]:
        if spread["disagreement"] is not None:
            during.axhline(spread["disagreement"]["reference"], color="indigo", linestyle="--", label="reference")
        during.legend(fontsize="small")
    else:
        during.text(0.5, 0.5, "not recorded", ha="center", transform=during.transAxes)
    during.set_xlabel("training step")
    during.set_ylabel("mean sigma^2 across heads (training samples)")
    during.set_title("... over training (mean over runs)")
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path
