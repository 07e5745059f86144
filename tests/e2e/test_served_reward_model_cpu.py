"""The reward model served by verl (``reward.reward_model.enable=True``), the GPU recipes' dataflow, end to end on
CPU through ``main_ppo``: verl's ``RewardModelManager`` launches the ``hf`` classifier server (vLLM's ``/classify``)
on the trainer's resources (scored in the driver, ``_compute_reward_colocate``) or on a resource pool of its own
(scored in the agent loop), and ``compute_score_disrm`` (ours: all K logits) reads it. Each path's variance-aware
KL must give every sample the penalty beta * sigma * sum_t kl_t, with the very sigma the in-process ensemble scorer
(the agent-loop path without a served model) gives the same samples, on both trainers: the V1 trainer with
``grpo_variance_kl`` (the weighted KL per token, two responses per prompt), against a run of the agent-loop path;
the legacy trainer with GAE and the KL in the reward, whose rollout dump carries each sample's K heads: sigma^2 is
their variance, and the heads are the reward model's own logits for the text the in-process scorer reads
(tests/integration/test_hf_reward_server.py: the served heads equal the in-process scorer's). V1 with GAE and the
served model is the recipes' CPU path (tests/recipes).
"""

from __future__ import annotations

import json
import math
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.test_main_ppo_cpu import assert_healthy, run_verl_ppo
from verl_variance.experiments.quickstart import build_prompt_files, quickstart_overrides

pytestmark = pytest.mark.slow

HEADS = 4
RESPONSES = {"v1": 2, "legacy": 1}
"""Responses per prompt: GRPO's groups on V1."""
REFERENCE = "agent_loop"
PATHS = {
    REFERENCE: [],  # in-process scoring in verl's reward-loop worker: nothing served
    "colocated": ["reward.reward_model.enable=True"],
    "resource_pool": [
        "reward.reward_model.enable=True",
        "reward.reward_model.enable_resource_pool=True",
        "reward.reward_model.n_gpus_per_node=1",
        "reward.reward_model.nnodes=1",
        "ray_kwargs.ray_init.num_gpus=2",  # logical GPUs: the trainer's rank and the reward model's
    ],
}


def served_runs(tmp_path: Path, policy: Path, trainer: str) -> dict[str, tuple[dict, list[dict], list[dict], str]]:
    """The paths at once (same seed, same data; the agent-loop reference on V1 only): per path the metrics, the
    variance-aware KL's per-sample log, the rollout dump and the run's log."""
    from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

    reward_model = build_tiny_model(tmp_path / "rm", TinyModelConfig("qwen2", num_labels=HEADS, seed=5))
    train, val = build_prompt_files(tmp_path / "data")

    def run(path: str):
        workdir = tmp_path / path
        workdir.mkdir()
        overrides = quickstart_overrides(workdir, policy, train, val, steps=2) + [
            f"trainer.use_v1={trainer == 'v1'}",
            "data.shuffle=False",
            "reward.custom_reward_function.path=null",
            "reward.reward_manager.name=ensemble",
            f"ensemble_reward.model_path={reward_model}",
            "ensemble_reward.aggregator=lcb",  # the training reward: mean - 0.5 sigma, floored at the lowest head
            "+ensemble_reward.aggregator_params.k=0.5",
            f"reward.reward_model.model_path={reward_model}",
            "ensemble_reward.max_length=512",  # the tiny model's positions: what the served model reads at most
            "algorithm.kl_penalty=variance_aware",
            "algorithm.kl_ctrl.kl_coef=0.05",
            "actor_rollout_ref.actor.optim.lr=1e-3",
            "variance_kl.weighting=std",
            f"variance_kl.sample_log={workdir / 'samples.jsonl'}",
            f"trainer.rollout_data_dir={workdir / 'rollouts'}",
            "+hacking_monitor.enable=true",  # warn: the run is unchanged, its hacking/* read the same heads
            *PATHS[path],
        ]
        if trainer == "v1":
            overrides += ["algorithm.adv_estimator=grpo_variance_kl", f"actor_rollout_ref.rollout.n={RESPONSES['v1']}"]
        steps = run_verl_ppo(workdir, ["ppo", "--device", "cpu", *overrides])
        records = [json.loads(line) for line in (workdir / "samples.jsonl").read_text().splitlines()]
        dump = [json.loads(line) for file in sorted((workdir / "rollouts").glob("*.jsonl"))
                for line in file.read_text().splitlines()]  # fmt: skip
        return steps, records, dump, (workdir / "run.log").read_text()

    paths = [path for path in PATHS if trainer == "v1" or path != REFERENCE]
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        futures = {path: pool.submit(run, path) for path in paths}
        return {path: future.result() for path, future in futures.items()}


@pytest.mark.xdist_group("several_runs")  # verl runs at once: never beside another such test
@pytest.mark.parametrize("trainer", ["v1", "legacy"])
def test_variance_aware_kl_reads_the_served_heads_on_every_path(tmp_path, tiny_models, trainer):
    runs = served_runs(tmp_path, tiny_models["qwen2"], trainer)
    fields = ("reward_variance", "kl_weight", "kl_sum", "kl_penalty")
    reference = runs[REFERENCE if trainer == "v1" else "colocated"][1]
    assert len(reference) == 8 * RESPONSES[trainer] * 2  # prompts x responses x steps
    for path, (steps, records, dump, log) in runs.items():
        assert_healthy(steps, ["variance_kl/reward_variance/mean", "variance_kl/kl_weighted"], monitored=True)
        per_step = len(records) // 2
        for step in (1, 2):  # the monitor's σ², each step: the mean of what the variance-aware KL read per sample
            variances = [r["reward_variance"] for r in records[(step - 1) * per_step : step * per_step]]
            assert steps[step]["hacking/reward_variance"] == pytest.approx(statistics.mean(variances), rel=1e-5)
        served = path != REFERENCE
        assert ("/classify (reward.reward_model.rollout.name=hf" in log) is served  # the server verl launched
        # the same samples (content order on V1, the data order on legacy) get the same sigma^2 and penalty
        assert [[r[f] for f in fields] for r in records] == [[r[f] for f in fields] for r in reference], path
        for record in records:  # beta * sigma * sum_t kl_t
            assert record["kl_weight"] == pytest.approx(math.sqrt(record["reward_variance"]), rel=1e-6)
            assert record["kl_penalty"] == pytest.approx(0.05 * record["kl_weight"] * record["kl_sum"], rel=1e-5,
                                                         abs=1e-12)  # fmt: skip
        assert any(r["kl_penalty"] != 0 for r in records), "the policy never moved away from the reference"
        assert all(r["reward_variance"] > 0 for r in records)
        if trainer == "legacy":  # its rollout dump carries each sample's K heads: sigma^2 is their variance
            texts = [(row["input"], row["output"]) for row in dump]
            assert texts == [(row["input"], row["output"]) for row in runs["colocated"][2]]
            for row, record in zip(dump, records, strict=True):
                heads = [row[f"reward_head_{k}"] for k in range(HEADS)]
                mean, variance = statistics.mean(heads), statistics.variance(heads)
                assert record["reward_variance"] == pytest.approx(variance, rel=1e-5)
                assert row["score"] == pytest.approx(max(mean - 0.5 * math.sqrt(variance), min(heads)), rel=1e-5)
            for step in (1, 2):  # the trained score's gap above the heads' mean - 1 sd (hacking_monitor.kappa=1)
                gaps = [row["score"] - statistics.mean(heads) + statistics.stdev(heads) for row in dump
                        if row["step"] == step for heads in [[row[f"reward_head_{k}"] for k in range(HEADS)]]]
                assert steps[step]["hacking/lower_bound_gap"] == pytest.approx(statistics.mean(gaps), rel=1e-4)
    if trainer == "legacy":  # the served heads are the reward model's own logits for the text it reads
        _assert_heads_match_transformers(tmp_path / "rm", runs["colocated"][2][-1])


def _assert_heads_match_transformers(reward_model: Path, row: dict) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    prompt = row["input"].removeprefix("user\n").removesuffix("\nassistant\n")  # the decoded chat prompt
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
    ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False,
                    return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        expected = model(**ids).logits[0].tolist()
    assert [row[f"reward_head_{k}"] for k in range(HEADS)] == pytest.approx(expected, rel=1e-4, abs=1e-5)
