"""Hub datasets the recipes read, from a local copy or the Hugging Face hub, with errors that name the fix."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


class DataPreparationError(ValueError):
    """The data cannot be prepared as asked; the message names the fix."""


def load_local_dataset(path: str | Path, flag: str) -> Any:
    """A ``datasets`` Dataset/DatasetDict from a local copy: a ``save_to_disk`` folder, a hub snapshot folder, or one
    .parquet/.jsonl/.json file (its rows become the ``train`` split).

    Raises:
        DataPreparationError: naming ``flag`` (the option that gave ``path``) when it is missing or unreadable.
    """
    import datasets

    path = Path(path).expanduser()
    if not path.exists():
        raise DataPreparationError(f"{flag} {path} does not exist")
    try:
        if path.is_file():
            kind = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}.get(path.suffix)
            if kind is None:
                raise DataPreparationError(f"{flag} {path}: use a folder, a .parquet or a .jsonl file")
            return datasets.load_dataset(kind, data_files={"train": str(path)})
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return datasets.load_from_disk(str(path))
        return datasets.load_dataset(str(path))
    except DataPreparationError:
        raise
    except Exception as error:  # datasets raises many types for an unreadable folder
        raise DataPreparationError(f"cannot read {path} as a dataset: {type(error).__name__}: {error}") from None


def load_hub_or_local(name: str, local_path: str | Path | None, flag: str) -> tuple[Any, str]:
    """``(dataset, where it came from)``: ``local_path`` when given, else hub dataset ``name``.

    Raises:
        DataPreparationError: the local copy is unreadable, or the hub is unreachable; the message names the
            dataset and ``flag``.
    """
    import datasets

    if local_path is not None:
        return load_local_dataset(local_path, flag), str(local_path)
    try:
        return datasets.load_dataset(name), name
    except Exception as error:  # no internet, no hub access, a gated dataset
        raise DataPreparationError(
            f"cannot load {name} from the Hugging Face hub ({type(error).__name__}); with no internet, pass "
            f"{flag} <a local copy of {name}: a save_to_disk folder, a hub snapshot or a .parquet file>"
        ) from None


def split_of(dataset: Any, split: str, where: str) -> Any:
    """Split ``split`` of a DatasetDict (a plain Dataset is its own only split)."""
    if not hasattr(dataset, "keys"):
        return dataset
    if split in dataset:
        return dataset[split]
    if len(dataset) == 1:
        return next(iter(dataset.values()))
    raise DataPreparationError(f"{where} has no {split!r} split (found {list(dataset)})")


def run_preparation(prepare: Callable[[], Mapping[str, Any]]) -> int:
    """A recipe's ``prepare_data.py`` main: logs, the summary as JSON, and a ``DataPreparationError`` as one line on
    stderr with exit code 2 (no traceback)."""
    logging.basicConfig(level=logging.INFO, format="prepare_data: %(message)s")
    try:
        summary = prepare()
    except DataPreparationError as error:
        print(f"prepare_data: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
