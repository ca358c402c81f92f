"""The Report: what the doctor found on one task, as JSON (a contract), HTML, a notebook view or terminal text.

Its JSON form is described in docs/architecture.md. The renderers live beside
it: `html` for the HTML file and the notebook view, `terminal` for the summary.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from dltips import __version__
from dltips.core.io import atomic_write_text
from dltips.diagnosis.html import render_fragment, render_html, write_html
from dltips.diagnosis.terminal import render_terminal
from dltips.findings import STATUSES, Finding, jsonable


@dataclass
class Report:
    """What the doctor found on one task: a task summary, findings in order, timings."""

    task: dict
    findings: list[Finding] = field(default_factory=list)
    duration_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, int]:
        """The number of findings of each status, every status present."""
        counts = {status: 0 for status in STATUSES}
        for finding in self.findings:
            counts[finding.status] += 1
        return counts

    @property
    def failed(self) -> bool:
        return any(f.status == "fail" for f in self.findings)

    def to_dict(self) -> dict:
        """The report as JSON-ready data (figures and timings are left to the HTML report)."""
        return {
            "dltips_version": __version__,
            "task": jsonable(self.task),
            "duration_s": round(self.duration_s, 3),
            "findings": [f.to_dict() for f in self.findings],
            "summary": self.summary,
        }

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 2) -> str:
        """The report as JSON text; also written atomically to `path` when given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    def to_html(self, path: str | os.PathLike | None = None) -> str:
        """The report as one self-contained HTML file; also written atomically to `path` when given."""
        return render_html(self) if path is None else write_html(self, path)

    def _repr_html_(self) -> str:
        return render_fragment(self)

    def print(self, console: Any = None) -> None:
        """Print a summary to the terminal (coloured with rich when available)."""
        render_terminal(self, console)

    @classmethod
    def from_json(cls, text: str) -> Report:
        """A report read back from `to_json` text (without figures and timings, which JSON does not keep)."""
        data = json.loads(text)
        return cls(
            task=data["task"],
            findings=[Finding.from_dict(f) for f in data["findings"]],
            duration_s=data.get("duration_s", 0.0),
        )
