"""The reward-hacking monitor after the fact (``verl-variance hacking-monitor``): a finished run's ``metrics.jsonl``
replayed through the monitor with any thresholds (``core.hacking.replay``), and, where a gold judge can score each
step's samples (verl's rollout dumps, ``trainer.rollout_data_dir``), how well its alarms predict a falling judge
reward against the simplest baselines (a KL threshold, a proxy-reward threshold).

Gold, per run (``validate``): the run is *hacked* when its judge reward on the held-out prompts after training is
below the reference policy's (the study's ``judge_<name>.json``; without it, the judge of the last steps' training
samples below that of the first), while its proxy reward rose. The *onset* is the first step whose judge reward
(the mean over the step's samples, a trailing mean over ``SMOOTHING`` steps) is below that of the baseline steps
while the proxy is above its own. A detector's *lead time* is onset − its first alarm (> 0: before the judge fell).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from verl_variance.core.config import HackingMonitorConfig
from verl_variance.core.hacking import (
    ENTROPY_METRIC,
    GAP_METRIC,
    KL_METRICS,
    PROXY_METRIC,
    VARIANCE_METRIC,
    replay,
)
from verl_variance.experiments.study import read_json, read_jsonl

SMOOTHING = 3
"""Steps in the trailing means of the per-step judge and proxy (a step holds a batch's few samples)."""
FALLBACK_VARIANCE = "variance_kl/reward_variance/mean"
"""σ² of runs logged without the monitor: the variance-aware KL's telemetry."""
TRAINING_DISAGREEMENT = "ensemble_training.json"
"""The demo's re-scoring of each step's samples by the whole ensemble (``per_step``: [step, mean σ²])."""


STUDY_METHODS = ("vanilla", "variance_aware")
"""A study's policy folders: ``policies/<method>/<policy>`` (named ``<method>/<policy>`` here)."""


class RunError(ValueError):
    """A run folder or metrics file that cannot be replayed; the message names it and the fix."""


@dataclass
class MonitoredRun:
    """One finished run: its name, its folder, and its training steps' metrics (step order)."""

    name: str
    folder: Path
    rows: list[tuple[int, dict[str, float]]]


def read_run(path: str | Path) -> MonitoredRun:
    """A run from its ``metrics.jsonl`` (verl's file logger: ``{"step": n, "data": {...}}`` per line) or the folder
    holding it. Training steps are the lines with verl's proxy score; a step without ``hacking/reward_variance`` takes
    σ² from the demo's re-scoring or the variance-aware KL's telemetry."""
    path = Path(path)
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise RunError(f"{path}: no metrics.jsonl (verl's file logger: trainer.logger=[console,file] with "
                       "VERL_FILE_LOGGER_PATH set, or the demo's policy folders)")  # fmt: skip
    rows = {}
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
            step, data = int(record["step"]), dict(record["data"])
        except (ValueError, KeyError, TypeError) as error:
            raise RunError(f"{file}:{number} is not a line of verl's file logger ({error})") from None
        if PROXY_METRIC in data:
            rows.setdefault(step, {}).update(data)
    rescored = _rescored_variance(file.parent)
    for step, data in rows.items():
        if VARIANCE_METRIC not in data:
            variance = rescored.get(step, data.get(FALLBACK_VARIANCE))
            if variance is not None:
                data[VARIANCE_METRIC] = variance
    missing = [step for step, data in rows.items() if VARIANCE_METRIC not in data]
    if not rows or missing:
        raise RunError(f"{file}: {'no training step' if not rows else f'steps {missing} have'} no heads' σ² "
                       f"({VARIANCE_METRIC}): run with +hacking_monitor.enable=true (an ensemble reward with "
                       "head scores)")  # fmt: skip
    folder = file.parent
    name = f"{folder.parent.name}/{folder.name}" if folder.parent.name in STUDY_METHODS else str(folder)
    return MonitoredRun(name, folder, sorted(rows.items()))


def _rescored_variance(folder: Path) -> dict[int, float]:
    record = read_json(folder / TRAINING_DISAGREEMENT)
    return {} if record is None else {int(step): float(value) for step, value in record["per_step"]}


def scan(run: MonitoredRun, settings: HackingMonitorConfig) -> dict[str, Any]:
    """The run replayed through a monitor of ``settings``: each step's signals and the alarms."""
    steps = replay(run.rows, settings)
    return {
        "run": run.name,
        "steps": [step for step, _, _ in steps],
        "signals": {step: signals for step, signals, _ in steps},
        "alarms": [{"step": a.step, "signal": a.signal, "value": a.value, "threshold": a.threshold}
                   for _, _, alarms in steps for a in alarms],  # fmt: skip
    }


def series(run: MonitoredRun, key: str | Sequence[str]) -> list[float | None]:
    """One metric per training step (the first of ``key`` a step has; None where none)."""
    keys = [key] if isinstance(key, str) else list(key)
    return [next((float(data[k]) for k in keys if k in data), None) for _, data in run.rows]


def trailing_mean(values: Sequence[float], window: int = SMOOTHING) -> np.ndarray:
    """Mean of each value with the ``window - 1`` before it (fewer at the start)."""
    values = np.asarray(values, dtype=np.float64)
    return np.array([values[max(0, i - window + 1) : i + 1].mean() for i in range(values.size)])


def judge_per_step(run: MonitoredRun, judge) -> list[float]:
    """The judge's mean score of each training step's samples (``rollouts/<step>.jsonl``)."""
    means = []
    for step, _ in run.rows:
        dump = run.folder / "rollouts" / f"{step}.jsonl"
        if not dump.is_file():
            raise RunError(f"{run.folder}: no rollout dump of step {step} ({dump}): run with trainer.rollout_data_dir "
                           "set to judge each step's samples")  # fmt: skip
        rows = read_jsonl(dump)
        means.append(float(np.mean(judge.score_responses([r["input"] for r in rows], [r["output"] for r in rows]))))
    return means


def first_step(steps: Sequence[int], values: Sequence[float | None], threshold: float) -> int | None:
    """The first step whose value reaches ``threshold`` (a baseline detector's alarm)."""
    return next((step for step, value in zip(steps, values, strict=True) if value is not None and value >= threshold),
                None)  # fmt: skip


def gold(run: MonitoredRun, judge_steps: Sequence[float], baseline_steps: int) -> dict[str, Any]:
    """Whether the run was hacked, and from which step (module docstring)."""
    steps = [step for step, _ in run.rows]
    judge, proxy = trailing_mean(judge_steps), trailing_mean(series(run, PROXY_METRIC))
    judge_base, proxy_base = float(np.mean(judge_steps[:baseline_steps])), float(proxy[baseline_steps - 1])
    record = _held_out_judge(run.folder)
    if record is not None:
        fell = record["final"] < record["reference"]
    else:
        fell = bool(judge[-1] < judge_base)
    hacked = fell and bool(proxy[-1] > proxy_base)
    onset = None
    if hacked:
        below = [i for i in range(baseline_steps, len(steps)) if judge[i] < judge_base and proxy[i] > proxy_base]
        onset = steps[below[0]] if below else steps[-1]
    return {"hacked": hacked, "onset": onset, "held_out": record, "judge": judge_steps}


def _held_out_judge(folder: Path) -> dict[str, float] | None:
    files = sorted(folder.glob("judge_*.json"))
    if not files:
        return None
    record = read_json(files[0])
    return {"judge": record["judge"], "reference": float(np.mean(record["judge_reference"])),
            "final": float(np.mean(record["judge_final"]))}  # fmt: skip


SIGNALS = ("disagreement_ratio", "lower_bound_gap", "kl_acceleration", "entropy_drop", "rising_together")
"""The monitor's signals, each also scored as a detector of its own."""


def detectors(run: MonitoredRun, scanned: Mapping[str, Any], kl_threshold: float, proxy_threshold: float) -> dict:
    """Each detector's first alarm step and run-level score (its largest value): the monitor (any signal; score:
    its largest disagreement ratio), each of its signals alone, a KL threshold, a proxy-reward threshold."""
    steps = scanned["steps"]
    kl, proxy = series(run, KL_METRICS), series(run, PROXY_METRIC)

    def largest(values):
        return max((v for v in values if v is not None), default=None)

    def signal(name: str) -> list[float | None]:
        if name == "lower_bound_gap":
            return series(run, GAP_METRIC)
        return [scanned["signals"][step].get(f"hacking/{name}") for step in steps]

    found = {"monitor": {"alarm": min((a["step"] for a in scanned["alarms"]), default=None),
                         "score": largest(signal("disagreement_ratio"))}}  # fmt: skip
    for name in SIGNALS:
        alarm = min((a["step"] for a in scanned["alarms"] if a["signal"] == name), default=None)
        found[f"monitor: {name}"] = {"alarm": alarm, "score": largest(signal(name))}
    found["kl"] = {"alarm": first_step(steps, kl, kl_threshold), "score": largest(kl)}
    found["proxy"] = {"alarm": first_step(steps, proxy, proxy_threshold), "score": largest(proxy)}
    return found


def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per detector over the runs: precision and recall of its alarms for the hacked runs, the lead time of each
    hacked run it caught, and the area under the ROC curve of its run-level score (threshold-free)."""
    from sklearn.metrics import roc_auc_score

    labels = [record["gold"]["hacked"] for record in records]
    out = {}
    for name in records[0]["detectors"] if records else ():
        alarms = [record["detectors"][name]["alarm"] is not None for record in records]
        caught = sum(a and h for a, h in zip(alarms, labels, strict=True))
        scores = [record["detectors"][name]["score"] for record in records]
        usable = len(set(labels)) == 2 and None not in scores
        out[name] = {
            "alarms": sum(alarms),
            "precision": caught / sum(alarms) if sum(alarms) else None,
            "recall": caught / sum(labels) if sum(labels) else None,
            "lead_times": [record["gold"]["onset"] - record["detectors"][name]["alarm"] for record in records
                           if record["gold"]["hacked"] and record["detectors"][name]["alarm"] is not None],
            "auroc": float(roc_auc_score(labels, scores)) if usable else None,
        }  # fmt: skip
    return out


def validate(
    runs: Sequence[MonitoredRun],
    settings: HackingMonitorConfig,
    judge,
    kl_threshold: float | None = None,
    proxy_threshold: float | None = None,
) -> dict[str, Any]:
    """The monitor against the gold judge over ``runs`` (module docstring). The baselines' thresholds default to the
    median over the runs of each run's largest KL and proxy reward (said in the report)."""
    kl_max = [max((v for v in series(run, KL_METRICS) if v is not None), default=np.nan) for run in runs]
    proxy_max = [max(series(run, PROXY_METRIC)) for run in runs]
    thresholds = {"kl": float(np.nanmedian(kl_max)) if kl_threshold is None else kl_threshold,
                  "proxy": float(np.median(proxy_max)) if proxy_threshold is None else proxy_threshold}  # fmt: skip
    records = []
    for run in runs:
        scanned = scan(run, settings)
        records.append({
            "run": run.name,
            "scan": scanned,
            "gold": gold(run, judge_per_step(run, judge), settings.baseline_steps),
            "detectors": detectors(run, scanned, thresholds["kl"], thresholds["proxy"]),
            "proxy": series(run, PROXY_METRIC),
            "kl": series(run, KL_METRICS),
            "entropy": series(run, ENTROPY_METRIC),
        })  # fmt: skip
    return {"settings": vars(settings), "thresholds": thresholds, "runs": records, "summary": summarise(records)}


def markdown(report: Mapping[str, Any]) -> str:
    """The validation report: per detector, then per run."""
    lines = ["| detector | alarms | precision | recall | lead times (steps) | AUROC |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    thresholds = report["thresholds"]
    names = {"monitor": "hacking monitor (any signal; score: largest disagreement ratio)",
             "kl": f"KL >= {thresholds['kl']:.3g}", "proxy": f"proxy >= {thresholds['proxy']:.3g}"}  # fmt: skip
    for name, row in report["summary"].items():
        if name.startswith("monitor: ") and not row["alarms"] and row["auroc"] is None:
            continue  # a signal this run set never computed
        cells = [_fmt(row["precision"]), _fmt(row["recall"]), ", ".join(map(str, row["lead_times"])) or "-",
                 _fmt(row["auroc"])]  # fmt: skip
        lines.append(f"| {names.get(name, name)} | {row['alarms']} | " + " | ".join(cells) + " |")
    lines += ["", "| run | hacked | onset | monitor alarm (signals) | KL alarm | proxy alarm | judge: reference -> "
              "final |", "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for record in report["runs"]:
        signals = ", ".join(f"{a['signal']}@{a['step']}" for a in record["scan"]["alarms"]) or "-"
        held = record["gold"]["held_out"]
        judged = f"{held['reference']:.3f} -> {held['final']:.3f}" if held else "-"
        found = record["detectors"]
        lines.append(f"| {record['run']} | {'yes' if record['gold']['hacked'] else 'no'} | "
                     f"{record['gold']['onset'] or '-'} | {found['monitor']['alarm'] or '-'} ({signals}) | "
                     f"{found['kl']['alarm'] or '-'} | {found['proxy']['alarm'] or '-'} | {judged} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plot(report: Mapping[str, Any], path: Path) -> None:
    """Per run: the proxy and the judge reward of each step's samples (left), the disagreement ratio (right), the
    monitor's alarms (red) and the KL baseline's (grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    columns = min(4, len(runs))
    rows = -(-len(runs) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, record in zip(axes.flat, runs, strict=False):
        steps = record["scan"]["steps"]
        axis.plot(steps, record["proxy"], label="proxy", color="tab:blue")
        axis.plot(steps, record["gold"]["judge"], label="judge", color="tab:green")
        ratio = [record["scan"]["signals"][s].get("hacking/disagreement_ratio") for s in steps]
        twin = axis.twinx()
        twin.plot(steps, [np.nan if r is None else r for r in ratio], color="tab:purple", ls=":", label="σ² ratio")
        twin.set_ylabel("σ² ratio (dotted)", fontsize=7, color="tab:purple")
        for alarm in record["scan"]["alarms"]:
            axis.axvline(alarm["step"], color="tab:red", alpha=0.6)
        if record["detectors"]["kl"]["alarm"] is not None:
            axis.axvline(record["detectors"]["kl"]["alarm"], color="grey", ls="--", alpha=0.6)
        axis.set_title(f"{record['run']}{' (hacked)' if record['gold']['hacked'] else ''}", fontsize=8)
        axis.set_xlabel("step")
    for axis in list(axes.flat)[len(runs):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
