"""Each patch is gated on the definition and the verl version it was checked on (``patch_record.json``)."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from verl_variance.integration import compat, fingerprints
from verl_variance.integration.doctor import problems, render

ROOT = Path(__file__).resolve().parents[2]
TARGET = '''
def first(x):
    """A docstring
        whose lines are indented."""
    return x + 1  # a comment


class Owner:
    def second(self, x):
        return x * 2
'''


def _script():
    spec = importlib.util.spec_from_file_location("check_patch_targets", ROOT / "scripts" / "check_patch_targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fresh_status(monkeypatch):
    """A private plugin state: hooks, records and replacements of this test only."""
    for name, value in (("STATUS", compat.PluginStatus()), ("ORIGINALS", {}), ("_OWNERS", {}), ("_hooks", {})):
        monkeypatch.setattr(compat, name, value)
    return compat.STATUS


@pytest.fixture
def target(tmp_path, monkeypatch):
    """A module ``gated_target`` to patch, and a record of its two definitions as they are (verl 0.9.1)."""
    (tmp_path / "gated_target.py").write_text(TARGET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gated_target", raising=False)
    tree = ast.parse(TARGET)
    record = {
        f"gated_target.{where}": {
            "distribution": "verl", "checked_on": ["0.9.1"], "module": "gated_target", "qualname": where,
            "fingerprints": [fingerprints.definition_fingerprint(fingerprints.find_definition(tree, where))],
        }
        for where in ("first", "Owner.second")
    }  # fmt: skip
    monkeypatch.setattr(fingerprints, "record", lambda: record)
    return tmp_path / "gated_target.py", record


def _hook(module) -> None:
    compat.patch(module, "first")(lambda original: lambda x: original(x) + 100)
    compat.patch(module.Owner, "second")(lambda original: lambda self, x: original(self, x) + 100)


def _install(status) -> object:
    compat.when_imported("gated_target", "gated", _hook)
    import gated_target

    return gated_target


def test_a_recorded_definition_is_patched(fresh_status, target):
    module = _install(fresh_status)
    assert module.first(1) == 102 and module.Owner().second(1) == 102
    assert fresh_status.patches_applied == ["gated"] and fresh_status.patches_disabled == {}


def test_a_changed_body_disables_the_whole_patch_and_says_why(fresh_status, target):
    path, _ = target
    path.write_text(TARGET.replace("return x * 2", "return x * 3"))  # the second target moved; the first did not
    module = _install(fresh_status)
    assert module.first(1) == 2 and module.Owner().second(1) == 3  # both left as verl has them: no half patch
    assert fresh_status.patched_attributes == [] and "gated" not in fresh_status.patches_applied
    why = fresh_status.patches_disabled["gated"]
    assert why.startswith("gated_target.Owner.second changed in verl 0.9.1 (definition fingerprint ")
    assert "python scripts/check_patch_targets.py" in why
    with pytest.raises(compat.PatchDisabled, match="patch 'gated' is disabled: gated_target.Owner.second changed"):
        compat.require("gated")
    report = {"plugins": {"verl_variance": {"loaded": True, "module": "x"}}, "import_errors": {},
              "verl_variance": {"registered": {}, "patches_applied": [], "patches_pending": [],
                                "patched_attributes": [],
                                "patches_disabled": fresh_status.patches_disabled}}  # fmt: skip
    assert problems(report) == [f"patch gated disabled: {why}"]  # one doctor line, no traceback
    assert f"  - patch gated disabled: {why}" in render(report)


def test_comments_and_formatting_do_not_move_a_fingerprint_but_code_does(fresh_status, target):
    path, _ = target
    path.write_text(TARGET.replace("# a comment", "# another comment").replace("return x + 1", "return (x\n    + 1)"))
    assert _install(fresh_status).first(1) == 102


def test_a_moved_target_of_another_package_is_reported_not_enforced(fresh_status, target):
    path, record = target
    for entry in record.values():
        entry["distribution"] = "pytest"  # not verl: its version range is patch()'s `versions`
    path.write_text(TARGET.replace("return x * 2", "return x * 3"))
    module = _install(fresh_status)
    assert module.first(1) == 102 and module.Owner().second(1) == 103
    assert fresh_status.patches_disabled == {}


def test_a_verl_version_the_patch_was_not_checked_on_disables_it(fresh_status, target, monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.9.2" if name == "verl" else real(name))
    module = _install(fresh_status)
    assert module.first(1) == 2
    assert fresh_status.patches_disabled["gated"].startswith(
        "gated_target.first: verl 0.9.2 is not a version this patch was checked on (0.9.1). "
        "Fix: pip install 'verl==0.9.1', or check the patch against this version"
    )


def test_an_unrecorded_target_is_an_error_not_a_silent_patch(fresh_status, target, monkeypatch):
    monkeypatch.setattr(fingerprints, "record", lambda: {})
    module = _install(fresh_status)
    assert module.first(1) == 2 and fresh_status.patches_disabled == {}
    assert fresh_status.errors[0].startswith("gated: VerlVarianceError: gated_target.first has no entry in")


def test_the_record_covers_every_patch_applied_here_holds_on_this_verl_and_its_page_is_current(cpu_probe):
    from verl_variance.cpu import patches as cpu_patches
    from verl_variance.integration import patches

    report = cpu_probe  # both plugins' patches
    assert problems(report) == []  # nothing disabled on the installed verl
    ours = report["verl_variance"]
    patched = {where for where in ours["patched_attributes"] if "[" not in where}  # not registries
    record = fingerprints.record()
    assert patched <= set(record)
    assert {where: record[where]["patch"] for where in patched} == {where: ours["attribute_patches"][where]
                                                                    for where in patched}  # fmt: skip
    page = (ROOT / "docs" / "patches.md").read_text()
    retire = {**patches.RETIRE, **cpu_patches.RETIRE}
    assert set(retire) == set(ours["patch_scopes"])  # every patch says what upstream change would retire it
    assert page == fingerprints.patch_table(record, ours["patch_scopes"], patches.SCOPES, ours["patch_plugins"],
                                            retire), (
        "docs/patches.md is stale: python scripts/check_patch_targets.py --docs docs/patches.md")
    assert set(record) - patched == {  # vLLM is not installed here: its patches are recorded, not reached
        "verl.workers.rollout.vllm_rollout.utils.monkey_patch_compute_logits",
        "verl.workers.rollout.vllm_rollout.utils.patch_vllm_moe_model_weight_loader",
        "vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm",
    }


def test_the_script_reads_a_source_tree_as_the_gate_reads_installed_code(tmp_path):
    """The script's tree reading (``ast`` over the files) gives every recorded verl definition the fingerprint the
    gate computes from the installed objects (``inspect``): checked here on the installed verl as the tree."""
    script = _script()
    site = Path(sysconfig.get_paths()["purelib"])
    verl_entries = {where: entry for where, entry in fingerprints.record().items() if entry["distribution"] == "verl"}
    assert len(verl_entries) >= 30
    for where, entry in verl_entries.items():
        assert script.tree_fingerprint(site, entry["module"], entry["qualname"]) in entry["fingerprints"], where
    moved = tmp_path / "verl" / "utils"
    moved.mkdir(parents=True)
    (moved / "config.py").write_text(textwrap.dedent("""
        def validate_config(config, use_reference_policy, use_critic):
            return None
    """))
    assert script.tree_fingerprint(tmp_path, "verl.utils.config", "validate_config") not in (
        fingerprints.record()["verl.utils.config.validate_config"]["fingerprints"])
    assert script.tree_fingerprint(tmp_path, "verl.utils.model", "load_valuehead_model") is None  # file gone
