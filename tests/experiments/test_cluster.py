"""The study's runs as Ray Jobs on a cluster: environment, entrypoint, the checks before any run, take-over on resume.

The quick demo through a two-node cluster, against the local launcher, is ``test_demo.py``'s end-to-end test.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, local_ray_cluster
from verl_variance.cli import main as cli_main
from verl_variance.experiments import study
from verl_variance.experiments.cluster import (
    JOB_FILE,
    ClusterError,
    RayJobs,
    RunResources,
    executor_for,
    forwarded_environment,
    job_entrypoint,
)


def test_a_cluster_run_gets_what_the_launcher_set_and_the_variables_its_scripts_read():
    base = {"PATH": "/usr/bin", "HOME": "/root", "MODEL_PATH": "/m", "OTHER": "x", "VERL_USE_EXTERNAL_PLUGINS": "all",
            "CUDA_VISIBLE_DEVICES": "0"}  # fmt: skip
    env = {**base, "HEAD": "2", "VERL_FILE_LOGGER_PATH": "/s/metrics.jsonl", "PATH": "/venv/bin:/usr/bin"}
    forwarded = forwarded_environment(env, base, passthrough={"MODEL_PATH", "DATA_DIR"})
    assert forwarded == {"HEAD": "2", "MODEL_PATH": "/m", "PATH": "/venv/bin:/usr/bin",
                         "VERL_FILE_LOGGER_PATH": "/s/metrics.jsonl", "VERL_USE_EXTERNAL_PLUGINS": "all"}  # fmt: skip


def test_the_job_entrypoint_sets_the_environment_and_a_private_ray_instance():
    command = ["bash", "/r/run gpt2.sh", "trainer.logger=['console','file']"]
    words = shlex.split(job_entrypoint(command, {"HEAD": "1", "NOTE": "a b"}))
    assert words == ["env", "HEAD=1", "NOTE=a b", "RAY_ADDRESS=local", *command]


def test_no_address_runs_here_and_bad_resources_are_refused(tmp_path):
    assert type(executor_for(None, tmp_path, RunResources())).__name__ == "LocalProcesses"
    assert type(executor_for("", tmp_path, RunResources())).__name__ == "LocalProcesses"
    with pytest.raises(ClusterError, match="a run reserves > 0 CPUs and >= 0 GPUs, got 0 CPUs"):
        RunResources(cpus=0)


def test_an_unreachable_cluster_is_one_line_before_anything_starts(tmp_path, capsys):
    address = f"http://127.0.0.1:{free_port()}"
    workdir = tmp_path / "demo"
    code = cli_main(["demo", "--scale", "quick", "--workdir", str(workdir), "--ray-address", address])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"cannot reach a Ray cluster at RAY_ADDRESS={address}" in err and "unset RAY_ADDRESS" in err
    assert list(workdir.iterdir()) == []  # no stage started


@pytest.mark.parametrize("command", ["demo", "study"])
def test_a_study_folder_that_is_a_file_or_unwritable_is_one_line(tmp_path, capsys, command):
    a_file = tmp_path / "study.txt"
    a_file.write_text("")
    for folder, reason in ((a_file, "is a file: give a folder"), (a_file / "sub", "(Not a directory)")):
        if command == "demo":
            argv = ["demo", "--scale", "quick", "--workdir", str(folder)]
        else:
            argv = ["study", "run", "--recipe-dir", "recipes/imdb_gpt2", "--study-dir", str(folder), "--heads", "0",
                    "--seeds", "0", "--steps", "1"]  # fmt: skip
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and reason in err and str(folder) in err, err


_FAKE_RUN = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    run_dir = Path(sys.argv[1])
    while not (run_dir / "go").exists():  # the test holds the run until it says go
        time.sleep(0.2)
    record = {"step": 1, "data": {"critic/score/mean": 0.5, "node": os.environ.get("RAY_ADDRESS")}}
    Path(os.environ["VERL_FILE_LOGGER_PATH"]).write_text(json.dumps(record) + "\\n")
    print("step:1 - critic/score/mean:0.5", flush=True)
    sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
    """
)


def _fake_launcher(spec: study.PolicySpec, beta: float, run_dir: Path) -> tuple[list[str], dict[str, str]]:
    (run_dir / "fake_run.py").write_text(_FAKE_RUN)
    env = {"VERL_FILE_LOGGER_PATH": str(run_dir / "metrics.jsonl"), "FAKE_EXIT": "1" if spec.seed == 9 else "0"}
    return [sys.executable, str(run_dir / "fake_run.py"), str(run_dir)], env


def _dispatch(address: str, study_dir: Path, seed: int) -> subprocess.Popen:
    """A dispatcher process running one fake policy run on the cluster (killed by the test)."""
    code = (
        "import sys; sys.path.insert(0, '.')\n"
        "from pathlib import Path\n"
        "from tests.experiments.test_cluster import _fake_launcher\n"
        "from verl_variance.experiments import study\n"
        "from verl_variance.experiments.cluster import RayJobs, RunResources\n"
        f"executor = RayJobs({address!r}, Path({str(study_dir)!r}), RunResources())\n"
        f"study.run_policy(study.PolicySpec('vanilla', 0, {seed}), 0.05, Path({str(study_dir)!r}), _fake_launcher, 1, "
        "'[test]', executor)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def _jobs_of(executor: RayJobs, run_dir_name: str) -> list:
    return [job for job in executor.client.list_jobs()
            if run_dir_name in (job.metadata or {}).get("verl_variance_run", "")]  # fmt: skip


@pytest.mark.slow
def test_on_a_two_node_cluster_a_run_outlives_its_dispatcher_and_bad_requests_fail_early(tmp_path):
    """A killed dispatcher's run is taken over by the next one, not run twice; a failed job is reported with its
    log; a run too big for every node, before any run."""
    with local_ray_cluster(tmp_path) as cluster:
        address, study_dir = cluster["address"], tmp_path / "study"
        with pytest.raises(ClusterError, match=r"no node of the Ray cluster .* can hold one run \(4 CPU; the nodes: "):
            RayJobs(address, study_dir, RunResources(cpus=4))
        executor = RayJobs(address, study_dir, RunResources())

        spec = study.PolicySpec("vanilla", 0, 0)
        run_dir = spec.run_dir(study_dir)
        dispatcher = _dispatch(address, study_dir, seed=0)
        _wait_for(lambda: (run_dir / JOB_FILE).is_file())
        dispatcher.kill()  # the job goes on, held at "go"
        dispatcher.wait()
        (run_jobs,) = _jobs_of(executor, spec.name)
        assert str(run_jobs.status) in ("PENDING", "RUNNING")
        (run_dir / "go").write_text("")
        result = study.run_policy(spec, 0.05, study_dir, _fake_launcher, 1, "[test]", executor)
        assert result["steps"] == {1: {"critic/score/mean": 0.5, "node": "local"}}  # its own Ray instance
        (job,) = _jobs_of(executor, spec.name)  # taken over, not submitted again
        assert str(job.status) == "SUCCEEDED"
        record = json.loads((run_dir / JOB_FILE).read_text())
        assert record["submission_id"] == job.submission_id and record["node_id"] in cluster["nodes"].values()
        log = (run_dir / "run.log").read_text()
        assert f"Ray job {job.submission_id} (SUCCEEDED)" in log and "step:1 - critic/score/mean:0.5" in log

        failing = study.PolicySpec("vanilla", 0, 9)  # FAKE_EXIT=1
        failing.run_dir(study_dir).mkdir(parents=True)
        (failing.run_dir(study_dir) / "go").write_text("")
        with pytest.raises(study.StudyError, match=r"run vanilla/head0_seed9 failed \(exit 1\); log: .*run.log"):
            study.run_policy(failing, 0.05, study_dir, _fake_launcher, 1, "[test]", executor)
