"""The methods plugin's verl entry point (``[project.entry-points."verl.plugins"] verl_variance``).

verl imports this module on its first import in every process (driver, TaskRunner, workers). Importing it
registers the four methods (variance-aware KL, the ensemble reward, RVPO, R²VPO) in verl's registries and their
patches of verl internals as post-import hooks that run when their target module is imported, idempotently, on any
verl >= 0.9.1 (each patch is gated on its own: ``compat.check_record``). Nothing here raises: verl would swallow it.
Problems are recorded in ``compat.STATUS`` for ``verl-variance doctor`` and raised when a feature that needs them is
used. Nothing here knows the CPU backend: that is the other plugin, ``verl_variance.cpu``.
"""

from __future__ import annotations

from verl_variance.integration import compat


def _install_patches() -> None:
    from verl_variance.integration import patches

    patches.install()
    compat.STATUS.add("kl_penalties", "variance_aware")
    compat.STATUS.add("advantage_estimators", "grpo_variance_kl")
    compat.STATUS.add("advantage_estimators", "rvpo")
    compat.STATUS.add("advantage_estimators", "gdpo (fed on the V1 trainer)")
    compat.STATUS.add("policy_losses", "r2vpo")
    compat.STATUS.add("reward_managers", "ensemble")


def register() -> None:
    """Register the methods and their patches (safe to call repeatedly)."""
    compat.load_plugin(compat.METHODS_PLUGIN, "always", [("patches", _install_patches)])


register()
