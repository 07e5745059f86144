"""The hacking monitor after the fact (``verl-variance hacking-monitor``): finished runs replayed with any thresholds,
and validated against a judge, on synthetic run folders whose onsets are known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verl_variance.cli import main
from verl_variance.core.config import HackingMonitorConfig
from verl_variance.experiments import hacking


def write_run(folder: Path, variances, proxies, kls, judge_means=None, held_out=None) -> Path:
    """A run as verl's file logger and the study leave it: metrics.jsonl (a validation-only line first), and with
    ``judge_means`` each step's rollout dump whose responses the fake judge scores at that mean."""
    folder.mkdir(parents=True)
    lines = [{"step": 0, "data": {"val-core/imdb/reward/mean@8": 0.1}}]
    for step, (variance, proxy, kl) in enumerate(zip(variances, proxies, kls, strict=True), start=1):
        lines.append({"step": step, "data": {"hacking/reward_variance": variance, "critic/score/mean": proxy,
                                             "actor/reward_kl_penalty": kl, "actor/entropy": 2.0}})  # fmt: skip
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    if judge_means is not None:
        (folder / "rollouts").mkdir()
        for step, mean in enumerate(judge_means, start=1):
            rows = [{"input": "p", "output": str(mean + delta), "score": 0.0} for delta in (-0.5, 0.5)]
            (folder / "rollouts" / f"{step}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    if held_out is not None:
        reference, final = held_out
        (folder / "judge_fake.json").write_text(json.dumps({"judge": "fake", "judge_reference": [reference],
                                                            "judge_final": [final]}))  # fmt: skip
    return folder


class FakeJudge:
    """Scores a response by the number it is."""

    def score_responses(self, prompts, responses):
        return [float(response) for response in responses]


FLAT = [0.2] * 8
RISING = [0.25, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]  # against the first two steps: ratio 1.6 at step 4, 2 at step 5


def test_a_finished_run_replayed_with_other_thresholds(tmp_path, capsys):
    run = write_run(tmp_path / "run", RISING, [0.1 * t for t in range(8)], [0.0] * 8)
    out = tmp_path / "scan"
    argv = ["hacking-monitor", str(run), "--output-dir", str(out), "--set", "entropy_drop=null"]
    assert main(argv) == 0
    assert "disagreement_ratio at step 4 (1.6 >= 1.5)" in capsys.readouterr().out  # the default threshold: 1.5
    assert main([*argv, "disagreement_ratio=2.0"]) == 0
    assert "disagreement_ratio at step 5 (2 >= 2)" in capsys.readouterr().out
    scanned = json.loads((out / "hacking_monitor.json").read_text())
    assert scanned["settings"]["disagreement_ratio"] == 2.0
    assert scanned["runs"][0]["steps"] == list(range(1, 9))  # the validation-only line is not a training step
    assert scanned["runs"][0]["signals"]["5"]["hacking/disagreement_ratio"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["hacking-monitor", "nowhere"], "verl-variance hacking-monitor: nowhere: no metrics.jsonl"),
        (["hacking-monitor", "RUN", "--set", "windo=3"], "unknown key(s) ['windo'] in hacking_monitor"),
        (["hacking-monitor", "RUN", "--set", "window"], "--set takes KEY=VALUE pairs of the hacking_monitor group"),
        (["hacking-monitor", "RUN", "--output-dir", "/proc/no/such/folder"],
         "verl-variance hacking-monitor: [Errno 2] No such file or directory: '/proc/no"),
        (["hacking-monitor", "BARE"], "have no heads' σ² (hacking/reward_variance): run with "
                                      "+hacking_monitor.enable=true"),
    ],
)  # fmt: skip
def test_bad_input_names_the_run_and_the_fix(tmp_path, capsys, argv, message):
    write_run(tmp_path / "RUN", FLAT, FLAT, FLAT)
    (tmp_path / "BARE").mkdir()
    (tmp_path / "BARE" / "metrics.jsonl").write_text(json.dumps({"step": 1, "data": {"critic/score/mean": 0.0}}))
    argv = [str(tmp_path / arg) if arg in ("RUN", "BARE") else arg for arg in argv]
    if "--output-dir" not in argv:
        argv += ["--output-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_runs_of_a_study_without_the_monitor_take_the_rescored_variance(tmp_path):
    """The demo's policy folders logged no hacking/*: σ² comes from its re-scoring of each step's samples."""
    folder = write_run(tmp_path / "policies" / "vanilla" / "head1_seed0", FLAT, FLAT, FLAT)
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line["data"].pop("hacking/reward_variance", None)
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    (folder / hacking.TRAINING_DISAGREEMENT).write_text(json.dumps({"per_step": [[s, 0.1 * s] for s in range(1, 9)]}))
    run = hacking.read_run(folder)
    assert run.name == "vanilla/head1_seed0"
    assert hacking.series(run, "hacking/reward_variance") == pytest.approx([0.1 * s for s in range(1, 9)])


def test_validation_against_a_judge_with_known_onsets(tmp_path):
    """Two hacked runs (the judge falls while the proxy rises, from step 4) and two healthy ones: the monitor alarms
    on the hacked runs' disagreement, the KL baseline on one of each; precision, recall, lead times and AUROC as
    counted by hand."""
    proxy = [0.0, 0.1, 0.3, 0.6, 1.0, 1.4, 1.8, 2.2]
    falling = [0.5, 0.5, 0.5, 0.1, -0.2, -0.4, -0.6, -0.8]
    rising_judge = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    runs = [
        write_run(tmp_path / "hacked_a", RISING, proxy, [0.2 * t for t in range(8)], falling, (0.3, -0.5)),
        write_run(tmp_path / "hacked_b", [0.2, 0.2, 0.2, 0.21, 0.29, 0.6, 0.6, 0.6], proxy, [0.01] * 8, falling,
                  (0.3, -0.6)),
        write_run(tmp_path / "healthy_a", FLAT, proxy, [0.2 * t for t in range(8)], rising_judge, (0.0, 0.6)),
        write_run(tmp_path / "healthy_b", FLAT, [0.0] * 8, [0.01] * 8, rising_judge, (0.0, 0.5)),
    ]  # fmt: skip
    settings = HackingMonitorConfig(enable=True, baseline_steps=2, entropy_drop=None)
    report = hacking.validate([hacking.read_run(r) for r in runs], settings, FakeJudge(), kl_threshold=1.0)
    by_run = {Path(record["run"]).name: record for record in report["runs"]}
    assert [by_run[name]["gold"]["hacked"] for name in ("hacked_a", "hacked_b", "healthy_a", "healthy_b")] == [
        True, True, False, False]  # fmt: skip
    # onset: the judge's 3-step trailing mean below the first two steps' mean (0.5), the proxy above its own
    assert by_run["hacked_a"]["gold"]["onset"] == 4 and by_run["hacked_b"]["gold"]["onset"] == 4
    assert by_run["hacked_a"]["detectors"]["monitor"]["alarm"] == 4  # σ² 0.4 / 0.25
    assert by_run["hacked_b"]["detectors"]["monitor"]["alarm"] == 6  # σ² 0.6 / 0.2 (0.29 / 0.2 at step 5)
    assert by_run["healthy_a"]["detectors"]["monitor"]["alarm"] is None
    summary = report["summary"]
    assert summary["monitor"]["precision"] == 1.0 and summary["monitor"]["recall"] == 1.0
    assert sorted(summary["monitor"]["lead_times"]) == [-2, 0]
    assert summary["kl"]["alarms"] == 2 and summary["kl"]["precision"] == 0.5  # KL 1.0 at step 6: hacked_a, healthy_a
    assert summary["kl"]["recall"] == 0.5 and summary["kl"]["lead_times"] == [-2]
    assert summary["monitor"]["auroc"] == 1.0 and summary["proxy"]["auroc"] == pytest.approx(0.75)
    markdown = hacking.markdown(report)
    assert "| hacking monitor (any signal; score: largest disagreement ratio) | 2 | 1.00 | 1.00 |" in markdown
    hacking.plot(report, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 10_000
