"""Deadlines: the one clock the doctor and its checks share.

A `Deadline` is a point on `time.monotonic()`. The doctor makes one from its budget and hands it
(or a share of it, `deadline.within(seconds)`) to every check; a check uses it to decide how much
to examine. A check given a plain number of seconds treats it as a deadline that many seconds away.
"""

from __future__ import annotations

import os
import time
from typing import Any

from dltips.core.params import ParamError, number


class Deadline:
    """A moment on the monotonic clock by which a piece of work should end."""

    def __init__(self, at: float):
        self.at = number("at", at)

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """The deadline `seconds` from now."""
        return cls(time.monotonic() + number("seconds", seconds, 0.0))

    def left(self) -> float:
        """Seconds until the deadline (negative once it has passed)."""
        return self.at - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0

    def within(self, seconds: float) -> Deadline:
        """The earlier of this deadline and `seconds` from now: a share that cannot outlast the whole."""
        return Deadline(min(self.at, time.monotonic() + number("seconds", seconds, 0.0)))

    def __repr__(self) -> str:
        return f"Deadline(in {self.left():.1f} s)"


def as_deadline(value: Any, name: str = "deadline") -> Deadline | None:
    """None, a `Deadline`, or a positive number of seconds from now, as a Deadline (or None)."""
    if value is None or isinstance(value, Deadline):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(f"{name} must be None, a dltips Deadline or a number of seconds, got {type(value).__name__}")
    return Deadline.after(number(name, value, 0.0, open_low=True))


def process_age_s() -> float:
    """Seconds since this process started (interpreter start-up and imports included); 0.0 where unknown.

    Read from /proc on Linux; the CLI takes it off the budget so that `--budget` bounds the whole command.
    """
    try:
        with open("/proc/self/stat") as f:
            started_ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - started_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0
