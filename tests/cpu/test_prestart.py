"""Start-up waits overlapped: agent-loop workers started early, TransferQueue's init in a thread, and no
scikit-learn import by transformers on the CPU platform."""

import asyncio
import json
import threading
import types

import pytest

from tests.conftest import run_python
from verl_variance.cpu import patches, prestart
from verl_variance.cpu.in_process import InProcessActor
from verl_variance.integration.compat import ORIGINALS


class Worker:
    def __init__(self, config, llm_client, teacher_client=None, reward_handles=None) -> None:
        self.args = (config, llm_client, teacher_client, reward_handles)

    async def generate_sequences(self, batch):
        return batch


def test_a_deferred_class_is_built_by_deferred_init_with_the_original_arguments():
    cls = prestart.deferred(Worker)
    worker = cls()  # what the early actor runs: nothing but its module's imports
    assert not hasattr(worker, "args") and isinstance(worker, Worker) and cls.__name__ == "Worker"
    worker.deferred_init("config", "client", reward_handles=["rm"])
    assert worker.args == ("config", "client", None, ["rm"])


def test_verls_agent_loop_manager_takes_the_started_workers(monkeypatch):
    from verl.experimental.agent_loop.agent_loop import AgentLoopManager

    def manager(num_workers: int):
        return types.SimpleNamespace(
            agent_loop_workers_class=types.SimpleNamespace(__ray_actor_class__=Worker),
            rollout_config=types.SimpleNamespace(agent=types.SimpleNamespace(num_workers=num_workers)),
            config="config", llm_client="client", teacher_client=None, reward_loop_worker_handles=["rm"],
        )  # fmt: skip

    started = [InProcessActor(f"worker{i}", prestart.deferred(Worker)) for i in range(2)]  # handle-like
    monkeypatch.setattr(prestart, "_STARTED", {Worker: list(started)})
    fake = manager(2)
    asyncio.run(AgentLoopManager._init_agent_loop_workers(fake))
    assert fake.agent_loop_workers == started and prestart._STARTED == {}
    assert [worker.instance().args for worker in started] == [("config", "client", None, ["rm"])] * 2
    # none started (or not as many as the run asks for): verl starts its own
    monkeypatch.setattr(prestart, "_STARTED", {Worker: started[:1]})
    assert prestart.take(Worker, 2) is None and prestart._STARTED == {Worker: started[:1]}
    original = ORIGINALS["verl.experimental.agent_loop.agent_loop.AgentLoopManager._init_agent_loop_workers"]
    assert AgentLoopManager._init_agent_loop_workers is not original


@pytest.fixture
def tq_interface(monkeypatch):
    from transfer_queue import interface

    monkeypatch.setattr(interface, "_TQ_CONTROLLER", None)
    monkeypatch.setattr(interface, "_TQ_CLIENT", None)
    yield interface
    prestart.wait_for_tq_init(reraise=False)


def test_the_drivers_first_transfer_queue_call_waits_for_the_background_init(tq_interface):
    release = threading.Event()

    def init(conf):  # TransferQueue's init: the controller at once, the rest (storage, client) takes a while
        tq_interface._TQ_CONTROLLER = "controller"
        release.wait(10)
        tq_interface._TQ_CLIENT = f"client for {conf}"

    prestart.background_tq_init(init, "conf")
    assert tq_interface._TQ_CONTROLLER == "controller" and tq_interface._TQ_CLIENT is None  # returned early
    got = []
    caller = threading.Thread(target=lambda: got.append(tq_interface._maybe_create_tq_client()))
    caller.start()
    caller.join(0.3)
    assert caller.is_alive() and got == []  # waiting for the init
    release.set()
    caller.join(10)
    assert got == ["client for conf"] and prestart.TQ_INIT.thread is None


def test_a_failed_background_init_is_raised_by_the_next_transfer_queue_call(tq_interface):
    def init(conf):
        raise RuntimeError("no storage")

    prestart.background_tq_init(init, None)
    with pytest.raises(RuntimeError, match="no storage"):
        tq_interface._maybe_create_tq_client()
    prestart.background_tq_init(init, None)
    prestart.wait_for_tq_init(reraise=False)  # close(): a failed run reports its own error
    assert prestart.TQ_INIT.error is None


def test_transformers_skips_scikit_learn_on_the_cpu_platform_only(monkeypatch):
    import transformers.utils
    from transformers.utils import import_utils

    original = ORIGINALS["transformers.utils.import_utils.is_sklearn_available"]
    for on_cpu in (True, False):
        monkeypatch.setattr(patches, "_on_cpu_platform", lambda on_cpu=on_cpu: on_cpu)
        expected = False if on_cpu else original()
        assert transformers.utils.is_sklearn_available() is expected
        assert import_utils.is_sklearn_available() is expected
    code = (
        "import json, sys; import verl.trainer.main_ppo, transformers.generation.candidate_generator; "
        "print(json.dumps('sklearn' in sys.modules))"
    )
    result = run_python(code, env={"VERL_PLATFORM": "cpu"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) is False
