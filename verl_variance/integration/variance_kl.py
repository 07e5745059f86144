"""``algorithm.kl_penalty=variance_aware`` inside verl's trainers (V1 and legacy).

verl computes the in-reward KL in the driver, in ``ray_trainer.apply_kl_penalty``, with one scalar
β. ``patch_apply_kl_penalty`` routes that call here when ``kl_penalty == "variance_aware"``:

    token_level_rewards = token_level_scores − β · w(σ²) · kl_t

with σ² read per sample from the reward extra info (``variance_kl.variance_key``), a column of the batch's
``non_tensor_batch`` (on V1 put there from the trainer's queue: ``state.MethodsState.fill_batch``), and the
settings from the trainer's state (``state.current``). Every other ``kl_penalty`` value goes to verl's own
function untouched.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from verl_variance.core.config import KL_MODE, VARIANCE_KL_ESTIMATOR, VarianceKLConfig
from verl_variance.core.kl import (
    kl_penalty_to_go,
    kl_weight,
    variance_aware_token_rewards,
    variance_weighted_kl_penalty,
)
from verl_variance.core.telemetry import variance_kl_metrics
from verl_variance.core.variance import check_reward_variance
from verl_variance.integration.compat import VerlVarianceError, patch

KL_PENALTY_FIELD = "variance_kl_penalty"
"""The step's β·w·kl (bs, T), a batch field from ``apply_kl_penalty`` to the ``grpo_variance_kl`` estimator."""


class MissingRewardVarianceError(VerlVarianceError, KeyError):
    """variance_aware KL without a per-sample reward variance."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


def missing_variance_error(key: str, available: list[str]) -> MissingRewardVarianceError:
    return MissingRewardVarianceError(
        f"algorithm.kl_penalty={KL_MODE} needs a per-sample {key!r} in the reward extra info, but the reward "
        f"returned only {sorted(available)}. Fix: return {{'score': r, '{key}': sigma2}} from your custom reward "
        "function (example: verl_variance/rewards/toy.py:positive_word_share_with_variance), or use the "
        f"ensemble reward manager; or set variance_kl.variance_key to the key your reward returns."
    )


def batch_reward_variance(data, key: str) -> torch.Tensor:
    """σ² (bs,) of a ``DataProto``: a column of its non-tensor batch (the reward extra info) or of its tensors."""
    if data.batch is not None and key in data.batch.keys() and key not in data.non_tensor_batch:
        return checked_reward_variance(data.batch[key], key)
    return reward_variance(data.non_tensor_batch, key)


def reward_variance(columns: Mapping[str, Any], key: str) -> torch.Tensor:
    """σ² (bs,) float64 from the reward extra info's columns, checked; a clear error when the reward has none."""
    if key not in columns:
        raise missing_variance_error(key, list(columns))
    return checked_reward_variance(columns[key], key)


def checked_reward_variance(raw: Any, key: str) -> torch.Tensor:
    """float64 (bs,) σ² from any per-sample sequence, with NaN/inf/negative values refused."""
    try:
        values = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{key} must be one number per sample, got {raw!r:.200}") from exc
    return check_reward_variance(torch.from_numpy(values), key)


def variance_aware_apply_kl_penalty(data, kl_ctrl, config: VarianceKLConfig, keep_penalty: bool = False):
    """Variance-aware replacement of verl's ``apply_kl_penalty`` (same inputs and outputs); ``keep_penalty``: put
    β·w·kl (bs, T) in the batch as ``KL_PENALTY_FIELD`` for the ``grpo_variance_kl`` estimator."""
    from verl.trainer.ppo import core_algos
    from verl.utils.torch_functional import masked_mean

    response_mask = data.batch["response_mask"]
    reward_variance = batch_reward_variance(data, config.variance_key)
    if reward_variance.shape[0] != response_mask.shape[0]:
        raise ValueError(
            f"{config.variance_key} has {reward_variance.shape[0]} values for {response_mask.shape[0]} samples"
        )
    token_kl = core_algos.kl_penalty(data.batch["old_log_probs"], data.batch["ref_log_prob"], config.kl_estimator)
    token_kl = token_kl * response_mask
    weights = kl_weight(reward_variance, config.weighting, config.normalize, config.min_weight, config.max_weight)
    beta = kl_ctrl.value
    weight = weights.kl_weight.to(token_kl.device)
    data.batch["token_level_rewards"] = variance_aware_token_rewards(
        data.batch["token_level_scores"], token_kl, weight, beta
    )
    if keep_penalty:  # for the grpo_variance_kl estimator, which runs next on this batch
        data.batch[KL_PENALTY_FIELD] = variance_weighted_kl_penalty(token_kl, beta * weight)
    # verl's controller sees the unweighted KL, as in stock verl (adaptive control targets the real KL)
    sample_kl = masked_mean(token_kl, mask=response_mask, axis=-1)
    current_kl = torch.mean(sample_kl, dim=0).item()
    kl_ctrl.update(current_kl=current_kl, n_steps=response_mask.shape[0])
    metrics = {"actor/reward_kl_penalty": current_kl, "actor/reward_kl_penalty_coeff": beta}
    if config.telemetry:
        metrics.update(variance_kl_metrics(reward_variance, weights.kl_weight, weights.clipped, sample_kl.cpu()))
    if config.sample_log:
        _append_sample_log(config.sample_log, data, reward_variance, weights.kl_weight, token_kl, beta)
    return data, metrics


def grpo_variance_kl_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config=None,
    index: np.ndarray | None = None,
    kl_penalty: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Critic-less variance-aware advantage (``algorithm.adv_estimator=grpo_variance_kl``).

        A_t = GRPO(r)_i − Σ_{t' ≥ t} β · w_i · kl_{t'}

    GRPO's group-normalised outcome advantage of the scores r, plus the variance-weighted KL as a
    per-token return that group normalisation does not rescale (with KL folded into the reward,
    GRPO would divide it by the group's reward std).

    Args:
        token_level_rewards: (bs, response_length) r_t − β w kl_t, from variance-aware ``apply_kl_penalty``.
        response_mask: (bs, response_length).
        index: (bs,) group ids (verl's ``uid``).
        kl_penalty: (bs, response_length) β · w · kl_t, the batch's ``KL_PENALTY_FIELD`` (``estimators`` hands it).

    Returns:
        (advantages, returns), both (bs, response_length).
    """
    from verl.trainer.ppo import core_algos

    if kl_penalty is None:
        raise VerlVarianceError(
            f"algorithm.adv_estimator={VARIANCE_KL_ESTIMATOR} needs the variance-weighted KL of these rewards, "
            "computed by apply_kl_penalty just before: set algorithm.use_kl_in_reward=True and "
            f"algorithm.kl_penalty={KL_MODE}"
        )
    norm_by_std = True if config is None else config.get("norm_adv_by_std_in_grpo", True)
    outcome, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards + kl_penalty, response_mask, index, norm_adv_by_std_in_grpo=norm_by_std
    )
    advantages = outcome - kl_penalty_to_go(kl_penalty, response_mask)
    return advantages, advantages


def _append_sample_log(path: str, data, reward_variance, weight, token_kl, beta: float) -> None:
    """One JSON line per sample: σ², w, and the KL penalty β · w · Σ_t kl_t subtracted from its reward."""
    penalty = beta * weight * token_kl.sum(dim=1)
    uids = data.non_tensor_batch.get("uid", [None] * len(penalty))
    with open(path, "a") as sink:
        for i in range(len(penalty)):
            record = {
                "uid": None if uids[i] is None else str(uids[i]),
                "reward_variance": float(reward_variance[i]),
                "kl_weight": float(weight[i]),
                "kl_sum": float(token_kl[i].sum()),
                "kl_penalty": float(penalty[i]),
                "beta": beta,
            }
            sink.write(json.dumps(record) + "\n")


def patch_apply_kl_penalty(module) -> None:
    """verl's ``apply_kl_penalty`` (both trainers call it, in the driver) for ``kl_penalty=variance_aware``."""
    from verl_variance.integration import state

    @patch(module, "apply_kl_penalty")
    def _(original):
        @functools.wraps(original)
        def apply_kl_penalty(data, kl_ctrl, kl_penalty="kl"):
            if kl_penalty != KL_MODE:
                return original(data, kl_ctrl, kl_penalty)
            methods = state.current()
            methods.fill_batch(data)
            return variance_aware_apply_kl_penalty(
                data, kl_ctrl, methods.variance_kl_settings, keep_penalty=methods.kl_penalty_in_advantage
            )

        return apply_kl_penalty
