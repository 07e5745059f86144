"""Statistics, table and figures of the IMDB study (Banerjee & Gopalan, Section 5, Figures 7, 10, 11).

The study trains many policies per method (vanilla PPO and variance-aware PPO; the paper: 10 reward
heads × 4 seeds = 40 each) and scores every trained policy, and the reference, with a gold judge on
the same held-out prompts. A policy's *judge reward* is its mean judge score over those prompts; the
paper compares the distribution of that number across policies (Figure 7: mean, variance across
policies, and the risk of ending worse than the reference) at matched final KL (Figure 10).

Input: one dict per trained policy (the orchestrator builds them)::

    {"method": "vanilla" | "variance_aware", "policy": "head2_seed0",  # unique per method
     "head": 2, "seed": 0, "beta": 0.05,
     "steps": {1: {"actor/reward_kl_penalty": 0.01, "critic/score/mean": 0.3, ...}, ...},  # int or str keys
     "judge_reference": [float, ...],  # (n_prompts,) judge score of the reference's response to each prompt
     "judge_final": [float, ...]}      # (n_prompts,) same prompts, the trained policy's responses

95% intervals, valid at the few policies of a CPU study (``INTERVALS``): a seeded percentile bootstrap
over policies for means (over prompts for the reference), chi-square for the variance across policies,
Wilson for the fraction worse than the reference, F for the variance ratio; the same runs give the same
report. A method with fewer than 2 policies has no variance
and no intervals: those fields are ``None`` (never NaN), so ``report.json`` stays strict JSON.
numpy, scipy (intervals, tests, Spearman) and matplotlib (Agg canvas, no pyplot state): no verl, no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from verl_variance.experiments import spread

METHODS = ("vanilla", "variance_aware")
METHOD_LABELS = {"vanilla": "vanilla PPO", "variance_aware": "variance-aware PPO"}
KL_METRIC = "actor/reward_kl_penalty"
PROXY_REWARD_METRIC = "critic/score/mean"
REQUIRED_RUN_KEYS = ("method", "policy", "head", "seed", "beta", "steps", "judge_reference", "judge_final")
FIGURES = ("fig7_judge_reward.png", "fig10_kl.png", "fig11_proxy_reward.png", "fig_spread.png")
PAPER_FIGURE_7: dict[str, dict[str, float]] = {
    "reference": {"mean": 0.19, "variance": 0.002},
    "variance_aware": {"mean": 0.22, "variance": 0.012},
    "vanilla": {"mean": 0.34, "variance": 0.06},
}
"""The paper's Figure 7 (40 policies per method, FsfairX-LLaMA3-RM-v0.1 judge). Another judge has
another scale: compare the ordering of means and variances, not the values."""

_COLORS = {"reference": "indigo", "vanilla": "tab:cyan", "variance_aware": "tab:red"}
_TRAJECTORY_COLORS = {"vanilla": "tab:green", "variance_aware": "tab:blue"}  # Figures 10-11


# --- validation of one run ----------------------------------------------------------------------


def _run_name(run: dict[str, Any]) -> str:
    return f"{run.get('method')}/{run.get('policy')}"


def _check_run_keys(run: dict[str, Any]) -> None:
    missing = [key for key in REQUIRED_RUN_KEYS if key not in run]
    if missing:
        raise ValueError(f"run {_run_name(run)}: missing key(s) {missing}; a run needs {list(REQUIRED_RUN_KEYS)}")
    if run["method"] not in METHODS:
        raise ValueError(f"run {_run_name(run)}: unknown method {run['method']!r}; expected one of {list(METHODS)}")


def _finite_scores(run: dict[str, Any], key: str) -> np.ndarray:
    scores = np.asarray(run[key], dtype=float)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"run {_run_name(run)}: {key} must be a non-empty list of per-prompt judge scores")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(f"run {_run_name(run)}: {key}[{bad[0]}] = {scores[bad[0]]} is not finite (prompt {bad[0]})")
    return scores


def _steps(run: dict[str, Any]) -> dict[int, dict[str, Any]]:
    steps = {int(step): metrics for step, metrics in run["steps"].items()}
    if not steps:
        raise ValueError(f"run {_run_name(run)}: 'steps' is empty; expected the verl metrics of each training step")
    return dict(sorted(steps.items()))


def trajectory(run: dict[str, Any], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The training curve of one verl metric: steps (m,) int and values (m,) float, sorted by step.

    Steps that do not log ``metric`` are skipped; the last step must log it. A non-finite value
    raises ValueError naming the run, the metric and the step.
    """
    steps = _steps(run)
    last = max(steps)
    if metric not in steps[last]:
        raise ValueError(
            f"run {_run_name(run)}: metric {metric!r} missing at the last step ({last}); "
            f"logged there: {sorted(steps[last])}"
        )
    pairs = [(step, float(metrics[metric])) for step, metrics in steps.items() if metric in metrics]
    for step, value in pairs:
        if not math.isfinite(value):
            raise ValueError(f"run {_run_name(run)}: metric {metric!r} = {value} at step {step} is not finite")
    return np.array([step for step, _ in pairs], dtype=int), np.array([value for _, value in pairs])


FINAL_WINDOW = 0.25
"""Final KL and proxy reward = the mean over the last quarter of the logged steps (one step is noisy)."""


def final_value(run: dict[str, Any], metric: str) -> float:
    """Mean of ``metric`` over the last ``FINAL_WINDOW`` of the run's logged steps (at least one step)."""
    values = trajectory(run, metric)[1]
    window = max(1, math.ceil(FINAL_WINDOW * values.size))
    return float(values[-window:].mean())


# --- statistics ---------------------------------------------------------------------------------


INTERVALS = {
    "means": "percentile bootstrap over policies (scipy.stats.bootstrap; over prompts for the reference)",
    "variance_across_policies": "chi-square, exact for normal per-policy rewards",
    "p_worse": "Wilson score (scipy.stats.binomtest)",
    "variance_ratio": "F distribution",
}
"""Which 95% interval each kind of statistic gets: valid at the 2-8 policies per method of a CPU study
(a percentile bootstrap of a variance or a fraction from so few values is degenerate)."""


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[..., np.ndarray],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> list[float] | None:
    """Percentile bootstrap interval [lo, hi] of ``statistic`` over the samples ``values`` (scipy.stats.bootstrap).

    values: (n,). statistic: ``statistic(x, axis=-1)`` reduces resamples (n_boot, n) to (n_boot,) (e.g.
    ``np.mean``). Resamples come from ``numpy.random.default_rng(seed)``, so the same input gives the same
    interval. Returns None when n < 2 (no spread to resample).
    """
    values = np.asarray(values, dtype=float)
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot={n_boot}; expected at least 1 resample")
    if values.size < 2:
        return None
    result = stats.bootstrap(
        (values,), statistic, n_resamples=n_boot, confidence_level=level, method="percentile",
        rng=np.random.default_rng(seed),
    )  # fmt: skip
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def variance_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> list[float] | None:
    """Chi-square interval [lo, hi] of the variance behind the samples ``values`` (n,), exact for normal values.

    (n − 1)s² / σ² ~ χ²(n − 1), so [(n − 1)s² / χ²_{1−α/2}, (n − 1)s² / χ²_{α/2}] with α = 1 − level.
    Returns None when n < 2.
    """
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return None
    dof = values.size - 1
    scaled = dof * values.var(ddof=1)
    tail = (1.0 - level) / 2.0
    return [float(scaled / stats.chi2.ppf(1.0 - tail, dof)), float(scaled / stats.chi2.ppf(tail, dof))]


def wilson_interval(successes: int, n: int, level: float = 0.95) -> list[float]:
    """Wilson score interval [lo, hi] of a proportion successes / n (scipy's ``binomtest(...).proportion_ci``)."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    interval = stats.binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return [float(interval.low), float(interval.high)]


def _variance(samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.var(samples, axis=axis, ddof=1)


def policy_summary(run: dict[str, Any]) -> dict[str, Any]:
    """One trained policy's numbers (one dot of Figure 7).

    judge_reward = mean over prompts of ``judge_final`` (n_prompts,); reference_judge_reward = mean of
    ``judge_reference`` (n_prompts,); gain = judge_reward − reference_judge_reward; final_kl and
    final_proxy_reward = ``actor/reward_kl_penalty`` and ``critic/score/mean`` averaged over the last
    quarter of the steps (``final_value``).
    Raises ValueError naming the run and the field on a missing key or a non-finite value.
    """
    _check_run_keys(run)
    final = _finite_scores(run, "judge_final")
    reference = _finite_scores(run, "judge_reference")
    if final.size != reference.size:
        raise ValueError(
            f"run {_run_name(run)}: judge_final has {final.size} scores but judge_reference {reference.size}; "
            "both must score the same held-out prompts"
        )
    beta = float(run["beta"])
    if not math.isfinite(beta):
        raise ValueError(f"run {_run_name(run)}: beta = {beta} is not finite")
    kl_steps = trajectory(run, KL_METRIC)[0]
    judge_reward, reference_reward = float(final.mean()), float(reference.mean())
    return {
        "method": run["method"],
        "policy": run["policy"],
        "head": run["head"],
        "seed": run["seed"],
        "beta": beta,
        "n_prompts": int(final.size),
        "last_step": int(kl_steps[-1]),
        "judge_reward": judge_reward,
        "reference_judge_reward": reference_reward,
        "gain": judge_reward - reference_reward,
        "final_kl": final_value(run, KL_METRIC),
        "final_proxy_reward": final_value(run, PROXY_REWARD_METRIC),
    }


def _mean_stat(values: np.ndarray, n_boot: int, seed: int) -> dict:
    return {"value": float(values.mean()), "ci95": bootstrap_ci(values, np.mean, n_boot, seed)}


def _method_row(summaries: list[dict[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    judge = np.array([summary["judge_reward"] for summary in summaries])
    gain = np.array([summary["gain"] for summary in summaries])
    worse = (gain < 0).astype(float)
    n = len(summaries)
    return {
        "n_policies": n,
        "judge_reward": _mean_stat(judge, n_boot, seed),
        "variance_across_policies": {
            "value": float(_variance(judge)) if n >= 2 else None,
            "ci95": variance_interval(judge),
        },
        "gain": _mean_stat(gain, n_boot, seed),
        "p_worse": {
            "value": float(worse.mean()),
            "n_worse": int(worse.sum()),
            "ci95": wilson_interval(int(worse.sum()), n) if n >= 2 else None,
        },
        "final_kl": _mean_stat(np.array([s["final_kl"] for s in summaries]), n_boot, seed),
        "final_proxy_reward": _mean_stat(np.array([s["final_proxy_reward"] for s in summaries]), n_boot, seed),
    }


def _reference_row(runs: list[dict[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    scores = [_finite_scores(run, "judge_reference") for run in runs]
    for run, run_scores in zip(runs, scores, strict=True):
        if run_scores.size != scores[0].size:
            raise ValueError(
                f"run {_run_name(run)}: judge_reference has {run_scores.size} scores, run {_run_name(runs[0])} "
                f"{scores[0].size}; every run must score the reference on the same held-out prompts"
            )
    matrix = np.unique(np.stack(scores), axis=0)  # (n_evaluations, n_prompts): runs that share one dump count once
    per_prompt = matrix.mean(axis=0)  # (n_prompts,)
    per_evaluation = matrix.mean(axis=1)  # (n_evaluations,)
    return {
        "n_runs": len(runs),
        "n_evaluations": len(matrix),
        "n_prompts": int(per_prompt.size),
        "judge_reward": _mean_stat(per_prompt, n_boot, seed),
        "variance_across_runs": float(per_evaluation.var(ddof=1)) if len(matrix) >= 2 else None,
    }


def method_table(runs: list[dict[str, Any]], n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The study's table: a "reference" row and one row per method present (in ``METHODS`` order).

    Method row, over its n policies (values of ``policy_summary``): ``n_policies``; ``judge_reward``
    (mean of per-policy judge reward); ``variance_across_policies`` (of per-policy judge reward,
    ddof=1); ``gain`` (mean gain over the reference); ``p_worse`` (fraction of policies with gain < 0,
    and ``n_worse``); ``final_kl``; ``final_proxy_reward``. Each statistic is {"value", "ci95": [lo, hi]}
    with the interval ``INTERVALS`` names for it (means: percentile bootstrap over policies, ``n_boot``
    resamples, ``seed``; the variance: chi-square; p_worse: Wilson); value and interval are None where
    n < 2 leaves nothing to estimate.

    Reference row: ``judge_reward`` = mean over prompts of the per-prompt reference score averaged
    across its distinct evaluations (runs that read one shared validation count once), with a bootstrap
    over prompts; ``variance_across_runs`` of the per-evaluation means (ddof=1; None for one evaluation);
    ``n_runs``, ``n_evaluations``, ``n_prompts``.
    """
    if not runs:
        raise ValueError("method_table: no runs; expected one dict per trained policy")
    summaries = [policy_summary(run) for run in runs]
    seen: set[tuple[str, str]] = set()
    for summary in summaries:
        key = (summary["method"], str(summary["policy"]))
        if key in seen:
            raise ValueError(f"run {key[0]}/{key[1]}: policy name appears twice for this method; names must be unique")
        seen.add(key)
    table = {"reference": _reference_row(runs, n_boot, seed)}
    for method in METHODS:
        rows = [summary for summary in summaries if summary["method"] == method]
        if rows:
            table[method] = _method_row(rows, n_boot, seed)
    return table


def kl_match(table: dict[str, dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Whether the two methods end at about the same KL from the reference (the paper tunes β for it).

    ratio = mean final KL (variance_aware) / mean final KL (vanilla); matched iff
    |ln ratio| ≤ ln(tolerance). When either mean KL is ≤ 0 (e.g. a one-step run, whose policy is
    still the reference) the ratio is undefined: ratio None, matched False.
    """
    if not tolerance >= 1.0:
        raise ValueError(f"kl_match: tolerance={tolerance}; expected a ratio >= 1 (e.g. 1.25 for ±25%)")
    missing = [method for method in METHODS if method not in table]
    if missing:
        raise ValueError(f"kl_match: no policies for {missing}; the study compares both methods {list(METHODS)}")
    vanilla, aware = (table[method]["final_kl"]["value"] for method in METHODS)
    ratio = aware / vanilla if vanilla > 0 and aware > 0 else None
    return {
        "vanilla_final_kl": vanilla,
        "variance_aware_final_kl": aware,
        "ratio": ratio,
        "tolerance": float(tolerance),
        "matched": ratio is not None and abs(math.log(ratio)) <= math.log(tolerance),
    }


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_finite(item, f"{where}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} = {value} is not finite; the report holds finite numbers only")


def variance_ratio(policies: list[dict[str, Any]], alpha: float = 0.05) -> dict[str, Any] | None:
    """The paper's claim as one number: across-policy variance of the judge reward, variance-aware / vanilla.

    ratio = s²_aware / s²_vanilla (sample variances of the policies' ``judge_reward``) with a 1 − ``alpha``
    interval from the F distribution with (n_aware − 1, n_vanilla − 1) degrees of freedom, exact when the
    per-policy rewards are normal: [ratio / F(1 − α/2), ratio / F(α/2)]; ``f_test_p``: the two-sided F test of
    equal variances; ``brown_forsythe_p``: scipy's Levene test about the median (robust to non-normal
    rewards; None below 3 policies in a method: two values lie equally far from their median, so the test's
    within-group spread is 0 and its p-value meaningless). ``conclusion``: one sentence, whatever the interval
    says. None with < 2 policies per method or a zero vanilla variance.
    """
    rewards = {method: np.array([p["judge_reward"] for p in policies if p["method"] == method]) for method in METHODS}
    vanilla, aware = (rewards[method] for method in METHODS)
    if min(vanilla.size, aware.size) < 2 or vanilla.var(ddof=1) == 0:
        return None
    ratio = float(aware.var(ddof=1) / vanilla.var(ddof=1))
    dfn, dfd = aware.size - 1, vanilla.size - 1
    low, high = ratio / stats.f.ppf(1 - alpha / 2, dfn, dfd), ratio / stats.f.ppf(alpha / 2, dfn, dfd)
    tail = stats.f.cdf(ratio, dfn, dfd)
    if high < 1:
        conclusion = "variance-aware policies are less spread out than vanilla ones (the interval is below 1)"
    elif low > 1:
        conclusion = "variance-aware policies are MORE spread out than vanilla ones (the interval is above 1)"
    else:
        conclusion = f"no difference in spread can be told at n={aware.size}+{vanilla.size} (the interval holds 1)"
    return {
        "ratio": ratio,
        "ci95": [float(low), float(high)],
        "n": {"variance_aware": int(aware.size), "vanilla": int(vanilla.size)},
        "f_test_p": float(min(1.0, 2 * min(tail, 1 - tail))),
        "brown_forsythe_p": (
            float(stats.levene(aware, vanilla, center="median").pvalue) if min(aware.size, vanilla.size) >= 3 else None
        ),
        "conclusion": conclusion,
    }


def evaluation_noise(runs: list[dict[str, Any]], policies: list[dict[str, Any]], target: float = 0.1) -> dict | None:
    """How much of the between-policy variance the evaluation itself adds (its noise floor), measured.

    The reference validated with k >= 2 samples per prompt (``reference_repeats``, (k, n_prompts)) gives the
    sampling variance of each prompt's judge score, s²_p (ddof=1). A policy's judge reward is the mean over the
    same P prompts of m samples each (``final_samples_per_prompt`` of its run, 1 if absent), so the noise an
    evaluation adds to it is ``floor`` = mean_p(s²_p) / (P m) (unbiased, with P (k-1) degrees of freedom; the
    prompts are the same for every policy, so their choice adds no between-policy variance). ``ratio`` = floor /
    the vanilla policies' variance of ``judge_reward``: the share of that variance the evaluation's noise alone
    would produce; ``meets_target`` iff ratio <= ``target``. None when no run has repeats.
    """
    repeats = next((np.asarray(run["reference_repeats"]) for run in runs if run.get("reference_repeats")), None)
    if repeats is None:
        return None
    samples = {int(run.get("final_samples_per_prompt", 1)) for run in runs}
    if len(samples) != 1:
        raise ValueError(f"runs evaluated their policies with different samples per prompt {sorted(samples)}")
    (m,) = samples
    n_prompts = repeats.shape[1]
    floor = float(repeats.var(axis=0, ddof=1).mean() / (n_prompts * m))
    vanilla = np.array([p["judge_reward"] for p in policies if p["method"] == METHODS[0]])
    between = float(vanilla.var(ddof=1)) if vanilla.size >= 2 else None
    ratio = floor / between if between else None
    return {
        "repeats": int(repeats.shape[0]),
        "n_prompts": int(n_prompts),
        "samples_per_prompt": m,
        "floor": floor,
        "vanilla_between_policy_variance": between,
        "ratio": ratio,
        "target": target,
        "meets_target": ratio is not None and ratio <= target,
    }


def proxy_judge_agreement(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How well the proxy reward ranks the reference samples as the judge does (what PPO can gain).

    Per run: Spearman between ``proxy_reference`` (the run's reward-head score of each reference sample)
    and ``judge_reference``, None where either is constant (no ranking) or the run has no proxy scores of the
    reference (it did not validate the reference itself); ``spearman`` is the mean of the defined ones (None if
    there is none). None if no run has the proxy scores.
    """
    if not any(run.get("proxy_reference") for run in runs):
        return None
    per_run = []
    for run in runs:
        if not run.get("proxy_reference"):
            per_run.append(None)
            continue
        constant = min(np.ptp(run["proxy_reference"]), np.ptp(run["judge_reference"])) == 0
        per_run.append(None if constant else float(stats.spearmanr(run["proxy_reference"], run["judge_reference"])[0]))
    defined = [value for value in per_run if value is not None]
    return {"spearman": float(np.mean(defined)) if defined else None, "per_run": per_run}


def build_report(
    runs: list[dict[str, Any]], timings: dict[str, Any], settings: dict[str, Any], kl_tolerance: float
) -> dict[str, Any]:
    """The report dict (strict JSON: every number finite, None where a statistic is undefined).

    Keys: ``study``; ``settings`` and ``timings`` (passed through; timings may hold memory too);
    ``policies`` (``policy_summary`` of each run); ``table`` (``method_table``); ``variance_ratio``;
    ``evaluation_noise``; ``kl_match``
    (``kl_match(table, kl_tolerance)``); ``proxy_judge_agreement``; ``spread`` (``spread.analyze``: what drives
    the spread, whether the KL term acts, the power at the paper's ratios); ``paper`` (``PAPER_FIGURE_7``).
    Raises ValueError naming the run and metric (or the report path, for settings and timings) on a non-finite number.
    """
    table = method_table(runs)
    policies = [policy_summary(run) for run in runs]
    noise = evaluation_noise(runs, policies)
    report = {
        "study": "Banerjee & Gopalan, Section 5 (IMDB): Figures 7, 10, 11",
        "settings": settings,
        "policies": policies,
        "table": table,
        "variance_ratio": variance_ratio(policies),
        "evaluation_noise": noise,
        "kl_match": kl_match(table, kl_tolerance),
        "proxy_judge_agreement": proxy_judge_agreement(runs),
        "spread": spread.analyze(runs, policies, None if noise is None else noise["floor"]),
        "paper": PAPER_FIGURE_7,
        "timings": timings,
    }
    _check_finite(report, "report")
    return report


# --- text -----------------------------------------------------------------------------------------


def _format(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if stat is None or stat["value"] is None:
        return "n/a"
    text = f"{stat['value']:.{digits}f}"
    if stat["ci95"] is not None:
        low, high = stat["ci95"]
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def _markdown(report: dict[str, Any]) -> str:
    table, match = report["table"], report["kl_match"]
    reference = table["reference"]
    header = (
        "| | policies | judge reward [95% CI] | variance across policies [95% CI] | gain over reference [95% CI] "
        "| P(worse than reference) [95% CI] | final KL [95% CI] | final proxy reward [95% CI] |"
    )
    variance = reference["variance_across_runs"]
    lines = [
        f"# {report['study']}",
        "",
        header,
        "|---|---|---|---|---|---|---|---|",
        f"| reference | {reference['n_evaluations']} evaluation(s) | {_format(reference['judge_reward'])} "
        f"| {'n/a' if variance is None else f'{variance:.4f} (across evaluations)'} | | | | |",
    ]
    for method in METHODS:
        if method in table:
            row = table[method]
            lines.append(
                f"| {METHOD_LABELS[method]} | {row['n_policies']} | {_format(row['judge_reward'])} "
                f"| {_format(row['variance_across_policies'], 4)} | {_format(row['gain'])} "
                f"| {_format(row['p_worse'], 2)} | {_format(row['final_kl'])} "
                f"| {_format(row['final_proxy_reward'])} |"
            )
    ratio = "n/a" if match["ratio"] is None else f"{match['ratio']:.3f}"
    lines += [
        "",
        f"Reference: {reference['n_prompts']} held-out prompts.",
        "95% intervals: " + "; ".join(f"{kind.replace('_', ' ')}: {how}" for kind, how in INTERVALS.items()) + ".",
        f"KL match: variance-aware / vanilla mean final KL = {match['variance_aware_final_kl']:.4f} / "
        f"{match['vanilla_final_kl']:.4f} = {ratio} (tolerance ×{match['tolerance']:g}): "
        f"{'matched' if match['matched'] else 'NOT matched'}.",
        f"Spread: {_variance_ratio_text(report.get('variance_ratio'))}.",
        f"Evaluation noise: {_noise_text(report.get('evaluation_noise'))}.",
        f"Reward model: {_agreement_text(report)}.",
        f"Calibration: {_calibration_text(report['settings'].get('calibration'))}.",
        "",
        "## What drives the spread",
        "",
        *(f"- {line}" for line in spread.spread_lines(report["spread"])),
        "",
        "Paper, Figure 7 (40 policies each, another judge: compare orderings, not values):",
        "",
        "| | mean | variance |",
        "|---|---|---|",
        *(f"| {name} | {row['mean']} | {row['variance']} |" for name, row in report["paper"].items()),
        "",
        "## Figures",
        "",
        *(f"![{name}]({name})" for name in FIGURES),
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(report["settings"], indent=2),
        "```",
        "",
        "## Timings",
        "",
        "```json",
        json.dumps(report["timings"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Console lines: the reference, one line per method, and the KL match."""
    table, match = report["table"], report["kl_match"]
    lines = [f"  {'reference':>18}: judge={_format(table['reference']['judge_reward'])}"]
    for method in METHODS:
        if method in table:
            row = table[method]
            lines.append(
                f"  {METHOD_LABELS[method]:>18}: n={row['n_policies']} judge={_format(row['judge_reward'])} "
                f"var={_format(row['variance_across_policies'], 4)} gain={_format(row['gain'])} "
                f"P(worse)={_format(row['p_worse'], 2)} KL={_format(row['final_kl'])}"
            )
    ratio = "n/a" if match["ratio"] is None else f"{match['ratio']:.3f}"
    lines.append(f"  KL ratio aware/vanilla={ratio} (tolerance ×{match['tolerance']:g}) matched={match['matched']}")
    lines.append(f"  spread: {_variance_ratio_text(report.get('variance_ratio'))}")
    lines.append(f"  evaluation noise: {_noise_text(report.get('evaluation_noise'))}")
    return [*lines, f"  {_agreement_text(report)}"]


def _variance_ratio_text(result: dict[str, Any] | None) -> str:
    if result is None:
        return "variance ratio n/a (needs >= 2 policies per method)"
    low, high = result["ci95"]
    robust = (
        "n/a (needs >= 3 policies per method)"
        if result["brown_forsythe_p"] is None
        else f"{result['brown_forsythe_p']:.3f}"
    )
    return (
        f"variance across policies, variance-aware / vanilla = {result['ratio']:.3f} [95% F interval {low:.3f}, "
        f"{high:.3f}], F-test p={result['f_test_p']:.3f}, Brown-Forsythe p={robust}: "
        f"{result['conclusion']}"
    )


def _noise_text(noise: dict[str, Any] | None) -> str:
    if noise is None:
        return "not measured (the reference was validated with one sample per prompt)"
    ratio = "n/a" if noise["ratio"] is None else f"{noise['ratio']:.2f}"
    return (
        f"an evaluation of {noise['n_prompts']} prompts x {noise['samples_per_prompt']} samples adds variance "
        f"{noise['floor']:.5f} (the reference's per-prompt sampling variance over {noise['repeats']} samples), "
        f"{ratio} of the vanilla policies' variance "
        f"(target <= {noise['target']:g}: {'met' if noise['meets_target'] else 'NOT met'})"
    )


def _calibration_text(calibration: dict[str, Any] | None) -> str:
    """One line on how β was set: the pilots' final KLs and the β each method then trained with."""
    if not calibration:
        return "none recorded"
    beta, kl = calibration["beta"], calibration["pilot_final_kl"]
    pilot = calibration.get("pilot", {})
    where = f" (head {pilot['head']}, seed {pilot['seed']})" if pilot else ""
    text = (
        f"the pilots{where} ended at final KL {kl['vanilla']:.4g} (vanilla) and {kl['variance_aware']:.4g} "
        f"(variance-aware); β vanilla {beta['vanilla']:.4g}, variance-aware {beta['variance_aware']:.4g}"
    )
    return text if calibration.get("calibrated", True) else text + " (not calibrated: β as given)"


def _agreement_text(report: dict[str, Any]) -> str:
    agreement = report.get("proxy_judge_agreement")
    value = "n/a" if agreement is None or agreement["spearman"] is None else f"{agreement['spearman']:.3f}"
    return f"proxy reward vs judge on the reference samples: Spearman {value} (mean over runs)"


# --- figures --------------------------------------------------------------------------------------


def _new_figure():
    from matplotlib.figure import Figure  # lazy: Agg canvas via Figure.savefig, no pyplot state

    return Figure(figsize=(6.4, 4.0), dpi=100)


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def _plot_judge_rewards(report: dict[str, Any], path: Path) -> Path:
    """Figure 7: per-policy judge reward per method (histogram, top; one dot per policy, bottom).

    The reference is its mean (dashed line) with the bootstrap interval over prompts (band); its
    per-run means get a histogram and a strip too when they differ across runs (sampled responses).
    Histogram heights are the fraction of each group's policies, so groups of any size compare.
    """
    groups = {"reference": [p["reference_judge_reward"] for p in report["policies"]]}
    for method in METHODS:
        groups[method] = [p["judge_reward"] for p in report["policies"] if p["method"] == method]
    groups = {name: np.asarray(values) for name, values in groups.items() if len(values)}
    edges = np.histogram_bin_edges(np.concatenate(list(groups.values())), bins=20)
    figure = _new_figure()
    histogram, strip = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    jitter = np.random.default_rng(0)
    for row, (name, values) in enumerate(groups.items()):
        color = _COLORS[name]
        label = "reference (per run)" if name == "reference" else METHOD_LABELS[name]
        variance = f", var {values.var(ddof=1):.4f}" if values.size >= 2 else ""
        if name != "reference" or np.ptp(values) > 0:
            weights = np.full(values.size, 1.0 / values.size)
            histogram.hist(values, bins=edges, weights=weights, alpha=0.45, color=color)
        strip.plot(values, row + jitter.uniform(-0.2, 0.2, values.size), "o", color=color, alpha=0.6, markersize=3)
        histogram.plot([], [], "s", color=color, alpha=0.6, label=f"{label}: mean {values.mean():.3f}{variance}")
    reference = report["table"]["reference"]["judge_reward"]
    for axes in (histogram, strip):
        axes.axvline(reference["value"], color=_COLORS["reference"], linestyle="--", linewidth=1)
        if reference["ci95"] is not None:
            axes.axvspan(*reference["ci95"], color=_COLORS["reference"], alpha=0.12)
    histogram.plot([], [], "--", color=_COLORS["reference"], label="reference mean (band: 95% CI)")
    histogram.set_ylabel("fraction of policies")
    histogram.set_title("Judge reward of the trained policies (Figure 7)")
    histogram.legend(fontsize="x-small")
    strip.set_yticks(range(len(groups)), [name.replace("_", "-") for name in groups])
    strip.set_ylim(-0.5, len(groups) - 0.5)
    strip.set_xlabel("mean judge reward of a policy")
    return _save(figure, path)


def _plot_trajectories(runs: list[dict[str, Any]], metric: str, ylabel: str, title: str, path: Path) -> Path:
    """Figures 10-11: per method, thin lines per policy, mean over policies per step ± 1 std (ddof=0) band."""
    figure = _new_figure()
    axes = figure.subplots()
    for method in METHODS:
        curves = [trajectory(run, metric) for run in runs if run["method"] == method]
        if not curves:
            continue
        color = _TRAJECTORY_COLORS[method]
        for steps, values in curves:
            axes.plot(steps, values, color=color, alpha=0.25, linewidth=0.6)
        grid = np.unique(np.concatenate([steps for steps, _ in curves]))
        at_step = [[values[steps == step][0] for steps, values in curves if step in steps] for step in grid]
        mean = np.array([np.mean(values) for values in at_step])
        std = np.array([np.std(values) for values in at_step])
        axes.plot(grid, mean, color=color, linewidth=2, label=f"{METHOD_LABELS[method]} (mean of {len(curves)})")
        axes.fill_between(grid, mean - std, mean + std, color=color, alpha=0.2)
    axes.set_xlabel("training step")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize="small")
    return _save(figure, path)


def write_report(report: dict[str, Any], runs: list[dict[str, Any]], output_dir: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.md`` and the PNGs of ``FIGURES`` into ``output_dir``.

    report: a ``build_report`` result; runs: the runs it was built from (for the training curves).
    Returns the written paths, in that order.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = output_dir / "report.json", output_dir / "report.md"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    markdown_path.write_text(_markdown(report))
    figure_7, figure_10, figure_11, figure_spread = (output_dir / name for name in FIGURES)
    return [
        json_path,
        markdown_path,
        _plot_judge_rewards(report, figure_7),
        _plot_trajectories(runs, KL_METRIC, "KL(π ‖ π0)", "KL from the reference (Figure 10)", figure_10),
        _plot_trajectories(runs, PROXY_REWARD_METRIC, "proxy reward", "Proxy reward (Figure 11)", figure_11),
        spread.plot_spread(report["spread"], runs, figure_spread),
    ]
