"""A two-objective reward for RVPO and GDPO (a verl ``custom_reward_function``): sentiment and a banned-word rule.

Use with::

    reward.custom_reward_function.path=<this file>
    reward.custom_reward_function.name=sentiment_and_banned_words
    +reward.custom_reward_function.reward_kwargs.judge_path=<judge.pkl>   # optional
    algorithm.adv_estimator=rvpo  rvpo.reward_keys=[sentiment,no_banned_words]
    # or: algorithm.adv_estimator=gdpo  +algorithm.gdpo_reward_keys=[sentiment,no_banned_words]

The objectives conflict on purpose: the cheapest way to sound positive is a word like "great", and
the rule forbids the commonest of them. Averaging normalised objectives (GDPO) lets a response that
is very positive but breaks the rule still get a positive advantage ("constraint neglect"); RVPO's
soft-min does not (seed 000, SPEC §2).
"""

from __future__ import annotations

import functools
import re

from verl_variance.rewards.toy import positive_word_share

BANNED_WORDS = ("great", "good", "best", "love", "loved", "excellent", "wonderful", "amazing")
"""Default banned words: the commonest strongly positive words of IMDB reviews."""

_WORD = re.compile(r"[a-z']+")


@functools.lru_cache(maxsize=4)
def _load_judge(path: str):
    """The demo's TF-IDF sentiment judge (``judge.pkl``), loaded once per process."""
    from verl_variance.experiments.judge import SentimentJudge

    return SentimentJudge.load(path)


def banned_word_count(text: str, banned_words: tuple[str, ...] | list[str] = BANNED_WORDS) -> int:
    """How many words of ``text`` (lower-cased, split at non-letters) are in ``banned_words``."""
    banned = {word.lower() for word in banned_words}
    return sum(word in banned for word in _WORD.findall(text.lower()))


def sentiment_and_banned_words(
    data_source,
    solution_str: str,
    ground_truth,
    extra_info=None,
    judge_path: str | None = None,
    banned_words: tuple[str, ...] | list[str] = BANNED_WORDS,
    **kwargs,
) -> dict[str, float]:
    """Two objectives of one response, and their sum as verl's ``score``.

    - ``sentiment``: the judge's log-odds that the response is positive (``judge_path``: a pickled
      ``SentimentJudge``, e.g. the demo's ``judge.pkl``), else the share of positive words (``toy.py``);
    - ``no_banned_words``: 1.0 if the response uses none of ``banned_words``, else 0.0 (the constraint);
    - ``banned_words``: how many it uses.
    """
    if judge_path:
        sentiment = float(_load_judge(str(judge_path)).score([solution_str])[0])
    else:
        sentiment = positive_word_share(data_source, solution_str, ground_truth)
    count = banned_word_count(solution_str, tuple(banned_words))
    satisfied = 1.0 if count == 0 else 0.0
    return {"score": sentiment + satisfied, "sentiment": sentiment, "no_banned_words": satisfied,
            "banned_words": float(count)}  # fmt: skip
