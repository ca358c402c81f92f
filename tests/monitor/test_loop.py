"""The loop checks of `watch`: exact on small loops, the schedule rules on LR sequences computed by torch."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltips import watch
from dltips.monitor.loop import COLLAPSE, LoopRecord, loop_findings


def _loop(model, optimizer, steps=6, zero="before", every=1, train=True, accumulate=1):
    x, y = torch.randn(16, 4, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 3
    model.train(train)
    with watch(model, optimizer, every=every) as w:
        for _ in range(steps):
            if zero == "before":
                optimizer.zero_grad()
            for _ in range(accumulate):
                F.cross_entropy(model(x), y).backward()
            if zero == "between":
                optimizer.zero_grad()
            optimizer.step()
    return w


def causes(w):
    """The loop findings that warn or fail, by cause."""
    return {f.evidence["cause"]: f for f in w.findings() if f.status in ("warn", "fail") and "cause" in f.evidence}


def test_a_missing_zero_grad_is_found_on_every_step_after_the_first():
    model = nn.Linear(4, 3)
    w = _loop(model, torch.optim.SGD(model.parameters(), lr=0.01), zero="never")
    finding = causes(w)["zero-grad-missing"]
    assert finding.status == "fail" and finding.evidence["steps"] == [1, 2, 3, 4, 5]  # step 0 had nothing before it


def test_accumulating_within_a_step_is_not_a_missing_zero_grad():
    model = nn.Linear(4, 3)
    w = _loop(model, torch.optim.SGD(model.parameters(), lr=0.01), accumulate=4)
    assert "zero-grad-missing" not in causes(w) and w.loop.failed("carried") == ([], 6)


def test_zero_grad_between_backward_and_step_is_found():
    model = nn.Linear(4, 3)
    w = _loop(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), zero="between")
    assert causes(w)["zeroed-before-step"].status == "fail"
    assert "no-gradient" not in causes(w)  # the zeroing explains the missing gradients


def test_a_closure_optimizer_zeroing_inside_its_closure_is_healthy():
    model = nn.Linear(4, 3)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)
    x, y = torch.randn(16, 4), torch.arange(16) % 3

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with watch(model, optimizer, every=1) as w:
        for _ in range(4):
            optimizer.step(closure)
    assert not causes(w)


@pytest.mark.parametrize("layer, status", [(nn.Dropout(0.3), "warn"), (nn.Identity(), "info")])
def test_steps_in_eval_mode_warn_when_the_model_has_modes(layer, status):
    model = nn.Sequential(nn.Linear(4, 8), layer, nn.Linear(8, 3))
    w = _loop(model, torch.optim.SGD(model.parameters(), lr=0.01), train=False)
    finding = next(f for f in w.findings() if f.evidence.get("cause") == "eval-mode-training")
    assert finding.status == status and finding.evidence["eval_steps"] == 6


def _lrs(make_scheduler, steps):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = make_scheduler(optimizer)
    record = LoopRecord()
    for step in range(steps):
        record.on_step(step, True, optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return record


def test_a_per_epoch_step_lr_stepped_per_batch_collapses_at_the_step_torch_says():
    record = _lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.1), 300)
    # 0.1 * 0.1 ** (step // 3) reaches 0.1 / 1000 at step 9
    assert record.collapse[0] == 9 and record.collapse[1] == pytest.approx(0.1)
    assert record.collapse[2] <= 0.1 / COLLAPSE * (1 + 1e-9)
    finding = next(f for f in loop_findings(_Watched(record)) if f.tip == "one-cycle")
    assert finding.status == "warn" and finding.evidence["step"] == 9


@pytest.mark.parametrize("make", [
    lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=300),
    lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=300),
    lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=1e-4, total_iters=30),  # a warm-up from near 0
])
def test_schedules_that_fall_late_or_rise_early_give_no_warning(make):
    record = _lrs(make, 300)
    assert not [f for f in loop_findings(_Watched(record)) if f.status in ("warn", "fail")]


def test_warm_restarts_are_info():
    record = _lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=100), 300)
    (finding,) = [f for f in loop_findings(_Watched(record)) if f.tip == "one-cycle"]
    assert finding.status == "info" and finding.evidence["step"] == 100


class _Watched:
    """What loop_findings reads from a watch, for a record built by hand."""

    def __init__(self, record):
        self.loop, self.samples, self.no_gradient, self.optimizer_steps = record, [], set(), record.steps


def test_the_gradient_hooks_are_removed_on_exit():
    model = nn.Linear(4, 3)
    _loop(model, torch.optim.SGD(model.parameters(), lr=0.01))
    assert all(not p._backward_hooks for p in model.parameters())
