"""CPU PPO step time, whole-run wall time and peak memory: V1 vs legacy trainer, side by side.

Runs the quick-start set-up (tiny 2-layer hidden-64 Qwen2, batch 8, responses <= 10 tokens, GAE +
critic + KL in reward) through ``verl.trainer.main_ppo`` for each trainer, one after the other in
the same invocation, and prints one JSON line per figure:

    python benchmarks/bench_cpu_ppo.py [--steps 8]

Targets (issue 2): steady-state step <= 2.5 s (V1) and <= 1 s (legacy) on 2 cores; peak memory of
the whole process tree (driver + Ray + workers) <= 6 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from verl_variance.experiments.quickstart import build_prompt_files, quickstart_overrides
from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

TARGET_STEP_SECONDS = {"v1": 2.5, "legacy": 1.0}
TARGET_PEAK_GB = 6.0


def tree_memory_bytes(root: psutil.Process) -> tuple[int, int]:
    """(PSS, RSS) summed over the process tree. PSS shares each shared page among the processes mapping
    it (the memory the run really uses); the RSS sum counts shared libraries once per process."""
    pss = rss = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        pss += info.pss
        rss += info.rss
    return pss, rss


def run(trainer: str, workdir: Path, steps: int) -> dict:
    model = build_tiny_model(workdir / "model", TinyModelConfig())
    train, val = build_prompt_files(workdir / "data", n_train=8 * steps)
    metrics_file = workdir / f"{trainer}.jsonl"
    overrides = quickstart_overrides(workdir, model, train, val, steps)
    overrides += [f"trainer.use_v1={trainer == 'v1'}", "trainer.logger=[file]"]
    env = dict(os.environ, VERL_FILE_LOGGER_PATH=str(metrics_file), VERL_PLATFORM="cpu")
    command = [sys.executable, "-m", "verl_variance.cli", "ppo", "--device", "cpu", *overrides]
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_pss = peak_rss = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_pss, peak_rss
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                pss, rss = tree_memory_bytes(root)
            except psutil.Error:
                pss = rss = 0
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{trainer} run failed:\n{stderr[-4000:]}")
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    step_times = [r["data"]["timing_s/step"] for r in records]
    steady = step_times[2:] if len(step_times) > 3 else step_times[1:]
    return {
        "step_times_s": step_times,
        "steady_step_s": statistics.median(steady),
        "wall_s": wall,
        "peak_pss_gb": peak_pss / 2**30,
        "peak_rss_sum_gb": peak_rss / 2**30,
        "gen_s": statistics.median([r["data"]["timing_s/gen"] for r in records[2:] or records]),
    }


def emit(**figure) -> None:
    print(json.dumps(figure), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for trainer in ("v1", "legacy"):
            r = results[trainer] = run(trainer, Path(tmp) / trainer, args.steps)
            target = TARGET_STEP_SECONDS[trainer]
            steps = [round(t, 3) for t in r["step_times_s"]]
            emit(figure="steady_step_s", trainer=trainer, value=round(r["steady_step_s"], 3), target=target,
                 meets_target=r["steady_step_s"] <= target, steps=steps)  # fmt: skip
            emit(figure="gen_s", trainer=trainer, value=round(r["gen_s"], 3))
            emit(figure="wall_s", trainer=trainer, value=round(r["wall_s"], 1), steps=args.steps)
            peak = r["peak_pss_gb"]
            emit(figure="peak_memory_gb", trainer=trainer, value=round(peak, 2), target=TARGET_PEAK_GB,
                 meets_target=peak <= TARGET_PEAK_GB, measure="PSS summed over the process tree",
                 rss_sum_gb=round(r["peak_rss_sum_gb"], 2))  # fmt: skip
    ratio = results["v1"]["steady_step_s"] / results["legacy"]["steady_step_s"]
    emit(figure="step_ratio_v1_over_legacy", value=round(ratio, 2), reference_verl_notes=round(2.5 / 0.6, 2))


if __name__ == "__main__":
    main()
