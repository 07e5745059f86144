"""``reward.reward_model.rollout.name=hf``: verl's served reward model, on a transformers classifier.

With ``reward.reward_model.enable=True`` verl serves the reward model itself: ``RewardModelManager`` has each
rollout replica of the reward model launch an HTTP server, a router process forwards the reward loop's requests
to them, and ``RewardLoopWorker.compute_score_disrm`` posts each sample to ``/classify``. On GPUs the server is
vLLM. This is the same server where vLLM does not run: vLLM's ``/classify`` contract (as of vLLM 0.24), served
from the replica's own worker process (verl's ``CheckpointEngineWorker`` of the reward model's resource pool),
so the rest of verl's served-reward dataflow (resource pools, router, ``compute_score_disrm``,
``_compute_reward_colocate``) runs unchanged.

The contract, for a ``*ForSequenceClassification`` model of K labels: ``POST /classify`` with ``input`` (a text
or a list of texts), ``add_special_tokens`` (default true), ``truncate_prompt_tokens`` (the first tokens, or the
last with ``truncation_side: "left"``) and ``use_activation`` (``activation``/``softmax``: its deprecated names)
answers ``{"data": [{"index", "label", "probs", "num_classes"}], "usage": ...}`` with ``probs`` the K raw logits
for ``use_activation: false`` and their softmax otherwise (a sigmoid for K = 1); an input longer than the server's
``max_model_len`` is a 400.

Concurrent requests are scored together in fixed-shape chunks (``features.head_rewards``), each sequence padded
to a width set by its length and its bound (``truncate_prompt_tokens``, else ``max_model_len``): a sample's K
scores do not depend on what arrived with it, and equal the in-process ensemble scorer's for the same tokens
(which pads to the same widths under ``ensemble_reward.max_length``, the bound the served read sends).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

BATCH_WAIT_SECONDS = 0.005
"""How long the server gathers concurrent requests before scoring them together."""


class BadRequest(ValueError):
    """A /classify request vLLM would refuse with HTTP 400; the message is vLLM's."""


@dataclass(frozen=True)
class ClassifyRequest:
    """One ``POST /classify`` body, checked as vLLM checks it."""

    model: str | None
    texts: list[str]
    add_special_tokens: bool
    truncate_prompt_tokens: int | None
    truncation_side: str | None
    use_activation: bool | None

    @classmethod
    def parse(cls, body: Any) -> ClassifyRequest:
        if not isinstance(body, Mapping):
            raise BadRequest("the request body must be a JSON object")
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
            raise BadRequest("input must be a string or a non-empty list of strings")
        truncate = body.get("truncate_prompt_tokens")
        if truncate is not None and (isinstance(truncate, bool) or not isinstance(truncate, int) or truncate < -1):
            raise BadRequest("truncate_prompt_tokens must be an integer >= -1")
        side = body.get("truncation_side")
        if side not in (None, "left", "right"):
            raise BadRequest("`truncation_side` must be either 'left' or 'right'.")
        activation = [body.get(key) for key in ("use_activation", "activation", "softmax")]
        add_special = body.get("add_special_tokens", True)
        if not all(isinstance(flag, bool) for flag in (add_special, *(v for v in activation if v is not None))):
            raise BadRequest("add_special_tokens, use_activation, activation and softmax must be booleans")
        use_activation = next((value for value in activation if value is not None), None)
        return cls(body.get("model"), texts, add_special, truncate, side, use_activation)


def classify_token_ids(request: ClassifyRequest, tokenizer, max_model_len: int) -> list[list[int]]:
    """The token ids vLLM scores for each text: tokenized with ``add_special_tokens``, cut to
    ``truncate_prompt_tokens`` tokens (-1: ``max_model_len``): the first ones, or the last for ``truncation_side``
    ``left`` (vLLM loads a pooling model's tokenizer with ``truncation_side="right"``), and refused beyond
    ``max_model_len``."""
    limit = max_model_len if request.truncate_prompt_tokens == -1 else request.truncate_prompt_tokens
    if limit is not None and limit > max_model_len:
        raise BadRequest(
            f"truncate_prompt_tokens value ({limit}) is greater than max_model_len ({max_model_len}). Please, select "
            "a smaller truncation size."
        )
    sequences = []
    for text in request.texts:
        ids = tokenizer(text, add_special_tokens=request.add_special_tokens)["input_ids"]
        if limit is not None:
            ids = (ids[-limit:] if request.truncation_side == "left" else ids[:limit]) if limit > 0 else []
        if not ids:
            raise BadRequest("the input tokenizes to no token")
        if len(ids) > max_model_len:
            raise BadRequest(
                f"This model's maximum context length is {max_model_len} tokens. However, you requested {len(ids)} "
                "tokens in the input for classification. Please reduce the length of the input."
            )
        sequences.append(ids)
    return sequences


def classify_response(request: ClassifyRequest, logits: torch.Tensor, id2label: Mapping[int, str],
                      num_tokens: int) -> dict[str, Any]:  # fmt: skip
    """vLLM's ``ClassificationResponse`` for (N, K) logits: raw for ``use_activation`` false, else softmax over the
    K labels (sigmoid for one label)."""
    logits = logits.float()
    if request.use_activation is not False:
        logits = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
    data = [
        {"index": index, "label": id2label.get(int(row.argmax()), str(int(row.argmax()))), "probs": row.tolist(),
         "num_classes": row.shape[0]}
        for index, row in enumerate(logits)
    ]  # fmt: skip
    return {
        "id": f"classify-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": request.model,
        "data": data,
        "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens, "completion_tokens": 0},
    }


class ClassifierServer:
    """A K-label classifier behind vLLM's ``/classify`` (and ``/health``), on its own thread and event loop.

    Args:
        model_path: the ``*ForSequenceClassification`` folder (K = ``num_labels``).
        dtype: the rollout config's ``dtype``.
        rows: rows of every forward pass (``engine_kwargs.hf.batch_rows``).
        max_model_len: the longest input served (``rollout.max_model_len``; None: the model's positions).
    """

    def __init__(self, model_path: str, dtype: str, rows: int, max_model_len: int | None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from verl.utils.torch_dtypes import PrecisionType
        from verl.workers.rollout.utils import get_max_position_embeddings

        from verl_variance.integration.ensemble_reward import RequestBatcher

        model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=PrecisionType.to_dtype(dtype))
        self.model = model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.rows = rows
        self.max_model_len = max_model_len or get_max_position_embeddings(model.config)
        self.batcher = RequestBatcher(self._score, BATCH_WAIT_SECONDS, max_batch=1 << 16)
        self.address: str | None = None

    def _score(self, items: list[tuple[list[int], int]]) -> list[torch.Tensor]:
        """K logits of each (token ids, length bound): fixed-shape chunks of ``rows`` rows whose width depends on
        the sequence's length and its bound alone (``features.padded_width``), as the in-process scorer's."""
        from verl_variance.reward_model.features import head_rewards

        out: list[torch.Tensor | None] = [None] * len(items)
        for bound in sorted({bound for _, bound in items}):
            indices = [index for index, (_, b) in enumerate(items) if b == bound]
            width = max(len(items[index][0]) for index in indices)
            input_ids = torch.full((len(indices), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for row, index in enumerate(indices):
                ids = items[index][0]
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            for index, logits in zip(indices, head_rewards(self.model, input_ids, mask, self.rows, bound), strict=True):
                out[index] = logits
        return out

    async def classify(self, body: Any) -> dict[str, Any]:
        request = ClassifyRequest.parse(body)
        sequences = classify_token_ids(request, self.tokenizer, self.max_model_len)
        bound = self.max_model_len if request.truncate_prompt_tokens in (None, -1) else request.truncate_prompt_tokens
        rows = await asyncio.gather(*[self.batcher.submit((ids, bound)) for ids in sequences])
        id2label = {int(k): v for k, v in (self.model.config.id2label or {}).items()}
        return classify_response(request, torch.stack(rows), id2label, sum(len(ids) for ids in sequences))

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> JSONResponse:
            return JSONResponse({})

        @app.post("/classify")
        async def classify(request: Request) -> JSONResponse:
            try:
                return JSONResponse(await self.classify(await request.json()))
            except (BadRequest, ValueError) as error:  # vLLM's error body for a bad request
                body = {"error": {"message": str(error), "type": "BadRequestError", "param": None, "code": 400}}
                return JSONResponse(body, status_code=400)

        return app

    def start(self, host: str) -> str:
        """Serve on a free port of ``host`` in a daemon thread; returns ``host:port`` once it listens."""
        from verl.utils.net_utils import is_valid_ipv6_address
        from verl.workers.rollout.utils import run_uvicorn

        ready: dict[str, Any] = {}
        started = threading.Event()

        async def serve() -> None:
            try:
                port, task = await run_uvicorn(self.app(), None, host)
                ready["port"] = port
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                ready["error"] = error
                raise
            finally:
                started.set()
            await task

        threading.Thread(target=asyncio.run, args=(serve(),), name="hf-classify-server", daemon=True).start()
        started.wait()
        if "error" in ready:
            raise ready["error"]
        host = f"[{host}]" if is_valid_ipv6_address(host) else host
        self.address = f"{host}:{ready['port']}"
        return self.address


_SERVERS: dict[int, ClassifierServer] = {}
"""The classifier servers this worker process runs, by replica rank (kept alive here)."""


def start_in_worker(worker: Any, replica_rank: int, model_path: str, dtype: str, rows: int,
                    max_model_len: int | None) -> str:  # fmt: skip
    """Runs in the reward model's rollout worker (``__ray_call__``): load the classifier, serve it; its address."""
    import ray

    if replica_rank not in _SERVERS:
        torch.set_num_threads(max(1, int(os.environ.get("VERL_VARIANCE_ROLLOUT_THREADS", "1"))))
        server = ClassifierServer(model_path, dtype, rows, max_model_len)
        address = server.start(ray.util.get_node_ip_address().strip("[]"))
        _SERVERS[replica_rank] = server
        print(f"verl-variance: reward model {model_path} served at http://{address}/classify "
              f"(reward.reward_model.rollout.name=hf, replica {replica_rank})", flush=True)  # fmt: skip
    return _SERVERS[replica_rank].address

