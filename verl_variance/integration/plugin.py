"""verl plugin entry point (``[project.entry-points."verl.plugins"]``).

verl imports this module on its first import in every process (driver, TaskRunner, workers).
Importing it registers everything, idempotently; patches of verl internals are installed as
post-import hooks and run when their target module is imported. Nothing here raises: verl would
swallow it. Problems are recorded in ``compat.STATUS`` for ``verl-variance doctor`` and raised when
a feature that needs them is used.
"""

from __future__ import annotations

from verl_variance.integration import compat


def _register_platform() -> None:
    from verl.plugin.platform import PlatformRegistry

    from verl_variance.integration.cpu_platform import PlatformCPU
    from verl_variance.integration.hf_rollout_names import PLATFORM_NAME

    if PlatformRegistry.get(PLATFORM_NAME) is not PlatformCPU:
        PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)
    compat.STATUS.add("platforms", PLATFORM_NAME)


def register() -> None:
    """Register the CPU platform, the hf rollout and every patch (safe to call repeatedly)."""
    try:
        compat.STATUS.verl_version = compat.check_verl_version()
    except compat.UnsupportedVerlVersion as exc:
        compat.STATUS.version_error = str(exc)
        compat.logger.warning("%s", exc)
        if compat.strict_mode():
            raise
    for what, step in (("cpu platform", _register_platform), ("patches", _install_patches)):
        try:
            step()
        except Exception as exc:
            compat.STATUS.record_error(what, exc)


def _install_patches() -> None:
    if compat.STATUS.version_error:
        return  # never patch an unknown verl; the CPU platform raises the version error when used
    from verl_variance.integration import patches
    from verl_variance.integration.hf_rollout_names import ROLLOUT_NAME

    patches.install()
    compat.STATUS.add("rollouts", ROLLOUT_NAME)
    compat.STATUS.add("kl_penalties", "variance_aware")
    compat.STATUS.add("advantage_estimators", "grpo_variance_kl")
    compat.STATUS.add("advantage_estimators", "rvpo")
    compat.STATUS.add("advantage_estimators", "gdpo (fed on the V1 trainer)")
    compat.STATUS.add("policy_losses", "r2vpo")
    compat.STATUS.add("reward_managers", "ensemble")


register()
