"""The monitors as dltips.fit callbacks: attached for the run, detached at the end or when training raises."""

import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dltips import MetricTracker, NonFiniteLossError, Recipe, Watch, fit
from dltips.monitor.sinks import MemorySink

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from synthetic import blobs, make_task, mlp  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_fit_attaches_the_watch_for_the_run_and_detaches_it_after():
    torch.manual_seed(0)
    x, y = blobs(n=400)
    task = make_task(mlp(16, 10), x, y, batch_size=32)
    sink = MemorySink()
    monitor, tracker = Watch(every=5, sinks=[sink]), MetricTracker()
    result = fit(task, epochs=3, recipe=Recipe(one_cycle=False), callbacks=[monitor, tracker], progress=False)
    assert hooks(task.model) == 0 and not monitor.attached
    assert [s.step for s in monitor.samples] == list(range(0, result.steps, 5))
    assert [step for step, _ in monitor.evaluations] == [row["step"] for row in result.history]
    assert monitor.evaluations[-1][1]["valid_accuracy"] == result.history[-1]["valid_accuracy"]
    assert any("valid_balanced_accuracy" in r["scalars"] for r in sink.records)
    assert any("loss" in r["scalars"] for r in sink.records)  # fit's training loss, logged each step
    tips = {f.tip: f.status for f in monitor.findings() + tracker.findings()}
    assert tips["activation-gradient-stats"] == "pass" and tips["update-ratio"] == "pass"
    assert "metric-divergence" in tips and "logloss-downstream" in tips


def test_the_watch_is_detached_and_names_the_step_when_fit_raises_on_a_nan_loss():
    torch.manual_seed(0)
    x, y = blobs(n=400)
    model = mlp(16, 10)
    task = make_task(model, x, y, batch_size=32, optimizer=lambda p: torch.optim.SGD(p, lr=1e6))
    monitor = Watch(every=1)
    with pytest.raises(NonFiniteLossError, match=r"at step (\d+)") as error:
        fit(task, epochs=3, recipe=Recipe(one_cycle=False), callbacks=[monitor], progress=False, sync_every=1)
    assert hooks(task.model) == 0 and not monitor.attached
    fit_step = int(re.search(r"at step (\d+)", str(error.value)).group(1))  # fit counts steps from 1
    assert monitor.first_nonfinite_loss_step == fit_step - 1
    failed = [f for f in monitor.findings() if f.status == "fail"]
    assert failed and failed[0].evidence["first_nonfinite_loss_step"] == fit_step - 1


def test_the_watch_is_detached_when_a_later_callback_fails_to_start():
    from dltips import Callback

    class FailsToStart(Callback):
        def on_fit_start(self, state):
            raise RuntimeError("no start")

    x, y = blobs(n=200)
    task = make_task(mlp(16, 10), x, y, batch_size=32)
    monitor = Watch(every=5)
    with pytest.raises(RuntimeError, match="no start"):
        fit(task, epochs=1, callbacks=[monitor, FailsToStart()], progress=False)
    assert hooks(task.model) == 0 and not monitor.attached
