"""End to end on CPU through verl's main_ppo: GDPO on the V1 trainer with the shipped two-objective reward, RVPO over
the heads of a K-head reward model with the variance-weighted KL loss (V1: the model served by verl; legacy: scored
in the agent loop, with R²VPO too, resumed from verl's checkpoint), R²VPO on both trainers; the reward-hacking
monitor on both (its stop action, its history carried across the resume)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.e2e.test_main_ppo_cpu import (
    assert_healthy,
    assert_kl_loss_is_the_drivers_weighted_kl,
    rank_overrides,
    run_verl_ppo,
)
from verl_variance.experiments.quickstart import build_prompt_files, quickstart_overrides
from verl_variance.rewards import multi_objective

pytestmark = pytest.mark.slow

GROUPS = [
    "algorithm.use_kl_in_reward=False",
    "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",  # two updates per step: the second one is off-policy
    "actor_rollout_ref.actor.optim.lr=1e-3",
]
"""Groups of two responses per prompt, for the group estimators."""
TWO_OBJECTIVES = [
    f"reward.custom_reward_function.path={multi_objective.__file__}",
    "reward.custom_reward_function.name=sentiment_and_banned_words",
    "+algorithm.gdpo_reward_keys=[sentiment,no_banned_words]",
    *GROUPS,
]


MONITOR_STOPS_AT_STEP_2 = [
    "trainer.total_training_steps=3",  # the monitor ends the run after step 2
    "+hacking_monitor.enable=true",
    "+hacking_monitor.baseline_steps=1",  # σ² of step 1 is the baseline
    "+hacking_monitor.disagreement_ratio=1e-6",  # any disagreement at step 2 alarms
    "+hacking_monitor.entropy_drop=null",
    "+hacking_monitor.action=stop",
]


def assert_the_monitor_stopped_at_step_2(tmp_path: Path, steps: dict[int, dict[str, float]]) -> None:
    """Its signals logged each step (σ² the same the variance-weighted KL read), the alarm at step 2, the run ended
    there (exit 0) with a checkpoint that holds the monitor's history."""
    log = (tmp_path / "run.log").read_text()
    assert "verl-variance hacking monitor: step 2: disagreement_ratio" in log
    assert "verl-variance hacking monitor: stopping the run after step 2 (disagreement_ratio" in log
    for metrics in steps.values():
        assert metrics["hacking/reward_variance"] == pytest.approx(metrics["variance_kl/reward_variance/mean"],
                                                                   rel=1e-5)  # fmt: skip
        assert "hacking/lower_bound_gap" in metrics
    ratio = steps[2]["hacking/reward_variance"] / steps[1]["hacking/reward_variance"]
    assert steps[2]["hacking/disagreement_ratio"] == pytest.approx(ratio, rel=1e-6)
    assert (steps[1]["hacking/alarms"], steps[2]["hacking/alarms"]) == (0.0, 1.0)
    history = json.loads((tmp_path / "checkpoints" / "global_step_2" / "hacking_monitor_state.json").read_text())
    assert history["fired"] == ["disagreement_ratio"] and len(history["history"]["variance"]) == 2


def _overrides(tmp_path: Path, model: Path) -> list[str]:
    train, val = build_prompt_files(tmp_path / "data")
    return quickstart_overrides(tmp_path, model, train, val, steps=2)


def test_gdpo_with_r2vpo_on_v1(tmp_path, tiny_models):
    """verl 0.9.1's own GDPO fails on V1 (KeyError 'prompts'); through the plugin it trains, here with R²VPO's
    fixed-lambda loss instead of clipping."""
    overrides = _overrides(tmp_path, tiny_models["qwen2"]) + TWO_OBJECTIVES
    overrides += ["algorithm.adv_estimator=gdpo", "actor_rollout_ref.actor.policy_loss.loss_mode=r2vpo",
                  "++r2vpo.lam=0.5"]  # fmt: skip
    steps = run_verl_ppo(tmp_path, ["ppo", "--device", "cpu", *overrides])
    assert_healthy(steps, ["actor/ratio_variance", "actor/r2vpo_lambda", "critic/advantages/mean"])
    for metrics in steps.values():
        assert metrics["actor/r2vpo_lambda"] == 0.5
        assert "actor/pg_clipfrac" not in metrics  # no clipping
    assert max(metrics["actor/ratio_variance"] for metrics in steps.values()) > 0


def test_rvpo_and_the_variance_weighted_kl_loss_on_v1_over_a_served_reward_model(tmp_path, tiny_models):
    """V1 on 2 FSDP ranks, a Llama policy: RVPO's objectives are the K=3 heads of an ensemble reward model that verl
    serves (colocated: scored in the driver, whose reward extras V1 keeps as TransferQueue fields), and the KL loss is
    weighted by the served heads' variance. One update per step (all 16 samples in one mini-batch), so the loss is
    taken at pi_old: the workers' KL loss must equal the driver's weighted KL (legacy: test_main_ppo_cpu.py)."""
    from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

    reward_model = build_tiny_model(tmp_path / "rm", TinyModelConfig("qwen2", num_labels=3))
    overrides = _overrides(tmp_path, tiny_models["llama"]) + GROUPS + rank_overrides(2) + [
        "reward.custom_reward_function.path=null",
        "reward.reward_manager.name=ensemble",
        f"ensemble_reward.model_path={reward_model}",
        "reward.reward_model.enable=True",
        f"reward.reward_model.model_path={reward_model}",
        "ensemble_reward.max_length=512",  # the tiny model's positions: what the served model reads at most
        "algorithm.adv_estimator=rvpo",
        "++rvpo.ensemble_heads=True",
        "++rvpo.tau=0.5",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        "algorithm.kl_penalty=variance_aware",
        "variance_kl.weighting=std",
        *MONITOR_STOPS_AT_STEP_2,  # the served heads: the monitor's too
    ]
    steps = run_verl_ppo(tmp_path, ["ppo", "--device", "cpu", *overrides])
    assert "/classify (reward.reward_model.rollout.name=hf" in (tmp_path / "run.log").read_text()
    assert_the_monitor_stopped_at_step_2(tmp_path, steps)  # V1: saved by the monitor (save_freq=-1)
    assert_healthy(steps, ["rvpo/softmin_gap/mean", "rvpo/objective_disagreement/mean", "actor/kl_loss",
                           "variance_kl/kl_weighted", "variance_kl/reward_variance/mean"], monitored=True)  # fmt: skip
    assert_rvpo_read_the_heads(steps, 3)
    for metrics in steps.values():
        assert metrics["critic/advantages/mean"] == pytest.approx(0.0, abs=1e-5)  # whitened
        assert metrics["variance_kl/reward_variance/mean"] > 0  # the served heads disagree
    assert_kl_loss_is_the_drivers_weighted_kl(steps)


def assert_rvpo_read_the_heads(steps: dict[int, dict[str, float]], heads: int) -> None:
    """RVPO's objectives are the ensemble's heads, whose mean is its score."""
    for metrics in steps.values():
        means = [metrics[f"rvpo/reward_head_{k}/mean"] for k in range(heads)]
        assert sum(means) / heads == pytest.approx(metrics["critic/score/mean"], rel=1e-4, abs=1e-6)
        assert metrics["rvpo/softmin_gap/mean"] >= 0


def test_rvpo_over_ensemble_heads_with_r2vpo_and_variance_kl_on_legacy_then_resume(tmp_path, tiny_models):
    """All three on at once (legacy trainer, 2 ranks, a Llama policy): RVPO's objectives are the K=3 heads of an
    ensemble reward model scored in verl's agent loop, the loss is R²VPO with the adaptive lambda, and the KL loss is
    weighted by the heads' variance; the hacking monitor stops the 3-step run after step 2. The dual step of step 1 is
    the lambda of step 2, and it is saved with verl's checkpoint; a second run resumes from that checkpoint (verl's
    own checkpointing on CPU) at step 3, with the saved lambda and the monitor's history (its alarm not repeated)."""
    from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

    reward_model = build_tiny_model(tmp_path / "rm", TinyModelConfig("qwen2", num_labels=3))
    overrides = _overrides(tmp_path, tiny_models["llama"])
    overrides += [
        *rank_overrides(2),
        "trainer.use_v1=False",
        "reward.custom_reward_function.path=null",
        "reward.reward_manager.name=ensemble",  # scored in verl's agent loop (the served model: the V1 test above)
        f"ensemble_reward.model_path={reward_model}",
        "algorithm.adv_estimator=rvpo",
        "++rvpo.ensemble_heads=True",
        "algorithm.use_kl_in_reward=False",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "algorithm.kl_penalty=variance_aware",
        "actor_rollout_ref.actor.policy_loss.loss_mode=r2vpo",
        "++r2vpo.lam=1.0",
        "++r2vpo.target_variance=0.0",
        "++r2vpo.dual_lr=100.0",
        "trainer.save_freq=2",
        *MONITOR_STOPS_AT_STEP_2,
    ]
    steps = run_verl_ppo(tmp_path, ["ppo", "--device", "cpu", *overrides])
    assert_the_monitor_stopped_at_step_2(tmp_path, steps)  # legacy: verl's save_freq saved step 2
    assert_healthy(steps, ["actor/ratio_variance", "actor/r2vpo_lambda", "r2vpo/lambda_next", "actor/kl_loss",
                           "variance_kl/kl_weighted", "variance_kl/reward_variance/mean",
                           "rvpo/softmin_gap/mean"], monitored=True)  # fmt: skip
    assert_rvpo_read_the_heads(steps, 3)
    assert steps[1]["actor/r2vpo_lambda"] == pytest.approx(1.0)
    assert steps[2]["actor/r2vpo_lambda"] == pytest.approx(steps[1]["r2vpo/lambda_next"], rel=1e-6)
    # delta = 0: lambda rises by eta * Var(rho) each step
    assert steps[1]["r2vpo/lambda_next"] == pytest.approx(1.0 + 100.0 * steps[1]["actor/ratio_variance"], rel=1e-5)
    state = json.loads((tmp_path / "checkpoints" / "global_step_2" / "r2vpo_state.json").read_text())
    assert state["lam"] == pytest.approx(steps[2]["r2vpo/lambda_next"], rel=1e-6)
    assert math.isfinite(state["lam"])

    assert (tmp_path / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    (tmp_path / "metrics.jsonl").unlink()
    resumed = run_verl_ppo(tmp_path, ["ppo", "--device", "cpu", *overrides, "trainer.total_training_steps=3"])
    assert sorted(resumed) == [3]
    assert resumed[3]["actor/r2vpo_lambda"] == pytest.approx(state["lam"], rel=1e-6)
    assert resumed[3]["hacking/alarms"] == 1.0  # the fired alarm restored: not raised again, the run went on
    assert "hacking monitor: step 3" not in (tmp_path / "run.log").read_text()
