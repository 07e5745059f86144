"""Bad input fails early (in the driver, before Ray starts) with a message naming the fix."""

import re
import subprocess
import sys

import pytest

from verl_variance.integration.checks import ConfigError, check_model_path


def test_verls_vllm_launch_patches_skip_the_models_they_would_raise_on(monkeypatch):
    """verl patches every vLLM model it launches through model.model / model.language_model and compute_logits;
    vLLM's GPT-2 has model.transformer and its GPT-2 classifier no compute_logits: those are left alone, verl's
    own patches run on every other model."""
    import types

    from verl_variance.integration import compat, fallbacks

    monkeypatch.setattr(compat, "check_record", lambda *args: None)  # stand-ins, not verl's definitions

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
    fallbacks.patch_vllm_model_patches(module)

    def compute_logits():
        return None

    gpt2_lm = types.SimpleNamespace(name="gpt2", transformer=object(), compute_logits=compute_logits)
    gpt2_classifier = types.SimpleNamespace(name="gpt2_cls", transformer=object())
    qwen2_lm = types.SimpleNamespace(name="qwen2", model=object(), compute_logits=compute_logits)
    for model in (gpt2_lm, gpt2_classifier, qwen2_lm):
        module.monkey_patch_compute_logits(model, 512)
        module.patch_vllm_moe_model_weight_loader(model)
    assert calls == [("logits", "compute_logits", 512), ("logits", "compute_logits", 512), ("moe", "qwen2")]


def test_missing_local_model_path_is_rejected(tmp_path):
    with pytest.raises(
        ConfigError, match=r"actor_rollout_ref.model.path='.*nope' does not exist.*verl-variance tiny-model"
    ):
        check_model_path(str(tmp_path / "nope"), "actor_rollout_ref.model.path")
    with pytest.raises(ConfigError, match="is not set"):
        check_model_path(None, "critic.model.path")
    check_model_path(str(tmp_path), "actor_rollout_ref.model.path")
    check_model_path("Qwen/Qwen2.5-0.5B-Instruct", "actor_rollout_ref.model.path")  # a hub id is verl's business


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
        ("monitor_without_heads", "hacking_monitor.enable=true reads each sample's K head scores (reward_head_<k>), "
                                  "which reward_manager 'naive' does not give"),
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
    if case == "monitor_without_heads":
        overrides += ["+hacking_monitor.enable=true", "reward.custom_reward_function.path=null"]
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
    from verl_variance.cpu import checks as cpu_checks
    from verl_variance.integration.checks import check_served_reward_model as methods_checks

    def check_served_reward_model(config) -> None:  # both plugins' checks, as check_trainer_config runs them
        methods_checks(config)
        cpu_checks.check_served_reward_model_on_cpu(config)

    monkeypatch.setattr(cpu_checks, "vllm_cpu_installed", lambda: False)
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


def test_the_cpu_backends_rollout_is_refused_where_its_plugin_is_not_loaded(monkeypatch):
    """A GPU run (no CPU platform selected, so no ``hf`` rollout registered) naming ``rollout.name=hf``: one line
    before Ray instead of verl's "Unknown rollout mode: hf" after it; with the CPU plugin loaded it passes."""
    from omegaconf import OmegaConf

    from verl_variance.integration import checks, compat

    config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"name": "vllm"}},
                               "reward": {"reward_model": {"enable": True, "rollout": {"name": "hf"}}}})  # fmt: skip
    monkeypatch.setattr(compat.STATUS, "registered", {"kl_penalties": ["variance_aware"]})
    with pytest.raises(ConfigError, match=r"^reward.reward_model.rollout.name=hf is verl-variance's CPU backend, which "
                       r"this run does not select: select the CPU platform \(VERL_PLATFORM=cpu, or trainer.device=cpu "
                       r"on the command line\), or set reward.reward_model.rollout.name=vllm$"):  # fmt: skip
        checks.check_cpu_backend_rollouts(config)
    with pytest.raises(ConfigError, match=r"^actor_rollout_ref.rollout.name=hf is verl-variance's CPU backend"):
        checks.check_cpu_backend_rollouts(OmegaConf.merge(config, {"actor_rollout_ref": {"rollout": {"name": "hf"}}}))
    checks.check_cpu_backend_rollouts(OmegaConf.merge(config, {"reward": {"reward_model": {"enable": False}}}))
    monkeypatch.setattr(compat.STATUS, "registered", {"rollouts": ["hf"]})  # the CPU plugin loaded
    checks.check_cpu_backend_rollouts(config)
