"""Findings: one verdict on one tip, and the JSON helpers behind their contract.

A function that answers "is this healthy?" returns a list of `Finding`s. The
doctor gathers them into a `dltips.diagnosis.report.Report`, whose JSON form is
a contract (see docs/architecture.md).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from dltips.catalog import TIPS
from dltips.core.params import ParamError, one_of

STATUSES = ("pass", "warn", "fail", "info", "skip")


@dataclass
class Finding:
    """A verdict on one tip, with the numbers behind it and what to do.

    `figures` holds plain data that the reports draw (no plotting library is
    needed to make a finding). Each figure is a dict with a "kind":
      {"kind": "lines", "title", "x": [...], "series": {name: [...]}, "xlabel", "ylabel",
       "xlog": bool, "ylog": bool, "band": [low, high] or absent (a shaded y range),
       "markers": bool (points marked, for one point per evaluation; default False)}
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
    check: str | None = None  # the check that made it, when one tip has several (e.g. "causal-leak" for error-gaps)

    def __post_init__(self) -> None:
        one_of("Finding.status", self.status, STATUSES)
        if self.tip not in TIPS:
            raise ParamError(f"Finding.tip must be a catalog id (see `dltips tips`), got {self.tip!r}")

    @property
    def theme(self) -> str:
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
            "check": self.check or self.tip,
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
            check=data.get("check"),
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
    raise ParamError(f"evidence values must be numbers, strings, lists or dicts; got {type(value).__name__}")


# Why a check said `skip`, in `evidence["skip_reason"]`: the CLI's exit status and the summary read it.
SKIP_TIME = "time"  # its fixed plan did not fit in the time it was given
SKIP_ERROR = "error"  # the user's code (model, loss, optimizer, data) raised


def skipped_for_time(tip: str, needs_s: float, done: str = "", evidence: dict | None = None) -> Finding:
    """A `skip`: the check's plan needs about `needs_s` seconds more than it had. Never a verdict on part of it.

    `done` says, in a few words, what was examined before the time ran out.
    """
    needs = max(float(needs_s), 1.0)
    message = (f"Its plan needs about {needs:.0f} s more than the time it was given{': ' + done if done else ''}. "
               "It gives no verdict on part of its evidence.")
    return Finding(tip, "skip", f"Not run to the end: needs about {needs:.0f} s more", message,
                   f"Rerun with a budget about {needs:.0f} s larger (`--budget`), or run this check alone "
                   f"(`--only {tip}`).", {**(evidence or {}), "skip_reason": SKIP_TIME, "needs_s": round(needs, 1), "done": done})


def could_not_run(tip: str, error: BaseException, what: str = "The check") -> Finding:
    """A `skip`: code raised while `what` ran; the report says so first and the CLI exits 3.

    `evidence["raised_in"]` says whose code: "dltips" when the innermost frame of the traceback is in
    dltips itself (a bug to report), else "your code" (the model, loss, optimizer or data, or torch
    called from them).
    """
    name = type(error).__name__
    own = raised_in_dltips(error)
    fix = ("This is a bug in dltips: please report it with the traceback from --debug." if own else
           "Fix the error (run with --debug to see where it was raised), then rerun.")
    return Finding(tip, "skip", f"Could not run: {name}",
                   f"{what} raised {name}: {error}{' inside dltips itself' if own else ''}. Run with --debug for "
                   "the traceback.", fix,
                   {"skip_reason": SKIP_ERROR, "error": f"{name}: {error}", "raised_in": "dltips" if own else "your code"})


def raised_in_dltips(error: BaseException) -> bool:
    """Whether the innermost frame of `error`'s traceback is a file of the dltips package."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    package = os.path.dirname(os.path.abspath(__file__))
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package + os.sep)
