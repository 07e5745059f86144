"""The reward extra info of V1 batches: per-sample ``extra_fields`` dicts, the reward's dict inside."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def reward_extra_infos(extra_fields: Sequence[Any]) -> list[Mapping[str, Any]]:
    """Each sample's ``reward_extra_info`` (what the reward function returned besides its score); {} if none."""
    return [
        (extra or {}).get("reward_extra_info", {}) or {} if isinstance(extra, Mapping) else {} for extra in extra_fields
    ]
