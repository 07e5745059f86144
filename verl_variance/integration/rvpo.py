"""``algorithm.adv_estimator=rvpo`` inside verl (V1 and legacy trainers), and verl's ``gdpo`` on V1.

RVPO (seed 000, SPEC §2) is verl's GDPO with one step changed. Both:

1. read each objective k's score per sample from the reward extra info (the dict a custom reward
   function returns, or the ensemble manager's ``reward_head_<k>``), place it on the response's last
   token and run verl's GRPO group normalisation on it (``index=uid``): A_k;
2. aggregate: GDPO ``Σ_k w_k A_k``; RVPO the soft-min ``−τ · log Σ_k w_k exp(−A_k/τ)``
   (``core.aggregators.softmin_reward``);
3. whiten the aggregate over the batch's valid tokens (``masked_whiten``).

verl 0.9.1 hands ``non_tensor_batch`` to the estimator only for ``gdpo``, and its V1 trainer's
``_compute_advantage`` fetches no reward extra info (verl's GDPO fails there with
``KeyError: 'key "prompts" not found in TensorDict'``). ``estimators.py`` routes ``compute_advantage``
for ``rvpo`` here, and on V1 adds the step's reward extra info to the batch first
(``state.MethodsState.fill_batch``), from which both estimators take their objectives; verl's own GDPO
function then runs on V1 on a response-only view of the batch (``gdpo_response_view``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from verl_variance.core.aggregators import check_objective_weights, softmin_reward
from verl_variance.core.config import RVPO_ESTIMATOR
from verl_variance.integration.compat import VerlVarianceError
from verl_variance.integration.ensemble_reward import complete_heads, head_keys

GDPO_ESTIMATOR = "gdpo"
MULTI_OBJECTIVE_ESTIMATORS = (RVPO_ESTIMATOR, GDPO_ESTIMATOR)
"""Estimators that read per-objective scores from the reward extra info."""

LEGACY_METRICS_FIELD = "rvpo_metrics"
"""The legacy trainer's batch ``meta_info`` key of the step's ``rvpo/*`` metrics, from the advantage step to the
actor update, whose metrics verl logs."""


class RewardComponentError(VerlVarianceError, ValueError):
    """An objective's score is missing or not a finite number; the message names the key and the fix."""


def missing_component_error(key: str, available: Sequence[str]) -> RewardComponentError:
    return RewardComponentError(
        f"objective {key!r} is not in the reward extra info (the reward returned {sorted(available)}). Fix: return "
        f"{{'score': ..., '{key}': ...}} from your reward function (example: "
        "verl_variance/rewards/multi_objective.py), or list the keys it does return in rvpo.reward_keys / "
        "algorithm.gdpo_reward_keys"
    )


def ensemble_head_keys(available: Sequence[str]) -> list[str]:
    """``reward_head_0 .. reward_head_{K-1}`` in head order; K ≥ 2 and no gaps, else a clear error."""
    heads = head_keys(available)
    if not complete_heads(heads):
        raise RewardComponentError(
            f"rvpo.ensemble_heads=True needs the ensemble manager's per-head scores reward_head_0..K-1 (K >= 2), "
            f"got {heads or 'none'}. Fix: reward.reward_manager.name=ensemble with "
            "ensemble_reward.head_scores=True and a reward model of K >= 2 heads"
        )
    return heads


def reward_components(non_tensor_batch: Mapping[str, Any], keys: Sequence[str]) -> torch.Tensor:
    """Objective scores (bs, K) float64 from ``non_tensor_batch``, refusing missing keys and NaN/inf."""
    columns = []
    for key in keys:
        if key not in non_tensor_batch:
            raise missing_component_error(key, list(non_tensor_batch))
        try:
            column = np.asarray(non_tensor_batch[key], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise RewardComponentError(f"objective {key!r} must be one number per sample: {exc}") from exc
        bad = np.flatnonzero(~np.isfinite(column))
        if bad.size:
            raise RewardComponentError(
                f"objective {key!r} is not finite for {bad.size} sample(s) (first: sample {bad[0]}, value "
                f"{column[bad[0]]}). Fix: return a finite score for every response from your reward function"
            )
        columns.append(column)
    return torch.from_numpy(np.stack(columns, axis=1))


def component_advantages(
    components: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    norm_adv_by_std_in_grpo: bool = True,
    epsilon: float = 1e-6,
) -> torch.Tensor:
    """GDPO's first step: verl's GRPO normalisation of each objective within its prompt group.

    Args:
        components: (bs, K) objective scores.
        response_mask: (bs, T).
        index: (bs,) group ids (``uid``).

    Returns:
        (bs, K) float32 A_k per sample (the value on every valid token of its response).
    """
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    mask = response_mask.to(torch.float32)
    last_token = (response_mask.sum(dim=-1) - 1).long()  # as GDPO: the score on the last response token
    rows = torch.arange(mask.shape[0], device=mask.device)
    per_token_count = mask.sum(dim=-1).clamp(min=1)
    columns = []
    for k in range(components.shape[1]):
        scores = torch.zeros_like(mask)
        scores[rows, last_token] = components[:, k].to(torch.float32).to(mask.device)
        advantage, _ = compute_grpo_outcome_advantage(
            scores, response_mask, index, epsilon=epsilon, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo
        )
        columns.append((advantage * mask).sum(dim=-1) / per_token_count)
    return torch.stack(columns, dim=1)


def rvpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Mapping[str, Any] | None = None,
    non_tensor_batch: Mapping[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RVPO advantage (``algorithm.adv_estimator=rvpo``; seed 000, SPEC §2):

        A_i = whiten( −τ · log Σ_k w_k · exp(−A_{k,i} / τ) ),   A_k = GRPO_group(r_k)

    the settings from the ``rvpo`` group (the trainer's ``state``). ``token_level_rewards`` is unused: the
    objectives come from ``non_tensor_batch`` (as GDPO's do).

    Args:
        token_level_rewards: (bs, T), for the shape and device.
        response_mask: (bs, T).
        index: (bs,) group ids (``uid``).
        config: ``algorithm`` config (``gdpo_reward_keys``, ``norm_adv_by_std_in_grpo``).
        non_tensor_batch: per-sample objective scores by key.
        metrics: where the ``rvpo/*`` metrics go (the step's metrics), or None.

    Returns:
        (advantages, returns), both (bs, T).
    """
    from verl.utils.torch_functional import masked_whiten

    from verl_variance.integration import state

    if non_tensor_batch is None or index is None:
        raise VerlVarianceError(
            "the rvpo estimator needs the batch's reward extra info and uids: it runs through verl's "
            "compute_advantage with the verl-variance plugin loaded (check `verl-variance doctor`)"
        )
    config = config or {}
    settings = state.current().rvpo_settings
    keys = settings.keys(config.get("gdpo_reward_keys"))
    if keys is None:
        keys = ensemble_head_keys(list(non_tensor_batch))
    weights = check_objective_weights(settings.weights, len(keys))
    components = reward_components(non_tensor_batch, keys)
    advantages_k = component_advantages(
        components, response_mask, index, norm_adv_by_std_in_grpo=config.get("norm_adv_by_std_in_grpo", True)
    )
    aggregate = softmin_reward(advantages_k.double(), tau=settings.tau, weights=weights)
    mask = response_mask.to(token_level_rewards.dtype)
    advantages = masked_whiten(aggregate.to(mask.dtype).unsqueeze(-1) * mask, response_mask) * mask
    if metrics is not None:
        metrics.update(rvpo_metrics(keys, components, advantages_k.double(), aggregate, weights))
    return advantages, advantages


def rvpo_metrics(
    keys: Sequence[str],
    components: torch.Tensor,
    advantages_k: torch.Tensor,
    aggregate: torch.Tensor,
    weights: torch.Tensor,
) -> dict[str, float]:
    """``rvpo/<key>/mean`` per objective, and the soft-min's gap below the weighted mean (≥ 0, ≈ Var_w/(2τ))."""
    metrics = {f"rvpo/{key}/mean": float(components[:, k].mean()) for k, key in enumerate(keys)}
    weighted_mean = advantages_k @ weights.to(advantages_k)
    metrics["rvpo/softmin_gap/mean"] = float((weighted_mean - aggregate).mean())
    metrics["rvpo/objective_disagreement/mean"] = float(
        ((advantages_k - weighted_mean.unsqueeze(1)) ** 2 @ weights.to(advantages_k)).mean()
    )
    return metrics


@contextlib.contextmanager
def gdpo_response_view(data) -> Iterator[None]:
    """V1 holds response-side tensors only; verl's GDPO reads ``prompts`` (for its width) and
    ``attention_mask`` (to find each response's last token). Give it a zero-width prompt and the
    response mask for the call, so its scores land on the same last response token as on legacy."""
    added = [key for key in ("prompts", "attention_mask") if key not in data.batch.keys()]
    mask = data.batch["response_mask"]
    if "prompts" in added:
        data.batch["prompts"] = mask.new_zeros((mask.shape[0], 0))
    if "attention_mask" in added:
        data.batch["attention_mask"] = mask.long()
    try:
        yield
    finally:
        for key in added:
            data.batch.pop(key)
