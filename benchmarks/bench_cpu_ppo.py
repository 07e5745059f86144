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
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import emit, run  # noqa: E402

TARGET_STEP_SECONDS = {"v1": 2.5, "legacy": 1.0}
TARGET_PEAK_GB = 6.0


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
