"""Bradley–Terry preference losses (Banerjee & Gopalan, Section 4; stage 2 sums them over heads)."""

from __future__ import annotations

import torch
from torch.nn.functional import logsigmoid


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """BT(θ) = mean_i −log σ(r_θ(x_i, y_i^c) − r_θ(x_i, y_i^r)).

    Args:
        chosen_rewards: (bs,) reward of the preferred response.
        rejected_rewards: (bs,) reward of the other response.

    Returns:
        Scalar loss (``logsigmoid`` keeps it finite for large reward gaps).
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards {tuple(rejected_rewards.shape)} "
            "must have the same shape"
        )
    return -logsigmoid(chosen_rewards - rejected_rewards).mean()


def ensemble_bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """loss = Σ_k BT(θ_k): every head k gets its own Bradley–Terry loss, and the losses are summed.

    Heads share no parameters, so the gradient of the sum w.r.t. head k is the gradient of BT(θ_k)
    alone: the K heads are trained independently in one pass.

    Args:
        chosen_rewards: (bs, K) reward of each head for the preferred response.
        rejected_rewards: (bs, K) reward of each head for the other response.

    Returns:
        ``(total, per_head)``: the scalar sum and the (K,) per-head losses.
    """
    if chosen_rewards.dim() != 2 or chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"expected chosen and rejected rewards of shape (batch, K), got {tuple(chosen_rewards.shape)} "
            f"and {tuple(rejected_rewards.shape)}"
        )
    per_head = -logsigmoid(chosen_rewards - rejected_rewards).mean(dim=0)
    return per_head.sum(), per_head
