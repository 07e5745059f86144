"""Last-token features are exactly what the score heads read, for left and right padding."""

import pytest
import torch

from tests.reward_model.conftest import load
from verl_variance.reward_model.data import encode_texts
from verl_variance.reward_model.features import (
    backbone_of,
    head_rewards,
    last_token_features,
    last_token_index,
    padded_width,
)

TEXTS = ["the movie was great", "bad", "a long and boring story with a dull ending and bad acting", "funny film"]


def left_pad(encoded, pad_id):
    ids, mask = encoded["input_ids"].clone(), encoded["attention_mask"].clone()
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        ids[row] = torch.cat([torch.full((ids.shape[1] - n,), pad_id), ids[row, :n]])
        mask[row] = torch.cat([torch.zeros(ids.shape[1] - n, dtype=mask.dtype), mask[row, :n]])
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("architecture", ["qwen2", "gpt2"])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_score_of_features_equals_the_classifier_logits(tiny_rm, architecture, padding):
    model, tokenizer = load(tiny_rm(3, architecture))
    encoded = encode_texts(TEXTS, tokenizer, max_length=64)
    encoded.pop("num_truncated")
    if padding == "left":
        encoded = left_pad(encoded, tokenizer.pad_token_id)
    features = last_token_features(model, **encoded, batch_size=3)
    assert features.shape == (len(TEXTS), model.config.hidden_size)
    logits = head_rewards(model, **encoded, batch_size=3)
    assert logits.shape == (len(TEXTS), 3)
    torch.testing.assert_close(features @ model.score.weight.T, logits, atol=1e-5, rtol=1e-5)


def test_features_do_not_depend_on_batching_and_match_each_sequence_alone(tiny_rm):
    model, tokenizer = load(tiny_rm(3))
    encoded = encode_texts(TEXTS, tokenizer, max_length=64)
    encoded.pop("num_truncated")
    batched = last_token_features(model, **encoded, batch_size=len(TEXTS))
    torch.testing.assert_close(last_token_features(model, **encoded, batch_size=1), batched, atol=1e-5, rtol=1e-5)
    alone = encode_texts(TEXTS[2:3], tokenizer, max_length=64)
    single = backbone_of(model)(input_ids=alone["input_ids"]).last_hidden_state[0, -1]
    torch.testing.assert_close(batched[2], single, atol=1e-5, rtol=1e-5)


def test_backbone_and_last_index():
    assert last_token_index(torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]])).tolist() == [1, 3, 3]
    with pytest.raises(ValueError, match="row 1 of attention_mask has no token"):
        last_token_index(torch.tensor([[1, 0], [0, 0]]))


def test_a_sequence_ending_in_the_pad_token_is_refused(tiny_rm):
    model, tokenizer = load(tiny_rm(3))
    model.config.pad_token_id = tokenizer.eos_token_id  # pad = eos, a common setup
    ids = torch.tensor(tokenizer("the movie<|im_end|>")["input_ids"])[None]
    with pytest.raises(ValueError, match="use a pad token distinct from eos"):
        last_token_features(model, ids, torch.ones_like(ids))
    model.config.pad_token_id = None
    with pytest.raises(ValueError, match="set model.config.pad_token_id = tokenizer.pad_token_id"):
        head_rewards(model, ids, torch.ones_like(ids))


def test_padded_width_depends_on_the_length_alone():
    assert [padded_width(n, 1024) for n in (1, 32, 33, 64, 65, 700)] == [32, 32, 64, 64, 128, 1024]
    assert padded_width(70, 80) == 80 and padded_width(90, 80) == 90  # capped; a longer one keeps its length
    assert padded_width(5, 1024, minimum=8) == 8


@pytest.mark.parametrize("padding", ["right", "left"])
def test_fixed_shape_rewards_are_bit_identical_whatever_a_sequence_is_scored_with(tiny_rm, padding):
    model, tokenizer = load(tiny_rm(3))
    encoded = encode_texts(TEXTS, tokenizer, max_length=64)
    encoded.pop("num_truncated")
    if padding == "left":
        encoded = left_pad(encoded, tokenizer.pad_token_id)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    together = head_rewards(model, ids, mask, batch_size=3, fixed_max_length=64)
    alone = torch.cat([head_rewards(model, ids[i : i + 1], mask[i : i + 1], 3, 64) for i in range(len(TEXTS))])
    order = [2, 0, 3, 1]
    shuffled = head_rewards(model, ids[order], mask[order], batch_size=3, fixed_max_length=64)
    assert torch.equal(together, alone) and torch.equal(together[order], shuffled)  # every bit
    padded_to_longest = head_rewards(model, ids, mask, batch_size=4)
    torch.testing.assert_close(together, padded_to_longest, atol=1e-5, rtol=1e-5)  # the same rewards otherwise
