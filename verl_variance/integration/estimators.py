"""The methods' advantage estimators and policy loss in verl's registries, and verl's ``compute_advantage`` for the
estimators that read more of the batch than verl hands a registered estimator.

verl 0.9.1 calls a registered estimator with the rewards, the response mask, the uids and the ``algorithm``
config (and ``non_tensor_batch`` for ``gdpo`` only). ``rvpo`` needs each objective's score (the reward extra info),
``grpo_variance_kl`` the variance-weighted KL that ``apply_kl_penalty`` put in the batch: the wrapped
``compute_advantage`` (both trainers; V1 through ``v1.utils``) calls them with those batch fields, and feeds
verl's own ``gdpo`` on V1, whose batch has no reward extra info. Every other estimator is verl's, untouched.
"""

from __future__ import annotations

import functools
import inspect

from verl_variance.core.config import R2VPO_LOSS, RVPO_ESTIMATOR, VARIANCE_KL_ESTIMATOR
from verl_variance.integration import rvpo, state, variance_kl
from verl_variance.integration.compat import check_signature, patch
from verl_variance.integration.r2vpo import r2vpo_policy_loss

BATCH_ESTIMATORS = (RVPO_ESTIMATOR, VARIANCE_KL_ESTIMATOR, rvpo.GDPO_ESTIMATOR)
"""The estimators ``compute_advantage`` computes or feeds here."""


def register_estimators_and_losses(module) -> None:
    """``rvpo`` and ``grpo_variance_kl`` in verl's estimator registry, ``r2vpo`` in its policy-loss registry."""
    check_signature(
        module.compute_policy_loss_vanilla, list(inspect.signature(r2vpo_policy_loss).parameters),
        "verl.trainer.ppo.core_algos.compute_policy_loss_vanilla (the policy-loss interface)",
    )  # fmt: skip
    estimators = (
        (VARIANCE_KL_ESTIMATOR, variance_kl.grpo_variance_kl_advantage),
        (RVPO_ESTIMATOR, rvpo.rvpo_outcome_advantage),
    )
    for name, fn in estimators:
        if module.ADV_ESTIMATOR_REGISTRY.get(name) is not fn:  # idempotent
            module.register_adv_est(name)(fn)
    module.register_policy_loss(R2VPO_LOSS)(r2vpo_policy_loss)


def wrap_compute_advantage(compute_advantage):
    """verl's ``compute_advantage`` with ``rvpo`` and ``grpo_variance_kl`` given their batch fields and ``gdpo`` fed
    on V1 (else unchanged)."""
    signature = inspect.signature(compute_advantage)

    @functools.wraps(compute_advantage)
    def wrapped(data, adv_estimator, *args, **kwargs):
        if adv_estimator not in BATCH_ESTIMATORS:
            return compute_advantage(data, adv_estimator, *args, **kwargs)
        methods = state.current()
        methods.fill_batch(data)  # V1: the step's reward extra info
        call = signature.bind(data, adv_estimator, *args, **kwargs)
        call.apply_defaults()
        config = call.arguments["config"] or {}
        if adv_estimator == rvpo.GDPO_ESTIMATOR:
            return _gdpo(compute_advantage, call, config, v1=methods.step_extras is not None)
        if "response_mask" not in data.batch.keys():
            from verl.trainer.ppo.ray_trainer import compute_response_mask

            data.batch["response_mask"] = compute_response_mask(data)
        inputs = {
            "token_level_rewards": data.batch["token_level_rewards"],
            "response_mask": data.batch["response_mask"],
            "index": data.non_tensor_batch.get("uid"),
            "config": {**config, "norm_adv_by_std_in_grpo": call.arguments["norm_adv_by_std_in_grpo"]},
        }
        if adv_estimator == RVPO_ESTIMATOR:
            metrics = methods.step_metrics  # V1: the step's metrics; legacy: carried to the actor update's
            if metrics is None:
                metrics = data.meta_info.setdefault(rvpo.LEGACY_METRICS_FIELD, {})
            advantages, returns = rvpo.rvpo_outcome_advantage(
                **inputs, non_tensor_batch=data.non_tensor_batch, metrics=metrics
            )
        else:
            penalty = data.batch.pop(variance_kl.KL_PENALTY_FIELD, None)  # not sent on to the workers
            advantages, returns = variance_kl.grpo_variance_kl_advantage(**inputs, kl_penalty=penalty)
        data.batch["advantages"], data.batch["returns"] = advantages, returns
        return data

    return wrapped


def _gdpo(compute_advantage, call: inspect.BoundArguments, config, v1: bool):
    """verl's GDPO; on V1 with its objectives checked and the batch given the prompt-side fields it reads."""
    data, keys = call.arguments["data"], config.get("gdpo_reward_keys")
    if not (v1 and keys):
        return compute_advantage(*call.args, **call.kwargs)
    for key in keys:
        if key not in data.non_tensor_batch:
            raise rvpo.missing_component_error(key, list(data.non_tensor_batch))
    with rvpo.gdpo_response_view(data):
        return compute_advantage(*call.args, **call.kwargs)


def patch_compute_advantage(module) -> None:
    patch(module, "compute_advantage", requires=["config", "norm_adv_by_std_in_grpo"])(wrap_compute_advantage)
