"""The measurements behind benchmarks/bench_stage1.py's memory plan agree with independent counts (no timings)."""

import pytest

from tests.conftest import import_benchmark


@pytest.fixture(scope="module")
def bench():
    yield from import_benchmark("bench_stage1.py")


def test_checkpointing_keeps_only_each_layers_input(bench):
    """With gradient checkpointing a layer keeps its input hidden states for the backward pass and nothing else:
    2 sequences x seq_len tokens x hidden x 2 bytes (bf16) per layer; without it, many times more."""
    preset = bench.Preset(64, 2, 4, 1, 256, 1000, 32, 8)
    per_layer = {}
    for checkpointing in (False, True):
        one, two = (bench.saved_activation_bytes(preset, layers, checkpointing) for layers in (1, 2))
        per_layer[checkpointing] = two - one
    assert per_layer[True] == 2 * 32 * 64 * 2
    assert per_layer[False] > 8 * per_layer[True]


def test_random_pairs_have_encode_pairs_shape(bench):
    preset = bench.Preset(64, 2, 4, 1, 256, 1000, 32, 8)
    pairs = bench.random_pairs(preset)
    for side in ("chosen", "rejected"):
        ids, mask = pairs[side]["input_ids"], pairs[side]["attention_mask"]
        assert ids.shape == mask.shape == (8, 32)
        lengths = mask.sum(dim=1)
        assert bool(((lengths >= 16) & (lengths <= 32)).all()) and bool((ids[mask == 0] == 0).all())
        assert bool((mask[:, :-1] >= mask[:, 1:]).all())  # right padding
