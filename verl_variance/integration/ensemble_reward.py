"""The ensemble reward inside verl: K head scores -> training reward + σ² + per-head scores.

Two ways to serve a K-head reward model (``AutoModelForSequenceClassification``, ``num_labels=K``):

- ``reward.reward_manager.name=ensemble`` (CPU, or any machine without a reward server): a reward
  manager registered in verl's registry that scores in-process with transformers, gathering the
  concurrent per-sample requests of verl's reward loop into no-grad forward passes of a fixed shape
  (a score is then bit-identical whatever arrived with it);
- ``reward.reward_model.enable=True`` (verl serves the model: ``rollout.name=vllm`` on GPUs, ``hf`` on the CPU backend,
  ``hf_reward_server``). verl's reward loop keeps only the last ``/classify`` logit; the patch in
  ``patches.py`` reads all K when ``reward.reward_manager.name=ensemble``, from the same text the in-process
  scorer reads (``ensemble_reward.prompt_format``, the last ``max_length`` tokens).

Both emit the same output: ``reward_score`` = the configured aggregate of the K rewards
(``ensemble_reward.aggregator``) and reward extra info ``reward_variance`` (σ², unbiased, what
``algorithm.kl_penalty=variance_aware`` reads), ``reward_mean`` and, optionally, ``reward_head_<k>``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from verl_variance.core.aggregators import aggregate
from verl_variance.core.config import ENSEMBLE_HEAD_PREFIX, EnsembleRewardConfig
from verl_variance.core.variance import ensemble_reward_variance, looks_softmaxed
from verl_variance.integration.compat import VerlVarianceError, patch

MANAGER_NAME = "ensemble"
"""``reward.reward_manager.name`` of the ensemble reward manager."""
SERVED_ENGINES = ("vllm", "hf")
"""``reward.reward_model.rollout.name`` values whose ``/classify`` answers all K logits (vLLM's contract)."""


class SoftmaxedRewardModelError(VerlVarianceError):
    """The served reward model answered class probabilities instead of its K raw logits."""


def served_ensemble(config: Mapping[str, Any]) -> bool:
    """The ensemble manager with a reward model verl serves (``reward.reward_model.enable``)."""
    reward = config.get("reward") or {}
    manager = (reward.get("reward_manager") or {}).get("name")
    return manager == MANAGER_NAME and bool((reward.get("reward_model") or {}).get("enable", False))


def head_keys(available: Sequence[str]) -> list[str]:
    """The ensemble's per-head keys among ``available`` (``reward_head_<k>``), in head order."""
    heads = sorted((int(key[len(ENSEMBLE_HEAD_PREFIX):]), key) for key in available
                   if key.startswith(ENSEMBLE_HEAD_PREFIX) and key[len(ENSEMBLE_HEAD_PREFIX):].isdigit())  # fmt: skip
    return [key for _, key in heads]


def complete_heads(keys: Sequence[str]) -> bool:
    """``keys`` (from ``head_keys``) are reward_head_0..K-1 with K >= 2 and no gap."""
    return len(keys) >= 2 and list(keys) == [f"{ENSEMBLE_HEAD_PREFIX}{k}" for k in range(len(keys))]


def head_score_matrix(columns: Mapping[str, Sequence[Any]], keys: Sequence[str]) -> torch.Tensor:
    """(bs, K) float64 head scores from the reward extra info's columns."""
    return torch.tensor([[float(value) for value in columns[key]] for key in keys], dtype=torch.float64).T


def check_served_heads(columns: Mapping[str, Sequence[Any]]) -> None:
    """Refuse a batch whose K head scores (``reward_head_<k>`` columns, one value per sample) are probabilities for
    every sample: the served reward model softmaxed its logits, so σ² across them is no reward uncertainty."""
    heads = head_keys(list(columns))
    if len(heads) < 2:
        return
    scores = head_score_matrix(columns, heads)
    if looks_softmaxed(scores):
        raise SoftmaxedRewardModelError(
            f"the served reward model's {len(heads)} scores sum to 1 for every sample of the batch: it answers class "
            "probabilities, not its K raw reward logits, so their variance is no reward uncertainty. Fix: serve it "
            "with a /classify that honours \"use_activation\": false (vLLM >= 0.11, or rollout.name=hf), and no "
            "softmax in the model's pooler config"
        )


def ensemble_reward_output(member_rewards: torch.Tensor, settings: EnsembleRewardConfig) -> list[dict[str, Any]]:
    """verl reward-loop outputs for a batch of K-head rewards.

    Args:
        member_rewards: (bs, K) reward of every head, K >= 2.
        settings: the aggregator and extra-info options.

    Returns:
        bs dicts ``{"reward_score": r, "reward_extra_info": {variance_key: σ², "reward_mean": r̄, ...}}``
        with r = aggregate(r_1..r_K) and σ² = 1/(K−1) Σ_k (r_k − r̄)².
    """
    member_rewards = member_rewards.float()
    reward = aggregate(settings.aggregator, member_rewards, **settings.aggregator_params)
    variance = ensemble_reward_variance(member_rewards)
    outputs = []
    for row, score, sigma2 in zip(member_rewards.tolist(), reward.tolist(), variance.tolist(), strict=True):
        extra = {settings.variance_key: sigma2, "reward_mean": sum(row) / len(row)}
        if settings.head_scores:
            extra.update({f"{ENSEMBLE_HEAD_PREFIX}{k}": value for k, value in enumerate(row)})
        outputs.append({"reward_score": score, "reward_extra_info": extra})
    return outputs


def check_num_heads(num_heads: int, where: str) -> None:
    if num_heads < 2:
        raise ValueError(
            f"{where} has {num_heads} reward head: an ensemble of one head has no variance. Train K >= 2 heads "
            "(verl-variance train-rm --num-heads 10) or point ensemble_reward.model_path at the stage-2 folder"
        )


def resolve_model_path(config: Mapping[str, Any], settings: EnsembleRewardConfig) -> str:
    path = settings.model_path or config.get("reward", {}).get("reward_model", {}).get("model_path")
    if not path:
        raise ValueError(
            f"reward.reward_manager.name={MANAGER_NAME} needs the ensemble reward model: set "
            "ensemble_reward.model_path (or reward.reward_model.model_path) to a K-head classifier folder"
        )
    return str(path)


def check_reward_model_folder(model_path: str, settings: EnsembleRewardConfig) -> int:
    """What the manager needs of its model, read from ``config.json`` alone (the driver runs it before Ray):
    a local folder holding a sequence classifier (not a causal LM) with K >= 2 heads, and a head at
    ``aggregator_params.index`` for ``aggregator=member``. Returns K."""
    from transformers import AutoConfig

    if not Path(model_path).is_dir():
        raise FileNotFoundError(
            f"ensemble reward model {model_path} is not a local folder: train one with verl-variance train-rm, "
            "or download the checkpoint first (the reward worker loads it with transformers)"
        )
    config = AutoConfig.from_pretrained(model_path)
    architectures = config.architectures or []
    if architectures and not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise ValueError(
            f"ensemble reward model {model_path} is a {architectures[0]}, not a sequence classifier with K reward "
            "heads (its score heads would be random): point ensemble_reward.model_path at train-rm's "
            "OUTPUT_DIR/ensemble"
        )
    num_heads = config.num_labels
    check_num_heads(num_heads, f"ensemble reward model {model_path}")
    index = settings.aggregator_params.get("index", 0)
    if settings.aggregator == "member" and not -num_heads <= index < num_heads:
        raise ValueError(f"ensemble_reward.aggregator_params.index={index} but {model_path} has {num_heads} heads")
    return num_heads


class EnsembleScorer:
    """A K-head reward model loaded once per process, scoring (prompt, response) items in batches."""

    def __init__(self, model_path: str, settings: EnsembleRewardConfig) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from verl_variance.reward_model.checkpoint import ENSEMBLE_FILE, check_tokenizer_fits, load_ensemble

        check_reward_model_folder(model_path, settings)
        torch.set_num_threads(settings.num_threads)
        if (Path(model_path) / ENSEMBLE_FILE).is_file():
            model, tokenizer, _ = load_ensemble(model_path, require_variance=True)
        else:  # any Hugging Face sequence classifier with num_labels = K
            model = AutoModelForSequenceClassification.from_pretrained(model_path).eval()
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            check_tokenizer_fits(model, tokenizer, f"ensemble reward model {model_path}")
        self.model, self.tokenizer, self.settings = model, tokenizer, settings

    @torch.no_grad()
    def score(self, items: Sequence[tuple[Any, str]]) -> torch.Tensor:
        """(N, K) rewards of N (prompt, response) items (prompt: chat messages, or "" for a plain text): of their
        last ``max_length`` tokens, as a served reward model scores them (``ensemble_disrm_score``).

        Fixed-shape chunks of ``batch_size`` rows: an item's rewards do not depend on which requests arrived
        with it (verl's reward loop sends them one by one, at times that vary run to run)."""
        from verl_variance.reward_model.scoring import member_rewards

        settings = self.settings
        return member_rewards(self.model, self.tokenizer, list(items), settings.batch_size, settings.max_length,
                              fixed_shape=True, keep="end")  # fmt: skip


_SCORERS: dict[tuple[str, str], EnsembleScorer] = {}


def shared_scorer(model_path: str, settings: EnsembleRewardConfig) -> EnsembleScorer:
    """One scorer per process, model and settings (verl builds a manager per reward-loop worker)."""
    key = (model_path, repr(settings))
    if key not in _SCORERS:
        _SCORERS[key] = EnsembleScorer(model_path, settings)
    return _SCORERS[key]


class RequestBatcher:
    """Gathers concurrent ``submit`` calls for ``wait_s`` and runs them as one batch in a thread."""

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], wait_s: float, max_batch: int) -> None:
        self.run_batch, self.wait_s, self.max_batch = run_batch, wait_s, max_batch
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def submit(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        await asyncio.sleep(self.wait_s)
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                results = await asyncio.to_thread(self.run_batch, [item for item, _ in batch])
            except Exception as exc:  # every waiting request gets the error
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)


def reward_item(item, tokenizer, prompt_format: str) -> tuple[Any, str]:
    """What the reward model reads of one rollout (a ``DataProto`` item), on every path: ``(chat messages,
    response)`` for ``prompt_format=chat`` (the reward model's chat template renders them), ``("", prompt +
    response)`` as one plain text for ``text`` (or a rollout without ``raw_prompt``). The response is decoded by
    the policy's ``tokenizer`` without special tokens."""
    response_ids = item.batch["responses"]
    length = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
    response = tokenizer.decode(response_ids[:length], skip_special_tokens=True)
    messages = item.non_tensor_batch.get("raw_prompt")
    if prompt_format == "text" or messages is None:  # one plain text: prompt + response
        if messages is None:
            prompt_ids = item.batch["prompts"]
            prompt = tokenizer.decode(prompt_ids[prompt_ids != tokenizer.pad_token_id], True)
        else:
            prompt = "".join(str(message["content"]) for message in messages)
        return "", prompt + response
    return [dict(message) for message in messages], response


def _reward_manager_base():
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

    return RewardManagerBase


def build_manager_class():
    """The ``ensemble`` reward manager class (built lazily: its base class lives in verl)."""

    class EnsembleRewardManager(_reward_manager_base()):
        """Scores each rollout with every head of an ensemble reward model (in-process, batched).

        Config: ``reward.reward_manager.name=ensemble`` and the ``ensemble_reward`` group
        (``verl_variance.core.config.EnsembleRewardConfig``); ``reward.reward_model.enable=False``.
        """

        def __init__(self, config, tokenizer, compute_score, reward_router_address=None, reward_model_tokenizer=None):
            super().__init__(config, tokenizer, compute_score)
            self.settings = EnsembleRewardConfig.from_trainer_config(config)
            served = config.get("reward", {}).get("reward_model", {}).get("enable", False)
            # a served reward model (reward.reward_model.enable) is scored by the server through the patched
            # compute_score_disrm: verl still builds this manager in every reward worker, so load nothing here
            self.scorer = None if served else shared_scorer(resolve_model_path(config, self.settings), self.settings)
            self.batcher = RequestBatcher(
                self._score_batch, self.settings.batch_wait_ms / 1000, self.settings.batch_size
            )

        def _score_batch(self, items: list[tuple[Any, str]]) -> list[dict[str, Any]]:
            return ensemble_reward_output(self.scorer.score(items), self.settings)

        async def run_single(self, data) -> dict:
            # multi-sequence outputs: the last sequence is the response
            return await self.batcher.submit(reward_item(data[-1], self.tokenizer, self.settings.prompt_format))

    return EnsembleRewardManager


def register_manager(registry_module) -> None:
    """Register ``ensemble`` in verl's reward-manager registry (idempotent)."""
    if MANAGER_NAME not in registry_module.REWARD_MANAGER:
        registry_module.register(MANAGER_NAME)(build_manager_class())


async def ensemble_disrm_score(worker, data, settings: EnsembleRewardConfig) -> dict:
    """All K ``/classify`` logits of verl's served reward model, aggregated (replaces verl's last-logit read).

    ``worker`` is verl's ``RewardLoopWorker``. The request carries the text the in-process scorer reads
    (``reward_item``: ``ensemble_reward.prompt_format``; the reward model's chat template, whose special tokens
    are in the text, or a plain text that gets them from the tokenizer) and asks for its last ``max_length``
    tokens (``truncate_prompt_tokens`` with ``truncation_side`` left), so both paths score the same tokens.
    """
    from verl_variance.reward_model.scoring import reward_model_text

    engine = worker.config.reward.reward_model.rollout.name
    if engine not in SERVED_ENGINES:
        raise NotImplementedError(
            f"the ensemble reward reads K logits from vLLM's /classify; reward.reward_model.rollout.name={engine} "
            f"returns one score. Use rollout.name={' or '.join(SERVED_ENGINES)}, or score in-process "
            "(reward.reward_model.enable=False)"
        )
    text, chat = reward_model_text(reward_item(data[-1], worker.input_tokenizer, settings.prompt_format),
                                   worker.reward_model_tokenizer)  # fmt: skip
    payload = {
        "model": worker.config.reward.reward_model.model_path,
        "input": text,
        "add_special_tokens": not chat,
        "truncate_prompt_tokens": settings.max_length,
        "truncation_side": "left",  # the last tokens (vLLM's pooling tokenizer keeps the first by default)
        "use_activation": False,
    }
    output = await worker._post_request(payload, "classify")
    logits = torch.tensor(output["data"][-1]["probs"], dtype=torch.float32).reshape(1, -1)
    check_num_heads(logits.shape[1], f"the served reward model {payload['model']}")
    return ensemble_reward_output(logits, settings)[0]


def patch_disrm_all_logits(module) -> None:
    """verl's reward loop scores a served reward model through vLLM's /classify: the ``ensemble`` manager gets every
    head's logit (``ensemble_disrm_score``)."""

    @patch(module.RewardLoopWorker, "compute_score_disrm")
    def _(original):
        @functools.wraps(original)
        async def compute_score_disrm(self, data):
            if self.config.reward.reward_manager.get("name") != MANAGER_NAME:
                return await original(self, data)
            return await ensemble_disrm_score(self, data, EnsembleRewardConfig.from_trainer_config(self.config))

        return compute_score_disrm
