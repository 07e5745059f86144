"""Save -> load -> score round trips, plain transformers loading, and clear errors for broken folders."""

import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.reward_model.conftest import load
from tests.reward_model.synthetic import synthetic_pairs
from verl_variance import __version__
from verl_variance.reward_model.checkpoint import data_hash, load_ensemble, save_ensemble
from verl_variance.reward_model.heads import init_heads, set_score_heads
from verl_variance.reward_model.scoring import score_texts, write_scores

TEXTS = ["the movie was great", "bad acting", "a long and boring story with a dull ending", "fun"]


@pytest.fixture
def saved(tiny_rm, tmp_path):
    """A 4-head ensemble (random heads on a tiny backbone) saved with its metadata."""
    model, tokenizer = load(tiny_rm(1))
    set_score_heads(model, init_heads(64, 4, seed=0, std=1.0))
    metadata = {"stage": 2, "data_sha256": data_hash(synthetic_pairs(8, 0)), "seeds": [0]}
    path = save_ensemble(model, tokenizer, tmp_path / "ensemble", metadata)
    return model, tokenizer, path


def test_save_load_score_round_trips_exactly(saved):
    model, tokenizer, path = saved
    before = score_texts(model, tokenizer, TEXTS)
    loaded, loaded_tokenizer, metadata = load_ensemble(path, require_variance=True)
    after = score_texts(loaded, loaded_tokenizer, TEXTS)
    for key in ("rewards", "mean", "variance", "std"):
        assert torch.equal(before[key], after[key]), key
    assert before["rewards"].shape == (4, 4)
    torch.testing.assert_close(after["variance"], after["rewards"].var(dim=1))
    torch.testing.assert_close(after["std"], after["rewards"].std(dim=1))
    assert metadata["num_heads"] == 4 and metadata["stage"] == 2 and metadata["seeds"] == [0]
    assert metadata["verl_variance_version"] == __version__ and len(metadata["data_sha256"]) == 64


def test_saved_folder_is_a_plain_transformers_classifier(saved):
    model, tokenizer, path = saved
    plain = AutoModelForSequenceClassification.from_pretrained(path).eval()
    plain_tokenizer = AutoTokenizer.from_pretrained(path)
    batch = plain_tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = plain(**batch).logits
    assert logits.shape == (4, 4) and plain.config.id2label[0] == "head_0"
    assert torch.equal(logits, score_texts(model, tokenizer, TEXTS)["rewards"])


def test_data_hash_depends_on_content_and_order():
    pairs = synthetic_pairs(4, 0)
    assert data_hash(pairs) == data_hash(list(pairs))
    assert data_hash(pairs) != data_hash(pairs[::-1])


def test_a_single_head_is_refused_when_variance_is_required(tiny_rm, tmp_path):
    model, tokenizer = load(tiny_rm(1))
    path = save_ensemble(model, tokenizer, tmp_path / "one", {"stage": 1})
    assert load_ensemble(path)[2]["num_heads"] == 1
    with pytest.raises(ValueError, match="has 1 head: a single reward model has no variance"):
        load_ensemble(path, require_variance=True)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: (p / "ensemble.json").unlink(), "ensemble.json is missing"),
        (lambda p: (p / "ensemble.json").write_text("{trunc"), "ensemble.json is not valid JSON"),
        (lambda p: (p / "ensemble.json").write_text("{}"), "no integer 'num_heads'"),
        (lambda p: (p / "model.safetensors").unlink(), "no weights file"),
        (lambda p: (p / "model.safetensors").write_bytes(b"garbage" * 100), "the weights do not load"),
        (
            lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:5000]),
            "the weights do not load",
        ),
        (lambda p: (p / "ensemble.json").write_text(json.dumps({"num_heads": 3})), "says 3 heads but the weights"),
    ],
    ids=["no-record", "bad-json", "no-heads", "no-weights", "garbage-weights", "truncated-weights", "head-count"],
)
def test_corrupt_checkpoints_are_reported(saved, damage, match):
    path = saved[2]
    damage(path)
    with pytest.raises(ValueError, match=match) as error:
        load_ensemble(path)
    assert "is corrupt or incomplete" in str(error.value) and "retrain or re-download" in str(error.value)
    assert "expected files: config.json, model.safetensors" in str(error.value)


def test_weights_missing_tensors_are_reported(saved):
    from safetensors.torch import load_file, save_file

    path = saved[2]
    tensors = load_file(path / "model.safetensors")
    del tensors["score.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="weights do not match the config.*score.weight"):
        load_ensemble(path)


def test_tokenizer_model_mismatch_is_reported(saved):
    _, tokenizer, path = saved
    tokenizer.add_tokens([f"newword{i}" for i in range(50)])
    tokenizer.save_pretrained(path)
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model's embedding has \d+ rows"):
        load_ensemble(path)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_ensemble(tmp_path / "nowhere")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_write_scores(saved, tmp_path, suffix):
    model, tokenizer, _ = saved
    scores = score_texts(model, tokenizer, TEXTS)
    path = write_scores({"text": TEXTS, **scores}, tmp_path / f"scores{suffix}")
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    else:
        rows = pd.read_parquet(path).to_dict("records")
    assert [row["text"] for row in rows] == TEXTS
    torch.testing.assert_close(
        torch.tensor([list(row["rewards"]) for row in rows], dtype=torch.float32), scores["rewards"]
    )
    torch.testing.assert_close(torch.tensor([row["variance"] for row in rows], dtype=torch.float32), scores["variance"])
    with pytest.raises(ValueError, match="use a .jsonl or .parquet"):
        write_scores(scores, tmp_path / "scores.csv")


def test_scoring_accepts_texts_pairs_and_conversations_and_warns_on_truncation(saved):
    model, tokenizer, _ = saved
    chat = [{"role": "user", "content": "the film?"}, {"role": "assistant", "content": "great"}]
    scores = score_texts(model, tokenizer, ["the film?\ngreat", ("the film?", "great"), chat, ("the film?", chat[1:])])
    rewards = scores["rewards"]
    assert torch.equal(rewards[0], rewards[1]) and torch.equal(rewards[2], rewards[3])
    with pytest.warns(UserWarning, match="1 of 2 sequences were longer than max_length=4"):
        score_texts(model, tokenizer, ["fun", "a long and boring story with a dull ending"], max_length=4)
