"""``verl-variance ppo``: verl's own ``main_ppo`` with the CPU preset when there is no GPU.

It only picks the Hydra config and the platform; training is ``verl.trainer.main_ppo.main``, run by
``python -m verl_variance.cpu.launcher``: the same function ``python -m verl.trainer.main_ppo`` runs,
imported as a module, so that verl-variance's driver patches reach it (``ray_kwargs.task_runner_in_driver``:
a patch cannot reach a module run as ``__main__``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "config"
CPU_PRESET = "ppo_trainer_cpu"
DRIVER_MODULE = "verl_variance.cpu.launcher"
"""``python -m`` this: verl's ``main_ppo`` driver (Hydra overrides as arguments)."""
VERL_VARIANCE_MAIN_PPO_DRIVER = True
"""Run as ``__main__``, this module is verl's ``main_ppo`` driver (``integration.checks.MAIN_PPO_DRIVER``): a user's
config mistake is printed as one line, without Hydra's traceback."""


def main_ppo_command(overrides: list[str], cpu: bool) -> list[str]:
    """The ``main_ppo`` command line: the CPU preset on a CPU machine, verl's stock config otherwise."""
    command = [sys.executable, "-m", DRIVER_MODULE]
    if cpu:
        command += [f"--config-path={CONFIG_DIR}", f"--config-name={CPU_PRESET}"]
    return command + list(overrides)


def use_cpu_preset(device: str) -> bool:
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return device == "cpu"


def transfer_queue_threads() -> int:
    """The torch threads TransferQueue uses per put/get: its default (``TQ_NUM_THREADS``, 8) capped at the
    physical cores, as TransferQueue caps it itself, but without its warning on every call (~1,000 lines per
    demo policy run on a 2-core machine, which buried the tail of each run's log)."""
    import psutil

    return min(8, psutil.cpu_count(logical=False) or 8)


def run_ppo(overrides: list[str], device: str = "auto", env: dict[str, str] | None = None) -> int:
    """Run verl's PPO trainer in a child process; returns its exit code."""
    cpu = use_cpu_preset(device)
    env = dict(os.environ if env is None else env)
    if cpu:
        env.setdefault("VERL_PLATFORM", "cpu")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per engine where vLLM's CPU build serves
        env.setdefault("TQ_NUM_THREADS", str(transfer_queue_threads()))
    return subprocess.call(main_ppo_command(overrides, cpu), env=env)


if __name__ == "__main__":
    from verl.trainer.main_ppo import main

    main()
