"""Ensemble checkpoints: a plain Hugging Face sequence-classifier folder plus ``ensemble.json``.

The folder loads in stock ``AutoModelForSequenceClassification.from_pretrained`` (K = ``num_labels``
heads, no plugin code); ``ensemble.json`` records how it was made and is written last, so a folder
without it is an interrupted save.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from verl_variance.reward_model.data import PreferencePair, check_pad_token
from verl_variance.reward_model.features import score_layer_of

ENSEMBLE_FILE = "ensemble.json"
FORMAT = "verl_variance.reward_ensemble"
EXPECTED_FILES = (
    "config.json, model.safetensors (or model.safetensors.index.json and its shards), "
    f"tokenizer.json + tokenizer_config.json, {ENSEMBLE_FILE}"
)


def data_hash(pairs: Iterable[PreferencePair]) -> str:
    """sha256 of the pairs (order matters), to record which data an ensemble was trained on."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps(asdict(pair), sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def check_tokenizer_fits(model: torch.nn.Module, tokenizer, where: str = "the reward model") -> None:
    """The tokenizer's ids must index the model's embeddings, and both must agree on the pad token."""
    check_tokenizer_matches(tokenizer, model.get_input_embeddings().num_embeddings, model.config.pad_token_id, where)


def check_tokenizer_matches(tokenizer, embedding_rows: int, pad_token_id: int | None, where: str) -> None:
    """``check_tokenizer_fits`` from a model's config alone (``vocab_size``, ``pad_token_id``): no weights loaded.

    A ``pad_token_id`` of None is accepted (the loaders set the tokenizer's).
    """
    if len(tokenizer) > embedding_rows:
        raise ValueError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has {embedding_rows} rows, "
            "so the tokenizer and the weights come from different checkpoints: load both from the same folder, or call "
            "model.resize_token_embeddings(len(tokenizer)) and retrain"
        )
    pad_id = check_pad_token(tokenizer)
    if pad_token_id is not None and pad_token_id != pad_id:
        raise ValueError(
            f"{where}: model.config.pad_token_id={pad_token_id} but the tokenizer pads with id {pad_id}, "
            "so the classifier would score padding: set model.config.pad_token_id = tokenizer.pad_token_id"
        )


def save_ensemble(
    model: torch.nn.Module, tokenizer, output_dir: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write weights (safetensors), tokenizer and ``ensemble.json`` to ``output_dir``.

    Args:
        metadata: recorded as is, e.g. ``stage`` (1 or 2), ``data_sha256`` (``data_hash``), ``seeds``,
            the training configs; ``num_heads``, ``hidden_size`` and ``verl_variance_version`` are filled in.
    """
    output_dir = Path(output_dir)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = check_pad_token(tokenizer)
    check_tokenizer_fits(model, tokenizer, f"cannot save to {output_dir}")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / ENSEMBLE_FILE).unlink(missing_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return write_record(model, tokenizer, output_dir, metadata)


def write_record(
    model: torch.nn.Module, tokenizer, output_dir: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``ensemble.json`` into a folder that already holds the weights and tokenizer of ``model`` (last: a
    folder without it is an interrupted save). ``model`` may be wrapped for training (FSDP, DDP): only its shapes
    are read."""
    from verl_variance import __version__

    output_dir = Path(output_dir)
    score = score_layer_of(model)
    check_tokenizer_fits(model, tokenizer, f"cannot save to {output_dir}")
    record = {"stage": None, "data_sha256": None, "seeds": None, **dict(metadata or {})}
    derived = {"num_heads": score.out_features, "hidden_size": score.in_features}
    for key, value in derived.items():
        if key in record and record[key] != value:
            raise ValueError(f"metadata[{key!r}]={record[key]!r} but the model's score layer has {key} = {value}")
    record.update(derived, format=FORMAT, verl_variance_version=__version__)
    (output_dir / ENSEMBLE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    return output_dir


def _corrupt(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"reward ensemble {path} is corrupt or incomplete ({problem}): retrain or re-download it; "
        f"expected files: {EXPECTED_FILES}"
    )


def read_record(path: Path) -> dict[str, Any]:
    """The ``ensemble.json`` record of checkpoint folder ``path``; an error naming the fix if it is missing or bad."""
    file = path / ENSEMBLE_FILE
    if not file.is_file():
        raise _corrupt(path, f"{ENSEMBLE_FILE} is missing")
    try:
        record = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _corrupt(path, f"{ENSEMBLE_FILE} is not valid JSON: {error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("num_heads"), int):
        raise _corrupt(path, f"{ENSEMBLE_FILE} has no integer 'num_heads'")
    return record


def load_ensemble(path: str | os.PathLike, require_variance: bool = False, **model_kwargs):
    """Load ``(model, tokenizer, metadata)`` saved by ``save_ensemble``; the model is in eval mode.

    Args:
        require_variance: fail unless the ensemble has K >= 2 heads (a variance needs two rewards).
        model_kwargs: passed to ``from_pretrained`` (e.g. ``dtype``, ``device_map``).

    Raises:
        ValueError: corrupt or incomplete folder, tokenizer/model mismatch, or K = 1 with ``require_variance``.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"reward ensemble folder {path} does not exist")
    record = read_record(path)
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    if not any((path / name).is_file() for name in weights):
        raise _corrupt(path, "no weights file")
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True, **model_kwargs)
    except Exception as error:  # safetensors, json and OS errors all mean the same thing here
        raise _corrupt(path, f"the weights do not load: {type(error).__name__}: {error}") from error
    problems = {key: list(value) for key, value in info.items() if key != "error_msgs" and value}
    if problems or info.get("error_msgs"):
        raise _corrupt(path, f"weights do not match the config: {problems or info['error_msgs']}")
    num_heads = score_layer_of(model).out_features
    if num_heads != record["num_heads"]:
        raise _corrupt(path, f"{ENSEMBLE_FILE} says {record['num_heads']} heads but the weights have {num_heads}")
    if require_variance and num_heads < 2:
        raise ValueError(
            f"reward ensemble {path} has {num_heads} head: a single reward model has no variance; train stage 2 "
            "with num_heads >= 2 (HeadTrainingConfig(num_heads=10), the paper's K)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as error:
        raise _corrupt(path, f"the tokenizer does not load: {type(error).__name__}: {error}") from error
    check_tokenizer_fits(model, tokenizer, f"reward ensemble {path}")
    return model.eval(), tokenizer, record


def check_folder(name_or_path: str) -> None:
    """A path-like name (absolute, or starting with ".") must be an existing folder; anything else is a hub name."""
    if (Path(name_or_path).is_absolute() or name_or_path.startswith(".")) and not Path(name_or_path).is_dir():
        raise FileNotFoundError(f"backbone folder {name_or_path} does not exist")


def from_pretrained(load, name_or_path: str, **kwargs):
    """``load(name_or_path, **kwargs)`` (a transformers ``from_pretrained``), a hub miss turned into a clear error."""
    try:
        return load(name_or_path, **kwargs)
    except OSError as error:
        raise ValueError(
            f"cannot load the backbone {name_or_path!r}: it is not a local model folder and the hub lookup failed "
            f"({error}); pass a folder with config.json, weights and tokenizer, or a valid hub name"
        ) from error


def load_backbone(name_or_path: str, num_labels: int | None = 1):
    """``(model, tokenizer)`` of a sequence classifier from a local folder or a hub name (the same call for both).

    Args:
        num_labels: heads of the score layer (1 for stage 1: a fresh scalar head on a causal LM); None keeps the
            checkpoint's.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    check_folder(name_or_path)
    kwargs = {} if num_labels is None else {"num_labels": num_labels}
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, name_or_path)
    model = from_pretrained(AutoModelForSequenceClassification.from_pretrained, name_or_path, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = check_pad_token(tokenizer)
    check_tokenizer_fits(model, tokenizer, f"backbone {name_or_path}")
    return model, tokenizer


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_reward_model(path: str | os.PathLike):
    """``(model, tokenizer)`` on the GPU if any: an ensemble or stage-1 folder (``ensemble.json``), else any Hugging
    Face sequence classifier, local or on the hub."""
    if (Path(path) / ENSEMBLE_FILE).is_file():
        model, tokenizer, _ = load_ensemble(path)
    else:
        model, tokenizer = load_backbone(str(path), num_labels=None)
    return model.to(default_device()).eval(), tokenizer
