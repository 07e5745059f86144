"""verl's validation metrics on the CPU platform: the vectorised best@n / worst@n bootstrap gives verl's numbers."""

import types

import numpy as np
import pytest
import torch

from verl_variance.cpu import patches
from verl_variance.cpu.patches import bootstrap_extremes
from verl_variance.integration.compat import ORIGINALS

ORIGINAL = "verl.trainer.ppo.metric_utils.bootstrap_metric"


@pytest.fixture
def metric_utils():
    from verl.trainer.ppo import metric_utils

    assert ORIGINAL in ORIGINALS, "the bootstrap patch was not applied on import"
    return metric_utils


@pytest.mark.parametrize(
    ("data", "subset_size"),
    [
        (np.random.default_rng(0).normal(size=18).tolist(), 2),
        (np.random.default_rng(1).normal(size=18).astype(np.float32).tolist(), 16),
        (list(np.random.default_rng(2).normal(size=7).astype(np.float32)), 7),  # numpy scalars, as reward info
        ([3, 1, 4, 1, 5], 4),
        ([True, False, True], 2),
    ],
)
def test_the_same_numbers_and_random_state_as_verl(metric_utils, data, subset_size):
    reduce_fns = [np.max, np.min]
    expected = ORIGINALS[ORIGINAL](data, subset_size, reduce_fns, 1000, 42)
    state_after_verl = np.random.get_state()[1].copy()
    np.random.seed(7)
    assert bootstrap_extremes(data, subset_size, reduce_fns, 1000, 42) == expected
    np.testing.assert_array_equal(np.random.get_state()[1], state_after_verl)
    assert bootstrap_extremes(data, subset_size, [np.min], 300, 5) == ORIGINALS[ORIGINAL](data, subset_size, [np.min],
                                                                                          300, 5)  # fmt: skip


@pytest.mark.parametrize(
    ("data", "reduce_fns"),
    [
        ([1.0, float("nan"), 2.0], [np.max, np.min]),  # verl's object comparisons treat nan its own way
        ([1.0, float("inf")], [np.max]),
        (["a", "b"], [np.max]),
        ([1.0, 2.0], [np.mean]),
        ([1.0, 2.0], []),
    ],
)
def test_anything_else_is_left_to_verl(data, reduce_fns):
    assert bootstrap_extremes(data, 2, reduce_fns, 10, 0) is None


def test_verl_validation_metrics_are_unchanged_on_the_cpu_platform(metric_utils, monkeypatch):
    """verl's process_validation_metrics through the patched bootstrap, on and off the CPU platform and with the
    original: one dict, including a majority-vote key (verl's own loop) and a reward key with a missing value."""
    rng = np.random.default_rng(3)
    samples = 5 * 18
    uids = [f"prompt{i // 18}" for i in range(samples)]
    infos = {
        "reward": rng.normal(size=samples).tolist(),
        "reward_variance": rng.random(samples).astype(np.float32).tolist(),
        "pred": [str(v) for v in rng.integers(0, 3, samples)],
        "acc": [None, *rng.integers(0, 2, samples - 1).astype(float).tolist()],
    }
    results = {}
    for on_cpu in (True, False):
        monkeypatch.setattr(patches, "_on_cpu_platform", lambda on_cpu=on_cpu: on_cpu)
        results[on_cpu] = metric_utils.process_validation_metrics(["imdb"] * samples, uids, infos)
    monkeypatch.setattr(metric_utils, "bootstrap_metric", ORIGINALS[ORIGINAL])
    verl = metric_utils.process_validation_metrics(["imdb"] * samples, uids, infos)
    assert results[True] == results[False] == verl
    assert {"best@2/mean", "best@16/mean", "worst@18/std", "maj@18/mean"} <= set(verl["imdb"]["reward"])
    assert "worst@17/mean" in verl["imdb"]["acc"]  # prompt0's missing value: 17 samples there


def test_a_call_like_verls_own_is_vectorised(metric_utils, monkeypatch):
    """The process_validation_metrics call (keywords) reaches the vectorised path on the CPU platform only."""
    calls = []
    monkeypatch.setattr(patches, "bootstrap_extremes", lambda *args: calls.append(args) or [(0.0, 0.0)])
    for on_cpu in (True, False):
        monkeypatch.setattr(patches, "_on_cpu_platform", lambda on_cpu=on_cpu: on_cpu)
        result = metric_utils.bootstrap_metric(data=[1.0, 2.0], subset_size=2, reduce_fns=[np.max], n_bootstrap=4,
                                               seed=1)  # fmt: skip
        assert (result == [(0.0, 0.0)]) is on_cpu
    assert calls == [([1.0, 2.0], 2, [np.max], 4, 1)]


class FakeTransferQueue:
    """The two TransferQueue calls the replay buffer's batch hand-over makes, over fixed sample contents."""

    def __init__(self, contents: dict[str, tuple[list[int], list[int]]]) -> None:
        self.contents = contents

    def kv_clear(self, partition_id, keys):
        pass

    def kv_batch_get(self, keys, partition_id, select_fields):
        prompts, responses = zip(*(self.contents[key] for key in keys), strict=True)
        columns = {"prompts": prompts, "responses": responses}
        return {field: types.SimpleNamespace(unbind=lambda rows=columns[field]: [torch.tensor(r) for r in rows])
                for field in select_fields}  # fmt: skip


@pytest.mark.parametrize(("partition", "on_cpu", "content_ordered"), [("val", True, True), ("val", False, False),
                                                                      ("train", True, False)])  # fmt: skip
def test_validation_batches_come_in_content_order_on_the_cpu_platform(monkeypatch, partition, on_cpu, content_ordered):
    """V1's replay buffer hands a validation batch over in its samples' order of arrival (the snapshot's), which
    varies run to run; on the CPU platform it comes sorted by (prompt, response), whatever the arrival."""
    from verl.trainer.ppo.v1 import replay_buffer

    contents = {"a_0_0": ([5, 1], [2]), "a_1_0": ([5, 1], [1, 4]), "b_0_0": ([3], [7, 7]), "b_1_0": ([3], [0])}
    monkeypatch.setattr(replay_buffer, "tq", FakeTransferQueue(contents))
    monkeypatch.setattr(patches, "_on_cpu_platform", lambda: on_cpu)
    buffer = object.__new__(replay_buffer.ReplayBuffer)
    orders = []
    for arrival in (["a_0_0", "b_0_0", "a_1_0", "b_1_0"], ["b_1_0", "a_1_0", "b_0_0", "a_0_0"]):
        snapshot = {key: {"status": "finish", "index": i} for i, key in enumerate(arrival)}
        batch = buffer._materialize_batch(partition, ["a", "b"], snapshot)
        assert [tag["index"] for tag in batch.tags] == [arrival.index(key) for key in batch.keys]  # tags follow keys
        orders.append(batch.keys)
        if not content_ordered:
            assert batch.keys == arrival
    assert (orders[0] == orders[1] == ["b_1_0", "b_0_0", "a_1_0", "a_0_0"]) is content_ordered
