"""Stage 1: full fine-tune of one reward model with the Bradley–Terry loss (Banerjee & Gopalan, Appendix 7).

The backbone and its scalar head are trained together until the running loss dips below 0.4
(Section 7, Figure 8a; the text also says 0.3); stage 2 then freezes this backbone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from verl_variance.core.config import from_mapping
from verl_variance.reward_model.features import trim_padding
from verl_variance.reward_model.heads import (
    TrainingHistory,
    check_optim_fields,
    derived_seed,
    num_steps,
    optimise,
    sample_order,
)


@dataclass
class Stage1Config:
    """Single reward model fine-tune (defaults: Banerjee & Gopalan, Appendix 7, Table 2)."""

    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate (Table 2: 1e-5)."})
    batch_size: int = field(default=32, metadata={"help": "Pairs per step (Table 2: 32)."})
    num_epochs: float = field(default=1.0, metadata={"help": "Passes over the pairs (Table 2: 1)."})
    max_steps: int | None = field(default=None, metadata={"help": "If set, overrides num_epochs."})
    weight_decay: float = field(default=0.001, metadata={"help": "AdamW weight decay (Table 2: 0.001)."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "cosine (Table 2) or constant."})
    target_loss: float | None = field(
        default=0.4, metadata={"help": "Early stop below this running loss (Section 7: 0.4; text: 0.3)."}
    )
    loss_window: int = field(default=20, metadata={"help": "Steps averaged into the running loss."})
    seed: int = field(default=0, metadata={"help": "Seeds the pair order and dropout."})
    show_progress: bool | None = field(default=None, metadata={"help": "tqdm bar; null: only on a terminal."})

    def __post_init__(self) -> None:
        check_optim_fields(self, "Stage1Config")
        if self.batch_size < 1:
            raise ValueError(f"Stage1Config.batch_size must be >= 1, got {self.batch_size}")
        if not self.num_epochs > 0:
            raise ValueError(f"Stage1Config.num_epochs must be > 0, got {self.num_epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"Stage1Config.max_steps must be >= 1 or null, got {self.max_steps}")
        if self.seed < 0:
            raise ValueError(f"Stage1Config.seed must be >= 0, got {self.seed}")

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any] | None) -> Stage1Config:
        """Build from a mapping, failing on unknown keys with the list of valid ones."""
        return from_mapping(cls, mapping, "the stage-1 config")


def train_stage1(
    model: torch.nn.Module, encoded: Mapping[str, Mapping[str, torch.Tensor]], config: Stage1Config
) -> TrainingHistory:
    """Fine-tune every parameter of ``model`` (a sequence classifier) with BT on its heads' rewards.

    Args:
        model: ``AutoModelForSequenceClassification``; with K > 1 heads the loss is Σ_k BT(θ_k).
        encoded: ``encode_pairs`` output, ``{"chosen": {"input_ids", "attention_mask"}, "rejected": {...}}``, (N, L).

    Returns:
        The per-step loss history (steps, K). ``model`` is left in eval mode.
    """
    chosen, rejected = encoded["chosen"], encoded["rejected"]
    num_pairs = chosen["input_ids"].shape[0]
    steps = num_steps(num_pairs, config.num_epochs, config.batch_size, config.max_steps)
    order = sample_order(num_pairs, steps, config.batch_size, config.seed)
    device = next(model.parameters()).device

    def logits(batch: Mapping[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        ids, mask = trim_padding(batch["input_ids"][rows], batch["attention_mask"][rows])
        return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()

    def rewards(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits(chosen, indices[0]), logits(rejected, indices[0])

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derived_seed(config.seed))
        model.train()
        try:
            return optimise(model, rewards, order, config, "reward model (stage 1)")
        finally:
            model.eval()
