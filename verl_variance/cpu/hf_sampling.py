"""Sampling of the ``hf`` rollout: seeded per request, independent of how requests are batched.

verl's agent loop sends one request per sample, and requests reach a server at times that vary run
to run. Two things would make the samples depend on that timing, and both are removed here:

- the random stream: each request draws from its own ``torch.Generator``, seeded from the rollout
  seed, the step and the request's deterministic id (``request_seed``), never from a shared one;
- the arithmetic: on the CPU a row's logits change in the last bits with the batch's shape (matrix
  kernels pick their path by size: 3.6e-5 on SmolLM2-135M between 1 row and 5). Requests are
  therefore run in chunks of a fixed shape: ``batch_rows`` rows (missing rows are padding), prompts
  left-padded to a fixed width per length bucket (``prompt_bucket``). A row's result then depends
  only on its own prompt, settings and seed (asserted in the tests).

The sampling settings are transformers' own logits processors, in ``generate``'s order (repetition
penalty, temperature, top-k, top-p), and each row draws with ``torch.multinomial`` like ``generate``
does, so a request samples what ``model.generate`` samples for the same prompt and seed. Reported
log-probs are ``log_softmax(logits / temperature)`` of the chosen tokens: what verl's actor
recomputes (it applies no penalty or truncation).

Pure torch + transformers: no verl import (used by the worker-side rollout and the separate server).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from verl_variance.reward_model.features import padded_width

MIN_BUCKET = 32
"""Narrowest prompt width of a chunk; widths are powers of two from here up to the prompt length.

Coarse on purpose: each width is a chunk of its own, and a chunk's decoding reads every weight once per
token whatever its rows (on the CPU that, not the arithmetic, is most of its time), so two widths cost
two decoding loops where one wider prefill costs little (measured: SmolLM2-135M, one thread, 32 rows per
chunk sample 2.5x faster per row than 8)."""


@dataclass(frozen=True)
class SamplingSettings:
    """The sampling parameters verl sends with a request (vLLM's names).

    ``temperature`` 0 is greedy; ``top_k`` <= 0 and ``top_p`` 1 are off; ``stop_token_ids`` end a
    response like eos does; ``ignore_eos`` keeps sampling through eos until ``max_tokens``.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    @classmethod
    def from_params(cls, params: dict[str, Any], max_tokens: int, ignore_eos: bool = False) -> SamplingSettings:
        """Settings from verl's ``sampling_params`` dict; keys this sampler cannot honour fail loudly."""
        unsupported = sorted(
            key
            for key, value in params.items()
            if key in ("n", "best_of", "min_p", "presence_penalty", "frequency_penalty", "stop", "min_tokens")
            and value not in (None, 0, 0.0, 1, [], "")
        )
        if unsupported:
            raise ValueError(f"rollout.name=hf does not support the sampling parameters {unsupported}; use vllm")
        settings = cls(
            max_tokens=int(max_tokens),
            temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)),
            top_k=int(params.get("top_k", -1) or -1),
            repetition_penalty=float(params.get("repetition_penalty", 1.0)),
            stop_token_ids=tuple(int(t) for t in params.get("stop_token_ids") or ()),
            ignore_eos=bool(params.get("ignore_eos", ignore_eos)),
        )
        settings.check()
        return settings

    def check(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0 or self.max_tokens < 0:
            raise ValueError(
                f"rollout.name=hf: invalid sampling settings {self}: need temperature >= 0, 0 < top_p <= 1, "
                "repetition_penalty > 0, max_tokens >= 0"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class SampleRequest:
    """One request: prompt token ids, its settings and the seed of its own random stream."""

    prompt_ids: list[int]
    settings: SamplingSettings
    seed: int


@dataclass
class SampleResult:
    """A sampled response: ``token_ids`` and ``log_probs`` (one per token) and why it ended."""

    token_ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" (eos or a stop token) or "length" (max_tokens)


def request_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts (rollout seed, step, request id, ...), stable across runs
    and processes (unlike ``hash``, which Python salts per process)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def prompt_bucket(length: int, max_width: int) -> int:
    """The padded width of a prompt of ``length`` tokens: the next power of two >= ``MIN_BUCKET``,
    capped at ``max_width`` (the rollout's prompt length); a longer prompt keeps its own length."""
    return padded_width(length, max_width, MIN_BUCKET)


def logits_processors(settings: SamplingSettings):
    """transformers' processors for ``settings``, in ``GenerationMixin._get_logits_processor``'s order."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=settings.repetition_penalty))
    if not settings.greedy:
        if settings.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k > 0:
            processors.append(TopKLogitsWarper(top_k=settings.top_k))
        if settings.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=settings.top_p))
    return processors


@torch.no_grad()
def sample_requests(
    model: torch.nn.Module,
    requests: Sequence[SampleRequest],
    *,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    max_prompt_length: int,
    batch_rows: int,
) -> list[SampleResult]:
    """Sample every request; the result of each depends only on the request (see the module docstring).

    Requests are grouped by settings and prompt bucket and run in chunks of exactly ``batch_rows``
    rows of width ``prompt_bucket(len(prompt), max_prompt_length)``, with a KV cache.

    Returns:
        One ``SampleResult`` per request, in order.
    """
    results: list[SampleResult | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for index, request in enumerate(requests):
        width = prompt_bucket(len(request.prompt_ids), max_prompt_length)
        groups.setdefault((request.settings, width), []).append(index)
    for (settings, width), indices in groups.items():
        for start in range(0, len(indices), batch_rows):
            chunk = indices[start : start + batch_rows]
            outputs = _sample_chunk(
                model, [requests[i] for i in chunk], settings, width, batch_rows, eos_token_ids, pad_token_id
            )
            for index, output in zip(chunk, outputs, strict=True):
                results[index] = output
    return results  # type: ignore[return-value]


def _sample_chunk(
    model: torch.nn.Module,
    requests: list[SampleRequest],
    settings: SamplingSettings,
    width: int,
    rows: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
) -> list[SampleResult]:
    """One fixed-shape chunk: ``rows`` x ``width`` prompts (left-padded; padding rows hold one pad token)."""
    device = next(model.parameters()).device
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    attention_mask[:, -1] = 1  # padding rows: one visible pad token, so no row attends to nothing
    # the repetition penalty sees each row's own tokens only: pads are replaced by the row's first token
    penalty_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    for row, request in enumerate(requests):
        prompt = torch.tensor(request.prompt_ids, dtype=torch.long)
        input_ids[row, width - len(prompt) :] = prompt
        attention_mask[row] = 0
        attention_mask[row, width - len(prompt) :] = 1
        penalty_ids[row] = prompt[0] if len(prompt) else pad_token_id
        penalty_ids[row, width - len(prompt) :] = prompt
    input_ids, attention_mask, penalty_ids = input_ids.to(device), attention_mask.to(device), penalty_ids.to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    generators = [torch.Generator(device=device).manual_seed(request.seed) for request in requests]
    processors = logits_processors(settings)
    stop = torch.tensor(
        sorted({*settings.stop_token_ids, *(() if settings.ignore_eos else eos_token_ids)}) or [-1], device=device
    )
    results = [SampleResult() for _ in requests]
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    finished[len(requests) :] = True
    past, step_ids, step_positions = None, input_ids, position_ids
    for _ in range(settings.max_tokens):
        out = model(input_ids=step_ids, attention_mask=attention_mask, position_ids=step_positions,
                    past_key_values=past, use_cache=True, logits_to_keep=1)  # fmt: skip
        past = out.past_key_values
        logits = out.logits[:, -1, :].float()
        log_probs = torch.log_softmax(logits / (settings.temperature or 1.0), dim=-1)
        scores = processors(penalty_ids, logits.clone())
        if settings.greedy:
            next_tokens = scores.argmax(dim=-1)
        else:
            probs = torch.softmax(scores, dim=-1)
            next_tokens = torch.full((rows,), pad_token_id, dtype=torch.long, device=device)
            for row, generator in enumerate(generators):
                if not finished[row]:
                    next_tokens[row] = torch.multinomial(probs[row : row + 1], 1, generator=generator)[0, 0]
        chosen = log_probs.gather(-1, next_tokens[:, None]).squeeze(-1)
        stopped = torch.isin(next_tokens, stop)
        for row, result in enumerate(results):
            if not finished[row]:
                result.token_ids.append(int(next_tokens[row]))
                result.log_probs.append(float(chosen[row]))
                if stopped[row]:
                    result.finish_reason = "stop"
        finished |= stopped
        if bool(finished.all()):
            break
        next_tokens = torch.where(finished, torch.full_like(next_tokens, pad_token_id), next_tokens)
        step_ids = next_tokens[:, None]
        step_positions = step_positions[:, -1:] + 1
        penalty_ids = torch.cat([penalty_ids, torch.where(finished, penalty_ids[:, 0], next_tokens)[:, None]], dim=-1)
        attention_mask = torch.cat([attention_mask, (~finished).long()[:, None]], dim=-1)
    return results
