"""In-process stand-ins for verl's Ray actors: the load balancer, the hf rollout server and the reward-loop
workers built inside each agent-loop worker (``ray_kwargs.services_in_agent_loop``,
``rollout.engine_kwargs.hf.server_in_agent_loop``)."""

import asyncio
import pickle
import types

import pytest
import ray.cloudpickle as cloudpickle
from omegaconf import OmegaConf

from verl_variance.cpu import in_process
from verl_variance.cpu.in_process import InProcessActor
from verl_variance.integration.compat import ORIGINALS


class Counter:
    built = 0

    def __init__(self, start: int, step: int = 1) -> None:
        Counter.built += 1
        self.value, self.step = start, step

    def bump(self) -> int:  # a plain method
        self.value += self.step
        return self.value

    async def bump_later(self) -> int:  # a coroutine method
        await asyncio.sleep(0)
        return self.bump()

    def fail(self) -> None:
        raise ValueError("no")


def test_methods_run_in_this_process_and_return_awaitables():
    handle = InProcessActor("counter", Counter, 10, step=5)

    async def main():
        first = await handle.bump.remote()
        second = await handle.bump_later.remote()
        unawaited = handle.bump_later.remote()  # started at once, as a Ray call is
        await asyncio.sleep(0.01)
        assert unawaited.done()
        both = await asyncio.gather(handle.bump.remote(), handle.bump_later.remote())
        with pytest.raises(ValueError, match="no"):  # raised where the result is awaited
            await handle.fail.remote()
        return first, second, both

    built = Counter.built
    assert asyncio.run(main()) == (15, 20, [30, 35])
    assert Counter.built == built + 1  # one instance per process and handle
    assert handle.instance().value == 35


def test_a_pickled_handle_is_the_same_actor_in_this_process_and_a_new_one_elsewhere():
    handle = InProcessActor("counter", Counter, 0)
    copy = cloudpickle.loads(cloudpickle.dumps(handle))  # as Ray ships it into an agent-loop worker
    assert copy.key == handle.key and copy.instance() is handle.instance()
    other = InProcessActor("counter", Counter, 0)  # another handle: another actor
    assert other.key != handle.key and other.instance() is not handle.instance()
    # in a fresh process (an agent-loop worker) the copy builds its own instance on first use
    in_process._INSTANCES.pop(handle.key)
    assert pickle.loads(pickle.dumps(copy)).instance() is not None and handle.key in in_process._INSTANCES
    with pytest.raises(AttributeError):
        handle._private  # noqa: B018 (pickle's and copy's probes are not actor methods)


def test_calling_outside_an_event_loop_says_what_to_turn_off():
    with pytest.raises(RuntimeError, match=r"outside an event loop.*services_in_agent_loop"):
        InProcessActor("counter", Counter, 0).bump.remote()


def _trainer_config(services: bool) -> OmegaConf:
    return OmegaConf.create({"ray_kwargs": {"services_in_agent_loop": services}})


def test_verls_load_balancer_is_built_in_the_agent_loop_when_the_config_says_so(monkeypatch):
    import verl.workers.rollout.router as router
    from verl.workers.rollout.llm_server import LLMServerManager

    init = LLMServerManager._init_global_load_balancer
    assert "verl.workers.rollout.llm_server.LLMServerManager._init_global_load_balancer" in ORIGINALS
    manager = types.SimpleNamespace(
        config=_trainer_config(True),
        rollout_config=types.SimpleNamespace(router_config_path=None, full_determinism=False),
        _load_balancer_cls=None,
        server_addresses=["hf-rollout://a", "hf-rollout://b"],
        server_handles=["handle-a", "handle-b"],
    )
    asyncio.run(init(manager))
    balancer = manager.global_load_balancer
    assert isinstance(balancer, InProcessActor) and balancer.cls is router.GlobalRequestLoadBalancer

    async def route():  # verl's routing runs here: sticky per request id, least-loaded across servers
        first = await balancer.acquire_server.remote(request_id="r1")
        again = await balancer.acquire_server.remote(request_id="r1")
        other = await balancer.acquire_server.remote(request_id="r2")
        balancer.release_server.remote(server_id=first[0], request_id="r1")  # fire and forget, as verl does
        return first, again, other

    first, again, other = asyncio.run(route())
    assert first == again and {first[1], other[1]} == {"handle-a", "handle-b"}
    # off (or a custom router): verl's own actor
    made = []
    monkeypatch.setattr(router, "get_router_handle", lambda **kwargs: made.append(kwargs) or "ray actor")
    for config, custom in ((_trainer_config(False), None), (_trainer_config(True), router.GlobalRequestLoadBalancer)):
        manager.config, manager._load_balancer_cls = config, custom
        asyncio.run(init(manager))
        assert manager.global_load_balancer == "ray actor"
    assert len(made) == 2


def test_the_reward_worker_is_built_in_the_agent_loop_only_when_the_agent_loop_scores(monkeypatch):
    import verl.experimental.reward_loop.reward_loop as reward_loop

    def manager(services: bool, reward_model: bool):
        config = OmegaConf.create({
            "ray_kwargs": {"services_in_agent_loop": services},
            "reward": {"num_workers": 2, "reward_model": {"enable": reward_model, "enable_resource_pool": False}},
        })  # fmt: skip
        made = []
        start = types.SimpleNamespace(options=lambda **kw: types.SimpleNamespace(remote=lambda *a: made.append(kw)))
        fake = reward_loop.RewardLoopManager.__new__(reward_loop.RewardLoopManager)
        fake.config, fake.reward_router_address, fake.reward_loop_workers_class = config, None, start
        fake._init_reward_loop_workers()
        return fake, made

    node = {"NodeID": "ab" * 28, "Alive": True, "Resources": {"CPU": 2}}
    monkeypatch.setattr(reward_loop.ray, "nodes", lambda: [node])
    fake, made = manager(services=True, reward_model=False)
    (worker,) = fake.reward_loop_workers
    assert made == [] and isinstance(worker, InProcessActor) and worker.cls is reward_loop.RewardLoopWorker
    assert fake.reward_loop_worker_handles == [worker]  # the agent loop gets it
    for services, reward_model in ((False, False), (True, True)):  # off, or the trainer scores (ray.get): actors
        fake, made = manager(services, reward_model)
        assert len(made) == 2 and not any(isinstance(w, InProcessActor) for w in fake.reward_loop_workers)
