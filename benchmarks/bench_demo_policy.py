"""One default-scale demo policy run, before and after issue 13, side by side in one invocation.

The run is the demo's vanilla policy (SmolLM2-135M, batch 8, responses <= 10 tokens, GAE + critic +
the ensemble reward, KL in the reward) on the assets of an earlier ``verl-variance demo`` (its
``models/``, ``reward_model/`` and ``data/``). Two set-ups, alternated ``--repeats`` times:

- ``separate``: what the demo ran before: the ``hf`` rollout as a separate server process that
  receives the weights after every step and samples in fp32, bf16 FSDP compute, torch's default AdamW
  loop, gradient checkpointing, weights re-gathered for every forward, the 2-8-token prompts padded
  to 16, 8-row sampling chunks, validation before training in every run (one sample per prompt),
  verl's TaskRunner in a Ray actor of its own;
- ``colocated``: today's defaults: sampling inside the actor worker on its own weights, the demo's
  precision (``auto``: bf16 compute and a bf16 sampler on a CPU with native bf16, else fp32), fused
  AdamW, no gradient checkpointing, weights kept gathered from forward to backward (one rank), prompts
  padded to their bound of 8, 8-row chunks for a step's requests and 48-row chunks for validation's, the
  reference validated once per study (not here), the TaskRunner in the driver process.

Both score rewards in fixed-shape chunks of 8 rows (bit-identical whatever arrives together; the earlier
pad-to-the-longest batching cannot be selected any more: measured on the scorer alone, it took ~0.03 s
less a step).

Figures (one JSON line each): steady step (median ``timing_s/step`` from step 2), launch to the end
of step 1, wall time, peak PSS of the whole process tree; and the ratios colocated / separate.
Targets: step <= 0.5x, launch to first step <= 0.5x, peak PSS <= 8 GB.

    python benchmarks/bench_demo_policy.py [--workdir runs/demo] [--steps 6] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import emit  # noqa: E402

from verl_variance.experiments import demo  # noqa: E402
from verl_variance.experiments.resources import StageMeter  # noqa: E402

TARGET_STEP_RATIO, TARGET_LAUNCH_RATIO, TARGET_PSS_GB = 0.5, 0.5, 8.0
BF16 = "{param_dtype:bf16,reduce_dtype:fp32,buffer_dtype:fp32}"
SETUPS = {
    "separate": [
        "++actor_rollout_ref.rollout.engine_kwargs.hf.separate_server=True",
        f"actor_rollout_ref.actor.fsdp_config.mixed_precision={BF16}",
        f"actor_rollout_ref.ref.fsdp_config.mixed_precision={BF16}",
        "trainer.val_before_train=True",
        "actor_rollout_ref.actor.optim.override_optimizer_config=null",
        "critic.optim.override_optimizer_config=null",
        "actor_rollout_ref.model.enable_gradient_checkpointing=True",
        "critic.model.enable_gradient_checkpointing=True",
        "actor_rollout_ref.rollout.engine_kwargs.hf.batch_rows=8",
        "actor_rollout_ref.rollout.val_kwargs.n=1",  # the earlier demo's validation: one sample per prompt
        "actor_rollout_ref.rollout.dtype=float32",
        "data.max_prompt_length=16",  # the 2-8-token prompts padded to 16
        "actor_rollout_ref.actor.fsdp_config.reshard_after_forward=True",
        "actor_rollout_ref.ref.fsdp_config.reshard_after_forward=True",
        "critic.fsdp.reshard_after_forward=True",
        "ray_kwargs.task_runner_in_driver=False",  # verl's TaskRunner as a Ray actor of its own
        "ray_kwargs.services_in_agent_loop=False",  # load balancer and reward-loop worker: Ray actors of their own
    ],
    "colocated": [],
}
_STEP_ONE = re.compile(r"\bstep:1 - ")


def demo_paths(workdir: Path) -> dict[str, Path]:
    """The demo's policy (SmolLM2 from the asset cache), prompts, reward model and critic backbone."""
    from verl_variance.experiments.assets import AssetCache
    from verl_variance.experiments.smollm2 import build_smollm2

    paths = {
        "data_dir": workdir / "data",
        "reward_model": workdir / "reward_model" / "ensemble",
        "critic": workdir / "models" / "reward_backbone",
    }
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        sys.exit(f"bench_demo_policy: {missing} missing: run `verl-variance demo --workdir {workdir}` first")
    return {**paths, "policy": build_smollm2(AssetCache(None)).path}


def run_once(setup: str, workdir: Path, paths: dict[str, Path], steps: int) -> dict:
    scale = demo.SCALES["default"]
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench_{setup}_"))
    overrides = demo.policy_overrides(scale, "vanilla", 0, 0, scale.beta, paths, run_dir, validate_reference=False)
    overrides += [f"trainer.total_training_steps={steps}", f"trainer.test_freq={steps}", *SETUPS[setup]]  # last wins
    metrics = run_dir / "metrics.jsonl"
    env = dict(os.environ, VERL_FILE_LOGGER_PATH=str(metrics))
    command = [sys.executable, "-m", "verl_variance.cli", "ppo", "--device", "cpu", *overrides]
    meter = StageMeter(interval=0.5)
    first_step = None
    start = time.perf_counter()
    with meter.stage("run"), open(run_dir / "run.log", "w") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if first_step is None and _STEP_ONE.search(line):
                first_step = time.perf_counter() - start
        process.wait()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{setup} run failed; log: {run_dir / 'run.log'}")
    records = [json.loads(line) for line in metrics.read_text().split("\n") if line.strip()]
    step_times = [r["data"]["timing_s/step"] for r in records if "timing_s/step" in r["data"]]
    return {
        "steady_step_s": statistics.median(step_times[1:]),
        "launch_to_first_step_s": first_step,
        "wall_s": wall,
        "peak_pss_gb": meter.stages["run"]["peak_pss_gb"],
        "update_weights_s": statistics.median(r["data"]["timing_s/update_weights"] for r in records[1:] if
                                              "timing_s/update_weights" in r["data"]),  # fmt: skip
        "rollout_probs_diff_max": max(r["data"].get("training/rollout_probs_diff_max", 0.0) for r in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo", help="a finished `verl-variance demo` folder")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    paths = demo_paths(workdir)
    results: dict[str, list[dict]] = {setup: [] for setup in SETUPS}
    for _ in range(args.repeats):
        for setup in SETUPS:
            results[setup].append(run_once(setup, workdir, paths, args.steps))
    medians = {
        setup: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for setup, runs in results.items()
    }
    emit(figure="colocated_precision", value=demo.cpu_precision(demo.SCALES["default"].precision))
    for setup, figures in medians.items():
        for key, value in figures.items():
            extra = {"target": TARGET_PSS_GB, "meets_target": value <= TARGET_PSS_GB} if key == "peak_pss_gb" else {}
            emit(figure=key, setup=setup, value=round(value, 6 if "diff" in key else 2), repeats=args.repeats, **extra)
    for key, target in (("steady_step_s", TARGET_STEP_RATIO), ("launch_to_first_step_s", TARGET_LAUNCH_RATIO),
                        ("wall_s", None), ("peak_pss_gb", None)):  # fmt: skip
        ratio = medians["colocated"][key] / medians["separate"][key]
        extra = {"target": target, "meets_target": ratio <= target} if target else {}
        emit(figure=f"{key}_ratio_colocated_over_separate", value=round(ratio, 2), **extra)


if __name__ == "__main__":
    main()
