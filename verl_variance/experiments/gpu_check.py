"""``scripts/gpu_check.sh``'s Python half: the models it runs, and the figures it reports.

Before a study on GPU nodes, a user with one GPU runs the recipes' GPU dataflow for a few steps on random models of
the study's size, built from configs (no hub): the variance-aware recipe (vLLM rollout, the K-head reward model
served by verl) and the Megatron recipe. Each run's verl metrics become JSON lines: the step time, the GPU memory,
and the projected time of the paper's 192 steps.

    python -m verl_variance.experiments.gpu_check models --out DIR --size gpt2 --heads 10
    python -m verl_variance.experiments.gpu_check summary --run NAME --metrics metrics.jsonl [--steps 192]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

PAPER_STEPS = 192
"""Table 6/7: 192 PPO steps of batch 128 per policy."""

SIZES: dict[str, dict[str, TinyModelConfig]] = {
    # GPT-2 small's backbone (12 x 768, 12 heads, positions 1024) with the local tokenizer's vocabulary; a
    # Qwen2.5-0.5B-shaped policy for Megatron (GPT-2 has no Megatron-Bridge)
    "gpt2": {
        "policy": TinyModelConfig("gpt2", 768, 12, 12, 12, 3072, 4096, 1024),
        "reward_model": TinyModelConfig("gpt2", 768, 12, 12, 12, 3072, 4096, 1024, num_labels=10, seed=1),
        "megatron_policy": TinyModelConfig("qwen2", 896, 24, 14, 2, 4864, 4096, 4096),
    },
    # a smoke test of the script itself (vLLM's CPU kernels need a head size of 64: 128 / 2 heads)
    "tiny": {
        "policy": TinyModelConfig("gpt2", 128, 2, 2, 2, 256, 512, 512),
        "reward_model": TinyModelConfig("gpt2", 128, 2, 2, 2, 256, 512, 512, num_labels=10, seed=1),
        "megatron_policy": TinyModelConfig("qwen2", 128, 2, 2, 2, 256, 512, 512),
    },
}


def build_models(out: Path, size: str, heads: int) -> dict[str, str]:
    """The random policy, K-head reward model and Megatron policy folders of ``size`` (``SIZES``)."""
    if size not in SIZES:
        raise ValueError(f"--size {size!r}: expected one of {sorted(SIZES)}")
    if heads < 2:
        raise ValueError(f"--heads {heads}: an ensemble needs K >= 2 heads")
    configs = dict(SIZES[size])
    configs["reward_model"] = TinyModelConfig(**{**configs["reward_model"].__dict__, "num_labels": heads})
    return {name: str(build_tiny_model(out / name, config)) for name, config in configs.items()}


def read_steps(metrics: Path) -> dict[int, dict[str, Any]]:
    """verl's file logger: one JSON line per step (``VERL_FILE_LOGGER_PATH``)."""
    steps = {}
    for line in metrics.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            steps[int(record["step"])] = record["data"]
    return steps


def summarize(run: str, steps: dict[int, dict[str, Any]], total_steps: int = PAPER_STEPS) -> list[dict[str, Any]]:
    """The figures of one run: step 1 (first-call allocations, compilation), the median later step, the GPU memory
    verl measured, and ``total_steps`` projected as step 1 + (total_steps - 1) x the median later step."""
    if not steps:
        return [{"run": run, "figure": "steps", "value": 0, "note": "the run logged no step"}]
    times = {step: float(data["timing_s/step"]) for step, data in steps.items() if "timing_s/step" in data}
    later = [seconds for step, seconds in sorted(times.items()) if step > 1]
    first = times.get(1)
    median = statistics.median(later) if later else first
    rows = [
        {"run": run, "figure": "steps", "value": len(steps)},
        {"run": run, "figure": "step_1_s", "value": first},
        {"run": run, "figure": "median_step_s", "value": median, "note": f"over steps 2..{max(steps)}"},
    ]
    for figure in ("max_memory_allocated_gb", "max_memory_reserved_gb"):  # actor/perf/..., critic/perf/...
        values = [float(value) for data in steps.values() for key, value in data.items() if key.endswith(figure)]
        if values:
            rows.append({"run": run, "figure": figure, "value": max(values), "note": "the largest of any worker"})
    for figure in ("reward_variance", "kl_weight"):
        metric = f"variance_kl/{figure}/mean"
        values = [float(data[metric]) for data in steps.values() if metric in data]
        if values:  # sigma^2 across the served heads reached the KL penalty
            rows.append({"run": run, "figure": figure, "value": statistics.mean(values),
                         "note": f"{metric}, all steps"})  # fmt: skip
    if first is not None and median is not None:
        rows.append({"run": run, "figure": f"projected_{total_steps}_steps_h",
                     "value": (first + (total_steps - 1) * median) / 3600,
                     "note": "step 1 + the median later step for each other step"})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verl_variance.experiments.gpu_check", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="build the random models of the check; prints their folders")
    models.add_argument("--out", required=True, type=Path)
    models.add_argument("--size", default="gpt2", help=f"one of {sorted(SIZES)}")
    models.add_argument("--heads", type=int, default=10, help="K, the reward model's heads")
    summary = commands.add_parser("summary", help="one JSON line per figure of a finished (or failed) run")
    summary.add_argument("--run", required=True)
    summary.add_argument("--metrics", required=True, type=Path)
    summary.add_argument("--steps", type=int, default=PAPER_STEPS, help="the steps to project")
    args = parser.parse_args(argv)
    if args.command == "models":
        try:
            print(json.dumps(build_models(args.out, args.size, args.heads)))
        except (ValueError, OSError) as error:
            print(f"gpu_check models: {error}", file=sys.stderr)
            return 2
        return 0
    steps = read_steps(args.metrics) if args.metrics.is_file() else {}
    for row in summarize(args.run, steps, args.steps):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
