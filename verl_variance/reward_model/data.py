"""Preference pairs: loading (JSONL, parquet, rows) and tokenisation for the reward model.

Three row layouts are read:

- text: ``{"prompt": str, "chosen": str, "rejected": str}``;
- chat (preference_dataset_mix2): ``{"chosen": [{"role", "content"}, ...], "rejected": [...]}``,
  each a whole conversation ending with the assistant's answer (``prompt`` optional);
- RewardBench: the text layout plus ``subset`` (e.g. ``alpacaeval-easy``), kept on the pair.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

Message = dict[str, str]
Turns = str | list[Message]


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: ``chosen`` is preferred to ``rejected`` as an answer to ``prompt``.

    Each field is text or a list of chat messages ``{"role": ..., "content": ...}``; chat pairs are
    encoded with the tokenizer's chat template, text pairs as ``prompt + separator + response``.
    """

    prompt: Turns
    chosen: Turns
    rejected: Turns
    subset: str | None = None

    @property
    def is_chat(self) -> bool:
        return any(isinstance(part, list) for part in (self.prompt, self.chosen, self.rejected))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """numpy arrays and scalars (from parquet) to Python lists, dicts and strings."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def _check_messages(messages: list, field_name: str, where: str) -> list[Message]:
    if not messages:
        raise ValueError(f"{where}: {field_name!r} is an empty message list")
    out = []
    for turn, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise ValueError(f"{where}: {field_name}[{turn}] must be a dict with 'role' and 'content', got {message!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"{where}: {field_name}[{turn}] ({message['role']}) has no text 'content'")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _check_turns(value: Any, field_name: str, where: str, allow_empty: bool = False) -> Turns:
    if isinstance(value, str):
        if not value.strip() and not allow_empty:
            raise ValueError(f"{where}: {field_name!r} is empty")
        return value
    if isinstance(value, list):
        return _check_messages(value, field_name, where) if value or not allow_empty else []
    raise ValueError(f"{where}: {field_name!r} must be text or a list of chat messages, got {type(value).__name__}")


def row_to_pair(row: Mapping[str, Any], where: str) -> PreferencePair:
    """Validate one row of any supported layout; ``where`` (e.g. ``"data.jsonl row 3"``) prefixes errors."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected an object with chosen/rejected, got {type(row).__name__}")
    row = {key: _plain(value) for key, value in row.items() if not _is_missing(value)}
    if not row:
        raise ValueError(f"{where}: the row is empty (expected chosen and rejected, and prompt for text rows)")
    missing = [key for key in ("chosen", "rejected") if key not in row]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; columns present: {sorted(row)}")
    chosen = _check_turns(row["chosen"], "chosen", where)
    rejected = _check_turns(row["rejected"], "rejected", where)
    chat = isinstance(chosen, list) or isinstance(rejected, list)
    if "prompt" not in row and not chat:
        raise ValueError(f"{where}: text rows need a 'prompt' column (it may be an empty string)")
    prompt = _check_turns(row.get("prompt", ""), "prompt", where, allow_empty=True)
    if isinstance(chosen, list) and isinstance(rejected, list) and any(m["role"] != "assistant" for m in chosen):
        # whole conversations (mix2): a prompt column only repeats their user turns
        prompt, chosen, rejected = _split_shared_context(chosen, rejected)
    subset = row.get("subset")
    return PreferencePair(prompt, chosen, rejected, None if subset is None else str(subset))


def _split_shared_context(chosen: list[Message], rejected: list[Message]) -> tuple[Turns, Turns, Turns]:
    """Conversations that differ only in the last assistant turn -> (shared context, answer, answer)."""
    shared = chosen[:-1] == rejected[:-1] and chosen[-1]["role"] == rejected[-1]["role"] == "assistant"
    if shared and len(chosen) > 1:
        return chosen[:-1], [chosen[-1]], [rejected[-1]]
    return [], chosen, rejected


def _read_rows(path: Path) -> Iterable[tuple[str, Any]]:
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        for index, row in enumerate(frame.to_dict("records"), start=1):
            yield f"{path} row {index}", row
        return
    if path.suffix not in (".jsonl", ".json"):
        raise ValueError(f"{path}: unsupported preference file type {path.suffix!r}; use .jsonl or .parquet")
    lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 etc. may sit inside a string
    while lines and not lines[-1].strip():
        lines.pop()
    for index, line in enumerate(lines, start=1):
        where = f"{path} row {index}"
        if not line.strip():
            raise ValueError(f"{where}: the row is empty (a blank line); remove it")
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None


def load_preferences(source: str | os.PathLike | Sequence[Mapping[str, Any]] | Any) -> list[PreferencePair]:
    """Read preference pairs from a ``.jsonl`` / ``.parquet`` file, a pandas DataFrame, a ``datasets.Dataset``
    or a list of rows.

    Raises:
        ValueError: naming the row (1-based) and the problem, for empty or malformed rows, or an empty source.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"preference file {path} does not exist")
        rows, name = _read_rows(path), str(path)
    else:
        if hasattr(source, "to_list"):  # a Hugging Face datasets.Dataset
            source = source.to_list()
        elif hasattr(source, "to_dict"):  # a pandas DataFrame
            source = source.to_dict("records")
        rows, name = ((f"row {index}", row) for index, row in enumerate(source, start=1)), "the preference rows"
    pairs = [row_to_pair(row, where) for where, row in rows]
    if not pairs:
        raise ValueError(f"{name} holds no preference pairs")
    return pairs


def sequence_text(prompt: Turns, response: Turns, tokenizer, separator: str = "\n") -> tuple[str, bool]:
    """The text the reward model reads for one (prompt, response), and whether it went through the chat template.

    Chat input (either part a message list): ``apply_chat_template(prompt turns + response turns)``, a text
    prompt becoming the user turn and a text response the assistant turn. Text input: ``prompt + separator +
    response`` (no separator when the prompt is empty).
    """
    if isinstance(prompt, str) and isinstance(response, str):
        return (prompt + separator + response if prompt else response), False
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "chat-message pairs need a tokenizer with a chat template; set tokenizer.chat_template "
            "or convert the rows to prompt/chosen/rejected text"
        )
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt else list(prompt or [])
    messages += [{"role": "assistant", "content": response}] if isinstance(response, str) else list(response)
    return tokenizer.apply_chat_template(messages, tokenize=False), True


def check_pad_token(tokenizer) -> int:
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "the tokenizer has no pad token, so batches cannot be padded: set tokenizer.pad_token "
            "(e.g. tokenizer.add_special_tokens({'pad_token': '<pad>'}) and resize the model's embeddings, "
            "or tokenizer.pad_token = tokenizer.unk_token) and model.config.pad_token_id to match"
        )
    return tokenizer.pad_token_id


def encode_texts(
    texts: Sequence[str], tokenizer, max_length: int, chat: Sequence[bool] | None = None, keep: str = "start"
) -> dict[str, torch.Tensor | int]:
    """Tokenise, truncate to ``max_length`` keeping the start (or the ``end``), and right-pad.

    Args:
        texts: N sequences (already formatted, see ``sequence_text``).
        chat: per text, True when it came from the chat template (its special tokens are in the text).
        keep: ``start`` cuts a longer sequence's end, ``end`` its start.

    Returns:
        ``input_ids`` (N, L) and ``attention_mask`` (N, L), L = the longest kept length; ``num_truncated``.
    """
    pad_id = check_pad_token(tokenizer)
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    chat = chat if chat is not None else [False] * len(texts)
    ids = [
        tokenizer(text, add_special_tokens=not is_chat)["input_ids"] for text, is_chat in zip(texts, chat, strict=True)
    ]
    for index, sequence in enumerate(ids):
        if not sequence:
            raise ValueError(f"sequence {index} tokenises to nothing: {texts[index]!r}")
    if keep not in ("start", "end"):
        raise ValueError(f"keep must be 'start' or 'end', got {keep!r}")
    num_truncated = sum(len(sequence) > max_length for sequence in ids)
    ids = [sequence[:max_length] if keep == "start" else sequence[-max_length:] for sequence in ids]
    width = max((len(sequence) for sequence in ids), default=0)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, sequence in enumerate(ids):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "num_truncated": num_truncated}


def encode_pairs(
    pairs: Sequence[PreferencePair], tokenizer, max_length: int, separator: str = "\n"
) -> dict[str, dict[str, torch.Tensor]]:
    """Encode the chosen and rejected sequence of every pair.

    Sequences longer than ``max_length`` tokens are cut at the end (the start is kept); one warning
    gives how many were cut.

    Returns:
        ``{"chosen": {"input_ids", "attention_mask"}, "rejected": {...}}``, each tensor (N, L).
    """
    out, truncated = {}, 0
    for side in ("chosen", "rejected"):
        formatted = [sequence_text(pair.prompt, getattr(pair, side), tokenizer, separator) for pair in pairs]
        encoded = encode_texts([text for text, _ in formatted], tokenizer, max_length, [c for _, c in formatted])
        truncated += encoded.pop("num_truncated")
        out[side] = encoded
    warn_truncated(truncated, 2 * len(pairs), max_length)
    return out


def warn_truncated(num_truncated: int, total: int, max_length: int, keep: str = "start") -> None:
    if num_truncated:
        cut = "end" if keep == "start" else "start"
        warnings.warn(
            f"{num_truncated} of {total} sequences were longer than max_length={max_length} tokens and were "
            f"truncated (their {cut} was cut); raise max_length to keep them whole",
            stacklevel=3,
        )
