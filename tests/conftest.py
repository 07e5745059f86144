"""Shared fixtures: tiny local models (no hub) built once per test session."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
settings.register_profile("derandomized", derandomize=True)  # the property tests draw the same examples every run
settings.load_profile("derandomized")


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
