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
