"""The scripts in examples/ run as a user would run them, and say what they promise."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_plain_loop_trains_and_the_watch_finds_nothing_wrong(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "plain_loop.py")], capture_output=True, text=True,
                          timeout=120, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, last, accuracy = map(float, re.search(r"train loss (\S+) -> (\S+); valid accuracy (\S+)", proc.stdout).groups())
    assert last < 0.5 * first  # mixed labels keep the training loss well above 0: a halving is the honest bar
    assert accuracy > 0.9
    findings = proc.stdout.split("watch findings:\n")[1].splitlines()
    assert [line.split()[0] for line in findings] == ["PASS", "PASS"]
    assert {"activation-gradient-stats:", "update-ratio:"} == {line.split()[1] for line in findings}
    assert os.listdir(tmp_path) == []  # the example writes no files


@pytest.mark.slow
def test_torchrun_fit_runs_on_two_processes_and_rank_0_alone_prints(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(EXAMPLES / "torchrun_fit.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("process(es):") == 1  # one summary line: rank 0's
    assert proc.stdout.startswith("2 process(es): 92 optimizer steps")  # 1,497 rows / 2 ranks / 32 per batch x 4 epochs
    assert proc.stdout.count("activation-gradient-stats") == 1
    assert "WARN" not in proc.stdout and "FAIL" not in proc.stdout
    assert proc.stderr.count("epoch 4/4") == 1  # fit's progress: rank 0 only


@pytest.mark.slow
def test_torchrun_fit_runs_as_one_process_under_plain_python(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "torchrun_fit.py")], capture_output=True, text=True,
                          timeout=120, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("1 process(es): 184 optimizer steps")  # twice the steps of each of 2 ranks
    assert "WARN" not in proc.stdout and "FAIL" not in proc.stdout


@pytest.mark.slow
def test_own_step_the_doctor_passes_the_nanogpt_step_and_fails_it_without_zero_grad(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "own_step.py")], capture_output=True, text=True,
                          timeout=300, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    healthy, buggy = proc.stdout.split("own-step-without-zero-grad:\n")
    assert healthy.splitlines()[1:] == ["  no warning, no failure"]
    assert "FAIL  gradient-accumulation: optimizer.zero_grad() is missing" in buggy


@pytest.mark.slow
@pytest.mark.parametrize("script", ["mnist_style.py", "makemore_style.py", "tabular_mlp.py", "lightning_doctor.py",
                                    "transformers_doctor.py"])
def test_public_program_styles_go_through_the_doctor_healthy(script, tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=300,
                          env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    statuses = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    # on a loaded machine the budget may cut the short run: its checks then say so, with the time they need,
    # and give no verdict (the budget decides how much is examined, never what is concluded)
    cut = [line for line in proc.stdout.splitlines() if re.match(r"SKIP  \S+: Not run to the end: needs about \d+ s", line)]
    assert statuses.count("PASS") + len(cut) >= 10, proc.stdout
    assert "WARN" not in statuses and "FAIL" not in statuses, proc.stdout
    assert re.search(r"PASS  overfit-tiny: Overfits (1, )?2, 8, 32 training items", proc.stdout), proc.stdout
