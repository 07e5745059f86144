"""One view of the actor update's batch on both of verl's trainers, so each hook of the methods is written once.

The legacy trainer hands its hooks a ``DataProto`` (tensors in ``batch``, the reward's extra info as columns of
``non_tensor_batch``); the V1 trainer a TransferQueue ``KVBatchMeta`` whose fields live in the queue (the reward's
extra info inside each sample's ``extra_fields``). ``LegacyBatch`` and ``V1Batch`` answer the same questions of
either; per-sample data the methods send on travels as batch fields (``put``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from verl_variance.integration.extra_info import reward_extra_columns, reward_extra_infos
from verl_variance.integration.variance_kl import batch_reward_variance, reward_variance


class LegacyBatch:
    """A legacy-trainer ``DataProto``."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def reward_columns(self) -> Mapping[str, Sequence[Any]]:
        """The reward extra info, one column per key (and the batch's other non-tensor columns)."""
        return self.data.non_tensor_batch

    def reward_variance(self, key: str) -> torch.Tensor:
        """(bs,) float64 σ², checked (``variance_kl.batch_reward_variance``)."""
        return batch_reward_variance(self.data, key)

    def tensors(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """``names`` -> (bs, response_length) tensors."""
        return {name: self.data.batch[name] for name in names}

    def sequence_scores(self) -> torch.Tensor:
        """(bs,) each response's score (its token-level scores summed): the reward the policy is trained on."""
        return self.data.batch["token_level_scores"].sum(dim=-1)

    def put(self, fields: Mapping[str, torch.Tensor]) -> None:
        """Add (bs, ...) per-sample fields to the batch the actor receives."""
        for name, value in fields.items():
            self.data.batch[name] = value


class V1Batch:
    """A V1-trainer ``KVBatchMeta`` and the TransferQueue client (``tq``) its fields live in; ``meta`` is the batch
    to hand on (``put`` replaces it)."""

    READ_TOGETHER = ("extra_fields", "rm_scores")
    """The fields the hooks read of a step, fetched in one call: a queue round trip costs more than their bytes."""

    def __init__(self, tq, meta) -> None:
        self.tq, self.meta = tq, meta
        self._read: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.meta)

    def _get(self, names: Sequence[str]):
        return self.tq.kv_batch_get(keys=self.meta.keys, partition_id=self.meta.partition_id, select_fields=names)

    def _read_together(self) -> dict[str, Any]:
        if self._read is None:
            read = self._get(list(self.READ_TOGETHER))
            extra_fields = read["extra_fields"]
            self._read = {
                "extra_fields": extra_fields.tolist() if hasattr(extra_fields, "tolist") else list(extra_fields),
                "rm_scores": read.select("rm_scores").to_padded_tensor()["rm_scores"],
            }
        return self._read

    def extra_fields(self) -> list[Any]:
        """Each sample's ``extra_fields`` dict (read from the queue once)."""
        return self._read_together()["extra_fields"]

    def reward_columns(self) -> Mapping[str, Sequence[Any]]:
        return reward_extra_columns(reward_extra_infos(self.extra_fields()))

    def reward_variance(self, key: str) -> torch.Tensor:
        return reward_variance(self.reward_columns(), key)

    def tensors(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        padded = self._get(list(names)).to_padded_tensor()
        return {name: padded[name] for name in names}

    def sequence_scores(self) -> torch.Tensor:
        return self._read_together()["rm_scores"].sum(dim=-1)  # V1's token-level scores

    def put(self, fields: Mapping[str, torch.Tensor]) -> None:
        from tensordict import TensorDict

        fields = TensorDict(dict(fields), batch_size=len(self.meta))
        self.meta = self.tq.kv_batch_put(keys=self.meta.keys, partition_id=self.meta.partition_id, fields=fields)
