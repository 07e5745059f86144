"""The recipes' checks before Ray and the study's launcher of recipe scripts (no verl run)."""

from __future__ import annotations

import json

import pytest

from verl_variance.experiments import recipes, study
from verl_variance.experiments.recipes import RecipeError


def test_gpu_checks_count_this_nodes_gpus_and_want_a_ray_cluster_for_several_nodes(monkeypatch, tmp_path):
    monkeypatch.setattr(recipes, "visible_gpus", lambda: 4)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    recipes.check_gpus("gpu", 1, 4)
    recipes.check_gpus("cpu", 1, 64)  # CPU ranks are processes
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    with pytest.raises(RecipeError, match=r"GPUS_PER_NODE=8, but this node has 4 visible GPU\(s\) "
                                          r"\(CUDA_VISIBLE_DEVICES=0,1,2,3\): set GPUS_PER_NODE=4$"):  # fmt: skip
        recipes.check_gpus("gpu", 1, 8)
    with pytest.raises(RecipeError, match="NNODES=0, GPUS_PER_NODE=4: both must be at least 1"):
        recipes.check_gpus("gpu", 0, 4)
    monkeypatch.setattr(recipes.Path, "is_file", lambda self: False)  # no local Ray cluster file
    with pytest.raises(RecipeError, match="NNODES=2 needs a Ray cluster: .*`ray start --head`"):
        recipes.check_gpus("gpu", 2, 4)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    recipes.check_gpus("gpu", 2, 4)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"TRAIN_BATCH_SIZE": "abc"}, "TRAIN_BATCH_SIZE='abc' must be an integer >= 1"),
        ({"TRAIN_STEPS": "0"}, "TRAIN_STEPS='0' must be an integer >= 1"),
        ({"PPO_EPOCHS": "1.5"}, "PPO_EPOCHS='1.5' must be an integer >= 1"),
        ({"HEAD": "-1"}, "HEAD='-1' must be an integer >= 0"),
        ({"SAVE_FREQ": "0"}, r"SAVE_FREQ='0' must be an integer >= 1, or -1 \(no checkpoints\)"),
        ({"ACTOR_LR": "1e-5x"}, "ACTOR_LR='1e-5x' must be a number > 0"),
        ({"CRITIC_LR": "nan"}, "CRITIC_LR='nan' must be a number > 0"),
        ({"KL_COEF": "-0.1"}, "KL_COEF='-0.1' must be a number >= 0"),
        ({"RM_GPU_MEM_UTIL": "30"}, r"RM_GPU_MEM_UTIL='30' must be a fraction in \(0, 1\]"),
        ({"TRAIN_BATCH_SIZE": "8", "PPO_MINI_BATCH_SIZE": "16"}, "PPO_MINI_BATCH_SIZE=16 is larger than TRAIN_BATCH"),
    ],
)
def test_numeric_recipe_variables_are_checked_before_ray(variables, message):
    with pytest.raises(RecipeError, match=f"^{message}"):
        recipes.check_numbers(variables)


def test_numbers_convert_and_every_recipe_passes_its_numbers_to_the_check():
    """common.sh hands recipe-check every numeric variable of RECIPE_NUMBERS (the lists must not drift)."""
    import re

    assert recipes.check_numbers({"SAVE_FREQ": "-1", "KL_COEF": "0", "ACTOR_LR": "1.414e-5", "SEED": "3"}) == {
        "SAVE_FREQ": -1, "KL_COEF": 0.0, "ACTOR_LR": 1.414e-5, "SEED": 3
    }  # fmt: skip
    common = (recipes.Path(__file__).resolve().parents[2] / "recipes" / "imdb_gpt2" / "common.sh").read_text()
    loop = re.search(r"for name in (.*?); do", common, flags=re.DOTALL).group(1)
    assert sorted(loop.replace("\\", " ").split()) == sorted(recipes.RECIPE_NUMBERS)


def test_reward_model_heads_come_from_its_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {str(k): f"LABEL_{k}" for k in range(10)}}))
    assert recipes.check_reward_model(str(tmp_path), 9) == 10
    with pytest.raises(RecipeError, match=r"HEAD=10, but REWARD_MODEL_PATH=.* has heads 0\.\.9"):
        recipes.check_reward_model(str(tmp_path), 10)
    (tmp_path / "config.json").write_text(json.dumps({"num_labels": 1}))
    with pytest.raises(RecipeError, match="has 1 reward head"):
        recipes.check_reward_model(str(tmp_path), 0)


def test_device_and_backend_checks():
    recipes.check_device("cpu", "fsdp")
    recipes.check_device("gpu", "megatron")
    with pytest.raises(RecipeError, match="DEVICE=cpu: Megatron runs on NVIDIA GPUs only"):
        recipes.check_device("cpu", "megatron")
    with pytest.raises(RecipeError, match="DEVICE='cuda' is unknown"):
        recipes.check_device("cuda")
    with pytest.raises(RecipeError, match="backend 'deepspeed' is unknown"):
        recipes.check_device("gpu", "deepspeed")


def test_the_launcher_runs_each_methods_recipe_with_the_runs_variables(tmp_path, monkeypatch):
    with pytest.raises(study.StudyError, match="has no run_gpt2_vanilla_fsdp.sh"):
        recipes.recipe_launcher(tmp_path, [])
    for script in recipes.RECIPE_SCRIPTS.values():
        (tmp_path / script).write_text("#!/usr/bin/env bash\n")
    monkeypatch.setenv("MODEL_PATH", "/models/gpt2")
    launch = recipes.recipe_launcher(tmp_path, ["trainer.use_v1=False"])
    spec = study.PolicySpec("variance_aware", 3, 1)
    command, env = launch(spec, 0.0375, tmp_path / "run")
    assert command == ["bash", str(tmp_path / "run_gpt2_variance_aware_fsdp.sh"), "trainer.use_v1=False"]
    assert {key: env[key] for key in ("HEAD", "SEED", "KL_COEF", "OUTPUT_DIR", "MODEL_PATH")} == {
        "HEAD": "3", "SEED": "1", "KL_COEF": "0.0375", "OUTPUT_DIR": str(tmp_path / "run"), "MODEL_PATH": "/models/gpt2"
    }  # fmt: skip
    assert env["VERL_FILE_LOGGER_PATH"] == str(tmp_path / "run" / "metrics.jsonl")


def test_evaluating_a_study_without_both_methods_is_a_clear_error(tmp_path):
    with pytest.raises(study.StudyError, match="holds no finished run: run recipes/imdb_gpt2/run_study.sh first"):
        recipes.evaluate_recipe_study(tmp_path, judge=None, kl_tolerance=1.25)
    study.write_json(study.PolicySpec("vanilla", 0, 0).run_dir(tmp_path) / study.RESULT_FILE,
                     {"method": "vanilla", "head": 0, "seed": 0})  # fmt: skip
    with pytest.raises(study.StudyError, match=r"has no finished \['variance_aware'\] run"):
        recipes.evaluate_recipe_study(tmp_path, judge=None, kl_tolerance=1.25)


def test_parallel_runs_below_one_is_a_clear_error_before_any_run(tmp_path):
    with pytest.raises(study.StudyError, match=r"--parallel 0 \(PARALLEL_RUNS\): expected at least 1"):
        recipes.run_recipe_study(tmp_path, tmp_path / "study", [0], [0], {"vanilla": 0.2, "variance_aware": 0.05},
                                 2, parallel=0)  # fmt: skip
    assert not (tmp_path / "study").exists()


def test_a_cluster_run_gets_the_recipes_variables_and_one_nodes_resources(monkeypatch):
    from pathlib import Path

    names = recipes.recipe_variables(Path("recipes/imdb_gpt2"))
    assert {"MODEL_PATH", "REWARD_MODEL_PATH", "DATA_DIR", "DEVICE", "GPUS_PER_NODE", "TRAIN_STEPS", "INFER_BACKEND",
            "VLLM_CPU_KVCACHE_SPACE"} <= set(names)  # fmt: skip
    assert "RECIPE_DIR" not in names  # set by the scripts themselves, not read from the environment
    monkeypatch.setenv("GPUS_PER_NODE", "2")
    assert recipes.run_resources("gpu", None, 4.0, 1) == recipes.RunResources(cpus=4.0, gpus=2.0)
    assert recipes.run_resources("cpu", None, 1.0, 1) == recipes.RunResources(cpus=1.0, gpus=0.0)
    assert recipes.run_resources("gpu", 1.0, 1.0, 1).gpus == 1.0
    with pytest.raises(RecipeError, match="NNODES=2: on a Ray cluster the study places each run on one node"):
        recipes.run_resources("gpu", None, 1.0, 2)
