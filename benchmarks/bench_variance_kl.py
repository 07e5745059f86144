"""Cost of variance-aware KL, side by side with verl's stock KL in the same invocation.

1. ``apply_kl_penalty`` on a 256 x 1024-token batch: variance_aware vs stock ``kl`` (pure tensor
   work in the driver, ``variance_kl.telemetry=false``). Target: <= 1.2x. The per-step telemetry
   (host numpy statistics, default on) is timed beside it and reported as its own figure.
2. End to end: CPU PPO steps (V1 trainer, quick-start set-up) with ``algorithm.kl_penalty=
   variance_aware`` vs vanilla KL-in-reward. Target: step time <= 1.02x. The whole step is noisy at
   this size, so the driver's advantage stage (``timing_s/adv``, where the KL is applied) is reported
   too, as a share of the step.

    python benchmarks/bench_variance_kl.py [--steps 10] [--rounds 2] [--skip-e2e]
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

BATCH, RESPONSE_LENGTH = 256, 1024
TARGET_KERNEL_RATIO, TARGET_STEP_RATIO = 1.2, 1.02
VARIANCE_REWARD = Path(__file__).resolve().parent.parent / "verl_variance" / "rewards" / "toy.py"


def kernel_batch(seed: int = 0):
    from verl import DataProto

    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(RESPONSE_LENGTH)[None, :] < torch.randint(1, RESPONSE_LENGTH, (BATCH, 1), generator=g)).float()
    return DataProto.from_dict(
        tensors={
            "old_log_probs": -torch.rand(BATCH, RESPONSE_LENGTH, generator=g) * 3,
            "ref_log_prob": -torch.rand(BATCH, RESPONSE_LENGTH, generator=g) * 3,
            "response_mask": mask,
            "token_level_scores": torch.randn(BATCH, RESPONSE_LENGTH, generator=g) * mask,
        },
        non_tensors={"reward_variance": np.random.default_rng(seed).uniform(0.1, 10.0, BATCH).astype(object)},
    )


def time_kernel(repeats: int) -> dict[str, float]:
    """Median seconds of stock ``kl``, variance-aware without telemetry (the tensor work), and with it."""
    from verl.trainer.ppo import core_algos, ray_trainer

    from verl_variance.integration import state

    settings = {"normalize": True}
    modes = {
        "stock": ("kl", None),
        "variance_aware": ("variance_aware", {**settings, "telemetry": False}),
        "variance_aware_telemetry": ("variance_aware", {**settings, "telemetry": True}),
    }
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeats):  # interleaved, so drift hits every mode equally
        for mode, (kl_penalty, variance_settings) in modes.items():
            config = {"algorithm": {"kl_penalty": kl_penalty}, "variance_kl": variance_settings or {}}
            data = kernel_batch()
            with state.entered(state.MethodsState.from_config(config)):  # as inside a trainer's step
                start = time.perf_counter()
                ray_trainer.apply_kl_penalty(data, core_algos.FixedKLController(0.05), kl_penalty=kl_penalty)
                times[mode].append(time.perf_counter() - start)
    return {mode: statistics.median(values) for mode, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="alternating vanilla/variance-aware run pairs")
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()

    kernel = time_kernel(args.repeats)
    emit(figure="apply_kl_penalty_s", batch=[BATCH, RESPONSE_LENGTH],
         **{mode: round(seconds, 5) for mode, seconds in kernel.items()})  # fmt: skip
    ratio = kernel["variance_aware"] / kernel["stock"]
    emit(figure="apply_kl_penalty_ratio", value=round(ratio, 3), target=TARGET_KERNEL_RATIO,
         meets_target=ratio <= TARGET_KERNEL_RATIO, note="tensor work: variance_kl.telemetry=false")  # fmt: skip
    telemetry_ratio = kernel["variance_aware_telemetry"] / kernel["stock"]
    emit(figure="apply_kl_penalty_ratio_with_telemetry", value=round(telemetry_ratio, 3),
         telemetry_ms=round((kernel["variance_aware_telemetry"] - kernel["variance_aware"]) * 1e3, 3))  # fmt: skip
    if args.skip_e2e:
        return

    variance_aware = [
        "algorithm.kl_penalty=variance_aware",
        "reward.custom_reward_function.name=positive_word_share_with_variance",
        f"reward.custom_reward_function.path={VARIANCE_REWARD}",
    ]
    steady: dict[str, list[float]] = {"vanilla": [], "variance_aware": []}
    adv: dict[str, list[float]] = {"vanilla": [], "variance_aware": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):  # A B A B ...: slow drift of the machine hits both
            for mode, extra in (("vanilla", []), ("variance_aware", variance_aware)):
                result = run("v1", Path(tmp) / f"{mode}_{round_index}", args.steps, extra)
                steady[mode].append(result["steady_step_s"])
                adv[mode].append(result["adv_s"])
    vanilla = {"steady_step_s": statistics.median(steady["vanilla"]), "adv_s": statistics.median(adv["vanilla"])}
    aware = {
        "steady_step_s": statistics.median(steady["variance_aware"]),
        "adv_s": statistics.median(adv["variance_aware"]),
    }
    step_ratio = aware["steady_step_s"] / vanilla["steady_step_s"]
    emit(figure="ppo_step_s", trainer="v1", vanilla=round(vanilla["steady_step_s"], 3),
         variance_aware=round(aware["steady_step_s"], 3), runs=steady)  # fmt: skip
    emit(figure="ppo_step_ratio", value=round(step_ratio, 3), target=TARGET_STEP_RATIO,
         meets_target=step_ratio <= TARGET_STEP_RATIO)  # fmt: skip
    emit(figure="adv_stage_s", vanilla=round(vanilla["adv_s"], 4), variance_aware=round(aware["adv_s"], 4),
         overhead_share_of_step=round((aware["adv_s"] - vanilla["adv_s"]) / vanilla["steady_step_s"], 4))  # fmt: skip


if __name__ == "__main__":
    main()
