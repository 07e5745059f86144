"""The IMDB study's statistics, table and figures on synthetic runs whose answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.image import imread

from verl_variance.experiments.report import (
    FIGURES,
    bootstrap_ci,
    build_report,
    evaluation_noise,
    final_value,
    kl_match,
    method_table,
    policy_summary,
    proxy_judge_agreement,
    summary_lines,
    trajectory,
    variance_interval,
    variance_ratio,
    wilson_interval,
    write_report,
)

N_PROMPTS = 16
N_STEPS = 5


def make_run(method, index, gain, final_kl=1.3, n_prompts=N_PROMPTS, reference_level=0.2):
    """A run whose judge reward is exactly reference_level + gain and whose KL plateaus at final_kl (last 2 steps)."""
    offsets = np.linspace(-0.1, 0.1, n_prompts)  # mean 0: the per-run means are exact
    steps = {
        step: {"actor/reward_kl_penalty": final_kl * min(step, 4) / 4, "critic/score/mean": 0.1, "other": 1.0}
        for step in range(1, N_STEPS + 1)
    }
    return {
        "method": method,
        "policy": f"head{index}_seed0",
        "head": index,
        "seed": 0,
        "beta": 0.05,
        "steps": steps,
        "judge_reference": (reference_level + offsets).tolist(),
        "judge_final": (reference_level + gain + offsets).tolist(),
    }


VANILLA_GAINS = [0.3, -0.2, 0.5, -0.1, 0.4, 0.25]
AWARE_GAINS = [0.05, 0.02, -0.01, 0.04, 0.03]


@pytest.fixture
def runs():
    return [make_run("vanilla", i, gain, final_kl=1.3) for i, gain in enumerate(VANILLA_GAINS)] + [
        make_run("variance_aware", i, gain, final_kl=1.2) for i, gain in enumerate(AWARE_GAINS)
    ]


def test_policy_summary_by_hand():
    run = make_run("vanilla", 3, 0.25, final_kl=1.3)
    run["steps"] = {str(step): metrics for step, metrics in run["steps"].items()}  # JSON gives str keys
    summary = policy_summary(run)
    assert summary["judge_reward"] == pytest.approx(0.45)
    assert summary["reference_judge_reward"] == pytest.approx(0.2)
    assert summary["gain"] == pytest.approx(0.25)
    assert summary["final_kl"] == pytest.approx(1.3)
    assert summary["final_proxy_reward"] == pytest.approx(0.1)
    assert (summary["last_step"], summary["n_prompts"], summary["policy"]) == (N_STEPS, N_PROMPTS, "head3_seed0")


def test_trajectory_sorts_numeric_steps_and_skips_steps_without_the_metric():
    run = make_run("vanilla", 0, 0.1)
    run["steps"] = {"10": {"m": 3.0}, "2": {"m": 1.0}, "0": {"val": 0.0}, "9": {"m": 2.0}}
    steps, values = trajectory(run, "m")
    assert steps.tolist() == [2, 9, 10] and values.tolist() == [1.0, 2.0, 3.0]


def test_bootstrap_ci_is_seeded_and_covers_the_true_mean():
    rng = np.random.default_rng(1)
    mean = np.mean
    values = rng.normal(0.3, 0.05, 40)
    assert bootstrap_ci(values, mean, 500, seed=7) == bootstrap_ci(values, mean, 500, seed=7)
    assert bootstrap_ci(values, mean, 500, seed=7) != bootstrap_ci(values, mean, 500, seed=8)
    covered = 0
    for _ in range(200):
        low, high = bootstrap_ci(rng.normal(0.3, 0.05, 40), mean, 500, seed=0)
        covered += low <= 0.3 <= high
    assert covered / 200 >= 0.88  # nominal 0.95; a percentile bootstrap at n = 40 is slightly narrow


def test_bootstrap_ci_of_fewer_than_two_values_is_none():
    assert bootstrap_ci([0.5], np.mean) is None


def test_variance_interval_by_hand_and_its_coverage_at_few_policies():
    values = np.array([0.1, 0.4, 0.35, 0.2, 0.5, 0.3])
    s2 = values.var(ddof=1)
    # chi-square quantiles of 5 degrees of freedom, from tables: 0.8312 (2.5%) and 12.8325 (97.5%)
    assert variance_interval(values) == pytest.approx([5 * s2 / 12.8325, 5 * s2 / 0.8312], rel=1e-4)
    assert variance_interval([0.3]) is None
    rng = np.random.default_rng(3)  # six normal "policies" with variance 0.04, 400 times
    samples = rng.normal(0.3, 0.2, (400, 6))
    chi_square = np.mean([low <= 0.04 <= high for low, high in map(variance_interval, samples)])
    bootstrap = np.mean([low <= 0.04 <= high for low, high in (bootstrap_ci(x, _var, 200) for x in samples)])
    assert chi_square >= 0.93  # nominal 0.95
    assert bootstrap < 0.8  # why the report does not bootstrap a variance from a handful of policies


def _var(x, axis=-1):
    return np.var(x, axis=axis, ddof=1)


def test_wilson_interval_by_hand():
    low, high = wilson_interval(3, 10)
    assert (low, high) == pytest.approx((0.1078, 0.6032), abs=1e-4)
    z = 1.959963984540054
    p, n = 0.3, 10
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (low, high) == pytest.approx((center - half, center + half))
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


def test_method_table_against_numpy(runs):
    table = method_table(runs, n_boot=300, seed=0)
    vanilla, aware = table["vanilla"], table["variance_aware"]
    judge = 0.2 + np.array(VANILLA_GAINS)
    assert vanilla["n_policies"] == len(VANILLA_GAINS) and aware["n_policies"] == len(AWARE_GAINS)
    assert vanilla["judge_reward"]["value"] == pytest.approx(judge.mean())
    assert vanilla["variance_across_policies"]["value"] == pytest.approx(np.var(judge, ddof=1))
    assert aware["variance_across_policies"]["value"] == pytest.approx(np.var(AWARE_GAINS, ddof=1))
    assert vanilla["gain"]["value"] == pytest.approx(np.mean(VANILLA_GAINS))
    assert vanilla["p_worse"]["value"] == pytest.approx(2 / 6) and vanilla["p_worse"]["n_worse"] == 2
    assert vanilla["p_worse"]["ci95"] == pytest.approx(wilson_interval(2, 6))
    assert vanilla["variance_across_policies"]["ci95"] == pytest.approx(variance_interval(judge))
    assert aware["p_worse"]["value"] == pytest.approx(1 / 5)
    assert vanilla["final_kl"]["value"] == pytest.approx(1.3) and aware["final_kl"]["value"] == pytest.approx(1.2)
    for row in (vanilla, aware):
        for key in ("judge_reward", "variance_across_policies", "gain", "p_worse", "final_kl"):
            low, high = row[key]["ci95"]
            assert low <= row[key]["value"] <= high, key
    reference = table["reference"]
    assert reference["judge_reward"]["value"] == pytest.approx(0.2)
    assert reference["variance_across_runs"] is None  # every run scored the same reference: one evaluation
    assert (reference["n_runs"], reference["n_evaluations"], reference["n_prompts"]) == (11, 1, N_PROMPTS)
    assert method_table(runs, n_boot=300, seed=0) == table


def test_reference_averages_per_prompt_across_runs():
    runs = [make_run("vanilla", 0, 0.1, reference_level=0.1), make_run("variance_aware", 0, 0.1, reference_level=0.3)]
    reference = method_table(runs, n_boot=100)["reference"]
    assert reference["judge_reward"]["value"] == pytest.approx(0.2)
    assert reference["variance_across_runs"] == pytest.approx(np.var([0.1, 0.3], ddof=1))
    assert reference["n_evaluations"] == 2


def test_kl_match_ratio_and_tolerance(runs):
    table = method_table(runs, n_boot=50)
    match = kl_match(table, tolerance=1.25)
    assert match["ratio"] == pytest.approx(1.2 / 1.3)
    assert match["matched"] is True
    assert kl_match(table, tolerance=1.05)["matched"] is False
    with pytest.raises(ValueError, match="tolerance"):
        kl_match(table, tolerance=0.8)


def test_kl_match_with_zero_kl_has_no_ratio():
    runs = [make_run("vanilla", 0, 0.1, final_kl=0.0), make_run("variance_aware", 0, 0.1, final_kl=0.0)]
    match = kl_match(method_table(runs, n_boot=10), tolerance=1.25)
    assert match["ratio"] is None and match["matched"] is False


def test_kl_match_needs_both_methods():
    with pytest.raises(ValueError, match="variance_aware"):
        kl_match(method_table([make_run("vanilla", 0, 0.1)], n_boot=10), tolerance=1.25)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda run: run["judge_final"].__setitem__(3, float("nan")), r"judge_final\[3\]"),
        (lambda run: run["steps"][N_STEPS].__setitem__("actor/reward_kl_penalty", math.nan), "reward_kl_penalty"),
        (lambda run: run["steps"][2].__setitem__("critic/score/mean", math.inf), "critic/score/mean.* step 2"),
        (lambda run: run["steps"][N_STEPS].pop("critic/score/mean"), "missing at the last step"),
        (lambda run: run["judge_reference"].pop(), "same held-out prompts"),
        (lambda run: run.__setitem__("method", "ppo"), "unknown method"),
        (lambda run: run.pop("beta"), r"missing key\(s\) \['beta'\]"),
    ],
    ids=["nan-judge", "nan-final-kl", "inf-proxy-mid-run", "missing-final-metric", "prompt-count", "method", "key"],
)
def test_bad_input_names_the_run_and_the_field(runs, corrupt, message):
    corrupt(runs[4])
    with pytest.raises(ValueError, match=message) as error:
        build_report(runs, timings={}, settings={}, kl_tolerance=1.25)
    assert "head4_seed0" in str(error.value)


def test_duplicate_policy_names_are_rejected(runs):
    runs[1]["policy"] = runs[0]["policy"]
    with pytest.raises(ValueError, match="vanilla/head0_seed0"):
        method_table(runs, n_boot=10)


def test_non_finite_timing_names_its_path(runs):
    with pytest.raises(ValueError, match=r"report\.timings\.train_s"):
        build_report(runs, timings={"train_s": math.nan}, settings={}, kl_tolerance=1.25)


def test_single_policy_per_method_gives_none_not_nan():
    runs = [make_run("vanilla", 0, 0.2), make_run("variance_aware", 0, -0.1)]
    report = build_report(runs, timings={"total_s": 1.0}, settings={"beta": 0.05}, kl_tolerance=1.25)
    for method in ("vanilla", "variance_aware"):
        row = report["table"][method]
        assert row["variance_across_policies"] == {"value": None, "ci95": None}
        assert row["judge_reward"]["ci95"] is None and row["p_worse"]["ci95"] is None
    assert report["table"]["variance_aware"]["p_worse"]["value"] == 1.0
    json.dumps(report, allow_nan=False)
    assert any("n/a" in line for line in summary_lines(report))


def test_write_report_writes_every_file(runs, tmp_path):
    timings = {"train_s": 12.5, "peak_memory_gib": 3.2}
    settings = {"n_heads": 3, "seeds": [0, 1]}
    report = build_report(runs, timings=timings, settings=settings, kl_tolerance=1.25)
    paths = write_report(report, runs, tmp_path / "out")
    assert [path.name for path in paths] == ["report.json", "report.md", *FIGURES]
    assert json.loads(paths[0].read_text()) == json.loads(json.dumps(report))
    assert json.loads(paths[0].read_text())["timings"] == timings
    markdown = paths[1].read_text()
    assert "variance-aware PPO" in markdown and "matched" in markdown and "fig10_kl.png" in markdown
    for path in paths[2:]:
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        image = imread(path)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0
    lines = summary_lines(report)
    assert len(lines) == 7 and "matched=True" in lines[-4] and "Spearman n/a" in lines[-1]
    assert "variance-aware / vanilla = " in lines[-3] and "interval is below 1" in lines[-3]
    assert "Spread: variance across policies" in markdown and "Evaluation noise: not measured" in markdown


def test_variance_ratio_against_an_independent_computation(runs):
    """F interval and tests by hand: the ratio's (n_a - 1, n_v - 1) F quantiles, Levene about the median."""
    from scipy import stats

    policies = [policy_summary(run) for run in runs]
    result = variance_ratio(policies)
    vanilla, aware = np.var(VANILLA_GAINS, ddof=1), np.var(AWARE_GAINS, ddof=1)
    ratio = aware / vanilla
    assert result["ratio"] == pytest.approx(ratio)
    assert result["ci95"] == pytest.approx([ratio / stats.f.ppf(0.975, 4, 5), ratio / stats.f.ppf(0.025, 4, 5)])
    assert result["f_test_p"] == pytest.approx(2 * stats.f.cdf(ratio, 4, 5))
    assert result["brown_forsythe_p"] == pytest.approx(stats.levene(AWARE_GAINS, VANILLA_GAINS, center="median").pvalue)
    assert result["ci95"][1] < 1 and "less spread out" in result["conclusion"]
    assert result["n"] == {"variance_aware": 5, "vanilla": 6}
    swapped = [{**p, "method": "vanilla" if p["method"] == "variance_aware" else "variance_aware"} for p in policies]
    flipped = variance_ratio(swapped)
    assert flipped["ratio"] == pytest.approx(1 / ratio) and "MORE" in flipped["conclusion"]
    same = [p for p in policies if p["method"] == "vanilla"]
    assert "interval holds 1" in variance_ratio(same + [{**p, "method": "variance_aware"} for p in same])["conclusion"]
    assert variance_ratio(policies[:1] + policies[-1:]) is None


def test_brown_forsythe_is_not_reported_below_three_policies_per_method(runs):
    """At two policies per method both lie equally far from their median: Levene's within-group spread is 0
    (scipy divides by it and printed p=0.000); the F interval stays."""
    two_each = runs[:2] + runs[len(VANILLA_GAINS) : len(VANILLA_GAINS) + 2]
    report = build_report(two_each, timings={}, settings={}, kl_tolerance=2.0)
    result = report["variance_ratio"]
    assert result["brown_forsythe_p"] is None and result["n"] == {"variance_aware": 2, "vanilla": 2}
    ratio = np.var(AWARE_GAINS[:2], ddof=1) / np.var(VANILLA_GAINS[:2], ddof=1)
    assert result["ratio"] == pytest.approx(ratio) and all(np.isfinite(result["ci95"]))
    (line,) = [line for line in summary_lines(report) if "spread:" in line]
    assert "Brown-Forsythe p=n/a (needs >= 3 policies per method)" in line
    three_each = runs[:3] + runs[len(VANILLA_GAINS) : len(VANILLA_GAINS) + 3]
    assert build_report(three_each, timings={}, settings={}, kl_tolerance=2.0)["variance_ratio"]["brown_forsythe_p"] > 0


def test_evaluation_noise_is_the_per_prompt_sampling_variance_over_the_evaluation_size(runs):
    rng = np.random.default_rng(0)
    spread = rng.uniform(0.2, 2.0, size=N_PROMPTS)  # each prompt's own sampling std
    repeats = rng.normal(0.2, 1.0, size=(4, N_PROMPTS)) * spread
    runs[0]["reference_repeats"] = repeats.tolist()
    for run in runs:
        run["final_samples_per_prompt"] = 2
    policies = [policy_summary(run) for run in runs]
    noise = evaluation_noise(runs, policies)
    per_prompt = [np.var(repeats[:, p], ddof=1) for p in range(N_PROMPTS)]
    floor = np.mean(per_prompt) / (N_PROMPTS * 2)  # the variance of a mean over N_PROMPTS x 2 samples
    assert noise["floor"] == pytest.approx(floor) and noise["samples_per_prompt"] == 2
    assert (noise["repeats"], noise["n_prompts"]) == (4, N_PROMPTS)
    assert noise["vanilla_between_policy_variance"] == pytest.approx(np.var(VANILLA_GAINS, ddof=1))
    assert noise["ratio"] == pytest.approx(floor / np.var(VANILLA_GAINS, ddof=1))
    assert noise["meets_target"] == (noise["ratio"] <= 0.1)
    runs[1]["final_samples_per_prompt"] = 1
    with pytest.raises(ValueError, match=r"different samples per prompt \[1, 2\]"):
        evaluation_noise(runs, policies)
    del runs[0]["reference_repeats"]
    assert evaluation_noise(runs, policies) is None


def test_evaluation_noise_floor_matches_the_spread_of_simulated_evaluations():
    """The floor is what repeated evaluations of one policy actually vary by (simulated, many repeats)."""
    rng = np.random.default_rng(1)
    n_prompts, m = 48, 2
    prompt_means, prompt_stds = rng.normal(0, 0.5, n_prompts), rng.uniform(0.2, 0.8, n_prompts)
    evaluations = rng.normal(prompt_means, prompt_stds, size=(20000, m, n_prompts)).mean(axis=(1, 2))
    repeats = rng.normal(prompt_means, prompt_stds, size=(4, n_prompts))
    run = {"reference_repeats": repeats.tolist(), "final_samples_per_prompt": m}
    policies = [{"method": "vanilla", "judge_reward": value} for value in (0.0, 0.1)]
    noise = evaluation_noise([run], policies)
    assert noise["floor"] == pytest.approx(np.var(evaluations), rel=0.25)  # 48 x 3 df estimate


def test_final_value_averages_the_last_quarter_of_steps():
    run = make_run("vanilla", 0, 0.0)
    run["steps"] = {step: {"m": float(step)} for step in range(1, 9)}  # 8 steps: the last 2 count
    assert final_value(run, "m") == pytest.approx(7.5)
    run["steps"] = {1: {"m": 3.0}}
    assert final_value(run, "m") == 3.0


def test_proxy_judge_agreement_is_the_mean_spearman_over_runs(runs):
    from scipy.stats import spearmanr

    assert proxy_judge_agreement(runs) is None  # runs without proxy scores (older results)
    rng = np.random.default_rng(0)
    for run in runs:
        run["proxy_reference"] = (np.asarray(run["judge_reference"]) + rng.normal(0, 0.1, N_PROMPTS)).tolist()
    agreement = proxy_judge_agreement(runs)
    expected = [spearmanr(run["proxy_reference"], run["judge_reference"]).statistic for run in runs]
    assert agreement["per_run"] == pytest.approx(expected)
    assert agreement["spearman"] == pytest.approx(np.mean(expected))
    built = build_report(runs, {}, {}, kl_tolerance=2.0)
    assert built["proxy_judge_agreement"] == agreement
    assert f"Spearman {agreement['spearman']:.3f}" in summary_lines(built)[-1]
