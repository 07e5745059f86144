"""``verl-variance train-rm | score | analyze``: a tiny workflow on the command line; exit code 2 on bad input."""

import json
import logging
from dataclasses import asdict

import pandas as pd
import pytest

from tests.reward_model.synthetic import synthetic_pairs
from verl_variance.cli import build_parser, main
from verl_variance.reward_model.checkpoint import load_ensemble


@pytest.fixture(scope="module")
def trained(tiny_rm, tmp_path_factory):
    """``verl-variance train-rm`` on 96 synthetic pairs: stage 1 for 6 steps, then 2 heads for 10 steps."""
    root = tmp_path_factory.mktemp("cli")
    train = root / "train.jsonl"
    rows = [
        {**asdict(pair), "subset": "alpacaeval-easy" if i % 2 else "hep-go"}
        for i, pair in enumerate(synthetic_pairs(96, seed=0))
    ]
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["train-rm", "--model", str(tiny_rm(1)), "--train-files", str(train), "--output-dir", str(root / "out")]
    argv += ["--num-heads", "2", "--max-length", "64", "--seed", "1"]
    argv += ["--set", "stage1.max_steps=6", "stage1.batch_size=16", "stage1.learning_rate=1e-3", "stage2.max_steps=10"]
    assert main(argv) == 0
    return {"root": root, "train": train, "argv": argv, "ensemble": root / "out" / "ensemble"}


def test_train_rm_writes_the_ensemble_of_the_flags(trained, capsys, caplog):
    _, _, record = load_ensemble(trained["ensemble"], require_variance=True)
    assert record["num_heads"] == 2 and record["seeds"] == [1, 1] and record["max_length"] == 64
    assert record["stage1"]["max_steps"] == 6 and record["stage1"]["learning_rate"] == 1e-3
    with caplog.at_level(logging.INFO):
        assert main(trained["argv"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["trained"] == [] and summary["num_heads"] == 2 and len(summary["final_loss"]) == 2
    assert "nothing to train" in caplog.text


def test_train_rm_flags_override_the_config_file(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run(config):
        seen["config"] = config
        return {"trained": []}

    monkeypatch.setattr("verl_variance.reward_model.train.run_train_rm", fake_run)
    file = tmp_path / "rm.yaml"
    file.write_text("train_files: [a.jsonl]\nstage1:\n  learning_rate: 3e-5\nstage2:\n  num_heads: 6\n")
    argv = ["train-rm", "--config", str(file), "--model", "m", "--train-files", "b.jsonl", "c.parquet"]
    argv += ["--num-heads", "4", "--seed", "7", "--bootstrap", "--skip-stage1", "--set", "stage2.learning_rate=1e-3"]
    assert main(argv) == 0
    config = seen["config"]
    assert config.model_name_or_path == "m" and config.train_files == ["b.jsonl", "c.parquet"]
    assert config.stage1.learning_rate == 3e-5 and config.stage2.learning_rate == 1e-3
    assert (config.stage2.num_heads, config.stage2.bootstrap, config.seeds) == (4, True, [7, 7])
    assert config.skip_stage1 and not config.overwrite
    assert json.loads(capsys.readouterr().out) == {"trained": []}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train-rm"], "verl-variance train-rm: TrainRMConfig.train_files is empty"),
        (
            ["train-rm", "--train-files", "x.jsonl", "--set", "stage1.lr=1"],
            r"unknown key(s) ['lr'] in the train-rm config (stage1)",
        ),
        (["train-rm", "--train-files", "missing.jsonl"], "preference file missing.jsonl does not exist"),
        (["score", "nowhere", "in.jsonl", "out.jsonl"], "verl-variance score: input file in.jsonl does not exist"),
        (["analyze", "nowhere", "rb.jsonl"], "verl-variance analyze: reward ensemble folder nowhere does not exist"),
        (["tiny-model", "m", "--num-labels", "-2"], "verl-variance tiny-model: TinyModelConfig.num_labels=-2: 0"),
        (["tiny-model", "/proc/no/such/folder"], "verl-variance tiny-model: [Errno 2] No such file or directory"),
    ],
)
def test_bad_input_exits_with_code_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["quickstart", "--steps", "0"], ["demo", "--policies", "0"], ["demo", "--steps", "-1"],
     ["score", "m", "a", "b", "--batch-size", "0"], ["study", "run", "--recipe-dir", "r", "--study-dir", "s",
     "--heads", "0", "--seeds", "0", "--steps", "0"]],
)  # fmt: skip
def test_counts_below_one_are_refused_by_the_parser(argv, capsys):
    """Before anything runs (quickstart --steps 0 used to start verl and report "done")."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert "expected an integer >= 1, got" in capsys.readouterr().err


def test_score_and_analyze_the_trained_ensemble(trained, tiny_rm, capsys):
    root = trained["root"]
    assert main(["score", str(trained["ensemble"]), str(trained["train"]), str(root / "scores.parquet")]) == 0
    assert f"wrote {root / 'scores.parquet'}" in capsys.readouterr().out
    scores = pd.read_parquet(root / "scores.parquet")
    assert len(scores) == 96 and {"chosen_rewards", "chosen_variance", "rejected_std"} <= set(scores.columns)
    assert (scores["chosen_variance"] > 0).all()

    argv = ["analyze", str(trained["ensemble"]), str(trained["train"]), "--output-dir", str(root / "analysis")]
    assert main([*argv, "--single-model", str(root / "out" / "stage1"), "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    report = json.loads((root / "analysis" / "rewardbench.json").read_text())
    mean = report["models"]["ensemble mean"]["sections"]
    assert f"ensemble mean: Chat {mean['Chat']:.1f}, Reasoning {mean['Reasoning']:.1f}, Average" in out
    assert "single model: Chat" in out and "heads' Average: " in out
    assert report["sizes"] == {"hep-go": 48, "alpacaeval-easy": 48}


def test_existing_subcommands_are_kept():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert {"doctor", "ppo", "tiny-model", "quickstart", "simulate", "train-rm", "score", "analyze"} <= set(choices)


def test_train_rm_keys_lists_every_settable_key_with_its_default_and_help(capsys):
    """The help of every key comes from the config dataclasses' metadata, and each listed key is accepted."""
    from verl_variance.reward_model.train import build_config

    assert main(["train-rm", "--keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys = [line.split()[0].partition("=")[0] for line in lines]
    assert {"stage1.learning_rate", "stage2.num_heads", "stage1.logger", "train_files"} <= set(keys)
    assert any(line.split()[0] == "stage2.num_epochs=0.5" and "Table 4" in line for line in lines)
    scalars = [line.split()[0] for line in lines if "[" not in line.split()[0]]
    config = build_config(overrides=["train_files=[a.jsonl]", *scalars])  # every listed default sets back cleanly
    assert config.stage2.num_heads == 10 and config.stage1.target_loss == 0.4


@pytest.mark.parametrize(
    ("command", "config", "flags"),
    [
        ("train-rm", "verl_variance.reward_model.train:TrainRMConfig",
         {"--num-heads": "stage2.num_heads", "--seed": "stage1.seed", "--max-length": "max_length",
          "--model": "model_name_or_path"}),
        ("simulate", "verl_variance.experiments.bandit:SimulationConfig",
         {"--eps": "eps", "--reference-policy": "reference_policy", "--draws": "draws"}),
    ],
)  # fmt: skip
def test_flag_help_is_the_config_fields_help_and_default(command, config, flags, capsys):
    """Each command's flags are made from its config dataclass (``HfArgumentParser``): a flag shows its field's
    metadata help and default (no retyped help strings), a shortcut of nested keys names them first."""
    import importlib

    from verl_variance.core.config import config_keys, spelled

    module, name = config.split(":")
    keys = {key: (default, text) for key, default, text in config_keys(getattr(importlib.import_module(module), name))}
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for flag, key in flags.items():
        default, text = keys[key]
        assert f"{flag} " in help_text
        assert f"{' '.join(text.split())} (default {spelled(default)})" in help_text
    if command == "train-rm":
        assert "stage1.seed and stage2.seed: Seeds the pair order" in help_text


def test_a_flag_of_the_config_sets_its_field_and_an_unknown_one_is_refused(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr("verl_variance.experiments.bandit.run", lambda output_dir, settings, **overrides: seen.update(
        overrides) or {})
    monkeypatch.setattr("verl_variance.experiments.bandit.summary_lines", lambda report: [])
    assert main(["simulate", "--draws", "30", "--reference_policy", "zero", "--variance-low", "2"]) == 0
    assert seen == {"draws": 30, "reference_policy": "zero", "variance_low": 2.0}  # the flags given, typed
    with pytest.raises(SystemExit) as stopped:
        main(["simulate", "--setting", "high"])  # a field the command sets itself (--settings) is no flag
    assert stopped.value.code == 2 and "unrecognized arguments: --setting high" in capsys.readouterr().err
