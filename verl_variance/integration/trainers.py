"""verl's two trainers (legacy ``RayPPOTrainer``, V1 ``PPOTrainer``) wired for every method, each hook written once.

At ``__init__`` a trainer gets its ``state.MethodsState`` (settings and controllers from its config); its step
makes that state the current one for the module functions verl calls without the trainer (legacy: ``fit``; V1:
``_compute_advantage``, which also hands the state the step's reward extra info); its checkpoints carry R²VPO's λ
and the hacking monitor's history; before each actor update ``methods_before_actor_update`` puts the methods'
per-sample fields on the batch, through one view of either trainer's batch (``batches``); the hacking monitor
reads the step's metrics before verl logs them (V1: ``_compute_metrics``; legacy: ``Tracking.log``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from verl_variance.core.config import KL_MODE
from verl_variance.core.hacking import VARIANCE_METRIC
from verl_variance.integration import kl_loss, r2vpo, rvpo, state
from verl_variance.integration.batches import LegacyBatch, V1Batch
from verl_variance.integration.checkpoints import step_folder
from verl_variance.integration.compat import patch
from verl_variance.integration.ensemble_reward import MANAGER_NAME, check_served_heads, served_ensemble
from verl_variance.integration.extra_info import reward_extra_infos, with_reward_extras
from verl_variance.integration.hacking_monitor import HackingStop


def methods_before_actor_update(trainer, batch, metrics: dict) -> Callable[[dict], None] | None:
    """The methods' half of an actor update, on either trainer (``batch``: a ``batches.LegacyBatch`` or ``V1Batch``):
    served heads that are probabilities refused before the first update; per-sample KL weights
    (``kl_penalty=variance_aware`` with ``use_kl_loss``) and R²VPO's λ put on the batch, their telemetry added to
    ``metrics``; the hacking monitor's per-sample signals added to ``metrics``. Returns what to run on the update's
    metrics afterwards (R²VPO's dual step), or None."""
    if served_ensemble(trainer.config):
        check_served_heads(batch.reward_columns())
    methods = state.of(trainer)
    if methods.monitor:
        metrics.update(methods.monitor.batch_metrics(batch))
    lam = methods.r2vpo
    fields = {}
    if kl_loss.uses_variance_kl_loss(trainer.config):
        settings = methods.variance_kl_settings
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
    config, methods = trainer.config, state.of(trainer)
    return bool(kl_loss.uses_variance_kl_loss(config) or methods.r2vpo or methods.monitor or served_ensemble(config))


def patch_legacy_trainer(module) -> None:
    """The legacy trainer: state at ``__init__``, current during ``fit``, checkpoints, actor update."""
    trainer_cls = module.RayPPOTrainer
    _patch_init_and_checkpoints(trainer_cls)

    @patch(trainer_cls, "fit")
    def _(original):
        @functools.wraps(original)
        def fit(self):
            with state.entered(state.of(self)):  # apply_kl_penalty, compute_advantage and the logger run inside
                try:
                    return original(self)
                except HackingStop:  # hacking_monitor.action=stop, after the step was logged and saved
                    return None

        return fit

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


def patch_v1_trainer(module) -> None:
    """The V1 trainer: state at ``__init__``, checkpoints, actor update (as the legacy trainer's)."""
    trainer_cls = module.PPOTrainer
    _patch_init_and_checkpoints(trainer_cls)

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

    @patch(trainer_cls, "_compute_metrics")
    def _(original):
        @functools.wraps(original)
        def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
            result = original(self, batch, metrics, timing_raw, global_steps, epoch)
            monitor = state.of(self).monitor
            if monitor and VARIANCE_METRIC in metrics and monitor.observe(self, metrics):
                self.total_training_steps = self.global_steps  # hacking_monitor.action=stop: this step is the last
            return result

        return _compute_metrics


def patch_legacy_metrics_log(module) -> None:
    """The legacy trainer logs each step's metrics through ``Tracking.log`` (its ``fit``'s local logger): the hacking
    monitor reads them there, adds its signals, and ends ``fit`` after the log when it stops the run."""

    @patch(module.Tracking, "log")
    def _(original):
        @functools.wraps(original)
        def log(self, data, step, backend=None):
            methods = state.current()
            trainer = methods.trainer() if methods.trainer else None
            if not (methods.monitor and trainer is not None and VARIANCE_METRIC in data):
                return original(self, data, step, backend)
            stop = methods.monitor.observe(trainer, data)
            result = original(self, data, step, backend)
            if stop:
                raise HackingStop
            return result

        return log


def _patch_init_and_checkpoints(trainer_cls) -> None:
    """A trainer's state from its config at ``__init__``; R²VPO's λ saved in each verl checkpoint folder, and it and
    the hacking monitor's history read back on resume."""

    @patch(trainer_cls, "__init__")
    def _(original):
        @functools.wraps(original)
        def __init__(self, *args, **kwargs):  # noqa: N807 - replaces the trainer's __init__
            original(self, *args, **kwargs)
            state.attach(self)

        return __init__

    @patch(trainer_cls, "_save_checkpoint")
    def _(save):
        @functools.wraps(save)
        def _save_checkpoint(self):
            result = save(self)
            if (lam := state.of(self).r2vpo) is not None:
                lam.save(step_folder(self.config, self.global_steps, resuming=False))
            return result

        return _save_checkpoint

    @patch(trainer_cls, "_load_checkpoint")
    def _(load):
        @functools.wraps(load)
        def _load_checkpoint(self):
            result = load(self)
            methods = state.of(self)
            if self.global_steps > 0 and (methods.r2vpo or methods.monitor):
                folder = step_folder(self.config, self.global_steps, resuming=True)
                for resumed in (methods.r2vpo, methods.monitor):
                    if resumed is not None:
                        resumed.load(folder)
            return result

        return _load_checkpoint


def patch_v1_advantage_inputs(module) -> None:
    """V1's ``_compute_advantage``: the trainer's state current, with the step's reward extra info and metrics, where
    a method reads them (``apply_kl_penalty``, ``compute_advantage``)."""

    @patch(module.PPOTrainer, "_compute_advantage")
    def _(original):
        @functools.wraps(original)
        def _compute_advantage(self, batch, metrics):
            if not _advantage_reads_reward_extras(self.config.algorithm):
                return original(self, batch, metrics)
            methods = state.of(self)
            extra_infos = reward_extra_infos(V1Batch(module.tq, batch).extra_fields())
            with state.entered(methods), methods.advantage_step(extra_infos, metrics):
                return original(self, batch, metrics)

        return _compute_advantage


def reads_reward_extras(config: Mapping[str, Any]) -> bool:
    """Whether a feature of verl-variance reads the reward extra info of a batch: the ensemble reward manager,
    ``algorithm.kl_penalty=variance_aware``, RVPO, or verl's GDPO (made to run on V1 here)."""
    algorithm = config.get("algorithm") or {}
    manager = ((config.get("reward") or {}).get("reward_manager") or {}).get("name")
    return (
        manager == MANAGER_NAME
        or algorithm.get("kl_penalty") == KL_MODE
        or algorithm.get("adv_estimator") in rvpo.MULTI_OBJECTIVE_ESTIMATORS
    )


def _advantage_reads_reward_extras(algorithm) -> bool:
    """The in-reward KL is variance-aware, or the estimator reads per-objective scores."""
    variance_kl = algorithm.use_kl_in_reward and algorithm.kl_penalty == KL_MODE
    return variance_kl or algorithm.adv_estimator in rvpo.MULTI_OBJECTIVE_ESTIMATORS


def patch_v1_served_reward_extras(module) -> None:
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

