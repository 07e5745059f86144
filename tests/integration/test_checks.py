"""Bad input fails early (in the driver, before Ray starts) with a message naming the fix."""

import subprocess
import sys

import pytest

from verl_variance.integration.checks import ConfigError, check_cpu_rollout, check_model_path


def test_gpu_rollout_on_cpu_is_rejected():
    with pytest.raises(ConfigError, match=r"rollout.name=vllm needs a GPU.*set actor_rollout_ref.rollout.name=hf"):
        check_cpu_rollout("cpu", "vllm")
    check_cpu_rollout("cpu", "hf")
    check_cpu_rollout("cuda", "vllm")


def test_missing_local_model_path_is_rejected(tmp_path):
    with pytest.raises(
        ConfigError, match=r"actor_rollout_ref.model.path='.*nope' does not exist.*verl-variance tiny-model"
    ):
        check_model_path(str(tmp_path / "nope"), "actor_rollout_ref.model.path")
    with pytest.raises(ConfigError, match="is not set"):
        check_model_path(None, "critic.model.path")
    check_model_path(str(tmp_path), "actor_rollout_ref.model.path")
    check_model_path("Qwen/Qwen2.5-0.5B-Instruct", "actor_rollout_ref.model.path")  # a hub id is verl's business


def _main_ppo(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "verl_variance.cli", "ppo", "--device", "cpu", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["actor_rollout_ref.rollout.name=vllm"], "actor_rollout_ref.rollout.name=vllm needs a GPU"),
        ([], "actor_rollout_ref.model.path='/nonexistent/model' does not exist"),
    ],
)
def test_main_ppo_fails_before_ray_starts(tiny_models, overrides, message):
    model = "/nonexistent/model" if not overrides else str(tiny_models["qwen2"])
    result = _main_ppo(f"actor_rollout_ref.model.path={model}", f"critic.model.path={tiny_models['qwen2']}", *overrides)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output
    assert "ray init kwargs" not in output  # failed in the driver's config validation, not in a worker
