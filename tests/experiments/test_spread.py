"""What drives the spread: variance components, the power of the ratio's interval, the KL term's weight."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from verl_variance.experiments import spread, study
from verl_variance.experiments.report import variance_ratio


def _residual_sum_of_squares(values: np.ndarray, heads: bool, seeds: bool) -> float:
    """Least squares of y on an intercept and head / seed indicators (an independent route to the ANOVA sums)."""
    n_heads, n_seeds = values.shape
    rows = []
    for h in range(n_heads):
        for s in range(n_seeds):
            row = [1.0]
            row += [float(h == k) for k in range(1, n_heads)] if heads else []
            row += [float(s == k) for k in range(1, n_seeds)] if seeds else []
            rows.append(row)
    design, y = np.array(rows), values.reshape(-1)
    coefficients = np.linalg.lstsq(design, y, rcond=None)[0]
    return float(((y - design @ coefficients) ** 2).sum())


def test_mean_squares_match_a_least_squares_fit():
    values = np.random.default_rng(3).normal(size=(4, 5))
    result = spread.variance_components(values)
    full = _residual_sum_of_squares(values, heads=True, seeds=True)
    head_ss = _residual_sum_of_squares(values, heads=False, seeds=True) - full
    seed_ss = _residual_sum_of_squares(values, heads=True, seeds=False) - full
    assert result["df"] == {"head": 3, "seed": 4, "residual": 12}
    assert result["mean_squares"]["head"] == pytest.approx(head_ss / 3, rel=1e-10)
    assert result["mean_squares"]["seed"] == pytest.approx(seed_ss / 4, rel=1e-10)
    assert result["mean_squares"]["residual"] == pytest.approx(full / 12, rel=1e-10)
    assert result["total_variance"] == pytest.approx(values.var(ddof=1))
    assert result["component"]["evaluation"] is None  # no noise given: left in the interaction


def test_components_recover_known_variances_on_average():
    """y = a_h + b_s + (ab)_hs + e with known variances: the estimators are unbiased (10,000 tables, seeded)."""
    rng = np.random.default_rng(0)
    truth = {"head": 0.5, "seed": 0.2, "interaction": 0.1, "evaluation": 0.05}
    heads, seeds, draws = 4, 6, 10_000
    tables = (
        rng.normal(0, truth["head"] ** 0.5, (draws, heads, 1))
        + rng.normal(0, truth["seed"] ** 0.5, (draws, 1, seeds))
        + rng.normal(0, (truth["interaction"] + truth["evaluation"]) ** 0.5, (draws, heads, seeds))
    )
    estimates = [spread.variance_components(t, evaluation_noise=truth["evaluation"])["estimate"] for t in tables]
    for name in ("head", "seed", "interaction"):
        mean = np.mean([estimate[name] for estimate in estimates])
        assert mean == pytest.approx(truth[name], abs=0.03), name
    one = spread.variance_components(tables[0], evaluation_noise=0.05)
    assert sum(one["share"].values()) == pytest.approx(1.0)
    assert all(value >= 0 for value in one["component"].values())


def test_a_table_without_two_heads_and_two_seeds_is_refused():
    with pytest.raises(ValueError, match=r"expected an \(H, S\) table with H, S >= 2"):
        spread.variance_components(np.ones((1, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        spread.variance_components(np.array([[0.0, np.nan], [1.0, 2.0]]))


def test_power_matches_scipys_f_distribution_and_a_simulation():
    ratio, n = 0.3, 24
    by_hand = stats.f.cdf(stats.f.ppf(0.025, n - 1, n - 1) / ratio, n - 1, n - 1)
    assert spread.ratio_interval_power(ratio, n) == pytest.approx(by_hand, rel=1e-12)
    assert spread.policies_for_power(ratio, 0.8) == n
    assert spread.ratio_interval_power(ratio, n - 1) < 0.8 <= spread.ratio_interval_power(ratio, n)
    # the report's own interval, on simulated normal rewards: how often its upper end is below 1
    rng, hits, draws = np.random.default_rng(1), 0, 2000
    for _ in range(draws):
        policies = [{"method": "vanilla", "judge_reward": x} for x in rng.normal(0, 1, n)]
        policies += [{"method": "variance_aware", "judge_reward": x} for x in rng.normal(0, ratio**0.5, n)]
        hits += variance_ratio(policies)["ci95"][1] < 1
    assert hits / draws == pytest.approx(by_hand, abs=0.03)
    assert spread.policies_for_power(0.2) == 15 and spread.policies_for_power(0.42) == 44
    with pytest.raises(ValueError, match="only for a true ratio in"):
        spread.policies_for_power(1.2)


def _run(method: str, head: int, seed: int, scores: list[float], rewards: list[float], variance=None) -> dict:
    steps = {}
    for step, (score, reward) in enumerate(zip(scores, rewards, strict=True), start=1):
        steps[step] = {"critic/score/mean": score, "critic/rewards/mean": reward}
        if variance is not None:
            steps[step]["variance_kl/reward_variance/mean"] = variance[step - 1]
    return {"method": method, "policy": f"head{head}_seed{seed}", "head": head, "seed": seed, "steps": steps,
            "proxy_final_std": 0.5, "ensemble_variance_reference": 0.2,
            "ensemble_variance_final": 0.1 + head}  # fmt: skip


def test_the_kl_terms_share_of_the_reward_and_the_heads_disagreement():
    vanilla = _run("vanilla", 0, 0, [0.0, 0.2, 0.4, 1.0], [0.0, 0.1, 0.3, 0.9])
    aware = _run("variance_aware", 1, 0, [0.0, 0.1, 0.2, 0.6], [0.0, 0.0, 0.0, 0.2], variance=[0.3, 0.3, 0.4, 0.5])
    give_back = spread.kl_give_back(vanilla)  # last quarter of 4 steps = step 4; first quarter = step 1
    assert give_back["penalty"] == pytest.approx(0.1) and give_back["proxy_gain"] == pytest.approx(1.0)
    assert give_back["penalty_over_spread"] == pytest.approx(0.2)
    assert give_back["penalty_over_gain"] == pytest.approx(0.1)
    agreement = spread.disagreement([vanilla, aware])
    assert agreement["reference"] == pytest.approx(0.2)
    assert agreement["vanilla"] == {"final": pytest.approx(0.1), "final_over_reference": pytest.approx(0.5),
                                    "training_first": None, "training_last": None}  # fmt: skip
    assert agreement["variance_aware"]["training_first"] == 0.3 and agreement["variance_aware"]["training_last"] == 0.5
    dumped = dict(vanilla, ensemble_variance_training=[[1, 0.2], [2, 0.4], [3, 0.6], [4, 0.7], [5, 0.9]])
    assert spread.training_variance(dumped)[-1] == (5, 0.9)  # the rollout dumps, whatever the method
    agreement = spread.disagreement([dumped, aware])  # quarters of 5 steps: 2 steps each
    assert agreement["vanilla"]["training_first"] == pytest.approx(0.3)
    assert agreement["vanilla"]["training_last"] == pytest.approx(0.8)
    no_rewards = dict(vanilla, steps={1: {"critic/score/mean": 0.0}, 2: {"critic/score/mean": 1.0}})
    assert spread.kl_give_back(no_rewards)["penalty"] is None


def test_decomposition_needs_a_complete_grid_and_says_so():
    grid = [(h, s) for h in range(2) for s in range(2)]
    policies = [{"method": "vanilla", "head": h, "seed": s, "judge_reward": h + 0.1 * s} for h, s in grid]
    policies.append({"method": "variance_aware", "head": 0, "seed": 0, "judge_reward": 0.0})
    result = spread.decomposition(policies, noise_floor=0.0)
    assert result["variance_aware"] is None
    assert result["vanilla"]["component"]["interaction"] == pytest.approx(0.0, abs=1e-12)
    assert result["vanilla"]["estimate"]["head"] == pytest.approx(0.5)  # head means 0.05, 1.05: variance 0.5
    lines = spread.spread_lines({"decomposition": result, "kl_give_back": {"per_method": {}},
                                 "disagreement": None, "power": spread.power(2)})  # fmt: skip
    assert lines[0].startswith("vanilla judge-reward variance over 2 heads x 2 seeds: head 5.00e-01")
    assert "variance_aware: no complete heads x seeds grid" in lines[1]
    assert "figure 7 ratio 0.20" in lines[-1] and "(15 per method for 80%)" in lines[-1]


def test_dump_statistics_read_the_heads_variance_and_the_proxy_spread(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "validation").mkdir(parents=True)
    rows = {0: [(0.1, 0.4), (0.3, 0.2)], 8: [(1.0, 0.1), (2.0, 0.3)]}  # step: (score, reward_variance) per sample
    for step, samples in rows.items():
        lines = [json.dumps({"input": f"p{i}", "output": "o", "score": score, "reward_variance": variance})
                 for i, (score, variance) in enumerate(samples)]  # fmt: skip
        (run_dir / "validation" / f"{step}.jsonl").write_text("\n".join(lines) + "\n")
    statistics = study.dump_statistics(run_dir)
    assert statistics["ensemble_variance_reference"] == pytest.approx(0.3)
    assert statistics["ensemble_variance_final"] == pytest.approx(0.2)
    assert statistics["proxy_final_std"] == pytest.approx(np.std([1.0, 2.0], ddof=1))


def test_training_disagreement_scores_each_steps_dump_once_in_step_order(tmp_path, monkeypatch):
    training = study.TrainingDisagreement(tmp_path / "ensemble")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert training(run_dir) == {"ensemble_variance_training": None}  # no rollout dumps: nothing to score
    (run_dir / "rollouts").mkdir()
    for step in (1, 10, 2):  # 10 sorts after 2 by number
        lines = [json.dumps({"input": "p", "output": f"o{step}", "score": 0.0}) for _ in range(2)]
        (run_dir / "rollouts" / f"{step}.jsonl").write_text("\n".join(lines) + "\n")
    scored = []
    monkeypatch.setattr(study.TrainingDisagreement, "_mean_variance",
                        lambda self, rows: scored.append(rows[0]["output"]) or 0.1 * len(scored))  # fmt: skip
    assert training(run_dir) == {"ensemble_variance_training": [[1, 0.1], [2, 0.2], [10, pytest.approx(0.3)]]}
    assert training(run_dir)["ensemble_variance_training"][1] == [2, 0.2] and scored == ["o1", "o2", "o10"]  # cached
    other = study.TrainingDisagreement(tmp_path / "another_ensemble")
    assert other(run_dir)["ensemble_variance_training"][0] == [1, pytest.approx(0.4)]  # another model: scored again


def _pitman_morgan_t(aware: np.ndarray, vanilla: np.ndarray, theta: float = 1.0) -> float:
    """The textbook form: t = (F/θ − 1)·√(n − 2) / (2·√((F/θ)(1 − r²))), F = s²_a / s²_v, r = corr(a, v)."""
    f = aware.var(ddof=1) / vanilla.var(ddof=1) / theta
    r = np.corrcoef(aware, vanilla)[0, 1]
    return (f - 1) * np.sqrt(aware.size - 2) / (2 * np.sqrt(f * (1 - r**2)))


def test_the_paired_ratio_matches_the_textbook_pitman_morgan_test_and_covers():
    rng = np.random.default_rng(5)
    vanilla = rng.normal(size=12)
    aware = 0.6 * vanilla + rng.normal(scale=0.3, size=12)
    result = spread.paired_variance_ratio(vanilla, aware)
    t = _pitman_morgan_t(aware, vanilla)
    assert result["p"] == pytest.approx(2 * stats.t.sf(abs(t), 10), rel=1e-9)
    critical = stats.t.ppf(0.975, 10)
    for bound in result["ci95"]:  # the interval's ends are where the test at theta just rejects
        assert abs(_pitman_morgan_t(aware, vanilla, bound)) == pytest.approx(critical, rel=1e-6)
    assert result["ci95"][0] < result["ratio"] < result["ci95"][1]
    assert result["bootstrap_ci95"][0] < result["ratio"] < result["bootstrap_ci95"][1]
    low, high = result["leave_one_out"]["ratio"]
    assert low <= result["ratio"] <= high
    # coverage of the true ratio (0.5) by the Pitman-Morgan interval on correlated normal pairs
    covered, draws, true_ratio = 0, 400, 0.5
    for _ in range(draws):
        shared = rng.normal(size=10)
        v = shared + rng.normal(scale=0.5, size=10)
        a = np.sqrt(true_ratio) * (shared + rng.normal(scale=0.5, size=10))
        low, high = spread.paired_variance_ratio(v, a, n_boot=1)["ci95"]
        covered += low <= true_ratio <= high
    assert covered / draws == pytest.approx(0.95, abs=0.03)
    with pytest.raises(ValueError, match=r"paired rewards with n >= 4"):
        spread.paired_variance_ratio(vanilla[:3], aware[:3])


def test_paired_comparison_uses_the_cells_both_methods_trained():
    policies = [{"method": m, "head": h, "seed": 0, "judge_reward": value}
                for m, values in (("vanilla", [0.1, 0.5, 0.2, 0.9, 0.4]), ("variance_aware", [0.1, 0.4, 0.2, 0.7]))
                for h, value in enumerate(values)]  # fmt: skip
    result = spread.paired_comparison(policies)
    assert result["cells"] == [[0, 0], [1, 0], [2, 0], [3, 0]]  # head 4 has no variance-aware policy
    assert result["ratio"] == pytest.approx(np.var([0.1, 0.4, 0.2, 0.7], ddof=1) / np.var([0.1, 0.5, 0.2, 0.9], ddof=1))
    assert spread.paired_comparison(policies[:3] + policies[5:7]) is None
