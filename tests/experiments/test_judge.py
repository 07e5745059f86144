"""The TF-IDF + logistic-regression gold judge: accurate on unseen IMDB reviews, deterministic, cached."""

import sys

import numpy as np
import pytest

from verl_variance.experiments.assets import AssetCache, MissingDemoExtra
from verl_variance.experiments.imdb import build_imdb_reviews, read_reviews
from verl_variance.experiments.judge import (
    JUDGE_FILE,
    MIN_ACCURACY,
    JudgeConfig,
    SentimentJudge,
    build_judge,
    first_words,
    load_judge,
    short_text_accuracy,
    train_judge,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return AssetCache(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def judge_asset(cache):
    return build_judge(cache)  # ~15 s on 2 cores


@pytest.fixture(scope="module")
def prompt_half(cache):
    """Reviews the judge never saw (the prompt half of the split)."""
    return read_reviews(build_imdb_reviews(cache), "prompt")


def test_judge_is_accurate_on_unseen_reviews(judge_asset, prompt_half):
    info = judge_asset.info
    assert info["train_reviews"] == 11_250 and info["heldout_reviews"] == 1_250
    assert info["heldout_accuracy"] >= MIN_ACCURACY
    judge = load_judge(judge_asset)
    sample = prompt_half.sample(4000, random_state=0)
    accuracy = judge.accuracy(sample["text"], sample["label"])
    assert accuracy >= MIN_ACCURACY
    # Short texts are harder (VERL_NOTES: about 78% on the first 48 words) but far above chance.
    short = short_text_accuracy(judge, sample["text"], sample["label"], n_words=48)
    assert 0.7 <= short < accuracy
    assert 0.7 <= info["heldout_accuracy_first_48_words"] < info["heldout_accuracy"]


def test_scores_are_log_odds_of_a_positive_review(judge_asset):
    judge = load_judge(judge_asset)
    scores = judge.score(["A wonderful, moving film. I loved every minute.", "Awful. The worst movie I have seen."])
    assert scores.shape == (2,) and scores.dtype == np.float64
    assert scores[0] > 1 and scores[1] < -1
    probability = judge.classifier.predict_proba(judge.vectorizer.transform(["A wonderful film."]))[0, 1]
    assert judge.score(["A wonderful film."])[0] == pytest.approx(np.log(probability / (1 - probability)))


def test_judge_asset_is_reused_and_round_trips(judge_asset, cache, prompt_half, tmp_path):
    again = build_judge(cache)
    assert not again.rebuilt and again.sha256(JUDGE_FILE) == judge_asset.sha256(JUDGE_FILE)
    judge = load_judge(again)
    texts = list(prompt_half["text"][:200])
    judge.save(tmp_path / "copy.pkl")
    assert np.array_equal(SentimentJudge.load(tmp_path / "copy.pkl").score(texts), judge.score(texts))


def test_training_is_deterministic(prompt_half):
    sample = prompt_half.sample(1700, random_state=0)
    texts, labels, probe = sample["text"][:1500], sample["label"][:1500], list(sample["text"][1500:])
    first = train_judge(texts, labels, JudgeConfig(min_df=2)).score(probe)
    second = train_judge(texts, labels, JudgeConfig(min_df=2)).score(probe)
    assert np.array_equal(first, second)
    other = train_judge(texts, labels, JudgeConfig(min_df=2, c=1.0)).score(probe)
    assert not np.array_equal(first, other)
    with pytest.raises(ValueError, match=r"negative \(0\) and positive \(1\)"):
        train_judge(texts[labels == 1], labels[labels == 1])


def test_first_words():
    assert first_words(["one  two three", "a"], 2) == ["one two", "a"]


def test_missing_sklearn(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(MissingDemoExtra, match=r"scikit-learn.*pip install 'verl-variance\[demo\]'"):
        build_judge(AssetCache(tmp_path))
    assert not (tmp_path / "judge").exists()


def test_tfidf_judge_scores_a_response_as_the_continued_review(judge_asset):
    judge = load_judge(judge_asset)
    prompts, responses = ["This movie was", "I thought it"], [" wonderful and moving", " a boring mess"]
    expected = judge.score(["This movie was wonderful and moving", "I thought it a boring mess"])
    np.testing.assert_array_equal(judge.score_responses(prompts, responses), expected)
    assert judge.name == "tfidf" and expected[0] > 0 > expected[1]


@pytest.mark.parametrize("prompt_format", ["chat", "text"])
def test_any_sequence_classifier_is_a_judge(tmp_path, prompt_format):
    """A Hugging Face classifier judge (the paper's FsfairX is one): its logit for each (prompt, response), read
    through its chat template or as one text, equals a direct unbatched forward pass."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from verl_variance.experiments.judge import make_judge
    from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

    path = build_tiny_model(tmp_path / "judge", TinyModelConfig("qwen2", num_labels=1, seed=4))
    judge = make_judge(str(path), prompt_format=prompt_format, batch_size=2)
    prompts, responses = ["the film was", "i thought it", "a"], [" great fun", " boring and slow and long", " mess"]
    scores = judge.score_responses(prompts, responses)
    model, tokenizer = (
        AutoModelForSequenceClassification.from_pretrained(path).eval(),
        AutoTokenizer.from_pretrained(path),
    )
    for prompt, response, score in zip(prompts, responses, scores, strict=True):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = tokenizer.apply_chat_template(messages, tokenize=False) if prompt_format == "chat" else prompt + response
        with torch.no_grad():
            logit = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0]
        assert score == pytest.approx(float(logit), rel=1e-4, abs=1e-5)
    assert judge.name == str(path) and scores.shape == (3,)
    with pytest.raises(ValueError, match="judge prompt format 'html': expected 'chat' or 'text'"):
        make_judge(str(path), prompt_format="html")
