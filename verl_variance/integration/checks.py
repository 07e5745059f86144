"""Early checks of a verl trainer config, run in the driver before Ray starts.

Each check raises ``ConfigError`` naming the config key and the fix, for set-ups that stock verl
would accept and then fail on minutes later inside a Ray worker (or hang on).
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from verl_variance.integration.compat import VerlVarianceError, patch


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


def check_kl_config(config) -> None:
    """``algorithm.kl_penalty=variance_aware`` and ``adv_estimator=grpo_variance_kl``: their settings are valid.

    Any other ``kl_penalty`` passes untouched (verl's estimators, their ``+`` variants, one a user added to
    verl), except a near-miss of ``variance_aware``, which is refused with the right spelling.
    """
    from verl_variance.core.config import KL_MODE, VARIANCE_KL_ESTIMATOR, VarianceKLConfig

    algorithm = config.algorithm
    mode = algorithm.get("kl_penalty", "kl")
    if mode != KL_MODE and difflib.get_close_matches(str(mode).replace("-", "_"), [KL_MODE], n=1, cutoff=0.75):
        raise ConfigError(f"algorithm.kl_penalty={mode!r}: did you mean {KL_MODE}? (verl-variance's KL mode)")
    if algorithm.get("adv_estimator") == VARIANCE_KL_ESTIMATOR and not (
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


def check_hacking_monitor(config) -> None:
    """``hacking_monitor``: its group parses (unknown keys and thresholds out of range refused); when on, the reward
    can give each sample's head scores, and an action that saves a checkpoint has a folder to save it in."""
    from verl_variance.core.config import EnsembleRewardConfig, HackingMonitorConfig
    from verl_variance.integration.ensemble_reward import MANAGER_NAME

    try:
        settings = HackingMonitorConfig.from_trainer_config(config)
        reward = config.get("reward") or {}
        manager = (reward.get("reward_manager") or {}).get("name")
        if not settings.enable:
            return
        if manager == MANAGER_NAME and not EnsembleRewardConfig.from_trainer_config(config).head_scores:
            raise ValueError("hacking_monitor.enable=true reads each sample's head scores, which the ensemble "
                             "manager leaves out with ensemble_reward.head_scores=False: set it to True")  # fmt: skip
        if manager != MANAGER_NAME and not (reward.get("custom_reward_function") or {}).get("path"):
            raise ValueError(
                f"hacking_monitor.enable=true reads each sample's K head scores (reward_head_<k>), which "
                f"reward_manager {manager!r} does not give: set reward.reward_manager.name=ensemble with an "
                "ensemble reward model (or a reward function that returns them), or hacking_monitor.enable=false"
            )
        if settings.action != "warn" and not (config.get("trainer") or {}).get("default_local_dir"):
            raise ValueError(
                f"hacking_monitor.action={settings.action} saves a verl checkpoint, but trainer.default_local_dir is "
                "not set: set it, or hacking_monitor.action=warn"
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
    """``reward.reward_model.enable=True`` (verl serves the reward model) with the ensemble manager: an engine it can
    read K logits from, and ``ensemble_reward.max_length`` within what the server reads."""
    from verl_variance.core.config import EnsembleRewardConfig
    from verl_variance.integration.ensemble_reward import SERVED_ENGINES, served_ensemble

    reward_model = (config.get("reward") or {}).get("reward_model") or {}
    if not reward_model.get("enable", False) or not served_ensemble(config):
        return
    name = (reward_model.get("rollout") or {}).get("name")
    if name not in SERVED_ENGINES:
        raise ConfigError(
            f"reward.reward_manager.name=ensemble reads K logits from /classify, which "
            f"reward.reward_model.rollout.name={name} does not serve: use {' or '.join(SERVED_ENGINES)}"
        )
    _check_served_max_length(config, reward_model, EnsembleRewardConfig.from_trainer_config(config))


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


def opted_in_features(config) -> dict[str, tuple[str, ...]]:
    """The methods a trainer config selects (its key=value) -> the patches of verl's internals each needs."""
    from verl_variance.core.config import KL_MODE, R2VPO_LOSS, RVPO_ESTIMATOR, VARIANCE_KL_ESTIMATOR
    from verl_variance.integration.ensemble_reward import MANAGER_NAME

    algorithm = config.get("algorithm") or {}
    loss_mode = ((config.get("actor_rollout_ref") or {}).get("actor") or {}).get("policy_loss") or {}
    trainers = ("methods_legacy_trainer", "methods_v1_trainer")
    estimators = ("estimators_with_batch_fields", "estimators_with_batch_fields_v1")
    wanted = {
        f"algorithm.kl_penalty={KL_MODE}": (algorithm.get("kl_penalty") == KL_MODE, (
            "variance_aware_kl_in_reward", "v1_advantage_inputs", *trainers, "variance_kl_loss")),
        f"algorithm.adv_estimator={RVPO_ESTIMATOR}": (algorithm.get("adv_estimator") == RVPO_ESTIMATOR, (
            *estimators, "v1_advantage_inputs", *trainers)),
        f"algorithm.adv_estimator={VARIANCE_KL_ESTIMATOR}": (
            algorithm.get("adv_estimator") == VARIANCE_KL_ESTIMATOR, estimators),
        f"actor_rollout_ref.actor.policy_loss.loss_mode={R2VPO_LOSS}": (loss_mode.get("loss_mode") == R2VPO_LOSS, (
            *trainers, "variance_kl_loss")),
        f"reward.reward_manager.name={MANAGER_NAME}": (
            ((config.get("reward") or {}).get("reward_manager") or {}).get("name") == MANAGER_NAME,
            ("ensemble_reward_all_logits", "v1_served_reward_extras", *trainers)),
        "hacking_monitor.enable=true": (bool((config.get("hacking_monitor") or {}).get("enable")), (
            *trainers, "hacking_monitor_legacy_log")),
    }  # fmt: skip
    return {feature: patches for feature, (selected, patches) in wanted.items() if selected}


def check_patches_of_features(config) -> None:
    """Each method the config selects has the patches it needs: a patch disabled on this verl (its version or body
    not the one it was checked on) refuses the method here, before Ray, not minutes into the run."""
    from verl_variance.integration.compat import patch_off

    for feature, patches in opted_in_features(config).items():
        for name in patches:
            if (why := patch_off(name)) is not None:
                raise ConfigError(
                    f"{feature} needs verl-variance's patch {name}, which is off on this install: {why}. "
                    "`verl-variance doctor` lists every patch"
                )


CPU_BACKEND_ROLLOUT = "hf"
"""The rollout engine (and reward-model server) of verl_variance's CPU plugin, registered only where it loads."""


def check_cpu_backend_rollouts(config) -> None:
    """``rollout.name=hf`` (the policy's, or a served reward model's) needs the CPU plugin, which loads only where a
    run selects the CPU platform: elsewhere verl would stop after Ray started ("Unknown rollout mode: hf")."""
    from verl_variance.integration.compat import STATUS

    if CPU_BACKEND_ROLLOUT in STATUS.registered.get("rollouts", []):
        return
    reward_model = (config.get("reward") or {}).get("reward_model") or {}
    rollouts = {"actor_rollout_ref.rollout": (config.get("actor_rollout_ref") or {}).get("rollout") or {}}
    if reward_model.get("enable", False):
        rollouts["reward.reward_model.rollout"] = reward_model.get("rollout") or {}
    for key, rollout in rollouts.items():
        if rollout.get("name") == CPU_BACKEND_ROLLOUT:
            raise ConfigError(
                f"{key}.name={CPU_BACKEND_ROLLOUT} is verl-variance's CPU backend, which this run does not select: "
                f"select the CPU platform (VERL_PLATFORM=cpu, or trainer.device=cpu on the command line), or set "
                f"{key}.name=vllm"
            )


CHECKS: list[Callable[[Any], None]] = [check_kl_config, check_variance_methods, check_hacking_monitor,
                                       check_ensemble_reward,
                                       check_served_reward_model, check_patches_of_features,
                                       check_cpu_backend_rollouts]
"""The checks ``check_trainer_config`` runs, in order, before the model paths: the methods', then those another
plugin adds (``verl_variance.cpu``'s, when it is loaded)."""


def check_trainer_config(config) -> None:
    """All early checks on a full ``ppo_trainer`` config (an OmegaConf DictConfig)."""
    for check in CHECKS:
        check(config)
    check_model_path(config.actor_rollout_ref.model.get("path"), "actor_rollout_ref.model.path")
    critic = config.get("critic")
    if critic is not None and critic.get("enable", None) is not False and config.algorithm.adv_estimator == "gae":
        check_model_path(critic.model.get("path"), "critic.model.path")


# The check's place in verl: its validate_config, in the driver of main_ppo (``patches.install_early_checks``).
MAIN_PPO_DRIVER = "VERL_VARIANCE_MAIN_PPO_DRIVER"
"""A module-level name of a ``__main__`` that runs verl's ``main_ppo`` (``verl-variance ppo``'s launcher)."""


def _running_main_ppo() -> bool:
    """This process is verl's ``main_ppo`` driver (whose Hydra wrapper would print a traceback): ``python -m
    verl.trainer.main_ppo``, or a module run as ``__main__`` that says it runs it (``MAIN_PPO_DRIVER``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(main, MAIN_PPO_DRIVER, False) or (spec is not None and spec.name == "verl.trainer.main_ppo")


def patch_validate_config(module) -> None:
    """verl's ``validate_config`` (the driver, before Ray): ``check_trainer_config`` first."""
    from verl_variance.integration import worker_errors

    @patch(module, "validate_config", wraps_only=True)  # our checks, then verl's: runs on any verl >= 0.9.1
    def _(original):
        @functools.wraps(original)
        def validate_config(config, use_reference_policy, use_critic):
            try:
                check_trainer_config(config)
            except ConfigError as error:
                if _running_main_ppo():  # a user's mistake on the command line: the message alone, exit code 1
                    raise SystemExit(f"verl-variance: {error}") from None
                raise
            if _running_main_ppo():  # before Ray starts: the folder our workers' errors go to
                worker_errors.prepare()
            return original(config, use_reference_policy, use_critic)

        return validate_config
