"""Stage 2: K linear reward heads trained in parallel on a frozen backbone (Banerjee & Gopalan, Section 4).

loss = Σ_k BT(θ_k), θ_k = row k of one Linear(H -> K). Each head starts from its own seeded
initialisation and, with ``bootstrap``, sees its own resample of the pairs; the features h_T of the
frozen backbone are computed once (``train_heads_on_features``) or at every step
(``train_heads_uncached``, the slow reference). Both paths share the sampling order and the update,
so they produce the same heads. The seeded order and the AdamW loop are shared with stage 1's reference loop.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm
from transformers import get_scheduler

from verl_variance.core.config import from_mapping
from verl_variance.reward_model.features import last_token_features, score_layer_of
from verl_variance.reward_model.losses import ensemble_bradley_terry_loss

# Shared with stage 1: the seeded pair order and the AdamW loop on Σ_k BT(θ_k).

LR_SCHEDULERS = ("cosine", "constant")


class OptimConfig(Protocol):
    learning_rate: float
    weight_decay: float
    lr_scheduler: str
    target_loss: float | None
    loss_window: int
    show_progress: bool | None


@dataclass
class TrainingHistory:
    """Per-step losses of a reward-model training run."""

    loss: torch.Tensor  # (steps, K) Bradley–Terry loss of every head at every step
    stopped_early: bool  # every head's running loss went below target_loss

    @property
    def steps(self) -> int:
        return self.loss.shape[0]


def derived_seed(*keys: int) -> int:
    """An independent 32-bit seed for each key tuple, e.g. (seed, head, purpose)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def seeded_generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(*keys))


ORDER, BOOTSTRAP, INIT = 0, 1, 2
"""Purposes of derived seeds: the shared pair order, head k's bootstrap resample, head k's init."""


def num_steps(num_pairs: int, num_epochs: float, batch_size: int, max_steps: int | None = None) -> int:
    """⌈epochs · N / batch⌉ optimiser steps, or ``max_steps`` when given."""
    if max_steps is not None:
        return max_steps
    return max(1, math.ceil(num_epochs * num_pairs / batch_size))


def sample_order(
    num_pairs: int, steps: int, batch_size: int, seed: int, num_heads: int = 1, bootstrap: bool = False
) -> torch.Tensor:
    """Which pairs each head sees at each step; a function of its arguments only.

    Without ``bootstrap`` all heads see the same shuffled passes over the pairs; with it, head k draws
    its own dataset D_k of ``num_pairs`` pairs with replacement (seed (seed, k)) and walks shuffled passes
    over D_k, so pairs left out of D_k are never seen by head k.

    Returns:
        (steps, K, batch_size) long indices into the pairs; batches run on across pass boundaries.
    """
    if num_pairs < 1:
        raise ValueError("no preference pairs to train on")
    passes = math.ceil(steps * batch_size / num_pairs)

    def walk(dataset: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shuffled = [dataset[torch.randperm(num_pairs, generator=generator)] for _ in range(passes)]
        return torch.cat(shuffled)[: steps * batch_size].view(steps, batch_size)

    if not bootstrap:
        shared = walk(torch.arange(num_pairs), seeded_generator(seed, ORDER))
        return shared[:, None, :].expand(steps, num_heads, batch_size).contiguous()
    per_head = []
    for k in range(num_heads):
        generator = seeded_generator(seed, k, BOOTSTRAP)
        per_head.append(walk(torch.randint(num_pairs, (num_pairs,), generator=generator), generator))
    return torch.stack(per_head, dim=1)


RewardFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""indices (K, B) -> chosen and rejected rewards (B, K), head k scoring pairs indices[k]."""


def show_progress(setting: bool | None) -> bool:
    """A progress bar's ``show_progress`` setting: None shows it only when stderr is a terminal."""
    return sys.stderr.isatty() if setting is None else setting


def adamw(module: torch.nn.Module, config: OptimConfig, steps: int) -> tuple[torch.optim.AdamW, LambdaLR]:
    """AdamW on the trainable parameters of ``module`` and its learning-rate schedule over ``steps`` steps
    (transformers' ``get_scheduler``, no warm-up: cosine is lr · ½(1 + cos(π t / steps)))."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return optimizer, get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=0, num_training_steps=steps)


def run_steps(
    optimizer: torch.optim.Optimizer,
    schedule: LambdaLR,
    rewards: RewardFn,
    order: torch.Tensor,
    config: OptimConfig,
    desc: str,
) -> TrainingHistory:
    """Minimise loss = Σ_k BT(θ_k) over the steps of ``order``; stop once every head's running loss
    (mean of the last ``loss_window`` steps) is below ``target_loss``.

    Args:
        order: (steps, K, B) pair indices; step t calls ``rewards(order[t])``.
    """
    steps = order.shape[0]
    show = show_progress(config.show_progress)
    losses, stopped = [], False
    with tqdm(total=steps, desc=desc, disable=not show) as bar:
        for step in range(steps):
            chosen, rejected = rewards(order[step])
            total, per_head = ensemble_bradley_terry_loss(chosen, rejected)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            schedule.step()
            losses.append(per_head.detach().float().cpu())
            running = torch.stack(losses[-config.loss_window :]).mean(dim=0)
            bar.update(1)
            bar.set_postfix(loss=f"{float(running.mean()):.3f}", worst=f"{float(running.max()):.3f}")
            if config.target_loss is not None and len(losses) >= config.loss_window:
                if bool((running < config.target_loss).all()):
                    stopped = True
                    break
    return TrainingHistory(torch.stack(losses), stopped)


def optimise(
    module: torch.nn.Module, rewards: RewardFn, order: torch.Tensor, config: OptimConfig, desc: str
) -> TrainingHistory:
    """Single-process training: ``adamw`` on ``module``, then ``run_steps``."""
    return run_steps(*adamw(module, config, order.shape[0]), rewards, order, config, desc)


def check_optim_fields(config: OptimConfig, name: str) -> None:
    """Shared ``__post_init__`` checks; errors name the field."""
    if not config.learning_rate > 0:
        raise ValueError(f"{name}.learning_rate must be > 0, got {config.learning_rate}")
    if config.weight_decay < 0:
        raise ValueError(f"{name}.weight_decay must be >= 0, got {config.weight_decay}")
    if config.lr_scheduler not in LR_SCHEDULERS:
        raise ValueError(f"{name}.lr_scheduler={config.lr_scheduler!r}; valid: {list(LR_SCHEDULERS)}")
    if config.target_loss is not None and not config.target_loss > 0:
        raise ValueError(f"{name}.target_loss must be > 0 or null (no early stop), got {config.target_loss}")
    if config.loss_window < 1:
        raise ValueError(f"{name}.loss_window must be >= 1, got {config.loss_window}")


# Stage 2: K heads on a frozen backbone.


@dataclass
class HeadTrainingConfig:
    """Stage-2 head training (defaults: Banerjee & Gopalan, Appendix 7, Table 4, and Section 4)."""

    num_heads: int = field(default=10, metadata={"help": "K, the number of reward heads (paper: 10)."})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate (Table 4: 1e-5)."})
    batch_size: int = field(default=32, metadata={"help": "Pairs per step and head (Table 4: 32)."})
    num_epochs: float = field(default=0.5, metadata={"help": "Passes over the pairs (Table 4: 0.5)."})
    max_steps: int | None = field(default=None, metadata={"help": "If set, overrides num_epochs."})
    weight_decay: float = field(default=0.001, metadata={"help": "AdamW weight decay (Table 4: 0.001)."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "cosine (Table 4) or constant."})
    target_loss: float | None = field(
        default=0.2, metadata={"help": "Stop once every head's running loss is below it (Section 7: ~0.2)."}
    )
    loss_window: int = field(default=20, metadata={"help": "Steps averaged into the running loss."})
    bootstrap: bool = field(
        default=False, metadata={"help": "Each head trains on its own resample of the pairs (with replacement)."}
    )
    init_std: float = field(default=0.02, metadata={"help": "Std of each head's normal init (HF initializer_range)."})
    seed: int = field(default=0, metadata={"help": "Seeds head inits, bootstrap resamples and the pair order."})
    feature_batch_size: int = field(default=32, metadata={"help": "Sequences per frozen-backbone forward pass."})
    show_progress: bool | None = field(default=None, metadata={"help": "tqdm bar; null: only on a terminal."})

    def __post_init__(self) -> None:
        check_optim_fields(self, "HeadTrainingConfig")
        for name in ("num_heads", "batch_size", "feature_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"HeadTrainingConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.num_epochs > 0:
            raise ValueError(f"HeadTrainingConfig.num_epochs must be > 0, got {self.num_epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"HeadTrainingConfig.max_steps must be >= 1 or null, got {self.max_steps}")
        for name in ("init_std", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"HeadTrainingConfig.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any] | None) -> HeadTrainingConfig:
        """Build from a mapping, failing on unknown keys with the list of valid ones."""
        return from_mapping(cls, mapping, "the head training config")


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


def _heads_on(features: torch.Tensor, heads: torch.nn.Linear) -> torch.Tensor:
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
        return _heads_on(chosen_features[indices], heads), _heads_on(rejected_features[indices], heads)

    history = optimise(heads, rewards, head_order(chosen_features.shape[0], config), config, "reward heads")
    return heads, history


def train_heads_uncached(
    model: torch.nn.Module,
    chosen_batch: Mapping[str, torch.Tensor],
    rejected_batch: Mapping[str, torch.Tensor],
    config: HeadTrainingConfig,
) -> tuple[torch.nn.Linear, TrainingHistory]:
    """Same optimisation as ``train_heads_on_features``, running the frozen backbone at every step.

    Args:
        model: the sequence classifier whose body is frozen (its ``score`` layer is not used).
        chosen_batch: ``input_ids`` and ``attention_mask``, each (N, L), of the chosen sequences.
        rejected_batch: the same for the rejected sequences.

    Returns:
        The heads (Linear H -> K, float32) and the per-step loss history (steps, K).
    """
    num_pairs = chosen_batch["input_ids"].shape[0]
    heads = init_heads(score_layer_of(model).in_features, config.num_heads, config.seed, config.init_std)

    def features(batch: Mapping[str, torch.Tensor], indices: torch.Tensor) -> torch.Tensor:
        unique, inverse = torch.unique(indices, return_inverse=True)
        rows = batch["input_ids"][unique], batch["attention_mask"][unique]
        return last_token_features(model, *rows, config.feature_batch_size).float()[inverse]

    def rewards(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _heads_on(features(chosen_batch, indices), heads), _heads_on(features(rejected_batch, indices), heads)

    history = optimise(heads, rewards, head_order(num_pairs, config), config, "reward heads (uncached)")
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
