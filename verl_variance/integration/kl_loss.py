"""Variance-weighted KL *loss* on the actor (``actor.use_kl_loss=True`` with ``algorithm.kl_penalty=variance_aware``).

GRPO/RLOO users keep the KL out of the reward and in the actor's loss:

    L = L_pg − c_ent · H + c_kl · agg_t( w_i · kl_{i,t} )

with ``kl_{i,t}`` verl's estimator ``actor.kl_loss_type`` between π_θ and π_ref, ``c_kl`` =
``actor.kl_loss_coef``, ``agg`` verl's ``loss_agg_mode``, and ``w_i`` the per-sample weight from the
reward variance (``variance_kl.*`` settings, as for the in-reward KL). Two halves:

- driver (``attach_kl_weights``): before ``update_actor`` the trainer reads σ² from the reward extra
  info, turns it into ``kl_weight`` (bs,) and puts it into the batch sent to the workers, and logs the
  ``variance_kl/*`` telemetry;
- workers (``variance_weighted_ppo_loss``): replaces verl's ``ppo_loss`` in the actor; when the batch
  holds ``kl_weight`` it runs verl's loss without its KL term and adds the weighted one. Without
  ``kl_weight`` in the batch it is verl's ``ppo_loss``, unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch

from verl_variance.core.config import KL_MODE, VarianceKLConfig
from verl_variance.core.kl import kl_weight, variance_weighted_kl_penalty
from verl_variance.core.telemetry import variance_kl_metrics
from verl_variance.integration.compat import patch

KL_WEIGHT_FIELD = "kl_weight"
"""Per-sample (bs,) weight w_i sent with the actor's batch."""


def uses_variance_kl_loss(config: Mapping[str, Any]) -> bool:
    """True when ``algorithm.kl_penalty=variance_aware`` and ``actor_rollout_ref.actor.use_kl_loss=True``."""
    algorithm = config.get("algorithm", {})
    actor = config.get("actor_rollout_ref", {}).get("actor", {})
    return algorithm.get("kl_penalty") == KL_MODE and bool(actor.get("use_kl_loss", False))


def attach_kl_weights(
    reward_variance: torch.Tensor,
    old_log_probs: torch.Tensor,
    ref_log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    settings: VarianceKLConfig,
    kl_loss_type: str,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The driver's half: per-sample weights for the actor's KL loss, and this step's telemetry.

    Args:
        reward_variance: (bs,) σ², checked (finite, ≥ 0).
        old_log_probs, ref_log_prob: (bs, response_length) log π_old and log π_ref of the response tokens.
        response_mask: (bs, response_length).
        settings: the ``variance_kl`` group (weighting, normalize, clip range).
        kl_loss_type: ``actor.kl_loss_type``, the estimator the workers use (telemetry uses it too).

    Returns:
        ``kl_weight`` (bs,) float32 and the ``variance_kl/*`` metrics (KL statistics at π_old).
    """
    from verl.trainer.ppo import core_algos
    from verl.utils.torch_functional import masked_mean

    weights = kl_weight(
        reward_variance, settings.weighting, settings.normalize, settings.min_weight, settings.max_weight
    )
    token_kl = core_algos.kl_penalty(old_log_probs, ref_log_prob, kl_loss_type)
    sample_kl = masked_mean(token_kl, mask=response_mask, axis=-1)
    metrics = variance_kl_metrics(reward_variance, weights.kl_weight, weights.clipped, sample_kl.cpu())
    return weights.kl_weight, metrics


def variance_weighted_kl_loss(
    log_prob: torch.Tensor,
    ref_log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    sample_weight: torch.Tensor,
    kl_loss_type: str,
    loss_agg_mode: str,
    global_batch_info: Mapping[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """agg_t(w_i · kl_{i,t}) and, for logging, agg_t(kl_{i,t}).

    Args:
        log_prob, ref_log_prob: (bs, response_length) log π_θ (with grad) and log π_ref.
        response_mask: (bs, response_length) bool.
        sample_weight: (bs,) w_i.
        kl_loss_type: a verl KL estimator (``actor.kl_loss_type``).
        loss_agg_mode, global_batch_info: verl's aggregation settings for this micro-batch.

    Returns:
        (weighted KL loss, unweighted KL loss, detached), two scalars.
    """
    from verl.trainer.ppo.core_algos import agg_loss, kl_penalty

    token_kl = kl_penalty(logprob=log_prob, ref_logprob=ref_log_prob, kl_penalty=kl_loss_type)
    weighted = variance_weighted_kl_penalty(token_kl, sample_weight.to(token_kl.device))
    weighted_loss = agg_loss(weighted, response_mask, loss_agg_mode, **global_batch_info)
    unweighted_loss = agg_loss(token_kl.detach(), response_mask, loss_agg_mode, **global_batch_info)
    return weighted_loss, unweighted_loss


def wrap_ppo_loss(ppo_loss: Callable) -> Callable:
    """verl's ``ppo_loss`` with its KL term weighted per sample when the batch carries ``kl_weight``."""

    @functools.wraps(ppo_loss)
    def variance_weighted_ppo_loss(config, model_output, data, dp_group=None):
        if not config.use_kl_loss or KL_WEIGHT_FIELD not in data.keys():
            return ppo_loss(config, model_output, data, dp_group)
        from verl.utils.metric import Metric
        from verl.workers.utils.padding import no_padding_2_padding

        # a copy with use_kl_loss=False (sharing global_batch_info; ~20 µs): verl adds no KL term, we add ours
        policy_loss, metrics = ppo_loss(dataclasses.replace(config, use_kl_loss=False), model_output, data, dp_group)
        log_prob = no_padding_2_padding(model_output["log_probs"], data)
        padded = data.select("response_mask", "ref_log_prob").to_padded_tensor()
        kl_loss, unweighted = variance_weighted_kl_loss(
            log_prob,
            padded["ref_log_prob"],
            padded["response_mask"].to(bool),
            data[KL_WEIGHT_FIELD],
            config.kl_loss_type,
            config.loss_agg_mode,
            config.global_batch_info,
        )
        aggregation = metrics["actor/pg_loss"].aggregation
        metrics["kl_loss"] = Metric(value=kl_loss.detach(), aggregation=aggregation)
        metrics["kl_coef"] = config.kl_loss_coef
        metrics["variance_kl/kl_loss_unweighted"] = Metric(value=unweighted, aggregation=aggregation)
        return policy_loss + kl_loss * config.kl_loss_coef, metrics

    return variance_weighted_ppo_loss


def patch_ppo_loss(module) -> None:
    """The actor workers' ``ppo_loss``: the KL term weighted by the batch's ``kl_weight``, R²VPO's λ handed to its
    policy loss (each only when the batch carries its field)."""
    from verl_variance.integration import r2vpo

    patch(module, "ppo_loss")(lambda original: wrap_ppo_loss(r2vpo.wrap_ppo_loss(original)))
