"""Deadlines for tests: one that expires after a given number of reads, whatever the real clock says."""

import time

from dltips.core.deadline import Deadline


class ExpiresAfter(Deadline):
    """A deadline far away whose `expired()` answers True from its `calls`-th call on."""

    def __init__(self, calls: int):
        super().__init__(time.monotonic() + 3600)
        self.calls, self.limit = 0, calls

    def expired(self) -> bool:
        self.calls += 1
        return self.calls >= self.limit
