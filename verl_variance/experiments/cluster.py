"""Where a study's policy runs execute: local subprocesses (the default) or Ray Jobs on an existing cluster.

``study.run_policy`` hands each run to an executor:

- ``LocalProcesses``: the run's command as a subprocess of this process (its output streamed to ``run.log``);
- ``RayJobs``: the run's command as a Ray Job (``ray.job_submission``) on the cluster at ``RAY_ADDRESS``. Each job
  reserves what one run needs on one node (``RunResources``: CPUs, GPUs; Ray sets the job's
  ``CUDA_VISIBLE_DEVICES``), and the run starts its own Ray instance inside that reservation (``RAY_ADDRESS=local``),
  as it would on a machine of its own: one run per node group, N at a time (the study's ``parallel``), queued by
  Ray when the cluster is full. The study folder must be on a filesystem every node sees at the same path (verl's
  checkpoints and validation dumps, the metrics file), as for any multi-node verl run; so must the Python
  environment. Jobs outlive the dispatcher: re-running the study takes over a run's job that is still pending or
  running, or that succeeded meanwhile, instead of starting it again, and resubmits a failed or stopped one (verl
  resumes it from its checkpoint).

Each run's Ray Job log is appended to its ``run.log`` when the job ends, and ``cluster_job.json`` records the job and
the node it ran on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

JOB_FILE = "cluster_job.json"
FORWARDED_PREFIXES = ("VERL_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "PYTHONHASHSEED", "CUBLAS_", "NCCL_")
"""Variables of this environment a cluster run gets even when the launcher did not set them: verl's, the plugin's
(``VERL_VARIANCE_*``, ``VERL_USE_EXTERNAL_PLUGINS``), Hugging Face's, and the determinism and NCCL settings."""
_LIVE = ("PENDING", "RUNNING")


class ClusterError(RuntimeError):
    """The cluster cannot run the study: unreachable, too small, or a run's job failed to start."""


Prepare = Callable[[], tuple[list[str], dict[str, str]]]
"""Prepares the run folder for a (re)start and returns the run's command and full environment."""
OnLine = Callable[[str], None]


class Executor(Protocol):
    def execute(self, run_id: str, run_dir: Path, prepare: Prepare, on_line: OnLine) -> int:
        """Run (or attach to) one policy run; its output lines go to ``on_line``; returns its exit status."""


class LocalProcesses:
    """Each run a subprocess of this process; its output is appended to ``run.log`` as it comes."""

    def execute(self, run_id: str, run_dir: Path, prepare: Prepare, on_line: OnLine) -> int:
        import subprocess

        command, env = prepare()
        with (
            open(run_dir / "run.log", "a") as run_log,
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process,
        ):
            assert process.stdout is not None
            for line in process.stdout:
                run_log.write(line)
                on_line(line)
        return process.returncode


@dataclass(frozen=True)
class RunResources:
    """What one run reserves on one node of the cluster: ``cpus`` logical CPUs and ``gpus`` GPUs."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if not (self.cpus > 0 and self.gpus >= 0):
            raise ClusterError(f"a run reserves > 0 CPUs and >= 0 GPUs, got {self.cpus} CPUs and {self.gpus} GPUs")

    def fits(self, node: dict[str, float]) -> bool:
        return node.get("CPU", 0.0) >= self.cpus and node.get("GPU", 0.0) >= self.gpus

    def describe(self) -> str:
        return f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")


def forwarded_environment(
    env: dict[str, str], base: dict[str, str], passthrough: Collection[str] = ()
) -> dict[str, str]:
    """The part of a run's environment ``env`` that travels with its job: what the launcher set or changed against
    ``base`` (this process's environment), the ``passthrough`` names the run's scripts read, and the
    ``FORWARDED_PREFIXES`` variables. The node's own variables (PATH, HOME, CUDA_VISIBLE_DEVICES, ...) stay."""
    return {
        name: value
        for name, value in sorted(env.items())
        if base.get(name) != value or name in passthrough or name.startswith(FORWARDED_PREFIXES)
    }


def job_entrypoint(command: list[str], env: dict[str, str]) -> str:
    """The job's shell command: ``env`` set explicitly, and ``RAY_ADDRESS=local`` so the run starts its own Ray
    instance inside the job's reservation instead of joining the cluster."""
    return shlex.join(["env", *(f"{name}={value}" for name, value in env.items()), "RAY_ADDRESS=local", *command])


class RayJobs:
    """Policy runs as Ray Jobs on the cluster at ``address`` (the dashboard's, e.g. ``http://<head>:8265``).

    Construction connects and checks that some node can hold one run (``RunResources``): a ``ClusterError`` with one
    line otherwise, before any run starts.
    """

    def __init__(self, address: str, study_dir: Path, resources: RunResources, passthrough: Collection[str] = ()):
        from ray.job_submission import JobSubmissionClient

        self.address, self.study_dir, self.resources = address, Path(study_dir), resources
        self.passthrough = frozenset(passthrough)
        self.study_key = hashlib.sha1(str(self.study_dir).encode()).hexdigest()[:10]
        try:
            self.client = JobSubmissionClient(address)
            nodes = self.nodes()
        except Exception as error:  # the SDK raises ConnectionError, RuntimeError or ValueError by cause
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ClusterError(
                f"cannot reach a Ray cluster at RAY_ADDRESS={address} ({reason}): give the head node's dashboard "
                "address (http://<head>:8265, started by `ray start --head`), or unset RAY_ADDRESS to run the "
                "policies here"
            ) from None
        if not any(resources.fits(node["resources"]) for node in nodes):
            sizes = "; ".join(f"{node['ip']}: {_describe(node['resources'])}" for node in nodes) or "no alive node"
            raise ClusterError(
                f"no node of the Ray cluster at {address} can hold one run ({resources.describe()}; the nodes: "
                f"{sizes}): add such a node, or ask less per run (--run-cpus/--run-gpus)"
            )

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's alive nodes: ``{"node_id", "ip", "resources"}`` (total resources)."""
        from ray.util.state import list_nodes

        return [
            {"node_id": node.node_id, "ip": node.node_ip, "resources": dict(node.resources_total)}
            for node in list_nodes(address=self.address, detail=True, raise_on_missing_output=False)
            if node.state == "ALIVE"
        ]

    def _metadata(self, run_id: str) -> dict[str, str]:
        return {"verl_variance_study": str(self.study_dir), "verl_variance_run": run_id}

    def earlier_job(self, run_id: str, run_dir: Path) -> tuple[str, str] | None:
        """(submission id, status) of the job an earlier dispatcher submitted for this run and that still counts: a
        pending or running one, else one that succeeded while no dispatcher watched (its metrics in ``run_dir``)."""
        wanted = self._metadata(run_id)
        jobs = sorted(
            (job for job in self.client.list_jobs()
             if all((job.metadata or {}).get(key) == value for key, value in wanted.items())),
            key=lambda job: job.start_time or 0, reverse=True,
        )  # fmt: skip
        for job in jobs:
            if str(job.status) in _LIVE:
                return job.submission_id, str(job.status)
        finished = (run_dir / "metrics.jsonl").is_file()
        return next(((job.submission_id, "SUCCEEDED") for job in jobs if str(job.status) == "SUCCEEDED" and finished),
                    None)  # fmt: skip

    def execute(self, run_id: str, run_dir: Path, prepare: Prepare, on_line: OnLine) -> int:
        earlier = self.earlier_job(run_id, run_dir)
        if earlier is None:
            command, env = prepare()
            forwarded = forwarded_environment(env, dict(os.environ), self.passthrough)
            job = f"verl-variance-{self.study_key}-{re.sub(r'[^A-Za-z0-9]+', '-', run_id)}-{uuid.uuid4().hex[:8]}"
            self.client.submit_job(
                entrypoint=job_entrypoint(command, forwarded),
                submission_id=job,
                entrypoint_num_cpus=self.resources.cpus,
                entrypoint_num_gpus=self.resources.gpus,
                metadata=self._metadata(run_id),
            )
            on_line(f"[cluster] submitted Ray job {job} (follow it: ray job logs -f {job} --address {self.address}; "
                    "run.log gets its whole log when it ends)\n")  # fmt: skip
        else:
            job, status = earlier
            on_line(f"[cluster] taking over Ray job {job} ({status}), submitted by an earlier dispatcher\n")
        self._write_record(run_dir, job)
        asyncio.run(self._stream(job, on_line))
        info = self._wait(job)
        with open(run_dir / "run.log", "a") as run_log:
            run_log.write(f"===== Ray job {job} ({info.status}) on node {info.driver_node_id} =====\n")
            run_log.write(self.client.get_job_logs(job))
        self._write_record(run_dir, job)
        if str(info.status) == "SUCCEEDED":
            return 0
        return info.driver_exit_code if info.driver_exit_code not in (None, 0) else 1

    async def _stream(self, job: str, on_line: OnLine) -> None:
        """The job's log lines as they come, until it ends (nothing for a job that had ended already)."""
        pending = ""
        async for chunk in self.client.tail_job_logs(job):
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                on_line(line + "\n")
        if pending:
            on_line(pending)

    def _wait(self, job: str):
        import time

        while True:
            info = self.client.get_job_info(job)
            if str(info.status) not in _LIVE:
                return info
            time.sleep(1.0)

    def _write_record(self, run_dir: Path, job: str) -> None:
        """``cluster_job.json``: the job, its status and the node its run executes on."""
        info = self.client.get_job_info(job)
        record = {"submission_id": job, "status": str(info.status), "node_id": info.driver_node_id,
                  "address": self.address}  # fmt: skip
        (run_dir / JOB_FILE).write_text(json.dumps(record, indent=2))


def _describe(resources: dict[str, float]) -> str:
    return f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"


def executor_for(
    address: str | None, study_dir: Path, resources: RunResources, passthrough: Iterable[str] = ()
) -> Executor:
    """``RayJobs`` on the cluster at ``address`` (``RAY_ADDRESS``), or ``LocalProcesses`` when it is empty."""
    if not address:
        return LocalProcesses()
    return RayJobs(address, study_dir, resources, frozenset(passthrough))
