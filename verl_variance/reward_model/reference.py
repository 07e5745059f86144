"""The plain reference loops the tests and benchmarks compare the production paths with (not used in training).

- ``train_stage1_reference``: stage 1 as it ran before TRL's ``RewardTrainer``: one process, the seeded
  pair order of ``optimisation.sample_order``, AdamW on every weight (``tests/reward_model``,
  ``benchmarks/bench_stage1.py``).
- ``train_heads_uncached``: stage 2 running the frozen backbone at every step instead of on cached features
  (``tests/reward_model/test_heads.py``, ``benchmarks/bench_reward_model.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch

from verl_variance.reward_model.features import last_token_features, score_layer_of, trim_padding
from verl_variance.reward_model.heads import HeadTrainingConfig, head_order, heads_on, init_heads
from verl_variance.reward_model.optimisation import (
    RewardFn,
    TrainingHistory,
    derived_seed,
    num_steps,
    optimise,
    sample_order,
)
from verl_variance.reward_model.stage1 import STAGE1_DESC, Stage1Config


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
        return heads_on(features(chosen_batch, indices), heads), heads_on(features(rejected_batch, indices), heads)

    history = optimise(heads, rewards, head_order(num_pairs, config), config, "reward heads (uncached)")
    return heads, history


def _pair_rewards(model: torch.nn.Module, encoded: Mapping[str, Mapping[str, torch.Tensor]]) -> RewardFn:
    chosen, rejected = encoded["chosen"], encoded["rejected"]
    device = next(model.parameters()).device

    def logits(batch: Mapping[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        ids, mask = trim_padding(batch["input_ids"][rows], batch["attention_mask"][rows])
        return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()

    def rewards(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits(chosen, indices[0]), logits(rejected, indices[0])

    return rewards


@contextmanager
def _training(model: torch.nn.Module, seed: int) -> Iterator[None]:
    """Train mode with dropout seeded from ``seed`` (the caller's RNG state is restored); eval mode after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed))
        model.train()
        try:
            yield
        finally:
            model.eval()


def train_stage1_reference(
    model: torch.nn.Module, encoded: Mapping[str, Mapping[str, torch.Tensor]], config: Stage1Config
) -> TrainingHistory:
    """The pre-TRL stage 1: every parameter of ``model`` trained with BT in this process (fp32, whole batches).

    Reads Table 2's optimisation fields of ``config`` (lr, batch, epochs/steps, weight decay, schedule, early stop,
    seed); the TRL-only ones (micro batch, bf16, checkpointing, checkpoints, trackers) are ignored.

    Returns:
        The per-step loss history (steps, K). ``model`` is left in eval mode.
    """
    num_pairs = encoded["chosen"]["input_ids"].shape[0]
    steps = num_steps(num_pairs, config.num_epochs, config.batch_size, config.max_steps)
    order = sample_order(num_pairs, steps, config.batch_size, config.seed)
    with _training(model, config.seed):
        return optimise(model, _pair_rewards(model, encoded), order, config, STAGE1_DESC)
