"""The study's runs as Ray Jobs on a cluster: environment, entrypoint, the checks before any run.

On a real two-node cluster (take-over after a dispatcher restart, both nodes used, the local launcher's numbers, a run
too big for every node, a failing run's log): ``test_demo.py``'s end-to-end test.
"""

from __future__ import annotations

import json
import shlex

import pytest

from tests.conftest import free_port
from verl_variance.cli import main as cli_main
from verl_variance.experiments.cluster import (
    ClusterError,
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


@pytest.mark.parametrize(
    ("flag", "value", "reason"),
    [("--run-cpus", "0", "'0' is not a number > 0"), ("--run-gpus", "-1", "'-1' is not a number >= 0"),
     ("--run-gpus", "nan", "'nan' is not a finite number")],  # fmt: skip
)
def test_a_run_size_that_is_not_a_number_of_cpus_or_gpus_is_one_line(tmp_path, capsys, flag, value, reason):
    argv = ["study", "run", "--recipe-dir", "recipes/imdb_gpt2", "--study-dir", str(tmp_path / "s"), "--heads", "0",
            "--seeds", "0", "--steps", "1", flag, value]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"argument {flag}: {reason}" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()  # refused before the study folder is made


class _FakeJobs:
    """What ``RayJobs`` asks of a ``JobSubmissionClient``, over a fixed list of jobs (no cluster)."""

    def __init__(self, address: str):
        self.jobs, self.submitted = [], []

    def list_jobs(self):
        return self.jobs

    def get_job_info(self, job: str):
        return next(j for j in self.jobs if j.submission_id == job)

    def get_job_logs(self, job: str) -> str:
        return f"log of {job}\n"

    async def tail_job_logs(self, job: str):
        for line in ("line 1\n", "line 2\n"):
            yield line

    def submit_job(self, **kwargs):
        self.submitted.append(kwargs)


def _job(submission_id: str, status: str, run_id: str, study_dir, start_time: int):
    from types import SimpleNamespace

    metadata = {"verl_variance_study": str(study_dir), "verl_variance_run": run_id}
    return SimpleNamespace(submission_id=submission_id, status=status, metadata=metadata, start_time=start_time,
                           driver_node_id="node-b", driver_exit_code=0 if status == "SUCCEEDED" else 1)  # fmt: skip


def test_a_job_that_succeeded_with_no_dispatcher_watching_is_taken_over_not_rerun(tmp_path, monkeypatch):
    import ray.job_submission

    from verl_variance.experiments.cluster import RayJobs

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", _FakeJobs)
    monkeypatch.setattr(RayJobs, "nodes", lambda self: [{"node_id": "a", "ip": "x", "resources": {"CPU": 2.0}}])
    jobs = RayJobs("http://head:8265", tmp_path, RunResources())
    run_dir = tmp_path / "policies" / "vanilla" / "head0_seed0"
    run_dir.mkdir(parents=True)
    jobs.client.jobs = [
        _job("old-ok", "SUCCEEDED", "vanilla/head0_seed0", tmp_path, start_time=1),
        _job("new-failed", "FAILED", "vanilla/head0_seed0", tmp_path, start_time=2),  # a later try that failed
        _job("other-run", "RUNNING", "vanilla/head1_seed0", tmp_path, start_time=3),
        _job("other-study", "RUNNING", "vanilla/head0_seed0", tmp_path / "elsewhere", start_time=4),
    ]
    assert jobs.earlier_job("vanilla/head0_seed0", run_dir) is None  # succeeded, but its metrics are not there
    (run_dir / "metrics.jsonl").write_text("{}\n")
    assert jobs.earlier_job("vanilla/head0_seed0", run_dir) == ("old-ok", "SUCCEEDED")
    assert jobs.earlier_job("vanilla/head1_seed0", run_dir) == ("other-run", "RUNNING")  # live: always taken over
    lines = []
    assert jobs.execute("vanilla/head0_seed0", run_dir, prepare=lambda: pytest.fail("resubmitted"),
                        on_line=lines.append) == 0  # fmt: skip
    assert jobs.client.submitted == [] and "taking over Ray job old-ok (SUCCEEDED)" in lines[0]
    assert lines[1:] == ["line 1\n", "line 2\n"]
    assert (run_dir / "run.log").read_text() == "===== Ray job old-ok (SUCCEEDED) on node node-b =====\nlog of old-ok\n"
    record = json.loads((run_dir / "cluster_job.json").read_text())
    assert record == {"submission_id": "old-ok", "status": "SUCCEEDED", "node_id": "node-b",
                      "address": "http://head:8265"}  # fmt: skip
