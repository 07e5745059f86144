"""Shared harness of the CPU benchmarks: one verl PPO run of the quick-start set-up, measured.

Each run goes through ``verl-variance ppo`` (``verl.trainer.main_ppo`` with the CPU preset) in a
child process; step times come from verl's own ``timing_s/*`` metrics (file logger), memory from
sampling the process tree.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from verl_variance.experiments.quickstart import build_prompt_files, quickstart_overrides
from verl_variance.experiments.resources import StageMeter
from verl_variance.models.tiny import TinyModelConfig, build_tiny_model


def emit(**figure) -> None:
    """One JSON line per figure."""
    print(json.dumps(figure), flush=True)


def run(
    trainer: str, workdir: Path, steps: int, extra_overrides: list[str] | None = None, keys: list[str] | None = None
) -> dict:
    """PPO run of the quick-start set-up; returns step times, steady-state step, wall time, peak memory, and each
    metric of ``keys`` per step."""
    model = build_tiny_model(workdir / "model", TinyModelConfig())
    train, val = build_prompt_files(workdir / "data", n_train=8 * steps)
    metrics_file = workdir / "metrics.jsonl"
    overrides = quickstart_overrides(workdir, model, train, val, steps)
    overrides += [f"trainer.use_v1={trainer == 'v1'}", "trainer.logger=[file]", *(extra_overrides or [])]
    env = dict(os.environ, VERL_FILE_LOGGER_PATH=str(metrics_file), VERL_PLATFORM="cpu")
    command = [sys.executable, "-m", "verl_variance.cli", "ppo", "--device", "cpu", *overrides]
    meter = StageMeter(interval=0.2)  # peak memory of this process tree, the verl run included
    start = time.perf_counter()
    with meter.stage("run"):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{trainer} run failed:\n{stderr[-4000:]}")
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    step_times = [r["data"]["timing_s/step"] for r in records]
    steady = step_times[2:] if len(step_times) > 3 else step_times[1:]
    return {
        "step_times_s": step_times,
        "steady_step_s": statistics.median(steady),
        "wall_s": wall,
        "peak_pss_gb": meter.stages["run"]["peak_pss_gb"],
        "peak_rss_sum_gb": meter.stages["run"]["peak_rss_sum_gb"],
        "gen_s": statistics.median([r["data"]["timing_s/gen"] for r in records[2:] or records]),
        "adv_s": statistics.median([r["data"]["timing_s/adv"] for r in records[2:] or records]),
        **{key: [r["data"][key] for r in records] for key in keys or []},
    }
