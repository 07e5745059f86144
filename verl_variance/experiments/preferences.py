"""Preference pairs for the demo's reward model: openings of real IMDB reviews, labelled by the judge.

Each text is a training prompt x (the first 2-8 tokens of a review) followed by the review's own next
N tokens (N = the policies' response length), so it has the shape of prompt + response the reward
model will score during PPO. Texts are paired at random; the gold judge scores both, s_a = J(text_a),
s_b = J(text_b), and the label is drawn from the Bradley–Terry model the reward model assumes (Section 4):

    P(a ≻ b) = σ(s_a − s_b),

so near-ties are noisy and clear differences are clean, as with human labels. The raw judge scores
stay in every row. Rows are plain texts (``prompt`` empty, ``chosen``/``rejected`` the texts), the
format the ensemble reward manager scores with ``ensemble_reward.prompt_format=text``.

Why review text and not pairs of reference-policy continuations of one prompt: two 10-token samples of
SmolLM2 after the same opening differ little in sentiment, so their judge labels agree with the judge's
ordering only 70% of the time, and a reward model trained on 512 of them ranked policy samples no
better than chance (Spearman 0.06 against the judge). Human review openings carry the review's
sentiment (labels 79% in the judge's order) and cost no sampling: 1024 pairs gave Spearman 0.42
(measured on the default scale's reference samples; see docs/demo.md). The paper's reward model, too,
is trained on preference data that the policy did not generate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def bradley_terry_labels(score_a: np.ndarray, score_b: np.ndarray, seed: int) -> np.ndarray:
    """Draw "a is preferred" for each pair with P = σ(s_a − s_b). (n,), (n,) -> (n,) bool."""
    probability = 1.0 / (1.0 + np.exp(-(np.asarray(score_a, dtype=np.float64) - np.asarray(score_b))))
    return np.random.default_rng(seed).random(probability.shape) < probability


def pair_indices(num_texts: int, num_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(first, second)``: ``(num_pairs,)`` indices of two different texts per pair, drawn at random.

    Each text is used once while ``2 * num_pairs <= num_texts``; beyond that, every text about equally often.
    """
    if num_texts < 2:
        raise ValueError(f"pairs need at least 2 texts, got {num_texts}")
    rng = np.random.default_rng(seed)
    rounds = -(-2 * num_pairs // num_texts)
    order = np.concatenate([rng.permutation(num_texts) for _ in range(rounds)])[: 2 * num_pairs]
    first, second = order[0::2], order[1::2].copy()
    same = first == second  # only where a pair straddles two permutations
    second[same] = (second[same] + 1) % num_texts
    return first, second


def build_preference_pairs(
    texts_a: Sequence[str], texts_b: Sequence[str], judge_score: Callable[[Sequence[str]], np.ndarray], seed: int
) -> list[dict[str, Any]]:
    """One pair per (text_a, text_b), labelled by Bradley–Terry sampling on the judge's scores.

    Returns rows ``{"prompt": "", "chosen", "rejected", "judge_chosen", "judge_rejected"}``.
    """
    if len(texts_a) != len(texts_b):
        raise ValueError(f"{len(texts_a)} first texts for {len(texts_b)} second texts")
    score_a, score_b = judge_score(texts_a), judge_score(texts_b)
    a_wins = bradley_terry_labels(score_a, score_b, seed)
    rows = []
    for text_a, text_b, s_a, s_b, a_won in zip(texts_a, texts_b, score_a, score_b, a_wins, strict=True):
        chosen, rejected, s_chosen, s_rejected = (text_a, text_b, s_a, s_b) if a_won else (text_b, text_a, s_b, s_a)
        rows.append(
            {
                "prompt": "",
                "chosen": chosen,
                "rejected": rejected,
                "judge_chosen": float(s_chosen),
                "judge_rejected": float(s_rejected),
            }
        )
    return rows


def write_pairs(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    tmp.replace(path)
    return path
