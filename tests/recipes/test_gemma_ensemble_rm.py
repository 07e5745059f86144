"""recipes/gemma_ensemble_rm: Table 2/4 defaults in the dry run, data preparation from local copies, the CPU path of
the three scripts end to end (stage 1 through TRL under torchrun, stage 2, RewardBench evaluation), and bad input
refused before any process starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import free_port
from tests.recipes.conftest import RECIPES, recipe_env, run_recipe
from tests.reward_model.synthetic import PROMPT, synthetic_pairs
from verl_variance.experiments.recipes import RecipeError, check_reward_model

GEMMA = RECIPES / "gemma_ensemble_rm"
SUBSETS = ("alpacaeval-easy", "mt-bench-hard", "refusals-dangerous", "math-prm")


def printed_config(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") : stdout.rindex("}") + 1])


@pytest.fixture(scope="module")
def local_copies(tmp_path_factory):
    """Offline copies in the hub datasets' own layouts: mix2 (whole conversations, a save_to_disk folder with a
    train split) and RewardBench (text + subset, one parquet file)."""
    import datasets

    root = tmp_path_factory.mktemp("rm_copies")

    def conversation(answer):
        return [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": answer[0]["content"]}]

    mix2 = [{"chosen": conversation(p.chosen), "rejected": conversation(p.rejected), "chosen_score": 1.0}
            for p in synthetic_pairs(96, seed=0)]  # fmt: skip
    datasets.DatasetDict({"train": datasets.Dataset.from_list(mix2)}).save_to_disk(str(root / "mix2"))
    bench = [{"prompt": PROMPT, "chosen": p.chosen[0]["content"], "rejected": p.rejected[0]["content"],
              "subset": SUBSETS[i % 4], "id": i} for i, p in enumerate(synthetic_pairs(40, seed=1))]  # fmt: skip
    datasets.Dataset.from_list(bench).to_parquet(str(root / "reward_bench.parquet"))
    return {"mix2": root / "mix2", "rewardbench": root / "reward_bench.parquet"}


def prepare(out, *args) -> subprocess.CompletedProcess:
    command = [sys.executable, str(GEMMA / "prepare_data.py"), "--local_save_dir", str(out), *args]
    return subprocess.run(command, env=recipe_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def rm_data(tmp_path_factory, local_copies):
    out = tmp_path_factory.mktemp("rm_data")
    done = prepare(out, "--local_dataset_path", str(local_copies["mix2"]), "--local_rewardbench_path",
                   str(local_copies["rewardbench"]))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_prepare_data_writes_the_loaders_layouts(rm_data):
    from verl_variance.reward_model.analysis import load_subset_pairs
    from verl_variance.reward_model.data import load_preferences

    train = load_preferences(rm_data / "train.parquet")
    assert len(train) == 96 and train[0].is_chat and train[0].prompt == [{"role": "user", "content": PROMPT}]
    pairs, subsets = load_subset_pairs([rm_data / "rewardbench.parquet"])
    assert len(pairs) == 40 and sorted(set(subsets)) == sorted(SUBSETS)


def test_prepare_data_without_hub_or_copy_names_the_dataset_and_the_option(tmp_path, local_copies):
    done = prepare(tmp_path, "--local_rewardbench_path", str(local_copies["rewardbench"]))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cannot load weqweasdas/preference_dataset_mix2 from the Hugging Face hub" in done.stderr
    assert "pass --local_dataset_path <a local copy of weqweasdas/preference_dataset_mix2" in done.stderr
    done = prepare(tmp_path, "--local_dataset_path", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and f"--local_dataset_path {tmp_path / 'nowhere'} does not exist" in done.stderr


def test_dry_runs_hold_tables_2_and_4_and_the_multi_node_launch(tmp_path):
    stage1 = run_recipe(GEMMA / "run_gemma2b_stage1_fsdp.sh", cwd=tmp_path, timeout=120, DRY_RUN=1, NNODES=2)
    assert stage1.returncode == 0, stage1.stderr[-3000:]
    config = printed_config(stage1.stdout)
    assert config["model_name_or_path"] == "google/gemma-2b-it" and config["stage"] == 1
    table2 = {"learning_rate": 1e-5, "batch_size": 32, "num_epochs": 1.0, "weight_decay": 0.001,
              "lr_scheduler": "cosine", "target_loss": 0.4, "loss_window": 20, "bf16": True,
              "gradient_checkpointing": True, "micro_batch_size_per_device": 1}  # fmt: skip
    assert {key: config["stage1"][key] for key in table2} == table2
    launch = next(line for line in stage1.stderr.splitlines() if line.startswith("launch: accelerate launch"))
    assert "--num_machines 2" in launch and "--num_processes 8" in launch and "config/fsdp2.yaml" in launch

    stage2 = run_recipe(GEMMA / "run_gemma2b_stage2.sh", cwd=tmp_path, timeout=120, DRY_RUN=1)
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    config = printed_config(stage2.stdout)
    table4 = {"num_heads": 10, "learning_rate": 1e-5, "batch_size": 32, "num_epochs": 0.5, "target_loss": 0.2}
    assert config["stage"] == 2 and {key: config["stage2"][key] for key in table4} == table4


@pytest.mark.slow
def test_cpu_path_trains_both_stages_and_evaluates(tmp_path, rm_data, tiny_recipe_models):
    """Stage 1 through TRL under torchrun (checkpoint every 2 steps), stage 2 with 3 heads, RewardBench table and
    figures; the ensemble is what the PPO recipes take as REWARD_MODEL_PATH."""
    out = tmp_path / "rm"
    common = {"DEVICE": "cpu", "DATA_DIR": rm_data, "OUTPUT_DIR": out, "MAX_LENGTH": 64}
    model = tiny_recipe_models["judge"]
    stage1 = run_recipe(GEMMA / "run_gemma2b_stage1_fsdp.sh", cwd=tmp_path, **common, MODEL_PATH=model, GPUS_PER_NODE=1,
                        MASTER_PORT=free_port(), MAX_STEPS=4, BATCH_SIZE=8, MICRO_BATCH_SIZE=4,
                        SAVE_STEPS=2, LR=1e-3, TENSORBOARD_DIR=tmp_path / "tb")  # fmt: skip
    assert stage1.returncode == 0, stage1.stderr[-3000:]
    assert stage1.stdout.count("reward model (stage 1) step:") == 4
    record = json.loads((out / "stage1" / "ensemble.json").read_text())
    assert record["stage"] == 1 and record["steps"] == 4 and record["stage1"]["bf16"] is True
    assert not (out / "checkpoints" / "stage1").exists() and list((tmp_path / "tb").glob("events.out.tfevents*"))

    stage2 = run_recipe(GEMMA / "run_gemma2b_stage2.sh", cwd=tmp_path, **common, NUM_HEADS=3, MAX_STEPS=10, LR=1e-2)
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    ensemble = json.loads((out / "ensemble" / "ensemble.json").read_text())
    assert ensemble["num_heads"] == 3 and ensemble["stage1"] == record["stage1"] and ensemble["steps"] == 10

    evaluation = run_recipe(GEMMA / "eval_rewardbench.sh", cwd=tmp_path, **common, BATCH_SIZE=16)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    table = json.loads((out / "eval_rewardbench" / "rewardbench.json").read_text())
    assert table["num_pairs"] == 40 and {"ensemble mean", "single model", "head_0", "head_2"} <= set(table["models"])
    assert (out / "eval_rewardbench" / "variance_histograms.png").is_file()

    assert check_reward_model(str(out / "ensemble"), head=2) == 3  # the PPO recipes' check of REWARD_MODEL_PATH
    with pytest.raises(RecipeError, match="HEAD=3, but REWARD_MODEL_PATH=.* has heads 0..2"):
        check_reward_model(str(out / "ensemble"), head=3)


def test_bad_input_is_refused_before_any_process_starts(tmp_path, rm_data, tiny_recipe_models):
    """Through the scripts: one line on stderr, exit code 2, before torchrun starts."""

    def stage1(**variables):
        variables = {"DEVICE": "cpu", "GPUS_PER_NODE": 1, "OUTPUT_DIR": tmp_path / "out", **variables}
        return run_recipe(GEMMA / "run_gemma2b_stage1_fsdp.sh", cwd=tmp_path, timeout=120, **variables)

    for done, message in [
        (stage1(DATA_DIR=tmp_path / "nodata", MODEL_PATH=tiny_recipe_models["judge"]),
         "does not exist: prepare the paper's data with `python3 recipes/gemma_ensemble_rm/prepare_data.py"),
        (run_recipe(GEMMA / "run_gemma2b_stage2.sh", cwd=tmp_path, DEVICE="cpu", DATA_DIR=rm_data, NUM_HEADS=1),
         "an ensemble needs K >= 2 heads"),
    ]:  # fmt: skip
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and "torchrun" not in done.stderr.split("--check")[-1]


def test_a_missing_backbone_or_stage_1_is_refused_by_the_check(tmp_path, rm_data):
    from verl_variance.reward_model.train import TrainRMConfig, check_inputs

    train = str(rm_data / "train.parquet")
    with pytest.raises(FileNotFoundError, match=f"backbone folder {tmp_path / 'nomodel'} does not exist"):
        check_inputs(TrainRMConfig(str(tmp_path / "nomodel"), [train]))
    with pytest.raises(FileNotFoundError, match="stage=2 needs the stage-1 model, and .* has none: run stage 1 first"):
        check_inputs(TrainRMConfig(train_files=[train], output_dir=str(tmp_path / "out"), stage=2))


def test_a_tokenizer_without_pad_token_or_of_another_model_is_refused_before_training(tmp_path, tiny_recipe_models):
    from transformers import AutoConfig, AutoTokenizer

    from verl_variance.reward_model.train import TrainRMConfig, check_inputs

    train = tmp_path / "train.jsonl"
    train.write_text("{}\n")
    no_pad = tmp_path / "no_pad"
    tokenizer = AutoTokenizer.from_pretrained(tiny_recipe_models["judge"])
    tokenizer.pad_token = None
    tokenizer.save_pretrained(no_pad)
    config = AutoConfig.from_pretrained(tiny_recipe_models["judge"])
    config.pad_token_id = None
    config.save_pretrained(no_pad)
    with pytest.raises(ValueError, match="the tokenizer has no pad token, so batches cannot be padded: set"):
        check_inputs(TrainRMConfig(str(no_pad), [str(train)]))
    small = tmp_path / "small_vocab"
    AutoTokenizer.from_pretrained(tiny_recipe_models["judge"]).save_pretrained(small)
    config = AutoConfig.from_pretrained(tiny_recipe_models["judge"])
    config.vocab_size = 100
    config.save_pretrained(small)
    with pytest.raises(ValueError, match="tokens but the model's embedding has 100 rows, so the tokenizer and"):
        check_inputs(TrainRMConfig(str(small), [str(train)]))
