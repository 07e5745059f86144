"""Stage 1: full fine-tune of one reward model with the Bradley–Terry loss (Banerjee & Gopalan, Appendix 7).

The backbone and its scalar head are trained together until the running loss dips below 0.4
(Section 7, Figure 8a; the text also says 0.3); stage 2 then freezes this backbone. The paper trained
Gemma-2B for 51 h on 4 GPUs, so this stage runs on TRL's ``RewardTrainer`` (the field's trainer for such
models): one process or many (``accelerate launch``: DDP, FSDP, DeepSpeed), bf16, gradient checkpointing,
gradient accumulation, checkpoints every ``save_steps`` with mid-stage resume, and the trackers of verl's
``trainer.logger`` (console, tensorboard, wandb). ``reference.train_stage1_reference`` is the plain
single-process loop it replaced, kept as the reference the tests and the benchmark compare it with.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import torch

from verl_variance.core.config import from_mapping
from verl_variance.reward_model.optimisation import OptimisationConfig, TrainingHistory, show_progress

if TYPE_CHECKING:
    from accelerate import PartialState
    from transformers import TrainerCallback

logger = logging.getLogger(__name__)

STAGE1_DESC = "reward model (stage 1)"
LOGGERS = ("console", "tensorboard", "wandb")
CONSOLE_KEYS = ("loss", "accuracy", "margin", "grad_norm", "learning_rate", "epoch")
"""Trackers, named as in verl's ``trainer.logger``; tensorboard and wandb go through transformers' integrations."""


@dataclass
class Stage1Config(OptimisationConfig):
    """Single reward model fine-tune (defaults: Banerjee & Gopalan, Appendix 7, Table 2).

    ``batch_size`` is the global batch of pairs per optimiser step; each device runs
    ``micro_batch_size_per_device`` pairs per forward pass and accumulates gradients over
    ``batch_size / (micro_batch_size_per_device × devices)`` of them.
    """

    batch_size: int = field(default=32, metadata={"help": "Pairs per optimiser step, all devices (Table 2: 32)."})
    num_epochs: float = field(default=1.0, metadata={"help": "Passes over the pairs (Table 2: 1)."})
    target_loss: float | None = field(
        default=0.4, metadata={"help": "Early stop below this running loss (Section 7: 0.4; text: 0.3)."}
    )
    seed: int = field(default=0, metadata={"help": "Seeds the pair order and the score head's init."})
    micro_batch_size_per_device: int | None = field(
        default=None,
        metadata={"help": "Pairs per forward pass per device (rest: gradient accumulation); null: batch / devices."},
    )
    optim: str = field(
        default="adamw_torch",
        metadata={"help": "transformers optimiser name (Table 2: paged AdamW 32-bit = paged_adamw_32bit, GPU)."},
    )
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (fp32 master weights)."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass (memory for ~30% time)."}
    )
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every N optimiser steps (0: never)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (the newest)."})
    logger: list[str] = field(
        default_factory=lambda: ["console"], metadata={"help": "Trackers, as verl's trainer.logger: " + str(LOGGERS)}
    )
    project_name: str = field(default="verl_variance_rm", metadata={"help": "wandb project (verl's project_name)."})
    experiment_name: str = field(default="stage1", metadata={"help": "wandb run name (verl's experiment_name)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.logger, str):
            self.logger = [self.logger]
        self.logger = list(self.logger)
        if self.save_total_limit < 1:
            raise ValueError(f"Stage1Config.save_total_limit must be >= 1, got {self.save_total_limit}")
        if self.micro_batch_size_per_device is not None and self.micro_batch_size_per_device < 1:
            raise ValueError(f"Stage1Config.micro_batch_size_per_device must be >= 1 or null, got "
                             f"{self.micro_batch_size_per_device}")  # fmt: skip
        if self.save_steps < 0:
            raise ValueError(f"Stage1Config.save_steps must be >= 0, got {self.save_steps}")
        unknown = sorted(set(self.logger) - set(LOGGERS))
        if unknown:
            raise ValueError(f"Stage1Config.logger has {unknown}; valid: {list(LOGGERS)}")

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any] | None) -> Stage1Config:
        """Build from a mapping, failing on unknown keys with the list of valid ones."""
        return from_mapping(cls, mapping, where="the stage-1 config")

    def accumulation(self, num_processes: int) -> tuple[int, int]:
        """``(micro batch per device, gradient accumulation steps)`` that make ``batch_size`` on ``num_processes``.

        Raises:
            ValueError: the global batch does not split evenly; the message gives the values that would.
        """
        where = f"Stage1Config.batch_size={self.batch_size} is the global batch (Table 2: 32) and"
        if self.micro_batch_size_per_device is None:
            if self.batch_size % num_processes:
                raise ValueError(f"{where} must split evenly over {num_processes} processes: set stage1.batch_size "
                                 f"to a multiple of {num_processes}")  # fmt: skip
            return self.batch_size // num_processes, 1
        micro = self.micro_batch_size_per_device
        if self.batch_size % (micro * num_processes):
            raise ValueError(
                f"{where} must be a multiple of micro_batch_size_per_device ({micro}) x {num_processes} processes: "
                f"set stage1.batch_size to a multiple of {micro * num_processes} or change "
                "stage1.micro_batch_size_per_device"
            )
        return micro, self.batch_size // (micro * num_processes)


def pair_dataset(encoded: Mapping[str, Mapping[str, torch.Tensor]]):
    """TRL's tokenised preference layout (``chosen_ids``, ``rejected_ids``: unpadded id lists) of ``encode_pairs``
    output, so both trainers read exactly the same tokens (the chat template and truncation are ours). TRL < 0.29
    (verl 0.9.1's fsdp/megatron extras pin 0.27) names them ``chosen_input_ids``, ``rejected_input_ids``."""
    import trl
    from datasets import Dataset
    from packaging.version import Version

    suffix = "ids" if Version(trl.__version__).release >= (0, 29) else "input_ids"

    def rows(side: str) -> list[list[int]]:
        ids, mask = encoded[side]["input_ids"], encoded[side]["attention_mask"]
        return [row[: int(length)].tolist() for row, length in zip(ids, mask.sum(dim=1), strict=True)]

    return Dataset.from_dict({f"chosen_{suffix}": rows("chosen"), f"rejected_{suffix}": rows("rejected")})


def loss_history(log_history: list[dict[str, Any]]) -> torch.Tensor:
    """(steps, 1) BT loss per optimiser step from a ``TrainerState.log_history`` logged every step (resumed runs
    included: a checkpoint's state holds the steps before it)."""
    by_step = {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry}
    return torch.tensor([by_step[step] for step in sorted(by_step)], dtype=torch.float32)[:, None]


def trainer_callbacks(config: Stage1Config) -> list[TrainerCallback]:
    """The paper's running-loss early stop and verl's console line, as ``TrainerCallback``s."""
    from transformers import TrainerCallback

    class RunningLossEarlyStop(TrainerCallback):
        """Stop once the mean BT loss of the last ``loss_window`` steps is below ``target_loss`` (Section 7).

        Every process sees the same logged loss (the Trainer averages it over processes), so all stop together;
        a resumed run rebuilds its window from the checkpoint's log history.
        """

        def __init__(self) -> None:
            self.losses: list[float] = []
            self.stopped_early = False

        def on_train_begin(self, args, state, control, **kwargs):
            self.losses = loss_history(state.log_history)[:, 0].tolist()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if config.target_loss is None or "loss" not in (logs or {}):
                return
            self.losses.append(float(logs["loss"]))
            window = self.losses[-config.loss_window :]
            if len(window) == config.loss_window and sum(window) / len(window) < config.target_loss:
                self.stopped_early = control.should_training_stop = True

    class ConsoleLogger(TrainerCallback):
        """verl's console tracker: ``step:<n> - key:value - ...`` once per logged step, on the main process."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and "loss" in (logs or {}):
                values = " - ".join(f"{key}:{logs[key]:.4g}" for key in CONSOLE_KEYS if key in logs)
                print(f"{STAGE1_DESC} step:{state.global_step}/{state.max_steps} - {values}", flush=True)

    return [RunningLossEarlyStop(), *([ConsoleLogger()] if "console" in config.logger else [])]


def reward_config(config: Stage1Config, output_dir: str | os.PathLike, num_processes: int):
    """TRL's ``RewardConfig`` of a stage-1 config: Table 2's optimisation, our batch split, checkpoints, trackers."""
    from trl import RewardConfig

    micro, accumulation = config.accumulation(num_processes)
    report_to = [name for name in config.logger if name != "console"] or "none"
    return RewardConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps or -1,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=0,
        optim=config.optim,
        bf16=config.bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=1,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        report_to=report_to,
        run_name=config.experiment_name,
        seed=config.seed,
        data_seed=config.seed,
        disable_tqdm=not show_progress(config.show_progress),
        max_length=None,  # encode_pairs already truncated (and warned); TRL would drop long pairs instead
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
    )


def tracker_env(config: Stage1Config) -> dict[str, str]:
    """Where transformers' trackers write, by verl's conventions: wandb project ``project_name``; tensorboard in
    ``$TENSORBOARD_DIR``, else ``tensorboard_log/<project_name>/<experiment_name>`` (``TENSORBOARD_LOGGING_DIR``,
    transformers' own variable, wins when set)."""
    default = Path("tensorboard_log", config.project_name, config.experiment_name)
    tensorboard = os.environ.get("TENSORBOARD_LOGGING_DIR") or os.environ.get("TENSORBOARD_DIR") or str(default)
    wandb = os.environ.get("WANDB_PROJECT", config.project_name)
    return {"WANDB_PROJECT": wandb, "TENSORBOARD_LOGGING_DIR": tensorboard}


def process_state() -> PartialState:
    """accelerate's state of this process (the one the Trainer also uses): the GPU when one is visible, else the CPU
    (gloo when launched by torchrun).

    Raises:
        ValueError: the launcher started several processes (``WORLD_SIZE``) but accelerate sees one.
    """
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise ValueError(
            f"WORLD_SIZE={launched} processes were launched but accelerate set up {state.num_processes}: launch with "
            "`accelerate launch --num_processes N` (GPUs) or `torchrun --nproc_per_node N` (GPUs or CPUs)"
        )
    return state


@dataclass
class Stage1Result:
    history: TrainingHistory
    trainer: Any  # the trl.RewardTrainer: its ``save_model`` gathers FSDP/ZeRO-3 shards


def train_stage1(
    model: torch.nn.Module,
    tokenizer,
    encoded: Mapping[str, Mapping[str, torch.Tensor]],
    config: Stage1Config,
    checkpoint_dir: str | os.PathLike,
    resume_from: str | os.PathLike | None = None,
) -> Stage1Result:
    """Fine-tune every parameter of ``model`` with BT on TRL's ``RewardTrainer``, in every process of a launch.

    Args:
        model: ``AutoModelForSequenceClassification`` with one label (TRL's reward model), unprepared.
        encoded: ``encode_pairs`` output, ``{"chosen": {"input_ids", "attention_mask"}, "rejected": {...}}``, (N, L),
            the same in every process (the Trainer's sampler gives each its share of every batch).
        checkpoint_dir: where ``checkpoint-<step>`` folders go (every ``config.save_steps`` steps).
        resume_from: a ``checkpoint-<step>`` folder to continue from (model, optimiser, schedule, RNG, data
            position and log history), or None to start from step 0.

    Returns:
        The per-step loss history (steps, 1), resumed steps included, and the trainer.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import RewardTrainer

    args = reward_config(config, checkpoint_dir, process_state().num_processes)
    callbacks = trainer_callbacks(config)
    with mock.patch.dict(os.environ, tracker_env(config)):
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=pair_dataset(encoded), processing_class=tokenizer, callbacks=callbacks
        )
        trainer.remove_callback(PrinterCallback)  # the console logger prints the metrics, verl's way
        if not args.disable_tqdm:  # keep the bar, without its dict print of every log
            trainer.remove_callback(ProgressCallback)
            trainer.add_callback(_quiet_progress())
        if resume_from is not None:
            logger.info("stage 1 resumes from %s", resume_from)
        trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))
    if "wandb" in config.logger and trainer.is_world_process_zero():  # transformers leaves the run open
        import wandb

        wandb.finish()
    history = TrainingHistory(loss_history(trainer.state.log_history), callbacks[0].stopped_early)
    return Stage1Result(history, trainer)


def _quiet_progress():
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    return QuietProgress()
