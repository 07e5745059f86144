"""The actor update's hook is written once: both trainers' batches, seen through ``batches``, give it the same
reward columns, σ² and tensors, and receive the same per-sample fields."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl import DataProto

from verl_variance.integration import kl_loss, state, variance_kl
from verl_variance.integration.batches import LegacyBatch, V1Batch
from verl_variance.integration.trainers import methods_before_actor_update

BS, T = 4, 5


class Meta(SimpleNamespace):  # a KVBatchMeta: keys of one partition
    def __len__(self) -> int:
        return len(self.keys)


class Trainer(SimpleNamespace):  # what the hook reads of verl's trainer (weak-referenceable, as the trainer is)
    __hash__ = object.__hash__


class FakeQueue:
    """TransferQueue's client as the V1 trainer calls it: fields of one partition, read and written by key."""

    def __init__(self, fields: dict) -> None:
        from verl.trainer.ppo.v1 import trainer_base

        self.tu, self.fields, self.puts = trainer_base.tu, fields, []

    def kv_batch_get(self, keys, partition_id, select_fields):
        return self.tu.get_tensordict({name: self.fields[name] for name in select_fields})

    def kv_batch_put(self, keys, partition_id, fields):
        self.puts.append(dict(fields.items()))
        return Meta(keys=keys, partition_id=partition_id, put=sorted(fields.keys()))


@pytest.fixture
def samples():
    generator = torch.Generator().manual_seed(0)
    tensors = {"old_log_probs": -torch.rand(BS, T, generator=generator),
               "ref_log_prob": -torch.rand(BS, T, generator=generator),
               "response_mask": (torch.rand(BS, T, generator=generator) > 0.2).float()}  # fmt: skip
    heads = torch.randn(BS, 3, generator=generator)
    columns = {"reward_variance": heads.var(dim=1).double().numpy()}
    columns |= {f"reward_head_{k}": heads[:, k].numpy() for k in range(3)}
    return tensors, columns


def _views(samples):
    tensors, columns = samples
    legacy = DataProto(batch=TensorDict(dict(tensors), batch_size=BS), non_tensor_batch=dict(columns))
    extra_fields = np.empty(BS, dtype=object)
    extra_fields[:] = [{"reward_extra_info": {key: float(values[i]) for key, values in columns.items()}}
                       for i in range(BS)]  # fmt: skip
    queue = FakeQueue({"extra_fields": extra_fields, "rm_scores": torch.zeros(BS, T), **tensors})
    return LegacyBatch(legacy), V1Batch(queue, Meta(keys=list("abcd"), partition_id="train")), queue


def test_both_views_read_the_same_batch(samples):
    tensors, columns = samples
    legacy, v1, _ = _views(samples)
    assert len(legacy) == len(v1) == BS
    for key, values in columns.items():
        np.testing.assert_allclose(np.asarray(legacy.reward_columns()[key], dtype=float), values)
        np.testing.assert_allclose(np.asarray(v1.reward_columns()[key], dtype=float), values)
    expected = torch.from_numpy(columns["reward_variance"])
    assert torch.equal(legacy.reward_variance("reward_variance"), expected)
    assert torch.equal(v1.reward_variance("reward_variance"), expected)
    for name, value in tensors.items():
        assert torch.equal(legacy.tensors([name])[name], value) and torch.equal(v1.tensors([name])[name], value)
    with pytest.raises(variance_kl.MissingRewardVarianceError, match="'sigma2'"):
        v1.reward_variance("sigma2")


def test_the_one_actor_hook_puts_the_same_kl_weights_on_both_trainers_batches(samples):
    """``kl_penalty=variance_aware`` with ``use_kl_loss``: the weights and telemetry equal ``attach_kl_weights`` on
    the raw tensors, on the legacy ``DataProto`` and in the V1 queue alike."""
    tensors, columns = samples
    config = OmegaConf.create({"algorithm": {"kl_penalty": "variance_aware"}, "reward": {},
                               "actor_rollout_ref": {"actor": {"use_kl_loss": True, "kl_loss_type": "low_var_kl"}}})
    trainer = Trainer(config=config)
    settings = state.attach(trainer).variance_kl
    assert settings is not None  # the trainer's state holds its variance_kl group
    weights, telemetry = kl_loss.attach_kl_weights(
        torch.from_numpy(columns["reward_variance"]), *tensors.values(), settings, "low_var_kl")
    legacy, v1, queue = _views(samples)
    legacy_metrics, v1_metrics = {}, {}
    assert methods_before_actor_update(trainer, legacy, legacy_metrics) is None  # no R²VPO: nothing after
    assert methods_before_actor_update(trainer, v1, v1_metrics) is None
    assert torch.equal(legacy.data.batch[kl_loss.KL_WEIGHT_FIELD], weights)
    assert torch.equal(queue.puts[0][kl_loss.KL_WEIGHT_FIELD], weights) and v1.meta.put == [kl_loss.KL_WEIGHT_FIELD]
    assert legacy_metrics == v1_metrics == telemetry
