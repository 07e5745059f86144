"""The counts behind benchmarks/bench_reward_model.py's figures agree with independent counts (no timings here)."""

import pytest
import torch

from tests.conftest import import_benchmark
from verl_variance.reward_model.features import backbone_of
from verl_variance.reward_model.heads import HeadTrainingConfig
from verl_variance.reward_model.reference import train_heads_uncached


@pytest.fixture(scope="module")
def bench():
    yield from import_benchmark("bench_reward_model.py")


@pytest.fixture(scope="module")
def tiny_preset(bench):
    return bench.Preset(32, 2, 2, 64, 300, 16, 4, 1, 1, 24, 1, "float32")


@pytest.mark.parametrize("num_heads", [1, 10])
def test_head_fraction_counts_only_the_score_layer_against_the_bare_transformer(bench, tiny_preset, num_heads):
    from transformers import AutoModel

    config = bench.backbone_config(tiny_preset, num_heads, tiny_preset.seq_len)
    model = bench.build_reward_model(config, 0, "cpu", torch.float32)
    heads, body = bench.head_parameter_counts(model)
    assert heads == num_heads * tiny_preset.hidden_size  # one Linear(H -> K), no bias
    assert body == sum(p.numel() for p in AutoModel.from_config(config).parameters())
    assert heads + body == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("bootstrap", [False, True])
def test_uncached_sequence_count_matches_the_backbone_calls(bench, tiny_preset, bootstrap):
    config = HeadTrainingConfig(num_heads=4, batch_size=8, num_epochs=1.5, target_loss=None, bootstrap=bootstrap)
    model = bench.build_reward_model(bench.backbone_config(tiny_preset, 4, 16), 0, "cpu", torch.float32)
    chosen = bench.random_sequences(24, 16, tiny_preset.vocab_size, seed=2)
    rejected = bench.random_sequences(24, 16, tiny_preset.vocab_size, seed=3)
    seen = []
    hook = backbone_of(model).register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        train_heads_uncached(model, chosen, rejected, config)
    finally:
        hook.remove()
    assert sum(seen) == bench.uncached_backbone_sequences(24, config)


def test_random_sequences_are_right_padded_and_never_end_on_the_pad_token(bench):
    batch = bench.random_sequences(64, 20, 50, seed=0)
    lengths = batch["attention_mask"].sum(dim=1)
    assert bool((lengths >= 10).all()) and bool((lengths <= 20).all())
    last = batch["input_ids"].gather(1, (lengths - 1)[:, None]).squeeze(1)
    assert bool((last != bench.PAD_ID).all())
    assert bool((batch["input_ids"][batch["attention_mask"] == 0] == bench.PAD_ID).all())
