"""The quick-start job: a short PPO run of a tiny local model through verl's trainer, on CPU.

Builds (once) a tiny Qwen2-style model and a prompt set, then runs ``verl.trainer.main_ppo`` with
the CPU preset and a rule-based reward (the share of positive words in the response). It proves the
engine works end to end on this machine: Ray, FSDP2 workers over gloo, the hf rollout, the critic.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

PROMPT_WORDS = "the movie film story plot acting music ending was is a this".split()
REWARD_FILE = Path(__file__).resolve().parent.parent / "rewards" / "toy.py"


def build_prompt_files(output_dir: str | Path, n_train: int = 64, n_val: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Write verl RL parquet files (``prompt`` as chat messages) of 2-8-word movie prompts."""
    import pandas as pd

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    def row(index: int) -> dict:
        text = " ".join(rng.choice(PROMPT_WORDS) for _ in range(rng.randint(2, 8)))
        return {
            "data_source": "toy_sentiment",
            "prompt": [{"role": "user", "content": text}],
            "ability": "sentiment",
            "reward_model": {"style": "rule", "ground_truth": ""},
            "extra_info": {"index": index},
        }

    train, val = output_dir / "train.parquet", output_dir / "val.parquet"
    pd.DataFrame([row(i) for i in range(n_train)]).to_parquet(train)
    pd.DataFrame([row(n_train + i) for i in range(n_val)]).to_parquet(val)
    return train, val


def quickstart_overrides(workdir: Path, model: Path, train: Path, val: Path, steps: int) -> list[str]:
    """verl overrides of the quick-start run (on top of the CPU preset)."""
    return [
        f"data.train_files={train}",
        f"data.val_files={val}",
        "data.train_batch_size=8",
        "data.max_prompt_length=32",
        "data.max_response_length=10",
        f"actor_rollout_ref.model.path={model}",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
        f"critic.model.path={model}",
        "critic.ppo_micro_batch_size_per_gpu=8",
        "algorithm.adv_estimator=gae",
        "algorithm.use_kl_in_reward=True",
        f"reward.custom_reward_function.path={REWARD_FILE}",
        "reward.custom_reward_function.name=positive_word_share",
        f"trainer.total_training_steps={steps}",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.project_name=verl_variance_quickstart",
        "trainer.experiment_name=tiny_qwen2_gae",
        f"trainer.default_local_dir={workdir / 'checkpoints'}",
        "trainer.logger=[console,file]",
    ]


SUMMARY_METRICS = (
    "critic/score/mean",
    "actor/reward_kl_penalty",
    "critic/vf_loss",
    "actor/pg_loss",
    "training/rollout_probs_diff_max",
    "timing_s/step",
)


def summarize(metrics_file: Path) -> str:
    """A few per-step numbers from verl's file logger (one JSON line per step)."""
    lines = []
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        values = ", ".join(f"{k}={record['data'][k]:.4g}" for k in SUMMARY_METRICS if k in record["data"])
        lines.append(f"  step {record['step']}: {values}")
    return "\n".join(lines)


def run_quickstart(workdir: str | Path, steps: int = 2, extra_overrides: list[str] | None = None) -> int:
    """Build the tiny model and prompts under ``workdir`` and run PPO; metrics go to ``metrics.jsonl``."""
    import os

    from verl_variance.cpu.launcher import run_ppo

    workdir = Path(workdir).resolve()
    model = build_tiny_model(workdir / "tiny_qwen2", TinyModelConfig())
    train, val = build_prompt_files(workdir / "data")
    overrides = quickstart_overrides(workdir, model, train, val, steps) + list(extra_overrides or [])
    (workdir / "overrides.json").write_text(json.dumps(overrides, indent=2))
    metrics_file = Path(os.environ.get("VERL_FILE_LOGGER_PATH", workdir / "metrics.jsonl"))
    print(f"verl-variance quickstart: {steps} PPO steps of a tiny Qwen2 through verl.trainer.main_ppo on CPU")
    print(f"  workdir: {workdir}")
    code = run_ppo(overrides, device="cpu", env=dict(os.environ, VERL_FILE_LOGGER_PATH=str(metrics_file)))
    if code == 0 and metrics_file.exists():
        print(f"verl-variance quickstart: done. Metrics per step ({metrics_file}):")
        print(summarize(metrics_file))
    return code
