"""The command line under torchrun: `demo` trains one run over the ranks, `doctor` refuses."""

import json
import math
import os
import subprocess
import sys

import pytest

from dltips.cli import main

TIMEOUT_S = 120


def torchrun(args, cwd):
    """`torchrun --standalone --nproc_per_node=2 ARGS` (torchrun's own entry point), on one thread per process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=cwd)


@pytest.mark.slow
def test_demo_under_torchrun_trains_one_run_over_two_ranks_and_rank_0_alone_reports(tmp_path):
    from dltips.demos.digits import digits_task

    epochs = 2
    proc = torchrun(["-m", "dltips", "demo", "digits", "--epochs", str(epochs), "--json", "report.json"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.listdir(tmp_path) == ["report.json"]  # written once, atomically, and nothing else
    data = json.loads((tmp_path / "report.json").read_text())
    training = data["training"]
    assert training["world_size"] == 2
    # each rank trains on its half of the data, so an epoch takes half the optimizer steps of one process
    task = digits_task()
    one_process = epochs * (len(task.train) // task.batch_size)
    two_ranks = epochs * (math.ceil(len(task.train) / 2) // task.batch_size)
    assert training["steps"] == two_ranks == 18 and one_process == 36
    assert [row["step"] for row in training["history"]] == [9, 18]
    assert training["history"][-1]["valid_accuracy"] > 0.6
    assert {f["tip"] for f in data["findings"]} >= {"activation-gradient-stats", "update-ratio"}

    # only rank 0 printed: one summary line, one report, one progress line per epoch
    assert proc.stdout.count("digits: 18 steps in") == 1
    assert proc.stdout.startswith("digits: 18 steps in")
    assert proc.stdout.count("dltips report: digits") == 1
    assert "2 epochs, 18 steps, 2 processes" in proc.stdout
    assert proc.stderr.count(f"epoch {epochs}/{epochs}") == 1


@pytest.mark.slow
def test_doctor_under_torchrun_refuses_at_once_with_one_message(tmp_path):
    proc = torchrun(["-m", "dltips", "doctor", "--demo", "digits", "--json", "report.json"], tmp_path)
    assert proc.returncode != 0  # each rank exits 2; torchrun reports the failed workers with its own status
    assert "exitcode: 2" in proc.stderr
    message = "dltips: the doctor runs in one process; run `dltips doctor ...` without torchrun"
    assert proc.stderr.count(message) == 1  # rank 0 alone says it
    assert proc.stdout == ""
    assert os.listdir(tmp_path) == []  # no check ran, nothing was written


def test_doctor_refuses_when_torchrun_started_several_processes(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["doctor", "--demo", "digits"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "dltips: the doctor runs in one process; run `dltips doctor ...` without torchrun\n"
    monkeypatch.setenv("RANK", "1")
    assert main(["doctor", "--demo", "digits"]) == 2
    assert capsys.readouterr() == ("", "")  # the other ranks stay silent


def test_scaling_study_refuses_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["demo", "charlm", "--sizes", "tiny", "--steps", "1"]) == 2
    assert "the scaling study (--sizes) runs in one process" in capsys.readouterr().err


def test_one_process_torchrun_is_not_refused(monkeypatch):
    from dltips.cli import _refuse_under_torchrun

    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _refuse_under_torchrun("the doctor", "dltips doctor ...") is None
    monkeypatch.delenv("WORLD_SIZE")
    assert _refuse_under_torchrun("the doctor", "dltips doctor ...") is None
