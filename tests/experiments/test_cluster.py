"""The study's runs as Ray Jobs on a cluster: environment, entrypoint, the checks before any run.

On a real two-node cluster (take-over after a dispatcher restart, both nodes used, the local launcher's numbers, a run
too big for every node, a failing run's log): ``test_demo.py``'s end-to-end test.
"""

from __future__ import annotations

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
