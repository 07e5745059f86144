"""A CPU platform for verl's PlatformRegistry, so verl's trainer runs on a machine with no GPU.

Selected with ``VERL_PLATFORM=cpu`` (the CPU preset and ``verl-variance ppo`` set it), never by
auto-detection: installed but unused, the plugin leaves verl's device choice alone.

Ray still schedules verl's workers on "GPU" bundles (verl hard-codes ``use_gpu``), so a CPU run
declares logical GPUs to Ray (``ray_kwargs.ray_init.num_gpus``); each worker then computes on the
CPU and talks over gloo.
"""

from __future__ import annotations

import os
import types
from contextlib import contextmanager
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase


def _total_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _available_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _make_device_module() -> types.ModuleType:
    """``torch.cpu`` plus the ``torch.cuda``-style calls verl makes (memory stats, seeds, caches)."""
    module = types.ModuleType("verl_variance_cpu_device")
    for name in ("current_stream", "stream", "Stream", "StreamContext", "Event", "synchronize"):
        if hasattr(torch.cpu, name):
            setattr(module, name, getattr(torch.cpu, name))

    def _zero(*args, **kwargs) -> int:
        return 0

    def _none(*args, **kwargs) -> None:
        return None

    for name in (
        "memory_allocated",
        "memory_reserved",
        "max_memory_allocated",
        "max_memory_reserved",
        "current_device",
    ):
        setattr(module, name, _zero)
    for name in ("empty_cache", "reset_peak_memory_stats", "set_device", "ipc_collect", "reset_max_memory_allocated"):
        setattr(module, name, _none)
    module.is_available = lambda: True
    module.device_count = lambda: 1
    module.get_device_name = lambda *args, **kwargs: "cpu"
    module.mem_get_info = lambda *args, **kwargs: (_available_memory_bytes(), _total_memory_bytes())
    module.manual_seed = torch.manual_seed
    module.manual_seed_all = torch.manual_seed
    module.get_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    module.set_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    module.memory_stats = lambda *args, **kwargs: {}
    module.is_initialized = lambda: True
    module.memory = types.SimpleNamespace(_set_allocator_settings=_none)
    return module


class PlatformCPU(PlatformBase):
    """verl platform backend for CPU-only machines (gloo, no accelerator)."""

    _device_module = _make_device_module()

    def __init__(self) -> None:
        from verl_variance.integration.compat import STATUS, UnsupportedVerlVersion

        if STATUS.version_error:  # verl selected this platform: the run needs patches we did not apply
            raise UnsupportedVerlVersion(STATUS.version_error)

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return self._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: opt in with VERL_PLATFORM=cpu.
        return False

    def current_device(self) -> torch.device:
        return torch.device("cpu")

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
