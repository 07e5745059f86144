"""The shipped two-objective reward: its rule, its two sentiment sources, and verl's calling convention."""

import pytest

from verl_variance.rewards.multi_objective import BANNED_WORDS, banned_word_count, sentiment_and_banned_words
from verl_variance.rewards.toy import positive_word_share


@pytest.mark.parametrize(
    ("text", "count"),
    [("A GREAT film, great!", 2), ("greatness and goodness", 0), ("the best, the worst", 1), ("", 0), ("love", 1)],
)
def test_banned_word_count_is_per_whole_word_and_case_blind(text, count):
    assert banned_word_count(text) == count


def test_rule_based_sentiment_without_a_judge():
    out = sentiment_and_banned_words("imdb", "a fun and great story", None, extra_info={"index": 0})
    share = positive_word_share("imdb", "a fun and great story", None)
    assert out == {"score": share + 0.0, "sentiment": share, "no_banned_words": 0.0, "banned_words": 1.0}
    clean = sentiment_and_banned_words("imdb", "a fun story", None, banned_words=["story"])
    assert clean["no_banned_words"] == 0.0 and clean["banned_words"] == 1.0  # the list is a reward_kwarg


def test_judge_sentiment_from_a_pickled_judge(tmp_path):
    from verl_variance.experiments.judge import JudgeConfig, train_judge

    positive = ["a superb and moving film", "wonderful acting and a superb plot", "moving, superb, a delight"] * 4
    negative = ["a dull and boring mess", "boring plot and awful acting", "awful, dull, a waste"] * 4
    judge = train_judge(positive + negative, [1] * 12 + [0] * 12, JudgeConfig(min_df=1, heldout_fraction=0.25))
    path = tmp_path / "judge.pkl"
    judge.save(path)
    out = sentiment_and_banned_words("imdb", "superb and moving", None, judge_path=str(path))
    assert out["sentiment"] == pytest.approx(float(judge.score(["superb and moving"])[0]))
    negative_out = sentiment_and_banned_words("imdb", "dull and boring", None, judge_path=str(path))
    assert out["sentiment"] > 0 > negative_out["sentiment"]
    assert out["score"] == pytest.approx(out["sentiment"] + 1.0)


def test_default_list_holds_the_commonest_positive_words():
    assert {"great", "good", "best"} <= set(BANNED_WORDS)
