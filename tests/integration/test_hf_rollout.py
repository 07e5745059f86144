"""The hf rollout server's batching: whole chunks at once, a partial chunk once requests stop coming."""

import asyncio
from types import SimpleNamespace

from verl_variance.integration import hf_rollout
from verl_variance.integration.hf_rollout import _ServerBase
from verl_variance.integration.hf_sampling import SampleResult


class RecordingServer(_ServerBase):
    """The server without a model: records the size of every batch it runs."""

    def __init__(self, batch_rows: int) -> None:
        config = SimpleNamespace(response_length=4, prompt_length=8, ignore_eos=False,
                                 engine_kwargs={"hf": {"batch_rows": batch_rows}})  # fmt: skip
        self._init_server(config)
        self.batches: list[int] = []
        self.ran = asyncio.Event()  # set once a batch has run

    async def _run(self, items):
        self.batches.append(len(items))
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

    from verl_variance.integration.hf_rollout import SeededSampler

    model_config = SimpleNamespace(local_path=str(tiny_models["llama"]), local_tokenizer_path=None)
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16)):
        config = SimpleNamespace(dtype=name, seed=0, prompt_length=8, engine_kwargs={})
        sampler = SeededSampler(config, model_config, replica_rank=0)
        assert {p.dtype for p in sampler.model.parameters()} == {dtype}
