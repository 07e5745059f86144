"""A verl older than 0.9.1 gets nothing and fails with a message naming the fix; a newer, unchecked one gets the
registrations, each patch of its internals off on its own, and the methods that need one refused before Ray."""

import json
import textwrap

import pytest

from tests.conftest import run_python
from verl_variance.integration import compat


def test_version_range():
    for good in ("0.9.1", "0.9.7", "0.10.0.dev0", "1.0.0"):
        assert compat.check_verl_version(good) == good
    for bad in ("0.8.0", "0.9.0"):
        with pytest.raises(compat.UnsupportedVerlVersion, match=r"pip install 'verl>=0.9.1'"):
            compat.check_verl_version(bad)


def _fake_verl(root, version: str) -> str:
    """A dist-info that makes importlib.metadata report verl ``version`` (the code imported is unchanged)."""
    info = root / f"verl-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: verl\nVersion: {version}\n")
    return str(root)


@pytest.fixture
def fake_old_verl(tmp_path):
    return _fake_verl(tmp_path, "0.8.0")


def test_unsupported_verl_is_not_patched_and_cpu_run_fails_clearly(fake_old_verl):
    code = textwrap.dedent(
        """
        import json
        import verl.utils.distributed, verl.workers.rollout.base
        from verl_variance.integration.compat import STATUS
        try:
            from verl.plugin.platform import get_platform
            get_platform()
            error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        print(json.dumps({"version_error": STATUS.version_error, "patches": STATUS.patches_applied, "error": error}))
        """
    )
    result = run_python(code, env={"PYTHONPATH": fake_old_verl, "VERL_PLATFORM": "cpu"})
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["patches"] == []
    assert "verl 0.8.0 is not supported" in report["version_error"]
    assert report["error"].startswith("UnsupportedVerlVersion: verl 0.8.0 is not supported")
    assert "pip install 'verl>=0.9.1'" in report["error"]


def test_strict_mode_raises_at_load(fake_old_verl):
    code = "import verl_variance.integration.plugin"
    result = run_python(
        code, env={"PYTHONPATH": fake_old_verl, "VERL_VARIANCE_STRICT": "1", "VERL_USE_EXTERNAL_PLUGINS": "none"}
    )
    assert result.returncode != 0
    assert "UnsupportedVerlVersion: verl 0.8.0 is not supported" in result.stderr


def test_an_unchecked_verl_gets_the_registrations_and_refuses_the_methods_whose_patches_are_off(tmp_path):
    """verl 0.10.0 (not a version any patch was checked on): the plugins load, the names they add through verl's
    public registries are there, every patch of a verl definition is off with one line, the early checks (a wrapper
    gated on its signature) still run, and a method that needs an off patch is refused there, naming it."""
    code = textwrap.dedent(
        """
        import json
        from omegaconf import OmegaConf
        import verl.trainer.ppo.core_algos as core_algos, verl.trainer.ppo.ray_trainer, verl.utils.config
        from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
        import verl.experimental.reward_loop.reward_loop
        from verl_variance.integration import checks
        from verl_variance.integration.compat import STATUS
        config = OmegaConf.create({"algorithm": {"kl_penalty": "variance_aware", "use_kl_in_reward": True},
                                   "actor_rollout_ref": {"actor": {}}, "reward": {}})
        try:
            checks.check_patches_of_features(config)
            refused = None
        except checks.ConfigError as exc:
            refused = str(exc)
        checks.check_patches_of_features(OmegaConf.create({"algorithm": {"kl_penalty": "kl"}}))  # no method: fine
        estimators = [name for name in ("grpo_variance_kl", "rvpo") if name in core_algos.ADV_ESTIMATOR_REGISTRY]
        print(json.dumps({"plugins": STATUS.plugins, "applied": STATUS.patches_applied,
                          "disabled": STATUS.patches_disabled, "errors": STATUS.errors, "refused": refused,
                          "estimators": estimators, "losses": "r2vpo" in core_algos.POLICY_LOSS_REGISTRY,
                          "manager": "ensemble" in REWARD_MANAGER}))
        """
    )
    result = run_python(code, env={"PYTHONPATH": _fake_verl(tmp_path, "0.10.0"), "VERL_PLATFORM": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["plugins"]["verl_variance"] == "loaded (always)" and report["errors"] == []
    assert report["estimators"] == ["grpo_variance_kl", "rvpo"] and report["losses"] and report["manager"]
    assert {"estimators_and_policy_losses", "ensemble_reward_manager", "early_config_checks"} <= set(report["applied"])
    assert {"variance_aware_kl_in_reward", "methods_legacy_trainer", "estimators_with_batch_fields",
            "ensemble_reward_all_logits"} <= set(report["disabled"])  # fmt: skip
    assert all("verl 0.10.0 is not a version this patch was checked on (0.9.1)" in why
               for why in report["disabled"].values())  # fmt: skip
    assert report["refused"].startswith("algorithm.kl_penalty=variance_aware needs verl-variance's patch "
                                        "variance_aware_kl_in_reward, which is off on this install: ")  # fmt: skip
    assert report["refused"].endswith("Fix: pip install 'verl==0.9.1', or check the patch against this version "
                                      "(python scripts/check_patch_targets.py) and record it (--write). "
                                      "`verl-variance doctor` lists every patch")  # fmt: skip


def test_a_pending_patch_on_an_unchecked_verl_is_known_off_before_its_module_imports(monkeypatch):
    """Before its target module is imported, a patch whose recorded verl targets were not checked on this verl is
    reported off (the early checks need no import of the trainers to refuse a method)."""
    monkeypatch.setattr(compat.STATUS, "verl_version", "0.10.0")
    monkeypatch.setattr(compat.STATUS, "patches_applied", [])
    assert compat.patch_off("estimators_with_batch_fields") == "verl 0.10.0 is not a version it was checked on (0.9.1)"
    assert compat.patch_off("estimators_and_policy_losses") is None  # a registration: no verl definition replaced
    monkeypatch.setattr(compat.STATUS, "verl_version", "0.9.1")
    assert compat.patch_off("estimators_with_batch_fields") is None
