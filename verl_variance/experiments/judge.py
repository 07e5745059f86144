"""The gold judge of the offline IMDB study: TF-IDF + logistic regression on the judge half of IMDB.

It stands in for FsfairX-LLaMA3-RM-v0.1, the judge of Banerjee & Gopalan (Section 5), which is not
available offline. ``SentimentJudge.score`` returns the log-odds that a text is a positive review
(the logistic regression's ``decision_function``), for any text. Trained on 90% of the judge half and
tested on the other 10%, it classifies full reviews about 90% right and the first 48 words of a
review about 80% right (a policy's responses are short, so the second number is the relevant one).
When the policy continues a review, score the prompt and the response together, as TRL's IMDB recipe
(used for the paper's PPO runs) scores query + response.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from verl_variance.experiments.assets import Asset, AssetCache, require_demo_extra
from verl_variance.experiments.imdb import REVIEWS_FILE, build_imdb_reviews, read_reviews, stratified_split

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

logger = logging.getLogger(__name__)

JUDGE_FILE = "judge.pkl"
TFIDF_JUDGE = "tfidf"
"""The name that selects this module's TF-IDF judge where a judge model is asked for (``make_judge``)."""
PAPER_JUDGE = "sfairXC/FsfairX-LLaMA3-RM-v0.1"
"""The paper's judge (Section 5): a Llama-3-8B reward model, a Hugging Face sequence classifier."""
MIN_ACCURACY = 0.85
"""A judge below this held-out accuracy on full reviews is rejected at build time."""


@dataclass
class JudgeConfig:
    """The judge's features, model and held-out split."""

    seed: int = field(default=0, metadata={"help": "Seed of the held-out draw and of liblinear."})
    heldout_fraction: float = field(default=0.1, metadata={"help": "Share of the judge half kept for testing."})
    max_ngram: int = field(default=2, metadata={"help": "Word n-grams from 1 to this length."})
    min_df: int = field(default=3, metadata={"help": "Drop n-grams seen in fewer training reviews."})
    c: float = field(default=10.0, metadata={"help": "Logistic regression C (inverse L2 strength)."})
    max_iter: int = field(default=1000, metadata={"help": "liblinear iterations."})


@dataclass
class SentimentJudge:
    """A fitted ``TfidfVectorizer`` and ``LogisticRegression`` (class 1 = positive review)."""

    vectorizer: TfidfVectorizer
    classifier: LogisticRegression
    name: ClassVar[str] = TFIDF_JUDGE

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Log-odds of a positive review, one float64 per text: ``(n,)``."""
        return self.classifier.decision_function(self.vectorizer.transform(list(texts)))

    def score_responses(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """``score`` of each prompt followed by its response (a continued review): ``(n,)``."""
        return self.score([prompt + response for prompt, response in zip(prompts, responses, strict=True)])

    def accuracy(self, texts: Sequence[str], labels: Sequence[int]) -> float:
        """Share of ``texts`` whose sign of ``score`` matches ``labels`` (1 positive, 0 negative)."""
        predicted = self.score(texts) > 0
        return float(np.mean(predicted == (np.asarray(labels) == 1)))

    def save(self, path: str | Path) -> None:
        """Pickle the judge (load it back with ``SentimentJudge.load``, only from a trusted file)."""
        with open(path, "wb") as handle:
            pickle.dump({"vectorizer": self.vectorizer, "classifier": self.classifier}, handle, protocol=5)

    @classmethod
    def load(cls, path: str | Path) -> SentimentJudge:
        """Unpickle a judge written by ``save`` (pickle runs code: load only files you built)."""
        require_demo_extra("sklearn")
        with open(path, "rb") as handle:
            state = pickle.load(handle)
        return cls(state["vectorizer"], state["classifier"])


def train_judge(texts: Sequence[str], labels: Sequence[int], config: JudgeConfig | None = None) -> SentimentJudge:
    """Fit the TF-IDF (word 1..max_ngram grams, sublinear tf) + logistic regression judge.

    Deterministic: the same texts, labels and config (seed included) give identical scores.
    """
    require_demo_extra("sklearn")
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    config = config or JudgeConfig()
    labels = np.asarray(labels)
    if set(np.unique(labels).tolist()) != {0, 1}:
        raise ValueError(f"train_judge needs negative (0) and positive (1) reviews, got labels {np.unique(labels)}")
    vectorizer = TfidfVectorizer(
        ngram_range=(1, config.max_ngram), sublinear_tf=True, min_df=config.min_df, strip_accents="unicode"
    )
    classifier = LogisticRegression(C=config.c, max_iter=config.max_iter, solver="liblinear", random_state=config.seed)
    classifier.fit(vectorizer.fit_transform(list(texts)), labels)
    return SentimentJudge(vectorizer, classifier)


def first_words(texts: Sequence[str], n_words: int) -> list[str]:
    """Each text cut to its first ``n_words`` whitespace-separated words."""
    return [" ".join(text.split()[:n_words]) for text in texts]


def short_text_accuracy(judge: SentimentJudge, texts: Sequence[str], labels: Sequence[int], n_words: int = 48) -> float:
    """Accuracy of ``judge`` on the first ``n_words`` words of each review (how well it reads short texts)."""
    return judge.accuracy(first_words(texts, n_words), labels)


def build_judge(cache: AssetCache, config: JudgeConfig | None = None, reviews: Asset | None = None) -> Asset:
    """Asset ``judge``: ``judge.pkl`` trained on the judge half of ``imdb_reviews`` (minus a held-out share).

    The manifest's ``info`` holds the held-out accuracy on full reviews and on their first 48 and 16 words.
    Raises ``RuntimeError`` if the full-review accuracy is below ``MIN_ACCURACY``. ``reviews`` defaults to
    ``build_imdb_reviews(cache)``.
    """
    require_demo_extra("sklearn")
    config = config or JudgeConfig()
    reviews_asset = reviews or build_imdb_reviews(cache)
    params = {**asdict(config), "reviews_sha256": reviews_asset.sha256(REVIEWS_FILE)}

    def build(folder: Path) -> dict[str, Any]:
        reviews = read_reviews(reviews_asset, "judge")
        heldout, train = stratified_split(reviews["label"], config.heldout_fraction, config.seed + 3)
        texts, labels = reviews["text"].to_numpy(), reviews["label"].to_numpy()
        logger.info("training the judge on %d IMDB reviews (TF-IDF + logistic regression)", len(train))
        started = time.perf_counter()
        judge = train_judge(texts[train], labels[train], config)
        seconds = time.perf_counter() - started
        info = {
            "train_reviews": len(train),
            "heldout_reviews": len(heldout),
            "train_seconds": round(seconds, 1),
            "features": len(judge.vectorizer.vocabulary_),
            "heldout_accuracy": judge.accuracy(texts[heldout], labels[heldout]),
            "heldout_accuracy_first_48_words": short_text_accuracy(judge, texts[heldout], labels[heldout], 48),
            "heldout_accuracy_first_16_words": short_text_accuracy(judge, texts[heldout], labels[heldout], 16),
        }
        logger.info(
            "judge trained in %(train_seconds).1f s: held-out accuracy %(heldout_accuracy).3f on full reviews, "
            "%(heldout_accuracy_first_48_words).3f on their first 48 words",
            info,
        )
        if info["heldout_accuracy"] < MIN_ACCURACY:
            raise RuntimeError(
                f"the judge reaches only {info['heldout_accuracy']:.3f} held-out accuracy (< {MIN_ACCURACY}) with "
                f"{config}: restore JudgeConfig's defaults"
            )
        judge.save(folder / JUDGE_FILE)
        return info

    return cache.get("judge", params, build, bytes_needed=50_000_000)


def load_judge(asset: Asset) -> SentimentJudge:
    """The judge of a ``judge`` asset (verified by ``AssetCache`` before it is unpickled)."""
    return SentimentJudge.load(asset.path / JUDGE_FILE)


class SequenceClassifierJudge:
    """Any Hugging Face sequence classifier as the judge (the paper's: ``PAPER_JUDGE``), on the GPU if any.

    A response's score is the classifier's logit (the mean of its logits if it has several heads) for the
    prompt and the response: as a user turn and an assistant turn through the model's chat template
    (``prompt_format="chat"``, what reward models such as FsfairX are trained on), or as one plain text, the
    prompt followed by the response (``"text"``).
    """

    def __init__(self, path: str, prompt_format: str = "chat", batch_size: int = 8, max_length: int = 1024) -> None:
        from verl_variance.reward_model.checkpoint import load_reward_model

        if prompt_format not in ("chat", "text"):
            raise ValueError(f"judge prompt format {prompt_format!r}: expected 'chat' or 'text'")
        self.name, self.prompt_format, self.batch_size, self.max_length = path, prompt_format, batch_size, max_length
        self.model, self.tokenizer = load_reward_model(path)
        if prompt_format == "chat" and getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(f"judge {path} has no chat template: use the text prompt format (JUDGE_FORMAT=text)")

    def score_responses(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """The judge's reward of each (prompt, response): ``(n,)`` float64."""
        from verl_variance.reward_model.scoring import member_rewards

        if self.prompt_format == "chat":
            items = [(p, [{"role": "assistant", "content": r}]) for p, r in zip(prompts, responses, strict=True)]
        else:
            items = list(zip(prompts, responses, strict=True))
        rewards = member_rewards(self.model, self.tokenizer, items, self.batch_size, self.max_length, separator="")
        return rewards.mean(dim=1).double().numpy()


def make_judge(
    judge: str, assets_dir: str | None = None, prompt_format: str = "chat", batch_size: int = 8, max_length: int = 1024
) -> SentimentJudge | SequenceClassifierJudge:
    """The judge named ``judge``: ``"tfidf"`` (this module's, built offline into the asset cache at
    ``assets_dir``) or a Hugging Face sequence classifier (a local folder or a hub name)."""
    if judge == TFIDF_JUDGE:
        return load_judge(build_judge(AssetCache(assets_dir)))
    return SequenceClassifierJudge(judge, prompt_format, batch_size, max_length)
