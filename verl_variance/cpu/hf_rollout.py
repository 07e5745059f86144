"""``actor_rollout_ref.rollout.name=hf``: a rollout engine for verl that samples with transformers.

verl 0.9.1 only wires vLLM, SGLang and TensorRT-LLM, all GPU servers. This backend plugs the same
three pieces verl's server rollouts have, so the rest of verl (agent loop, load balancer, weight
sync with ``checkpoint_engine.backend=naive``) is untouched. Two ways to run (``rollout.engine_kwargs.hf``):

- **colocated** (default; verl's hybrid-engine idea on the CPU): sampling runs inside verl's actor
  worker process, on the actor's own FSDP2 module: the weight sync after each update gathers the
  actor's weights in place and the sampler uses them (``HFServerAdapter.share_actor_module``; no
  second copy of the policy, nothing copied or shipped). Where that cannot apply
  (``can_share_actor_module``: e.g. ``reshard_after_forward=true``, or a ``rollout.dtype`` other
  than the actor's compute dtype) the sampler holds a copy refreshed in place after each update
  (``HFServerAdapter.update_weights``: a memory copy, nothing crosses processes).
  ``HFWorkerServer``, a small Ray actor per replica, is the address verl's load balancer talks to:
  it batches requests and runs them in the worker (``__ray_call__``, as verl's vLLM replica reaches
  its workers). With ``server_in_agent_loop: true`` (sync trainers; the CPU preset's choice) it is no
  process of its own: each agent-loop worker batches its own requests (``in_process.InProcessActor``);
  the async trainers' abort of in-flight requests needs the actor.
- **separate server** (``separate_server: true``, and any standalone rollout): ``HFRolloutServer``
  holds its own copy of the model; after each update the worker ships the weights to it.

Sampling itself is ``hf_sampling``: one seeded random stream per request and fixed-shape chunks. A
request's seed comes from the rollout seed, the step, the replica and the prompt's tokens (the k-th
request of the same prompt gets the k-th seed: the n responses of a prompt differ), not from its
arrival or its place in verl's batch (which varies run to run). So with one replica the samples depend
on the seed, the step and the prompts only; with several, also on verl's routing of requests to
replicas (``rollout.full_determinism=True`` makes that routing stable).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from verl_variance.cpu.hf_rollout_names import VALIDATE_PARAM, HFEngineSettings
from verl_variance.cpu.hf_sampling import (
    SampleRequest,
    SampleResult,
    SamplingSettings,
    request_seed,
    sample_requests,
)
from verl_variance.cpu.in_process import InProcessActor

BATCH_WAIT_SECONDS = 0.02
"""A partial chunk of requests runs once no new request has come for this long (whole chunks run at once):
the requests of one verl batch arrive over some milliseconds, and a partial chunk costs a whole one."""

def server_actor_name(replica_rank: int, name_suffix: str = "") -> str:
    return f"hf_rollout_server_{replica_rank}{name_suffix}"


@dataclass
class RequestItem:
    """A request as the server hands it to the sampler: the seed is derived where the step is known."""

    prompt_ids: list[int]
    settings: SamplingSettings
    validate: bool = False  # a validation request: sampled in chunks of ``HFEngineSettings.rows(True)``


class SeededSampler:
    """A transformers model that samples ``RequestItem``s, each with its own seed.

    The seed of a request is ``request_seed(rollout seed, global step, replica, prompt token ids, k)``, k
    counting earlier requests of the same prompt at the same step on this replica (the n responses of a
    prompt; validation and training at one step).
    """

    def __init__(self, config, model_config, replica_rank: int, model: torch.nn.Module | None = None) -> None:
        """``model``: the actor's own module (colocated, ``share_actor_module``); else a copy is loaded in
        ``rollout.dtype``: the actor's compute dtype keeps the rollout's log-probs equal to the actor's (fp32:
        ~1e-5; bf16 rounds differently in decoding and in the actor's forward)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from verl.utils.torch_dtypes import PrecisionType

        path = model_config.local_path
        if model is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            model = AutoModelForCausalLM.from_pretrained(path, dtype=PrecisionType.to_dtype(config.dtype))
            model = model.to(device).eval()
        self.model = model
        self.replica_rank = replica_rank
        tokenizer = AutoTokenizer.from_pretrained(model_config.local_tokenizer_path or path)
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_token_ids = sorted({t for t in eos + [tokenizer.eos_token_id] if t is not None})
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        self.seed = int(config.seed)
        self.max_prompt_length = int(config.prompt_length)
        self.engine_settings = HFEngineSettings.from_config(config)
        self.global_steps: int | None = None
        self._seen: dict[tuple, int] = {}

    def set_global_steps(self, global_steps: int | None) -> None:
        if global_steps is not None and global_steps != self.global_steps:
            self.global_steps = global_steps
            self._seen.clear()

    def sample(self, items: list[RequestItem]) -> tuple[list[SampleResult], int | None]:
        """Sample ``items`` (training and validation requests each in chunks of their own row count)."""
        requests = []
        for item in items:
            key = tuple(item.prompt_ids)
            occurrence = self._seen.get(key, 0)
            self._seen[key] = occurrence + 1
            seed = request_seed(self.seed, self.global_steps, self.replica_rank, key, occurrence)
            requests.append(SampleRequest(item.prompt_ids, item.settings, seed))
        by_rows: dict[int, list[int]] = {}
        for index, item in enumerate(items):
            by_rows.setdefault(self.engine_settings.rows(item.validate), []).append(index)
        results: list[SampleResult | None] = [None] * len(items)
        was_training = self.model.training
        self.model.eval()  # the actor's own module is in train mode between its updates
        try:
            for rows, indices in by_rows.items():
                sampled = sample_requests(
                    self.model,
                    [requests[i] for i in indices],
                    eos_token_ids=self.eos_token_ids,
                    pad_token_id=self.pad_token_id,
                    max_prompt_length=self.max_prompt_length,
                    batch_rows=rows,
                )
                for index, result in zip(indices, sampled, strict=True):
                    results[index] = result
        finally:
            self.model.train(was_training)
        return results, self.global_steps  # type: ignore[return-value]

    def load_weights(self, weights, global_steps: int | None = None) -> None:
        """Copy named tensors into the model in place (verl's export names; GPT-2 drops ``transformer.``)."""
        params = self.model.state_dict()
        prefix = f"{self.model.base_model_prefix}."
        loaded = set()
        for name, tensor in weights:
            target = name if name in params or prefix + name not in params else prefix + name
            if target not in params:
                raise RuntimeError(f"hf rollout weight sync: the policy has no parameter {name!r}")
            params[target].copy_(tensor)
            loaded.add(target)
        tied = set(getattr(self.model, "_tied_weights_keys", None) or [])
        missing = [k for k in params if k not in loaded and k not in tied and not k.endswith("lm_head.weight")]
        if missing:
            raise RuntimeError(f"hf rollout weight sync: no weights sent for {missing[:5]}")
        self.set_global_steps(global_steps)


class _ServerBase:
    """verl's rollout-server interface: ``generate`` (token ids in, token ids + log-probs out), batching
    concurrent requests; subclasses say where a batch runs (``_run``)."""

    def _init_server(self, config) -> None:
        from verl.utils.config import omega_conf_to_dataclass

        self.config = omega_conf_to_dataclass(config)
        self.engine_settings = HFEngineSettings.from_config(self.config)
        self._pending: list[tuple[RequestItem, asyncio.Future]] = []
        self._batch_task: asyncio.Task | None = None
        self._aborted = False

    async def _run(self, items: list[RequestItem]) -> tuple[list[SampleResult], int | None]:
        raise NotImplementedError

    async def generate(self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str,
                       image_data: list[Any] | None = None, video_data: list[Any] | None = None,
                       **kwargs: Any) -> TokenOutput:  # fmt: skip
        if image_data or video_data:
            raise NotImplementedError("rollout.name=hf serves text-only models; use vllm for multimodal inputs")
        config = self.config
        budget = min(config.response_length, config.prompt_length + config.response_length - len(prompt_ids))
        budget = min(budget, int(sampling_params.get("max_tokens") or budget))
        settings = SamplingSettings.from_params(sampling_params, max(0, budget), ignore_eos=self.config.ignore_eos)
        if self._aborted:
            return TokenOutput(token_ids=[], log_probs=[], stop_reason="aborted")
        future = asyncio.get_running_loop().create_future()
        item = RequestItem(list(prompt_ids), settings, validate=bool(sampling_params.get(VALIDATE_PARAM)))
        self._pending.append((item, future))
        if self._batch_task is None or self._batch_task.done():
            self._batch_task = asyncio.create_task(self._run_batches())
        result, global_steps = await future
        if result is None:
            return TokenOutput(token_ids=[], log_probs=[], stop_reason="aborted")
        return TokenOutput(
            token_ids=result.token_ids,
            log_probs=result.log_probs if sampling_params.get("logprobs") else None,
            stop_reason="completed",  # verl's contract (as its vLLM server): eos, a stop token or max_tokens
            extra_fields={"global_steps": global_steps},
        )

    def _partial_chunk(self) -> bool:
        """Whether the waiting training or validation requests fill their chunks only in part."""
        validating = sum(item.validate for item, _ in self._pending)
        training = len(self._pending) - validating
        return bool(training % self.engine_settings.rows(False) or validating % self.engine_settings.rows(True))

    async def _run_batches(self) -> None:
        while self._pending:
            waiting = -1
            while self._partial_chunk() and len(self._pending) != waiting:  # a partial chunk: wait while more come
                waiting = len(self._pending)
                await asyncio.sleep(BATCH_WAIT_SECONDS)
            if not self._pending:  # aborted while waiting
                break
            batch, self._pending = self._pending, []
            try:
                results, global_steps = await self._run([item for item, _ in batch])
            except Exception as exc:  # hand the error to every waiting request
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result((result, global_steps))

    async def abort_all_requests(self, reject_request: bool = False) -> None:
        """Answer every waiting request as ``aborted``; with ``reject_request`` also new ones until resumed."""
        self._aborted = reject_request
        pending, self._pending = self._pending, []
        for _, future in pending:
            if not future.done():
                future.set_result((None, None))

    async def resume_generation(self) -> None:
        self._aborted = False

    # Memory management is a no-op on the CPU: weights stay resident.
    async def wake_up(self) -> None: ...

    async def sleep(self) -> None: ...

    async def clear_kv_cache(self) -> None: ...

    async def release_kv_cache(self) -> None: ...

    async def resume_kv_cache(self) -> None: ...

    async def start_profile(self, **kwargs) -> None: ...

    async def stop_profile(self) -> None: ...


class HFRolloutServer(_ServerBase):
    """Separate-server mode: one replica's generation server with its own copy of the policy."""

    def __init__(self, config, model_config, replica_rank: int) -> None:
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig

        self._init_server(config)
        torch.set_num_threads(max(1, int(os.environ.get("VERL_VARIANCE_ROLLOUT_THREADS", "1"))))
        model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.sampler = SeededSampler(self.config, model_config, replica_rank)
        self._lock = asyncio.Lock()

    async def _run(self, items: list[RequestItem]) -> tuple[list[SampleResult], int | None]:
        async with self._lock:
            return await asyncio.to_thread(self.sampler.sample, items)

    async def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None) -> None:
        async with self._lock:
            self.sampler.load_weights(state_dict.items(), global_steps)

    async def set_global_steps(self, global_steps: int) -> None:
        self.sampler.set_global_steps(global_steps)

    async def get_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.sampler.model.state_dict().items()}


_WORKER_SAMPLERS: dict[int, SeededSampler] = {}
"""Colocated mode, inside a worker process: the sampler of each replica this process serves."""


def _sample_in_worker(worker: Any, replica_rank: int, items: list[RequestItem]) -> tuple[list[SampleResult], Any]:
    """Runs in verl's actor worker process (through ``__ray_call__``): sample on the worker's policy."""
    if replica_rank not in _WORKER_SAMPLERS:
        raise RuntimeError(
            f"hf rollout replica {replica_rank}: asked to sample before verl synced the actor's weights to it "
            "(checkpoint_manager.update_weights runs before the first rollout in both verl trainers)"
        )
    return _WORKER_SAMPLERS[replica_rank].sample(items)


def actor_param_dtype(fsdp_config) -> torch.dtype:
    """The dtype the actor computes in: FSDP mixed precision's ``param_dtype`` (verl's default: bf16)."""
    from verl.utils.torch_dtypes import PrecisionType

    mixed_precision = fsdp_config.get("mixed_precision") or {}
    return PrecisionType.to_dtype(mixed_precision.get("param_dtype", "bf16"))


def can_share_actor_module(worker: Any, mode: str) -> bool:
    """Whether the colocated sampler of verl's ``ActorRolloutRefWorker`` ``worker`` can sample on the actor's own
    FSDP2 module instead of a copy: an in-process weight sync (``naive``), an FSDP2 actor that keeps its gathered
    weights after a forward (``reshard_after_forward=false``: else every decoding step would gather them again,
    a collective each rank would run a different number of times), no parameter offload, no LoRA adapter, and
    the rollout's dtype the actor's compute dtype (the copy is made in ``rollout.dtype``)."""
    from torch.distributed.fsdp import FSDPModule
    from verl.utils.torch_dtypes import PrecisionType

    rollout, config = getattr(worker, "rollout", None), worker.config
    if not isinstance(rollout, HFServerAdapter) or rollout.engine.separate_server:
        return False
    if (mode if mode != "auto" else config.rollout.checkpoint_engine.backend) != "naive":
        return False
    engine = worker.actor.engine
    module = getattr(engine, "module", None)
    fsdp_config = config.actor.fsdp_config
    return (
        isinstance(module, FSDPModule)
        and not fsdp_config.get("reshard_after_forward", True)
        and not engine.is_param_offload_enabled
        and getattr(module, "peft_config", None) is None
        and PrecisionType.to_dtype(config.rollout.dtype) == actor_param_dtype(fsdp_config)
    )


class HFWorkerServer(_ServerBase):
    """Colocated mode: the replica's address; batches run in the replica's actor worker process."""

    def __init__(self, config, workers: list, replica_rank: int) -> None:
        self._init_server(config)
        self.workers = workers
        self.replica_rank = replica_rank

    async def _run(self, items: list[RequestItem]) -> tuple[list[SampleResult], int | None]:
        return await self.workers[0].__ray_call__.remote(_sample_in_worker, self.replica_rank, items)

    async def set_global_steps(self, global_steps: int) -> None: ...  # the worker's sampler knows the step


class HFServerAdapter(BaseRollout):
    """The rollout half of verl's hybrid actor worker: receives the weights after each update.

    Colocated: this process's sampler (``_WORKER_SAMPLERS``) samples on the actor's module
    (``share_actor_module``), or on a copy the weights are copied into. Separate server: ships them to the
    replica's ``HFRolloutServer``.
    """

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1, **kwargs) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", 0))
        rollout_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        if rollout_world_size != 1:
            raise ValueError(
                "rollout.name=hf runs one process per replica: set actor_rollout_ref.rollout.tensor_model_parallel_size"
                f"=1 (and data/pipeline parallel size 1); got a rollout world size of {rollout_world_size}"
            )
        self.replica_rank = rank if replica_rank == -1 else replica_rank
        self.engine = HFEngineSettings.from_config(self.config)
        self._server = None

    def _worker_sampler(self, model: torch.nn.Module | None = None) -> SeededSampler:
        """This replica's sampler in this worker process: on ``model`` (the actor's module), else on a copy."""
        sampler = _WORKER_SAMPLERS.get(self.replica_rank)
        if sampler is None or (model is not None and sampler.model is not model):
            sampler = SeededSampler(self.config, self.model_config, self.replica_rank, model=model)
            _WORKER_SAMPLERS[self.replica_rank] = sampler
        return sampler

    def share_actor_module(self, module: torch.nn.Module, global_steps: int | None = None) -> None:
        """Colocated, instead of a weight copy: gather the actor's FSDP2 weights now (every rank calls this, as it
        calls ``update_weights``) and sample on the actor's own module. The gathered weights stay until the
        actor's next backward (``reshard_after_forward=false``), so the actor's log-prob pass reuses them and no
        second copy of the policy exists (``can_share_actor_module`` says when this applies)."""
        from torch.distributed.fsdp import FSDPModule

        for submodule in module.modules():
            if isinstance(submodule, FSDPModule):
                submodule.unshard()
        self._worker_sampler(module).set_global_steps(global_steps)

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
        global_steps = kwargs.get("global_steps")
        if not self.engine.separate_server:
            self._worker_sampler().load_weights(weights, global_steps)
            return
        state_dict = {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights}
        await self._server_handle().update_weights.remote(state_dict, global_steps)


class HFReplica(RolloutReplica):
    """Launches one rollout server per replica: ``HFWorkerServer`` in front of the replica's actor worker
    (hybrid mode, default; with ``server_in_agent_loop`` inside each agent-loop worker, not a Ray actor of its
    own), else an ``HFRolloutServer`` with its own model."""

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self) -> None:
        if self.is_reward_model:
            return await self._launch_classifier_server()
        name = server_actor_name(self.replica_rank, self.name_suffix)
        settings = HFEngineSettings.from_config(self.config)
        colocated = bool(self.workers) and not settings.separate_server
        if colocated:
            cls, args = HFWorkerServer, (self.config, self.workers, self.replica_rank)
        else:
            cls, args = HFRolloutServer, (self.config, self.model_config, self.replica_rank)
        if colocated and settings.server_in_agent_loop:  # the agent-loop worker batches its own requests
            server = InProcessActor(name, cls, *args)
        else:
            options = {"name": name, "num_cpus": 0, "max_concurrency": self.max_concurrency}
            server = ray.remote(cls).options(**options).remote(*args)
        # RolloutReplica's contract for subclasses: launch_servers sets these two (verl's vLLM replica does too)
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"hf-rollout://{name}"

    async def _launch_classifier_server(self) -> None:
        """A reward model (``reward.reward_model.rollout.name=hf``): vLLM's ``/classify`` served from the replica's
        first rollout worker (``hf_reward_server``), the address verl's reward router forwards to. Its memory
        management is a no-op, so the replica keeps no server handles for ``wake_up``/``sleep``."""
        from verl_variance.cpu.hf_reward_server import start_in_worker

        if not self.workers:
            raise RuntimeError("rollout.name=hf serves a reward model from its rollout workers; verl started none")
        settings = HFEngineSettings.from_config(self.config)
        self._server_address = await self.workers[0].__ray_call__.remote(
            start_in_worker, self.replica_rank, self.model_config.local_path, self.config.dtype,
            settings.batch_rows, self.config.max_model_len,
        )  # fmt: skip
        self._server_handle = self.workers[0]
