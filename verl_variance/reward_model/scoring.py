"""Score sequences with every head: r_k(x, y), their mean, and σ²(x, y) across heads (Section 4, Figure 6)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from verl_variance.core.variance import ensemble_reward_variance
from verl_variance.reward_model.data import PreferencePair, encode_pairs, encode_texts, sequence_text, warn_truncated
from verl_variance.reward_model.features import head_rewards
from verl_variance.reward_model.optimisation import show_progress as progress_enabled

Item = str | tuple[Any, Any] | list[dict[str, str]]
"""A text, a (prompt, response) pair (each text or chat messages), or a whole chat conversation."""


def reward_model_text(item: Item, tokenizer, separator: str = "\n") -> tuple[str, bool]:
    """The text a reward model reads for one item, and whether the chat template made it (its special tokens are
    then in the text): see ``member_rewards``."""
    if isinstance(item, str):
        return item, False
    if isinstance(item, list) and item and all(isinstance(m, Mapping) for m in item):
        return sequence_text([], item, tokenizer)
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return sequence_text(item[0], item[1], tokenizer, separator)
    raise ValueError(f"cannot score {item!r}: expected text, a (prompt, response) pair or a list of chat messages")


def member_rewards(
    model: torch.nn.Module,
    tokenizer,
    texts_or_pairs: Sequence[Item],
    batch_size: int = 32,
    max_length: int = 1024,
    separator: str = "\n",
    fixed_shape: bool = False,
    keep: str = "start",
) -> torch.Tensor:
    """(N, K) float32 reward of every head (any K >= 1) for N texts, (prompt, response) pairs or conversations.

    A pair of texts reads as ``prompt + separator + response``; chat messages go through the tokenizer's chat
    template (``data.sequence_text``). ``fixed_shape``: each reward is bit-identical whatever it is scored with
    (fixed-shape chunks of ``batch_size`` rows, ``features.head_rewards``). ``keep``: which ``max_length`` tokens
    of a longer sequence are scored (``start``, or ``end`` as vLLM's ``truncate_prompt_tokens``).
    """
    formatted = [reward_model_text(item, tokenizer, separator) for item in texts_or_pairs]
    chat = [is_chat for _, is_chat in formatted]
    encoded = encode_texts([text for text, _ in formatted], tokenizer, max_length, chat, keep)
    warn_truncated(encoded.pop("num_truncated"), len(formatted), max_length, keep)
    fixed_max_length = max_length if fixed_shape else None
    return head_rewards(model, encoded["input_ids"], encoded["attention_mask"], batch_size, fixed_max_length)


def score_texts(
    model: torch.nn.Module,
    tokenizer,
    texts_or_pairs: Sequence[Item],
    batch_size: int = 32,
    max_length: int = 1024,
    separator: str = "\n",
) -> dict[str, torch.Tensor]:
    """Rewards of every head for N sequences (``member_rewards``), and their ensemble statistics (K >= 2).

    Returns:
        ``rewards`` (N, K); ``mean`` (N,) r̄ = (1/K) Σ_k r_k; ``variance`` (N,) σ² (unbiased, 1/(K−1));
        ``std`` (N,) σ.
    """
    rewards = member_rewards(model, tokenizer, texts_or_pairs, batch_size, max_length, separator)
    variance = ensemble_reward_variance(rewards)
    return {"rewards": rewards, "mean": rewards.mean(dim=1), "variance": variance, "std": variance.sqrt()}


CHUNK_BATCHES = 16
"""Batches scored between two progress-bar updates."""


def pair_rewards(
    model: torch.nn.Module,
    tokenizer,
    pairs: Sequence[PreferencePair],
    batch_size: int = 32,
    max_length: int = 1024,
    show_progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """r_k of every head for the chosen and the rejected response of each pair, with a progress bar.

    Returns:
        ``(chosen, rejected)``, each (N, K) float32 on the CPU.
    """
    chunk, out = batch_size * CHUNK_BATCHES, {"chosen": [], "rejected": []}
    with tqdm(total=len(pairs), desc="scoring pairs", unit="pair", disable=not progress_enabled(show_progress)) as bar:
        for start in range(0, len(pairs), chunk):
            encoded = encode_pairs(pairs[start : start + chunk], tokenizer, max_length)
            for side, batch in encoded.items():
                out[side].append(head_rewards(model, batch["input_ids"], batch["attention_mask"], batch_size))
            bar.update(len(pairs[start : start + chunk]))
    return torch.cat(out["chosen"]), torch.cat(out["rejected"])


def score_pairs(
    model: torch.nn.Module,
    tokenizer,
    pairs: Sequence[PreferencePair],
    batch_size: int = 32,
    max_length: int = 1024,
    show_progress: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Chosen and rejected scores of preference pairs, and how often each head prefers the chosen one.

    Returns:
        ``chosen`` and ``rejected`` (N, K) rewards (``pair_rewards``); ``head_accuracy`` (K,) and
        ``mean_accuracy`` () of r_k(chosen) > r_k(rejected) and of the ensemble mean; ``chosen_variance`` and
        ``difference_variance`` (N,) σ² across heads of r(chosen) and of r(chosen) − r(rejected) (Figure 6).
    """
    chosen, rejected = pair_rewards(model, tokenizer, pairs, batch_size, max_length, show_progress)
    return {
        "chosen": chosen,
        "rejected": rejected,
        "head_accuracy": (chosen > rejected).float().mean(dim=0),
        "mean_accuracy": (chosen.mean(dim=1) > rejected.mean(dim=1)).float().mean(),
        "chosen_variance": ensemble_reward_variance(chosen),
        "difference_variance": ensemble_reward_variance(chosen - rejected),
    }


def _rows(records: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[dict[str, Any]]:
    """A list of row dicts, or columns of N values each (tensors from ``score_texts``) -> JSON-ready rows."""

    def plain(value: Any) -> Any:
        return value.tolist() if hasattr(value, "tolist") else value

    if isinstance(records, Mapping):
        columns = {key: plain(value) for key, value in records.items()}
        lengths = {key: len(value) for key, value in columns.items() if isinstance(value, list)}
        if len(set(lengths.values())) > 1 or len(lengths) != len(columns):
            raise ValueError(f"score columns must all hold one value per row; lengths: {lengths}")
        count = next(iter(lengths.values()), 0)
        return [{key: value[i] for key, value in columns.items()} for i in range(count)]
    return [{key: plain(value) for key, value in row.items()} for row in records]


def write_scores(records: Sequence[Mapping[str, Any]] | Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write score rows to ``.jsonl`` or ``.parquet`` (by suffix); accepts ``score_texts`` output directly."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"cannot write scores to {path}: use a .jsonl or .parquet file name")
    rows = _rows(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path, index=False)
    else:
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path
