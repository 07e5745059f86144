"""Shared fixtures: tiny local models (no hub) built once per test session."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
settings.register_profile("derandomized", derandomize=True)  # the property tests draw the same examples every run
settings.load_profile("derandomized")


def pytest_configure(config: pytest.Config) -> None:
    """The tests' own processes run the CPU backend in-process (hooks of verl on CPU exercised without a Ray run):
    nothing on their command line selects the CPU platform, so its plugin is loaded here. Subprocesses choose for
    themselves (``VERL_PLATFORM``), as runs do."""
    if getattr(config.option, "numprocesses", None) and "PYTEST_XDIST_WORKER" not in os.environ:
        return  # xdist's controller runs no test
    from verl_variance.cpu import plugin

    plugin.register("the test suite's processes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end runs first: xdist hands tests out in this order, and a run of minutes started last would
    finish alone on one core while the other waits."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny causal LMs of each supported architecture, keyed by architecture name."""
    from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {
        arch: build_tiny_model(root / arch, TinyModelConfig(architecture=arch)) for arch in ("qwen2", "llama", "gpt2")
    }


@pytest.fixture(scope="session")
def cpu_probe() -> dict:
    """``doctor``'s report of a fresh process with both plugins loaded (``VERL_PLATFORM=cpu``), probed once per test
    process: the tests that read it only read it."""
    from verl_variance.integration.doctor import run_probe

    return run_probe(dict(os.environ, VERL_PLATFORM="cpu"))


def free_port() -> int:
    """A TCP port no process listens on now (tests run side by side: no fixed ports)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (verl loads plugins once per process)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=timeout)


def assert_all_finite(value, where: str = "report") -> None:
    """Every float in a nested dict/list structure (a report, a metrics record) is finite; names the path."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert_all_finite(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            assert_all_finite(item, f"{where}[{index}]")
    elif isinstance(value, float):
        assert math.isfinite(value), where


def import_benchmark(filename: str):
    """Import ``benchmarks/<filename>`` as a module (benchmarks are scripts, not a package); yields it, then
    forgets it. For module-scoped fixtures of the benchmarks' helper tests."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / filename
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@contextlib.contextmanager
def local_ray_cluster(tmp_path: Path, cpus_per_node: int = 1):
    """A two-node Ray cluster on this machine: ``ray start --head`` and a second ``ray start --address`` with its own
    resources (``node_a``, ``node_b``), every port free-picked and the session in a folder of its own (the default
    ``/tmp/ray`` address file untouched: other tests' ``ray.init()`` keep starting their own instances). Yields
    ``{"address": dashboard URL, "nodes": {"node_a": node id, "node_b": node id}}``; stops both nodes after."""
    ray = str(Path(sys.executable).parent / "ray")
    gcs_port, dashboard_port = free_port(), free_port()
    common = ["--block", "--disable-usage-stats", f"--num-cpus={cpus_per_node}", "--num-gpus=0"]
    processes = []

    def start(name: str, *args: str) -> None:
        ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                 f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]  # fmt: skip
        command = [ray, "start", *args, *common, *ports, f"--resources={json.dumps({name: 1})}"]
        log = open(tmp_path / f"ray_{name}.log", "w")  # noqa: SIM115 (closed with the process below)
        env = dict(os.environ, RAY_AUTH_MODE="disabled")  # else token auth once a ray.init() left ~/.ray/auth_token
        processes.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True), log))  # fmt: skip

    address = f"http://127.0.0.1:{dashboard_port}"
    session = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = ["--head", f"--port={gcs_port}", f"--temp-dir={session}", "--include-dashboard=true",
            f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={free_port()}"]  # fmt: skip
    try:
        for count, (name, args) in enumerate((("node_a", head), ("node_b", [f"--address=127.0.0.1:{gcs_port}"])), 1):
            for attempt in range(3):  # a loaded machine can miss `ray start`'s fixed 30 s wait for its raylet
                start(name, *args)
                try:
                    nodes = _wait_for_nodes(address, count, processes)
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
                    failed, log = processes.pop()
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(failed.pid, signal.SIGKILL)  # what it had started
                    failed.wait()
                    log.close()
        yield {"address": address, "nodes": {name: node_id for node_id, name in nodes.items()}}
    finally:
        for process, _ in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process, log in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # what `ray start` left (its GCS, raylet, dashboard)
            process.wait()
            log.close()
        shutil.rmtree(session, ignore_errors=True)


def _wait_for_nodes(address: str, count: int, processes: list, timeout: float = 180) -> dict[str, str]:
    """``{node id: "node_a" | "node_b"}`` once ``count`` nodes are alive."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process, log in processes:
            if process.poll() is not None:
                raise RuntimeError(f"`ray start` exited {process.returncode}: {Path(log.name).read_text()[-2000:]}")
        try:
            JobSubmissionClient(address)
            nodes = {node.node_id: next(name for name in ("node_a", "node_b") if name in node.resources_total)
                     for node in list_nodes(address=address, detail=True) if node.state == "ALIVE"}  # fmt: skip
        except Exception:  # the dashboard is not up yet
            nodes = {}
        if len(nodes) >= count:
            return nodes
        time.sleep(1)
    raise TimeoutError(f"the local Ray cluster at {address} did not show {count} nodes in {timeout} s")
