"""Stage 1 and stage 2 on synthetic preferences with a known true reward."""

import math
import random

import pytest
import torch

from tests.reward_model.synthetic import PROMPT, answer, review
from verl_variance.core.variance import ensemble_reward_variance
from verl_variance.reward_model.data import encode_pairs, encode_texts, sequence_text
from verl_variance.reward_model.features import head_rewards, last_token_features
from verl_variance.reward_model.heads import (
    HeadTrainingConfig,
    head_order,
    init_heads,
    set_score_heads,
    train_heads_on_features,
    train_stage2,
)
from verl_variance.reward_model.optimisation import adamw
from verl_variance.reward_model.reference import train_heads_uncached
from verl_variance.reward_model.scoring import score_pairs


def encode(tokenizer, texts):
    formatted = [sequence_text(PROMPT, answer(text), tokenizer) for text in texts]
    encoded = encode_texts([text for text, _ in formatted], tokenizer, 256, [chat for _, chat in formatted])
    return encoded["input_ids"], encoded["attention_mask"]


@pytest.fixture(scope="module")
def cached(stage1):
    encoded = stage1["encoded"]
    return {side: last_token_features(stage1["model"], **encoded[side], batch_size=256) for side in encoded}


def test_stage1_stops_early_below_the_paper_threshold_and_ranks_held_out_pairs(stage1):
    history = stage1["history"]
    assert history.stopped_early and history.loss[-20:].mean() < 0.4
    test = encode_pairs(stage1["test"], stage1["tokenizer"], max_length=64)
    chosen, rejected = (head_rewards(stage1["model"], **test[side], batch_size=256)[:, 0] for side in test)
    assert (chosen > rejected).float().mean() >= 0.85


def test_heads_learn_the_true_reward_on_held_out_pairs(stage1, backbone):
    """Stage 2 end to end: cached features -> 5 heads -> written into the model -> full forward scores."""
    config = HeadTrainingConfig(num_heads=5, learning_rate=1e-2, num_epochs=5, target_loss=None, seed=0)
    history = train_stage2(backbone, stage1["encoded"], config)
    assert history.loss.shape == (history.steps, 5) and history.loss[-10:].mean() < history.loss[:10].mean()
    assert backbone.config.num_labels == 5 and backbone.score.weight.shape == (5, 64)
    scores = score_pairs(backbone, stage1["tokenizer"], stage1["test"], batch_size=128, max_length=64)
    assert scores["mean_accuracy"] >= 0.9, scores["mean_accuracy"]
    assert scores["head_accuracy"].min() >= 0.9, scores["head_accuracy"]
    assert scores["difference_variance"].mean() > 0  # heads are not translations of each other (Figure 6)


def test_head_variance_is_higher_off_distribution(stage1, cached):
    """Bootstrap resamples + independent inits agree where the training features pin the heads down.

    In-distribution: chat-formatted reviews like the training ones. Off-distribution: the same reviews
    without the chat template, and random token strings. (Reviews of unseen neutral words, or longer
    ones, are not off-distribution for the heads: the stage-1 backbone maps them to features like
    the training ones, and the heads only see features. Their variance is no higher, being smaller
    rewards; a shared-backbone ensemble cannot see uncertainty that the backbone erased.)
    """
    model, tokenizer, rng = stage1["model"], stage1["tokenizer"], random.Random(5)
    reviews = [review(rng) for _ in range(200)]
    raw = encode_texts(reviews, tokenizer, 256)
    garbage = torch.randint(4, len(tokenizer), (200, 12), generator=torch.Generator().manual_seed(0))
    inputs = {
        "in": encode(tokenizer, reviews),
        "no_template": (raw["input_ids"], raw["attention_mask"]),
        "garbage": (garbage, torch.ones_like(garbage)),
    }
    features = {name: last_token_features(model, *pair, batch_size=256) for name, pair in inputs.items()}
    for seed in range(3):
        config = HeadTrainingConfig(
            num_heads=8, learning_rate=1e-2, num_epochs=5, target_loss=None, bootstrap=True, init_std=0.3, seed=seed
        )
        heads, _ = train_heads_on_features(cached["chosen"], cached["rejected"], config)
        with torch.no_grad():
            variance = {name: float(ensemble_reward_variance(heads(f)).mean()) for name, f in features.items()}
        assert variance["no_template"] > 2 * variance["in"], variance
        assert variance["garbage"] > 2 * variance["in"], variance


def test_identical_init_and_data_give_identical_heads(cached):
    config = HeadTrainingConfig(num_heads=3, learning_rate=1e-2, max_steps=20, init_std=0.0, bootstrap=False)
    heads, _ = train_heads_on_features(cached["chosen"], cached["rejected"], config)
    assert torch.equal(heads.weight[0], heads.weight[1]) and torch.equal(heads.weight[0], heads.weight[2])


def test_cached_and_uncached_training_give_the_same_heads(stage1):
    model, encoded, rows = stage1["model"], stage1["encoded"], slice(0, 96)
    chosen, rejected = ({key: value[rows] for key, value in encoded[side].items()} for side in encoded)
    config = HeadTrainingConfig(
        num_heads=3, learning_rate=1e-2, batch_size=8, max_steps=12, bootstrap=True, init_std=0.1, feature_batch_size=7
    )
    features = [last_token_features(model, **batch, batch_size=64) for batch in (chosen, rejected)]
    fast, fast_history = train_heads_on_features(*features, config)
    slow, slow_history = train_heads_uncached(model, chosen, rejected, config)
    assert fast_history.steps == slow_history.steps == 12
    torch.testing.assert_close(fast.weight, slow.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_history.loss, slow_history.loss, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fast.weight, init_heads(64, 3, config.seed, config.init_std).weight)


def test_training_stops_once_every_head_is_below_the_target(cached):
    config = HeadTrainingConfig(num_heads=4, learning_rate=1e-2, num_epochs=20, target_loss=0.2, loss_window=10)
    _, history = train_heads_on_features(cached["chosen"], cached["rejected"], config)
    assert history.stopped_early and history.steps < 20 * 1000 // 32
    assert (history.loss[-10:].mean(dim=0) < 0.2).all()


def test_head_init_and_order_depend_only_on_the_seed():
    five, three = init_heads(16, 5, seed=3), init_heads(16, 3, seed=3)
    assert torch.equal(five.weight[:3], three.weight)  # head k's init does not depend on K
    assert not torch.equal(five.weight[0], five.weight[1])
    assert not torch.equal(init_heads(16, 3, seed=4).weight, three.weight)
    shared = head_order(50, HeadTrainingConfig(num_heads=3, batch_size=8, num_epochs=2))
    assert shared.shape == (13, 3, 8) and torch.equal(shared[:, 0], shared[:, 2])
    bootstrap = HeadTrainingConfig(num_heads=3, batch_size=8, num_epochs=2, bootstrap=True)
    boot = head_order(50, bootstrap)
    assert not torch.equal(boot[:, 0], boot[:, 1])
    assert len(boot[:, 0].unique()) < 50  # sampled with replacement: some pairs are left out of head 0's data
    assert torch.equal(boot, head_order(50, bootstrap))


def test_set_score_heads_resizes_the_classifier(backbone):
    heads = init_heads(64, 4, seed=0, std=1.0)
    set_score_heads(backbone, heads)
    assert backbone.config.num_labels == 4 and backbone.config.id2label[3] == "head_3"
    ids = torch.tensor([[5, 6, 7]])
    assert backbone(input_ids=ids).logits.shape == (1, 4)
    with pytest.raises(ValueError, match="heads read 32 features"):
        set_score_heads(backbone, init_heads(32, 4, seed=0))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"learning_rate": 0}, "HeadTrainingConfig.learning_rate must be > 0"),
        ({"num_heads": 0}, "HeadTrainingConfig.num_heads must be >= 1"),
        ({"lr_scheduler": "linear"}, "HeadTrainingConfig.lr_scheduler='linear'"),
        ({"target_loss": -1.0}, "HeadTrainingConfig.target_loss must be > 0"),
        ({"init_std": -1.0}, "HeadTrainingConfig.init_std must be >= 0"),
        ({"num_epochs": 0}, "HeadTrainingConfig.num_epochs must be > 0"),
    ],
)
def test_config_errors_name_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        HeadTrainingConfig(**overrides)


def test_config_defaults_follow_table_4_and_unknown_keys_fail():
    config = HeadTrainingConfig()
    assert (config.learning_rate, config.batch_size, config.num_epochs, config.weight_decay) == (1e-5, 32, 0.5, 0.001)
    assert (config.num_heads, config.target_loss, config.lr_scheduler) == (10, 0.2, "cosine")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr'\].*valid keys: \['learning_rate', .*'num_heads'"):
        HeadTrainingConfig.from_dict({"lr": 1e-3})


@pytest.mark.parametrize(("scheduler", "factor"), [("cosine", lambda t: 0.5 * (1 + math.cos(math.pi * t / 4))),
                                                   ("constant", lambda t: 1.0)])  # fmt: skip
def test_learning_rate_schedule_over_the_steps(scheduler, factor):
    """Table 4's cosine decay from the learning rate to 0 over the run, no warm-up; or a constant rate."""
    config = HeadTrainingConfig(learning_rate=0.2, lr_scheduler=scheduler)
    optimizer, schedule = adamw(torch.nn.Linear(2, 1), config, steps=4)
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([0.2 * factor(t) for t in range(5)], abs=1e-12)
