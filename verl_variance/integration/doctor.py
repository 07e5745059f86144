"""``verl-variance doctor``: load verl in a fresh process and report what the plugin did.

verl imports plugins inside ``import verl`` and logs their failures at DEBUG, so a broken plugin
is silent. The probe runs in a child process (a clean interpreter, like a Ray worker), imports
verl, imports every module the plugin patches, and prints one JSON object; the parent renders it
and exits non-zero when a verl plugin failed to load or a patch failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

PLUGIN_MODULE = "verl_variance.integration.plugin"


def probe() -> dict[str, Any]:
    """Runs in the child process. Returns the report as a JSON-able dict."""
    import importlib
    import importlib.metadata
    import importlib.util
    import os
    import traceback
    import warnings

    warnings.filterwarnings("ignore")
    report: dict[str, Any] = {"python": sys.version.split()[0], "plugins": {}, "import_errors": {}}
    for name in ("verl", "torch", "transformers", "ray", "verl-variance"):
        try:
            report[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            report[name] = None
    try:
        import verl  # noqa: F401  (loads the plugins, swallowing their errors)
    except Exception:
        report["import_errors"]["verl"] = traceback.format_exc()
        return report

    policy = os.environ.get("VERL_USE_EXTERNAL_PLUGINS", "auto")
    report["plugin_policy"] = policy
    for entry in importlib.metadata.entry_points(group="verl.plugins"):
        status = {"module": entry.value, "loaded": entry.value in sys.modules, "error": None}
        if not status["loaded"]:
            try:  # verl swallowed the reason: load it again to get the traceback
                entry.load()
            except Exception:
                status["error"] = traceback.format_exc()
            else:
                status["error"] = (
                    f"not loaded by verl (VERL_USE_EXTERNAL_PLUGINS={policy}); set VERL_USE_EXTERNAL_PLUGINS=auto"
                )
        report["plugins"][entry.name] = status

    from verl_variance.integration.compat import STATUS

    absent = {name for name, package in STATUS.patch_needs.items() if importlib.util.find_spec(package) is None}
    # every module a registered patch targets, but those of optional packages not installed here (vLLM)
    for module in sorted({module for name, module in STATUS.patch_targets.items() if name not in absent}):
        try:
            importlib.import_module(module)
        except Exception as exc:
            report["import_errors"][module] = f"{type(exc).__name__}: {exc}"

    import torch
    from verl.plugin.platform import get_platform

    report["cuda_available"] = torch.cuda.is_available()
    try:
        report["device"] = get_platform().device_name
    except Exception as exc:
        report["device"] = f"error: {exc}"
    report["registries"] = _verl_registries()
    if PLUGIN_MODULE in sys.modules:
        report["verl_variance"] = {
            "verl_version": STATUS.verl_version,
            "version_error": STATUS.version_error,
            "registered": STATUS.registered,
            "patches_applied": STATUS.patches_applied,
            "patches_pending": STATUS.patches_pending,
            "patched_attributes": STATUS.patched_attributes,
            "patches_disabled": STATUS.patches_disabled,
            "attribute_patches": STATUS.attribute_patches,
            "patch_scopes": STATUS.patch_scopes,
            "plugin_states": STATUS.plugins,
            "patch_plugins": STATUS.patch_plugins,
            "errors": STATUS.errors,
        }
    return report


def _verl_registries() -> dict[str, list[str]]:
    registries: dict[str, list[str]] = {}
    try:
        from verl.plugin.platform import PlatformRegistry

        registries["platforms"] = list(PlatformRegistry.registered_names())
        from verl.workers.rollout.replica import RolloutReplicaRegistry

        registries["rollouts"] = sorted(RolloutReplicaRegistry._registry)
        from verl.trainer.ppo import core_algos

        registries["advantage_estimators"] = sorted(core_algos.ADV_ESTIMATOR_REGISTRY)
        registries["policy_losses"] = sorted(core_algos.POLICY_LOSS_REGISTRY)
        from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER

        registries["reward_managers"] = sorted(REWARD_MANAGER)
        from verl_variance.core.aggregators import AGGREGATORS
        from verl_variance.core.config import KL_MODE, valid_kl_estimators
        from verl_variance.core.kl import KL_WEIGHTINGS

        registries["kl_penalties"] = [*valid_kl_estimators(), KL_MODE]
        registries["kl_weightings (variance_kl.weighting)"] = sorted(KL_WEIGHTINGS)
        registries["reward_aggregators"] = sorted(AGGREGATORS)
    except Exception as exc:  # a registry moved: report it, the rest of the report still helps
        registries["error"] = [f"{type(exc).__name__}: {exc}"]
    return registries


def run_probe(env: dict[str, str] | None = None, timeout: float = 300) -> dict[str, Any]:
    """Run ``probe`` in a fresh interpreter and return its report."""
    code = (
        "import json, sys; from verl_variance.integration.doctor import probe; "
        "sys.stdout.write('\\n@@' + json.dumps(probe()))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    marker = result.stdout.rfind("\n@@")
    if marker < 0:
        return {"import_errors": {"probe": f"exit code {result.returncode}\n{result.stderr[-4000:]}"}, "plugins": {}}
    return json.loads(result.stdout[marker + 3 :])


def problems(report: dict[str, Any]) -> list[str]:
    """Everything that makes the plugin unusable, one line (plus traceback) each."""
    found = [f"import of {name} failed:\n{err}" for name, err in report.get("import_errors", {}).items()]
    for name, status in report.get("plugins", {}).items():
        if status.get("error"):
            found.append(f"verl plugin {name!r} ({status['module']}) failed to load:\n{status['error']}")
    if "verl_variance" not in report.get("plugins", {}) and "verl" in report and not report["import_errors"]:
        found.append("verl-variance's entry point is not installed: pip install verl-variance")
    ours = report.get("verl_variance") or {}
    if ours.get("version_error"):
        found.append(ours["version_error"])
    found.extend(f"patch {name} disabled: {why}" for name, why in ours.get("patches_disabled", {}).items())
    found.extend(ours.get("errors", []))
    return found


def scope_lines(scopes: dict[str, str]) -> list[str]:
    """Patches grouped by when they act (``patches.SCOPES``), and those that would act on a GPU run that opts into
    nothing (the goal: none; a fallback acts only where verl itself would fail)."""
    from verl_variance.integration.patches import SCOPES

    lines = []
    for kind, meaning in SCOPES.items():
        names = [f"{name}: {scope.split(': ', 1)[1]}" if ": " in scope else name
                 for name, scope in scopes.items() if scope.split(":", 1)[0] == kind]  # fmt: skip
        if names:
            lines.append(f"    {kind} - {meaning}:")
            lines.extend(f"        {name}" for name in names)
    always = sorted(name for name, scope in scopes.items() if scope.split(":", 1)[0] not in SCOPES)
    lines.append(f"  acting on every GPU run: {', '.join(always) if always else 'none'}")
    return lines


def plugin_lines(ours: dict[str, Any]) -> list[str]:
    """The patch table by plugin: each plugin's state in this process, then its patches by when they act, each
    marked when it is not applied (not reached: its module was not imported; disabled: the gate refused it)."""
    states, owners, scopes = ours.get("plugin_states", {}), ours.get("patch_plugins", {}), ours.get("patch_scopes", {})
    lines = ["patches by plugin (a GPU run with no opt-in key runs verl's own code):"]
    for plugin in sorted(set(states) | set(owners.values())):
        names = [name for name in scopes if owners.get(name) == plugin]
        lines.append(f"  {plugin}: {states.get(plugin, 'loaded')}; {len(names)} patches")

        def mark(name: str) -> str:
            if name in ours.get("patches_disabled", {}):
                return f"{name} [DISABLED]"
            return name if name in ours.get("patches_applied", []) else f"{name} [not reached]"

        lines.extend(scope_lines({mark(name): scopes[name] for name in names})[:-1])
    lines.append(scope_lines(scopes)[-1])
    return lines


def render(report: dict[str, Any]) -> str:
    lines = ["verl-variance doctor", ""]
    for name in ("python", "verl", "torch", "transformers", "ray", "verl-variance"):
        lines.append(f"  {name:<14} {report.get(name)}")
    lines.append(f"  {'device':<14} {report.get('device')}")
    if report.get("device") == "cuda" and report.get("cuda_available") is False:
        lines.append("                 (no GPU here: verl falls back to 'cuda'; run with trainer.device=cpu,")
        lines.append("                  VERL_PLATFORM=cpu, or `verl-variance ppo`, which use the CPU preset)")
    lines.append("")
    lines.append("verl plugins:")
    states = (report.get("verl_variance") or {}).get("plugin_states", {})
    for name, status in report.get("plugins", {}).items():
        state = "loaded" if status["loaded"] else "NOT LOADED"
        if status["loaded"] and name in states:  # ours: what selected it, or why it installed nothing here
            state = states[name]
        lines.append(f"  {name:<18} {state} ({status['module']})")
    ours = report.get("verl_variance")
    if ours:
        lines.append("")
        lines.append("registered by verl-variance:")
        for kind, names in sorted(ours["registered"].items()):
            lines.append(f"  {kind:<22} {', '.join(names)}")
        lines.append(f"  {'patches applied':<22} {', '.join(ours['patches_applied']) or '-'}")
        if ours["patches_pending"]:
            lines.append(f"  {'patches not reached':<22} {', '.join(ours['patches_pending'])}")
        lines.extend(["", *plugin_lines(ours)])
        lines.append("")
        lines.append("verl/transformers attributes changed by verl-variance (each checked against the definition "
                     "and, for verl, the versions in integration/patch_record.json):")  # fmt: skip
        lines.extend(f"  {where}" for where in ours["patched_attributes"])
    registries = report.get("registries")
    if registries:
        lines.append("")
        lines.append("verl registries (as verl sees them):")
        for kind, names in registries.items():
            lines.append(f"  {kind:<22} {', '.join(names)}")
    issues = problems(report)
    lines.append("")
    lines.append("PROBLEMS:" if issues else "OK: plugin loaded, everything registered.")
    lines.extend(f"  - {issue}" for issue in issues)
    return "\n".join(lines)


def main(as_json: bool = False) -> int:
    report = run_probe()
    print(json.dumps(report, indent=2) if as_json else render(report))
    return 1 if problems(report) else 0
