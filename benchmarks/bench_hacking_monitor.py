"""Cost of the reward-hacking monitor against the PPO step it watches, both measured in the same runs.

1. End to end: CPU PPO runs of the quick-start set-up with a K-head ensemble reward and ``hacking_monitor.enable``,
   on both trainers: the monitor's own time each step (``timing_s/hacking_monitor``: the heads' σ² and LCB gap from
   the batch, the signals, the alarms; a checkpoint it saves aside) over verl's ``timing_s/step`` of the same step.
   Target: <= 1% (the median over the steps after the first). A tiny model's step is the smallest a run has, so
   this is the ratio's upper end; a demo policy run's steps (SmolLM2) report the same metric.
2. The driver work alone at larger batches (in-process, legacy batch view): per step, against the tiny run's step.

    python benchmarks/bench_hacking_monitor.py [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import emit, run  # noqa: E402

TARGET_RATIO = 0.01
SHAPES = ((8, 4, 10), (256, 10, 1024), (1024, 10, 1024))
"""(samples, heads, response tokens): the demo's step, and two large GPU steps."""


def monitored_overrides(reward_model: Path) -> list[str]:
    return [
        "reward.custom_reward_function.path=null",
        "reward.reward_manager.name=ensemble",
        f"++ensemble_reward.model_path={reward_model}",
        "+hacking_monitor.enable=true",
    ]


def driver_seconds(samples: int, heads: int, tokens: int, repeats: int = 20) -> float:
    """Median seconds of the monitor's driver work of one step at this shape (batch part + signals)."""
    from types import SimpleNamespace

    from verl import DataProto

    from verl_variance.core.config import HackingMonitorConfig
    from verl_variance.core.hacking import PROXY_METRIC
    from verl_variance.integration.batches import LegacyBatch
    from verl_variance.integration.hacking_monitor import TrainerMonitor

    generator = torch.Generator().manual_seed(0)
    scores = torch.zeros(samples, tokens)
    scores[:, -1] = torch.randn(samples, generator=generator)
    columns = {f"reward_head_{k}": np.random.default_rng(k).normal(size=samples) for k in range(heads)}
    batch = LegacyBatch(DataProto.from_dict(tensors={"token_level_scores": scores}, non_tensors=columns))
    monitor = TrainerMonitor(HackingMonitorConfig(enable=True))
    trainer = SimpleNamespace(global_steps=0, config=SimpleNamespace(trainer={"default_local_dir": "/nonexistent"}))
    times = []
    for step in range(1, repeats + 1):
        trainer.global_steps = step
        start = time.perf_counter()
        metrics = monitor.batch_metrics(batch) | {PROXY_METRIC: 0.0, "actor/entropy": 1.0}
        monitor.monitor.observe(step, metrics)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

    steps = {}
    with tempfile.TemporaryDirectory() as tmp:
        reward_model = build_tiny_model(Path(tmp) / "rm", TinyModelConfig("qwen2", num_labels=4))
        for trainer in ("v1", "legacy"):
            result = run(trainer, Path(tmp) / trainer, args.steps, monitored_overrides(reward_model),
                         keys=["timing_s/hacking_monitor"])  # fmt: skip
            monitor = result["timing_s/hacking_monitor"]
            ratios = [m / s for m, s in zip(monitor, result["step_times_s"], strict=True)]
            steady = statistics.median(ratios[1:])  # step 1 holds the first-step allocations
            steps[trainer] = result["steady_step_s"]
            emit(figure="monitor_share_of_step", trainer=trainer, monitor_ms=[round(m * 1e3, 3) for m in monitor],
                 step_s=[round(s, 3) for s in result["step_times_s"]], value=round(steady, 5),
                 max=round(max(ratios), 5), target=TARGET_RATIO, meets_target=steady <= TARGET_RATIO)  # fmt: skip
    tiny_step = min(steps.values())
    for samples, heads, tokens in SHAPES:
        seconds = driver_seconds(samples, heads, tokens)
        emit(figure="monitor_driver_ms", samples=samples, heads=heads, response_tokens=tokens,
             value=round(seconds * 1e3, 3), share_of_tiny_step=round(seconds / tiny_step, 5))  # fmt: skip


if __name__ == "__main__":
    main()
