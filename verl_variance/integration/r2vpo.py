"""``actor_rollout_ref.actor.policy_loss.loss_mode=r2vpo`` inside verl (V1 and legacy trainers).

R²VPO (seed 001, SPEC §3) replaces PPO's clipped surrogate by ``agg(−ρ·A) + λ · Var(ρ)``
(``core.losses.r2vpo_loss``). Its settings are the ``r2vpo`` group of the trainer config, which
only the driver sees, so λ travels with the actor's batch:

- driver (``R2VPOController``, one per trainer, in its ``state.MethodsState``): before each ``update_actor`` it
  puts this step's λ into the batch (``r2vpo_lambda``, one value per sample); after it, with ``r2vpo.target_variance``
  set, it takes the step's mean ``actor/ratio_variance`` and makes the dual step
  λ ← max(0, λ + η · (Var(ρ) − δ)). λ is saved with each verl checkpoint (``r2vpo_state.json`` in
  ``global_step_<n>/``) and read back on resume.
- workers: verl's ``ppo_loss`` is wrapped (``wrap_ppo_loss``) to hand the batch's λ to the
  registered ``r2vpo`` policy loss, which aggregates with verl's ``agg_loss`` and ``loss_agg_mode``
  and logs ``actor/ratio_variance``, ``actor/r2vpo_lambda`` and ``actor/ppo_kl``.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from verl_variance.core.config import R2VPO_LOSS, R2VPOConfig
from verl_variance.core.losses import dual_lambda_update, r2vpo_loss
from verl_variance.integration.compat import VerlVarianceError

LAMBDA_FIELD = "r2vpo_lambda"
"""Per-sample (bs,) λ sent with the actor's batch (every value the same)."""
STATE_FILE = "r2vpo_state.json"
VARIANCE_METRIC = "actor/ratio_variance"

_lambda: contextvars.ContextVar[float | None] = contextvars.ContextVar("r2vpo_lambda", default=None)


def uses_r2vpo(config: Mapping[str, Any]) -> bool:
    actor = config.get("actor_rollout_ref", {}).get("actor", {})
    return (actor.get("policy_loss") or {}).get("loss_mode") == R2VPO_LOSS


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------
def r2vpo_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config=None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl policy loss ``r2vpo`` (``register_policy_loss``): ``core.losses.r2vpo_loss`` with verl's ``agg_loss``.

    Args:
        old_log_prob, log_prob, advantages, response_mask: (bs, T), as verl passes them.
        loss_agg_mode: verl's token aggregation (``actor.loss_agg_mode``), for both terms.
        config: the actor config (``global_batch_info`` for the aggregation).
        rollout_is_weights: optional (bs, T) rollout-correction weights of the policy-gradient term.

    Returns:
        (loss scalar, metrics): ``actor/ratio_variance``, ``actor/r2vpo_lambda``, ``actor/ppo_kl``.
    """
    from verl.trainer.ppo.core_algos import agg_loss

    lam = _lambda.get()
    if lam is None:
        raise VerlVarianceError(
            f"policy_loss.loss_mode={R2VPO_LOSS} got no lambda with the batch: the trainer's driver sends it when "
            "the verl-variance plugin is loaded there (check `verl-variance doctor`)"
        )
    global_batch_info = getattr(config, "global_batch_info", None) or {}
    aggregate = functools.partial(_aggregate, agg_loss=agg_loss, mode=loss_agg_mode, info=global_batch_info)
    loss, _, variance = r2vpo_loss(
        log_prob, old_log_prob, advantages, response_mask, lam, aggregate=aggregate, weights=rollout_is_weights
    )
    mask = response_mask.to(log_prob.dtype)
    ppo_kl = ((old_log_prob - log_prob).detach() * mask).sum() / mask.sum().clamp(min=1)
    metrics = {VARIANCE_METRIC: variance.item(), "actor/r2vpo_lambda": lam, "actor/ppo_kl": ppo_kl.item()}
    return loss, metrics


def _aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, agg_loss: Callable, mode: str, info: Mapping):
    return agg_loss(loss_mat=loss_mat, loss_mask=mask, loss_agg_mode=mode, **info)


def wrap_ppo_loss(ppo_loss: Callable) -> Callable:
    """verl's ``ppo_loss`` with the batch's λ made visible to the ``r2vpo`` policy loss."""
    @functools.wraps(ppo_loss)
    def ppo_loss_with_lambda(config, model_output, data, dp_group=None):
        if LAMBDA_FIELD not in data.keys():
            return ppo_loss(config, model_output, data, dp_group)
        token = _lambda.set(float(data[LAMBDA_FIELD].reshape(-1)[0]))
        try:
            return ppo_loss(config, model_output, data, dp_group)
        finally:
            _lambda.reset(token)

    return ppo_loss_with_lambda


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
@dataclass
class R2VPOController:
    """λ of one trainer: fixed, or the dual variable of Var(ρ) ≤ δ updated once per training step."""

    settings: R2VPOConfig
    lam: float

    @classmethod
    def from_trainer_config(cls, config: Mapping[str, Any]) -> R2VPOController:
        """λ from the ``r2vpo`` group of verl's trainer config, before any dual step."""
        settings = R2VPOConfig.from_trainer_config(config)
        return cls(settings=settings, lam=settings.lam)

    def lambda_field(self, batch_size: int) -> torch.Tensor:
        return torch.full((batch_size,), self.lam, dtype=torch.float32)

    def after_update(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Dual step from the step's mean ratio variance; returns the ``r2vpo/*`` driver metrics."""
        if not self.settings.adaptive:
            return {}
        value = metrics.get(VARIANCE_METRIC)
        if value is None:
            raise VerlVarianceError(f"the actor returned no {VARIANCE_METRIC}: is policy_loss.loss_mode={R2VPO_LOSS}?")
        variance = float(torch.as_tensor(value, dtype=torch.float64).mean())
        self.lam = dual_lambda_update(self.lam, variance, self.settings.target_variance, self.settings.dual_lr)
        return {"r2vpo/lambda_next": self.lam, "r2vpo/constraint_violation": variance - self.settings.target_variance}

    def save(self, step_folder: str) -> None:
        os.makedirs(step_folder, exist_ok=True)
        with open(os.path.join(step_folder, STATE_FILE), "w") as sink:
            json.dump({"lam": self.lam}, sink)

    def load(self, step_folder: str) -> None:
        path = os.path.join(step_folder, STATE_FILE)
        if os.path.exists(path):
            with open(path) as source:
                self.lam = float(json.load(source)["lam"])
