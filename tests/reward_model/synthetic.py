"""Synthetic preferences with a known true reward: r*(text) = #good words − #bad words.

Texts are made of words the tiny tokenizer was trained on (``_CORPUS_WORDS``). Training uses the
sentiment words and the first half of the neutral words; the second half is never seen in training.
"""

from __future__ import annotations

import random

from verl_variance.models.tiny import _CORPUS_WORDS
from verl_variance.reward_model.data import PreferencePair

GOOD = "great good wonderful loved brilliant masterpiece best fun beautiful enjoyed".split()
BAD = "bad awful terrible boring hated worst dull mess ugly slow".split()
NEUTRAL = [word for word in _CORPUS_WORDS if word not in GOOD + BAD]
SEEN = NEUTRAL[: len(NEUTRAL) // 2]
TRAIN_WORDS = GOOD + BAD + SEEN + SEEN  # half the words carry sentiment
PROMPT = "rate this review"


def true_reward(text: str) -> int:
    words = text.split()
    return sum(word in GOOD for word in words) - sum(word in BAD for word in words)


def review(rng: random.Random, length: tuple[int, int] = (6, 12), words: list[str] = TRAIN_WORDS) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(*length)))


def answer(text: str) -> list[dict[str, str]]:
    """The response as a chat turn, so every sequence ends with the same template tokens."""
    return [{"role": "assistant", "content": text}]


def synthetic_pairs(n: int, seed: int, length: tuple[int, int] = (6, 12)) -> list[PreferencePair]:
    """n pairs; chosen has the higher true reward (ties are skipped)."""
    rng, pairs = random.Random(seed), []
    while len(pairs) < n:
        a, b = review(rng, length), review(rng, length)
        if true_reward(a) != true_reward(b):
            chosen, rejected = (a, b) if true_reward(a) > true_reward(b) else (b, a)
            pairs.append(PreferencePair(PROMPT, answer(chosen), answer(rejected)))
    return pairs
