"""Stage 1 on TRL's RewardTrainer: the plain loop's results, the paper's early stop, checkpoints and resume, bf16
and gradient checkpointing, gradient accumulation, trackers."""

import copy
import json
import logging
from dataclasses import asdict, replace

import pytest
import torch
import wandb

from tests.reward_model.conftest import load
from tests.reward_model.synthetic import synthetic_pairs
from verl_variance.reward_model.checkpoint import load_ensemble
from verl_variance.reward_model.data import encode_pairs
from verl_variance.reward_model.features import head_rewards
from verl_variance.reward_model.heads import HeadTrainingConfig
from verl_variance.reward_model.reference import train_stage1_reference
from verl_variance.reward_model.stage1 import Stage1Config, loss_history, train_stage1
from verl_variance.reward_model.train import TrainRMConfig, run_train_rm, running_loss

QUIET = {"logger": [], "save_steps": 0, "show_progress": False}
CONFIG = Stage1Config(learning_rate=1e-3, batch_size=16, lr_scheduler="constant", target_loss=None, **QUIET)


@pytest.fixture(scope="module")
def pairs(tiny_rm):
    _, tokenizer = load(tiny_rm(1))
    train, test = synthetic_pairs(480, seed=0), synthetic_pairs(300, seed=100)
    return {"train": encode_pairs(train, tokenizer, 64), "test": encode_pairs(test, tokenizer, 64), "raw": train}


def accuracy(model, encoded) -> float:
    chosen, rejected = (head_rewards(model, **encoded[side], batch_size=300)[:, 0] for side in ("chosen", "rejected"))
    return float((chosen > rejected).float().mean())


def test_trl_stage1_learns_what_the_reference_loop_learns(tiny_rm, pairs, tmp_path):
    """Same pairs, seed and Table-2 optimisation, 2 epochs (60 steps): the two trainers visit the pairs in different
    orders (TRL's sampler vs our seeded passes), so the curves are not equal, but they have the same shape and the
    held-out accuracy agrees within 0.1 (measured over seeds 0-2: differences 0.01-0.08, both 0.87-0.95)."""
    model, tokenizer = load(tiny_rm(1))
    config = replace(CONFIG, num_epochs=2)
    reference_model, trl_model = copy.deepcopy(model), copy.deepcopy(model)
    reference = train_stage1_reference(reference_model, pairs["train"], config)
    result = train_stage1(trl_model, tokenizer, pairs["train"], config, tmp_path / "checkpoints")
    assert result.history.loss.shape == reference.loss.shape == (60, 1)

    ours, trl = accuracy(reference_model, pairs["test"]), accuracy(result.trainer.model.eval(), pairs["test"])
    assert min(ours, trl) > 0.85 and abs(ours - trl) <= 0.1, (ours, trl)
    for history in (reference, result.history):  # each epoch: the second half of the loss of the first
        first, second = history.loss[:30].mean(), history.loss[30:].mean()
        assert second < 0.5 * first and 0.45 < first < 0.65
    smooth = torch.stack([running_loss(h.loss, 10)[:, 0] for h in (reference, result.history)])
    assert torch.corrcoef(smooth)[0, 1] > 0.9 and (smooth[0] - smooth[1]).abs().mean() < 0.06


def test_the_early_stop_fires_at_the_threshold(tiny_rm, pairs, tmp_path):
    model, tokenizer = load(tiny_rm(1))
    config = replace(CONFIG, max_steps=60, target_loss=0.5, loss_window=5)
    result = train_stage1(model, tokenizer, pairs["train"], config, tmp_path)
    loss = result.history.loss[:, 0]
    windows = torch.stack([loss[t - 4 : t + 1].mean() for t in range(4, len(loss))])  # steps 5 .. stop
    assert result.history.stopped_early and len(loss) < 60
    assert windows[-1] < 0.5 and bool((windows[:-1] >= 0.5).all())  # the first step whose window is below 0.5


def test_gradient_accumulation_takes_the_steps_of_the_whole_batch(tiny_rm, pairs, tmp_path):
    """batch 16 as 4 micro-batches of 4 pairs: the same optimiser steps as one micro-batch of 16."""
    model, tokenizer = load(tiny_rm(1))
    runs = {}
    for micro in (16, 4):
        config = replace(CONFIG, max_steps=6, micro_batch_size_per_device=micro)
        runs[micro] = train_stage1(copy.deepcopy(model), tokenizer, pairs["train"], config, tmp_path / str(micro))
    args = runs[4].trainer.args
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 4)
    torch.testing.assert_close(runs[4].history.loss, runs[16].history.loss, atol=2e-4, rtol=0)
    for name, value in runs[16].trainer.model.state_dict().items():
        torch.testing.assert_close(runs[4].trainer.model.state_dict()[name], value, atol=1e-4, rtol=1e-3)


def test_bf16_and_gradient_checkpointing_reach_the_model(tiny_rm, pairs, tmp_path):
    model, tokenizer = load(tiny_rm(1))
    dtypes, checkpointed = set(), []

    def record(module, inputs, output):
        if module.training:
            dtypes.add(output.dtype)
            checkpointed.append(model.model.is_gradient_checkpointing)

    model.model.layers[0].mlp.down_proj.register_forward_hook(record)
    config = replace(CONFIG, max_steps=2, bf16=True, gradient_checkpointing=True)
    result = train_stage1(model, tokenizer, pairs["train"], config, tmp_path)
    assert result.trainer.args.bf16 and result.trainer.accelerator.mixed_precision == "bf16"
    assert dtypes == {torch.bfloat16} and checkpointed and all(checkpointed)  # autocast matmuls, recomputed blocks
    assert next(model.parameters()).dtype == torch.float32  # fp32 master weights
    assert torch.isfinite(result.history.loss).all()
    without = train_stage1(load(tiny_rm(1))[0], tokenizer, pairs["train"], replace(CONFIG, max_steps=1), tmp_path)
    assert not without.trainer.model.model.is_gradient_checkpointing


def test_console_and_tensorboard_trackers(tiny_rm, pairs, tmp_path, capsys, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_DIR", str(tmp_path / "tb"))
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    model, tokenizer = load(tiny_rm(1))
    config = replace(CONFIG, max_steps=3, logger=["console", "tensorboard"])
    result = train_stage1(model, tokenizer, pairs["train"], config, tmp_path / "checkpoints")
    lines = [line for line in capsys.readouterr().out.splitlines() if "step:" in line]
    assert [line.split(" - ")[0] for line in lines] == [f"reward model (stage 1) step:{t}/3" for t in (1, 2, 3)]
    assert all(" - loss:" in line and " - accuracy:" in line for line in lines)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    logged = [event.value for event in events.Scalars("train/loss")]
    torch.testing.assert_close(torch.tensor(logged), result.history.loss[:, 0], atol=1e-6, rtol=0)


def test_loss_history_reads_one_loss_per_step_in_step_order():
    log = [{"loss": 0.6, "step": 2}, {"train_runtime": 1.0, "step": 2}, {"loss": 0.7, "step": 1}]
    assert torch.equal(loss_history(log), torch.tensor([[0.7], [0.6]]))


@pytest.mark.parametrize(
    ("changes", "processes", "expected"),
    [({}, 1, (32, 1)), ({}, 4, (8, 1)), ({"micro_batch_size_per_device": 1}, 4, (1, 8))],
)
def test_the_global_batch_splits_into_micro_batches_and_accumulation(changes, processes, expected):
    assert Stage1Config(**changes).accumulation(processes) == expected


def test_a_global_batch_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match=r"batch_size=32 is the global batch .* over 3 processes: .*multiple of 3$"):
        Stage1Config().accumulation(3)
    with pytest.raises(ValueError, match=r"multiple of micro_batch_size_per_device \(3\) x 2 processes: .* of 6 or"):
        Stage1Config(micro_batch_size_per_device=3).accumulation(2)
    with pytest.raises(ValueError, match=r"logger has \['mlflow'\]; valid: \['console', 'tensorboard', 'wandb'\]"):
        Stage1Config(logger=["console", "mlflow"])


def write_pairs(path, pairs):
    path.write_text("".join(json.dumps(asdict(pair)) + "\n" for pair in pairs))
    return str(path)


def test_an_interrupted_stage1_resumes_from_its_last_checkpoint(tiny_rm, pairs, tmp_path, monkeypatch, caplog):
    """Checkpoints every 3 steps; a crash in step 5 leaves checkpoint-3; the rerun trains steps 4-8 only, and ends
    where an uninterrupted run ends."""
    from trl import RewardTrainer

    train = write_pairs(tmp_path / "train.jsonl", pairs["raw"][:160])
    stage1 = replace(CONFIG, max_steps=8, save_steps=3, lr_scheduler="cosine")
    stage2 = HeadTrainingConfig(num_heads=2, max_steps=2, learning_rate=1e-2, target_loss=None)

    def config(out):
        return TrainRMConfig(str(tiny_rm(1)), [train], output_dir=str(out), max_length=64, stage1=stage1, stage2=stage2)

    steps_run = []
    original = RewardTrainer.training_step

    def crash_in_step_5(self, *args, **kwargs):
        if self.state.global_step == 4:
            raise RuntimeError("node lost")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RewardTrainer, "training_step", crash_in_step_5)
    with pytest.raises(RuntimeError, match="node lost"):
        run_train_rm(config(tmp_path / "out"))
    checkpoints = tmp_path / "out" / "checkpoints" / "stage1"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (tmp_path / "out" / "stage1").exists()

    def count(self, *args, **kwargs):
        steps_run.append(self.state.global_step + 1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RewardTrainer, "training_step", count)
    with caplog.at_level(logging.INFO, logger="verl_variance.reward_model.stage1"):
        assert run_train_rm(config(tmp_path / "out"))["trained"] == ["stage1", "stage2"]
    assert steps_run == [4, 5, 6, 7, 8] and "stage 1 resumes from" in caplog.text and "checkpoint-3" in caplog.text
    resumed, _, record = load_ensemble(tmp_path / "out" / "stage1")
    assert record["resumed_from"] == "checkpoint-3" and record["steps"] == 8 and not checkpoints.exists()

    monkeypatch.setattr(RewardTrainer, "training_step", original)
    run_train_rm(config(tmp_path / "whole"))
    whole, _, whole_record = load_ensemble(tmp_path / "whole" / "stage1")
    history = [json.loads((tmp_path / run / "history.json").read_text())["stage1"]["loss"] for run in ("out", "whole")]
    torch.testing.assert_close(torch.tensor(history[0]), torch.tensor(history[1]), atol=1e-4, rtol=0)
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, atol=1e-5, rtol=1e-4)
    assert whole_record["resumed_from"] is None


def test_checkpoints_of_another_config_are_not_resumed(tiny_rm, pairs, tmp_path):
    train = write_pairs(tmp_path / "train.jsonl", pairs["raw"][:32])
    out = tmp_path / "out"
    (out / "checkpoints" / "stage1").mkdir(parents=True)
    record = {"stage": 1, "stage1": {"learning_rate": 0.5}}
    (out / "checkpoints" / "stage1" / "record.json").write_text(json.dumps(record))
    config = TrainRMConfig(str(tiny_rm(1)), [train], output_dir=str(out), max_length=64, stage1=CONFIG)
    with pytest.raises(ValueError, match=r"holds an interrupted stage 1 trained differently: .*learning_rate: 0.5 -> "):
        run_train_rm(config)


def test_wandb_tracker_logs_the_run_under_verls_project_and_experiment_names(tiny_rm, pairs, tmp_path, monkeypatch):
    """Offline wandb (no account, no network): the run is named by project_name/experiment_name and logs the loss."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    model, tokenizer = load(tiny_rm(1))
    config = replace(CONFIG, max_steps=2, logger=["wandb"], project_name="rm_project_x", experiment_name="stage1_run_y")
    train_stage1(model, tokenizer, pairs["train"], config, tmp_path / "checkpoints")
    wandb.teardown()  # stopping wandb's service flushes the run's log file (CI once read it half-written)
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    record = runs[0].read_bytes()  # wandb's binary log: the names and metric keys are stored as text
    assert b"rm_project_x" in record and b"stage1_run_y" in record and b"train/loss" in record


@pytest.mark.parametrize(("version", "columns"), [("0.27.0", ["chosen_input_ids", "rejected_input_ids"]),
                                                  ("0.28.1", ["chosen_input_ids", "rejected_input_ids"]),
                                                  ("0.29.0.dev0", ["chosen_ids", "rejected_ids"]),
                                                  ("1.12.0", ["chosen_ids", "rejected_ids"])])  # fmt: skip
def test_pairs_reach_trl_under_the_column_names_of_its_version(monkeypatch, version, columns):
    """verl 0.9.1's fsdp/megatron extras pin TRL 0.27, whose RewardTrainer reads pre-tokenised pairs from
    chosen_input_ids/rejected_input_ids (it would tokenise a 'chosen' text column otherwise); TRL >= 0.29 reads
    chosen_ids/rejected_ids. The same unpadded ids go under either name (run under both TRLs: 142 tests pass)."""
    import torch
    import trl

    from verl_variance.reward_model.stage1 import pair_dataset

    monkeypatch.setattr(trl, "__version__", version)
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = (ids != 0).long()
    dataset = pair_dataset({"chosen": {"input_ids": ids, "attention_mask": mask},
                            "rejected": {"input_ids": ids.flip(0), "attention_mask": mask.flip(0)}})  # fmt: skip
    assert dataset.column_names == columns
    assert dataset[columns[0]] == [[5, 6, 7], [8, 9]] and dataset[columns[1]] == [[8, 9], [5, 6, 7]]
