"""Cost of RVPO and R²VPO against their verl baselines, side by side in one run (issue 12).

1. Advantage computation on 1024 samples x 4 objectives x 512 response tokens (8 responses per
   prompt): ``compute_advantage(adv_estimator="rvpo")`` against verl's ``gdpo``, both through
   verl's ``compute_advantage`` on the same legacy-style batch. Target: RVPO / GDPO <= 1.1x.
2. Policy loss, forward + backward, on 64 x 1024 response tokens: the registered ``r2vpo`` loss
   against verl's ``vanilla`` (clipped PPO) loss, both through ``get_policy_loss_fn`` with the
   same inputs and ``token-mean``. Target: R²VPO / vanilla <= 1.2x.

Interleaved repeats (baseline, ours, baseline, ours, ...) so drift of a shared machine hits both
alike; the figures are medians and their ratio. One JSON line per figure on stdout.

    python benchmarks/bench_variance_methods.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import emit  # noqa: E402

SAMPLES, OBJECTIVES, RESPONSE_TOKENS, GROUP = 1024, 4, 512, 8
LOSS_BATCH, LOSS_TOKENS = 64, 1024
TARGET_ADVANTAGE_RATIO, TARGET_LOSS_RATIO = 1.1, 1.2
KEYS = [f"objective_{k}" for k in range(OBJECTIVES)]


def advantage_batch(seed: int = 0):
    """A legacy-trainer batch: per-objective scores in ``non_tensor_batch``, prompts and attention mask."""
    from verl import DataProto

    rng = np.random.default_rng(seed)
    lengths = torch.from_numpy(rng.integers(1, RESPONSE_TOKENS + 1, size=SAMPLES))
    mask = (torch.arange(RESPONSE_TOKENS)[None, :] < lengths[:, None]).long()
    tensors = {
        "token_level_rewards": torch.zeros(SAMPLES, RESPONSE_TOKENS),
        "response_mask": mask,
        "prompts": torch.zeros(SAMPLES, 16, dtype=torch.long),
        "attention_mask": torch.cat([torch.ones(SAMPLES, 16, dtype=torch.long), mask], dim=1),
    }
    non_tensors = {"uid": np.array([f"p{i // GROUP}" for i in range(SAMPLES)], dtype=object)}
    non_tensors.update({key: rng.normal(size=SAMPLES) for key in KEYS})
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)


def time_advantage(estimator: str, config) -> float:
    from verl.trainer.ppo import ray_trainer

    data = advantage_batch()
    start = time.perf_counter()
    ray_trainer.compute_advantage(data, estimator, config=config)
    return time.perf_counter() - start


def loss_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(LOSS_BATCH, LOSS_TOKENS, generator=g) * 3
    lengths = torch.randint(LOSS_TOKENS // 2, LOSS_TOKENS + 1, (LOSS_BATCH, 1), generator=g)
    return {
        "old_log_prob": old,
        "log_prob": old + 0.1 * torch.randn(LOSS_BATCH, LOSS_TOKENS, generator=g),
        "advantages": torch.randn(LOSS_BATCH, LOSS_TOKENS, generator=g),
        "response_mask": torch.arange(LOSS_TOKENS)[None, :] < lengths,
    }


def time_loss(loss_mode: str, inputs: dict[str, torch.Tensor]) -> float:
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    from verl_variance.integration import r2vpo

    config = SimpleNamespace(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2, global_batch_info={},
                             get=lambda key, default=None: default)  # fmt: skip
    log_prob = inputs["log_prob"].clone().requires_grad_(True)
    token = r2vpo._lambda.set(0.1)  # what the wrapped ppo_loss sets from the batch
    try:
        start = time.perf_counter()
        loss, _ = get_policy_loss_fn(loss_mode)(
            inputs["old_log_prob"], log_prob, inputs["advantages"], inputs["response_mask"], "token-mean", config
        )
        loss.backward()
        return time.perf_counter() - start
    finally:
        r2vpo._lambda.reset(token)


def side_by_side(baseline, ours, repeats: int) -> tuple[float, float]:
    baseline(), ours()  # warm-up
    times = {"baseline": [], "ours": []}
    for _ in range(repeats):
        times["baseline"].append(baseline())
        times["ours"].append(ours())
    return statistics.median(times["baseline"]), statistics.median(times["ours"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    import verl  # noqa: F401  (loads the plugin: rvpo and r2vpo registered)
    from omegaconf import OmegaConf

    from verl_variance.integration import state

    config = OmegaConf.create({"algorithm": {"adv_estimator": "rvpo", "gdpo_reward_keys": KEYS}, "rvpo": {}})
    with state.entered(state.MethodsState.from_config(config)):  # as inside a trainer's step
        gdpo_s, rvpo_s = side_by_side(lambda: time_advantage("gdpo", config.algorithm),
                                      lambda: time_advantage("rvpo", config.algorithm), args.repeats)  # fmt: skip
    ratio = rvpo_s / gdpo_s
    emit(figure="advantage_s", shape=[SAMPLES, OBJECTIVES, RESPONSE_TOKENS], gdpo=gdpo_s, rvpo=rvpo_s)
    emit(figure="advantage_ratio_rvpo_over_gdpo", value=ratio, target=TARGET_ADVANTAGE_RATIO,
         met=ratio <= TARGET_ADVANTAGE_RATIO)  # fmt: skip

    inputs = loss_inputs()
    vanilla_s, r2vpo_s = side_by_side(lambda: time_loss("vanilla", inputs), lambda: time_loss("r2vpo", inputs),
                                      args.repeats)  # fmt: skip
    ratio = r2vpo_s / vanilla_s
    emit(figure="policy_loss_fwd_bwd_s", shape=[LOSS_BATCH, LOSS_TOKENS], vanilla=vanilla_s, r2vpo=r2vpo_s)
    emit(figure="policy_loss_ratio_r2vpo_over_vanilla", value=ratio, target=TARGET_LOSS_RATIO,
         met=ratio <= TARGET_LOSS_RATIO)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
