"""The RVPO study (``verl-variance demo --study rvpo``): overrides, evaluation, intervals, report, CLI errors."""

import json

import pytest

from verl_variance.cli import main as cli_main
from verl_variance.experiments import rvpo_study, study


def _paths(tmp_path):
    return {"data_dir": tmp_path / "data", "policy": tmp_path / "policy", "judge": tmp_path / "judge.pkl"}


def test_methods_differ_only_in_the_estimator(tmp_path):
    scale = rvpo_study.SCALES["default"]
    gdpo = rvpo_study.run_overrides(scale, "gdpo", 1, _paths(tmp_path), tmp_path / "run", validate_reference=False)
    rvpo = rvpo_study.run_overrides(scale, "rvpo", 1, _paths(tmp_path), tmp_path / "run", validate_reference=False)
    assert set(gdpo) ^ set(rvpo) == {
        "algorithm.adv_estimator=gdpo", "algorithm.adv_estimator=rvpo", f"++rvpo.tau={scale.tau}",
        "trainer.experiment_name=default_gdpo_seed1", "trainer.experiment_name=default_rvpo_seed1",
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown method 'grpo'; valid: \['gdpo', 'rvpo'\]"):
        rvpo_study.run_overrides(scale, "grpo", 0, _paths(tmp_path), tmp_path, validate_reference=False)


def test_overrides_compose_on_the_cpu_preset(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from verl_variance.core.config import RVPOConfig
    from verl_variance.cpu.launcher import CONFIG_DIR, CPU_PRESET
    from verl_variance.integration.checks import check_variance_methods

    scale = rvpo_study.SCALES["default"]
    overrides = rvpo_study.run_overrides(scale, "rvpo", 0, _paths(tmp_path), tmp_path / "run", validate_reference=True)
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        config = compose(CPU_PRESET, overrides=overrides)
    check_variance_methods(config)
    resolved = OmegaConf.to_container(config, resolve=True)
    assert resolved["algorithm"]["gdpo_reward_keys"] == list(rvpo_study.OBJECTIVES)
    assert RVPOConfig.from_trainer_config(resolved).keys(resolved["algorithm"]["gdpo_reward_keys"]) == [
        "sentiment", "no_banned_words"]  # fmt: skip
    reward = resolved["reward"]["custom_reward_function"]
    assert reward["name"] == "sentiment_and_banned_words"
    assert reward["reward_kwargs"]["judge_path"].endswith("judge.pkl")
    assert resolved["actor_rollout_ref"]["rollout"]["n"] == scale.responses_per_prompt
    assert resolved["actor_rollout_ref"]["rollout"]["val_kwargs"]["n"] == scale.eval_samples_per_prompt
    assert resolved["trainer"]["val_before_train"] is True


def _dump(folder, step, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{step}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_validation_objectives_per_dump(tmp_path):
    _dump(tmp_path / "validation", 0, [{"sentiment": 1.0, "no_banned_words": 1.0},
                                       {"sentiment": -1.0, "no_banned_words": 0.0}])  # fmt: skip
    _dump(tmp_path / "validation", 6, [{"sentiment": 2.0, "no_banned_words": 1.0}] * 3 +
          [{"sentiment": 0.0, "no_banned_words": 0.0}])  # fmt: skip
    found = rvpo_study.validation_objectives(tmp_path)
    assert {step: {k: v for k, v in row.items() if not k.endswith("_se")} for step, row in found.items()} == {
        "0": {"violation_rate": 0.5, "sentiment": 0.0, "samples": 2},
        "6": {"violation_rate": 0.25, "sentiment": 1.5, "samples": 4},
    }
    assert found["6"]["violation_rate_se"] == pytest.approx((0.25 * 0.75 / 4) ** 0.5)
    assert found["6"]["sentiment_se"] == pytest.approx(1.0 / 4**0.5)  # sample sd of (2, 2, 2, 0) is 1
    _dump(tmp_path / "other" / "validation", 1, [{"score": 1.0}])
    with pytest.raises(study.StudyError, match=r"has no \['sentiment', 'no_banned_words'\]"):
        rvpo_study.validation_objectives(tmp_path / "other")
    with pytest.raises(study.StudyError, match="holds no validation dump"):
        rvpo_study.validation_objectives(tmp_path / "none")


def test_t_interval_against_the_textbook_formula():
    values = [0.1, 0.3, 0.2]
    mean, sd = 0.2, 0.1  # sample standard deviation
    half = 4.302652729911275 * sd / 3**0.5  # t_{0.975, df=2}
    stat = rvpo_study.t_interval(values)
    assert stat["mean"] == pytest.approx(mean) and stat["n"] == 3
    assert stat["ci"] == pytest.approx([mean - half, mean + half], rel=1e-9)
    assert rvpo_study.t_interval([0.4]) == {"mean": 0.4, "ci": None, "n": 1}
    assert rvpo_study.t_interval([0.0, 0.0])["ci"] == [0.0, 0.0]  # no spread: a point, not NaN


def _runs(gdpo_rates, rvpo_rates):
    runs = []
    for method, rates in (("gdpo", gdpo_rates), ("rvpo", rvpo_rates)):
        for seed, rate in enumerate(rates):
            final = {"violation_rate": rate, "sentiment": 0.5 + rate, "samples": 256, "violation_rate_se": 0.01,
                     "sentiment_se": 0.02}  # fmt: skip
            first = seed == 0 and method == "gdpo"
            reference = {"violation_rate": 0.03, "sentiment": 0.3, "samples": 256} if first else None
            runs.append({"method": method, "seed": seed, "seconds": 1.0, "final": final, "reference": reference})
    return runs


def test_conclusion_says_what_the_numbers_show():
    apart = rvpo_study.conclusion(rvpo_study.method_summary(_runs([0.30, 0.31, 0.32], [0.01, 0.02, 0.03])))
    assert apart.startswith("RVPO's violation rate is lower than GDPO's (0.020 vs 0.310; intervals apart)")
    overlap = rvpo_study.conclusion(rvpo_study.method_summary(_runs([0.1, 0.3, 0.2], [0.15, 0.05, 0.25])))
    assert "violation rate is lower than GDPO's (0.150 vs 0.200; intervals overlap: not distinguishable" in overlap
    one = rvpo_study.conclusion(rvpo_study.method_summary(_runs([0.1], [0.1])))
    assert "violation rate is the same as GDPO's (0.100 vs 0.100; one seed: no interval" in one
    assert rvpo_study.conclusion(rvpo_study.method_summary(_runs([0.1], []))).startswith("only one method")


def test_report_markdown_and_plot(tmp_path):
    runs = _runs([0.1, 0.3, 0.2], [0.15, 0.05, 0.25])
    settings = {**vars(rvpo_study.SCALES["default"])}
    report = rvpo_study.build_report(runs, settings, {"assets": {"seconds": 1.0}})
    assert report["reference"] == {"violation_rate": 0.03, "sentiment": 0.3, "samples": 256}
    assert report["methods"]["gdpo"]["policies"] == 3 and report["eval_samples"] == 256
    text = rvpo_study.markdown(report)
    assert "| reference | 0.030 | 0.300 |" in text
    assert "violation rate 0.010, sentiment 0.020" in text
    assert "| rvpo (3) | 0.150 [" in text and report["conclusion"] in text
    path = rvpo_study.plot(report, runs, tmp_path / "fig.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_input(tmp_path, capsys):
    assert cli_main(["demo", "--study", "rvpo", "--scale", "paper", "--workdir", str(tmp_path)]) == 2
    assert "unknown scale 'paper' for --study rvpo; valid: ['default', 'quick']" in capsys.readouterr().err
    assert cli_main(["demo", "--study", "rvpo", "--device", "gpu", "--workdir", str(tmp_path)]) == 2
    assert "--study rvpo runs on the CPU preset" in capsys.readouterr().err
    assert cli_main(["demo", "--study", "rvpo", "--precision", "bf16", "--workdir", str(tmp_path)]) == 2
    assert "--precision unset" in capsys.readouterr().err


def test_rate_intervals_are_cut_to_zero_one():
    stat = rvpo_study.t_interval([0.0, 0.01, 0.08], bounds=(0.0, 1.0))
    assert stat["ci"][0] == 0.0 and 0.03 < stat["ci"][1] < 1.0
