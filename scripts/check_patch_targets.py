"""Check every definition verl-variance patches against what is installed, or against a verl source tree.

    python scripts/check_patch_targets.py                        # the installed packages against patch_record.json
    python scripts/check_patch_targets.py --verl-tree ~/src/verl # a verl checkout (e.g. main) against the record
    python scripts/check_patch_targets.py --write                # record the installed definitions and versions

One line per replaced definition: ``same``, ``moved`` (its fingerprint differs: read the patch against the new
body, then record it with ``--write``), ``missing``, ``unchecked`` (no readable source) or ``not installed``. Exit
code 1 when any moved or is missing. Not in CI (a verl tree needs the network); ``tests/integration/
test_fingerprints.py`` checks the record against the installed packages.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from verl_variance.integration import compat, fingerprints


def installed_targets() -> dict[str, Any]:
    """``module.Qualname.name`` -> the installed definition, of every patch whose target module imports here (the
    plugin's hooks, run with ``compat.RECORDING`` on)."""
    compat.RECORDING = {}
    os.environ["VERL_PLATFORM"] = "cpu"  # the CPU plugin's patches too
    import verl  # noqa: F401  (loads the plugins, which register their hooks)

    for name, module in sorted(compat.STATUS.patch_targets.items()):
        needs = compat.STATUS.patch_needs.get(name)
        if needs is None or importlib.util.find_spec(needs) is not None:
            importlib.import_module(module)
    return dict(compat.RECORDING)


def distribution_of(obj: Any) -> str:
    top_level = fingerprints.defined_at(obj)[0].split(".")[0]
    return importlib.metadata.packages_distributions()[top_level][0]


def write_record(targets: dict[str, Any], record: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The record with each target's installed version and fingerprint added (kept: what earlier versions gave).
    Entries of patches that do not apply here (vLLM's, without vLLM) are kept as they are: remove a patch's entry
    by hand when the patch goes."""
    updated = dict(record)
    for where, original in sorted(targets.items()):
        module, qualname = fingerprints.defined_at(original)
        distribution = distribution_of(original)
        entry = record.get(where, {"distribution": distribution, "checked_on": [], "fingerprints": []})
        entry.update(distribution=distribution, module=module, qualname=qualname,
                     patch=compat.STATUS.attribute_patches[where])  # fmt: skip
        version, found = importlib.metadata.version(distribution), fingerprints.fingerprint(original)
        entry["checked_on"] = sorted(set(entry["checked_on"]) | {version})
        if found is not None and found not in entry["fingerprints"]:
            entry["fingerprints"] = [*entry["fingerprints"], found]
        updated[where] = entry
    return dict(sorted(updated.items()))


def tree_fingerprint(tree: Path, module: str, qualname: str) -> str | None:
    """The fingerprint of ``module.qualname`` in a source tree (None when the file or the definition is gone)."""
    base = tree.joinpath(*module.split("."))
    path = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)
    node = None if path is None else fingerprints.find_definition(ast.parse(path.read_text()), qualname)
    return None if node is None else fingerprints.definition_fingerprint(node)


def patch_page(record: dict[str, dict[str, Any]]) -> str:
    """``docs/patches.md`` from the record and the registered patches (both plugins: ``installed_targets``)."""
    from verl_variance.cpu import patches as cpu_patches
    from verl_variance.integration import patches

    status = compat.STATUS
    retire = {**patches.RETIRE, **cpu_patches.RETIRE}
    return fingerprints.patch_table(record, status.patch_scopes, patches.SCOPES, status.patch_plugins, retire)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verl-tree", type=Path, help="a verl source checkout (its verl/ package is read, not run)")
    parser.add_argument("--write", action="store_true", help="record the installed definitions and versions")
    parser.add_argument("--docs", type=Path, help="write the patch table page (docs/patches.md) from the record")
    args = parser.parse_args(argv)
    record = json.loads(fingerprints.RECORD_FILE.read_text()) if fingerprints.RECORD_FILE.is_file() else {}
    if args.write:
        updated = write_record(installed_targets(), record)
        fingerprints.RECORD_FILE.write_text(json.dumps(updated, indent=1) + "\n")
        print(f"recorded {len(updated)} patched definitions in {fingerprints.RECORD_FILE}")
        return 0
    if args.docs:
        installed_targets()  # the plugins' hooks registered: their scopes and plugins
        args.docs.write_text(patch_page(record))
        print(f"wrote {args.docs}")
        return 0
    targets = {} if args.verl_tree else installed_targets()
    bad = 0
    for where, entry in record.items():
        if args.verl_tree:
            if entry["distribution"] != "verl":
                continue
            found = tree_fingerprint(args.verl_tree, entry["module"], entry["qualname"])
        elif where in targets:
            found = fingerprints.fingerprint(targets[where])
        else:
            print(f"not installed  {where}")
            continue
        if not entry["fingerprints"]:
            state = "unchecked"  # its source cannot be read (compiled code): signature and version checks only
        else:
            state = "missing" if found is None else "same" if found in entry["fingerprints"] else "moved"
        bad += state in ("missing", "moved")
        print(f"{state:<13}  {where}" + (f"  ({found})" if state == "moved" else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
