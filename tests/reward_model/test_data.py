"""Loading the three preference layouts, row errors, and encoding (chat template, truncation, pad token)."""

import json

import pandas as pd
import pytest

from tests.reward_model.conftest import load
from verl_variance.reward_model.data import PreferencePair, encode_pairs, load_preferences

TEXT_ROWS = [
    {"prompt": "the movie", "chosen": "was great", "rejected": "was bad"},
    {"prompt": "", "chosen": "loved it", "rejected": "hated it"},
]
MIX2_ROWS = [
    {
        "chosen": [{"role": "user", "content": "the film?"}, {"role": "assistant", "content": "a masterpiece"}],
        "rejected": [{"role": "user", "content": "the film?"}, {"role": "assistant", "content": "a mess"}],
    }
]
REWARDBENCH_ROWS = [
    {"prompt": "rate it", "chosen": "good", "rejected": "bad", "subset": "alpacaeval-easy", "id": 7},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_text_layout_from_jsonl(tmp_path):
    pairs = load_preferences(write_jsonl(tmp_path / "p.jsonl", TEXT_ROWS))
    assert pairs == [PreferencePair("the movie", "was great", "was bad"), PreferencePair("", "loved it", "hated it")]
    assert not pairs[0].is_chat


def test_jsonl_text_may_hold_unicode_line_separators(tmp_path):
    row = {"prompt": "a\u2028b", "chosen": "c\x85d", "rejected": "e\x1cf"}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_preferences(path) == [PreferencePair("a\u2028b", "c\x85d", "e\x1cf")]


def test_mix2_chat_layout_from_parquet(tmp_path):
    path = tmp_path / "mix2.parquet"
    pd.DataFrame(MIX2_ROWS).to_parquet(path)
    (pair,) = load_preferences(path)
    assert pair.is_chat
    assert pair.prompt == [{"role": "user", "content": "the film?"}]
    assert pair.chosen == [{"role": "assistant", "content": "a masterpiece"}]
    assert pair.rejected == [{"role": "assistant", "content": "a mess"}]


def test_rewardbench_layout_keeps_the_subset(tmp_path):
    path = tmp_path / "rb.parquet"
    pd.DataFrame(REWARDBENCH_ROWS).to_parquet(path)
    assert load_preferences(path) == [PreferencePair("rate it", "good", "bad", "alpacaeval-easy")]
    assert load_preferences(pd.DataFrame(REWARDBENCH_ROWS)) == load_preferences(REWARDBENCH_ROWS)
    import datasets

    assert load_preferences(datasets.Dataset.from_list(REWARDBENCH_ROWS)) == load_preferences(REWARDBENCH_ROWS)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([TEXT_ROWS[0], {}], "row 2: the row is empty"),
        ([TEXT_ROWS[0], {"prompt": "x", "chosen": "y"}], r"row 2: missing column\(s\) \['rejected'\]"),
        ([{"prompt": "x", "chosen": "  ", "rejected": "z"}], "row 1: 'chosen' is empty"),
        ([{"chosen": "y", "rejected": "z"}], "row 1: text rows need a 'prompt'"),
        ([{"prompt": "x", "chosen": 3, "rejected": "z"}], "row 1: 'chosen' must be text or a list"),
        ([{"chosen": [{"role": "user"}], "rejected": [{"role": "user", "content": "a"}]}], r"row 1: chosen\[0\]"),
        ([{"prompt": "x", "chosen": [], "rejected": "z"}], "row 1: 'chosen' is an empty message list"),
        ([], "no preference pairs"),
    ],
)
def test_malformed_rows_name_the_row(rows, match):
    with pytest.raises(ValueError, match=match):
        load_preferences(rows)


def test_jsonl_errors_name_the_file_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(TEXT_ROWS[0]) + "\n" + json.dumps(TEXT_ROWS[1]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl row 3: not valid JSON"):
        load_preferences(path)
    path.write_text(json.dumps(TEXT_ROWS[0]) + "\n\n" + json.dumps(TEXT_ROWS[1]) + "\n\n")
    with pytest.raises(ValueError, match=r"bad.jsonl row 2: the row is empty"):
        load_preferences(path)
    with pytest.raises(ValueError, match="use .jsonl or .parquet"):
        load_preferences(write_jsonl(tmp_path / "p.csv", TEXT_ROWS))


def test_chat_pairs_use_the_template_and_text_pairs_concatenate(tiny_rm):
    _, tokenizer = load(tiny_rm(3))
    encoded = encode_pairs(load_preferences(MIX2_ROWS + TEXT_ROWS), tokenizer, max_length=128)
    decode = [tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(*encoded["chosen"].values(), strict=True)]
    assert decode[0] == "<|im_start|>user\nthe film?<|im_end|>\n<|im_start|>assistant\na masterpiece<|im_end|>\n"
    assert decode[1:] == ["the movie\nwas great", "loved it"]


def test_truncation_keeps_the_start_and_warns_once_with_the_count(tiny_rm):
    _, tokenizer = load(tiny_rm(3))
    long = " ".join(["the movie was great"] * 20)
    pairs = [PreferencePair("", long, "bad"), PreferencePair("", "good", long), PreferencePair("", "good", "bad")]
    with pytest.warns(UserWarning, match=r"2 of 6 sequences were longer than max_length=8") as caught:
        encoded = encode_pairs(pairs, tokenizer, max_length=8)
    assert len(caught) == 1
    assert encoded["chosen"]["input_ids"].shape == (3, 8)
    assert encoded["chosen"]["input_ids"][0].tolist() == tokenizer(long)["input_ids"][:8]


def test_tokenizer_without_pad_token_is_refused(tiny_rm):
    _, tokenizer = load(tiny_rm(3))
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="set tokenizer.pad_token"):
        encode_pairs([PreferencePair("", "good", "bad")], tokenizer, max_length=8)
