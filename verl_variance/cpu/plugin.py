"""The CPU backend's verl entry point (``[project.entry-points."verl.plugins"] verl_variance_cpu``): verl on a
machine without an accelerator, so that everything verl-variance does can be tested there.

verl imports this module in every process, as it does the methods plugin; it installs something only in a process
whose run selects the CPU platform (``selection``). A GPU run (nothing selects it) gets no CPU hook at all: the
reason is recorded for ``verl-variance doctor``. Where selected it registers the ``cpu`` platform, the ``hf``
rollout, the CPU backend's config checks and its patches of verl internals (``cpu/patches.py``).
"""

from __future__ import annotations

import os
import sys

from verl_variance.cpu.hf_rollout_names import CPU_PLUGIN, PLATFORM_NAME, ROLLOUT_NAME
from verl_variance.cpu.launcher import CPU_PRESET
from verl_variance.integration import compat


def selection(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> str | None:
    """What selects the CPU platform in this process (None: nothing does): ``VERL_PLATFORM=cpu`` (set by the CPU
    preset for every Ray worker, by ``verl-variance ppo`` for its driver), or a driver command line that sets
    ``trainer.device=cpu`` (which selects the platform once the config is read) or names the CPU preset."""
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    if environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME:
        return f"VERL_PLATFORM={PLATFORM_NAME}"
    for index, arg in enumerate(argv):
        key, _, value = arg.lstrip("+").partition("=")
        if key == "trainer.device" and value == PLATFORM_NAME:
            return f"trainer.device={PLATFORM_NAME} on the command line"
        if arg in ("--config-name", "-cn"):  # Hydra's two-word form
            value = argv[index + 1] if index + 1 < len(argv) else ""
        if key in ("--config-name", "-cn") and value == CPU_PRESET:
            return f"the CPU preset ({CPU_PRESET})"
    return None


def _register_platform() -> None:
    from verl.plugin.platform import PlatformRegistry

    from verl_variance.cpu.platform import PlatformCPU

    if PlatformRegistry.get(PLATFORM_NAME) is not PlatformCPU:
        PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)
    compat.STATUS.add("platforms", PLATFORM_NAME)


def _install_patches() -> None:
    from verl_variance.cpu import patches
    from verl_variance.cpu.checks import check_cpu_config
    from verl_variance.integration.checks import CHECKS

    if check_cpu_config not in CHECKS:
        CHECKS.append(check_cpu_config)
    patches.install()
    compat.STATUS.add("rollouts", ROLLOUT_NAME)


def register(why: str | None = None) -> None:
    """Register the CPU backend if this process selects the CPU platform (``why``: a caller that selects it
    itself, e.g. a test process); safe to call repeatedly."""
    why = why or selection()
    if why is None:
        compat.STATUS.plugins.setdefault(
            CPU_PLUGIN, "not loaded: nothing selects the CPU platform (VERL_PLATFORM=cpu, trainer.device=cpu)"
        )
        return
    compat.load_plugin(CPU_PLUGIN, why, [("cpu platform", _register_platform), ("patches", _install_patches)])
    if compat.STATUS.version_error:  # the platform alone: a run that uses it gets the version error, not "unknown"
        try:
            _register_platform()
        except Exception as exc:
            compat.STATUS.record_error("cpu platform", exc)


register()
