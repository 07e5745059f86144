"""The reward extra info of V1 batches: per-sample ``extra_fields`` dicts, the reward's dict inside."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def reward_extra_infos(extra_fields: Sequence[Any]) -> list[Mapping[str, Any]]:
    """Each sample's ``reward_extra_info`` (what the reward function returned besides its score); {} if none."""
    return [
        (extra or {}).get("reward_extra_info", {}) or {} if isinstance(extra, Mapping) else {} for extra in extra_fields
    ]


def reward_extra_columns(extra_infos: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Per-sample dicts -> one column per key that every sample has (the legacy trainer's ``non_tensor_batch``)."""
    keys = set.intersection(*(set(info) for info in extra_infos)) if extra_infos else set()
    return {key: [info[key] for info in extra_infos] for key in sorted(keys)}


def with_reward_extras(extra_fields: Sequence[Any], columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
    """V1's per-sample ``extra_fields`` with ``columns`` (one value per sample) added to each ``reward_extra_info``:
    the layout verl's agent-loop scoring writes, for the extras its colocated reward path writes as top-level
    fields. Returns an object array of new dicts (numpy scalars as Python numbers)."""
    out = np.empty(len(extra_fields), dtype=object)
    for index, extra in enumerate(extra_fields):
        extra = dict(extra) if isinstance(extra, Mapping) else {}
        info = dict(extra.get("reward_extra_info") or {})
        info.update({key: _plain(values[index]) for key, values in columns.items()})
        extra["reward_extra_info"] = info
        out[index] = extra
    return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
