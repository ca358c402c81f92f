"""Findings (one verdict on one tip) and the Report that collects them.

A function that answers "is this healthy?" returns a list of `Finding`s. The
doctor gathers them into a `Report`, whose JSON form is a contract (see
docs/architecture.md).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from dltips.core.io import atomic_write_text

STATUSES = ("pass", "warn", "fail", "info", "skip")


@dataclass
class Finding:
    """A verdict on one tip, with the numbers behind it and what to do.

    `figures` holds plain data that the reports draw (no plotting library is
    needed to make a finding). Each figure is a dict with a "kind":
      {"kind": "lines", "title", "x": [...], "series": {name: [...]}, "xlabel", "ylabel",
       "xlog": bool, "ylog": bool, "band": [low, high] or absent (a shaded y range)}
      {"kind": "images", "title", "images": [array-like (H, W) or (C, H, W)], "captions": [...]}
      {"kind": "table", "title", "columns": [...], "rows": [[...], ...]}
      {"kind": "heatmap", "title", "xlabel", "ylabel",
       "panels": [{"name", "z": [[...], ...], "x": [step, ...], "y_range": [lo, hi]}]}
    A heatmap panel shows values over time, e.g. one layer's activation
    histograms: each column of "z" is one time ("x" gives its step), each row a
    value bin, rows from low to high values over "y_range"; colour is the number
    in "z", usually log1p(count) computed by the producer. At most 12 panels are drawn.
    """

    tip: str
    status: str
    title: str
    message: str
    fix: str | None = None
    evidence: dict = field(default_factory=dict)
    figures: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Finding.status must be one of {STATUSES}, got {self.status!r}")
        from dltips.catalog import TIPS

        if self.tip not in TIPS:
            raise ValueError(f"Finding.tip must be a catalog id (see `dltips tips`), got {self.tip!r}")

    @property
    def theme(self) -> str:
        from dltips.catalog import TIPS

        return TIPS[self.tip].theme

    def to_dict(self) -> dict:
        """The finding as JSON-ready data (figures are left to the HTML report)."""
        return {
            "tip": self.tip,
            "theme": self.theme,
            "status": self.status,
            "title": self.title,
            "message": self.message,
            "fix": self.fix,
            "evidence": jsonable(self.evidence),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Finding:
        return cls(
            tip=data["tip"],
            status=data["status"],
            title=data["title"],
            message=data["message"],
            fix=data.get("fix"),
            evidence=data.get("evidence", {}),
        )


@dataclass
class Report:
    """What the doctor found on one task: a task summary, findings in order, timings."""

    task: dict
    findings: list[Finding] = field(default_factory=list)
    duration_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, int]:
        counts = {status: 0 for status in STATUSES}
        for finding in self.findings:
            counts[finding.status] += 1
        return counts

    @property
    def failed(self) -> bool:
        return any(f.status == "fail" for f in self.findings)

    def to_dict(self) -> dict:
        from dltips import __version__

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
        from dltips.diagnosis.report import render_html, write_html

        return render_html(self) if path is None else write_html(self, path)

    def _repr_html_(self) -> str:
        from dltips.diagnosis.report import render_fragment

        return render_fragment(self)

    def print(self, console: Any = None) -> None:
        """Print a summary to the terminal (coloured with rich when available)."""
        from dltips.diagnosis.report import render_terminal

        render_terminal(self, console)

    @classmethod
    def from_json(cls, text: str) -> Report:
        data = json.loads(text)
        return cls(
            task=data["task"],
            findings=[Finding.from_dict(f) for f in data["findings"]],
            duration_s=data.get("duration_s", 0.0),
        )


def jsonable(value: Any) -> Any:
    """Turn numbers, tensors and arrays inside `value` into plain JSON data.

    Non-finite floats become None, since JSON has no NaN or infinity.
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise TypeError(f"evidence values must be numbers, strings, lists or dicts; got {type(value).__name__}")
