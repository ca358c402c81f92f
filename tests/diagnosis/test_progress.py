"""Live progress: rich on a terminal (the doctor's current check and time left; fit's step, loss and ETA),
plain lines in logs and CI."""

import io

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dltips import Task, fit
from dltips.core.progress import is_terminal, live_progress
from dltips.diagnosis.recipe import Doctor
from dltips.training.callbacks import ProgressBar

pytest.importorskip("rich")


class Terminal(io.StringIO):
    """Captured output that says it is a terminal, as a TTY's stderr does."""

    def isatty(self) -> bool:
        return True


def tiny_task() -> Task:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    return Task(model, TensorDataset(x[:192], y[:192]), TensorDataset(x[192:], y[192:]), kind="classification",
                n_classes=2, batch_size=32)


def test_live_only_on_a_terminal():
    assert not is_terminal(io.StringIO()) and is_terminal(Terminal())
    assert live_progress(io.StringIO(), "doctor") is None
    progress = live_progress(Terminal(), "doctor")
    assert progress is not None
    progress.stop()


def test_doctor_draws_a_live_line_on_a_terminal_and_plain_lines_elsewhere(one_thread):
    terminal = Terminal()
    Doctor(tiny_task(), budget_s=20, only={"initialization", "overfit-tiny"}, stream=terminal).run()
    drawn = terminal.getvalue()
    assert "\x1b[" in drawn and "dltips doctor" in drawn and " s left" in drawn and "[dltips" not in drawn
    plain = io.StringIO()
    Doctor(tiny_task(), budget_s=20, only={"initialization", "overfit-tiny"}, stream=plain).run()
    lines = plain.getvalue().splitlines()
    assert "\x1b[" not in plain.getvalue()
    assert any(line.startswith("[dltips") and line.endswith("overfit-tiny ...") for line in lines)


def test_fit_shows_step_loss_and_eta_on_a_terminal_and_one_line_per_epoch_elsewhere(one_thread):
    terminal = Terminal()
    fit(tiny_task(), epochs=2, progress=False, callbacks=[ProgressBar(terminal, min_interval_s=0.0)])
    drawn = terminal.getvalue()
    assert "ETA" in drawn and "step" in drawn and "epoch 2/2" in drawn and "\x1b[" in drawn
    log = io.StringIO()
    fit(tiny_task(), epochs=2, progress=False, callbacks=[ProgressBar(log)])
    lines = log.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"] and "\x1b[" not in log.getvalue()
