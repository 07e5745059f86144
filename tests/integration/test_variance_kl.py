"""variance_aware KL through verl's real ``apply_kl_penalty`` (plugin active in this process)."""

import contextlib

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo import core_algos, ray_trainer

from verl_variance.integration import state, variance_kl
from verl_variance.integration.checks import ConfigError, check_kl_config, check_trainer_config

BS, T = 6, 5


def make_batch(variance=None, seed=0) -> DataProto:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(BS, T)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    scores = torch.zeros(BS, T)
    scores[torch.arange(BS), mask.sum(1).long() - 1] = torch.randn(BS, generator=g)
    non_tensors = {"uid": np.array([f"u{i}" for i in range(BS)], dtype=object)}
    if variance is not None:
        non_tensors["reward_variance"] = np.array(variance, dtype=object)
    return DataProto.from_dict(
        tensors={
            "old_log_probs": -torch.rand(BS, T, generator=g) * 2,
            "ref_log_prob": -torch.rand(BS, T, generator=g) * 2,
            "response_mask": mask,
            "token_level_scores": scores,
        },
        non_tensors=non_tensors,
    )


def trainer_state(**algorithm):
    """The state a trainer of this config runs its steps in (``state.entered``)."""
    config = {"algorithm": {"kl_penalty": "variance_aware", "use_kl_in_reward": True, **algorithm}}
    return state.entered(state.MethodsState.from_config(config))


@pytest.fixture
def config():
    with contextlib.ExitStack() as stack:

        def activate(**variance_kl_settings):
            cfg = {"algorithm": {"kl_penalty": "variance_aware", "use_kl_in_reward": True}}
            cfg["variance_kl"] = variance_kl_settings
            return stack.enter_context(state.entered(state.MethodsState.from_config(cfg)))

        yield activate


def test_the_patch_is_what_verl_calls():
    import verl.trainer.ppo.v1.trainer_base as trainer_base

    assert trainer_base.apply_kl_penalty is ray_trainer.apply_kl_penalty
    assert ray_trainer.apply_kl_penalty.__wrapped__.__module__ == "verl.trainer.ppo.ray_trainer"


@pytest.mark.parametrize("estimator", ["kl", "low_var_kl", "mse"])
@pytest.mark.parametrize("weighting", ["std", "variance"])
def test_constant_variance_normalized_reproduces_stock_verl_exactly(config, estimator, weighting):
    config(kl_estimator=estimator, weighting=weighting, normalize=True)
    ours, our_metrics = ray_trainer.apply_kl_penalty(
        make_batch([2.5] * BS), core_algos.FixedKLController(0.2), kl_penalty="variance_aware"
    )
    stock, stock_metrics = ray_trainer.apply_kl_penalty(make_batch(), core_algos.FixedKLController(0.2), estimator)
    assert torch.equal(ours.batch["token_level_rewards"], stock.batch["token_level_rewards"])
    assert our_metrics["actor/reward_kl_penalty"] == stock_metrics["actor/reward_kl_penalty"]


def test_per_sample_weights_reach_the_rewards(config):
    variance = [0.0, 1.0, 4.0, 0.25, 9.0, 0.0]
    config(weighting="std")
    data, metrics = ray_trainer.apply_kl_penalty(
        make_batch(variance), core_algos.FixedKLController(0.1), kl_penalty="variance_aware"
    )
    raw = make_batch()
    mask = raw.batch["response_mask"]
    log_ratio = (raw.batch["old_log_probs"] - raw.batch["ref_log_prob"]) * mask
    sigma = torch.tensor(variance).sqrt()
    expected = raw.batch["token_level_scores"] - 0.1 * sigma[:, None] * log_ratio
    torch.testing.assert_close(data.batch["token_level_rewards"], expected)
    zero = torch.tensor(variance) == 0
    assert torch.equal(data.batch["token_level_rewards"][zero], raw.batch["token_level_scores"][zero])
    for key in ("reward_variance/mean", "reward_variance/p90", "kl_weight/mean", "kl_weighted", "kl_unweighted",
                "corr_variance_kl", "clipped_fraction"):  # fmt: skip
        assert np.isfinite(metrics[f"variance_kl/{key}"]), key
    assert metrics["variance_kl/kl_weight/max"] == pytest.approx(3.0)
    assert metrics["variance_kl/reward_variance/mean"] == pytest.approx(np.mean(variance))
    sample_kl = log_ratio.sum(1) / mask.sum(1)
    assert metrics["variance_kl/kl_weighted"] == pytest.approx(float((sigma * sample_kl).mean()), rel=1e-5)
    assert metrics["actor/reward_kl_penalty"] == pytest.approx(float(sample_kl.mean()), rel=1e-5)


def test_adaptive_controller_sees_the_unweighted_kl(config):
    config(weighting="variance")
    ours = core_algos.AdaptiveKLController(init_kl_coef=0.2, target_kl=0.01, horizon=100)
    stock = core_algos.AdaptiveKLController(init_kl_coef=0.2, target_kl=0.01, horizon=100)
    ray_trainer.apply_kl_penalty(make_batch([5.0, 0, 1, 2, 3, 4]), ours, kl_penalty="variance_aware")
    ray_trainer.apply_kl_penalty(make_batch(), stock, kl_penalty="kl")
    assert ours.value == stock.value != 0.2


def test_v1_path_reads_the_variance_fetched_from_the_store(config):
    """V1: the trainer hands the step's reward extra info to its state; apply_kl_penalty adds it to the batch as the
    legacy trainer's columns and reads σ² from there."""
    methods = config(weighting="variance")
    infos = [{"reward_variance": v, "acc": 1.0, "tokens": [1] * (i + 1)} for i, v in enumerate((1.0, 0, 0, 0, 0, 0))]
    with methods.advantage_step(infos, {}):
        data, _ = ray_trainer.apply_kl_penalty(make_batch(), core_algos.FixedKLController(0.1), "variance_aware")
    raw = make_batch()
    assert torch.equal(data.batch["token_level_rewards"][1:], raw.batch["token_level_scores"][1:])
    assert not torch.equal(data.batch["token_level_rewards"][0], raw.batch["token_level_scores"][0])
    assert data.non_tensor_batch["reward_variance"].tolist() == [1.0, 0, 0, 0, 0, 0]  # a batch field now
    assert data.non_tensor_batch["acc"].tolist() == [1.0] * BS
    assert [len(tokens) for tokens in data.non_tensor_batch["tokens"]] == list(range(1, BS + 1))  # ragged: kept
    assert methods.step_extras is None  # the step's data is not kept past its advantage step


def test_sample_log_records_each_penalty(config, tmp_path):
    log = tmp_path / "samples.jsonl"
    config(weighting="variance", sample_log=str(log))
    ray_trainer.apply_kl_penalty(make_batch([0, 1, 2, 3, 4, 5]), core_algos.FixedKLController(0.5), "variance_aware")
    import json

    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["uid"] for r in records] == [f"u{i}" for i in range(BS)]
    for record in records:
        assert record["kl_penalty"] == pytest.approx(0.5 * record["kl_weight"] * record["kl_sum"], rel=1e-5)
    assert records[0]["kl_penalty"] == 0.0


def test_grpo_variance_kl_estimator_through_verls_compute_advantage():
    """A = GRPO(scores) − Σ_{t'≥t} β w kl, computed independently from the same batch."""
    with trainer_state(adv_estimator="grpo_variance_kl"):
        data, _ = ray_trainer.apply_kl_penalty(
            make_batch([1.0, 4.0, 0.0, 9.0, 1.0, 2.0]), core_algos.FixedKLController(0.1), "variance_aware"
        )
        data.non_tensor_batch["uid"] = np.array(["a", "a", "b", "b", "c", "c"], dtype=object)
        from verl.trainer.config import AlgoConfig

        out = ray_trainer.compute_advantage(
            data, "grpo_variance_kl", config=AlgoConfig(adv_estimator="grpo_variance_kl")
        )
    assert variance_kl.KL_PENALTY_FIELD not in out.batch.keys()  # used here, not sent on to the workers
    raw = make_batch()
    mask = raw.batch["response_mask"]
    scores = raw.batch["token_level_scores"].sum(-1)
    sigma = torch.tensor([1.0, 2.0, 0.0, 3.0, 1.0, 1.4142135])
    penalty = 0.1 * sigma[:, None] * (raw.batch["old_log_probs"] - raw.batch["ref_log_prob"]) * mask
    to_go = penalty.flip(-1).cumsum(-1).flip(-1) * mask
    pairs = scores.view(3, 2)
    normalized = ((pairs - pairs.mean(1, keepdim=True)) / (pairs.std(1, keepdim=True) + 1e-6)).view(-1)
    expected = normalized[:, None] * mask - to_go
    torch.testing.assert_close(out.batch["advantages"], expected, rtol=1e-4, atol=1e-5)


def test_grpo_variance_kl_without_the_penalty_fails_clearly():
    """The penalty travels with its batch: an estimator call without it, or a batch whose KL was not variance-aware
    in the reward, is refused with the settings that fix it."""
    from verl.trainer.config import AlgoConfig

    from verl_variance.integration.compat import VerlVarianceError

    fix = "set algorithm.use_kl_in_reward=True and algorithm.kl_penalty"
    with pytest.raises(VerlVarianceError, match=fix):
        variance_kl.grpo_variance_kl_advantage(torch.zeros(2, 3), torch.ones(2, 3), index=np.array(["a", "a"]))
    with trainer_state(adv_estimator="grpo_variance_kl"):
        data, _ = ray_trainer.apply_kl_penalty(make_batch(VARIANCES), core_algos.FixedKLController(0.1), "kl")
        with pytest.raises(VerlVarianceError, match=fix):  # stock KL in the reward: no weighted penalty to read
            ray_trainer.compute_advantage(data, "grpo_variance_kl", config=AlgoConfig(adv_estimator="grpo_variance_kl"))


VARIANCES = [1.0, 4.0, 0.0, 9.0, 1.0, 2.0]


def test_missing_variance_names_the_key_and_the_fix(config):
    config()
    with pytest.raises(variance_kl.MissingRewardVarianceError) as error:
        ray_trainer.apply_kl_penalty(make_batch(), core_algos.FixedKLController(0.1), "variance_aware")
    message = str(error.value)
    assert "needs a per-sample 'reward_variance'" in message and "positive_word_share_with_variance" in message
    with pytest.raises(variance_kl.MissingRewardVarianceError, match=r"returned only \['acc'\]"):
        variance_kl.reward_variance({"acc": [1.0]}, "reward_variance")


@pytest.mark.parametrize(
    ("variance", "message"),
    [
        ([0.1, float("nan"), 0, 0, 0, 0], "NaN/inf"),
        ([0.1, -1, 0, 0, 0, 0], "negative"),
        ([0] * BS, "0 for every sample"),
    ],
)
def test_bad_variance_values_fail_clearly(config, variance, message):
    config()
    with pytest.raises(ValueError, match=message):
        ray_trainer.apply_kl_penalty(make_batch(variance), core_algos.FixedKLController(0.1), "variance_aware")


def test_other_kl_modes_are_untouched():
    data, _ = ray_trainer.apply_kl_penalty(make_batch(), core_algos.FixedKLController(0.1), "low_var_kl")
    stock, _ = ray_trainer.apply_kl_penalty.__wrapped__(make_batch(), core_algos.FixedKLController(0.1), "low_var_kl")
    assert torch.equal(data.batch["token_level_rewards"], stock.batch["token_level_rewards"])


def _trainer_config(**algorithm):
    base = {"kl_penalty": "variance_aware", "use_kl_in_reward": True, "kl_ctrl": {"kl_coef": 0.05}}
    base.update(algorithm)
    return OmegaConf.create({"algorithm": base})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (_trainer_config(kl_penalty="variance-aware"), r"kl_penalty='variance-aware': did you mean variance_aware\?"),
        (_trainer_config(kl_penalty="varience_aware"), r"kl_penalty='varience_aware': did you mean variance_aware\?"),
        (_trainer_config(use_kl_in_reward=False), "set algorithm.use_kl_in_reward=True"),
        (_trainer_config(kl_ctrl={"kl_coef": -0.1}), "kl_coef=-0.1 is negative"),
        (OmegaConf.merge(_trainer_config(), {"variance_kl": {"weighting": "sd"}}), "variance_kl.weighting='sd'"),
        (OmegaConf.merge(_trainer_config(), {"variance_kl": {"normalise": True}}), r"unknown key\(s\) \['normalise'\]"),
        (
            _trainer_config(kl_penalty="kl", adv_estimator="grpo_variance_kl"),
            "puts the variance-weighted KL in the advantage",
        ),
    ],
)
def test_config_errors_before_training(config, message):
    with pytest.raises(ConfigError, match=message):
        check_kl_config(config)


TRAINER_REST = {  # the rest of a stock GPU run's config that the early checks read
    "trainer": {"device": "cuda"},
    "actor_rollout_ref": {"rollout": {"name": "vllm"}, "model": {"path": "Qwen/Qwen2.5-0.5B-Instruct"}},
    "critic": {"enable": False},
}


@pytest.mark.parametrize(
    "estimator",
    [*(name + plus for name in ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3") for plus in ("", "+")),
     "my_registered_kl"],  # fmt: skip
)
def test_kl_penalties_that_are_not_ours_pass_untouched(estimator, monkeypatch):
    """Installed but not opted in: every kl_penalty verl 0.9.1 accepts, and one a user added to verl's
    estimator, passes the early checks with its config unchanged (even with settings ours would refuse)."""
    forward = core_algos.kl_penalty_forward

    def with_mine(logprob, ref_logprob, kl_penalty):  # a user's own estimator, as a user would add it
        mine = kl_penalty == "my_registered_kl"
        return (logprob - ref_logprob) ** 4 if mine else forward(logprob, ref_logprob, kl_penalty)

    monkeypatch.setattr(core_algos, "kl_penalty_forward", with_mine)
    config = _trainer_config(kl_penalty=estimator, use_kl_in_reward=False, kl_ctrl={"kl_coef": -0.1})
    before = OmegaConf.to_container(config)
    check_trainer_config(OmegaConf.merge(config, TRAINER_REST))
    check_kl_config(config)
    assert OmegaConf.to_container(config) == before
    old, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    assert torch.isfinite(core_algos.kl_penalty(old, ref, estimator)).all()  # and verl computes it


def test_a_group_reads_interpolations_of_the_whole_verl_config():
    """The study recipe sets variance_kl.sample_log=${trainer.validation_data_dir}/../samples.jsonl."""
    from verl_variance.core.config import VarianceKLConfig

    sample_log = "${trainer.validation_data_dir}/../samples.jsonl"
    trainer = {"validation_data_dir": "/runs/a/validation"}
    config = OmegaConf.create({"trainer": trainer, "variance_kl": {"sample_log": sample_log}})
    assert VarianceKLConfig.from_trainer_config(config).sample_log == "/runs/a/validation/../samples.jsonl"
