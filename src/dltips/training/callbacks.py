"""Two callbacks for `dltips.fit`: a progress display and a time limit.

The protocol they implement (`Callback`, `FitState`) is `dltips.core.callbacks`.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from dltips.core.callbacks import Callback, FitState
from dltips.core.params import positive
from dltips.core.progress import is_terminal, live_progress


class ProgressBar(Callback):
    """Live progress on a terminal (epoch, step, loss and ETA; drawn by rich when installed), one line per
    evaluation otherwise, as in logs and CI.

    Only the process of rank 0 prints.
    """

    def __init__(self, stream: TextIO | None = None, min_interval_s: float = 0.2):
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval_s = min_interval_s
        self._last_print = 0.0
        self._rich: Any = None
        self._bar: Any = None

    @property
    def _live(self) -> bool:
        return is_terminal(self.stream)

    def on_fit_start(self, state: FitState) -> None:
        if state.rank == 0 and self._live:
            self._rich = live_progress(self.stream, "fit")
            if self._rich is not None:
                self._bar = self._rich.add_task("fit", total=max(state.total_steps, 1), epoch=f"1/{state.epochs}",
                                                loss="-")

    def on_sync(self, state: FitState) -> None:
        now = time.monotonic()
        if state.rank != 0 or not self._live or now - self._last_print < self.min_interval_s:
            return
        self._last_print = now
        if self._rich is not None:
            self._rich.update(self._bar, completed=state.step, epoch=f"{state.epoch + 1}/{state.epochs}",
                              loss=f"{state.train_loss:.4f}")
            return
        width = 24
        done = int(width * state.step / max(state.total_steps, 1))
        bar = "#" * done + "-" * (width - done)
        self.stream.write(
            f"\repoch {state.epoch + 1}/{state.epochs} [{bar}] step {state.step}/{state.total_steps}"
            f" loss {state.train_loss:.4f}  "
        )
        self.stream.flush()

    def on_eval_end(self, state: FitState, metrics: dict[str, float]) -> None:
        if state.rank != 0:
            return
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        line = f"epoch {state.epoch + 1}/{state.epochs}  train_loss {state.train_loss:.4g}  {shown}"
        if self._rich is not None:
            self._rich.console.print(line, highlight=False)  # above the live line, which stays at the bottom
            return
        prefix = "\r" if self._live else ""
        self.stream.write(f"{prefix}{line}\n")
        self.stream.flush()

    def on_fit_end(self, state: FitState) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich, self._bar = None, None

    def on_exception(self, state: FitState, error: BaseException) -> None:
        self.on_fit_end(state)  # the live line must not stay over the traceback


class TimeLimit(Callback):
    """Stop training once `seconds` have passed since `fit` started.

    Checked whenever the loop synchronises with the device (every
    `sync_every` steps), so it costs no extra wait; under torch.distributed
    rank 0's clock decides for every rank, so all stop at the same step.
    `stopped_at` is the step it stopped at, or None.
    """

    def __init__(self, seconds: float):
        self.seconds = positive("seconds", seconds)
        self.stopped_at: int | None = None
        self._deadline = math.inf

    def on_fit_start(self, state: FitState) -> None:
        self._deadline = time.perf_counter() + self.seconds
        self.stopped_at = None

    def on_sync(self, state: FitState) -> None:
        over = time.perf_counter() >= self._deadline
        if state.world_size > 1:
            import torch
            import torch.distributed as dist

            flag = torch.tensor([float(over)], device=state.device)
            dist.broadcast(flag, src=0)
            over = bool(flag.item())
        if over and not state.stop:
            state.stop, self.stopped_at = True, state.step
