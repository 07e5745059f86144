"""The optimisation both reward-model stages share: seeds, the seeded pair order, AdamW with its schedule, the
loop on Σ_k BT(θ_k) with early stopping and a progress bar, and the fields (and checks) of both stages' configs.

Stage 2 (``heads``) trains K heads with it; stage 1 runs on TRL's ``RewardTrainer`` with the same config base and
seeds (``reference`` keeps stage 1's plain loop on this one).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm
from transformers import get_scheduler

from verl_variance.reward_model.losses import ensemble_bradley_terry_loss

LR_SCHEDULERS = ("cosine", "constant")


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


def adamw(module: torch.nn.Module, config: OptimisationConfig, steps: int) -> tuple[torch.optim.AdamW, LambdaLR]:
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
    config: OptimisationConfig,
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
    module: torch.nn.Module, rewards: RewardFn, order: torch.Tensor, config: OptimisationConfig, desc: str
) -> TrainingHistory:
    """Single-process training: ``adamw`` on ``module``, then ``run_steps``."""
    return run_steps(*adamw(module, config, order.shape[0]), rewards, order, config, desc)


@dataclass
class OptimisationConfig:
    """The fields both stages share; each stage's config sets its paper table's defaults (Table 2, Table 4)."""

    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate (Tables 2 and 4: 1e-5)."})
    batch_size: int = field(default=32, metadata={"help": "Pairs per optimiser step (Tables 2 and 4: 32)."})
    num_epochs: float = field(default=1.0, metadata={"help": "Passes over the pairs."})
    max_steps: int | None = field(default=None, metadata={"help": "If set, overrides num_epochs."})
    weight_decay: float = field(default=0.001, metadata={"help": "AdamW weight decay (Tables 2 and 4: 0.001)."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "cosine (Tables 2 and 4) or constant."})
    target_loss: float | None = field(default=None, metadata={"help": "Early stop below this running loss."})
    loss_window: int = field(default=20, metadata={"help": "Steps averaged into the running loss."})
    seed: int = field(default=0, metadata={"help": "Seeds the pair order and the heads' init."})
    show_progress: bool | None = field(default=None, metadata={"help": "tqdm bar; null: only on a terminal."})

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not self.learning_rate > 0:
            raise ValueError(f"{name}.learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"{name}.weight_decay must be >= 0, got {self.weight_decay}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"{name}.lr_scheduler={self.lr_scheduler!r}; valid: {list(LR_SCHEDULERS)}")
        if self.target_loss is not None and not self.target_loss > 0:
            raise ValueError(f"{name}.target_loss must be > 0 or null (no early stop), got {self.target_loss}")
        if self.loss_window < 1:
            raise ValueError(f"{name}.loss_window must be >= 1, got {self.loss_window}")
        if self.batch_size < 1:
            raise ValueError(f"{name}.batch_size must be >= 1, got {self.batch_size}")
        if not self.num_epochs > 0:
            raise ValueError(f"{name}.num_epochs must be > 0, got {self.num_epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"{name}.max_steps must be >= 1 or null, got {self.max_steps}")
        if self.seed < 0:
            raise ValueError(f"{name}.seed must be >= 0, got {self.seed}")
