import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dltips import Task, doctor
from dltips.cli import main
from dltips.demos.digits import digits_task

STATUSES = {"pass", "warn", "fail", "info", "skip"}


def small_task(**changes):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    x = torch.randn(300, 6, generator=g) + 4.0 * F.one_hot(y, 6).float()
    data = TensorDataset(x, y)
    torch.manual_seed(0)
    model = changes.pop("model", None) or nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    sets = torch.utils.data.random_split(data, [200, 50, 50], generator=torch.Generator().manual_seed(0))
    return Task(model, *sets, batch_size=32, **changes)


def test_doctor_on_a_healthy_task_leaves_the_model_untouched_and_is_reproducible():
    task = small_task()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    first = doctor(task, budget_s=8, progress=False)
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())
    tips = [f.tip for f in first.findings]
    for tip in ("verify-transforms", "initialization", "overfit-tiny", "default-lr", "overfit-then-regularize",
                "error-gaps", "worst-predictions"):
        assert tip in tips
    assert not [f for f in first.findings if f.status in ("warn", "fail")]
    second = doctor(small_task(), budget_s=8, progress=False)
    assert [(f.tip, f.status) for f in first.findings] == [(f.tip, f.status) for f in second.findings]
    data = json.loads(first.to_json())
    order = list(data["summary"]).index
    assert data["summary"] == {s: sum(f.status == s for f in first.findings) for s in sorted(STATUSES, key=order)}
    assert data["task"]["n_train"] == 200


def test_only_and_skip_select_tips():
    report = doctor(small_task(), budget_s=5, only=["initialization", "verify-transforms"], progress=False)
    assert {f.tip for f in report.findings} == {"initialization", "verify-transforms"}
    report = doctor(small_task(), budget_s=5, skip=["worst-predictions", "default-lr"], progress=False)
    assert not {"worst-predictions", "default-lr"} & {f.tip for f in report.findings}
    with pytest.raises(ValueError, match="unknown tip"):
        doctor(small_task(), only=["nope"])


def test_a_model_that_cannot_overfit_skips_the_expensive_steps_with_the_reason():
    task = small_task()
    for p in task.model.parameters():
        p.requires_grad_(False)
    task.model[-1].bias.requires_grad_(True)
    report = doctor(task, budget_s=8, progress=False)
    status = {f.tip: f.status for f in report.findings}
    assert status["overfit-tiny"] == "fail"
    for tip in ("default-lr", "overfit-then-regularize", "error-gaps", "worst-predictions"):
        assert status[tip] == "skip"
        assert "overfit" in next(f.message for f in report.findings if f.tip == tip and f.status == "skip")


def test_a_check_that_crashes_becomes_a_skip_finding(monkeypatch):
    import dltips.training.lr_check as lr_check

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(lr_check, "check_lr", broken)
    report = doctor(small_task(), budget_s=6, only=["default-lr"], progress=False)
    (finding,) = report.findings
    assert finding.status == "skip" and "boom" in finding.message


TARGET = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from dltips import Task
    import helper_next_to_target  # importable because the file's folder comes first on sys.path

    def healthy():
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 2, (120,), generator=g)
        x = torch.randn(120, 4, generator=g) + 3.0 * y[:, None]
        d = TensorDataset(x, y)
        return Task(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)), d, d, batch_size=16)

    def broken():
        task = healthy()
        task.model = nn.Sequential(task.model, nn.Softmax(1))
        return task

    def not_a_task():
        return 42

    def bad_labels():
        d = TensorDataset(torch.randn(10, 4), torch.full((10,), 7))
        return Task(nn.Linear(4, 2), d, d)
""")


@pytest.fixture
def target_file(tmp_path):
    (tmp_path / "helper_next_to_target.py").write_text("X = 1\n")
    path = tmp_path / "my_task.py"
    path.write_text(TARGET)
    return path


def test_cli_exit_codes_and_outputs(target_file, tmp_path, capsys):
    json_path, html_path = tmp_path / "r.json", tmp_path / "r.html"
    code = main(["doctor", f"{target_file}:healthy", "--budget", "5", "--json", str(json_path),
                 "--html", str(html_path)])
    assert code == 0
    assert json.loads(json_path.read_text())["findings"]
    assert "<html" in html_path.read_text().lower()
    assert main(["doctor", f"{target_file}:broken", "--budget", "5", "--only", "initialization"]) == 1
    capsys.readouterr()
    for spec, words in ((f"{target_file}:not_a_task", "returned int"), (f"{target_file}:bad_labels", "Task.train"),
                        (f"{target_file}:missing", "no function"), ("no_such_module:f", "No module named"),
                        ("nocolon", "must look like")):
        assert main(["doctor", spec]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
    assert main(["doctor", f"{target_file}:not_a_task", "--debug"]) == 2


def test_cli_rejects_unknown_tips_and_two_targets(target_file):
    with pytest.raises(SystemExit) as e:
        main(["doctor", "--demo", "digits", "--only", "nope"])
    assert e.value.code == 2
    assert main(["doctor", f"{target_file}:healthy", "--demo", "digits"]) == 2


@pytest.mark.slow
def test_digits_demo_runs_clean_within_a_minute(tmp_path):
    import time

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dltips", "doctor", "--demo", "digits", "--html",
                           str(tmp_path / "report.html"), "--json", str(tmp_path / "report.json")],
                          capture_output=True, text=True, timeout=180)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["summary"]["fail"] == 0
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert wall <= 1.1 * 60 + 5  # the promise, interpreter start-up and report writing included
    assert digits_task().n_classes == 10


@pytest.mark.slow
@pytest.mark.parametrize("demo", ["charlm", "tabular"])
def test_the_budget_holds_for_the_other_demos(demo):
    import time

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dltips", "doctor", "--demo", demo, "--budget", "20"],
                          capture_output=True, text=True, timeout=180)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert wall <= 1.1 * 20 + 5, proc.stderr


class RaisesInTraining(nn.Module):
    """Fine in eval mode (the Task's validation and the initialisation check), raises in train mode."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(6, 3)

    def forward(self, x):
        if self.training:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
        return self.layer(x)


def test_a_training_step_that_raises_makes_every_training_check_could_not_run():
    report = doctor(small_task(model=RaisesInTraining()), budget_s=10, progress=False)
    by_tip = {f.tip: f for f in report.findings}
    assert by_tip["initialization"].status != "skip"  # eval mode: it runs
    for tip in ("overfit-tiny", "default-lr", "overfit-then-regularize", "error-gaps"):
        assert by_tip[tip].status == "skip" and by_tip[tip].evidence["skip_reason"] == "error", tip
        assert "mat1 and mat2" in by_tip[tip].message
    assert report.exit_status() == 3


def test_a_budget_too_small_for_a_plan_gives_skips_with_the_time_needed_never_partial_verdicts(monkeypatch):
    from dltips.diagnosis import recipe

    monkeypatch.setattr(recipe, "_seconds_per_step", lambda task, device: 1.0)  # every step "takes" a second
    report = doctor(small_task(), budget_s=6, progress=False)
    by_tip = {f.tip: f for f in report.findings}
    # judged on the 400-step short run, or (capacity) on its validation error
    for tip in ("error-gaps", "worst-predictions", "update-ratio", "overfit-then-regularize"):
        assert by_tip[tip].status == "skip" and by_tip[tip].evidence["skip_reason"] == "time"
        assert by_tip[tip].evidence["needs_s"] > 100
    assert report.exit_status() == 0


def test_the_plan_is_the_same_whatever_the_step_time(monkeypatch):
    """The verdicts do not depend on how fast a step is measured to be, as long as the plans fit."""
    from dltips.diagnosis import recipe

    fast = [(f.tip, f.status) for f in doctor(small_task(), budget_s=30, progress=False).findings]
    monkeypatch.setattr(recipe, "_seconds_per_step", lambda task, device: 0.01)  # 10x a real step here
    slow = [(f.tip, f.status) for f in doctor(small_task(), budget_s=30, progress=False).findings]
    assert fast == slow


class _TinyLM(nn.Module):
    def __init__(self, vocab: int, width: int = 16, tie: bool = True):
        super().__init__()
        self.emb, self.hidden, self.head = nn.Embedding(vocab, width), nn.Linear(width, width), nn.Linear(width, vocab)
        if tie:
            nn.init.normal_(self.emb.weight, std=width ** -0.5)
            self.head.weight = self.emb.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.hidden(self.emb(tokens))))


def lm_task(tie: bool = True) -> Task:
    """Counting modulo 10 in a vocabulary of 12: ids 10 and 11 never occur."""
    g = torch.Generator().manual_seed(0)
    seq = (torch.randint(0, 10, (300, 1), generator=g) + torch.arange(13)) % 10
    data = TensorDataset(seq[:, :-1], seq[:, 1:])
    sets = torch.utils.data.random_split(data, [200, 50, 50], generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    return Task(_TinyLM(12, tie=tie), *sets, kind="language-model", n_classes=12, batch_size=32)


def test_language_model_tasks_get_weight_tying_and_unseen_tokens():
    report = doctor(lm_task(), budget_s=8, progress=False)
    status = {f.tip: f.status for f in report.findings}
    assert status["weight-tying"] == "pass" and status["unseen-tokens"] == "pass"
    unseen = next(f for f in report.findings if f.tip == "unseen-tokens")
    assert unseen.evidence["unseen_mass"] < 0.01 < unseen.evidence["uniform_mass"]  # uniform: 2 of 12 ids = 1/6
    untied = doctor(lm_task(tie=False), budget_s=8, progress=False, only=["weight-tying"])
    assert [(f.tip, f.status) for f in untied.findings] == [("weight-tying", "warn")]
    assert "weight-tying" not in {f.tip for f in doctor(small_task(), budget_s=5, progress=False,
                                                          only=["weight-tying", "initialization"]).findings}


def test_a_per_epoch_schedule_is_not_stretched_past_what_the_short_run_stands_for():
    from sklearn.datasets import load_digits
    from torch.optim import Adadelta
    from torch.optim.lr_scheduler import StepLR

    from dltips.diagnosis.recipe import SHORT_RUN_EPOCHS, _short_run_scheduler, short_run_steps
    from dltips.training.schedule import EveryKthStep

    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10), nn.LogSoftmax(1))
    task = Task(model, TensorDataset(x[:300], y[:300]), TensorDataset(x[1400:1600], y[1400:1600]), loss=F.nll_loss,
                batch_size=64, optimizer=lambda p: Adadelta(p, lr=1.0), scheduler=lambda o: StepLR(o, 1, gamma=0.7))
    epochs = short_run_steps(task) // (300 // 64)  # 400 steps of 4 batches: 100 epochs
    optimizer = Adadelta(nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = _short_run_scheduler(task, epochs)(optimizer)
    for _ in range(epochs):
        optimizer.step()
        scheduler.step()
    assert isinstance(scheduler, EveryKthStep) and scheduler.last_epoch == SHORT_RUN_EPOCHS
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.7 ** SHORT_RUN_EPOCHS)
    # stepped 100 times, the LR fell to 0.7^100 = 3e-16 and the short run read "layers learning too slowly"
    report = doctor(task, budget_s=60, progress=False, only=["update-ratio"])
    assert [f.status for f in report.findings if f.tip == "update-ratio"] == ["pass"]
