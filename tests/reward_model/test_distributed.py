"""Stage 1 on 2 CPU processes (torchrun, gloo, DDP through TRL's RewardTrainer): each process trains on
its own half of every global batch, and the result is the single-process one."""

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from tests.reward_model.conftest import load
from tests.reward_model.synthetic import synthetic_pairs
from verl_variance.reward_model.checkpoint import load_ensemble
from verl_variance.reward_model.data import encode_pairs
from verl_variance.reward_model.stage1 import Stage1Config, train_stage1

HARNESS = Path(__file__).with_name("distributed_train.py")
STAGE1 = Stage1Config(learning_rate=1e-3, batch_size=16, max_steps=6, lr_scheduler="constant", target_loss=None)


@pytest.mark.slow
def test_stage1_on_two_processes_shards_batches_and_matches_one_process(tiny_rm, tmp_path):
    train = tmp_path / "train.jsonl"
    pairs = synthetic_pairs(96, seed=0)
    train.write_text("".join(json.dumps(asdict(pair)) + "\n" for pair in pairs))
    overrides = [f"stage1.{key}={json.dumps(value)}" for key, value in asdict(STAGE1).items()]
    argv = ["train-rm", "--model", str(tiny_rm(1)), "--train-files", str(train), "--output-dir", str(tmp_path / "out")]
    argv += ["--num-heads", "2", "--max-length", "64", "--set", "stage2.max_steps=5", *overrides]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HARNESS)]
    env = {**os.environ, "SEEN_DIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(HARNESS.parents[2])}
    done = subprocess.run([*launch, *argv], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(done.stdout[done.stdout.index("{") :])["trained"] == ["stage1", "stage2"]  # main process only
    assert done.stdout.count("reward model (stage 1) step:") == 6  # the console line: the main process only

    seen = [json.loads((tmp_path / f"seen_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [len(rank) for rank in seen] == [6, 6]  # one forward pass per step: chosen + rejected of 8 pairs
    assert all(len(batch) == 16 for rank in seen for batch in rank)
    rows = [{tuple(row) for batch in rank for row in batch} for rank in seen]
    assert not rows[0] & rows[1]  # the two halves of every global batch are different pairs

    model, tokenizer = load(tiny_rm(1))  # one process, the whole batch at every step
    config = replace(STAGE1, logger=[], save_steps=0)
    result = train_stage1(model, tokenizer, encode_pairs(pairs, tokenizer, 64), config, tmp_path / "single")
    recorded = torch.tensor(json.loads((tmp_path / "out" / "history.json").read_text())["stage1"]["loss"])
    torch.testing.assert_close(recorded, result.history.loss, atol=2e-4, rtol=0)  # the losses averaged over ranks
    trained, _, record = load_ensemble(tmp_path / "out" / "stage1")
    for name, value in result.trainer.model.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[name], value, atol=1e-4, rtol=1e-3)
    assert record["stage"] == 1 and record["steps"] == 6
