"""What each patch was checked against: the versions and a fingerprint of the definition it replaces.

A patch is written against one body of its target. A name check (``compat.patch``'s signature check) cannot see a
body that changed under the same signature, e.g. a verl function a patch re-implements. So every replaced
definition has a record in ``patch_record.json``: the distribution it comes from, the versions it was checked on
and the fingerprint of its definition (the SHA-256 of its syntax tree, ``ast.dump``: comments, blank lines and
formatting do not count; decorators do). ``compat.patch`` refuses a target whose record is missing and a verl
target whose fingerprint moved or whose installed verl version was not checked: that patch is disabled, ``doctor``
says which and why in one line, and the feature that needs it refuses when used (``compat.require``). Targets in
other packages keep their version-range check; their fingerprints are reported by the script, not enforced.

``scripts/check_patch_targets.py`` checks every record against the installed packages or a verl source tree (a
checkout of verl's main branch) and prints which fingerprints moved; ``--write`` records the installed ones.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

RECORD_FILE = Path(__file__).with_name("patch_record.json")


def definition_fingerprint(node: ast.AST) -> str:
    """16 hex digits of the SHA-256 of a definition's syntax tree (no line numbers, comments or formatting)."""
    return hashlib.sha256(ast.dump(node).encode()).hexdigest()[:16]


def fingerprint(obj: Any) -> str | None:
    """The fingerprint of an installed function's or class's definition (decorators included; a wrapped function's
    own: ``inspect`` unwraps it); None when its source cannot be read (a builtin, a compiled extension)."""
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return None
    if source[:1].isspace():  # a method: parsed in place under "if 1:", so its multi-line strings keep their text
        return definition_fingerprint(ast.parse("if 1:\n" + source).body[0].body[0])
    return definition_fingerprint(ast.parse(source).body[0])


def find_definition(tree: ast.Module, qualname: str) -> ast.AST | None:
    """The ``def``/``class`` node of ``qualname`` (``Class.method`` or ``function``) in a module's syntax tree."""
    scope: list[ast.stmt] = tree.body
    node = None
    for name in qualname.split("."):
        node = next((item for item in scope if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and item.name == name), None)  # fmt: skip
        if node is None:
            return None
        scope = node.body
    return node


def defined_at(obj: Any) -> tuple[str, str]:
    """(module, qualname) where ``obj`` is defined (a patch's target may re-export it from elsewhere)."""
    obj = inspect.unwrap(obj)
    return obj.__module__, obj.__qualname__


@functools.cache
def record() -> dict[str, dict[str, Any]]:
    """``patch_record.json``: replaced attribute (``module.Qualname.name``) -> ``distribution``, ``checked_on`` (its
    versions the patch was checked on), ``module`` and ``qualname`` (where the definition lives) and
    ``fingerprints`` (of the bodies it was checked on; empty: not fingerprinted, e.g. compiled code)."""
    return json.loads(RECORD_FILE.read_text())


def patch_table(
    entries: dict[str, dict[str, Any]],
    scopes: dict[str, str],
    kinds: dict[str, str],
    plugins: dict[str, str],
    retire: dict[str, str],
) -> str:
    """``docs/patches.md``: every replaced definition of the record, by plugin (``plugins``: patch name -> its
    plugin) and by when its patch acts (``kinds``: ``patches.SCOPES``; ``scopes``: patch name -> its scope, as
    ``doctor`` reports them), with the upstream change that would retire it (``retire``: the patches modules'
    ``RETIRE``). Written by ``scripts/check_patch_targets.py --docs``; ``tests/integration/test_fingerprints.py``
    keeps it in sync."""
    lines = [
        "# The patches of verl internals",
        "",
        "Generated from `verl_variance/integration/patch_record.json` by `python scripts/check_patch_targets.py "
        "--docs docs/patches.md`.",
        "Each row is one definition verl-variance replaces, with the versions and the body (fingerprint) it was "
        "checked on: a verl body that moved, or a verl version not checked, disables that patch whole ([checking.md]"
        "(checking.md)); the other packages' targets keep their version ranges. Registrations (a name added to a verl "
        "registry) are listed by `verl-variance doctor`. Two plugins: `verl_variance` (the methods, loaded in every "
        "run) and `verl_variance_cpu` (verl on CPU, loaded only where a run selects the CPU platform).",
    ]
    for plugin in sorted(set(plugins.values())):
        lines += ["", f"## {plugin}"]
        for kind, meaning in kinds.items():
            rows = sorted((where, entry) for where, entry in entries.items()
                          if plugins.get(entry["patch"]) == plugin
                          and scopes.get(entry["patch"], "").split(":", 1)[0] == kind)  # fmt: skip
            if not rows:
                continue
            lines += ["", f"### {kind}: {meaning}", "",
                      "| replaced | patch | when | checked on | fingerprint | retire when |",
                      "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
            for where, entry in rows:
                patch = entry["patch"]
                detail = scopes[patch].split(": ", 1)[1] if ": " in scopes[patch] else ""
                checked = f"{entry['distribution']} {', '.join(entry['checked_on']) or '(version range only)'}"
                found = ", ".join(f"`{value}`" for value in entry["fingerprints"]) or "none (no readable source)"
                lines.append(f"| `{where}` | `{patch}` | {detail} | {checked} | {found} | {retire[patch]} |")
    return "\n".join(lines) + "\n"
