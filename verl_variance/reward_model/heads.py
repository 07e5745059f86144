"""Stage 2: K linear reward heads trained in parallel on a frozen backbone (Banerjee & Gopalan, Section 4).

loss = Σ_k BT(θ_k), θ_k = row k of one Linear(H -> K). Each head starts from its own seeded
initialisation and, with ``bootstrap``, sees its own resample of the pairs; the features h_T of the
frozen backbone are computed once (``train_heads_on_features``; ``reference.train_heads_uncached`` runs the
backbone at every step, the slow reference, with the same order and update, so the same heads). The seeded
order and the AdamW loop are ``optimisation``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from verl_variance.core.config import from_mapping
from verl_variance.reward_model.features import last_token_features, score_layer_of
from verl_variance.reward_model.optimisation import (
    INIT,
    OptimisationConfig,
    TrainingHistory,
    num_steps,
    optimise,
    sample_order,
    seeded_generator,
)

# Stage 2: K heads on a frozen backbone.


@dataclass
class HeadTrainingConfig(OptimisationConfig):
    """Stage-2 head training (defaults: Banerjee & Gopalan, Appendix 7, Table 4, and Section 4)."""

    num_epochs: float = field(default=0.5, metadata={"help": "Passes over the pairs (Table 4: 0.5)."})
    target_loss: float | None = field(
        default=0.2, metadata={"help": "Stop once every head's running loss is below it (Section 7: ~0.2)."}
    )
    seed: int = field(default=0, metadata={"help": "Seeds head inits, bootstrap resamples and the pair order."})
    num_heads: int = field(default=10, metadata={"help": "K, the number of reward heads (paper: 10)."})
    bootstrap: bool = field(
        default=False, metadata={"help": "Each head trains on its own resample of the pairs (with replacement)."}
    )
    init_std: float = field(default=0.02, metadata={"help": "Std of each head's normal init (HF initializer_range)."})
    feature_batch_size: int = field(default=32, metadata={"help": "Sequences per frozen-backbone forward pass."})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_heads", "feature_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"HeadTrainingConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.init_std < 0:
            raise ValueError(f"HeadTrainingConfig.init_std must be >= 0, got {self.init_std}")

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any] | None) -> HeadTrainingConfig:
        """Build from a mapping, failing on unknown keys with the list of valid ones."""
        return from_mapping(cls, mapping, where="the head training config")


def init_heads(hidden_size: int, num_heads: int, seed: int, std: float = 0.02) -> torch.nn.Linear:
    """K heads as one Linear(H -> K, no bias); row k ~ N(0, std²) from its own seed (seed, k).

    Head k's initialisation does not depend on K, so the first heads of a 10-head ensemble are those of a 5-head one.
    """
    heads = torch.nn.Linear(hidden_size, num_heads, bias=False)
    with torch.no_grad():
        for k in range(num_heads):
            heads.weight[k] = torch.randn(hidden_size, generator=seeded_generator(seed, k, INIT)) * std
    return heads


def head_order(num_pairs: int, config: HeadTrainingConfig) -> torch.Tensor:
    """(steps, K, batch_size) pair indices of every head at every step; depends only on (num_pairs, config)."""
    steps = num_steps(num_pairs, config.num_epochs, config.batch_size, config.max_steps)
    return sample_order(num_pairs, steps, config.batch_size, config.seed, config.num_heads, config.bootstrap)


def heads_on(features: torch.Tensor, heads: torch.nn.Linear) -> torch.Tensor:
    """r[b, k] = θ_k · features[k, b];  features (K, B, H) -> (B, K)."""
    return torch.einsum("kbh,kh->bk", features, heads.weight)


def train_heads_on_features(
    chosen_features: torch.Tensor, rejected_features: torch.Tensor, config: HeadTrainingConfig
) -> tuple[torch.nn.Linear, TrainingHistory]:
    """Train K heads on cached last-token features of the frozen backbone.

    Args:
        chosen_features: (N, H) h_T of each pair's chosen sequence (``last_token_features``).
        rejected_features: (N, H) h_T of each pair's rejected sequence.

    Returns:
        The heads (Linear H -> K, float32) and the per-step loss history (steps, K).
    """
    if chosen_features.dim() != 2 or chosen_features.shape != rejected_features.shape:
        raise ValueError(
            f"chosen and rejected features must both be (N, H), got {tuple(chosen_features.shape)} "
            f"and {tuple(rejected_features.shape)}"
        )
    chosen_features, rejected_features = chosen_features.float(), rejected_features.float()
    heads = init_heads(chosen_features.shape[1], config.num_heads, config.seed, config.init_std)
    heads = heads.to(chosen_features.device)

    def rewards(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        indices = indices.to(chosen_features.device)
        if not config.bootstrap:  # every head scores the same pairs: one gather, one (B, H) x (H, K) product
            rows = indices[0]
            return chosen_features[rows] @ heads.weight.T, rejected_features[rows] @ heads.weight.T
        return heads_on(chosen_features[indices], heads), heads_on(rejected_features[indices], heads)

    history = optimise(heads, rewards, head_order(chosen_features.shape[0], config), config, "reward heads")
    return heads, history


def set_score_heads(model: torch.nn.Module, heads: torch.nn.Linear) -> None:
    """Write K trained heads into ``model.score`` (resized to K outputs if needed) and label them head_0..K-1."""
    score = score_layer_of(model)
    num_heads, hidden_size = heads.weight.shape
    if hidden_size != score.in_features:
        raise ValueError(f"heads read {hidden_size} features but the model's score layer reads {score.in_features}")
    if score.out_features != num_heads:
        weight = score.weight
        score = torch.nn.Linear(
            hidden_size, num_heads, bias=score.bias is not None, device=weight.device, dtype=weight.dtype
        )
        model.score = score
    with torch.no_grad():
        score.weight.copy_(heads.weight)
        if score.bias is not None:
            score.bias.copy_(heads.bias if heads.bias is not None else torch.zeros(num_heads))
    model.config.id2label = {k: f"head_{k}" for k in range(num_heads)}
    model.config.label2id = {f"head_{k}": k for k in range(num_heads)}
    model.num_labels = num_heads


def train_stage2(
    model: torch.nn.Module, encoded: Mapping[str, Mapping[str, torch.Tensor]], config: HeadTrainingConfig
) -> TrainingHistory:
    """Stage 2 end to end: cache h_T of every chosen/rejected sequence, train K heads, write them into ``model``.

    Args:
        encoded: ``encode_pairs`` output, ``{"chosen": {"input_ids", "attention_mask"}, "rejected": {...}}``.
    """
    feats = {
        side: last_token_features(model, batch["input_ids"], batch["attention_mask"], config.feature_batch_size)
        for side, batch in encoded.items()
    }
    heads, history = train_heads_on_features(feats["chosen"], feats["rejected"], config)
    set_score_heads(model, heads)
    return history
