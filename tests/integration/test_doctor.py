"""``verl-variance doctor`` reports what the plugin registered, and what verl swallowed."""

import os
import subprocess
import sys

import pytest

from verl_variance.integration.doctor import problems


def _doctor(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_extra)
    return subprocess.run(
        [sys.executable, "-m", "verl_variance.cli", "doctor"], capture_output=True, text=True, env=env, timeout=300
    )


def test_doctor_reports_registrations(cpu_probe):
    report = cpu_probe
    assert problems(report) == []
    assert report["plugins"]["verl_variance"]["loaded"] is True
    assert report["verl"] == "0.9.1" or report["verl"].startswith("0.9.")
    assert "cpu" in report["registries"]["platforms"]
    assert "hf" in report["registries"]["rollouts"]
    assert {"distributed_backend", "hf_rollout_adapter", "cpu_engines"} <= set(
        report["verl_variance"]["patches_applied"]
    )
    assert set(report["verl_variance"]["patches_pending"]) == {  # vLLM is not installed here
        "vllm_cpu_linear_weights_kept", "vllm_models_without_model_attribute"}


def test_doctor_prints_the_patches_by_plugin_and_why_the_cpu_plugin_is_off_on_a_gpu_run():
    gpu_run = _doctor({"VERL_PLATFORM": ""})
    assert gpu_run.returncode == 0, gpu_run.stdout + gpu_run.stderr
    lines = gpu_run.stdout.splitlines()
    state = "not loaded: nothing selects the CPU platform (VERL_PLATFORM=cpu, trainer.device=cpu)"
    assert f"  verl_variance_cpu  {state} (verl_variance.cpu.plugin)" in lines
    assert f"  verl_variance_cpu: {state}; 0 patches" in lines
    from verl_variance.integration.patches import RETIRE

    assert f"  verl_variance: loaded (always); {len(RETIRE)} patches" in lines  # each registered patch (22)
    assert len(RETIRE) == 22
    assert "        vllm_models_without_model_attribute [not reached]: a vLLM model verl's launch patches would " \
           "raise on: GPT-2, classifiers" in lines
    assert "hf_rollout_adapter" not in gpu_run.stdout and lines.count("  acting on every GPU run: none") == 1


def test_doctor_cli_ok_on_cpu_platform():
    result = _doctor({"VERL_PLATFORM": "cpu"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: plugin loaded" in result.stdout
    assert "device         cpu" in result.stdout
    lines = result.stdout.splitlines()  # the CPU plugin's patches in the table by plugin
    assert "  verl_variance_cpu: loaded (VERL_PLATFORM=cpu); 20 patches" in lines
    assert "        hf_rollout_adapter" in lines


@pytest.fixture
def broken_plugin(tmp_path):
    """A second verl plugin whose import raises: verl itself would only log it at DEBUG."""
    info = tmp_path / "brokenplug-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[verl.plugins]\nbrokenplug = brokenplug_mod\n")
    (tmp_path / "brokenplug_mod.py").write_text("raise ImportError('deliberately broken for the test')\n")
    return str(tmp_path)


def test_doctor_shows_a_swallowed_plugin_error_with_traceback(broken_plugin):
    result = _doctor({"PYTHONPATH": broken_plugin})
    assert result.returncode == 1
    assert "brokenplug         NOT LOADED" in result.stdout
    assert "Traceback" in result.stdout and "ImportError: deliberately broken for the test" in result.stdout
    assert "verl_variance      loaded (always)" in result.stdout


def test_doctor_fails_when_plugins_are_disabled():
    result = _doctor({"VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert result.returncode == 1
    assert "verl_variance      NOT LOADED" in result.stdout
    assert "VERL_USE_EXTERNAL_PLUGINS=none" in result.stdout
