"""``train-rm``: config, the two stages end to end, resuming, and errors that name the checkpoint and the fix."""

import json
import logging
import shutil
from dataclasses import asdict, replace

import pytest
import torch

from tests.reward_model.synthetic import synthetic_pairs
from verl_variance.reward_model.checkpoint import data_hash, load_backbone, load_ensemble
from verl_variance.reward_model.heads import HeadTrainingConfig
from verl_variance.reward_model.stage1 import Stage1Config
from verl_variance.reward_model.train import (
    TrainRMConfig,
    build_config,
    load_pairs,
    record_differences,
    run_train_rm,
    running_loss,
)

STAGE1 = Stage1Config(learning_rate=1e-3, batch_size=16, max_steps=20, lr_scheduler="constant", target_loss=None)
STAGE2 = HeadTrainingConfig(num_heads=3, learning_rate=1e-2, max_steps=30, target_loss=None, feature_batch_size=64)


def write_pairs(path, pairs):
    path.write_text("".join(json.dumps(asdict(pair)) + "\n" for pair in pairs))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_rm_data")
    return {
        "train": write_pairs(root / "train.jsonl", synthetic_pairs(160, seed=0)),
        "eval": write_pairs(root / "eval.jsonl", synthetic_pairs(48, seed=1)),
    }


def make_config(tiny_rm, data, output_dir, **changes) -> TrainRMConfig:
    config = TrainRMConfig(
        model_name_or_path=str(tiny_rm(1)),
        train_files=[data["train"]],
        eval_files=[data["eval"]],
        output_dir=str(output_dir),
        max_length=64,
        stage1=STAGE1,
        stage2=STAGE2,
    )
    return replace(config, **changes)


@pytest.fixture(scope="module")
def run(tiny_rm, data, tmp_path_factory):
    """One full run (stage 1: 20 steps, stage 2: 3 heads, 30 steps, eval) shared by the tests below."""
    config = make_config(tiny_rm, data, tmp_path_factory.mktemp("train_rm") / "out")
    return {"config": config, "summary": run_train_rm(config)}


@pytest.fixture
def copy_of_run(run, tmp_path):
    """A private copy of the run's output folder, to resume from."""
    shutil.copytree(run["config"].output_dir, tmp_path / "out")
    return tmp_path / "out"


def test_pipeline_writes_checkpoints_history_figures_and_eval(run, data):
    config, summary = run["config"], run["summary"]
    out = config.output_dir
    assert summary["trained"] == ["stage1", "stage2"] and summary["num_heads"] == 3
    history = json.loads(open(f"{out}/history.json").read())
    stage1_loss, stage2_loss = torch.tensor(history["stage1"]["loss"]), torch.tensor(history["stage2"]["loss"])
    assert stage1_loss.shape == (20, 1) and stage2_loss.shape == (30, 3)
    assert stage1_loss[-5:].mean() < stage1_loss[:5].mean() and stage2_loss[-5:].mean() < stage2_loss[:5].mean()

    digest = data_hash(load_pairs([data["train"]]))
    single, _, stage1_record = load_ensemble(f"{out}/stage1")
    ensemble, _, record = load_ensemble(f"{out}/ensemble", require_variance=True)
    assert (stage1_record["stage"], stage1_record["num_heads"], stage1_record["seeds"]) == (1, 1, [0])
    assert (record["stage"], record["num_heads"], record["seeds"]) == (2, 3, [0, 0])
    assert stage1_record["data_sha256"] == record["data_sha256"] == digest
    assert record["stage2"]["num_heads"] == 3 and record["stage1"]["learning_rate"] == 1e-3
    final = running_loss(stage2_loss, STAGE2.loss_window)[-1]
    assert record["final_loss"] == pytest.approx(final.tolist()) == summary["final_loss"]
    # stage 2 froze the stage-1 backbone: only the score layer differs
    single_weights, ensemble_weights = single.state_dict(), ensemble.state_dict()
    assert all(torch.equal(v, ensemble_weights[k]) for k, v in single_weights.items() if not k.startswith("score"))

    assert open(f"{out}/loss_curves.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    table = json.loads(open(f"{out}/eval/rewardbench.json").read())
    assert table["num_pairs"] == 48 and set(table["models"]) >= {"ensemble mean", "single model", "head_2"}
    assert summary["eval_accuracy"]["ensemble mean"] == table["models"]["ensemble mean"]["sections"]["All pairs"]
    assert summary["eval_accuracy"]["single model"] > 60  # 20 steps already rank most held-out pairs right


def test_stage_1_then_stage_2_is_the_run_in_one_go(run, data, tmp_path):
    """The recipe's two scripts: stage 1 alone (--stage 1), then stage 2 alone (--stage 2) with none of the stage-1
    settings repeated: the same checkpoints and records as one run of both stages."""
    out = tmp_path / "split"
    first = run_train_rm(make_config_like(run, out, stage=1, eval_files=[]))
    assert first["trained"] == ["stage1"] and first["num_heads"] is None and not (out / "ensemble").exists()
    second_config = make_config_like(run, out, stage=2, model_name_or_path="unused", stage1=Stage1Config())
    assert run_train_rm(second_config)["trained"] == ["stage2"]
    both = run["config"].output_dir
    for folder in ("stage1", "ensemble"):
        split_model, _, split_record = load_ensemble(out / folder)
        whole_model, _, whole_record = load_ensemble(f"{both}/{folder}")
        assert split_record == whole_record
        for name, value in whole_model.state_dict().items():
            torch.testing.assert_close(split_model.state_dict()[name], value, atol=0, rtol=0)
    history = json.loads((out / "history.json").read_text())
    assert history == json.loads(open(f"{both}/history.json").read())


def make_config_like(run, output_dir, **changes) -> TrainRMConfig:
    return replace(run["config"], output_dir=str(output_dir), **changes)


def test_stage_2_alone_needs_stage_1_of_the_same_data(run, data, tmp_path, copy_of_run):
    with pytest.raises(FileNotFoundError, match="stage=2 needs the stage-1 model, and .* has none: run stage 1 first"):
        run_train_rm(make_config_like(run, tmp_path / "empty", stage=2))
    other = write_pairs(tmp_path / "other.jsonl", synthetic_pairs(40, seed=5))
    with pytest.raises(ValueError, match="was trained with data_sha256=.* stage 2 trains on the stage-1 data"):
        run_train_rm(make_config_like(run, copy_of_run, stage=2, train_files=[other]))


def test_a_finished_run_is_not_retrained(run, copy_of_run, caplog):
    before = {
        f.name: f.stat().st_mtime_ns for folder in ("stage1", "ensemble") for f in (copy_of_run / folder).iterdir()
    }
    config = replace(run["config"], output_dir=str(copy_of_run), eval_files=[])
    with caplog.at_level(logging.INFO, logger="verl_variance.reward_model.train"):
        summary = run_train_rm(config)
    assert summary["trained"] == [] and summary["final_loss"] == run["summary"]["final_loss"]
    assert "matches the config and data: nothing to train" in caplog.text
    after = {
        f.name: f.stat().st_mtime_ns for folder in ("stage1", "ensemble") for f in (copy_of_run / folder).iterdir()
    }
    assert after == before


def test_new_heads_reuse_stage_1(run, copy_of_run, caplog):
    weights = (copy_of_run / "stage1" / "model.safetensors").read_bytes()
    old_history = json.loads((copy_of_run / "history.json").read_text())
    config = replace(run["config"], output_dir=str(copy_of_run), eval_files=[], stage2=replace(STAGE2, num_heads=4))
    with caplog.at_level(logging.INFO, logger="verl_variance.reward_model.train"):
        summary = run_train_rm(config)
    assert summary["trained"] == ["stage2"] and summary["num_heads"] == 4
    assert "stage 1 is not retrained" in caplog.text and "(stage2.num_heads: 3 -> 4): retraining stage 2" in caplog.text
    assert (copy_of_run / "stage1" / "model.safetensors").read_bytes() == weights
    assert load_ensemble(copy_of_run / "ensemble")[2]["num_heads"] == 4
    history = json.loads((copy_of_run / "history.json").read_text())
    assert history["stage1"] == old_history["stage1"] and torch.tensor(history["stage2"]["loss"]).shape == (30, 4)


def test_a_different_stage_1_is_refused(run, copy_of_run):
    config = replace(run["config"], output_dir=str(copy_of_run), stage1=replace(STAGE1, learning_rate=2e-3))
    with pytest.raises(ValueError, match="stage1 holds a stage-1 model trained differently") as error:
        run_train_rm(config)
    message = str(error.value)
    assert str(copy_of_run / "stage1") in message and "stage1.learning_rate: 0.001 -> 0.002" in message
    assert "--overwrite" in message


@pytest.mark.parametrize(
    ("folder", "damage", "problem"),
    [
        ("stage1", lambda p: (p / "ensemble.json").write_text("{trunc"), "ensemble.json is not valid JSON"),
        ("stage1", lambda p: (p / "ensemble.json").unlink(), "ensemble.json is missing"),
        ("ensemble", lambda p: (p / "model.safetensors").write_bytes(b"garbage"), "the weights do not load"),
    ],
    ids=["stage1-json", "stage1-interrupted", "ensemble-weights"],
)
def test_corrupt_checkpoints_name_the_path_and_the_fix(run, copy_of_run, folder, damage, problem):
    path = copy_of_run / folder
    damage(path)
    if folder == "stage1":
        shutil.rmtree(copy_of_run / "ensemble")  # stage 1 is read when the ensemble must be retrained
    config = replace(run["config"], output_dir=str(copy_of_run), eval_files=[])
    with pytest.raises(ValueError, match=problem) as error:
        run_train_rm(config)
    message = str(error.value)
    assert f"checkpoint: {path}" in message and "is corrupt or incomplete" in message
    assert f"fix: delete {path}" in message and "--overwrite" in message


def test_overwrite_retrains_a_corrupt_run(run, copy_of_run):
    (copy_of_run / "stage1" / "ensemble.json").write_text("{trunc")
    config = replace(run["config"], output_dir=str(copy_of_run), eval_files=[], overwrite=True)
    assert run_train_rm(config)["trained"] == ["stage1", "stage2"]
    assert load_ensemble(copy_of_run / "stage1")[2]["stage"] == 1


def test_skip_stage1_trains_heads_on_the_given_reward_model(run, data, tmp_path):
    out = tmp_path / "heads_only"
    stage1 = f"{run['config'].output_dir}/stage1"
    config = replace(run["config"], model_name_or_path=stage1, output_dir=str(out), skip_stage1=True)
    summary = run_train_rm(config)
    assert summary["trained"] == ["stage2"] and not (out / "stage1").exists()
    assert load_ensemble(out / "ensemble")[2]["stage1"] is None
    assert json.loads((out / "history.json").read_text())["stage1"] is None
    assert "single model" not in summary["eval_accuracy"] and summary["eval_accuracy"]["ensemble mean"] > 60


def test_config_defaults_follow_the_paper():
    config = TrainRMConfig(train_files=["pairs.jsonl"])
    assert config.model_name_or_path == "google/gemma-2b-it" and config.stage2.num_heads == 10
    assert (config.stage1.learning_rate, config.stage1.batch_size, config.stage1.num_epochs) == (1e-5, 32, 1.0)
    assert (config.stage2.num_epochs, config.stage2.target_loss, config.stage1.target_loss) == (0.5, 0.2, 0.4)
    assert config.seeds == [0, 0]


def test_build_config_reads_yaml_then_flags_then_overrides(tmp_path):
    file = tmp_path / "rm.yaml"
    file.write_text(
        "model_name_or_path: tiny\ntrain_files: [a.jsonl]\nmax_length: 128\n"
        "stage1:\n  learning_rate: 1e-5\n  batch_size: 8\nstage2:\n  num_heads: 5\n"
    )
    config = build_config(
        file,
        {"output_dir": "runs/x", "stage2.num_heads": 4, "stage1.seed": None},
        ["stage1.learning_rate=2e-4", "stage2.bootstrap=true", "eval_files=[b.jsonl, c.parquet]"],
    )
    assert config.train_files == ["a.jsonl"] and config.max_length == 128 and config.output_dir == "runs/x"
    assert config.stage1.learning_rate == 2e-4 and isinstance(config.stage1.learning_rate, float)
    assert config.stage1.batch_size == 8 and config.stage1.seed == 0
    assert config.stage2.num_heads == 4 and config.stage2.bootstrap is True
    assert config.eval_files == ["b.jsonl", "c.parquet"]
    assert build_config(file).stage1.learning_rate == 1e-5  # YAML reads 1e-5 as text: converted to float


@pytest.mark.parametrize(
    ("mapping", "overrides", "match"),
    [
        ({"train_files": ["a"], "lr": 1}, [], r"unknown key\(s\) \['lr'\] in the train-rm config; valid keys: \["),
        ({"train_files": ["a"], "stage1": {"lr": 1}}, [], r"unknown key\(s\) \[.lr.\] in the train-rm config \(stage1"),
        ({}, [], "TrainRMConfig.train_files is empty: pass --train-files"),
        ({"train_files": ["a"]}, ["stage3.seed=1"], r"unknown key\(s\) \['stage3'\] in the train-rm config; valid"),
        ({"train_files": "a.jsonl"}, [], r"train_files must be a list, e.g. train_files=\[a,b\]"),
        ({"train_files": ["a"]}, ["stage1.learning_rate"], "is not key=value"),
        ({"train_files": ["a"]}, ["stage1.learning_rate=fast"], "stage1.learning_rate: Value 'fast' .* to Float"),
        ({"train_files": ["a"]}, ["stage2.num_heads=1"], "an ensemble needs K >= 2 heads"),
        ({"train_files": ["a"]}, ["stage=3"], "TrainRMConfig.stage=3: use 1, 2 or null"),
        ({"train_files": ["a"], "skip_stage1": True}, ["stage=1"], "stage=1 with skip_stage1: there is nothing"),
    ],
)
def test_config_errors(tmp_path, mapping, overrides, match):
    file = tmp_path / "rm.json"
    file.write_text(json.dumps(mapping))
    with pytest.raises(ValueError, match=match):
        build_config(file, overrides=overrides)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file .*nowhere.yaml does not exist"):
        build_config(tmp_path / "nowhere.yaml")
    with pytest.raises(FileNotFoundError, match="gone.jsonl does not exist: prepare .* recipes/gemma_ensemble_rm/prep"):
        load_pairs([tmp_path / "gone.jsonl"])
    with pytest.raises(FileNotFoundError, match="backbone folder .*missing does not exist"):
        load_backbone(str(tmp_path / "missing"))


def test_record_differences_name_each_field():
    have = {"stage": 2, "stage2": {"num_heads": 3, "seed": 0}, "data_sha256": "a"}
    want = {"stage": 2, "stage2": {"num_heads": 4, "seed": 0}, "data_sha256": "b"}
    assert record_differences(have, want) == ["stage2.num_heads: 3 -> 4", "data_sha256: 'a' -> 'b'"]
    assert record_differences(want, want) == []


def test_running_loss_is_the_trailing_window_mean():
    loss = torch.rand(17, 3, generator=torch.Generator().manual_seed(0))
    expected = torch.stack([loss[max(0, t - 4) : t + 1].mean(dim=0) for t in range(17)])
    torch.testing.assert_close(running_loss(loss, 5), expected)
