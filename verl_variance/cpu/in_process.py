"""Ray actor handles that run their class in the process that calls them (no process of their own).

verl gives its agent-loop workers three kinds of Ray actor handles: the load balancer, the rollout servers
and the reward-loop workers. On a GPU cluster each is a process next to the GPUs; on a CPU machine each is
one more process importing torch, transformers and verl (~4 s of CPU and ~0.3-0.6 GB PSS apiece) to do a few
milliseconds of bookkeeping per request. An ``InProcessActor`` stands where such a handle goes: pickled into
an agent-loop worker, it builds its class there on the first call, once per process, and its methods run on
that worker's event loop. Where the handle is called from several processes each gets its own instance, so
this fits services whose state is per caller: routing among one replica, batching one worker's requests,
scoring with a reward model (``ray_kwargs.services_in_agent_loop``, ``rollout.engine_kwargs.hf.server_in_agent_loop``).
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from typing import Any

_INSTANCES: dict[str, Any] = {}
"""This process's instance of each ``InProcessActor`` (by its key), built on its first call here."""


class InProcessActor:
    """A stand-in for a Ray actor handle: ``handle.method.remote(*args, **kwargs)`` runs ``cls(*args, **kwargs)``'s
    method in the calling process and returns an awaitable, as Ray's ``ObjectRef`` is: a coroutine method starts
    at once as a task on the running event loop (a call nobody awaits still runs, as with Ray); a plain method
    runs at once and its result or exception waits in a done future. Call it from a coroutine (verl's agent loop,
    its rollout replicas and load-balancer clients all do); ``ray.get`` cannot take its results."""

    def __init__(self, name: str, cls: type, *args: Any, **kwargs: Any) -> None:
        self.name, self.cls, self.args, self.kwargs = name, cls, args, kwargs
        self.key = f"{name}-{uuid.uuid4().hex}"  # pickled copies share it: one instance per process

    def instance(self) -> Any:
        """This process's instance, built on first use."""
        if self.key not in _INSTANCES:
            _INSTANCES[self.key] = self.cls(*self.args, **self.kwargs)
        return _INSTANCES[self.key]

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):  # pickle's and copy's probes (__getstate__, ...) are not actor methods
            raise AttributeError(method)
        return _Method(self, method)

    def __repr__(self) -> str:
        return f"InProcessActor({self.name!r}, {self.cls.__qualname__})"


class _Method:
    def __init__(self, actor: InProcessActor, name: str) -> None:
        self.actor, self.name = actor, name

    def remote(self, *args: Any, **kwargs: Any) -> asyncio.Future:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                f"{self.actor!r}.{self.name}.remote() was called outside an event loop: an in-process actor serves "
                "async callers only (turn off ray_kwargs.services_in_agent_loop / "
                "rollout.engine_kwargs.hf.server_in_agent_loop for this use)"
            ) from None
        try:
            result = getattr(self.actor.instance(), self.name)(*args, **kwargs)
        except Exception as exc:  # raised where the result is awaited, as Ray does
            future = loop.create_future()
            future.set_exception(exc)
            return future
        if inspect.isawaitable(result):
            return asyncio.ensure_future(result)
        future = loop.create_future()
        future.set_result(result)
        return future
