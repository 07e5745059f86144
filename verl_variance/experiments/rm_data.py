"""The Gemma ensemble reward model's data (Banerjee & Gopalan, Section 4, Appendix 7) in ``train-rm``'s layouts.

- preference_dataset_mix2 (``weqweasdas/preference_dataset_mix2``, ~50k pairs of whole conversations) ->
  ``train.parquet`` in the chat layout (``chosen``, ``rejected``: message lists) for stages 1 and 2;
- RewardBench (``allenai/reward-bench``, split ``filtered``, 2,985 pairs) -> ``rewardbench.parquet`` in the
  RewardBench layout (``prompt``, ``chosen``, ``rejected``, ``subset``) for Table 1 and Figures 6 and 9.

Every row is validated with the loader ``train-rm`` and ``analyze`` use, so a file written here loads there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from verl_variance.experiments.datasets_io import DataPreparationError, load_hub_or_local, split_of
from verl_variance.reward_model.data import load_preferences

logger = logging.getLogger(__name__)

MIX2, REWARDBENCH = "weqweasdas/preference_dataset_mix2", "allenai/reward-bench"
TRAIN_FILE, REWARDBENCH_FILE = "train.parquet", "rewardbench.parquet"
COLUMNS = {TRAIN_FILE: ("chosen", "rejected"), REWARDBENCH_FILE: ("prompt", "chosen", "rejected", "subset")}


def _rows(dataset: Any, columns: tuple[str, ...], where: str, limit: int | None) -> Any:
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise DataPreparationError(f"{where} has columns {dataset.column_names}; {missing} are missing")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    frame = dataset.select_columns(list(columns)).to_pandas()
    try:
        load_preferences(frame)
    except ValueError as error:
        raise DataPreparationError(f"{where}: {error}") from None
    return frame


def prepare_rm_data(
    save_dir: str | os.PathLike,
    local_dataset_path: str | None = None,
    local_rewardbench_path: str | None = None,
    max_train_pairs: int | None = None,
    max_eval_pairs: int | None = None,
) -> dict[str, Any]:
    """Write ``train.parquet`` (mix2) and ``rewardbench.parquet`` into ``save_dir``; returns a summary.

    Args:
        local_dataset_path: a local copy of preference_dataset_mix2 (else the hub).
        local_rewardbench_path: a local copy of RewardBench (else the hub).
        max_train_pairs, max_eval_pairs: keep only the first N rows (a quick run); None keeps all.
    """
    for name, value in (("--max_train_pairs", max_train_pairs), ("--max_eval_pairs", max_eval_pairs)):
        if value is not None and value < 1:
            raise DataPreparationError(f"{name} {value}: expected at least 1")
    save_dir = Path(save_dir).expanduser()
    sources = {
        TRAIN_FILE: (MIX2, local_dataset_path, "--local_dataset_path", "train", max_train_pairs),
        REWARDBENCH_FILE: (REWARDBENCH, local_rewardbench_path, "--local_rewardbench_path", "filtered", max_eval_pairs),
    }
    frames, summary = {}, {"save_dir": str(save_dir)}
    for file, (name, local, flag, split, limit) in sources.items():
        dataset, source = load_hub_or_local(name, local, flag)
        frames[file] = _rows(split_of(dataset, split, source), COLUMNS[file], f"{source} [{split}]", limit)
        summary[file] = {"source": source, "pairs": len(frames[file])}
    save_dir.mkdir(parents=True, exist_ok=True)
    for file, frame in frames.items():
        frame.to_parquet(save_dir / file, index=False)
        logger.info("wrote %s: %d pairs", save_dir / file, len(frame))
    return summary
