"""Our errors inside verl's workers reach the user as themselves (``integration.worker_errors``)."""

import asyncio

import pytest
from verl.trainer.ppo.v1 import agent_loop_tq

from verl_variance.integration import compat, variance_kl, worker_errors


async def ours():
    variance_kl.reward_variance({"score": [1.0]}, "reward_variance")


async def verls():
    raise ValueError("a failure that is not verl-variance's")


def settle(*coroutines):
    async def run():
        return await agent_loop_tq._settle_session_tasks([asyncio.ensure_future(c()) for c in coroutines])

    return asyncio.run(run())


def test_the_agent_loop_records_only_our_errors_and_fit_raises_the_first(monkeypatch):
    monkeypatch.delenv(worker_errors.ENV, raising=False)
    folder = worker_errors.prepare()
    assert hasattr(agent_loop_tq._settle_session_tasks, compat.PATCHED_MARK)  # the patch is on verl's function
    errors = settle(ours, verls)
    assert [type(error).__name__ for error in errors] == ["MissingRewardVarianceError", "ValueError"]  # verl's
    assert len(list(folder.glob("*.txt"))) == 1  # ... but only ours is recorded
    symptom = RuntimeError("Sync replay buffer selected terminal groups with no materializable trajectories.")
    with pytest.raises(worker_errors.WorkerError) as raised:
        worker_errors.surface(symptom)
    message = str(raised.value)
    assert message.startswith("verl-variance failed inside a verl worker: MissingRewardVarianceError: ")
    assert "needs a per-sample 'reward_variance'" in message and raised.value.__cause__ is symptom
    with pytest.raises(worker_errors.WorkerError):  # what the replay buffer's poll does, with no symptom yet
        worker_errors.surface()
    worker_errors.surface(raised.value)  # already surfaced (by the poll): fit lets it through as it is


def test_nothing_recorded_keeps_verls_error(monkeypatch, tmp_path):
    monkeypatch.setenv(worker_errors.ENV, str(tmp_path))
    settle(verls)
    assert worker_errors.recorded() == []
    worker_errors.surface(RuntimeError("verl's own failure"))  # returns: the caller re-raises verl's error
    monkeypatch.delenv(worker_errors.ENV)
    settle(ours)  # a worker of a run that made no folder (not main_ppo) writes nothing
    assert worker_errors.recorded() == []


def test_a_ray_task_error_carrying_ours_is_ours():
    class RemoteError(Exception):  # stands in for ray.exceptions.RayTaskError, which carries the remote `cause`
        def __init__(self, cause):
            super().__init__("remote")
            self.cause = cause

    assert worker_errors.is_ours(RemoteError(compat.VerlVarianceError("x")))
    assert not worker_errors.is_ours(RemoteError(ValueError("x")))
    assert worker_errors.describe(RemoteError(compat.VerlVarianceError("x"))) == "VerlVarianceError: x"


def test_a_stock_failure_through_our_agent_loop_wrapper_is_verls(monkeypatch, tmp_path):
    """Every agent-loop session of verl runs through our wrapper of ``AgentLoopWorker._run_agent_loop`` (the hf
    validation marker): an error verl's own code raises there has our file in its traceback, yet is verl's, so it is
    not recorded and verl's own handling of a failed session stays as without the plugin."""
    import traceback
    from types import SimpleNamespace

    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    wrapper = AgentLoopWorker._run_agent_loop
    assert hasattr(wrapper, compat.PATCHED_MARK)
    stock_worker = SimpleNamespace(rollout_config=SimpleNamespace(name="vllm"))  # no opt-in: not the hf rollout

    async def session():  # verl's own body fails: no such agent loop is registered
        trajectory = {"step": 0, "sample_index": 0, "rollout_n": 0, "validate": False}
        await wrapper(stock_worker, {}, trajectory, agent_name="no_such_agent_loop")

    monkeypatch.setenv(worker_errors.ENV, str(tmp_path))
    [error] = settle(session)
    assert worker_errors.OUR_FILES in "".join(traceback.format_exception(error))  # our wrapper is in its traceback
    assert isinstance(error, AssertionError) and "no_such_agent_loop" in str(error)  # raised in verl's body
    assert worker_errors.raising_file(error).endswith("agent_loop.py") and not worker_errors.is_ours(error)
    assert worker_errors.recorded() == []
    worker_errors.surface(RuntimeError("verl's symptom"))  # nothing to raise: verl's own error stands


def test_the_raising_frame_decides_for_remote_errors_too():
    class RemoteError(Exception):  # ray.exceptions.RayTaskError: the remote traceback as text, the cause
        def __init__(self, cause, traceback_str):
            super().__init__("remote")
            self.cause, self.traceback_str = cause, traceback_str

    ours_last = 'Traceback:\n  File "/x/verl/a.py", line 3, in f\n  File "/y/verl_variance/cpu/hf_rollout.py"' \
                ', line 9, in g\nRuntimeError: boom'  # fmt: skip
    verls_last = 'Traceback:\n  File "/y/verl_variance/integration/patches.py", line 3, in f\n  File "/x/verl/b.py",' \
                 ' line 9, in g\nValueError: boom'  # fmt: skip
    assert worker_errors.is_ours(RemoteError(RuntimeError("boom"), ours_last))
    assert not worker_errors.is_ours(RemoteError(ValueError("boom"), verls_last))
    assert worker_errors.is_ours(RemoteError(compat.VerlVarianceError("boom"), verls_last))  # our type, anywhere
