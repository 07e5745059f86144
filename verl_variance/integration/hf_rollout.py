"""``actor_rollout_ref.rollout.name=hf``: a rollout engine for verl that samples with transformers.

verl 0.9.1 only wires vLLM, SGLang and TensorRT-LLM, all GPU servers. This backend plugs the same
three pieces verl's server rollouts have, so the rest of verl (agent loop, load balancer, weight
sync with ``checkpoint_engine.backend=naive``) is untouched:

- ``HFRolloutServer``: a Ray actor holding a copy of the policy; ``generate`` takes token ids and
  returns sampled tokens with their log-probs (``log_softmax(logits / temperature)``, what verl's
  actor computes), batching concurrent requests into one ``model.generate`` call.
- ``HFServerAdapter``: lives in verl's hybrid actor worker; after each update it ships the FSDP
  weights to its replica's server.
- ``HFReplica``: launches one server per replica for verl's ``LLMServerManager``.

It runs on the CPU (and on a GPU if one is visible to the server), for tests and small models; use
vLLM for anything large.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

logger = logging.getLogger(__name__)

BATCH_WAIT_SECONDS = 0.01
"""How long the server waits for more concurrent requests before running a batch."""


def server_actor_name(replica_rank: int, name_suffix: str = "", is_reward_model: bool = False) -> str:
    kind = "reward_" if is_reward_model else ""
    return f"hf_rollout_server_{kind}{replica_rank}{name_suffix}"


@dataclass
class _Request:
    prompt_ids: list[int]
    sampling_params: dict[str, Any]
    future: asyncio.Future


def _sampling_key(params: dict[str, Any]) -> tuple:
    return (
        float(params.get("temperature", 1.0)),
        float(params.get("top_p", 1.0)),
        int(params.get("top_k", -1)),
        float(params.get("repetition_penalty", 1.0)),
        int(params["max_tokens"]),
        bool(params.get("logprobs", False)),
    )


@torch.no_grad()
def sample_batch(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    eos_token_ids: list[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
) -> tuple[list[list[int]], list[list[float]]]:
    """Sample continuations for a batch of prompts with a KV cache.

    Args:
        prompts: B lists of prompt token ids (any lengths; left-padded internally).
        temperature: 0 means greedy. Log-probs are of ``softmax(logits / temperature)``
            (temperature 1 when greedy), which is what verl's actor recomputes.

    Returns:
        (token_ids, log_probs): B lists each, one entry per generated token, stopping after the
        first eos.
    """
    device = next(model.parameters()).device
    batch = len(prompts)
    width = max(len(p) for p in prompts)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

    eos = torch.tensor(eos_token_ids, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    log_probs: list[list[float]] = [[] for _ in range(batch)]
    past = None
    step_ids, step_positions = input_ids, position_ids
    for _ in range(max_tokens):
        out = model(
            input_ids=step_ids,
            attention_mask=attention_mask,
            position_ids=step_positions,
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        logits = out.logits[:, -1, :].float()
        scaled = logits / (temperature if temperature > 0 else 1.0)
        step_log_probs = torch.log_softmax(scaled, dim=-1)
        if temperature > 0:
            filtered = scaled.clone()
            if top_k > 0:
                kth = torch.topk(filtered, min(top_k, filtered.shape[-1]), dim=-1).values[:, -1:]
                filtered[filtered < kth] = float("-inf")
            if top_p < 1.0:
                sorted_logits, order = torch.sort(filtered, descending=True)
                cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
                drop = cumulative - torch.softmax(sorted_logits, dim=-1) > top_p
                sorted_logits[drop] = float("-inf")
                filtered = torch.full_like(filtered, float("-inf")).scatter(-1, order, sorted_logits)
            next_tokens = torch.multinomial(torch.softmax(filtered, dim=-1), 1, generator=generator).squeeze(-1)
        else:
            next_tokens = logits.argmax(dim=-1)
        chosen = step_log_probs.gather(-1, next_tokens[:, None]).squeeze(-1)
        for row in range(batch):
            if not finished[row]:
                tokens[row].append(int(next_tokens[row]))
                log_probs[row].append(float(chosen[row]))
        finished |= torch.isin(next_tokens, eos)
        if bool(finished.all()):
            break
        next_tokens = torch.where(finished, torch.full_like(next_tokens, pad_token_id), next_tokens)
        step_ids = next_tokens[:, None]
        step_positions = step_positions[:, -1:] + 1
        attention_mask = torch.cat([attention_mask, (~finished).long()[:, None]], dim=-1)
    return tokens, log_probs


@ray.remote
class HFRolloutServer:
    """One rollout replica's generation server (token ids in, token ids + log-probs out)."""

    def __init__(self, config, model_config, replica_rank: int, is_reward_model: bool = False) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig, RolloutConfig

        self.config: RolloutConfig = omega_conf_to_dataclass(config)
        self.model_config: HFModelConfig = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.replica_rank = replica_rank
        torch.set_num_threads(max(1, int(os.environ.get("VERL_VARIANCE_ROLLOUT_THREADS", "1"))))
        path = self.model_config.local_path
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).to(self.device).eval()
        tokenizer = AutoTokenizer.from_pretrained(self.model_config.local_tokenizer_path or path)
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_token_ids = sorted({t for t in eos + [tokenizer.eos_token_id] if t is not None})
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(self.config.seed if hasattr(self.config, "seed") else 0) + replica_rank)
        self.global_steps = None
        self._pending: list[_Request] = []
        self._batch_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        **kwargs: Any,
    ) -> TokenOutput:
        if image_data or video_data:
            raise NotImplementedError("rollout.name=hf serves text-only models; use vllm for multimodal inputs")
        params = dict(sampling_params)
        budget = min(
            self.config.response_length, self.config.prompt_length + self.config.response_length - len(prompt_ids)
        )
        params["max_tokens"] = max(0, budget)
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(list(prompt_ids), params, future))
        if self._batch_task is None or self._batch_task.done():
            self._batch_task = asyncio.create_task(self._run_batches())
        token_ids, log_probs = await future
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs if params.get("logprobs") else None,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    async def _run_batches(self) -> None:
        await asyncio.sleep(BATCH_WAIT_SECONDS)
        while self._pending:
            requests, self._pending = self._pending, []
            groups: dict[tuple, list[_Request]] = {}
            for request in requests:
                groups.setdefault(_sampling_key(request.sampling_params), []).append(request)
            for key, group in groups.items():
                temperature, top_p, top_k, _, max_tokens, _ = key
                async with self._lock:
                    try:
                        tokens, log_probs = await asyncio.to_thread(
                            sample_batch,
                            self.model,
                            [r.prompt_ids for r in group],
                            max_tokens=max_tokens,
                            temperature=temperature,
                            top_p=top_p,
                            top_k=top_k,
                            eos_token_ids=self.eos_token_ids,
                            pad_token_id=self.pad_token_id,
                            generator=self.generator,
                        )
                    except Exception as exc:  # hand the error to every waiting request
                        for request in group:
                            request.future.set_exception(exc)
                        continue
                for request, token_ids, request_log_probs in zip(group, tokens, log_probs, strict=True):
                    request.future.set_result((token_ids, request_log_probs))

    async def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None) -> None:
        async with self._lock:
            missing, unexpected = self.model.load_state_dict(self._hf_names(state_dict), strict=False)
            tied = set(getattr(self.model, "_tied_weights_keys", None) or [])
            missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
            if missing or unexpected:
                raise RuntimeError(
                    f"hf rollout weight sync mismatch: missing={missing[:5]} unexpected={unexpected[:5]}"
                )
            if getattr(self.model.config, "tie_word_embeddings", False):
                self.model.tie_weights()
        if global_steps is not None:
            self.global_steps = global_steps

    def _hf_names(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """verl's weight export drops the base-model prefix for some architectures (GPT-2: ``transformer.``)."""
        expected = self.model.state_dict().keys()
        prefix = f"{self.model.base_model_prefix}."
        return {
            (name if name in expected or prefix + name not in expected else prefix + name): tensor
            for name, tensor in state_dict.items()
        }

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def get_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    # Memory management is a no-op on the CPU: weights stay resident.
    async def wake_up(self) -> None: ...

    async def sleep(self) -> None: ...

    async def clear_kv_cache(self) -> None: ...

    async def release_kv_cache(self) -> None: ...

    async def resume_kv_cache(self) -> None: ...

    async def abort_all_requests(self, reject_request: bool = False) -> None: ...

    async def resume_generation(self) -> None: ...

    async def start_profile(self, **kwargs) -> None: ...

    async def stop_profile(self) -> None: ...


class HFServerAdapter(BaseRollout):
    """The rollout half of verl's hybrid actor worker: forwards synced weights to the server."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1, **kwargs) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", 0))
        rollout_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // rollout_world_size if replica_rank == -1 else replica_rank
        self._has_server = rank % rollout_world_size == 0
        self._server = None

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None: ...

    async def release(self) -> None: ...

    async def update_weights(
        self, weights: Generator[tuple[str, torch.Tensor], None, None], wire_format: str = "named_tensors", **kwargs
    ) -> None:
        if wire_format != "named_tensors":
            raise NotImplementedError(f"rollout.name=hf receives full tensors, not {wire_format!r}")
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError("rollout.name=hf does not serve LoRA adapters; set lora.merge=True")
        state_dict = {}
        for name, tensor in weights:  # every rank must drain the generator (FSDP gathers collectively)
            if self._has_server:
                state_dict[name] = tensor.detach().to("cpu", copy=True)
        if self._has_server:
            await self._server_handle().update_weights.remote(state_dict, kwargs.get("global_steps"))


class HFReplica(RolloutReplica):
    """Launches one ``HFRolloutServer`` per replica (any rollout mode)."""

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self) -> None:
        name = server_actor_name(self.replica_rank, self.name_suffix, self.is_reward_model)
        server = HFRolloutServer.options(name=name, num_cpus=0, max_concurrency=self.max_concurrency).remote(
            config=self.config,
            model_config=self.model_config,
            replica_rank=self.replica_rank,
            is_reward_model=self.is_reward_model,
        )
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"hf-rollout://{name}"
