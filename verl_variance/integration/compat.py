"""Version checks and lazy, signature-checked patching of verl internals.

verl swallows every exception a plugin raises at load time, so nothing here raises during plugin
load: problems are *recorded* (``STATUS``), shown by ``verl-variance doctor``, and raised with a
clear message when a feature that needs the missing piece is used (``require``). Set
``VERL_VARIANCE_STRICT=1`` to turn a recorded problem into an exception at the point it happens.

Patches run when their target module is first imported (a ``sys.meta_path`` hook), so the plugin
never imports heavy verl modules (trainers, workers) at load time. Each replaced definition is checked against
the body and versions it was written for (``check_record``, ``fingerprints.py``): a patch whose target moved is
disabled whole, not applied in part.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

logger = logging.getLogger("verl_variance")

SUPPORTED_VERL = SpecifierSet(">=0.9.1")
"""The verl releases the plugins load on: their registrations on verl's public registries work there; each patch of
verl's internals is gated on its own (``check_record``: the versions it was checked on, its target's fingerprint)."""
INSTALL_HINT = "pip install 'verl>=0.9.1'"


class VerlVarianceError(RuntimeError):
    """A problem with the verl-variance set-up; the message says what to do."""


class PatchDisabled(VerlVarianceError):
    """A patch whose target changed since it was checked, or (verl) whose installed version was not checked."""


class UnsupportedVerlVersion(VerlVarianceError):
    """The installed verl is outside the range this plugin was built and tested against."""


def strict_mode() -> bool:
    return os.environ.get("VERL_VARIANCE_STRICT", "0").lower() in ("1", "true", "yes")


def installed_verl_version() -> str | None:
    """Version of the installed verl distribution (from its metadata, without importing it)."""
    try:
        return importlib.metadata.version("verl")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_verl_version(version: str | None = None) -> str:
    """Return the verl version, or raise ``UnsupportedVerlVersion`` naming the fix."""
    version = version if version is not None else installed_verl_version()
    if version is None:
        raise UnsupportedVerlVersion(f"verl is not installed. verl-variance needs it: {INSTALL_HINT}")
    if not SUPPORTED_VERL.contains(Version(version), prereleases=True):  # verl's main branch: 0.10.0.dev
        raise UnsupportedVerlVersion(
            f"verl {version} is not supported by verl-variance (supported: verl{SUPPORTED_VERL}); "
            f"nothing of it was loaded. Fix: {INSTALL_HINT}"
        )
    return version


@dataclass
class PluginStatus:
    """What the plugin registered and patched in this process, for ``doctor`` and ``require``."""

    verl_version: str | None = None
    version_error: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)
    patches_applied: list[str] = field(default_factory=list)
    patches_pending: list[str] = field(default_factory=list)
    patch_targets: dict[str, str] = field(default_factory=dict)
    """patch name -> the module whose import applies it (every registered patch)."""
    patch_scopes: dict[str, str] = field(default_factory=dict)
    """patch name -> when it acts (``patches.SCOPES``): a run that selects none of it runs verl's own code."""
    patch_needs: dict[str, str] = field(default_factory=dict)
    """patch name -> the optional package its target module imports (``vllm``): not installed, the patch waits."""
    patched_attributes: list[str] = field(default_factory=list)
    """Every verl/transformers attribute replaced (``patch``) or registry entry added (``register_entry``)."""
    attribute_patches: dict[str, str] = field(default_factory=dict)
    """``module.Qualname.name`` -> the patch (``when_imported`` name) that replaced it or, recording, would."""
    patches_disabled: dict[str, str] = field(default_factory=dict)
    """patch name -> why it is off (``PatchDisabled``: its target moved or its verl version was not checked)."""
    plugins: dict[str, str] = field(default_factory=dict)
    """plugin (entry-point name) -> "loaded (what selected it)" or why it installed nothing in this process."""
    patch_plugins: dict[str, str] = field(default_factory=dict)
    """patch name -> the plugin that registered it (``plugin_scope``)."""
    errors: list[str] = field(default_factory=list)

    def add(self, kind: str, name: str) -> None:
        names = self.registered.setdefault(kind, [])
        if name not in names:
            names.append(name)

    def record_error(self, what: str, exc: BaseException) -> None:
        text = f"{what}: {type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}"
        self.errors.append(text)
        logger.warning("verl-variance: %s failed: %s", what, exc)
        if strict_mode():
            raise exc


STATUS = PluginStatus()


def _failure(patch_name: str) -> str | None:
    """The first line of the error a patch's hook raised (``STATUS.errors``), or None."""
    return next((error.splitlines()[0] for error in STATUS.errors if error.startswith(f"{patch_name}: ")), None)


def patch_off(patch_name: str) -> str | None:
    """Why a patch is off, or will be when its module is imported (None: applied, or nothing known against it): it
    was disabled or failed, or the installed verl is not a version its recorded verl targets were checked on (known
    from ``patch_record.json`` before the target is imported)."""
    from verl_variance.integration import fingerprints

    if patch_name in STATUS.patches_disabled:
        return STATUS.patches_disabled[patch_name]
    if (failed := _failure(patch_name)) is not None:
        return failed
    if patch_name in STATUS.patches_applied or STATUS.verl_version is None:
        return None
    unchecked = sorted({", ".join(entry["checked_on"]) for entry in fingerprints.record().values()
                        if entry["patch"] == patch_name and entry["distribution"] == "verl"
                        and STATUS.verl_version not in entry["checked_on"]})  # fmt: skip
    if unchecked:
        return f"verl {STATUS.verl_version} is not a version it was checked on ({'; '.join(unchecked)})"
    return None


def require(patch_name: str) -> None:
    """Raise a clear error if a patch a feature depends on was not applied."""
    if STATUS.version_error:
        raise UnsupportedVerlVersion(STATUS.version_error)
    if patch_name in STATUS.patches_disabled:
        raise PatchDisabled(f"verl-variance patch {patch_name!r} is disabled: {STATUS.patches_disabled[patch_name]}")
    if patch_name not in STATUS.patches_applied:
        detail = f" ({failed})" if (failed := _failure(patch_name)) is not None else ""
        raise VerlVarianceError(
            f"verl-variance patch {patch_name!r} is not active{detail}. Run `verl-variance doctor` to see why."
        )


def check_signature(func: Callable, expected: Iterable[str], where: str) -> None:
    """Raise if ``func``'s parameter names differ from ``expected`` (a verl API change)."""
    actual = list(inspect.signature(func).parameters)
    if actual != list(expected):
        raise VerlVarianceError(
            f"{where} has signature {actual}, expected {list(expected)}: this verl build differs from the one "
            f"verl-variance patches. Fix: {INSTALL_HINT}, or upgrade verl-variance."
        )


def check_distribution(name: str, supported: SpecifierSet, what: str) -> None:
    """Raise naming the fix when the installed distribution ``name`` is outside ``supported``."""
    version = importlib.metadata.version(name)
    if Version(version) not in supported:
        raise VerlVarianceError(
            f"{name} {version} is outside the versions whose {what} verl-variance patches ({name}{supported}). "
            f"Fix: pip install '{name}{supported}'"
        )


def _where(owner: Any, name: str) -> str:
    if isinstance(owner, type):
        return f"{owner.__module__}.{owner.__qualname__}.{name}"
    return f"{owner.__name__}.{name}"


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _check_replacement(original: Callable, replacement: Callable, requires: Iterable[str], where: str) -> None:
    """The replacement's named parameters must be the original's (a leading part of them when it passes the
    rest on with *args/**kwargs), and the original must have every name in ``requires``."""
    params = list(inspect.signature(replacement, follow_wrapped=False).parameters.values())
    named = [p.name for p in params if p.kind not in _VARIADIC]
    actual = list(inspect.signature(original).parameters)
    passes_rest = len(named) < len(params)
    fits = actual[: len(named)] == named if passes_rest else actual == named
    missing = [name for name in requires if name not in actual]
    if not fits or missing:
        expected = named + ["..."] * passes_rest + [f"(with {', '.join(missing)})"] * bool(missing)
        check_signature(original, expected, where)  # raises, naming both signatures


def check_record(where: str, original: Any, wraps_only: bool = False) -> None:
    """Refuse (``PatchDisabled``) to replace a verl definition that is not the one the patch was checked on: its
    fingerprint moved, or the installed verl is not among the versions checked (``fingerprints``). A target of
    another package (transformers, TransferQueue, torch, vLLM) is gated by its version range (``patch``'s
    ``versions``); its fingerprint is recorded for ``scripts/check_patch_targets.py`` to report, not enforced, as is
    that of a ``wraps_only`` patch (one that runs code of ours, then the original with the arguments it was given:
    a changed body cannot break it; its signature is still checked)."""
    from verl_variance.integration import fingerprints

    STATUS.attribute_patches[where] = _running_hook
    if RECORDING is not None:  # scripts/check_patch_targets.py --write: take the definitions as they are
        RECORDING[where] = original
        return
    entry = fingerprints.record().get(where)
    if entry is None:
        raise VerlVarianceError(
            f"{where} has no entry in {fingerprints.RECORD_FILE.name}: every definition verl-variance replaces is "
            "recorded there (python scripts/check_patch_targets.py --write)"
        )
    version = importlib.metadata.version(entry["distribution"])
    fix = (f"Fix: pip install '{entry['distribution']}=={entry['checked_on'][-1]}', or check the patch against this "
           "version (python scripts/check_patch_targets.py) and record it (--write)")  # fmt: skip
    if entry["distribution"] != "verl" or wraps_only:
        return
    if version not in entry["checked_on"]:
        raise PatchDisabled(f"{where}: verl {version} is not a version this patch was checked on "
                            f"({', '.join(entry['checked_on'])}). {fix}")  # fmt: skip
    actual = fingerprints.fingerprint(original)
    if entry["fingerprints"] and actual not in entry["fingerprints"]:
        raise PatchDisabled(f"{where} changed in verl {version} (definition fingerprint {actual}, checked: "
                            f"{', '.join(entry['fingerprints'])}). {fix}")  # fmt: skip


def patch(
    owner: Any,
    name: str,
    *,
    requires: Iterable[str] = (),
    versions: tuple[str, SpecifierSet] | None = None,
    wraps_only: bool = False,
) -> Callable[[Callable[[Callable], Callable]], Callable]:
    """The one way verl-variance changes a verl (or transformers) attribute: a decorator on a factory
    ``make(original) -> replacement`` that sets ``owner.name = make(owner.name)``.

    Before replacing it checks, and raises ``VerlVarianceError`` naming the attribute and the fix otherwise:
    ``versions`` = (distribution, specifier) when the target is outside verl (verl's own range is checked
    once by the plugin); that ``owner.name`` exists; that its parameters are the replacement's (see
    ``_check_replacement``; ``requires``: names that must be among them); that its definition is the one the
    patch was checked on (``check_record``; ``wraps_only``: signature only). Records ``module.Qualname.name`` in
    ``STATUS.patched_attributes`` for ``doctor``. Idempotent: an attribute already replaced is kept.
    """

    def apply(make: Callable[[Callable], Callable]) -> Callable:
        where = _where(owner, name)
        if versions is not None:
            check_distribution(*versions, what=where)
        original = getattr(owner, name, None)
        if original is None:
            raise VerlVarianceError(f"{where} is missing: this build differs from the one verl-variance patches")
        if hasattr(original, PATCHED_MARK):
            return original
        check_record(where, original, wraps_only)
        replacement = make(original)
        _check_replacement(original, replacement, requires, where)
        setattr(replacement, PATCHED_MARK, where)
        ORIGINALS[where] = original
        _OWNERS[where] = (owner, name)
        setattr(owner, name, replacement)
        if where not in STATUS.patched_attributes:
            STATUS.patched_attributes.append(where)
        return replacement

    return apply


def register_entry(owner: Any, name: str, key: Any, value: Any) -> None:
    """Add ``key: value`` to the private mapping ``owner.name`` (a registry verl gives no function for),
    checked and recorded as ``patch`` does; an existing entry for ``key`` is kept (and not recorded)."""
    where = _where(owner, name)
    registry = getattr(owner, name, None)
    if not isinstance(registry, MutableMapping):
        raise VerlVarianceError(f"{where} is not a mapping: this build differs from the one verl-variance patches")
    if registry.setdefault(key, value) is value and (entry := f"{where}[{key!r}]") not in STATUS.patched_attributes:
        STATUS.patched_attributes.append(entry)


PATCHED_MARK = "__verl_variance_original__"
"""Attribute of every replacement made by ``patch``: where it is (``ORIGINALS``' key). A name, not the original
itself: wrappers copy a function's attributes (``functools.wraps``; Ray's tracing wrapper of every actor method),
and a copied original would be pickled by value with the actor class (its globals need not pickle)."""

RECORDING: dict[str, Any] | None = None
"""Set to a dict by ``scripts/check_patch_targets.py --write``: ``check_record`` then collects every target."""

ORIGINALS: dict[str, Callable] = {}
"""``module.Qualname.name`` -> the object ``patch`` replaced there."""
_OWNERS: dict[str, tuple[Any, str]] = {}


# ---------------------------------------------------------------------------------------------
# Post-import hooks
# ---------------------------------------------------------------------------------------------
_hooks: dict[str, list[tuple[str, Callable]]] = {}
_running_hook = ""  # the patch whose hook runs now (``STATUS.attribute_patches``)
_lock = threading.RLock()
_finding: set[str] = set()


def _run_hooks(module_name: str, module) -> None:
    global _running_hook
    with _lock:
        hooks = _hooks.pop(module_name, [])
    for patch_name, hook in hooks:
        STATUS.patches_pending.remove(patch_name)
        before, outer = set(ORIGINALS), _running_hook  # a hook may import a module whose hooks run inside it
        try:
            _running_hook = patch_name
            hook(module)
        except Exception as exc:  # recorded for doctor; raised again by `require` when used
            _undo([where for where in ORIGINALS if where not in before])  # a patch is applied whole or not at all
            if isinstance(exc, PatchDisabled):
                STATUS.patches_disabled[patch_name] = str(exc)
                logger.warning("verl-variance: patch %s disabled: %s", patch_name, exc)
                if strict_mode():
                    raise
            else:
                STATUS.record_error(patch_name, exc)
        else:
            STATUS.patches_applied.append(patch_name)
        finally:
            _running_hook = outer


def _undo(replaced: list[str]) -> None:
    """Put back what a failed patch had replaced."""
    for where in replaced:
        owner, name = _OWNERS.pop(where)
        setattr(owner, name, ORIGINALS.pop(where))
        STATUS.patched_attributes.remove(where)


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, module_name: str) -> None:
        self._loader = loader
        self._module_name = module_name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _run_hooks(self._module_name, module)

    def __getattr__(self, name):  # get_source, get_code, is_package, ...
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _hooks or fullname in _finding:
            return None
        _finding.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            _finding.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _HookedLoader(spec.loader, fullname)
        return spec


_FINDER = _PostImportFinder()


METHODS_PLUGIN = "verl_variance"
"""The entry-point name of the methods plugin (``integration/plugin.py``)."""
_plugin = METHODS_PLUGIN  # the plugin whose patches ``when_imported`` registers now


@contextlib.contextmanager
def plugin_scope(name: str) -> Iterator[None]:
    """Patches registered inside belong to the plugin ``name`` (``STATUS.patch_plugins``, ``doctor``'s table)."""
    global _plugin
    outer, _plugin = _plugin, name
    try:
        yield
    finally:
        _plugin = outer


def load_plugin(name: str, why: str, steps: Iterable[tuple[str, Callable[[], None]]]) -> None:
    """Run a plugin's registration ``steps`` (label, function) on a supported verl, recording each failure (nothing
    raises at plugin load: verl would swallow it) and ``why`` it loaded (``STATUS.plugins``)."""
    if STATUS.verl_version is None and STATUS.version_error is None:
        try:
            STATUS.verl_version = check_verl_version()
        except UnsupportedVerlVersion as exc:
            STATUS.version_error = str(exc)
            logger.warning("%s", exc)
            if strict_mode():
                raise
    if STATUS.version_error:
        STATUS.plugins[name] = f"not loaded: {STATUS.version_error}"
        return
    STATUS.plugins[name] = f"loaded ({why})"
    with plugin_scope(name):
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                STATUS.record_error(what, exc)


def when_imported(module_name: str, patch_name: str, hook: Callable, scope: str = "", needs: str = "") -> None:
    """Run ``hook(module)`` once ``module_name`` is imported (now, if it already is). ``scope``: when the patch acts
    (listed by ``doctor``); ``needs``: an optional package the target imports (``doctor`` skips it when absent).

    Idempotent per ``patch_name``: registering the same patch twice does nothing.
    """
    with _lock:
        if patch_name in STATUS.patches_applied or patch_name in STATUS.patches_pending:
            return
        STATUS.patches_pending.append(patch_name)
        STATUS.patch_targets[patch_name] = module_name
        STATUS.patch_scopes[patch_name] = scope
        STATUS.patch_plugins[patch_name] = _plugin
        if needs:
            STATUS.patch_needs[patch_name] = needs
        _hooks.setdefault(module_name, []).append((patch_name, hook))
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
    if module_name in sys.modules and getattr(sys.modules[module_name], "__spec__", None) is not None:
        module = sys.modules[module_name]
        if not getattr(module.__spec__, "_initializing", False):
            _run_hooks(module_name, module)
