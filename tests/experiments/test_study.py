"""The study orchestration (shared by the demo and the recipes), driven by a fake verl run: grid, resume,
calibration, failure messages, judging and the report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from verl_variance.experiments import study

FAKE_RUN = r"""
import json, os, sys
from pathlib import Path
run_dir, beta, steps, kl = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fail_at = int(os.environ.get("FAKE_FAIL_AT", "0"))
first = int(os.environ.get("FAKE_FIRST_STEP", "1"))
(run_dir / "validation").mkdir(exist_ok=True)
prompts = ["b prompt", "a prompt", "c prompt"]
def dump(step, suffix):
    rows = [{"input": p, "output": suffix, "score": float(i), "step": step} for i, p in enumerate(prompts)]
    (run_dir / "validation" / f"{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
if first == 1:
    dump(0, " meh")
with open(run_dir / "metrics.jsonl", "w") as log:
    for step in range(first, steps + 1):
        if step == fail_at:
            print("Traceback: something broke in a worker", flush=True)
            sys.exit(3)
        log.write(json.dumps({"step": step, "data": {"actor/reward_kl_penalty": kl / beta * step / steps,
                                                     "critic/score/mean": step / steps}}) + "\n")
        print(f"step:{step} - actor/pg_loss:0.1", flush=True)
dump(steps, " good good")
"""


def fake_launcher(tmp_path: Path, steps: int, kl: float = 0.01) -> tuple[study.Launcher, list]:
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    calls = []

    def launch(spec, beta, run_dir):
        calls.append((spec.method, spec.name, beta))
        scale = 2.0 if spec.method == "variance_aware" else 1.0  # the aware pilot ends at twice vanilla's KL
        return [sys.executable, str(script), str(run_dir), str(beta), str(steps), str(kl * scale)], None

    return launch, calls


class WordJudge:
    name = "words/v1"

    def score_responses(self, prompts, responses):
        return np.array([float(response.count("good")) for response in responses])


def test_policy_grid_is_seed_major_and_rejects_bad_lists():
    assert study.policy_grid([0, 1, 2], [0, 1]) == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    grid = study.policy_grid(range(4), range(3))  # the demo's policy i: head i % K, seed i // K
    assert [grid[i] for i in (0, 5, 11)] == [(0, 0), (1, 1), (3, 2)]
    with pytest.raises(study.StudyError, match="no heads given"):
        study.policy_grid([], [0])
    with pytest.raises(study.StudyError, match=r"seeds \[1, 1\] repeat a value"):
        study.policy_grid([0], [1, 1])
    with pytest.raises(study.StudyError, match="non-negative"):
        study.policy_grid([-1], [0])


def run_with_kl(method, kls):
    steps = {i + 1: {"actor/reward_kl_penalty": value} for i, value in enumerate(kls)}
    return {"method": method, "policy": "p", "steps": steps}


def test_calibration_scales_beta_by_the_kl_ratio():
    pilots = {"vanilla": run_with_kl("vanilla", [0.1, 0.2, 0.2, 0.2]), "variance_aware": run_with_kl("vanilla", [0.3])}
    assert study.calibrated_beta(0.05, pilots) == pytest.approx(0.05 * 0.3 / 0.2)
    pilots["variance_aware"] = run_with_kl("variance_aware", [100.0])
    assert study.calibrated_beta(0.05, pilots) == pytest.approx(4 * 0.05)  # clipped
    pilots["vanilla"] = run_with_kl("vanilla", [-0.01])
    assert study.calibrated_beta(0.05, pilots) == 0.05  # no signal: keep beta


def test_study_trains_calibrates_resumes_and_reports(tmp_path, capsys):
    launch, calls = fake_launcher(tmp_path, steps=4)
    grid = study.policy_grid([0, 1], [0])
    betas = {"vanilla": 0.2, "variance_aware": 0.05}
    runs, calibration = study.train_policies(grid, launch, tmp_path / "s", betas, total_steps=4)
    # pilots first (head0_seed0, both methods, initial betas), then the rest at the calibrated beta
    aware = 0.05 * (0.02 / 0.05) / (0.01 / 0.2)  # final KL = kl / beta: aware 0.02/0.05, vanilla 0.01/0.2
    assert calibration["beta"] == {"vanilla": 0.2, "variance_aware": pytest.approx(min(aware, 0.2))}
    assert calls == [
        ("vanilla", "head0_seed0", 0.2),
        ("variance_aware", "head0_seed0", 0.05),
        ("vanilla", "head1_seed0", 0.2),
        ("variance_aware", "head1_seed0", calibration["beta"]["variance_aware"]),
    ]
    assert [run["policy"] for run in runs] == ["head0_seed0", "head0_seed0", "head1_seed0", "head1_seed0"]
    assert sorted(runs[0]["steps"]) == [1, 2, 3, 4]
    out = capsys.readouterr().out
    assert "[policy 1/4] vanilla head0_seed0 (beta=0.2): step 4/4" in out and "min left]" in out
    assert json.loads((tmp_path / "s" / "calibration.json").read_text()) == calibration

    calls.clear()  # everything is finished: nothing runs again
    again, _ = study.train_policies(grid, launch, tmp_path / "s", betas, total_steps=4)
    assert calls == [] and again == json.loads(json.dumps(runs))

    judged = study.evaluate_runs(study.finished_runs(tmp_path / "s"), tmp_path / "s", WordJudge())
    first = judged[0]
    assert first["judge_reference"] == [0.0, 0.0, 0.0] and first["judge_final"] == [2.0, 2.0, 2.0]
    assert first["proxy_reference"] == [1.0, 0.0, 2.0]  # sorted by prompt: "a", "b", "c"
    assert (tmp_path / "s" / "policies" / "vanilla" / "head0_seed0" / "judge_words_v1.json").is_file()
    report = study.write_study_report(judged, tmp_path / "s", {"calibration": calibration}, {}, kl_tolerance=5.0)
    assert report["table"]["vanilla"]["n_policies"] == report["table"]["variance_aware"]["n_policies"] == 2
    assert report["table"]["vanilla"]["gain"]["value"] == pytest.approx(2.0)
    assert "variance-aware" in (tmp_path / "s" / "report.md").read_text()
    # the fake judge scores every reference sample alike: no ranking, so no correlation (not NaN)
    assert report["proxy_judge_agreement"] == {"spearman": None, "per_run": [None] * 4}


def test_a_failed_run_names_its_log_and_a_rerun_resumes_it(tmp_path, monkeypatch):
    launch, calls = fake_launcher(tmp_path, steps=4)
    spec = study.PolicySpec("vanilla", 0, 0)
    monkeypatch.setenv("FAKE_FAIL_AT", "3")
    with pytest.raises(study.StudyError, match=r"run vanilla/head0_seed0 failed \(exit 3\); log: .*run.log") as error:
        study.run_policy(spec, 0.2, tmp_path, launch, 4, "[1/1]")
    assert "something broke in a worker" in str(error.value)
    run_dir = spec.run_dir(tmp_path)
    assert not (run_dir / "result.json").exists()
    # the second attempt resumes after step 2 (as verl does from a checkpoint): the metrics of both are kept
    monkeypatch.setenv("FAKE_FAIL_AT", "0")
    monkeypatch.setenv("FAKE_FIRST_STEP", "3")
    result = study.run_policy(spec, 0.2, tmp_path, launch, 4, "[1/1]")
    assert sorted(result["steps"]) == [1, 2, 3, 4]
    assert (run_dir / "metrics.attempt1.jsonl").is_file() and (run_dir / "validation" / "0.jsonl").is_file()
    assert "something broke" in (run_dir / "run.log").read_text()  # the log keeps both attempts

    # the same policy at another beta is a new run: nothing of the old one is kept
    monkeypatch.setenv("FAKE_FIRST_STEP", "1")
    fresh = study.run_policy(spec, 0.1, tmp_path, launch, 4, "[1/1]")
    assert fresh["beta"] == 0.1 and not (run_dir / "metrics.attempt1.jsonl").exists()
    assert len(calls) == 3


def test_parallel_runs_give_the_same_study(tmp_path):
    """Two runs at once: the same runs, betas and calibration as one at a time, in grid order."""
    launch, calls = fake_launcher(tmp_path, steps=3)
    grid = study.policy_grid([0, 1, 2], [0])
    betas = {"vanilla": 0.2, "variance_aware": 0.05}
    serial, serial_calibration = study.train_policies(grid, launch, tmp_path / "a", betas, total_steps=3)
    serial_calls = sorted(calls)
    calls.clear()
    parallel, calibration = study.train_policies(grid, launch, tmp_path / "b", betas, total_steps=3, parallel=2)
    assert calibration == serial_calibration and sorted(calls) == serial_calls
    assert set(calls[:2]) == {("vanilla", "head0_seed0", 0.2), ("variance_aware", "head0_seed0", 0.05)}  # pilots first
    # the later vanilla runs need no calibration and queue right behind the pilots; the aware ones follow it (two
    # threads start the two runs of a phase in either order)
    assert set(calls[2:4]) == {("vanilla", "head1_seed0", 0.2), ("vanilla", "head2_seed0", 0.2)}
    assert {call[:2] for call in calls[4:]} == {("variance_aware", "head1_seed0"), ("variance_aware", "head2_seed0")}
    strip = [{k: v for k, v in run.items() if k != "seconds"} for run in parallel]
    assert strip == [{k: v for k, v in run.items() if k != "seconds"} for run in serial]


def test_missing_validation_dumps_and_metrics_are_clear_errors(tmp_path):
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "0.jsonl").write_text("")
    with pytest.raises(study.StudyError, match="1 validation dumps; expected step 0 and the last step"):
        study.validation_dumps(tmp_path)

    def silent(spec, beta, run_dir):
        return [sys.executable, "-c", "print('no metrics')"], None

    with pytest.raises(study.StudyError, match="logged no metrics.*keep 'file' in trainer.logger"):
        study.run_policy(study.PolicySpec("vanilla", 0, 0), 0.2, tmp_path, silent, 2, "[1/1]")


def test_validation_dumps_keep_responses_with_unicode_line_separators(tmp_path):
    """A sampled response may hold U+2028, U+0085 or U+001C inside its JSON string (verl writes them raw): one
    record per "\\n"-ended line, whatever the text holds (the quick-scale demo's tiny policy produced one)."""
    (tmp_path / "validation").mkdir()
    odd = "a\u2028b\x85c\x1cd"
    for step in (0, 2):
        rows = [{"input": f"p{i}", "output": f"{odd}{step}", "score": 0.5} for i in (1, 0)]
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (tmp_path / "validation" / f"{step}.jsonl").write_text(text, encoding="utf-8")
    first, last, own = study.validation_dumps(tmp_path)
    assert [row["input"] for row in first] == ["p0", "p1"] and first[0]["output"] == f"{odd}0"
    assert last[1]["output"] == f"{odd}2" and own


def test_judge_means_do_not_depend_on_the_order_verl_dumped_the_samples_in(tmp_path):
    """verl dumps validation samples in their order of arrival, which varies run to run: the judge's per-prompt
    means must be bit-identical whatever the order (float sums depend on it)."""
    rng = np.random.default_rng(0)
    rows = [{"input": f"p{i % 3}", "output": f"r{j}", "score": 0.0} for i in range(3) for j in range(7)]
    values = {row["output"]: float(rng.normal()) for row in rows}

    class Judge:
        name = "table"

        def score_responses(self, prompts, responses):
            return np.array([values[r] for r in responses]) * 1e3 + 1e-3  # sums whose rounding depends on order

    results = []
    for seed in range(4):
        run_dir = tmp_path / f"run{seed}"
        (run_dir / "validation").mkdir(parents=True)
        shuffled = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
        for step in (0, 4):
            (run_dir / "validation" / f"{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shuffled))
        scored = study.judge_run(run_dir, Judge())
        results.append((scored["judge_final"], scored["reference_repeats"]))
    assert all(result == results[0] for result in results)
    first, _, _ = study.validation_dumps(tmp_path / "run1")
    assert [(r["input"], r["output"]) for r in first] == sorted((r["input"], r["output"]) for r in rows)


def test_a_run_without_its_own_reference_uses_the_study_reference(tmp_path):
    """Only the study's first run validates before training; the others take its step-0 samples as the reference
    and have no proxy scores of them (their reward head may differ)."""

    def dump(run_dir, step, outputs):
        (run_dir / "validation").mkdir(parents=True, exist_ok=True)
        rows = [{"input": f"p{i}", "output": out, "score": float(i)} for i, out in enumerate(outputs)]
        (run_dir / "validation" / f"{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    reference_dir, other = tmp_path / "first", tmp_path / "other"
    dump(reference_dir, 0, ["bad", "bad"])
    dump(reference_dir, 4, ["good", "bad"])
    dump(other, 4, ["good", "good"])
    with pytest.raises(study.StudyError, match="1 validation dumps"):
        study.validation_dumps(other)
    reference, final, own = study.validation_dumps(other, reference_dir)
    assert [r["output"] for r in reference] == ["bad", "bad"] and [r["output"] for r in final] == ["good", "good"]
    assert not own

    class Judge:
        name = "count"

        def score_responses(self, prompts, responses):
            return np.array([float(r == "good") for r in responses])

    scored = study.judge_run(other, Judge(), reference_dir)
    assert scored["judge_reference"] == [0.0, 0.0] and scored["judge_final"] == [1.0, 1.0]
    assert scored["proxy_reference"] is None
    assert study.judge_run(reference_dir, Judge())["proxy_reference"] == [0.0, 1.0]
