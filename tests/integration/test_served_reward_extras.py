"""The served reward model's extras where our features read them, and its softmaxed heads refused."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl import DataProto

from verl_variance.core.variance import looks_softmaxed
from verl_variance.integration import compat, extra_info, trainers
from verl_variance.integration.ensemble_reward import SoftmaxedRewardModelError, check_served_heads


def test_softmaxed_scores_are_told_from_rewards():
    probabilities = torch.softmax(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    assert looks_softmaxed(probabilities)
    assert not looks_softmaxed(torch.logit(probabilities))  # raw logits
    one_off = probabilities.clone()
    one_off[3] = torch.tensor([0.1, 0.2, 0.3, 0.3])  # one sample's scores sum to 0.9: not every sample
    assert not looks_softmaxed(one_off)
    assert not looks_softmaxed(torch.full((4, 2), 0.5) * torch.tensor([1.0, 1.5]))  # in [0, 1], sums 1.25
    assert not looks_softmaxed(torch.ones(4, 1))  # one head: no ensemble to judge


def test_served_heads_that_are_probabilities_are_refused_in_one_line():
    probabilities = torch.softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    columns = {f"reward_head_{k}": probabilities[:, k].tolist() for k in range(3)}
    with pytest.raises(SoftmaxedRewardModelError, match=r"^the served reward model's 3 scores sum to 1 for every "
                       r"sample of the batch: .* Fix: serve it with a /classify that honours") as raised:  # fmt: skip
        check_served_heads({**columns, "reward_variance": [0.1] * 6})
    assert "\n" not in str(raised.value)
    check_served_heads({key: [v * 3 for v in values] for key, values in columns.items()})  # raw rewards pass
    check_served_heads({"reward_head_0": columns["reward_head_0"]})  # one head: nothing to judge


class _Trainer:  # what the patched update reads of verl's trainer (weak-referenceable, as the trainer is)
    def __init__(self, config):
        self.config = config


def _served_trainer(config_overrides=None):
    config = OmegaConf.create({
        "reward": {"reward_manager": {"name": "ensemble"}, "reward_model": {"enable": True}},
        "algorithm": {"kl_penalty": "kl"},
        "actor_rollout_ref": {"actor": {"use_kl_loss": False}},
        **(config_overrides or {}),
    })  # fmt: skip
    return _Trainer(config)


def test_both_trainers_refuse_softmaxed_served_heads_before_the_actor_update(monkeypatch):
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer
    from verl.trainer.ppo.v1 import trainer_base

    assert hasattr(RayPPOTrainer._update_actor, compat.PATCHED_MARK)
    probabilities = torch.softmax(torch.randn(4, 2, generator=torch.Generator().manual_seed(2)), dim=1).numpy()
    legacy_batch = DataProto(batch=TensorDict({"x": torch.zeros(4, 1)}, batch_size=4),
                             non_tensor_batch={f"reward_head_{k}": probabilities[:, k] for k in range(2)})  # fmt: skip
    with pytest.raises(SoftmaxedRewardModelError):
        RayPPOTrainer._update_actor(_served_trainer(), legacy_batch)  # raises before verl's own update runs

    infos = [{"reward_extra_info": {f"reward_head_{k}": float(row[k]) for k in range(2)}} for row in probabilities]
    stored = np.empty(4, dtype=object)
    stored[:] = infos
    monkeypatch.setattr(trainer_base.tq, "kv_batch_get",  # what TransferQueue hands back: a NonTensorStack
                        lambda **kwargs: trainer_base.tu.get_tensordict({"extra_fields": stored,
                                                                         "rm_scores": torch.zeros(4, 3)}))  # fmt: skip
    v1_batch = SimpleNamespace(keys=list("abcd"), partition_id="train")
    with pytest.raises(SoftmaxedRewardModelError):
        trainer_base.PPOTrainer._update_actor(_served_trainer(), v1_batch, {})


def test_colocated_reward_extras_join_each_samples_extra_fields():
    columns = {"reward_variance": np.array([0.5, 2.0]), "reward_head_0": np.array([1.0, -1.0])}
    existing = [{"global_steps": 3, "reward_extra_info": {"kept": 1}}, None]
    merged = extra_info.with_reward_extras(existing, columns)
    assert merged.tolist() == [
        {"global_steps": 3, "reward_extra_info": {"kept": 1, "reward_variance": 0.5, "reward_head_0": 1.0}},
        {"reward_extra_info": {"reward_variance": 2.0, "reward_head_0": -1.0}},
    ]
    assert type(merged[0]["reward_extra_info"]["reward_variance"]) is float  # plain numbers, as the agent loop's
    assert existing[0]["reward_extra_info"] == {"kept": 1}  # the input is not changed
    infos = extra_info.reward_extra_infos(merged.tolist())
    assert extra_info.reward_extra_columns(infos) == {"reward_head_0": [1.0, -1.0], "reward_variance": [0.5, 2.0]}
    assert extra_info.reward_extra_columns([{"a": 1, "b": 2}, {"a": 3}]) == {"a": [1, 3]}  # keys every sample has


@pytest.mark.parametrize(("config", "reads"), [
    ({"reward": {"reward_manager": {"name": "ensemble"}}}, True),
    ({"algorithm": {"kl_penalty": "variance_aware"}}, True),
    ({"algorithm": {"adv_estimator": "rvpo"}}, True),
    ({"algorithm": {"adv_estimator": "gdpo"}}, True),
    ({"algorithm": {"adv_estimator": "gae", "kl_penalty": "kl"}, "reward": {"reward_manager": {"name": "naive"}}},
     False),
])  # fmt: skip
def test_only_our_features_make_the_colocated_path_copy_extras(config, reads):
    assert trainers.reads_reward_extras(config) is reads
