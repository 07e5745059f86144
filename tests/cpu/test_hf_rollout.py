"""The hf rollout server's batching: whole chunks at once, a partial chunk once requests stop coming."""

import asyncio
from types import SimpleNamespace

import pytest

from verl_variance.cpu import hf_rollout
from verl_variance.cpu.hf_rollout import _ServerBase
from verl_variance.cpu.hf_sampling import SampleResult
from verl_variance.cpu.in_process import InProcessActor


class RecordingServer(_ServerBase):
    """The server without a model: records the size of every batch it runs (and how many requests validate)."""

    def __init__(self, batch_rows: int, val_batch_rows: int | None = None) -> None:
        rows = {"batch_rows": batch_rows, "val_batch_rows": val_batch_rows}
        config = SimpleNamespace(response_length=4, prompt_length=8, ignore_eos=False, engine_kwargs={"hf": rows})
        self._init_server(config)
        self.batches: list[int] = []
        self.validating: list[int] = []
        self.ran = asyncio.Event()  # set once a batch has run

    async def _run(self, items):
        self.batches.append(len(items))
        self.validating.append(sum(item.validate for item in items))
        self.ran.set()
        await asyncio.sleep(0)
        return [SampleResult([7], [0.0], "length") for _ in items], 3


async def _requests(server: RecordingServer, groups: list[int]) -> list:
    """``groups[i]`` requests at once, the event loop run between the groups."""
    tasks = []
    for count in groups:
        tasks += [asyncio.create_task(server.generate([1, 2], {}, f"r{len(tasks) + i}")) for i in range(count)]
        await asyncio.sleep(0)
    return await asyncio.gather(*tasks)


def test_requests_that_trickle_in_run_as_one_chunk(monkeypatch):
    monkeypatch.setattr(hf_rollout, "BATCH_WAIT_SECONDS", 2.0)  # groups come within microseconds of each other
    server = RecordingServer(batch_rows=8)
    outputs = asyncio.run(_requests(server, [3, 2, 3]))
    assert server.batches == [8]  # not 3 + 5: a partial chunk costs a whole one
    assert [o.token_ids for o in outputs] == [[7]] * 8 and {o.stop_reason for o in outputs} == {"completed"}


def test_a_partial_chunk_runs_once_requests_stop_coming(monkeypatch):
    monkeypatch.setattr(hf_rollout, "BATCH_WAIT_SECONDS", 0.01)

    async def scenario(server):
        first = [asyncio.create_task(server.generate([1, 2], {}, f"r{i}")) for i in range(3)]
        await server.ran.wait()  # no request came for the wait: the 3 ran alone, a partial chunk
        second = [asyncio.create_task(server.generate([1, 2], {}, f"s{i}")) for i in range(2)]
        return await asyncio.gather(*first, *second)

    server = RecordingServer(batch_rows=8)
    assert len(asyncio.run(scenario(server))) == 5
    assert server.batches == [3, 2]


def test_validation_requests_wait_for_a_chunk_of_their_own_size(monkeypatch):
    """Marked requests (the agent loop's validation: VALIDATE_PARAM) fill chunks of val_batch_rows, the rest of
    batch_rows: 2 training + 2 validation requests are 4 rows (two whole chunks of 2), but the validation chunk of 4
    is half full, so the server waits for the next two."""
    monkeypatch.setattr(hf_rollout, "BATCH_WAIT_SECONDS", 0.2)

    async def scenario(server):
        validate = {hf_rollout.VALIDATE_PARAM: True}
        tasks = [asyncio.create_task(server.generate([1], {}, f"t{i}")) for i in range(2)]
        tasks += [asyncio.create_task(server.generate([1], validate, f"v{i}")) for i in range(2)]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(server.generate([1], validate, f"v{i}")) for i in range(2, 4)]
        return await asyncio.gather(*tasks)

    server = RecordingServer(batch_rows=2, val_batch_rows=4)
    assert len(asyncio.run(scenario(server))) == 6
    assert server.batches == [6] and server.validating == [4]  # [4, 2] if validation rows were training's
    plain = RecordingServer(batch_rows=2)
    assert len(asyncio.run(scenario(plain))) == 6 and plain.batches == [4, 2]  # no val_batch_rows: chunks of 2


def test_the_sampler_samples_validation_requests_in_their_own_chunks(tiny_models, monkeypatch):
    """Each kind of request runs in chunks of its own row count; every result is what sampling the request in
    such chunks gives on its own (the fixed-shape guarantee) with the seed of the rollout config
    (``actor_rollout_ref.rollout.seed``), and the results keep the requests' order."""
    from verl_variance.cpu import hf_sampling
    from verl_variance.cpu.hf_rollout import RequestItem, SeededSampler

    model_config = SimpleNamespace(local_path=str(tiny_models["llama"]), local_tokenizer_path=None)
    config = SimpleNamespace(dtype="float32", seed=7, prompt_length=8,
                             engine_kwargs={"hf": {"batch_rows": 2, "val_batch_rows": 4}})  # fmt: skip
    settings = hf_sampling.SamplingSettings(max_tokens=5)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [15, 16]]
    kinds = [True, False, True, False, True]
    items = [RequestItem(p, settings, validate=v) for p, v in zip(prompts, kinds, strict=True)]
    calls = []
    sample_requests = hf_sampling.sample_requests

    def recording(model, requests, **kwargs):
        calls.append((len(requests), kwargs["batch_rows"]))
        return sample_requests(model, requests, **kwargs)

    monkeypatch.setattr(hf_rollout, "sample_requests", recording)
    sampler = SeededSampler(config, model_config, replica_rank=0)
    sampler.set_global_steps(2)
    results, steps = sampler.sample(items)
    assert steps == 2 and sorted(calls) == [(2, 2), (3, 4)]
    for item, result in zip(items, results, strict=True):
        seed = hf_rollout.request_seed(7, 2, 0, tuple(item.prompt_ids), 0)  # the rollout config's seed
        (alone,) = sample_requests(sampler.model, [hf_sampling.SampleRequest(item.prompt_ids, settings, seed)],
                                   eos_token_ids=sampler.eos_token_ids, pad_token_id=sampler.pad_token_id,
                                   max_prompt_length=8, batch_rows=4 if item.validate else 2)  # fmt: skip
        assert (result.token_ids, result.log_probs) == (alone.token_ids, alone.log_probs)


def test_aborted_while_waiting_answers_aborted_and_runs_nothing():
    async def scenario(server):
        tasks = [asyncio.create_task(server.generate([1], {}, f"r{i}")) for i in range(3)]
        await asyncio.sleep(0)
        await server.abort_all_requests()
        return await asyncio.gather(*tasks)

    server = RecordingServer(batch_rows=8)
    outputs = asyncio.run(scenario(server))
    assert [o.stop_reason for o in outputs] == ["aborted"] * 3 and server.batches == []


def test_the_sampler_holds_the_policy_in_the_rollout_dtype(tiny_models):
    """``rollout.dtype`` is the dtype of the sampler's copy (the CPU preset: float32, the actor's; bf16 with bf16)."""
    import torch

    from verl_variance.cpu.hf_rollout import SeededSampler

    model_config = SimpleNamespace(local_path=str(tiny_models["llama"]), local_tokenizer_path=None)
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16)):
        config = SimpleNamespace(dtype=name, seed=0, prompt_length=8, engine_kwargs={})
        sampler = SeededSampler(config, model_config, replica_rank=0)
        assert {p.dtype for p in sampler.model.parameters()} == {dtype}


SHARED_MODULE_PROBE = """
import json, os
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["TEST_PORT"], RANK="0", WORLD_SIZE="1")
from types import SimpleNamespace
import torch, torch.distributed as dist
from omegaconf import OmegaConf
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM
from verl_variance.cpu import hf_rollout
from verl_variance.cpu.hf_sampling import SamplingSettings

dist.init_process_group("gloo")
path = os.environ["MODEL"]
copy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
actor = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
for layer in actor.model.layers:
    fully_shard(layer, reshard_after_forward=False)
fully_shard(actor, reshard_after_forward=False)
actor.train()
rollout_config = SimpleNamespace(dtype="float32", seed=0, prompt_length=8, engine_kwargs={})
model_config = SimpleNamespace(local_path=path, local_tokenizer_path=None)
adapter = object.__new__(hf_rollout.HFServerAdapter)
adapter.config, adapter.model_config, adapter.replica_rank = rollout_config, model_config, 0
adapter.engine = hf_rollout.HFEngineSettings()

def can_share(**changes):
    config = {"rollout": {"checkpoint_engine": {"backend": "naive"}, "dtype": "float32"},
              "actor": {"fsdp_config": {"reshard_after_forward": False, "mixed_precision": {"param_dtype": "fp32"}}}}
    module, offload = changes.pop("module", actor), changes.pop("offload", False)
    engine = SimpleNamespace(module=module, is_param_offload_enabled=offload)
    for key, value in changes.items():
        OmegaConf.update(config := OmegaConf.create(config), key, value)
    worker = SimpleNamespace(rollout=adapter, config=OmegaConf.create(config), actor=SimpleNamespace(engine=engine))
    return hf_rollout.can_share_actor_module(worker, "auto")

sharing = {"preset": can_share(), "plain module": can_share(module=copy), "offload": can_share(offload=True),
           "reshard": can_share(**{"actor.fsdp_config.reshard_after_forward": True}),
           "dtype": can_share(**{"rollout.dtype": "bfloat16"}),
           "bf16 both": can_share(**{"rollout.dtype": "bfloat16",
                                     "actor.fsdp_config.mixed_precision.param_dtype": "bf16"}),
           "nccl backend": can_share(**{"rollout.checkpoint_engine.backend": "nccl"})}
adapter.share_actor_module(actor, global_steps=3)
sampler = hf_rollout._WORKER_SAMPLERS[0]
unsharded = not any(isinstance(p, DTensor) for p in actor.parameters())
items = [hf_rollout.RequestItem([5, 6, 7, 8], SamplingSettings(max_tokens=6)) for _ in range(3)]
shared, steps = sampler.sample(items)
reference = hf_rollout.SeededSampler(rollout_config, model_config, 0, model=copy)
reference.set_global_steps(3)
copied, _ = reference.sample(items)
print(json.dumps({
    "sharing": sharing, "same_module": sampler.model is actor, "unsharded_after_sync": unsharded,
    "still_unsharded": not any(isinstance(p, DTensor) for p in actor.parameters()), "train_mode_kept": actor.training,
    "steps": steps, "tokens": [r.token_ids for r in shared], "copied_tokens": [r.token_ids for r in copied],
    "log_prob_diff": max(abs(a - b) for r, c in zip(shared, copied) for a, b in zip(r.log_probs, c.log_probs)),
}))
"""


def test_the_colocated_sampler_samples_on_the_actors_own_fsdp2_module(tiny_models):
    """The weight sync gathers the actor's FSDP2 weights in place and the sampler uses that very module (no copy):
    its samples are those of a plain copy of the same weights, the weights stay gathered for the actor's
    log-prob pass, the module's train mode is kept; sharing applies only where it can (``can_share_actor_module``)."""
    import json

    from tests.conftest import free_port, run_python

    result = run_python(SHARED_MODULE_PROBE, env={"MODEL": str(tiny_models["llama"]), "TEST_PORT": str(free_port())})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["sharing"] == {"preset": True, "plain module": False, "offload": False, "reshard": False,
                                 "dtype": False, "bf16 both": True, "nccl backend": False}  # fmt: skip
    assert report["same_module"] and report["unsharded_after_sync"] and report["still_unsharded"]
    assert report["train_mode_kept"] and report["steps"] == 3
    assert report["tokens"] == report["copied_tokens"] and len(report["tokens"]) == 3
    assert report["log_prob_diff"] < 1e-5


class _ActorWorker:
    """verl's actor worker as the colocated server reaches it: ``__ray_call__.remote(fn, replica, items)``."""

    def __init__(self) -> None:
        self.calls: list = []

        async def run(fn, replica_rank, items):
            self.calls.append((fn, replica_rank, [item.prompt_ids for item in items]))
            return [SampleResult([9, len(item.prompt_ids)], [0.0, 0.0], "length") for item in items], 4

        self.__ray_call__ = SimpleNamespace(remote=run)


def test_the_colocated_server_runs_in_the_agent_loop_when_the_config_says_so():
    worker = _ActorWorker()
    replica = hf_rollout.HFReplica.__new__(hf_rollout.HFReplica)  # as verl's LLMServerManager builds it
    replica.config = SimpleNamespace(response_length=4, prompt_length=8, ignore_eos=False,
                                     engine_kwargs={"hf": {"batch_rows": 2, "server_in_agent_loop": True}})  # fmt: skip
    replica.replica_rank, replica.name_suffix, replica.is_reward_model, replica.workers = 3, "", False, [worker]
    asyncio.run(replica.launch_servers())
    server = replica.server_handle
    assert isinstance(server, InProcessActor) and server.cls is hf_rollout.HFWorkerServer  # no Ray actor
    assert replica.server_address == "hf-rollout://hf_rollout_server_3"

    async def generate():  # what verl's LLMServerClient does from the agent-loop worker
        calls = [server.generate.remote(prompt_ids=[1] * n, sampling_params={}, request_id=f"r{n}") for n in (1, 2)]
        return await asyncio.gather(*calls)

    outputs = asyncio.run(generate())
    assert [o.token_ids for o in outputs] == [[9, 1], [9, 2]]
    assert outputs[0].extra_fields["global_steps"] == 4
    assert worker.calls == [(hf_rollout._sample_in_worker, 3, [[1], [1, 1]])]  # one chunk, in the worker


def test_hf_engine_settings_name_every_key():
    config = SimpleNamespace(engine_kwargs={"hf": {"server_in_agent_loop": True}})
    settings = hf_rollout.HFEngineSettings.from_config(config)
    assert settings == hf_rollout.HFEngineSettings(separate_server=False, batch_rows=8, val_batch_rows=None,
                                                   server_in_agent_loop=True)  # fmt: skip
    assert (settings.rows(False), settings.rows(True)) == (8, 8)
    rows = hf_rollout.HFEngineSettings.from_config(SimpleNamespace(engine_kwargs={"hf": {"val_batch_rows": 48}}))
    assert (rows.rows(False), rows.rows(True)) == (8, 48)
    with pytest.raises(ValueError, match=r"unknown keys \['rows'\]; valid: separate_server .* val_batch_rows"):
        hf_rollout.HFEngineSettings.from_config(SimpleNamespace(engine_kwargs={"hf": {"rows": 2}}))
    with pytest.raises(ValueError, match=r"hf.val_batch_rows=0: expected an integer >= 1"):
        hf_rollout.HFEngineSettings.from_config(SimpleNamespace(engine_kwargs={"hf": {"val_batch_rows": 0}}))


class ProbeAgentLoop:
    """An agent loop that answers with the sampling parameters verl's agent-loop worker gave it."""

    def __init__(self, **kwargs) -> None: ...

    async def run(self, sampling_params, **kwargs):
        return dict(sampling_params)


def test_verls_agent_loop_marks_validation_requests_for_the_hf_rollout_only(monkeypatch):
    """verl's own ``AgentLoopWorker._run_agent_loop`` (both trainers': V1's worker subclasses it) hands the agent
    loop sampling parameters with VALIDATE_PARAM for a validation trajectory when the rollout is hf, and leaves
    training requests and other rollouts (vllm would reject the key) as they were."""
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop import agent_loop
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ

    assert AgentLoopWorkerTQ.__ray_actor_class__._run_agent_loop is agent_loop.AgentLoopWorker._run_agent_loop
    monkeypatch.setitem(agent_loop._agent_loop_registry, "probe", {"_target_": f"{__name__}.ProbeAgentLoop"})

    async def postprocess(output, validate, **kwargs):
        return output

    def params(rollout: str, validate: bool) -> dict:
        worker = SimpleNamespace(rollout_config=SimpleNamespace(name=rollout), config=OmegaConf.create({"data": {}}),
                                 llm_client=None, tokenizer=None, processor=None, hf_model_type=None,
                                 dataset_cls=None, tools=[], _agent_loop_postprocess=postprocess)  # fmt: skip
        trajectory = {"step": 1, "sample_index": 0, "rollout_n": 0, "validate": validate}
        run = agent_loop.AgentLoopWorker._run_agent_loop(worker, {"temperature": 1.0}, trajectory, agent_name="probe")
        return asyncio.run(run)

    assert params("hf", True) == {"temperature": 1.0, hf_rollout.VALIDATE_PARAM: True}
    assert params("hf", False) == params("vllm", True) == {"temperature": 1.0}
