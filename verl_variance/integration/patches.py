"""The methods plugin's changes to verl internals, in one table (``install``): variance-aware KL, the ensemble
reward, RVPO, R²VPO, the fallbacks the paper's set-ups need on any machine (GPT-2, no flash-attn), the early
config checks and our workers' errors. Each method's wiring lives in its own module (``variance_kl``, ``kl_loss``,
``estimators``, ``ensemble_reward``, ``trainers`` for what spans them, ``fallbacks``, ``checks``,
``worker_errors``); this file says which patch goes where, when it acts (``SCOPES``) and what upstream change
would retire it (``RETIRE``).

Each patch runs when its target module is first imported (``compat.when_imported``) and changes an
attribute only through ``compat.patch`` (a wrapper whose parameters must match the original's, recorded
for ``verl-variance doctor``) or ``compat.register_entry`` (an entry in a private registry); public
registries are filled through verl's own ``register`` functions. Behaviour changes only where stock
verl would fail (a missing flash-attn, a GPT-2 config) or where the user opted in (a config value of ours).
Nothing here knows the CPU backend (``verl_variance.cpu``, the other plugin). Supported verl: see
``compat.SUPPORTED_VERL``; transformers: ``fallbacks.SUPPORTED_TRANSFORMERS``.
"""

from __future__ import annotations

from verl_variance.integration import (
    checks,
    ensemble_reward,
    estimators,
    fallbacks,
    kl_loss,
    trainers,
    variance_kl,
    worker_errors,
)
from verl_variance.integration.compat import METHODS_PLUGIN, plugin_scope, when_imported

SCOPES = {
    "cpu": "only on the CPU platform (trainer.device=cpu / VERL_PLATFORM=cpu)",
    "opt-in": "only when the config selects it",
    "fallback": "only where stock verl would fail",
    "registry": "a name added to a verl registry; nothing changes unless a config names it",
    "own-errors": "only on verl-variance's own errors",
}
"""When a patch acts. A GPU run that selects nothing of verl-variance runs verl's own code: no patch's scope is
"always" (``doctor`` lists them; tests/integration/test_plugin.py checks every patch has one of these)."""


def scope(kind: str, detail: str = "") -> str:
    """A patch's ``SCOPES`` kind, with what selects it."""
    return f"{kind}: {detail}" if detail else kind


RETIRE = {
    "sdpa_fallback": "verl's load_valuehead_model takes the attention implementation from the config",
    "valuehead_sdpa": "verl's load_valuehead_model takes the attention implementation from the config",
    "gpt2_lm_head_class": "verl maps *LMHeadModel architectures to AutoModelForCausalLM",
    "gpt2_kv_heads": "verl's apply_monkey_patch reads num_attention_heads where a config has no num_key_value_heads",
    "early_config_checks": "verl's validate_config calls checks a plugin registers",
    "vllm_models_without_model_attribute": "verl's vLLM launch patches skip models without model.model or "
    "compute_logits",
    "worker_errors_recorded": "verl's V1 trainer raises a rollout worker's exception in the driver",
    "worker_errors_surfaced": "verl's V1 trainer raises a rollout worker's exception in the driver",
    "worker_errors_polled": "verl's V1 trainer raises a rollout worker's exception in the driver",
    "variance_aware_kl_in_reward": "a registry of in-reward KL penalties given the batch",
    "v1_advantage_inputs": "verl's V1 _compute_advantage hands each sample's reward extra info to the estimators",
    "methods_legacy_trainer": "verl's trainers call a plugin's hooks at init, checkpoint and actor update",
    "methods_v1_trainer": "verl's trainers call a plugin's hooks at init, checkpoint and actor update",
    "v1_served_reward_extras": "verl's V1 trainer puts a served reward model's extra keys in each sample's "
    "extra_fields",
    "estimators_and_policy_losses": "none needed: verl's public register_adv_est / register_policy_loss",
    "estimators_with_batch_fields": "verl's compute_advantage hands the batch to a registered estimator",
    "estimators_with_batch_fields_v1": "verl's compute_advantage hands the batch to a registered estimator",
    "variance_kl_loss": "verl's ppo_loss weights its KL term by a per-sample batch field",
    "variance_kl_loss_distillation": "verl's ppo_loss weights its KL term by a per-sample batch field",
    "ensemble_reward_manager": "none needed: verl's reward-manager registry",
    "hacking_monitor_legacy_log": "verl's trainers call a plugin's hook on each step's metrics before logging them",
    "ensemble_reward_all_logits": "verl's reward loop returns every /classify logit of a served reward model",
}
"""Patch -> the upstream change that would retire it (``docs/patches.md``; a test keeps one for every patch)."""


def install() -> None:
    """Register every patch of the methods plugin; each runs when its target module is imported."""
    registry, own_errors = scope("registry"), scope("own-errors")
    flash_attn = scope("fallback", "flash-attn absent; verl loads value models with flash_attention_2")
    v1_fields = scope("opt-in", "kl_penalty=variance_aware, adv_estimator=rvpo, reward_manager.name=ensemble; "
                      "fallback: verl's gdpo on the V1 trainer")  # fmt: skip
    methods = scope("opt-in", "kl_penalty=variance_aware, adv_estimator=rvpo, policy_loss.loss_mode=r2vpo, "
                    "reward_manager.name=ensemble, hacking_monitor.enable")  # fmt: skip
    batch_estimators = scope("opt-in", "adv_estimator=rvpo or grpo_variance_kl")
    when_imported("transformers.modeling_utils", "sdpa_fallback", fallbacks.patch_transformers_attn, flash_attn)
    when_imported("verl.utils.model", "valuehead_sdpa", fallbacks.patch_valuehead_loading, flash_attn)
    when_imported("verl.utils.model", "gpt2_lm_head_class", fallbacks.register_lm_head_architectures,
                  scope("fallback", "GPT-2, which verl would load without its LM head"))
    when_imported("verl.models.transformers.monkey_patch", "gpt2_kv_heads", fallbacks.patch_gpt2_monkey_patch,
                  scope("fallback", "a config without num_key_value_heads, GPT-2's"))
    install_early_checks()
    vllm_launch = scope("fallback", "a vLLM model verl's launch patches would raise on: GPT-2, classifiers")
    when_imported("verl.workers.rollout.vllm_rollout.utils", "vllm_models_without_model_attribute",
                  fallbacks.patch_vllm_model_patches, vllm_launch, "vllm")  # fmt: skip
    when_imported("verl.trainer.ppo.v1.agent_loop_tq", "worker_errors_recorded", worker_errors.patch_agent_loop_errors,
                  own_errors)  # fmt: skip
    when_imported("verl.trainer.ppo.v1.trainer_base", "worker_errors_surfaced", worker_errors.patch_fit_errors,
                  own_errors)  # fmt: skip
    when_imported("verl.trainer.ppo.v1.replay_buffer", "worker_errors_polled",
                  worker_errors.patch_replay_buffer_errors, own_errors)  # fmt: skip
    when_imported("verl.trainer.ppo.ray_trainer", "variance_aware_kl_in_reward", variance_kl.patch_apply_kl_penalty,
                  scope("opt-in", "kl_penalty=variance_aware"))  # fmt: skip
    when_imported("verl.trainer.ppo.ray_trainer", "methods_legacy_trainer", trainers.patch_legacy_trainer, methods)
    when_imported("verl.trainer.ppo.v1.trainer_base", "v1_advantage_inputs", trainers.patch_v1_advantage_inputs,
                  scope("opt-in", "kl_penalty=variance_aware, adv_estimator=rvpo or gdpo"))  # fmt: skip
    when_imported("verl.trainer.ppo.v1.trainer_base", "methods_v1_trainer", trainers.patch_v1_trainer, methods)
    when_imported("verl.trainer.ppo.v1.trainer_base", "v1_served_reward_extras", trainers.patch_v1_served_reward_extras,
                  v1_fields)  # fmt: skip
    when_imported("verl.trainer.ppo.core_algos", "estimators_and_policy_losses",
                  estimators.register_estimators_and_losses, registry)  # fmt: skip
    when_imported("verl.trainer.ppo.ray_trainer", "estimators_with_batch_fields", estimators.patch_compute_advantage,
                  batch_estimators)  # fmt: skip
    when_imported("verl.trainer.ppo.v1.utils", "estimators_with_batch_fields_v1", estimators.patch_compute_advantage,
                  f"{batch_estimators}; fallback: verl's gdpo on the V1 trainer")  # fmt: skip
    when_imported("verl.workers.engine_workers", "variance_kl_loss", kl_loss.patch_ppo_loss,
                  scope("opt-in", "a kl_weight or r2vpo_lambda batch field: kl_penalty=variance_aware with "
                        "use_kl_loss, or loss_mode=r2vpo"))  # fmt: skip
    when_imported("verl.experimental.reward_loop.reward_manager.registry", "ensemble_reward_manager",
                  ensemble_reward.register_manager, registry)  # fmt: skip
    when_imported("verl.experimental.reward_loop.reward_loop", "ensemble_reward_all_logits",
                  ensemble_reward.patch_disrm_all_logits, scope("opt-in", "reward_manager.name=ensemble"))  # fmt: skip
    when_imported("verl.utils.tracking", "hacking_monitor_legacy_log", trainers.patch_legacy_metrics_log,
                  scope("opt-in", "hacking_monitor.enable, on the legacy trainer"))  # fmt: skip
    when_imported("verl.trainer.distillation.losses", "variance_kl_loss_distillation", kl_loss.patch_ppo_loss,
                  scope("opt-in", "a kl_weight or r2vpo_lambda batch field"))  # fmt: skip


def install_early_checks() -> None:
    """The driver's config checks before Ray starts (``checks.CHECKS``; both plugins install it, once: a patch of
    the methods plugin)."""
    with plugin_scope(METHODS_PLUGIN):
        when_imported("verl.utils.config", "early_config_checks", checks.patch_validate_config,
                      scope("fallback", "refuses, before Ray, set-ups verl would fail on later"))
