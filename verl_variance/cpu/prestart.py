"""verl's start-up waits, overlapped (``ray_kwargs.task_runner_in_driver``: the driver runs verl's TaskRunner).

The V1 trainer starts its processes one after another and waits for each to import torch, transformers and
verl (~2-5 s apiece on a 2-core CPU machine) with nothing else to do. Two of those waits can overlap others:

- **agent-loop workers**: verl creates them last, once the training workers and rollout servers are up.
  Started when the TaskRunner starts, a worker does its imports while the driver sets up the rest; verl's
  ``AgentLoopManager`` then takes it and runs the worker's own ``__init__`` with the arguments it would have
  built it with (``deferred_init``): the same class, one process per worker, the same arguments.
- **TransferQueue**: ``tq.init`` starts the controller, then the storage unit, and waits for both (~5 s)
  before the trainer is even built, though nothing uses them until training starts. It runs in a thread
  instead (``background_tq_init``), and the driver's first TransferQueue call waits for it
  (``wait_for_tq_init``); the training workers' own ``tq.init`` finds the controller by name, as before.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

import ray

_STARTED: dict[type, list] = {}
"""This driver's started, not yet taken agent-loop workers, by their verl class."""


def deferred(cls: type) -> type:
    """``cls`` with its ``__init__`` moved to ``deferred_init`` (same arguments): the actor's process starts and
    imports ``cls``'s module now, and is built when the arguments exist."""

    class Deferred(cls):
        def __init__(self) -> None:  # noqa: D107 (cls.__init__ runs in deferred_init)
            pass

        def deferred_init(self, *args: Any, **kwargs: Any) -> None:
            cls.__init__(self, *args, **kwargs)

    Deferred.__name__ = Deferred.__qualname__ = cls.__name__  # ray::<verl's class name> in process listings
    return Deferred


def agent_loop_worker_class(config, v1: bool) -> type | None:
    """The plain class verl's stock agent-loop manager makes its workers of; None for a custom manager."""
    if (config.actor_rollout_ref.rollout.get("agent") or {}).get("agent_loop_manager_class"):
        return None
    if v1:
        from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ

        return AgentLoopWorkerTQ.__ray_actor_class__
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    return AgentLoopWorker


def start_agent_loop_workers(config, v1: bool) -> None:
    """Start ``rollout.agent.num_workers`` agent-loop workers of the class the run's manager will ask for."""
    _STARTED.clear()  # a previous run's handles died with its Ray session
    cls = agent_loop_worker_class(config, v1)
    if cls is None:
        return
    actor = ray.remote(deferred(cls))
    count = int(config.actor_rollout_ref.rollout.agent.num_workers)
    names = [f"agent_loop_worker_{i}_{uuid.uuid4().hex[:8]}" for i in range(count)]  # verl's names
    _STARTED[cls] = [actor.options(name=name).remote() for name in names]


def take(cls: type, count: int) -> list | None:
    """The ``count`` started workers of ``cls`` (to be built with ``deferred_init``), or None if there are not."""
    workers = _STARTED.get(cls, [])
    if len(workers) != count:
        return None
    del _STARTED[cls]
    return workers


@dataclass
class _TQInit:
    requested: bool = False  # set by the in-driver TaskRunner: its tq.init runs in a thread
    thread: threading.Thread | None = None
    error: BaseException | None = None


TQ_INIT = _TQInit()


def background_tq_init(init, conf) -> None:
    """Run TransferQueue's ``init(conf)`` in a thread; returns once its controller exists (the training workers'
    own ``tq.init`` finds it by name)."""
    from transfer_queue import interface

    def run() -> None:
        try:
            init(conf)
        except BaseException as exc:  # raised again by the driver's next TransferQueue call
            TQ_INIT.error = exc

    TQ_INIT.requested, TQ_INIT.error = False, None
    TQ_INIT.thread = threading.Thread(target=run, name="tq-init", daemon=True)
    TQ_INIT.thread.start()
    while interface._TQ_CONTROLLER is None and TQ_INIT.thread.is_alive():
        TQ_INIT.thread.join(0.01)


def wait_for_tq_init(reraise: bool = True) -> None:
    """Block until the background ``tq.init`` is done (a no-op without one, or in its own thread); its error, if
    any, is raised here."""
    thread = TQ_INIT.thread
    if thread is None or thread is threading.current_thread():
        return
    thread.join()
    TQ_INIT.thread = None
    error, TQ_INIT.error = TQ_INIT.error, None
    if error is not None and reraise:
        raise error
