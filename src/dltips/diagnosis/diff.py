"""Two doctor reports side by side: which verdicts changed, with their key numbers (`dltips diff`).

The loop a user lives in: fix one thing, run the doctor again, compare. Findings are matched by their check
(the JSON's "check", or the tip in reports written before it existed) and their tip (the cause probes give
findings of several tips) and, when one check gives several findings of one tip, by their order among them.
A finding present on one side only is "new" or "gone".

A change is "worse" or "better" by the order fail < error (could not run) < warn < skip < info < pass: a
skip sits below an info because it examined nothing. The key numbers of a pair are the scalar numbers of
their evidence (nested dicts one level deep, as "key.sub"), those that changed most first.

Exit status of `dltips diff`: 0; 1 with --fail-on-worse when a verdict got worse; 2 when a file cannot be
read as a dltips report.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from dltips.core.io import atomic_write_text
from dltips.core.params import ParamError
from dltips.diagnosis.terminal import STATUS_STYLES, Line, print_lines
from dltips.findings import SKIP_ERROR

RANK = ("fail", "error", "warn", "skip", "info", "pass")  # worst to best
KIND_ORDER = ("worse", "better", "new", "gone", "same")
KEY_NUMBERS = 4  # numbers shown per changed finding
BOOKKEEPING = {"skip_reason", "needs_s", "seconds", "samples", "every", "items", "n_items"}


@dataclass
class FindingChange:
    """One finding before and after (None on the side where it is absent)."""

    tip: str
    check: str
    before: str | None  # status, "error" for a check that could not run
    after: str | None
    title: str
    numbers: list[tuple[str, float | None, float | None]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if self.before is None:
            return "new"
        if self.after is None:
            return "gone"
        b, a = RANK.index(self.before), RANK.index(self.after)
        return "worse" if a < b else "better" if a > b else "same"

    def to_dict(self) -> dict:
        return {"tip": self.tip, "check": self.check, "kind": self.kind, "before": self.before, "after": self.after,
                "title": self.title, "numbers": [{"name": n, "before": b, "after": a} for n, b, a in self.numbers]}


@dataclass
class ReportDiff:
    """The comparison of two reports: their names and durations, and every finding's change."""

    names: tuple[str, str]
    durations: tuple[float, float]
    summaries: tuple[dict, dict]
    changes: list[FindingChange]

    @property
    def worse(self) -> bool:
        return any(c.kind == "worse" for c in self.changes)

    def ordered(self) -> list[FindingChange]:
        return sorted(self.changes, key=lambda c: KIND_ORDER.index(c.kind))

    def to_dict(self) -> dict:
        return {"before": {"name": self.names[0], "duration_s": self.durations[0], "summary": self.summaries[0]},
                "after": {"name": self.names[1], "duration_s": self.durations[1], "summary": self.summaries[1]},
                "changes": [c.to_dict() for c in self.ordered()]}

    def lines(self) -> list[Line]:
        """The comparison as styled terminal lines: header, the changed verdicts (worse first), the count kept."""
        counts = " -> ".join(", ".join(f"{n} {s}" for s, n in summary.items() if n) or "no findings"
                             for summary in self.summaries)
        lines: list[Line] = [[("dltips diff: ", "bold"), (f"{self.names[0]} -> {self.names[1]}", "bold"),
                              (f" ({self.durations[0]:.1f} s -> {self.durations[1]:.1f} s)", "")],
                             [("  ", ""), (counts, "")], []]
        changed = [c for c in self.ordered() if c.kind != "same"]
        if not changed:
            lines.append([("No verdict changed.", STATUS_STYLES["pass"])])
        width = max((len(c.check) for c in changed), default=0)
        for c in changed:
            lines.append([("  ", ""), (f"{c.kind:<6}", STATUS_STYLES["fail"] if c.kind == "worse" else "bold"),
                          ("  ", ""), (_status(c.before), STATUS_STYLES.get(c.before or "", "dim")), (" -> ", ""),
                          (_status(c.after), STATUS_STYLES.get(c.after or "", "dim")), ("  ", ""),
                          (c.check.ljust(width), "cyan"), ("  ", ""), (c.title, "")])
            for name, before, after in c.numbers:
                lines.append([(" " * 8, ""), (f"{name} {_number(before)} -> {_number(after)}", "dim")])
        same = sum(c.kind == "same" for c in self.changes)
        if changed:
            lines += [[], [(f"{same} verdict{'s' if same != 1 else ''} unchanged.", "")]]
        return lines


def diff_reports(before: dict, after: dict) -> ReportDiff:
    """Compare two reports given as their JSON data (`Report.to_dict()` or a file written by --json)."""
    old, new = _by_check(before), _by_check(after)
    changes = []
    for key in list(old) + [k for k in new if k not in old]:
        a, b = old.get(key), new.get(key)
        shown = b if b is not None else a
        changes.append(FindingChange(shown["tip"], key[0], _state(a), _state(b), shown["title"],
                                     _key_numbers(a, b) if a is not None and b is not None else []))
    return ReportDiff((_name(before), _name(after)), (float(before.get("duration_s") or 0.0),
                                                      float(after.get("duration_s") or 0.0)),
                      (dict(before.get("summary") or {}), dict(after.get("summary") or {})), changes)


def diff_files(before_path: str, after_path: str) -> ReportDiff:
    """Read two JSON reports and compare them; a file that is not a dltips report raises ParamError naming it."""
    return diff_reports(_read(before_path), _read(after_path))


def render_diff(diff: ReportDiff, console: Any = None) -> None:
    """Print the comparison: rich's colours on a terminal, plain text elsewhere (as `render_terminal`)."""
    print_lines(diff.lines(), console)


def diff_main(before_path: str, after_path: str, *, json_path: str | None = None, fail_on_worse: bool = False,
              out: TextIO | None = None) -> int:
    """`dltips diff`: print the comparison, write it as JSON when asked, and return the exit status."""
    try:
        diff = diff_files(before_path, after_path)
    except ParamError as e:
        print(f"dltips: {e}", file=sys.stderr)
        return 2
    render_diff(diff, out)
    if json_path:
        atomic_write_text(json_path, json.dumps(diff.to_dict(), indent=2, allow_nan=False) + "\n")
    return 1 if fail_on_worse and diff.worse else 0


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ParamError(f"{path}: no such file; give two reports written by `dltips doctor --json`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ParamError(f"{path}: not a JSON file ({e}); give a report written by `dltips doctor --json`") from None
    if not isinstance(data, dict) or not isinstance(data.get("findings"), list) or not all(
            isinstance(f, dict) and {"tip", "status", "title"} <= set(f) for f in data["findings"]):
        raise ParamError(f"{path}: not a dltips report (expected a JSON object with a list of findings, each with "
                         "a tip, a status and a title); give a report written by `dltips doctor --json`")
    return data


def _by_check(report: dict) -> dict[tuple[str, str, int], dict]:
    """Findings keyed by (check, tip, its position among that check's findings of that tip)."""
    seen: dict[tuple[str, str], int] = {}
    keyed = {}
    for f in report["findings"]:
        check = f.get("check") or f["tip"]
        position = seen.get((check, f["tip"]), 0)
        keyed[(check, f["tip"], position)] = f
        seen[(check, f["tip"])] = position + 1
    return keyed


def _state(finding: dict | None) -> str | None:
    if finding is None:
        return None
    if finding["status"] == "skip" and (finding.get("evidence") or {}).get("skip_reason") == SKIP_ERROR:
        return "error"
    return finding["status"]


def _scalars(evidence: dict) -> dict[str, float]:
    """The evidence's scalar numbers, nested dicts flattened one level ("key.sub"); booleans left out."""
    out = {}
    for key, value in (evidence or {}).items():
        if key in BOOKKEEPING:
            continue
        if isinstance(value, dict):
            out.update({f"{key}.{k}": float(v) for k, v in value.items() if _is_number(v)})
        elif _is_number(value):
            out[key] = float(value)
    return out


def _key_numbers(before: dict, after: dict) -> list[tuple[str, float | None, float | None]]:
    """The numbers of both sides, those that changed most (relative change) first, unchanged ones left out."""
    old, new = _scalars(before.get("evidence")), _scalars(after.get("evidence"))
    names = [n for n in list(old) + [k for k in new if k not in old] if old.get(n) != new.get(n)]

    def change(name: str) -> float:
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            return math.inf
        return abs(b - a) / max(abs(a), abs(b), 1e-12)

    return [(n, old.get(n), new.get(n)) for n in sorted(names, key=change, reverse=True)[:KEY_NUMBERS]]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _name(report: dict) -> str:
    return str((report.get("task") or {}).get("name") or "report")


def _status(status: str | None) -> str:
    return "-" if status is None else status


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
