"""The entry point loads in a fresh process (as in every Ray worker) and registers what it should."""

import importlib.util
import json
import os
import textwrap
import types

import pytest
import torch

from tests.conftest import free_port, run_python
from verl_variance.cpu import prestart
from verl_variance.cpu.launcher import CONFIG_DIR, CPU_PRESET, DRIVER_MODULE, main_ppo_command
from verl_variance.cpu.patches import content_order, dedupe_backend
from verl_variance.integration import compat

METHODS_PATCHES = {
    "early_config_checks",
    "sdpa_fallback",
    "valuehead_sdpa",
    "gpt2_kv_heads",
    "gpt2_lm_head_class",
    "worker_errors_recorded",
    "worker_errors_surfaced",
    "worker_errors_polled",
    "v1_advantage_inputs",
    "estimators_and_policy_losses",
    "estimators_with_batch_fields",
    "estimators_with_batch_fields_v1",
    "variance_kl_loss",
    "variance_kl_loss_distillation",
    "ensemble_reward_manager",
    "ensemble_reward_all_logits",
    "v1_served_reward_extras",
    "variance_aware_kl_in_reward",
    "methods_legacy_trainer",
    "methods_v1_trainer",
    "hacking_monitor_legacy_log",
}
"""The methods plugin's patches whose targets import here (every run)."""
CPU_PATCHES = {
    "cpu_device_from_config",
    "distributed_backend",
    "cpu_engines",
    "fsdp2_offload_pin_memory",
    "hf_rollout_adapter",
    "hf_rollout_replica",
    "v1_cpu_poll_interval",
    "v1_cpu_batch_order",
    "v1_cpu_validation_order",
    "task_runner_in_driver",
    "hf_rollout_shared_weights",
    "tq_init_in_background",
    "agent_loop_workers_prestarted",
    "hf_validation_requests_marked",
    "load_balancer_in_agent_loop",
    "reward_workers_in_agent_loop",
    "transformers_without_sklearn",
    "validation_bootstrap_vectorised",
    "text_only_processor_skipped",
}
"""The CPU plugin's (runs that select the CPU platform)."""
EXPECTED_PATCHES = METHODS_PATCHES | CPU_PATCHES

PROBE = textwrap.dedent(
    """
    import json, sys
    import verl
    assert "verl_variance.integration.plugin" in sys.modules, "plugin not loaded by verl"
    # the package itself must not import verl at top level
    import verl_variance, inspect
    assert "import verl" not in inspect.getsource(verl_variance)
    import verl.workers.rollout.base as rollout_base, verl.workers.rollout.replica as replica
    import verl.workers.engine.fsdp.transformer_impl, verl.utils.model, verl.models.transformers.monkey_patch
    import verl.trainer.ppo.v1.replay_buffer, verl.trainer.main_ppo, verl.workers.engine_workers
    import verl.experimental.reward_loop.reward_loop, verl.experimental.reward_loop.reward_manager
    from verl.plugin.platform import PlatformRegistry
    from verl.workers.engine.base import EngineRegistry
    from verl_variance.integration import compat, plugin
    plugin.register(); plugin.register()  # idempotent
    replicas = replica.RolloutReplicaRegistry
    print(json.dumps({
        "platforms": list(PlatformRegistry.registered_names()),
        "rollout_adapter": rollout_base._ROLLOUT_REGISTRY.get(("hf", "async")),
        "replica": "hf" in replicas._registry and replicas.get("hf").__name__,
        "cpu_engines": sorted(k for k in EngineRegistry._engines["language_model"]["fsdp2"] if k == "cpu"),
        "patches": compat.STATUS.patches_applied,
        "errors": compat.STATUS.errors,
        "registered": compat.STATUS.registered,
        "scopes": compat.STATUS.patch_scopes,
        "plugins": compat.STATUS.plugins,
        "patch_plugins": compat.STATUS.patch_plugins,
    }))
    """
)


def test_entry_point_registers_everything_in_a_fresh_process():
    result = run_python(PROBE, env={"VERL_PLATFORM": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    assert "cpu" in report["platforms"]
    assert report["rollout_adapter"] == "verl_variance.cpu.hf_rollout.HFServerAdapter"
    assert report["replica"] == "HFReplica"
    assert report["cpu_engines"] == ["cpu"]
    assert set(report["patches"]) == EXPECTED_PATCHES
    assert len(report["patches"]) == len(set(report["patches"])), "a patch was applied twice"
    # each patch says when it acts, and none acts on a GPU run that opts into nothing (doctor lists them)
    from verl_variance.integration.doctor import scope_lines
    from verl_variance.integration.patches import SCOPES

    # registered patches whose target is not installed here stay pending: vLLM's
    assert set(report["scopes"]) == EXPECTED_PATCHES | {"vllm_cpu_linear_weights_kept",
                                                        "vllm_models_without_model_attribute"}  # fmt: skip
    assert {scope.split(":")[0] for scope in report["scopes"].values()} <= set(SCOPES)
    assert scope_lines(report["scopes"])[-1] == "  acting on every GPU run: none"
    assert scope_lines({**report["scopes"], "a_new_patch": ""})[-1] == "  acting on every GPU run: a_new_patch"
    assert report["registered"] == {
        "platforms": ["cpu"],
        "rollouts": ["hf"],
        "kl_penalties": ["variance_aware"],
        "advantage_estimators": ["grpo_variance_kl", "rvpo", "gdpo (fed on the V1 trainer)"],
        "policy_losses": ["r2vpo"],
        "reward_managers": ["ensemble"],
    }
    assert report["plugins"] == {"verl_variance": "loaded (always)", "verl_variance_cpu": "loaded (VERL_PLATFORM=cpu)"}
    assert {name for name, plugin in report["patch_plugins"].items() if plugin == "verl_variance_cpu"} == (
        CPU_PATCHES | {"vllm_cpu_linear_weights_kept"})


@pytest.mark.parametrize("how", ["gpu_run", "methods_alone"])
def test_a_run_that_does_not_select_the_cpu_platform_gets_no_cpu_hook(how):
    """A GPU run (nothing selects the CPU platform) installs the methods' patches and not one of the CPU plugin's;
    ``VERL_USE_EXTERNAL_PLUGINS=verl_variance`` loads the methods alone (verl never imports the CPU plugin)."""
    env = {"VERL_PLATFORM": "", "VERL_USE_EXTERNAL_PLUGINS": "auto" if how == "gpu_run" else "verl_variance"}
    result = run_python(PROBE, env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    assert set(report["patches"]) == METHODS_PATCHES
    assert set(report["patch_plugins"].values()) == {"verl_variance"}
    assert "cpu" not in report["platforms"] and report["rollout_adapter"] is None and report["cpu_engines"] == []
    assert report["replica"] is False
    assert "rollouts" not in report["registered"] and "platforms" not in report["registered"]
    if how == "gpu_run":
        assert report["plugins"]["verl_variance_cpu"].startswith("not loaded: nothing selects the CPU platform")
    else:
        assert report["plugins"] == {"verl_variance": "loaded (always)"}  # verl never imported the CPU plugin


def test_the_cpu_plugin_is_selected_by_what_selects_the_cpu_platform():
    from verl_variance.cpu.plugin import selection

    assert selection([], {"VERL_PLATFORM": "cpu"}) == "VERL_PLATFORM=cpu"
    assert selection(["trainer.device=cpu"], {}) == "trainer.device=cpu on the command line"
    assert selection(["++trainer.device=cpu", "x=1"], {"VERL_PLATFORM": ""}) == "trainer.device=cpu on the command line"
    assert selection([f"--config-name={CPU_PRESET}"], {}) == f"the CPU preset ({CPU_PRESET})"
    assert selection(["-cn", CPU_PRESET], {}) == selection(["--config-name", CPU_PRESET], {}) == selection(
        [f"--config-name={CPU_PRESET}"], {})
    for argv, environ in (([], {}), (["trainer.device=cuda"], {"VERL_PLATFORM": "npu"}), (["--config-name=x"], {}),
                          (["--config-name"], {})):
        assert selection(argv, environ) is None


def test_cpu_platform_is_opt_in():
    """Installed but unused, verl's own device detection is unchanged (no VERL_PLATFORM, no trainer.device=cpu)."""
    code = "from verl.plugin.platform.platform_manager import _detect_platform_name; print(_detect_platform_name())"
    with_plugin = run_python(code, env={"VERL_PLATFORM": ""})
    without = run_python(code, env={"VERL_PLATFORM": "", "VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert with_plugin.stdout.split()[-1] == without.stdout.split()[-1]
    assert run_python(code, env={"VERL_PLATFORM": "cpu"}).stdout.split()[-1] == "cpu"


def test_cpu_platform_device_module():
    code = textwrap.dedent(
        """
        import torch
        from verl.utils.device import get_device_name, get_torch_device, get_nccl_backend, get_device_id
        mod = get_torch_device()
        mod.empty_cache(); mod.synchronize(); mod.manual_seed(1)
        free, total = mod.mem_get_info()
        assert 0 < free <= total
        assert mod.memory_allocated() == 0 and mod.max_memory_reserved() == 0
        print(get_device_name(), get_nccl_backend(), torch.empty(2, device=get_device_id()).device)
        """
    )
    result = run_python(code, env={"VERL_PLATFORM": "cpu"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-3:] == ["cpu", "gloo", "cpu"]


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("cpu:gloo,cpu:gloo", "cpu:gloo"),
        ("cpu:gloo,cuda:nccl", "cpu:gloo,cuda:nccl"),
        ("nccl", "nccl"),
        ("cpu:gloo,cpu:nccl,cuda:nccl", "cpu:gloo,cuda:nccl"),
    ],
)
def test_dedupe_backend(backend, expected):
    assert dedupe_backend(backend) == expected


def test_content_order_depends_on_the_samples_not_on_their_arrival():
    prompts = [[5, 1], [3], [5, 1], [3, 9]]
    responses = [[2], [7, 7], [1, 4], [0]]
    order = content_order(prompts, responses)
    expected = [([3], [7, 7]), ([3, 9], [0]), ([5, 1], [1, 4]), ([5, 1], [2])]
    assert [(prompts[i], responses[i]) for i in order] == expected
    shuffled = [2, 0, 3, 1]  # the same batch arriving in another order sorts to the same samples
    again = content_order([prompts[i] for i in shuffled], [responses[i] for i in shuffled])
    assert [shuffled[i] for i in again] == order


def test_gloo_process_group_initialises_through_verl_on_cpu():
    code = textwrap.dedent(
        """
        import os
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["TEST_PORT"], RANK="0", WORLD_SIZE="1")
        import torch.distributed as dist
        from verl.utils.distributed import initialize_global_process_group_ray
        initialize_global_process_group_ray()
        print(dist.get_backend())
        """
    )
    result = run_python(code, env={"VERL_PLATFORM": "cpu", "TEST_PORT": str(free_port())})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "cpu:gloo"


def test_check_signature_rejects_a_changed_api():
    def target(config, use_reference_policy):
        return None

    with pytest.raises(compat.VerlVarianceError, match=r"signature \['config', 'use_reference_policy'\]"):
        compat.check_signature(target, ["config", "use_reference_policy", "use_critic"], "verl.x.target")


class Target:
    """Stands in for a verl class that a patch wraps."""

    def step(self, batch, metrics, prefix="x"):
        return (batch, metrics, prefix)


def _passthrough(original):
    def step(self, batch, *args, **kwargs):
        return ("patched", *original(self, batch, *args, **kwargs))

    return step


def test_patch_replaces_records_and_is_idempotent(monkeypatch):
    monkeypatch.setattr(compat, "STATUS", compat.PluginStatus())
    monkeypatch.setattr(compat, "check_record", lambda *args: None)  # the gate: test_fingerprints.py
    owner = type("Owner", (Target,), {"__module__": "verl.fake"})
    compat.patch(owner, "step")(_passthrough)
    assert owner().step(1, 2) == ("patched", 1, 2, "x")
    compat.patch(owner, "step")(_passthrough)  # a second install keeps the first: not patched twice
    assert owner().step(1, 2) == ("patched", 1, 2, "x")
    assert compat.STATUS.patched_attributes == ["verl.fake.Owner.step"]
    assert compat.ORIGINALS[getattr(owner.step, compat.PATCHED_MARK)] is Target.step


@pytest.mark.parametrize(
    ("replacement", "options", "match"),
    [  # a replacement that names the original's parameters must name all of them, in order
        (lambda original: lambda self, batch, metrics: None, {}, r"\['self', 'batch', 'metrics', 'prefix'\], expected"),
        # one that passes the rest on (*args) must agree on the ones it names
        (lambda original: lambda self, data, *args: None, {}, r"expected \['self', 'data', '...'\]"),
        (_passthrough, {"requires": ["poll_interval"]}, r"expected .*\(with poll_interval\)"),
        (_passthrough, {"versions": ("pytest", compat.SpecifierSet("<1"))}, r"pytest \S+ is outside .* pip install"),
    ],
)
def test_patch_refuses_an_attribute_it_was_not_written_for(monkeypatch, replacement, options, match):
    monkeypatch.setattr(compat, "STATUS", compat.PluginStatus())
    monkeypatch.setattr(compat, "check_record", lambda *args: None)  # the gate: test_fingerprints.py
    owner = type("Owner", (Target,), {})
    with pytest.raises(compat.VerlVarianceError, match=match):
        compat.patch(owner, "step", **options)(replacement)
    assert owner.step is Target.step and compat.STATUS.patched_attributes == []


def test_register_entry_adds_to_a_private_mapping_once(monkeypatch):
    monkeypatch.setattr(compat, "STATUS", compat.PluginStatus())
    module = types.ModuleType("verl.fake_registry")
    module.REGISTRY = {"old": 1}
    compat.register_entry(module, "REGISTRY", "new", 2)
    compat.register_entry(module, "REGISTRY", "old", 3)  # an entry already there is kept
    assert module.REGISTRY == {"old": 1, "new": 2}
    assert compat.STATUS.patched_attributes == ["verl.fake_registry.REGISTRY['new']"]
    module.REGISTRY = None
    with pytest.raises(compat.VerlVarianceError, match="REGISTRY is not a mapping"):
        compat.register_entry(module, "REGISTRY", "new", 2)


def test_every_replaced_attribute_is_listed_by_doctor(cpu_probe):
    report = cpu_probe  # both plugins
    attributes = report["verl_variance"]["patched_attributes"]
    for where in ("verl.trainer.ppo.v1.trainer_base.PPOTrainer._balance_batch",
                  "transformers.modeling_utils.PreTrainedModel._check_and_adjust_attn_implementation",
                  "verl.workers.engine_workers.ppo_loss", "verl.utils.config.validate_config"):  # fmt: skip
        assert where in attributes
    assert len(attributes) == len(set(attributes)) >= 20


def test_when_imported_runs_once_and_records_failures(monkeypatch):
    monkeypatch.setattr(compat, "STATUS", compat.PluginStatus())
    calls = []
    compat.when_imported("json", "test_patch", lambda module: calls.append(module.__name__))
    compat.when_imported("json", "test_patch", lambda module: calls.append("again"))
    assert calls == ["json"] and compat.STATUS.patches_applied == ["test_patch"]

    def broken(module):
        raise RuntimeError("boom")

    compat.when_imported("textwrap", "broken_patch", broken)
    assert compat.STATUS.patches_applied == ["test_patch"]
    assert compat.STATUS.errors[0].startswith("broken_patch: RuntimeError: boom")
    with pytest.raises(compat.VerlVarianceError, match="'broken_patch' is not active"):
        compat.require("broken_patch")


class _ActorClass:
    """What ``@ray.remote`` makes of a TaskRunner: ``.remote()`` would start an actor process."""

    def __init__(self, runs: list) -> None:
        runs_here = runs

        class TaskRunner:
            def run(self, config) -> None:
                runs_here.append((os.getpid(), os.environ.get("VV_TEST_JOB_VAR"), torch.get_num_threads()))

        self.__ray_actor_class__ = TaskRunner

    def remote(self):
        raise AssertionError("a TaskRunner actor was started")


class _ActorStarter:
    """What ``ray.remote(cls)`` makes in ``prestart``: ``.options(name=...).remote()`` records the start."""

    def __init__(self, cls: type, started: list) -> None:
        self.cls, self.started = cls, started

    def options(self, name: str) -> types.SimpleNamespace:
        def remote():
            self.started.append((self.cls, name))
            return ("started", name)

        return types.SimpleNamespace(remote=remote)


@pytest.mark.parametrize("in_driver", [True, False])
def test_the_task_runner_runs_in_the_driver_when_the_config_says_so(monkeypatch, in_driver):
    import verl.trainer.main_ppo as main_ppo
    from omegaconf import OmegaConf

    monkeypatch.setattr(main_ppo.ray, "is_initialized", lambda: True)  # Ray is up: run_ppo goes straight to the runner
    monkeypatch.setattr(main_ppo.ray, "put", lambda value: ("ref", value))
    monkeypatch.setattr(main_ppo.ray, "get", lambda ref: ref[1])
    monkeypatch.setattr(os, "environ", os.environ.copy())  # the runner sets the job's variables: keep them here
    os.environ["VV_TEST_JOB_VAR"] = "unset"
    monkeypatch.setattr(torch, "set_num_threads", lambda n: runs.append(("threads", n)))
    assert OmegaConf.load(CONFIG_DIR / f"{CPU_PRESET}.yaml").ray_kwargs.task_runner_in_driver  # the preset's choice
    started: list = []
    monkeypatch.setattr(prestart.ray, "remote", lambda cls: _ActorStarter(cls, started))
    config = OmegaConf.create({  # what run_ppo reads
        "actor_rollout_ref": {"rollout": {"full_determinism": False, "agent": {"num_workers": 2}}},
        "reward": {"reward_model": {"enable": False, "rollout": {"full_determinism": False}}},
        "trainer": {"logger": ["console"]},
        "global_profiler": {"tool": None},
        "ray_kwargs": {"task_runner_in_driver": in_driver,
                       "ray_init": {"runtime_env": {"env_vars": {"VV_TEST_JOB_VAR": "from the job's runtime_env"}}}},
    })  # fmt: skip
    runs: list = []
    if not in_driver:  # stock behaviour: verl starts the actor
        with pytest.raises(AssertionError, match="a TaskRunner actor was started"):
            main_ppo.run_ppo(config, _ActorClass(runs))
        assert runs == []
        return
    main_ppo.run_ppo(config, _ActorClass(runs))
    assert runs == [("threads", 1), (os.getpid(), "from the job's runtime_env", torch.get_num_threads())]
    # the run's agent-loop workers were started first (of verl's class for this runner: not V1 -> AgentLoopWorker)
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    assert [(cls.__name__, issubclass(cls, AgentLoopWorker)) for cls, _ in started] == [("AgentLoopWorker", True)] * 2
    assert [name.rsplit("_", 1)[0] for _, name in started] == ["agent_loop_worker_0", "agent_loop_worker_1"]
    assert prestart.take(AgentLoopWorker, 2) == [("started", name) for _, name in started]
    assert not prestart.TQ_INIT.requested  # only the V1 runner calls tq.init


def test_verl_variance_ppo_runs_verls_main_through_the_driver_module():
    command = main_ppo_command(["trainer.total_training_steps=1"], cpu=True)
    assert command[1:3] == ["-m", DRIVER_MODULE] and command[-1] == "trainer.total_training_steps=1"
    source = importlib.util.find_spec(DRIVER_MODULE).loader.get_source(DRIVER_MODULE)
    assert 'if __name__ == "__main__":\n    from verl.trainer.main_ppo import main\n\n    main()' in source
    from verl_variance.cpu import launcher
    from verl_variance.integration.checks import MAIN_PPO_DRIVER

    assert getattr(launcher, MAIN_PPO_DRIVER) is True  # run as __main__, the early checks know it is main_ppo's driver


def test_verls_colocated_worker_class_still_pickles_with_every_patch():
    """Ray pickles verl's WorkerDict class by value, Ray's tracing wrapper of each method with it (a copy of the
    method's attributes): nothing a patch attaches to a worker method may pull an unpicklable object in."""
    code = textwrap.dedent(
        """
        import ray, ray.cloudpickle as cloudpickle
        import verl.workers.engine_workers as engine_workers
        from verl.single_controller.ray.base import RayClassWithInitArgs, create_colocated_worker_cls
        from verl_variance.integration import compat
        assert "verl.workers.engine_workers.ActorRolloutRefWorker.update_weights" in compat.STATUS.patched_attributes
        worker = RayClassWithInitArgs(cls=ray.remote(engine_workers.ActorRolloutRefWorker), config=None, role="actor")
        cloudpickle.dumps(create_colocated_worker_cls({"actor": worker}).cls.__ray_metadata__.modified_class)
        print("pickled")
        """
    )
    result = run_python(code, env={"VERL_PLATFORM": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "pickled"


def test_cpu_runs_give_transfer_queue_its_own_capped_thread_count(monkeypatch, caplog):
    """On the CPU platform ``verl-variance ppo`` sets TQ_NUM_THREADS to what TransferQueue would cap its default
    8 at (the physical cores): the same threads, without TransferQueue's warning on every put and get. A user's
    own value is kept; a GPU run's environment is left alone."""
    import logging

    import psutil
    import torch
    from transfer_queue.utils.common import limit_pytorch_auto_parallel_threads

    from verl_variance.cpu import launcher

    envs = []
    monkeypatch.setattr(launcher.subprocess, "call", lambda command, env: envs.append(env) or 0)
    launcher.run_ppo([], device="cpu", env={})
    launcher.run_ppo([], device="cpu", env={"TQ_NUM_THREADS": "3"})
    launcher.run_ppo([], device="gpu", env={})
    threads = int(envs[0]["TQ_NUM_THREADS"])
    assert threads == min(8, psutil.cpu_count(logical=False))
    assert envs[1]["TQ_NUM_THREADS"] == "3" and "TQ_NUM_THREADS" not in envs[2]
    seen = {}
    for target in (8, threads):
        with caplog.at_level(logging.WARNING, logger="transfer_queue.utils.common"):
            caplog.clear()
            with limit_pytorch_auto_parallel_threads(target):
                seen[target] = torch.get_num_threads()
            warned = any("should not exceed" in record.getMessage() for record in caplog.records)
        assert warned is (target > psutil.cpu_count(logical=False))
    assert seen[8] == seen[threads] == threads
