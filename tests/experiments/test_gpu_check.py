"""``scripts/gpu_check.sh``'s models and figures (``experiments/gpu_check.py``)."""

from __future__ import annotations

import json

import pytest

from verl_variance.experiments import gpu_check


def test_the_figures_project_the_papers_192_steps_from_step_1_and_the_median_later_step():
    steps = {
        1: {"timing_s/step": 30.0, "actor/perf/max_memory_allocated_gb": 10.0},
        2: {"timing_s/step": 4.0, "critic/perf/max_memory_allocated_gb": 12.5, "actor/perf/max_memory_reserved_gb": 14},
        3: {"timing_s/step": 6.0, "variance_kl/reward_variance/mean": 0.5, "variance_kl/kl_weight/mean": 0.7},
        4: {"timing_s/step": 5.0, "variance_kl/reward_variance/mean": 0.25, "variance_kl/kl_weight/mean": 0.5},
    }
    rows = {row["figure"]: row["value"] for row in gpu_check.summarize("fsdp", steps)}
    assert rows["steps"] == 4 and rows["step_1_s"] == 30.0 and rows["median_step_s"] == 5.0
    assert rows["max_memory_allocated_gb"] == 12.5 and rows["max_memory_reserved_gb"] == 14.0
    assert rows["reward_variance"] == 0.375 and rows["kl_weight"] == pytest.approx(0.6)  # sigma^2 reached the KL
    assert rows["projected_192_steps_h"] == pytest.approx((30.0 + 191 * 5.0) / 3600)
    assert gpu_check.summarize("x", {}) == [{"run": "x", "figure": "steps", "value": 0,
                                             "note": "the run logged no step"}]  # fmt: skip


def test_summary_reads_verls_file_logger_and_models_are_checked(tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "data": {"timing_s/step": float(s)}}) + "\n" for s in (1, 2, 3)))
    assert gpu_check.main(["summary", "--run", "r", "--metrics", str(metrics), "--steps", "10"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {row["figure"]: row["value"] for row in rows}["projected_10_steps_h"] == pytest.approx((1 + 9 * 2.5) / 3600)
    assert gpu_check.main(["models", "--out", str(tmp_path), "--size", "huge"]) == 2
    assert "--size 'huge': expected one of ['gpt2', 'tiny']" in capsys.readouterr().err
    assert gpu_check.main(["models", "--out", str(tmp_path), "--size", "tiny", "--heads", "1"]) == 2


def test_the_check_builds_a_k_head_reward_model_of_the_policys_size(tmp_path):
    from transformers import AutoConfig

    folders = gpu_check.build_models(tmp_path, "tiny", heads=3)
    policy, reward_model = (AutoConfig.from_pretrained(folders[name]) for name in ("policy", "reward_model"))
    assert reward_model.num_labels == 3 and reward_model.n_embd == policy.n_embd == 128
    assert policy.n_embd // policy.n_head == 64  # vLLM's CPU attention needs a head size of 64
    big = gpu_check.SIZES["gpt2"]["policy"]
    assert (big.hidden_size, big.num_layers, big.num_heads, big.max_position_embeddings) == (768, 12, 12, 1024)
