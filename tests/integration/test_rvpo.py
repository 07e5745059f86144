"""RVPO (algorithm.adv_estimator=rvpo) and verl's GDPO through verl's own compute_advantage, both trainers' paths.

The expected advantages are computed independently here with numpy: per-objective group z-scores
(GRPO: mean and unbiased std within each uid group, epsilon 1e-6), the weighted soft-min, then
whitening over the valid tokens (mean and unbiased variance over them, as verl's masked_whiten).
"""

import contextlib
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from verl_variance.core.config import RVPOConfig
from verl_variance.integration import rvpo, state
from verl_variance.integration.rvpo import RewardComponentError


def _config(estimator: str, **rvpo_group) -> "OmegaConf":
    return OmegaConf.create(
        {"algorithm": {"adv_estimator": estimator, "gdpo_reward_keys": ["a", "b"]}, "rvpo": rvpo_group}
    )


@pytest.fixture
def batch_values():
    rng = np.random.default_rng(0)
    mask = np.ones((8, 5), dtype=np.int64)
    mask[0, 3:] = 0
    mask[5, 1:] = 0
    return {
        "a": rng.normal(size=8),
        "b": rng.normal(size=8) * 3,
        "uid": np.array(["p"] * 3 + ["q"] * 5, dtype=object),
        "mask": mask,
    }


def _data_proto(values, with_prompts=True):
    from verl.protocol import DataProto

    mask = torch.tensor(values["mask"])
    tensors = {"token_level_rewards": torch.zeros(mask.shape), "response_mask": mask}
    if with_prompts:  # legacy batches carry the prompt and the full attention mask
        tensors["prompts"] = torch.zeros((mask.shape[0], 2), dtype=torch.long)
        tensors["attention_mask"] = torch.cat([torch.ones((mask.shape[0], 2), dtype=torch.long), mask], dim=1)
    non_tensors = {"uid": values["uid"]}
    non_tensors.update({key: values[key] for key in ("a", "b") if key in values})
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)


@pytest.fixture
def activate():
    """Enter the state a trainer of a config runs its steps in; left at the test's end."""
    with contextlib.ExitStack() as stack:
        yield lambda config: stack.enter_context(state.entered(state.MethodsState.from_config(config)))


def _ab(values):
    return values["a"], values["b"]


def _expected(values, tau, weights):
    mask = values["mask"].astype(float)
    columns = []
    for key in ("a", "b"):
        z = np.empty(8)
        for group in set(values["uid"]):
            members = values["uid"] == group
            scores = values[key][members]
            z[members] = (scores - scores.mean()) / (scores.std(ddof=1) + 1e-6)
        columns.append(z)
    objectives = np.stack(columns, axis=1)
    if tau is None:  # GDPO: the weighted sum
        aggregate = objectives @ np.asarray(weights)
    else:
        aggregate = -tau * np.log(np.exp(-objectives / tau) @ np.asarray(weights))
    per_token = aggregate[:, None] * mask
    valid = per_token[mask == 1]
    return (per_token - valid.mean()) / np.sqrt(valid.var(ddof=1) + 1e-8) * mask


@pytest.mark.parametrize(("tau", "weights"), [(1.0, None), (0.3, [0.25, 0.75])])
def test_rvpo_legacy_path_against_independent_computation(batch_values, tau, weights, activate):
    from verl.trainer.ppo import ray_trainer

    config = _config("rvpo", tau=tau, weights=weights)
    activate(config)
    out = ray_trainer.compute_advantage(_data_proto(batch_values), "rvpo", config=config.algorithm)
    expected = _expected(batch_values, tau, weights or [0.5, 0.5])
    np.testing.assert_allclose(out.batch["advantages"].numpy(), expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(out.batch["advantages"], out.batch["returns"])
    metrics = out.meta_info[rvpo.LEGACY_METRICS_FIELD]  # for the actor update, which logs them
    assert metrics["rvpo/a/mean"] == pytest.approx(batch_values["a"].mean())
    assert metrics["rvpo/b/mean"] == pytest.approx(batch_values["b"].mean())
    assert metrics["rvpo/softmin_gap/mean"] > 0


def test_rvpo_v1_path_reads_the_objectives_from_the_reward_extra_info(batch_values, activate):
    """V1: the trainer keeps reward extra info per sample (extra_fields); the patched _compute_advantage sets it
    for the call and verl's compute_advantage_for_multi_trajectories reaches RVPO without non_tensor_batch keys."""
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    config = _config("rvpo", tau=0.5)
    methods = activate(config)
    data = _data_proto({key: batch_values[key] for key in ("uid", "mask")}, with_prompts=False)
    infos = [{"a": float(a), "b": float(b), "score": 0.0} for a, b in zip(*_ab(batch_values), strict=True)]
    metrics = {}
    with methods.advantage_step(infos, metrics):
        out = compute_advantage_for_multi_trajectories(
            data, batch_keys=[f"{u}_0_{i}" for i, u in enumerate(batch_values["uid"])], adv_estimator="rvpo",
            config=config.algorithm,
        )  # fmt: skip
    np.testing.assert_allclose(out.batch["advantages"].numpy(), _expected(batch_values, 0.5, [0.5, 0.5]),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    assert metrics["rvpo/a/mean"] == pytest.approx(batch_values["a"].mean())
    assert metrics["rvpo/softmin_gap/mean"] > 0


def test_large_tau_is_verls_gdpo_on_both_paths(batch_values, activate):
    """tau -> inf: RVPO equals verl's own GDPO (legacy), and verl's GDPO runs on the V1 batch view too."""
    from verl.trainer.ppo import ray_trainer
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    methods = activate(_config("rvpo", tau=1e7))
    gdpo_config = _config("gdpo").algorithm
    gdpo = ray_trainer.compute_advantage(_data_proto(batch_values), "gdpo", config=gdpo_config)
    soft = ray_trainer.compute_advantage(_data_proto(batch_values), "rvpo", config=gdpo_config)
    np.testing.assert_allclose(soft.batch["advantages"].numpy(), gdpo.batch["advantages"].numpy(), atol=1e-4)
    np.testing.assert_allclose(gdpo.batch["advantages"].numpy(), _expected(batch_values, None, [1.0, 1.0]),
                               rtol=1e-4, atol=1e-5)  # fmt: skip

    v1 = _data_proto({key: batch_values[key] for key in ("uid", "mask")}, with_prompts=False)
    infos = [{"a": float(a), "b": float(b)} for a, b in zip(*_ab(batch_values), strict=True)]
    with methods.advantage_step(infos, {}):
        out = compute_advantage_for_multi_trajectories(v1, batch_keys=[f"{u}_0_{i}" for i, u in
                                                       enumerate(batch_values["uid"])], adv_estimator="gdpo",
                                                       config=gdpo_config)  # fmt: skip
    np.testing.assert_allclose(out.batch["advantages"].numpy(), gdpo.batch["advantages"].numpy(), atol=1e-6)
    assert "prompts" not in out.batch.keys()  # the response-only view is removed after the call


def test_constraint_neglect_gdpo_rewards_it_rvpo_does_not(activate):
    """Sample 0 is far ahead on objective a and fails constraint b: GDPO's sum gives it a positive advantage,
    RVPO's soft-min a negative one."""
    from verl.trainer.ppo import ray_trainer

    values = {
        "a": np.array([10.0, 0.0, 0.5, 1.0, 0.2, 0.4, 0.6, 0.8]),
        "b": np.array([0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0]),
        "uid": np.array(["p"] * 4 + ["q"] * 4, dtype=object),
        "mask": np.ones((8, 3), dtype=np.int64),
    }
    config = _config("rvpo", tau=0.5)
    activate(config)
    gdpo = ray_trainer.compute_advantage(_data_proto(values), "gdpo", config=config.algorithm).batch["advantages"]
    soft = ray_trainer.compute_advantage(_data_proto(values), "rvpo", config=config.algorithm).batch["advantages"]
    assert gdpo[0, 0] > 0.5
    assert soft[0, 0] < -0.2


def test_ensemble_heads_as_objectives(batch_values, activate):
    from verl.trainer.ppo import ray_trainer

    heads = {f"reward_head_{k}": np.random.default_rng(k).normal(size=8) for k in range(3)}
    config = OmegaConf.create({"algorithm": {"adv_estimator": "rvpo"}, "rvpo": {"ensemble_heads": True}})
    activate(config)
    data = _data_proto({key: batch_values[key] for key in ("uid", "mask")})
    data.non_tensor_batch.update(heads)
    out = ray_trainer.compute_advantage(data, "rvpo", config=config.algorithm).batch["advantages"]
    renamed = {"uid": batch_values["uid"], "mask": batch_values["mask"]}
    renamed.update({key: heads[f"reward_head_{k}"] for k, key in enumerate(("h0", "h1", "h2"))})
    # independent: three objectives, uniform weights
    mask = renamed["mask"].astype(float)
    z = []
    for key in ("h0", "h1", "h2"):
        col = np.empty(8)
        for group in set(renamed["uid"]):
            m = renamed["uid"] == group
            col[m] = (renamed[key][m] - renamed[key][m].mean()) / (renamed[key][m].std(ddof=1) + 1e-6)
        z.append(col)
    aggregate = -np.log(np.exp(-np.stack(z, axis=1)).mean(axis=1))
    per_token = aggregate[:, None] * mask
    valid = per_token[mask == 1]
    expected = (per_token - valid.mean()) / math.sqrt(valid.var(ddof=1) + 1e-8) * mask
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_bad_input_gives_clear_errors(batch_values, activate):
    from verl.trainer.ppo import ray_trainer

    with pytest.raises(ValueError, match=r"rvpo.weights: weights must sum to 1"):
        RVPOConfig(reward_keys=["a", "b"], weights=[0.5, 0.6])
    with pytest.raises(ValueError, match=r"rvpo.tau must be > 0, got 0"):
        RVPOConfig(tau=0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['temperature'\] in rvpo; valid keys"):
        RVPOConfig.from_trainer_config({"rvpo": {"temperature": 1.0}})
    with pytest.raises(ValueError, match="leave rvpo.reward_keys unset"):
        RVPOConfig(reward_keys=["a"], ensemble_heads=True)
    with pytest.raises(ValueError, match="needs the objectives: set rvpo.reward_keys"):
        RVPOConfig().keys(None)

    config = _config("rvpo", reward_keys=["a", "c"])
    activate(config)
    with pytest.raises(RewardComponentError, match=r"objective 'c' is not in the reward extra info .*multi_objective"):
        ray_trainer.compute_advantage(_data_proto(batch_values), "rvpo", config=config.algorithm)

    activate(_config("rvpo"))
    broken = dict(batch_values, a=np.where(np.arange(8) == 3, np.nan, batch_values["a"]))
    with pytest.raises(RewardComponentError, match=r"objective 'a' is not finite for 1 sample\(s\) \(first: sample 3"):
        ray_trainer.compute_advantage(_data_proto(broken), "rvpo", config=_config("rvpo").algorithm)

    activate(OmegaConf.create({"algorithm": {"adv_estimator": "rvpo"}, "rvpo": {"ensemble_heads": True}}))
    one_head = _data_proto({key: batch_values[key] for key in ("uid", "mask")})
    one_head.non_tensor_batch["reward_head_0"] = batch_values["a"]
    with pytest.raises(RewardComponentError, match=r"reward_head_0..K-1 \(K >= 2\), got \['reward_head_0'\]"):
        ray_trainer.compute_advantage(one_head, "rvpo", config=OmegaConf.create({}))
