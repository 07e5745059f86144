"""A rule-based reward for the quick-start run (a verl ``custom_reward_function``).

Use with ``reward.custom_reward_function.path=<this file>`` and
``reward.custom_reward_function.name=positive_word_share``. It imports nothing from the package, so
verl can load it by path in any worker.
"""

POSITIVE_WORDS = frozenset(
    "great good wonderful loved best brilliant fun beautiful enjoyed liked masterpiece happy positive".split()
)


def positive_word_share(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """Share of words in the response that are positive, in [0, 1] (0 for an empty response)."""
    words = solution_str.lower().split()
    return sum(word.strip(".,!?") in POSITIVE_WORDS for word in words) / len(words) if words else 0.0


def positive_word_share_with_variance(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """The same score plus a per-sample reward variance, as variance-aware KL needs it.

    A stand-in for an ensemble: four "members" each count a different quarter of the positive words,
    each with its own prior (k/8 pseudo-counts, so members disagree most on short responses), and
    ``reward_variance`` is the sample variance of their scores (always > 0). Return shape
    ``{"score": float, "reward_variance": float}`` is what any custom reward function must return
    for ``algorithm.kl_penalty=variance_aware``.
    """
    words = [word.strip(".,!?") for word in solution_str.lower().split()]
    vocabulary = sorted(POSITIVE_WORDS)
    members = [set(vocabulary[k::4]) for k in range(4)]
    scores = [
        4 * (sum(word in member for word in words) + k / 8) / (len(words) + 1) for k, member in enumerate(members)
    ]
    mean = sum(scores) / len(scores)
    variance = sum((score - mean) ** 2 for score in scores) / (len(scores) - 1)
    return {"score": positive_word_share(data_source, solution_str, ground_truth), "reward_variance": variance}
