"""End to end: 2 PPO steps through verl's own ``main_ppo`` on CPU (Ray, FSDP2 over gloo, hf rollout).

Covers the quickstart (V1, GAE + critic + KL in the reward, 1 rank; the legacy trainer's in
test_served_reward_model_cpu.py), the variance-weighted KL loss on the legacy trainer with 2 ranks (V1's, on 2 ranks
with a Llama policy, in test_variance_methods_cpu.py, which also resumes from verl's checkpoint), and errors raised in
verl's workers. GPT-2 runs through verl in tests/recipes; its dropout makes the actor's training pass differ from its
log-prob pass, which the KL-loss tests compare.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from verl_variance.experiments.quickstart import build_prompt_files, quickstart_overrides

pytestmark = pytest.mark.slow

ROLLOUT_LOGPROB_TOLERANCE = 1e-4
"""Max |rollout log-prob - actor log-prob| per token: both are fp32 forward passes of the same weights (the
colocated rollout samples from the actor's weights of this step)."""


def deterministic(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics that must repeat with the seed: all but those measuring time or memory."""
    return {k: v for k, v in metrics.items() if not (k.startswith("timing") or "perf/" in k)}


GRPO = [
    "algorithm.adv_estimator=grpo",
    "algorithm.use_kl_in_reward=False",
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.rollout.n=2",
]


def read_metrics(path: Path) -> dict[int, dict[str, float]]:
    """verl's file logger: one JSON line per step."""
    steps = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        steps[record["step"]] = record["data"]
    return steps


def run_verl_ppo(workdir: Path, args: list[str], timeout: int = 600) -> dict[int, dict[str, float]]:
    metrics = workdir / "metrics.jsonl"
    env = dict(os.environ, VERL_FILE_LOGGER_PATH=str(metrics))
    proc = subprocess.run(
        [sys.executable, "-m", "verl_variance.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    (workdir / "run.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return read_metrics(metrics)


def rank_overrides(ranks: int) -> list[str]:
    """FSDP ranks, with micro batches that fit each rank's share of the 8-sample batch."""
    micro = 8 // ranks
    return [
        f"trainer.n_gpus_per_node={ranks}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={micro}",
        f"critic.ppo_micro_batch_size_per_gpu={micro}",
    ]


def assert_healthy(steps: dict[int, dict[str, float]], expected_keys: list[str], monitored: bool = False) -> None:
    """Steps 1 and 2 logged, each with ``expected_keys`` and finite numbers; no ``hacking/*`` signal unless the run
    turned the hacking monitor on (off, it adds nothing to what verl logs)."""
    assert sorted(steps) == [1, 2]
    for step, metrics in steps.items():
        assert any(key.startswith("hacking/") for key in metrics) == monitored, f"step {step}: hacking/* metrics"
        for key in expected_keys + ["actor/pg_loss", "actor/grad_norm", "training/rollout_probs_diff_max"]:
            assert key in metrics, f"step {step}: {key} missing"
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                assert math.isfinite(value), f"step {step}: {key}={value}"
        assert metrics["training/rollout_probs_diff_max"] < ROLLOUT_LOGPROB_TOLERANCE
        assert metrics["response_length/max"] <= 10


def assert_kl_loss_is_the_drivers_weighted_kl(steps: dict[int, dict[str, float]]) -> None:
    """One PPO update per step: at step 2 the workers' KL loss (weighted and not) equals the driver's, and the
    weights matter."""
    second = steps[2]
    assert second["variance_kl/kl_unweighted"] > 0, "the policy never moved away from the reference"
    # equal up to the float noise between the actor's training forward pass and its old_log_prob pass
    assert second["actor/kl_loss"] == pytest.approx(second["variance_kl/kl_weighted"], rel=1e-2, abs=1e-9)
    assert second["actor/variance_kl/kl_loss_unweighted"] == pytest.approx(
        second["variance_kl/kl_unweighted"], rel=1e-2, abs=1e-9
    )
    assert second["actor/kl_loss"] != pytest.approx(second["actor/variance_kl/kl_loss_unweighted"], rel=5e-2)


def _samples(rollout_dir: Path) -> dict[str, list[tuple]]:
    """verl's rollout dumps (trainer.rollout_data_dir), per step: the sorted (prompt, response, score) triples."""
    return {dump.stem: sorted((r["input"], r["output"], r["score"]) for r in (json.loads(line) for line in
            dump.read_text().split("\n") if line.strip())) for dump in sorted(rollout_dir.glob("*.jsonl"))}  # fmt: skip


@pytest.mark.xdist_group("several_runs")  # never beside another test that runs several verl runs at once
def test_quickstart_same_seed_same_run(tmp_path):
    """The README's quickstart (V1 trainer, GAE with a critic, KL in the reward, 1 rank) twice at once: the same seed
    gives the same samples and the same metrics, to the bit, although the runs' timings differ (the replay buffer's
    arrival order is replaced by a content order, ``patches.content_order``). That another rollout seed gives other
    responses is tests/integration (the sampler's seed is the rollout config's)."""

    def run(name: str) -> tuple[dict, dict]:
        workdir = tmp_path / name
        workdir.mkdir()
        args = ["quickstart", "--workdir", str(workdir), "--steps", "2", "data.seed=1",
                f"trainer.rollout_data_dir={workdir / 'rollouts'}"]  # fmt: skip
        return run_verl_ppo(workdir, args), _samples(workdir / "rollouts")

    with ThreadPoolExecutor(max_workers=2) as pool:
        (steps, samples), (other_steps, other_samples) = pool.map(run, ("a", "b"))
    assert_healthy(steps, ["critic/vf_loss", "actor/reward_kl_penalty", "critic/score/mean"])
    assert steps[1]["actor/reward_kl_penalty_coeff"] == pytest.approx(0.001)
    assert sorted(samples) == ["1", "2"] and all(len(rows) == 8 for rows in samples.values())
    assert samples["1"] != samples["2"]  # the second step samples other prompts
    assert other_samples == samples
    for step, metrics in steps.items():
        assert "critic/vf_loss" in deterministic(metrics)
        assert deterministic(other_steps[step]) == deterministic(metrics)


# variance-aware KL in the reward: tests/e2e/test_served_reward_model_cpu.py (every reward path; the legacy trainer
# with GAE, V1 with grpo_variance_kl) and tests/recipes (V1 with GAE and the served model, the recipes' CPU path)


def test_variance_weighted_kl_loss_on_legacy(tmp_path, tiny_models):
    """actor.use_kl_loss with kl_penalty=variance_aware on the legacy trainer (2 ranks): the workers' KL loss is the
    driver's weighted KL (V1's, over a served reward model: test_variance_methods_cpu.py).

    One PPO update per step (one epoch, one mini-batch), so the loss is taken at pi_old and the
    worker's seq-mean-token-mean KL loss must equal the driver's mean_i(w_i * kl_i) per step; the
    parity reward makes half the weights 0, so weighted and unweighted differ.
    """
    train, val = build_prompt_files(tmp_path / "data")
    overrides = quickstart_overrides(tmp_path, tiny_models["qwen2"], train, val, steps=2)
    overrides += [
        *GRPO,
        "trainer.use_v1=False",
        *rank_overrides(2),
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "data.shuffle=False",
        f"reward.custom_reward_function.path={Path(__file__).parent / 'variance_reward.py'}",
        "reward.custom_reward_function.name=parity_variance_score",
        "algorithm.kl_penalty=variance_aware",
        "variance_kl.weighting=std",
    ]
    steps = run_verl_ppo(tmp_path, ["ppo", "--device", "cpu", *overrides])
    assert_healthy(steps, ["actor/kl_loss", "actor/variance_kl/kl_loss_unweighted", "variance_kl/kl_weighted"])
    assert_kl_loss_is_the_drivers_weighted_kl(steps)


def test_a_stock_session_failure_takes_verls_own_path_and_ours_stops_the_run(tmp_path, tiny_models):
    """Two V1 steps whose reward function (tests/e2e/variance_reward.py) fails inside verl's reward loop.

    Step 1: a user's reward function failing on half the prompts, a stock agent-loop session failure: verl logs each
    failure and trains on, as without the plugin. Every session runs through our agent-loop wrapper, which must not
    make it fatal (it did while any traceback through our files counted). Step 2: an error of verl-variance raised in
    a reward worker is what the run ends with; V1 alone would end with "Sync replay buffer selected terminal groups
    with no materializable trajectories" (our WorkerError now). The legacy trainer passes a worker's error on itself
    (Ray's RayTaskError carries it): none of our hooks is on its path."""
    train, val = build_prompt_files(tmp_path / "data")
    overrides = quickstart_overrides(tmp_path, tiny_models["qwen2"], train, val, steps=2)
    overrides += [f"reward.custom_reward_function.path={Path(__file__).parent / 'variance_reward.py'}",
                  "reward.custom_reward_function.name=failing_score", "data.shuffle=False"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "verl_variance.cli", "ppo", "--device", "cpu", *overrides],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, VERL_FILE_LOGGER_PATH=str(
                              tmp_path / "metrics.jsonl")))  # fmt: skip
    output = proc.stdout + proc.stderr
    (tmp_path / "run.log").write_text(output)
    assert output.count("ValueError: a user's reward function failed") >= 4  # each failed session, logged by verl
    assert sorted(read_metrics(tmp_path / "metrics.jsonl")) == [1]  # step 1 was trained, step 2 was not
    assert proc.returncode != 0
    # the last exception line printed (Python prints a chained cause first) is ours: raised at the replay buffer's
    # next poll, or (when verl's sampler gave up first, which depends on timing) by fit, with verl's symptom as cause
    raised = re.findall(r"^[\w.]*(?:Error|Exception)(?:\(\w+\))?: .*$", output, flags=re.MULTILINE)
    assert raised and "VerlVarianceError: the reward of this sample cannot be computed" in raised[-1]
    assert raised[-1].startswith("verl_variance.integration.worker_errors.WorkerError: verl-variance failed")
    assert not [line for line in output.splitlines() if "verl-variance failed" in line and "ValueError" in line]
