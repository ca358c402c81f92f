"""Live progress on a terminal, plain lines everywhere else (logs, CI, notebooks' captured output).

`live_progress(stream, ...)` gives a started rich `Progress` drawing on `stream` when rich is installed and
`stream` is a terminal, else None; the caller then writes plain lines. The doctor shows the current check,
the time elapsed and the time left of its budget (its task's field "deadline", a time.monotonic() value);
`fit` shows epoch, step, loss and the ETA (fields "epoch" and "loss").
"""

from __future__ import annotations

import time
from typing import Any, TextIO


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is an interactive terminal (False for files, pipes and captured output)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


def live_progress(stream: TextIO, kind: str) -> Any | None:
    """A started rich Progress on `stream` for "doctor" or "fit", or None (rich missing, or not a terminal).

    Transient: the live line is erased when it stops, so what follows (the report, the epoch lines) reads
    as if it had never been there.
    """
    if not is_terminal(stream):
        return None
    try:
        from rich.console import Console
        from rich.progress import (BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        from rich.text import Text
    except ImportError:
        return None

    class TimeLeft(ProgressColumn):
        """The seconds left before the task's field "deadline" (a time.monotonic() value), redrawn live."""

        def render(self, task: Any) -> Any:
            return Text(f"elapsed, {max(task.fields.get('deadline', 0.0) - time.monotonic(), 0.0):.0f} s left")

    console = Console(file=stream)
    if kind == "doctor":
        columns = [SpinnerColumn(), TextColumn("[bold]dltips doctor[/] {task.description}"), TimeElapsedColumn(),
                   TimeLeft()]
    else:
        columns = [TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                   TextColumn("step {task.completed:.0f}/{task.total:.0f}"), TextColumn("loss {task.fields[loss]}"),
                   TextColumn("ETA"), TimeRemainingColumn()]
    progress = Progress(*columns, console=console, transient=True)
    progress.start()
    return progress
