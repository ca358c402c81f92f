import functools
import itertools
import json
import math
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dltips.diagnosis.report import Report
from dltips.task import Task
from dltips.training import lr_check
from dltips.training.lr import LRFinderResult, default_lr, make_optimizer
from dltips.training.lr_check import check_lr

pytestmark = pytest.mark.usefixtures("one_thread")


def standardise(x):
    std = x.std(0)
    return (x - x.mean(0)) / np.where(std > 0, std, 1)


def spirals(n=1000, seed=0):
    g = np.random.default_rng(seed)
    t = g.random(n) * 3 * np.pi + 0.5
    c = g.integers(0, 2, n)
    angle = t + c * np.pi
    r = t / (3 * np.pi)
    return np.c_[r * np.cos(angle), r * np.sin(angle)] * 2 + g.normal(0, 0.05, (n, 2)), c


@functools.cache
def dataset(name):
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine

    if name == "spirals":
        return spirals()
    if name == "digits-images":
        d = load_digits()
        return d.images[:, None] / 16.0, d.target
    data = {"digits": load_digits, "wine": load_wine, "breast_cancer": load_breast_cancer}[name.removesuffix("-bn")]()
    return standardise(data.data), data.target


def model_for(name, n_in, n_out):
    if name.endswith("-bn"):  # BatchNorm after each hidden layer: it moves the range test's minimum up
        return nn.Sequential(nn.Linear(n_in, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.BatchNorm1d(64),
                             nn.ReLU(), nn.Linear(64, n_out))
    if name == "digits-images":
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, n_out))
    return nn.Sequential(nn.Linear(n_in, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, n_out))


def make_task(name, optimizer=None, seed=0):
    x, y = dataset(name)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(seed)
    model = model_for(name, x.shape[1], int(y.max()) + 1)
    return Task(model, TensorDataset(x, y), TensorDataset(x[:20], y[:20]), optimizer=optimizer)


def sgd(p):
    return torch.optim.SGD(p, lr=0.1, momentum=0.9)


def adamw(lr):
    return lambda p: torch.optim.AdamW(p, lr=lr)


def adam(lr):
    return lambda p: torch.optim.Adam(p, lr=lr)


# The calibration of the module docstring: (data, optimizer, seed) -> status, and which side for warnings.
HEALTHY = [(name, opt, seed) for name in ("digits", "wine", "breast_cancer", "spirals")
           for opt in ("adamw-default", "sgd") for seed in (0, 1)] + [("digits-images", "adamw-default", 0),
                                                                    ("digits-images", "sgd", 0)] + [
    (f"{name}-bn", opt, seed) for name in ("breast_cancer", "wine") for opt in ("adam-3e-4", "adam-1e-3") for seed in (0, 1)]
BROKEN = [(name, lr, 0) for name in ("wine", "spirals") for lr in (1.0, 10.0, 1e-7)] + [
    ("spirals", 1.0, 1), ("digits-images", 1.0, 0), ("digits-images", 1e-7, 0)]


@pytest.mark.parametrize("name, opt, seed", HEALTHY)
def test_calibration_healthy_learning_rates_pass(name, opt, seed):
    optimizer = {"adamw-default": None, "sgd": sgd, "adam-3e-4": adam(3e-4), "adam-1e-3": adam(1e-3)}[opt]
    task = make_task(name, optimizer, seed)
    (f,) = check_lr(task, seed=seed)
    assert f.tip == "default-lr"
    assert f.status == "pass", f.message
    assert f.fix is None
    e = f.evidence
    assert lr_check.MIN_RATIO < e["ratio_to_min"] <= 1.0


@pytest.mark.parametrize("name, lr, seed", BROKEN)
def test_calibration_broken_learning_rates_warn(name, lr, seed):
    task = make_task(name, adamw(lr), seed)
    (f,) = check_lr(task, seed=seed)
    assert f.status == "warn", f.message
    e = f.evidence
    if lr >= 1.0:
        assert e["ratio_to_min"] > 1.0 and "past the loss minimum" in f.title
    else:
        assert e["ratio_to_min"] < lr_check.MIN_RATIO and "far below" in f.title
    assert f"{e['suggestion']:.3g}" in f.fix


def test_evidence_reports_the_task_lr_default_and_curve():
    task = make_task("wine")
    (f,) = check_lr(task, num_steps=60)
    e = f.evidence
    assert e["task_lr"] == make_optimizer(task, task.model).param_groups[0]["lr"] == default_lr(task.model)
    assert e["default_lr"] == default_lr(task.model) and e["optimizer_family"] == "adamw"
    assert e["suggestion"] == pytest.approx(e["min_loss_lr"] / 10)
    lrs = e["curve"]["lr"]
    assert lrs[0] == pytest.approx(1e-7) and all(b > a for a, b in itertools.pairwise(lrs))
    assert len(lrs) <= 60 and e["ratio_to_min"] == pytest.approx(e["task_lr"] / e["min_loss_lr"])
    fig = f.figures[0]
    assert fig["kind"] == "lines" and fig["xlog"] is True and fig["x"] == lrs
    assert len(fig["series"]["smoothed loss"]) == len(lrs)
    json.loads(Report(task={}, findings=[f]).to_json())
    sgd_task = make_task("wine", sgd)
    (g,) = check_lr(sgd_task, num_steps=30)
    assert g.evidence["task_lr"] == 0.1 and g.evidence["default_lr"] == 0.1


def test_the_users_model_and_rng_are_untouched_and_results_repeat():
    task = make_task("breast_cancer")
    task.model.eval()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    rng = torch.get_rng_state()
    (a,) = check_lr(task, num_steps=40, seed=3)
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())
    assert not task.model.training and all(p.grad is None for p in task.model.parameters())
    assert torch.equal(rng, torch.get_rng_state())
    (b,) = check_lr(task, num_steps=40, seed=3)
    assert a.evidence["curve"] == b.evidence["curve"]


def test_augmentation_is_applied_to_the_range_test_batches():
    seen = []

    def augment(x):
        seen.append(x.shape)
        return x

    task = make_task("wine")
    task.augment = augment
    check_lr(task, num_steps=10)
    assert len(seen) == 10


def fake_curve(min_lr):
    """A range-test result whose loss bottoms out at `min_lr`."""
    lrs = list(np.geomspace(1e-7, 10, 100))
    i = int(np.argmin(np.abs(np.log(lrs) - math.log(min_lr))))
    losses = [2.0 - 1.5 * k / i if k <= i else 0.5 + (k - i) for k in range(100)]
    return LRFinderResult(lrs, losses, losses, lrs[i] / 10, lrs[i // 2], lrs[i], False)


@pytest.mark.parametrize(
    "task_lr, status, side",
    [(0.05, "pass", None), (0.09, "pass", None), (0.12, "warn", "past"), (1.2e-4, "pass", None),
     (5e-5, "pass", None), (1.2e-6, "pass", None), (8e-7, "warn", "far below"), (1e-8, "warn", "far below")],
)
def test_verdict_thresholds_against_a_known_curve(monkeypatch, task_lr, status, side):
    curve = fake_curve(0.1)
    monkeypatch.setattr(lr_check, "lr_find", lambda *args, **kwargs: curve)
    (f,) = check_lr(make_task("wine", adamw(task_lr)))
    assert f.status == status
    if side:
        assert side in f.title
    assert f.evidence["min_loss_lr"] == curve.min_loss_lr


def test_a_curve_that_never_falls_is_inconclusive(monkeypatch):
    lrs = list(np.geomspace(1e-7, 10, 100))
    flat = LRFinderResult(lrs, [1.0] * 100, [1.0] * 100, 1e-8, None, 1e-7, False)
    monkeypatch.setattr(lr_check, "lr_find", lambda *args, **kwargs: flat)
    (f,) = check_lr(make_task("wine"))
    assert f.status == "info" and "inconclusive" in f.title


class Frozen(nn.Module):
    """Its output does not depend on its parameter: the loss cannot fall."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.zeros(len(x), 3) + 0 * self.w


def test_a_model_that_cannot_learn_is_inconclusive():
    x, y = torch.randn(100, 4), torch.arange(100) % 3
    task = Task(Frozen(), TensorDataset(x, y), TensorDataset(x, y))
    (f,) = check_lr(task, num_steps=30)
    assert f.status == "info"


class NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x) * torch.tensor(float("nan")) if self.training else self.linear(x)


def test_a_loss_that_is_not_finite_fails():
    x, y = torch.randn(100, 4), torch.arange(100) % 3
    task = Task(NaNModel(), TensorDataset(x, y), TensorDataset(x, y))
    (f,) = check_lr(task, num_steps=20)
    assert f.status == "fail" and "not finite" in f.title


# ---------------------------------------------------------------- the deadline and the optimizers default_lr does not know


class Sleepy(nn.Module):
    """A linear model whose training forward passes sleep `delay` seconds after the first `fast` of them."""

    def __init__(self, delay, fast=0):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.delay, self.fast, self.calls = delay, fast, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls > self.fast:
                time.sleep(self.delay)
        return self.linear(x)


def sleepy_task(delay, fast=0):
    x, y = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 3
    torch.manual_seed(0)
    return Task(Sleepy(delay, fast), TensorDataset(x, y), TensorDataset(x, y), batch_size=16)


def test_a_sweep_that_cannot_end_in_time_is_skipped_after_the_probe():
    task = sleepy_task(0.02)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    start = time.perf_counter()
    (f,) = check_lr(task, num_steps=100, deadline=0.5)
    elapsed = time.perf_counter() - start
    e = f.evidence
    assert f.status == "skip" and e["skip_reason"] == "time" and e["steps_done"] == lr_check.PROBE_STEPS
    # the 95 steps left sleep at least 1.9 s, and the budget left after the probe is under 0.5 s
    assert e["needs_s"] >= round((100 - lr_check.PROBE_STEPS) * 0.02 - 0.5, 1)
    assert elapsed < 0.5 and "curve" not in e and "suggestion" not in e
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())


def test_a_sweep_that_slows_down_stops_when_it_would_overrun():
    task = sleepy_task(0.05, fast=10)  # the probe sees fast steps; from step 10 on each takes 50 ms
    (f,) = check_lr(task, num_steps=60, deadline=0.6)
    e = f.evidence
    assert f.status == "skip" and e["skip_reason"] == "time"
    assert lr_check.PROBE_STEPS < e["steps_done"] < 60 and e["needs_s"] >= 1.0
    assert f"{e['steps_done']} of the 60 range-test steps ran" in f.message


def test_a_deadline_that_is_met_gives_the_same_verdict():
    task = make_task("wine")
    (timed,) = check_lr(task, num_steps=30, deadline=120.0)
    (untimed,) = check_lr(task, num_steps=30)
    assert timed.status != "skip" and timed.evidence["curve"] == untimed.evidence["curve"]


@pytest.mark.parametrize("make, name", [(lambda p: torch.optim.Adadelta(p), "Adadelta"),
                                        (lambda p: torch.optim.Rprop(p), "Rprop")])
def test_optimizers_whose_lr_is_no_step_size_get_info_with_the_numbers(make, name):
    (f,) = check_lr(make_task("wine", make), num_steps=30)
    e = f.evidence
    assert f.status == "info" and f.fix is None and e["comparable"] is False
    assert e["optimizer"] == name and e["optimizer_family"] is None and e["default_lr"] is None
    assert f"{e['suggestion']:.3g}" in f.message and "default_lr for" not in f.message


def test_lbfgs_is_not_swept():
    (f,) = check_lr(make_task("wine", lambda p: torch.optim.LBFGS(p)), num_steps=30)
    assert f.status == "info" and "not run" in f.title and f.evidence["task_lr"] == 1.0


def test_an_unknown_family_far_below_is_told_to_raise_the_lr_without_default_lr(monkeypatch):
    curve = fake_curve(0.1)
    monkeypatch.setattr(lr_check, "lr_find", lambda *args, **kwargs: curve)
    (f,) = check_lr(make_task("wine", lambda p: torch.optim.RMSprop(p, lr=1e-7)))
    assert f.status == "warn" and "default_lr" not in f.fix and f"{curve.suggestion:.3g}" in f.fix
    assert "has no default_lr reference; torch's default lr for RMSprop is 0.01" in f.message
    (known,) = check_lr(make_task("wine", adamw(1e-7)))
    assert f"default_lr ({known.evidence['default_lr']:.3g})" in known.fix


@pytest.mark.parametrize("task_lr, words", [(0.05, "between the range test's suggestion"),
                                            (0.005, "below its suggestion"), (1.2e-4, "below its suggestion")])
def test_a_pass_says_where_the_lr_lies(monkeypatch, task_lr, words):
    curve = fake_curve(0.1)
    monkeypatch.setattr(lr_check, "lr_find", lambda *args, **kwargs: curve)
    (f,) = check_lr(make_task("wine", adamw(task_lr)))
    assert f.status == "pass" and words in f.title and f.fix is None
    if task_lr >= curve.suggestion:
        assert "sane range" not in f.title
