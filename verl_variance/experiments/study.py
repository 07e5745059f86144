"""The IMDB study's orchestration: many verl PPO runs over heads × seeds, β calibration, judging, report.

Banerjee & Gopalan, Section 5 and Appendix 8: for every reward head h and seed s, one vanilla PPO
policy and one variance-aware PPO policy (the paper: 10 heads × 4 seeds × 2 methods); β of the
variance-aware runs is tuned so that both methods end at about the same KL from the reference
(Figure 10); a gold judge scores every policy's held-out generations (Figure 7).

Two front ends share this module, so the protocol is written once:

- ``verl-variance demo`` (``demo.py``): each run is ``verl-variance ppo`` with the demo's overrides;
- ``recipes/imdb_gpt2/run_study.sh`` (``verl-variance study run``): each run is the recipe script
  ``run_gpt2_<method>_fsdp.sh`` with ``HEAD``, ``SEED``, ``KL_COEF`` and ``OUTPUT_DIR`` set, and
  ``recipes/imdb_gpt2/evaluate.sh`` (``verl-variance study evaluate``) judges and reports.

Layout of a study folder::

    policies/<method>/head<h>_seed<s>/   run.log, metrics.jsonl (verl's file logger), validation/<step>.jsonl
                                         (verl's validation dumps: step 0 = the reference policy, in the runs
                                         that validate before training),
                                         checkpoints/, result.json (the finished run), judge_<name>.json
    calibration.json                     the pilots' final KLs and the β of each method
    report.json, report.md, fig*.png     after evaluation (``report.py``)

Resuming: a run with a ``result.json`` at the same β is not run again; an interrupted run (no
``result.json``) is started again and verl resumes it from its last checkpoint
(``trainer.resume_mode=auto``), keeping the metrics and validation dumps of the earlier attempt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from verl_variance.experiments.cluster import Executor, LocalProcesses
from verl_variance.experiments.report import KL_METRIC, METHODS, build_report, final_value, summary_lines, write_report

RESULT_FILE = "result.json"
CALIBRATION_FILE = "calibration.json"
TRAINING_VARIANCE_FILE = "ensemble_training.json"  # the heads' σ² per training step (TrainingDisagreement)
_STEP = re.compile(r"\bstep:(\d+)\b")  # verl's console logger: "step:3 - actor/pg_loss:..."
_PROGRESS_METRICS = {"reward": "critic/score/mean", "KL": "actor/reward_kl_penalty"}


class StudyError(RuntimeError):
    """A run or an input of the study failed; the message names the run, its log and the fix."""


def log(message: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {message}", flush=True)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)


@dataclass(frozen=True)
class PolicySpec:
    """One trained policy: its method, the reward head it trains on and its seed."""

    method: str
    head: int
    seed: int

    @property
    def name(self) -> str:
        return f"head{self.head}_seed{self.seed}"

    def run_dir(self, study_dir: Path) -> Path:
        return study_dir / "policies" / self.method / self.name


def check_study_dir(study_dir: str | os.PathLike) -> Path:
    """The study folder, absolute, created if missing and checked writable: ``StudyError`` with one line before any
    run starts otherwise."""
    path = Path(study_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise StudyError(f"the study folder {path} is a file: give a folder (a new one is created)")
    probe = path / ".write_check"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise StudyError(f"cannot write the study folder {path} ({error.strerror}): give one you can write") from None
    return path


def policy_grid(heads: Sequence[int], seeds: Sequence[int]) -> list[tuple[int, int]]:
    """(head, seed) of every policy of a method, seed-major: all heads of the first seed come first.

    The first entry is the calibration pilot. The demo's policy ``i`` is entry ``i`` of
    ``policy_grid(range(K), range(n))``: head ``i % K``, seed ``i // K``.
    """
    for name, values in (("heads", heads), ("seeds", seeds)):
        if not values:
            raise StudyError(f"no {name} given: the study needs at least one head and one seed")
        if len(set(values)) != len(values):
            raise StudyError(f"{name} {list(values)} repeat a value: each policy must be distinct")
        if min(values) < 0:
            raise StudyError(f"{name} {list(values)}: expected non-negative integers")
    return [(head, seed) for seed in seeds for head in heads]


Launcher = Callable[[PolicySpec, float, Path], tuple[list[str], dict[str, str]]]
"""``launch(spec, beta, run_dir) -> (command, environment)`` of one verl run that writes its metrics to
``run_dir/metrics.jsonl`` and its validation dumps to ``run_dir/validation``."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file. Lines end at "\n" only: ``str.splitlines`` would also cut at U+2028,
    U+0085 and other characters a sampled response may hold inside a JSON string."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def read_metrics(run_dir: Path) -> dict[int, dict[str, Any]]:
    """verl's file-logger records of a run, ``{step: metrics}``, over every attempt (later attempts win)."""
    files = sorted(run_dir.glob("metrics.attempt*.jsonl"), key=lambda p: int(p.stem.rsplit("attempt", 1)[1]))
    steps: dict[int, dict[str, Any]] = {}
    for path in [*files, run_dir / "metrics.jsonl"]:
        if path.is_file():
            for record in read_jsonl(path):
                steps[int(record["step"])] = record["data"]
    return steps


def _prepare_run_dir(run_dir: Path, restart: bool) -> None:
    """A fresh run (``restart``: nothing of an earlier run kept) or a resumed one (checkpoints, dumps and the
    earlier attempts' metrics kept; verl's file logger truncates ``metrics.jsonl``, so it is renamed first)."""
    if restart:
        for stale in ("checkpoints", "validation"):
            shutil.rmtree(run_dir / stale, ignore_errors=True)
        for stale in run_dir.glob("metrics*.jsonl"):
            stale.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    current = run_dir / "metrics.jsonl"
    if current.is_file() and current.stat().st_size:
        attempt = 1 + len(list(run_dir.glob("metrics.attempt*.jsonl")))
        current.rename(run_dir / f"metrics.attempt{attempt}.jsonl")


def run_policy(
    spec: PolicySpec,
    beta: float,
    study_dir: Path,
    launch: Launcher,
    total_steps: int,
    label: str,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Train one policy (or read back its finished run): ``{method, policy, head, seed, beta, seconds, steps}``.

    ``executor`` runs it (``cluster.LocalProcesses`` by default; ``cluster.RayJobs`` on a cluster), its output in
    ``run.log``; prints one progress line per training step. A failed run raises ``StudyError`` with the tail of its
    log.
    """
    run_dir = spec.run_dir(study_dir)
    result_file = run_dir / RESULT_FILE
    cached = read_json(result_file)
    if cached is not None and cached.get("beta") == beta:
        log(f"{label} {spec.method} {spec.name}: done earlier, reusing {result_file}")
        return cached
    executor = executor or LocalProcesses()
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def prepare() -> tuple[list[str], dict[str, str]]:
        _prepare_run_dir(run_dir, restart=cached is not None)  # a finished run at another beta starts over
        command, env = launch(spec, beta, run_dir)
        (run_dir / "command.json").write_text(json.dumps({"command": command, "env": env}, indent=2))
        log(f"{label} {spec.method} {spec.name} (beta={beta:.4g}): starting; verl's output goes to "
            f"{run_dir / 'run.log'}")  # fmt: skip
        return command, env

    def progress(line: str) -> None:
        match = _STEP.search(line)
        if match:
            log(f"{label} {spec.method} {spec.name} (beta={beta:.4g}): step {match.group(1)}/{total_steps}"
                f"{_progress_values(line)}, {time.perf_counter() - start:.0f} s")  # fmt: skip
        elif line.startswith("[cluster]"):
            log(f"{label} {spec.method} {spec.name}: {line[len('[cluster] '):].strip()}")

    returncode = executor.execute(f"{spec.method}/{spec.name}/beta={beta!r}", run_dir, prepare, progress)
    if returncode != 0:
        tail = (run_dir / "run.log").read_text()[-3000:]
        raise StudyError(f"run {spec.method}/{spec.name} failed (exit {returncode}); log: "
                         f"{run_dir / 'run.log'}\n{tail}")  # fmt: skip
    steps = read_metrics(run_dir)
    if not steps:
        where = (" where this machine reads it: on a cluster the study folder must be on a filesystem every node "
                 "shares, at the same path") if not isinstance(executor, LocalProcesses) else ""  # fmt: skip
        raise StudyError(
            f"run {spec.method}/{spec.name} logged no metrics to {run_dir / 'metrics.jsonl'}{where}: keep 'file' in "
            "trainer.logger (the recipes' LOGGER) and VERL_FILE_LOGGER_PATH unset"
        )
    result = {"method": spec.method, "policy": spec.name, "head": spec.head, "seed": spec.seed, "beta": beta,
              "seconds": round(time.perf_counter() - start, 1), "steps": steps}  # fmt: skip
    write_json(result_file, result)
    return result


def _progress_values(line: str) -> str:
    """", reward 0.12, KL 0.034" from a verl console line holding ``critic/score/mean`` and the KL metric."""
    values = []
    for name, key in _PROGRESS_METRICS.items():
        match = re.search(rf"{re.escape(key)}:(?:np\.float\d+\()?(-?[\d.]+(?:e-?\d+)?)", line)
        if match:
            values.append(f"{name} {float(match.group(1)):.4g}")
    return "".join(f", {value}" for value in values)


@contextmanager
def output_to(log_path: Path):
    """Send everything this process writes to stdout and stderr (Python, C, subprocesses) to ``log_path``."""
    import sys

    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "a") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield log_path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def calibrated_beta(aware_beta: float, pilots: dict[str, dict[str, Any]]) -> float:
    """β of the variance-aware policies, so their final KL meets the vanilla pilot's (Figure 10).

    At a fixed number of steps the final KL falls roughly like 1/β, so β ← β · KL_aware / KL_vanilla, with
    both pilots' final KLs (``report.final_value``), clipped to [β/4, 4β]. No KL signal (a pilot's KL ≤ 0)
    keeps β.
    """
    vanilla, aware = (final_value(pilots[method], KL_METRIC) for method in METHODS)
    if not (vanilla > 0 and aware > 0):
        return aware_beta
    return float(min(max(aware_beta * aware / vanilla, aware_beta / 4), aware_beta * 4))


def train_policies(
    grid: Sequence[tuple[int, int]],
    launch: Launcher,
    study_dir: Path,
    betas: dict[str, float],
    total_steps: int,
    calibrate: bool = True,
    stage: Callable[[str], Any] | None = None,
    parallel: int = 1,
    executor: Executor | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train both methods' policies over ``grid`` ((head, seed) pairs, ``policy_grid``); resumable.

    The first grid entry of each method runs first, at ``betas`` (the initial β per method). With
    ``calibrate``, their final KLs set the variance-aware β of every later policy (``calibrated_beta``),
    recorded in ``calibration.json`` and read back on resume. ``stage(name)``, if given, is a context
    manager wrapped around each run (the demo times them). ``parallel``: runs at once (each is its own
    verl job with its own Ray instance; a run's samples depend on its seed only, not on what runs beside it);
    the vanilla runs start beside the pilots, the later variance-aware ones once the pilots have calibrated β.
    ``executor``: where the runs execute (``cluster.executor_for``; default: subprocesses here).

    Returns the runs' records (``run_policy``), in grid order (pilots first), and the calibration record.
    """
    stage = stage or (lambda name: nullcontext())
    total = 2 * len(grid)
    done: list[int] = []
    started = time.perf_counter()

    def train(method: str, index: int, beta: float) -> dict[str, Any]:
        left = (time.perf_counter() - started) / max(len(done), 1) * (total - len(done)) / 60
        eta = f", ~{left:.1f} min left" if done else ""
        head, seed = grid[index]
        label = f"[policy {len(done) + 1}/{total}{eta}]"
        with stage(f"policy_{method}_{index}"):
            result = run_policy(PolicySpec(method, head, seed), beta, study_dir, launch, total_steps, label, executor)
        done.append(1)
        return result

    def calibrate_from(pilots: dict[str, dict[str, Any]]) -> dict[str, Any]:
        calibration = read_json(study_dir / CALIBRATION_FILE)
        if calibration is None or calibration.get("initial_beta") != betas:
            aware = calibrated_beta(betas["variance_aware"], pilots) if calibrate else betas["variance_aware"]
            calibration = {
                "initial_beta": dict(betas),
                "calibrated": calibrate,
                "pilot": {"head": grid[0][0], "seed": grid[0][1]},
                "pilot_final_kl": {method: final_value(run, KL_METRIC) for method, run in pilots.items()},
                "beta": {"vanilla": betas["vanilla"], "variance_aware": aware},
            }
            write_json(study_dir / CALIBRATION_FILE, calibration)
            kl = calibration["pilot_final_kl"]
            log(f"calibration: pilot final KL vanilla {kl['vanilla']:.4g}, variance-aware {kl['variance_aware']:.4g} "
                f"-> variance-aware beta {aware:.4g}")  # fmt: skip
        return calibration

    later = range(1, len(grid))
    if parallel <= 1:
        pilots = {method: train(method, 0, betas[method]) for method in METHODS}
        calibration = calibrate_from(pilots)
        rest = {(m, i): train(m, i, calibration["beta"][m]) for i in later for m in METHODS}
    else:  # vanilla runs need no calibration: they fill the slots while the pilots finish
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = {(m, 0): pool.submit(train, m, 0, betas[m]) for m in METHODS}
            futures |= {("vanilla", i): pool.submit(train, "vanilla", i, betas["vanilla"]) for i in later}
            pilots = {method: futures[(method, 0)].result() for method in METHODS}
            calibration = calibrate_from(pilots)
            aware_beta = calibration["beta"]["variance_aware"]
            futures |= {("variance_aware", i): pool.submit(train, "variance_aware", i, aware_beta) for i in later}
            rest = {key: future.result() for key, future in futures.items() if key[1] > 0}
    runs = [pilots[method] for method in METHODS] + [rest[(m, i)] for i in later for m in METHODS]
    return runs, calibration


# ---------------------------------------------------------------------------------------------
# Evaluation: the gold judge on verl's validation dumps
# ---------------------------------------------------------------------------------------------
class Judge(Protocol):
    name: str

    def score_responses(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """(n,) float judge score of each (prompt, response)."""


def validation_dumps(
    run_dir: Path, reference_dir: Path | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """verl's validation samples of the reference policy and of the trained policy, each sorted by prompt and
    response: every run lists the same prompts in the same order, and a run's judge means sum the same samples
    in the same order whatever order verl dumped them in (their order of arrival, which varies run to run).
    Rows: ``input`` (the prompt), ``output`` (the response), ``score`` (the run's reward).

    The trained policy is the run's last dump. The reference is the run's own first dump (step 0) when it
    validated before training, else the first dump of ``reference_dir`` (the study's run that did).

    Returns:
        (reference rows, final rows, whether the reference rows are the run's own).
    """
    dumps = _dumps(run_dir)
    if len(dumps) >= 2:
        first, last = dumps[0], dumps[-1]
    elif dumps and reference_dir is not None and len(_dumps(reference_dir)) >= 2:
        first, last = _dumps(reference_dir)[0], dumps[-1]
    else:
        raise StudyError(
            f"{run_dir / 'validation'} holds {len(dumps)} validation dumps; expected step 0 and the last step: run "
            "with trainer.val_before_train=True, trainer.test_freq=<steps> and trainer.validation_data_dir set"
        )
    reference, final = (sorted(read_jsonl(dump), key=lambda r: (r["input"], r["output"])) for dump in (first, last))
    return reference, final, len(dumps) >= 2


def _dumps(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "validation").glob("*.jsonl"), key=lambda p: int(p.stem))


def judge_run(run_dir: Path, judge: Judge, reference_dir: Path | None = None) -> dict[str, Any]:
    """Judge scores of a run's generations, cached in ``judge_<name>.json``, per held-out prompt (the mean over
    the prompt's samples when verl's validation drew several, ``val_kwargs.n``): ``judge_reference`` and
    ``judge_final`` (n_prompts,); ``proxy_reference`` (the run's own reward of the reference samples; None when
    the reference was validated by another run, ``reference_dir``, whose reward head may differ);
    ``reference_repeats`` (n_samples, n_prompts): the judge score of the k-th reference sample of each prompt,
    k independent evaluations of the reference (None with one sample per prompt); ``final_samples_per_prompt``."""
    cache = run_dir / f"judge_{re.sub(r'[^A-Za-z0-9_.-]+', '_', judge.name)}.json"
    cached = read_json(cache)
    if cached is not None:
        return cached
    reference, final, own = validation_dumps(run_dir, reference_dir)

    def scores(rows: list[dict[str, Any]]) -> np.ndarray:
        return np.asarray(judge.score_responses([r["input"] for r in rows], [r["output"] for r in rows]), float)

    reference_judge = per_prompt(reference, scores(reference))
    final_judge = per_prompt(final, scores(final))
    scored = {
        "judge": judge.name,
        "judge_reference": reference_judge.mean(axis=0).tolist(),
        "judge_final": final_judge.mean(axis=0).tolist(),
        "final_samples_per_prompt": len(final_judge),
        "proxy_reference": (
            per_prompt(reference, np.array([float(r["score"]) for r in reference])).mean(axis=0).tolist()
            if own
            else None
        ),
        "reference_repeats": reference_judge.tolist() if len(reference_judge) >= 2 else None,
    }
    write_json(cache, scored)
    return scored


def per_prompt(rows: list[dict[str, Any]], values: np.ndarray) -> np.ndarray:
    """(n_samples, n_prompts) values of rows sorted by prompt with the same number of samples per prompt."""
    prompts = sorted({row["input"] for row in rows})
    by_prompt: dict[str, list[float]] = {prompt: [] for prompt in prompts}
    for row, value in zip(rows, values, strict=True):
        by_prompt[row["input"]].append(float(value))
    counts = {len(samples) for samples in by_prompt.values()}
    if len(counts) != 1:
        raise StudyError(f"validation samples per prompt differ ({sorted(counts)}): expected verl's val_kwargs.n each")
    return np.array([by_prompt[prompt] for prompt in prompts]).T


def dump_statistics(run_dir: Path, reference_dir: Path | None = None) -> dict[str, Any]:
    """What ``spread`` reads off a run's validation dumps: ``ensemble_variance_reference`` and
    ``ensemble_variance_final``, the mean σ² across the reward heads (the dumps' ``reward_variance`` column, None
    without one) over the reference's and the trained policy's samples; ``proxy_final_std``: the standard deviation
    (ddof=1) of the run's own reward (``score``) over its final samples."""
    reference, final, _ = validation_dumps(run_dir, reference_dir)

    def mean_variance(rows: list[dict[str, Any]]) -> float | None:
        values = [float(row["reward_variance"]) for row in rows if "reward_variance" in row]
        return float(np.mean(values)) if values and len(values) == len(rows) else None

    scores = np.array([float(row["score"]) for row in final])
    return {
        "ensemble_variance_reference": mean_variance(reference),
        "ensemble_variance_final": mean_variance(final),
        "proxy_final_std": float(scores.std(ddof=1)) if scores.size >= 2 else None,
    }


class TrainingDisagreement:
    """The heads' disagreement over a run's training, whatever its method: each step's samples (verl's
    ``trainer.rollout_data_dir`` dumps in ``run_dir/rollouts``, prompt and response text; the V1 trainer dumps no
    reward extra info) scored again by the ensemble reward model as the ensemble reward manager scores them with
    ``prompt_format=text`` (prompt + response as one text, its last ``max_length`` tokens, fixed-shape batches).
    The variance-aware runs log the same σ² as ``variance_kl/reward_variance/mean``; vanilla runs log none."""

    def __init__(self, reward_model: Path) -> None:
        self.reward_model = Path(reward_model)
        self._scorer = None

    def __call__(self, run_dir: Path) -> dict[str, Any]:
        """``{"ensemble_variance_training": [[step, mean σ² over the step's samples], ...]}`` (None without dumps),
        cached in ``run_dir/ensemble_training.json`` for this reward model."""
        cache = run_dir / TRAINING_VARIANCE_FILE
        if cache.is_file() and (cached := read_json(cache)).get("reward_model") == str(self.reward_model):
            return {"ensemble_variance_training": cached["per_step"]}
        dumps = sorted((run_dir / "rollouts").glob("*.jsonl"), key=lambda path: int(path.stem))
        if not dumps:
            return {"ensemble_variance_training": None}
        per_step = [[int(dump.stem), self._mean_variance(read_jsonl(dump))] for dump in dumps]
        write_json(cache, {"reward_model": str(self.reward_model), "per_step": per_step})
        return {"ensemble_variance_training": per_step}

    def _mean_variance(self, rows: list[dict[str, Any]]) -> float:
        import torch

        from verl_variance.core.config import EnsembleRewardConfig
        from verl_variance.core.variance import ensemble_reward_variance
        from verl_variance.integration.ensemble_reward import EnsembleScorer

        if self._scorer is None:  # the manager's batch size and max_length (the demo keeps its defaults), all threads
            settings = EnsembleRewardConfig(num_threads=torch.get_num_threads())
            self._scorer = EnsembleScorer(str(self.reward_model), settings)
        rewards = self._scorer.score([("", row["input"] + row["output"]) for row in rows])
        return float(ensemble_reward_variance(rewards).mean())


def finished_runs(study_dir: Path) -> list[dict[str, Any]]:
    """The records of every finished run in a study folder, in method order then name order."""
    runs = []
    for method in METHODS:
        for result in sorted((study_dir / "policies" / method).glob(f"*/{RESULT_FILE}")):
            runs.append(read_json(result))
    return runs


def evaluate_runs(
    runs: Iterable[dict[str, Any]],
    study_dir: Path,
    judge: Judge,
    reference_dir: Path | None = None,
    training: Callable[[Path], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Each run record with its judge scores (``judge_run``), its dumps' statistics (``dump_statistics``) and, with
    ``training`` (a ``TrainingDisagreement``), the heads' disagreement over its training added (``reference_dir``:
    the run that validated the reference policy, for runs that did not)."""
    judged = []
    for run in runs:
        run_dir = PolicySpec(run["method"], run["head"], run["seed"]).run_dir(study_dir)
        judged.append({**run, **judge_run(run_dir, judge, reference_dir), **dump_statistics(run_dir, reference_dir),
                       **(training(run_dir) if training is not None else {})})  # fmt: skip
    return judged


def write_study_report(
    runs: list[dict[str, Any]], study_dir: Path, settings: dict[str, Any], timings: dict[str, Any], kl_tolerance: float
) -> dict[str, Any]:
    """``report.json``, ``report.md`` and the figures of judged runs (``report.py``); returns the report."""
    report = build_report(runs, timings, settings, kl_tolerance=kl_tolerance)
    write_report(report, runs, study_dir)
    for line in summary_lines(report):
        print(line)
    return report
