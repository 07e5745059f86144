"""The demo study: preference pairs, calibration, overrides, and the quick scale end to end through verl."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import assert_all_finite, local_ray_cluster
from verl_variance.cli import main as cli_main
from verl_variance.experiments import demo
from verl_variance.experiments.cluster import JOB_FILE
from verl_variance.experiments.preferences import bradley_terry_labels, build_preference_pairs, pair_indices


def test_bradley_terry_labels_follow_the_sigmoid_of_the_score_gap():
    gaps = np.repeat([-2.0, 0.0, 1.0], 20_000)
    wins = bradley_terry_labels(gaps, np.zeros_like(gaps), seed=0)
    for gap, observed in zip([-2.0, 0.0, 1.0], wins.reshape(3, -1).mean(axis=1), strict=True):
        assert observed == pytest.approx(1 / (1 + math.exp(-gap)), abs=0.01)
    assert np.array_equal(wins, bradley_terry_labels(gaps, np.zeros_like(gaps), seed=0))  # seeded


def test_pairs_keep_the_judge_scores_and_the_full_texts():
    def judge(texts):
        return np.array([10.0 if "good" in text else -10.0 for text in texts])

    rows = build_preference_pairs(["A good film", "It was bad"], ["A bad film", "It was good"], judge, seed=0)
    assert [(row["chosen"], row["rejected"]) for row in rows] == [  # sigma(20) ~ 1
        ("A good film", "A bad film"),
        ("It was good", "It was bad"),
    ]
    assert all(row["prompt"] == "" and (row["judge_chosen"], row["judge_rejected"]) == (10.0, -10.0) for row in rows)
    with pytest.raises(ValueError, match="2 first texts for 1 second texts"):
        build_preference_pairs(["a", "b"], ["c"], judge, seed=0)


def test_pair_indices_use_each_text_once_then_evenly():
    first, second = pair_indices(10, 5, seed=0)
    assert sorted([*first, *second]) == list(range(10))  # enough texts: each once
    first, second = pair_indices(7, 20, seed=1)
    assert first.shape == second.shape == (20,) and (first != second).all()
    assert np.bincount(np.concatenate([first, second]), minlength=7).min() >= 40 // 7  # about equally often
    assert all(np.array_equal(x, y) for x, y in zip(pair_indices(7, 20, seed=1), (first, second), strict=True))
    with pytest.raises(ValueError, match="at least 2 texts"):
        pair_indices(1, 1, seed=0)


def test_policy_overrides_differ_only_in_the_kl_switch(tmp_path):
    paths = {"data_dir": tmp_path / "data", "policy": tmp_path / "policy", "reward_model": tmp_path / "rm"}
    paths["critic"] = tmp_path / "critic"
    scale = demo.SCALES["quick"]
    vanilla = demo.policy_overrides(scale, "vanilla", 2, 1, 0.05, paths, tmp_path / "run")
    aware = demo.policy_overrides(scale, "variance_aware", 2, 1, 0.05, paths, tmp_path / "run")
    extra = [item for item in aware if item not in vanilla and not item.startswith("trainer.experiment_name=")]
    assert extra == [
        "algorithm.kl_penalty=variance_aware",
        "++variance_kl.weighting=std",
        "++variance_kl.normalize=True",
    ]
    assert "++ensemble_reward.aggregator_params.index=2" in vanilla and "data.seed=1" in vanilla
    assert "data.max_response_length=10" in vanilla  # the paper's responses: at most 10 tokens
    assert "++hacking_monitor.enable=true" in vanilla  # both methods' runs are watched (warn: training unchanged)


def test_bad_input_fails_clearly(tmp_path, monkeypatch, capsys):
    assert cli_main(["demo", "--scale", "huge", "--workdir", str(tmp_path)]) == 2
    expected = "unknown scale 'huge' for --study variance_kl; valid: ['default', 'long', 'paper', 'quick']"
    assert expected in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "sklearn", None)  # what `import sklearn` sees when it is not installed
    assert cli_main(["demo", "--scale", "quick", "--workdir", str(tmp_path), "--assets-dir", str(tmp_path)]) == 2
    assert "pip install 'verl-variance[demo]'" in capsys.readouterr().err


def test_a_reward_model_trained_otherwise_in_the_workdir_is_one_line(tmp_path, monkeypatch):
    """run_train_rm refuses a workdir whose reward model was trained with other settings; the demo says so as its
    own error (the CLI prints it without a traceback), naming the fix."""
    from verl_variance.reward_model import train

    def refuse(config):
        raise ValueError(f"{config.output_dir}/stage1 holds a stage-1 model trained differently; pass --overwrite")

    monkeypatch.setattr(train, "run_train_rm", refuse)
    monkeypatch.setattr(demo, "reward_backbone", lambda policy, layers, folder: folder)
    with pytest.raises(demo.DemoError, match=r"reward model stage: .*/reward_model/stage1 holds a stage-1 model"):
        demo.train_reward_model(demo.SCALES["quick"], tmp_path, {"policy": tmp_path}, tmp_path / "pairs.jsonl")


def test_precision_flag_reaches_the_scale(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda *args, **overrides: seen.update(overrides))
    assert cli_main(["demo", "--precision", "fp32", "--workdir", str(tmp_path)]) == 0
    assert seen == {"precision": "fp32"}
    seen.clear()
    assert cli_main(["demo", "--workdir", str(tmp_path)]) == 0
    assert seen == {}  # the scale's own (default: auto)


def test_cluster_heads_and_parallel_flags_reach_the_demo(tmp_path, monkeypatch, capsys):
    seen = {}

    def run_demo(scale, workdir, assets, address, cpus, **overrides):
        seen.update(overrides, address=address, cpus=cpus)

    monkeypatch.setattr(demo, "run_demo", run_demo)
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    flags = ["--heads", "bootstrap", "--parallel", "6", "--run-cpus", "2"]
    assert cli_main(["demo", *flags, "--workdir", str(tmp_path)]) == 0
    assert seen == {"heads": "bootstrap", "parallel_runs": 6, "address": "http://head:8265", "cpus": 2.0}
    assert cli_main(["demo", "--ray-address", "", "--workdir", str(tmp_path)]) == 0
    assert seen["address"] == ""  # an explicit empty address: subprocesses here
    for flags in (["--heads", "init"], ["--parallel", "2"], ["--ray-address", "http://h:8265"]):
        assert cli_main(["demo", "--study", "rvpo", *flags, "--workdir", str(tmp_path)]) == 2
        assert f"{flags[0]} are for --study variance_kl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["demo", "--run-cpus", "0"])
    assert "'0' is not a number > 0" in capsys.readouterr().err


def test_set_changes_any_field_of_the_scale_typed_and_checked(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda scale, workdir, assets, address, cpus, **overrides: seen.update(
        overrides, scale=scale))  # fmt: skip
    settings = ["--set", "actor_lr=4e-4", "rm_stage2.num_epochs=2", "beta=0.2", "steps=5"]
    assert cli_main(["demo", "--workdir", str(tmp_path), "--steps", "3", *settings]) == 0
    default = demo.SCALES["default"]
    assert seen == {"scale": "default", "actor_lr": 4e-4, "steps": 3,  # beta=0.2 is the default's: not an override
                    "rm_stage2": {**default.rm_stage2, "num_epochs": 2}}  # fmt: skip
    assert isinstance(seen["actor_lr"], float)  # typed as the field is, not the string
    for bad, message in ((["lr=1"], "unknown key(s) ['lr'] in --set; valid keys: ['name', 'policy'"),
                         (["steps=abc"], "--set: steps: Value 'abc' of type 'str' could not be converted to Integer"),
                         (["beta"], "--set takes KEY=VALUE pairs (e.g. --set beta=0.1 actor_lr=4e-4), got 'beta'")):
        assert cli_main(["demo", "--workdir", str(tmp_path), "--set", *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert cli_main(["demo", "--study", "rvpo", "--set", "beta=0.1", "--workdir", str(tmp_path)]) == 2
    assert "--set are for --study variance_kl" in capsys.readouterr().err


def test_bootstrap_heads_reach_stage_2(tmp_path, monkeypatch):
    from verl_variance.reward_model import train

    configs = []
    monkeypatch.setattr(train, "run_train_rm", configs.append)
    paths = {"policy": tmp_path / "policy"}
    for heads, bootstrap in (("init", False), ("bootstrap", True)):
        scale = replace(demo.SCALES["quick"], heads=heads)
        demo.train_reward_model(scale, tmp_path, paths, tmp_path / "pairs.jsonl")
        assert configs[-1].stage2.bootstrap is bootstrap and configs[-1].stage2.num_heads == scale.num_heads
    with pytest.raises(demo.DemoError, match="heads='bagging'; valid: init, bootstrap"):
        demo.train_reward_model(replace(demo.SCALES["quick"], heads="bagging"), tmp_path, paths, tmp_path / "p")


def test_the_long_scale_has_the_policies_its_question_needs():
    from verl_variance.experiments import spread

    scale = demo.SCALES["long"]
    assert sorted(demo.demo_grid(scale)) == [(h, s) for h in range(4) for s in range(4)]  # a full heads x seeds grid
    assert scale.policies_per_method == 16 >= spread.policies_for_power(0.2)  # 80% power at the paper's ratio 0.2
    assert scale.steps * scale.train_batch_size <= scale.train_prompts  # no prompt trained on twice
    assert (scale.beta, scale.steps, scale.eval_samples) == (0.2, 12, 18)  # the protocol benchmarks/RESULTS.md ran
    assert demo.SCALES["default"].beta == scale.beta  # the default uses the long study's protocol, shorter


def test_first_seed_moves_every_policy_to_other_seeds(tmp_path, monkeypatch, capsys):
    scale = demo.SCALES["default"]  # K = 4 heads, 4 policies per method
    assert demo.demo_grid(scale) == [(h, 0) for h in range(4)]
    moved = demo.demo_grid(replace(scale, first_seed=5, policies_per_method=6))
    assert moved == [(0, 5), (1, 5), (2, 5), (3, 5), (0, 6), (1, 6)]  # the pilot (first entry) moves too
    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda *args, **overrides: seen.update(overrides))
    assert cli_main(["demo", "--first-seed", "3", "--workdir", str(tmp_path)]) == 0
    assert seen == {"first_seed": 3}
    assert cli_main(["demo", "--study", "rvpo", "--first-seed", "3", "--workdir", str(tmp_path)]) == 2
    assert "--first-seed is for --study variance_kl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["demo", "--first-seed", "-1"])
    assert "expected an integer >= 0, got -1" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.xdist_group("several_runs")  # never beside another test that runs several verl runs at once
def test_quick_scale_end_to_end_and_resume(tmp_path):
    """The README's demo at --scale quick: every training run through verl, a complete report, resumable; then the
    same study through a two-node Ray cluster."""
    workdir, assets = tmp_path / "demo", tmp_path / "assets"
    report = demo.run_demo("quick", workdir, str(assets))
    saved = json.loads((workdir / "report.json").read_text())
    assert saved["table"].keys() == {"reference", "vanilla", "variance_aware"}

    assert_all_finite(saved)
    for method in ("vanilla", "variance_aware"):
        row = saved["table"][method]
        assert row["n_policies"] == 2
        for key in ("judge_reward", "gain", "p_worse", "final_kl", "final_proxy_reward"):
            assert row[key]["value"] is not None, f"{method}.{key}"
    assert saved["kl_match"]["matched"], saved["kl_match"]  # within the quick scale's promised tolerance
    assert saved["settings"]["calibration"]["pilot_final_kl"].keys() == {"vanilla", "variance_aware"}
    assert saved["settings"]["judge"]["heldout_accuracy"] >= 0.85
    for stage in ("assets", "preference_pairs", "reward_model", "policy_vanilla_0", "policy_variance_aware_0"):
        timing = saved["timings"][stage]
        # PSS <= RSS in each sample; psutil reads a process's two a moment apart, so allow a growing tree 2%
        assert timing["seconds"] > 0 and 0 < timing["peak_pss_gb"] <= 1.02 * timing["peak_rss_sum_gb"]
    for name in ("report.md", "fig7_judge_reward.png", "fig10_kl.png", "fig11_proxy_reward.png"):
        assert (workdir / name).stat().st_size > 0
    ratio = saved["variance_ratio"]  # the claim's number, with its interval (two policies per method here)
    assert ratio["n"] == {"variance_aware": 2, "vanilla": 2} and ratio["ci95"][0] <= ratio["ratio"] <= ratio["ci95"][1]
    noise = saved["evaluation_noise"]  # the reference validated with 4 samples per prompt: 4 evaluations
    assert noise["repeats"] == 4 and noise["n_prompts"] == demo.SCALES["quick"].eval_prompts and noise["floor"] > 0
    policy_runs = sorted((workdir / "policies").glob("*/*/result.json"))
    assert len(policy_runs) == 4
    validation = json.loads((policy_runs[0].parent / "judge_tfidf.json").read_text())
    assert len(validation["judge_final"]) == demo.SCALES["quick"].eval_prompts
    assert len(validation["proxy_reference"]) == len(validation["judge_reference"])
    agreement = saved["proxy_judge_agreement"]  # the reference is validated once, by the first run (vanilla)
    assert len(agreement["per_run"]) == 4 and -1 <= agreement["per_run"][0] <= 1
    assert agreement["per_run"][1:] == [None, None, None]
    assert [len(list((path.parent / "validation").glob("*.jsonl"))) for path in policy_runs] == [2, 1, 1, 1]
    stamps = [path.stat().st_mtime_ns for path in policy_runs]
    again = demo.run_demo("quick", workdir, str(assets))  # resumes: nothing is retrained
    assert [path.stat().st_mtime_ns for path in policy_runs] == stamps
    assert again["table"]["vanilla"]["judge_reward"] == report["table"]["vanilla"]["judge_reward"]
    spread = saved["spread"]  # what drives the spread: read off the same runs
    assert spread["decomposition"] == {"vanilla": None, "variance_aware": None}  # 2 policies: no heads x seeds grid
    assert spread["paired"] is None  # a paired ratio needs 4 cells
    assert spread["disagreement"]["reference"] > 0 and spread["power"]["n"] == 2
    for method in ("vanilla", "variance_aware"):  # the heads' σ² over training: verl's rollout dumps, re-scored
        assert spread["disagreement"][method]["training_first"] > 0
    aware_run = workdir / "policies" / "variance_aware" / "head1_seed0"
    aware, rescored = (json.loads((aware_run / name).read_text()) for name in ("result.json", "ensemble_training.json"))
    logged = [aware["steps"][str(step)]["variance_kl/reward_variance/mean"] for step, _ in rescored["per_step"]]
    assert [step for step, _ in rescored["per_step"]] == list(range(1, 11))
    assert [value for _, value in rescored["per_step"]] == pytest.approx(logged, rel=1e-4)  # what the run logged
    for run in policy_runs:  # every run watched by the hacking monitor: the heads' σ² it logged, the re-scoring's
        steps = json.loads(run.read_text())["steps"]
        per_step = json.loads((run.parent / "ensemble_training.json").read_text())["per_step"]
        monitored = [steps[str(step)]["hacking/reward_variance"] for step, _ in per_step]
        assert monitored == pytest.approx([value for _, value in per_step], rel=1e-4)
    for method in ("vanilla", "variance_aware"):
        assert spread["kl_give_back"]["per_method"][method]["penalty"] is not None
    assert (workdir / "fig_spread.png").stat().st_size > 0
    _same_study_on_a_two_node_cluster(tmp_path, assets, saved)


def _same_study_on_a_two_node_cluster(tmp_path, assets, local_report):
    """The quick study's pilots again, as Ray Jobs on a two-node cluster (``--ray-address``), the dispatcher killed once
    they run and started again: both nodes used, no run trained twice, the local launcher's numbers for each run.
    Before that, on the same cluster: a run too big for every node, and a failing run's log."""
    from ray.job_submission import JobSubmissionClient

    workdir = tmp_path / "demo_cluster"
    with local_ray_cluster(tmp_path) as cluster:
        argv = [sys.executable, "-m", "verl_variance.cli", "demo", "--scale", "quick", "--workdir", str(workdir),
                "--assets-dir", str(assets), "--ray-address", cluster["address"], "--policies", "1"]  # fmt: skip
        too_big = subprocess.run([*argv, "--run-cpus", "4"], capture_output=True, text=True, timeout=300)
        assert too_big.returncode == 2 and len(too_big.stderr.strip().splitlines()) == 1, too_big.stderr
        assert "no node of the Ray cluster" in too_big.stderr and "can hold one run (4 CPU;" in too_big.stderr
        assert not (workdir / "stages.log").exists()  # refused before any stage
        _a_failing_run_is_reported_with_its_job_log(cluster["address"], tmp_path / "failing")

        first_log = tmp_path / "dispatcher_1.log"
        with open(first_log, "w") as log:
            dispatcher = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 600
            while not list(workdir.glob(f"policies/*/*/{JOB_FILE}")):
                assert dispatcher.poll() is None and time.monotonic() < deadline, first_log.read_text()[-3000:]
                time.sleep(1)
            dispatcher.kill()  # its submitted runs go on
            dispatcher.wait()
        client = JobSubmissionClient(cluster["address"])
        ours = lambda: [job for job in client.list_jobs()  # noqa: E731 (this study's jobs, not the failing run's)
                        if job.metadata["verl_variance_study"] == str(workdir.resolve())]  # fmt: skip
        running = {job.metadata["verl_variance_run"] for job in ours()}
        assert running and all(str(job.status) in ("PENDING", "RUNNING") for job in ours())
        second = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "taking over Ray job" in second.stdout  # the killed dispatcher's runs were not started again
        jobs = [job.metadata["verl_variance_run"] for job in ours()]
        assert sorted(jobs) == sorted(set(jobs)) and len(jobs) == 2 and running <= set(jobs)  # one job per run
        records = [json.loads(path.read_text()) for path in workdir.glob(f"policies/*/*/{JOB_FILE}")]
        assert {record["status"] for record in records} == {"SUCCEEDED"}
        assert {record["node_id"] for record in records} == set(cluster["nodes"].values())  # both nodes ran runs
    report = json.loads((workdir / "report.json").read_text())
    pilots = [policy for policy in local_report["policies"] if policy["policy"] == "head0_seed0"]
    assert report["policies"] == pilots  # every number of each run, as the local launcher's run of it
    local_give_back = local_report["spread"]["kl_give_back"]["per_policy"]
    assert report["spread"]["kl_give_back"]["per_policy"] == {key: local_give_back[key] for key in
                                                               ("vanilla/head0_seed0", "variance_aware/head0_seed0")}


_FAILING_RUN = "import sys; print('step:1 - about to fail', flush=True); sys.exit(3)"


def _a_failing_run_is_reported_with_its_job_log(address, study_dir):
    from verl_variance.experiments import study
    from verl_variance.experiments.cluster import RayJobs, RunResources

    def launch(spec, beta, run_dir):
        return [sys.executable, "-c", _FAILING_RUN], {"VERL_FILE_LOGGER_PATH": str(run_dir / "metrics.jsonl")}

    executor = RayJobs(address, study_dir, RunResources())
    with pytest.raises(study.StudyError, match=r"run vanilla/head0_seed0 failed \(exit 3\); log: .*run.log") as error:
        study.run_policy(study.PolicySpec("vanilla", 0, 0), 0.05, study_dir, launch, 1, "[test]", executor)
    assert "step:1 - about to fail" in str(error.value) and "(FAILED) on node" in str(error.value)


@pytest.mark.parametrize("gpus", [0, 2])
def test_policy_overrides_compose_on_the_config_each_device_uses(tmp_path, gpus):
    """CPU: our preset with the hf rollout; GPU: verl's stock config, which names no rollout and expects 8 GPUs."""
    from pathlib import Path

    import verl
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from verl_variance.core.config import EnsembleRewardConfig, VarianceKLConfig
    from verl_variance.cpu.launcher import CONFIG_DIR, CPU_PRESET

    paths = {name: tmp_path / name for name in ("data_dir", "policy", "reward_model", "critic")}
    scale = demo.SCALES["paper" if gpus else "default"]
    overrides = demo.policy_overrides(scale, "variance_aware", 3, 0, 0.05, paths, tmp_path / "run", gpus=gpus)
    config_dir, name = (Path(verl.__file__).parent / "trainer" / "config", "ppo_trainer") if gpus else (
        CONFIG_DIR, CPU_PRESET)  # fmt: skip
    with initialize_config_dir(str(config_dir), version_base=None):
        config = OmegaConf.to_container(compose(name, overrides=overrides), resolve=True)  # no ??? left
    rollout = config["actor_rollout_ref"]["rollout"]
    assert rollout["name"] == ("vllm" if gpus else "hf")
    assert config["trainer"]["n_gpus_per_node"] == (gpus or 1) and rollout["tensor_model_parallel_size"] == 1
    assert config["data"]["max_response_length"] == 10 and config["data"]["train_batch_size"] == scale.train_batch_size
    assert config["reward"]["reward_manager"]["name"] == "ensemble"
    ensemble = EnsembleRewardConfig.from_trainer_config(config)
    assert (ensemble.model_path, ensemble.aggregator, ensemble.aggregator_params) == (
        str(paths["reward_model"]),
        "member",
        {"index": 3},
    )
    assert config["algorithm"]["kl_penalty"] == "variance_aware"
    assert VarianceKLConfig.from_trainer_config(config).weighting == "std"
    if not gpus:  # the precision this CPU resolves to: actor, reference and sampler alike
        precision = demo.cpu_precision(scale.precision)
        for role in ("actor", "ref"):
            assert config["actor_rollout_ref"][role]["fsdp_config"]["mixed_precision"]["param_dtype"] == precision
        assert rollout["dtype"] == {"bf16": "bfloat16", "fp32": "float32"}[precision]


def test_precision_auto_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    import torch

    for amx, avx512_bf16, expected in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert demo.cpu_precision("auto") == expected
        assert demo.cpu_precision("fp32") == "fp32" and demo.cpu_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision='fp16'; valid: fp32, bf16, auto"):
        demo.cpu_precision("fp16")
    assert demo.precision_overrides("fp32") == []
    assert "actor_rollout_ref.rollout.dtype=bfloat16" in demo.precision_overrides("bf16")


def test_gpu_device_without_a_gpu_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert demo.gpu_count("cpu") == 0
    with pytest.raises(demo.DemoError, match="torch sees no GPU.*--device cpu"):
        demo.gpu_count("gpu")
