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
from dltips.core.params import one_of
from dltips.diagnosis.html import render_fragment, render_html, write_html
from dltips.diagnosis.summary import BudgetCut, NextStep, budget_cuts, next_steps, suggested_budget, summary_line
from dltips.diagnosis.terminal import render_terminal
from dltips.findings import SKIP_ERROR, STATUSES, Finding, jsonable

FAIL_ON = ("fail", "warn")  # the statuses `exit_status` can be asked to fail on


@dataclass
class Report:
    """What the doctor found on one task: a task summary, findings in order, the seconds each check took
    (`timings`, by check name: a finding's `check`) and the budget it ran under (None outside the doctor)."""

    task: dict
    findings: list[Finding] = field(default_factory=list)
    duration_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    budget_s: float | None = None

    @property
    def next_steps(self) -> list[NextStep]:
        """What to fix first, in causal order (see `diagnosis.summary`); empty when all is well."""
        return next_steps(self.findings)

    @property
    def all_clear(self) -> str:
        """The one line a report without a warn, a fail or an error opens with."""
        return summary_line(self.findings)

    @property
    def budget_cuts(self) -> list[BudgetCut]:
        """The checks the time budget stopped before the end of their plan."""
        return budget_cuts(self.findings)

    def budget(self) -> dict:
        """The time section: budget, duration, each check's seconds, what the budget cut and the budget that
        would let it all finish."""
        cuts = self.budget_cuts
        return {"budget_s": self.budget_s, "duration_s": round(self.duration_s, 3),
                "checks_s": {k: round(float(v), 3) for k, v in self.timings.items()},
                "cut": [c.to_dict() for c in cuts], "suggested_budget_s": suggested_budget(self.budget_s, cuts)}

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

    @property
    def incomplete(self) -> list[Finding]:
        """The `skip` findings of checks that could not run because the user's code raised.

        A check skipped for time (`skip_reason` "time") is not here: the budget decides how much is examined.
        """
        return [f for f in self.findings if f.evidence.get("skip_reason") == SKIP_ERROR]

    def exit_status(self, fail_on: str = "fail") -> int:
        """The CLI's exit status: 1 a check failed (or, with fail_on="warn", warned), 3 incomplete, else 0.

        Failures take precedence over incompleteness: a definite failure is the
        stronger signal, and the report still lists the checks that could not run.
        """
        one_of("fail_on", fail_on, FAIL_ON)
        failing = ("fail",) if fail_on == "fail" else ("warn", "fail")
        if any(f.status in failing for f in self.findings):
            return 1
        return 3 if self.incomplete else 0

    def to_dict(self) -> dict:
        """The report as JSON-ready data (figures are left to the HTML report)."""
        return {
            "dltips_version": __version__,
            "task": jsonable(self.task),
            "duration_s": round(self.duration_s, 3),
            "next_steps": [s.to_dict() for s in self.next_steps],
            "findings": [f.to_dict() for f in self.findings],
            "summary": self.summary,
            "incomplete": [f.tip for f in self.incomplete],
            "timings": self.budget(),
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

    def print(self, console: Any = None, fail_on: str = "fail") -> None:
        """Print a summary to the terminal (coloured with rich when available).

        `fail_on` is the CLI's `--fail-on`: an incomplete report's summary line gives the exit status it implies.
        """
        render_terminal(self, console, fail_on)

    @classmethod
    def from_json(cls, text: str) -> Report:
        """A report read back from `to_json` text (without figures, which JSON does not keep).

        "incomplete" and "next_steps" are not read: they follow from the findings, and older JSON lacks them.
        """
        data = json.loads(text)
        timings = data.get("timings") or {}
        return cls(
            task=data["task"],
            findings=[Finding.from_dict(f) for f in data["findings"]],
            duration_s=data.get("duration_s", 0.0),
            timings=dict(timings.get("checks_s") or {}),
            budget_s=timings.get("budget_s"),
        )
