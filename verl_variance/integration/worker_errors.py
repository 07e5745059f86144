"""Errors of verl-variance raised inside verl's Ray workers reach the user as themselves.

When our code fails in a worker after start-up (the ensemble reward manager in a reward-loop worker, the
``hf`` rollout behind an agent loop), verl's V1 agent loop logs the error deep in that worker's log, marks
the prompt failed, and the run ends later with a downstream symptom ("Sync replay buffer selected terminal
groups with no materializable trajectories"). The driver makes a folder before Ray starts (``prepare``,
inherited by every worker through the environment); the agent loop writes each of our errors there
(``record``); the trainer raises the first one (``surface``) at its next poll of the replay buffer, instead of
retrying the failed prompts, and ``fit`` does if the run stopped otherwise (verl's error is then its cause).

The legacy trainer needs none of this: its agent-loop and reward workers are called with ``ray.get``, so the
run ends with Ray's ``RayTaskError(<our error>)``, whose last line is our error itself (tested for both).
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
import traceback
from collections.abc import Iterable
from pathlib import Path

from verl_variance.integration.compat import VerlVarianceError, patch

ENV = "VERL_VARIANCE_WORKER_ERRORS"
"""The folder of recorded errors (set by the driver before Ray starts)."""


class WorkerError(VerlVarianceError):
    """One of verl-variance's errors, raised in a Ray worker, re-raised where the run stops."""


def prepare() -> Path:
    """The driver, before Ray starts: a fresh folder for this run's worker errors, named in the environment."""
    folder = Path(tempfile.mkdtemp(prefix="verl_variance_worker_errors_"))
    os.environ[ENV] = str(folder)
    return folder


OUR_FILES = f"{os.sep}verl_variance{os.sep}"
"""The path part of verl-variance's source files."""


def raising_file(error: BaseException) -> str | None:
    """The source file of the frame that raised ``error``: its traceback's last frame, or, for a Ray task error
    (a remote error, whose ``traceback_str`` holds the remote traceback), the last file that traceback names."""
    remote = getattr(error, "traceback_str", None)
    if isinstance(remote, str):
        files = re.findall(r'^\s*File "([^"]+)", line \d+', remote, flags=re.MULTILINE)
        return files[-1] if files else None
    frames = traceback.extract_tb(error.__traceback__)
    return frames[-1].filename if frames else None


def is_ours(error: BaseException) -> bool:
    """The error is verl-variance's: one of its exception types (or a Ray task error carrying one), or raised by
    its code. An error raised elsewhere that only passes through a wrapper of ours (every agent-loop session runs
    through one) is not: verl's own handling of it stays as without the plugin."""
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, VerlVarianceError):
        return True
    file = raising_file(error)
    return file is not None and OUR_FILES in file


def describe(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error
    return f"{type(cause).__name__}: {cause}"


def record(errors: Iterable[BaseException]) -> None:
    """A worker: write each of our errors to the run's folder (nothing when the driver made none)."""
    folder = os.environ.get(ENV)
    if not folder or not Path(folder).is_dir():
        return
    for error in errors:
        if is_ours(error):
            handle, _ = tempfile.mkstemp(dir=folder, prefix=f"{os.getpid()}_", suffix=".txt")
            with os.fdopen(handle, "w") as sink:
                sink.write(describe(error))


def recorded() -> list[str]:
    """The errors the workers wrote, oldest first."""
    folder = os.environ.get(ENV)
    if not folder or not Path(folder).is_dir():
        return []
    files = sorted(Path(folder).glob("*.txt"), key=lambda path: path.stat().st_mtime_ns)
    return [path.read_text() for path in files]


def surface(symptom: BaseException | None = None) -> None:
    """Raise the workers' first error of ours (``symptom``, verl's own error where the run stopped, as its cause);
    return when there is none."""
    if isinstance(symptom, WorkerError):
        return
    errors = recorded()
    if errors:
        more = f" ({len(errors) - 1} more like it in the workers' logs)" if len(errors) > 1 else ""
        raise WorkerError(f"verl-variance failed inside a verl worker: {errors[0]}{more}") from symptom


def patch_agent_loop_errors(module) -> None:
    """V1's agent loop: each failed session's error, when it is ours, is written for the trainer to raise."""
    @patch(module, "_settle_session_tasks")
    def _(original):
        @functools.wraps(original)
        async def _settle_session_tasks(tasks):
            errors = await original(tasks)
            record(errors)
            return errors

        return _settle_session_tasks


def patch_replay_buffer_errors(module) -> None:
    """V1's replay buffer: at each poll for samples, stop at the first of our errors a worker recorded."""
    @patch(module.ReplayBuffer, "_wait_for_next_poll")
    def _(original):
        @functools.wraps(original)
        def _wait_for_next_poll(self, partition_id, last_debug_time):
            surface()
            return original(self, partition_id, last_debug_time)

        return _wait_for_next_poll


def patch_fit_errors(module) -> None:
    """V1's trainer: a run that stops after one of our errors in a worker stops with that error."""
    @patch(module.PPOTrainer, "fit")
    def _(original):
        @functools.wraps(original)
        def fit(self, agent_loop_manager):
            try:
                return original(self, agent_loop_manager)
            except Exception as symptom:
                surface(symptom)
                raise

        return fit
