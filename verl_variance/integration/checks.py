"""Early checks of a verl trainer config, run in the driver before Ray starts.

Each check raises ``ConfigError`` naming the config key and the fix, for set-ups that stock verl
would accept and then fail on minutes later inside a Ray worker (or hang on).
"""

from __future__ import annotations

import os

from verl_variance.integration.compat import VerlVarianceError

GPU_ONLY_ROLLOUTS = ("vllm", "sglang", "trtllm")


class ConfigError(VerlVarianceError, ValueError):
    """A verl config value that cannot work; the message names the key and the fix."""


def _looks_local(path: str) -> bool:
    """Absolute, relative or home paths, and anything with two or more slashes, are local folders."""
    return path.startswith(("/", "./", "../", "~")) or path.count("/") >= 2


def check_model_path(path: str | None, key: str) -> None:
    """A local model folder must exist (hub ids like ``Qwen/Qwen2.5-0.5B`` are left to verl)."""
    if not path:
        raise ConfigError(f"{key} is not set: point it at a Hugging Face model folder or hub id")
    expanded = os.path.expanduser(path)
    if _looks_local(path) and not os.path.exists(expanded):
        raise ConfigError(
            f"{key}={path!r} does not exist. Point it at a Hugging Face model folder, or build a tiny local "
            f"one with `verl-variance tiny-model {path}`."
        )


def check_cpu_rollout(device: str, rollout_name: str) -> None:
    if device == "cpu" and rollout_name in GPU_ONLY_ROLLOUTS:
        raise ConfigError(
            f"actor_rollout_ref.rollout.name={rollout_name} needs a GPU, but trainer.device=cpu. "
            "On a CPU-only machine set actor_rollout_ref.rollout.name=hf (the verl-variance CPU preset does: "
            "`verl-variance ppo ...`)."
        )


def check_trainer_config(config) -> None:
    """All early checks on a full ``ppo_trainer`` config (an OmegaConf DictConfig)."""
    device = config.trainer.get("device", "cuda")
    check_cpu_rollout(device, config.actor_rollout_ref.rollout.name)
    check_model_path(config.actor_rollout_ref.model.get("path"), "actor_rollout_ref.model.path")
    critic = config.get("critic")
    if critic is not None and critic.get("enable", None) is not False and config.algorithm.adv_estimator == "gae":
        check_model_path(critic.model.get("path"), "critic.model.path")
