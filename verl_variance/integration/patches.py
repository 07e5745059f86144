"""The methods plugin's changes to verl internals: variance-aware KL, the ensemble reward, RVPO, R²VPO, and the
fallbacks the paper's set-ups need on any machine (GPT-2, no flash-attn), in one place.

Each patch runs when its target module is first imported (``compat.when_imported``) and changes an
attribute only through ``compat.patch`` (a wrapper whose parameters must match the original's, recorded
for ``verl-variance doctor``) or ``compat.register_entry`` (an entry in a private registry); public
registries are filled through verl's own ``register`` functions. Behaviour changes only where stock
verl would fail (a missing flash-attn, a GPT-2 config) or where the user opted in (a config value of ours).
Nothing here knows the CPU backend (``verl_variance.cpu``, the other plugin). Supported verl: see
``compat.SUPPORTED_VERL``; transformers: ``SUPPORTED_TRANSFORMERS``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import sys
import threading
from collections.abc import Callable

from packaging.specifiers import SpecifierSet

from verl_variance.integration.compat import (
    METHODS_PLUGIN,
    check_signature,
    patch,
    plugin_scope,
    register_entry,
    when_imported,
)

# ---------------------------------------------------------------------------------------------
# 1. Value models are loaded with attn_implementation="flash_attention_2" unconditionally.
#    Without flash-attn installed, fall back to sdpa for that call only.
# ---------------------------------------------------------------------------------------------
_attn_fallback = threading.local()


def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@contextlib.contextmanager
def _sdpa_instead_of_flash_attention():
    _attn_fallback.active = True
    try:
        yield
    finally:
        _attn_fallback.active = False


SUPPORTED_TRANSFORMERS = SpecifierSet(">=4.54,<6")
"""transformers versions with the private ``PreTrainedModel._check_and_adjust_attn_implementation``."""


def _patch_transformers_attn(module) -> None:
    @patch(module.PreTrainedModel, "_check_and_adjust_attn_implementation",
           versions=("transformers", SUPPORTED_TRANSFORMERS))  # fmt: skip
    def _(original):
        @functools.wraps(original)
        def _check_and_adjust_attn_implementation(self, attn_implementation, *args, **kwargs):
            if getattr(_attn_fallback, "active", False) and attn_implementation == "flash_attention_2":
                attn_implementation = "sdpa"
            return original(self, attn_implementation, *args, **kwargs)

        return _check_and_adjust_attn_implementation


def _register_lm_head_architectures(module) -> None:
    """GPT-2's architecture is ``GPT2LMHeadModel``; verl maps only ``*ForCausalLM`` names to
    AutoModelForCausalLM and would load the bare ``GPT2Model`` (no logits)."""
    register_entry(module, "_architecture_to_auto_class", "LMHeadModel", module.AutoModelForCausalLM)


def _patch_valuehead_loading(module) -> None:
    @patch(module, "load_valuehead_model")
    def _(original):
        @functools.wraps(original)
        def load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code):
            if _flash_attn_installed():
                return original(local_path, torch_dtype, model_config, trust_remote_code)
            with _sdpa_instead_of_flash_attention():
                return original(local_path, torch_dtype, model_config, trust_remote_code)

        return load_valuehead_model


# ---------------------------------------------------------------------------------------------
# 2. GPT-2: verl's monkey patch reads config.num_key_value_heads, which GPT2Config lacks.
#    GPT-2 is multi-head attention, so the number of key/value heads is the number of heads.
# ---------------------------------------------------------------------------------------------
def _patch_gpt2_monkey_patch(module) -> None:
    @patch(module, "apply_monkey_patch")
    def _(original):
        @functools.wraps(original)
        def apply_monkey_patch(model, *args, **kwargs):
            config = model.config
            if not hasattr(config, "num_key_value_heads") and not hasattr(config, "text_config"):
                config.num_key_value_heads = config.num_attention_heads
            return original(model, *args, **kwargs)

        return apply_monkey_patch


# ---------------------------------------------------------------------------------------------
# 3. Driver-side config checks, before Ray starts (each plugin adds its own: ``checks.CHECKS``).
# ---------------------------------------------------------------------------------------------
MAIN_PPO_DRIVER = "VERL_VARIANCE_MAIN_PPO_DRIVER"
"""A module-level name of a ``__main__`` that runs verl's ``main_ppo`` (``verl-variance ppo``'s launcher)."""


def _running_main_ppo() -> bool:
    """This process is verl's ``main_ppo`` driver (whose Hydra wrapper would print a traceback): ``python -m
    verl.trainer.main_ppo``, or a module run as ``__main__`` that says it runs it (``MAIN_PPO_DRIVER``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(main, MAIN_PPO_DRIVER, False) or (spec is not None and spec.name == "verl.trainer.main_ppo")


def _patch_validate_config(module) -> None:
    from verl_variance.integration import worker_errors
    from verl_variance.integration.checks import ConfigError, check_trainer_config

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


# ---------------------------------------------------------------------------------------------
# verl's vLLM worker extension patches every model it launches (monkey_patch_model): its compute_logits (to mask
# tokens the sampler must never pick) and its MoE weight loader, found as model.model or model.language_model.
# vLLM's GPT-2 keeps its layers in model.transformer and its GPT-2 (BERT, RoBERTa, ...) classifiers have no
# compute_logits, so verl's vLLM server fails at launch on the paper's GPT-2 policy and on such a reward model
# ("... does not have a valid 'model' or 'language_model' attribute", "... has no attribute 'compute_logits'").
# Where verl would raise, nothing applies: a classifier samples nothing, and verl's MoE loaders have model.model.
# ---------------------------------------------------------------------------------------------
def _patch_vllm_model_patches(module) -> None:
    @patch(module, "monkey_patch_compute_logits")
    def _(original):
        @functools.wraps(original)
        def monkey_patch_compute_logits(model, vocab_size: int, banned_token_ids=None):
            if not hasattr(model, "compute_logits"):  # a pooling model (the served reward model): no sampling
                return None
            return original(model, vocab_size, banned_token_ids)

        return monkey_patch_compute_logits

    @patch(module, "patch_vllm_moe_model_weight_loader")
    def _(original):
        @functools.wraps(original)
        def patch_vllm_moe_model_weight_loader(model):
            if not any(hasattr(model, name) for name in ("model", "language_model", "runnable")):
                return None  # not one of verl's MoE models (GPT-2: model.transformer)
            return original(model)

        return patch_vllm_moe_model_weight_loader


def _patch_agent_loop_errors(module) -> None:
    """V1's agent loop: each failed session's error, when it is ours, is written for the trainer to raise."""
    from verl_variance.integration import worker_errors

    @patch(module, "_settle_session_tasks")
    def _(original):
        @functools.wraps(original)
        async def _settle_session_tasks(tasks):
            errors = await original(tasks)
            worker_errors.record(errors)
            return errors

        return _settle_session_tasks


def _patch_replay_buffer_errors(module) -> None:
    """V1's replay buffer: at each poll for samples, stop at the first of our errors a worker recorded."""
    from verl_variance.integration import worker_errors

    @patch(module.ReplayBuffer, "_wait_for_next_poll")
    def _(original):
        @functools.wraps(original)
        def _wait_for_next_poll(self, partition_id, last_debug_time):
            worker_errors.surface()
            return original(self, partition_id, last_debug_time)

        return _wait_for_next_poll


def _patch_fit_errors(module) -> None:
    """V1's trainer: a run that stops after one of our errors in a worker stops with that error."""
    from verl_variance.integration import worker_errors

    @patch(module.PPOTrainer, "fit")
    def _(original):
        @functools.wraps(original)
        def fit(self, agent_loop_manager):
            try:
                return original(self, agent_loop_manager)
            except Exception as symptom:
                worker_errors.surface(symptom)
                raise

        return fit


# ---------------------------------------------------------------------------------------------
# 4. algorithm.kl_penalty=variance_aware: the in-reward KL of both trainers, in the driver.
# ---------------------------------------------------------------------------------------------
def _patch_apply_kl_penalty(module) -> None:
    from verl_variance.core.config import KL_MODE
    from verl_variance.integration import variance_kl

    @patch(module, "apply_kl_penalty")
    def _(original):
        @functools.wraps(original)
        def apply_kl_penalty(data, kl_ctrl, kl_penalty="kl"):
            if kl_penalty != KL_MODE:
                return original(data, kl_ctrl, kl_penalty)
            return variance_kl.variance_aware_apply_kl_penalty(data, kl_ctrl, variance_kl.active_config())

        return apply_kl_penalty


def _patch_legacy_trainer(module) -> None:
    """The legacy trainer's wiring of every method: its ``__init__`` reads their config groups, its checkpoints
    carry R²VPO's λ, its ``_update_actor`` sends KL weights and λ with the actor's batch."""
    _remember_config_on_init(module.RayPPOTrainer)
    _patch_legacy_update_actor(module.RayPPOTrainer)


def _remember_config_on_init(trainer_cls) -> None:
    from verl_variance.integration import r2vpo, rvpo, variance_kl

    @patch(trainer_cls, "__init__")
    def _(original):
        @functools.wraps(original)
        def __init__(self, *args, **kwargs):  # noqa: N807 - replaces the trainer's __init__
            original(self, *args, **kwargs)
            variance_kl.activate(self.config)
            rvpo.activate(self.config)
            r2vpo.activate(self)

        return __init__

    _patch_checkpoint_state(trainer_cls)


def _patch_v1_advantage_inputs(module) -> None:
    from verl_variance.integration import rvpo, variance_kl
    from verl_variance.integration.batches import V1Batch
    from verl_variance.integration.extra_info import reward_extra_infos

    @patch(module.PPOTrainer, "_compute_advantage")
    def _(original):
        @functools.wraps(original)
        def _compute_advantage(self, batch, metrics):
            algorithm = self.config.algorithm
            wants_variance = algorithm.use_kl_in_reward and variance_kl.uses_variance_kl(self.config)
            multi_objective = algorithm.adv_estimator in rvpo.MULTI_OBJECTIVE_ESTIMATORS
            if not (wants_variance or multi_objective):
                return original(self, batch, metrics)
            extra_fields = V1Batch(module.tq, batch).extra_fields()
            with contextlib.ExitStack() as scope:
                if wants_variance:
                    key = variance_kl.active_config().variance_key
                    variance = variance_kl.reward_variance_from_extra_infos(extra_fields, key)
                    scope.callback(variance_kl.reset_batch_variance, variance_kl.set_batch_variance(variance))
                if multi_objective:
                    scope.enter_context(rvpo.batch_reward_extra_info(reward_extra_infos(extra_fields), metrics))
                return original(self, batch, metrics)

        return _compute_advantage


def _patch_v1_trainer_wiring(module) -> None:
    """The V1 trainer's wiring of every method, as the legacy trainer's (``_patch_legacy_trainer``)."""
    _remember_config_on_init(module.PPOTrainer)
    _patch_v1_update_actor(module, module.PPOTrainer)


def _patch_v1_served_reward_extras(module) -> None:
    from verl_variance.integration.batches import V1Batch
    from verl_variance.integration.extra_info import reads_reward_extras, with_reward_extras

    @patch(module.PPOTrainer, "_compute_reward_colocate")
    def _(original):
        @functools.wraps(original)
        def _compute_reward_colocate(self, batch, metrics=None):
            """A served reward model on the trainer's resources: verl writes each reward-extra key as a top-level
            TransferQueue field; where a feature of ours reads them, each sample's ``extra_fields`` gets them too,
            in the ``reward_extra_info`` dict verl's agent-loop scoring fills (and V1's validation reads)."""
            if not reads_reward_extras(self.config):
                return original(self, batch, metrics)
            manager, outputs = self.reward_loop_manager, []

            def compute_rm_score(data):  # verl's, recording what it returns
                outputs.append(type(manager).compute_rm_score(manager, data))
                return outputs[-1]

            manager.compute_rm_score = compute_rm_score
            try:
                batch = original(self, batch, metrics)
            finally:
                del manager.compute_rm_score
            output = outputs[-1]
            columns = {key: output.non_tensor_batch[key] for key in output.meta_info.get("reward_extra_keys", [])}
            if columns:
                extra = with_reward_extras(V1Batch(module.tq, batch).extra_fields(), columns)
                fields = module.tu.get_tensordict({"extra_fields": extra})
                module.tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)
            return batch

        return _compute_reward_colocate


# ---------------------------------------------------------------------------------------------
# 5. actor.use_kl_loss with kl_penalty=variance_aware: the driver sends per-sample KL weights with
#    the actor's batch (both trainers), the workers' ppo_loss weights its KL term by them.
# ---------------------------------------------------------------------------------------------
def methods_before_actor_update(trainer, batch, metrics: dict) -> Callable[[dict], None] | None:
    """The methods' half of an actor update, on either trainer (``batch``: a ``batches.LegacyBatch`` or ``V1Batch``):
    served heads that are probabilities refused before the first update; per-sample KL weights
    (``kl_penalty=variance_aware`` with ``use_kl_loss``) and R²VPO's λ put on the batch, their telemetry added to
    ``metrics``. Returns what to run on the update's metrics afterwards (R²VPO's dual step), or None."""
    from verl_variance.integration import kl_loss, r2vpo, variance_kl
    from verl_variance.integration.ensemble_reward import check_served_heads, served_ensemble

    if served_ensemble(trainer.config):
        check_served_heads(batch.reward_columns())
    lam = r2vpo.controller(trainer)
    fields = {}
    if kl_loss.uses_variance_kl_loss(trainer.config):
        settings = variance_kl.active_config()
        variance = batch.reward_variance(settings.variance_key)
        names = ("old_log_probs", "ref_log_prob", "response_mask")
        fields[kl_loss.KL_WEIGHT_FIELD], telemetry = kl_loss.attach_kl_weights(
            variance, *batch.tensors(names).values(), settings, trainer.config.actor_rollout_ref.actor.kl_loss_type
        )
        metrics.update(telemetry)
    if lam:
        fields[r2vpo.LAMBDA_FIELD] = lam.lambda_field(len(batch))
    if fields:
        batch.put(fields)
    return (lambda update_metrics: update_metrics.update(lam.after_update(update_metrics))) if lam else None


def _uses_actor_hook(trainer) -> bool:
    from verl_variance.integration import kl_loss, r2vpo
    from verl_variance.integration.ensemble_reward import served_ensemble

    config = trainer.config
    return bool(kl_loss.uses_variance_kl_loss(config) or r2vpo.controller(trainer) or served_ensemble(config))


def _patch_legacy_update_actor(trainer_cls) -> None:
    from verl_variance.integration import rvpo
    from verl_variance.integration.batches import LegacyBatch

    @patch(trainer_cls, "_update_actor")
    def _(original):
        @functools.wraps(original)
        def _update_actor(self, batch):
            telemetry = batch.meta_info.pop(rvpo.LEGACY_METRICS_FIELD, {})  # rvpo/*, from compute_advantage
            if not (_uses_actor_hook(self) or telemetry):
                return original(self, batch)
            after = methods_before_actor_update(self, LegacyBatch(batch), telemetry)
            output = original(self, batch)
            metrics = output.meta_info["metrics"]
            metrics.update(telemetry)
            if after:
                after(metrics)
            return output

        return _update_actor


def _patch_v1_update_actor(module, trainer_cls) -> None:
    from verl_variance.integration.batches import V1Batch

    @patch(trainer_cls, "_update_actor")
    def _(original):
        @functools.wraps(original)
        def _update_actor(self, batch, metrics):
            if not _uses_actor_hook(self):
                return original(self, batch, metrics)
            view = V1Batch(module.tq, batch)
            after = methods_before_actor_update(self, view, metrics)
            batch = original(self, view.meta, metrics)
            if after:
                after(metrics)
            return batch

        return _update_actor


def _patch_checkpoint_state(trainer_cls) -> None:
    """R²VPO's adaptive λ is saved in each verl checkpoint folder and read back on resume."""
    from verl_variance.integration import r2vpo

    @patch(trainer_cls, "_save_checkpoint")
    def _(save):
        @functools.wraps(save)
        def _save_checkpoint(self):
            result = save(self)
            if (state := r2vpo.controller(self)) is not None:
                state.save(r2vpo.step_folder(self.config, self.global_steps, resuming=False))
            return result

        return _save_checkpoint

    @patch(trainer_cls, "_load_checkpoint")
    def _(load):
        @functools.wraps(load)
        def _load_checkpoint(self):
            result = load(self)
            if (state := r2vpo.controller(self)) is not None and self.global_steps > 0:
                state.load(r2vpo.step_folder(self.config, self.global_steps, resuming=True))
            return result

        return _load_checkpoint


def _patch_ppo_loss(module) -> None:
    from verl_variance.integration import kl_loss, r2vpo

    patch(module, "ppo_loss")(lambda original: kl_loss.wrap_ppo_loss(r2vpo.wrap_ppo_loss(original)))


# ---------------------------------------------------------------------------------------------
# 6. The ensemble reward: the ``ensemble`` reward manager, and all K logits from the vLLM server.
# ---------------------------------------------------------------------------------------------
def _register_ensemble_manager(module) -> None:
    from verl_variance.integration.ensemble_reward import register_manager

    register_manager(module)


def _patch_disrm_all_logits(module) -> None:
    from verl_variance.core.config import EnsembleRewardConfig
    from verl_variance.integration.ensemble_reward import MANAGER_NAME, ensemble_disrm_score

    @patch(module.RewardLoopWorker, "compute_score_disrm")
    def _(original):
        @functools.wraps(original)
        async def compute_score_disrm(self, data):
            if self.config.reward.reward_manager.get("name") != MANAGER_NAME:
                return await original(self, data)
            return await ensemble_disrm_score(self, data, EnsembleRewardConfig.from_trainer_config(self.config))

        return compute_score_disrm


def _register_advantage_estimators_and_losses(module) -> None:
    from verl_variance.core.config import R2VPO_LOSS, RVPO_ESTIMATOR
    from verl_variance.integration.r2vpo import r2vpo_policy_loss
    from verl_variance.integration.rvpo import rvpo_outcome_advantage
    from verl_variance.integration.variance_kl import ADV_ESTIMATOR, grpo_variance_kl_advantage

    check_signature(
        module.compute_policy_loss_vanilla, list(inspect.signature(r2vpo_policy_loss).parameters),
        "verl.trainer.ppo.core_algos.compute_policy_loss_vanilla (the policy-loss interface)",
    )  # fmt: skip
    for name, fn in ((ADV_ESTIMATOR, grpo_variance_kl_advantage), (RVPO_ESTIMATOR, rvpo_outcome_advantage)):
        if module.ADV_ESTIMATOR_REGISTRY.get(name) is not fn:  # idempotent
            module.register_adv_est(name)(fn)
    module.register_policy_loss(R2VPO_LOSS)(r2vpo_policy_loss)


# ---------------------------------------------------------------------------------------------
# 7. RVPO (adv_estimator=rvpo) in both trainers' compute_advantage, and verl's GDPO fed on V1.
# ---------------------------------------------------------------------------------------------
def _patch_compute_advantage(module) -> None:
    from verl_variance.integration.rvpo import wrap_compute_advantage

    patch(module, "compute_advantage", requires=["config", "norm_adv_by_std_in_grpo"])(wrap_compute_advantage)


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
    "variance_aware_kl_v1": "verl's V1 _compute_advantage hands each sample's reward extra info to the estimators",
    "methods_legacy_trainer": "verl's trainers call a plugin's hooks at init, checkpoint and actor update",
    "methods_v1_trainer": "verl's trainers call a plugin's hooks at init, checkpoint and actor update",
    "v1_served_reward_extras": "verl's V1 trainer puts a served reward model's extra keys in each sample's "
    "extra_fields",
    "estimators_and_policy_losses": "none needed: verl's public register_adv_est / register_policy_loss",
    "rvpo_gdpo_advantage": "verl's compute_advantage hands the reward extra info to a registered estimator",
    "rvpo_gdpo_advantage_v1": "verl's compute_advantage hands the reward extra info to a registered estimator",
    "variance_kl_loss": "verl's ppo_loss weights its KL term by a per-sample batch field",
    "variance_kl_loss_distillation": "verl's ppo_loss weights its KL term by a per-sample batch field",
    "ensemble_reward_manager": "none needed: verl's reward-manager registry",
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
                    "reward_manager.name=ensemble")  # fmt: skip
    rvpo = scope("opt-in", "adv_estimator=rvpo")
    when_imported("transformers.modeling_utils", "sdpa_fallback", _patch_transformers_attn, flash_attn)
    when_imported("verl.utils.model", "valuehead_sdpa", _patch_valuehead_loading, flash_attn)
    when_imported("verl.utils.model", "gpt2_lm_head_class", _register_lm_head_architectures,
                  scope("fallback", "GPT-2, which verl would load without its LM head"))
    when_imported("verl.models.transformers.monkey_patch", "gpt2_kv_heads", _patch_gpt2_monkey_patch,
                  scope("fallback", "a config without num_key_value_heads, GPT-2's"))
    install_early_checks()
    vllm_launch = scope("fallback", "a vLLM model verl's launch patches would raise on: GPT-2, classifiers")
    when_imported("verl.workers.rollout.vllm_rollout.utils", "vllm_models_without_model_attribute",
                  _patch_vllm_model_patches, vllm_launch, "vllm")  # fmt: skip
    when_imported("verl.trainer.ppo.v1.agent_loop_tq", "worker_errors_recorded", _patch_agent_loop_errors, own_errors)
    when_imported("verl.trainer.ppo.v1.trainer_base", "worker_errors_surfaced", _patch_fit_errors, own_errors)
    when_imported("verl.trainer.ppo.v1.replay_buffer", "worker_errors_polled", _patch_replay_buffer_errors, own_errors)
    when_imported("verl.trainer.ppo.ray_trainer", "variance_aware_kl_in_reward", _patch_apply_kl_penalty,
                  scope("opt-in", "kl_penalty=variance_aware"))  # fmt: skip
    when_imported("verl.trainer.ppo.ray_trainer", "methods_legacy_trainer", _patch_legacy_trainer, methods)
    when_imported("verl.trainer.ppo.v1.trainer_base", "variance_aware_kl_v1", _patch_v1_advantage_inputs,
                  scope("opt-in", "kl_penalty=variance_aware, adv_estimator=rvpo"))  # fmt: skip
    when_imported("verl.trainer.ppo.v1.trainer_base", "methods_v1_trainer", _patch_v1_trainer_wiring, methods)
    when_imported("verl.trainer.ppo.v1.trainer_base", "v1_served_reward_extras", _patch_v1_served_reward_extras,
                  v1_fields)  # fmt: skip
    when_imported("verl.trainer.ppo.core_algos", "estimators_and_policy_losses",
                  _register_advantage_estimators_and_losses, registry)  # fmt: skip
    when_imported("verl.trainer.ppo.ray_trainer", "rvpo_gdpo_advantage", _patch_compute_advantage, rvpo)
    when_imported("verl.trainer.ppo.v1.utils", "rvpo_gdpo_advantage_v1", _patch_compute_advantage,
                  f"{rvpo}; fallback: verl's gdpo on the V1 trainer")  # fmt: skip
    when_imported("verl.workers.engine_workers", "variance_kl_loss", _patch_ppo_loss,
                  scope("opt-in", "a kl_weight or r2vpo_lambda batch field: kl_penalty=variance_aware with "
                        "use_kl_loss, or loss_mode=r2vpo"))  # fmt: skip
    when_imported("verl.experimental.reward_loop.reward_manager.registry", "ensemble_reward_manager",
                  _register_ensemble_manager, registry)  # fmt: skip
    when_imported("verl.experimental.reward_loop.reward_loop", "ensemble_reward_all_logits", _patch_disrm_all_logits,
                  scope("opt-in", "reward_manager.name=ensemble"))  # fmt: skip
    when_imported("verl.trainer.distillation.losses", "variance_kl_loss_distillation", _patch_ppo_loss,
                  scope("opt-in", "a kl_weight or r2vpo_lambda batch field"))  # fmt: skip


def install_early_checks() -> None:
    """The driver's config checks before Ray starts (``checks.CHECKS``; both plugins install it, once: a patch of
    the methods plugin)."""
    with plugin_scope(METHODS_PLUGIN):
        when_imported("verl.utils.config", "early_config_checks", _patch_validate_config,
                      scope("fallback", "refuses, before Ray, set-ups verl would fail on later"))
