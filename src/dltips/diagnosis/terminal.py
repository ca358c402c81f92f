"""A Report as a terminal summary: what to fix first, one line per finding by stage, the time, the totals.

The report opens with its summary: the numbered steps to take in causal order
(`diagnosis.summary.next_steps`), each with its numbers and its fix, or one line
saying that all is well. Then the findings by stage, most severe first, each
check's time beside its first finding; then the time section (what the budget
cut, and the budget that would let it finish); then the totals.

An incomplete report (a check could not run because the user's code raised)
starts with an INCOMPLETE line naming those checks and their errors, and its
totals line ends with the exit status the CLI returns for it.

Coloured with rich when it is installed and the output is a terminal (or a rich
Console is given); plain text otherwise.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from dltips.core.params import ParamError
from dltips.diagnosis.summary import STAGES, by_stage
from dltips.diagnosis.text import ReportLike, format_duration, format_seconds, task_facts, task_name
from dltips.findings import Finding

STATUS_STYLES = {"pass": "bold green", "warn": "bold yellow", "fail": "bold red", "info": "bold blue", "skip": "dim"}
Line = list[tuple[str, str]]  # (text, rich style) segments
MAX_ERROR_CHARS = 120  # characters of one error quoted on the INCOMPLETE line
EXIT_MEANINGS = {1: "a check failed", 3: "incomplete"}  # the exit statuses an incomplete report can have


def _header_line(report: ReportLike) -> Line:
    """The title, the task's facts in brackets, and how long the run took."""
    facts = ", ".join(f"{value} {label}" if label in ("classes", "parameters", "vocabulary") else value
                      for label, value in task_facts(report.task))
    header: Line = [("dltips report: ", "bold"), (task_name(report.task), "bold")]
    if facts:
        header.append((f" ({facts})", ""))
    header.append((f" in {format_duration(report.duration_s)}", ""))
    if report.budget_s is not None:
        header.append((f" of a {format_duration(report.budget_s)} budget", ""))
    return header


def _summary_lines(report: ReportLike) -> list[Line]:
    """The numbered steps to take first, or the one line that says all is well."""
    steps = report.next_steps
    if not steps:
        return [[("All clear. ", STATUS_STYLES["pass"]), (report.all_clear, "")]]
    lines: list[Line] = [[("Fix first", "bold underline")]]
    width = max(len(s.tip) for s in steps)
    for i, step in enumerate(steps, 1):
        status = "error" if step.status == "skip" else step.status
        style = STATUS_STYLES.get(step.status, "bold red")
        lines.append([(f"  {i}. ", "bold"), (status.upper().ljust(5), style), (" ", ""), (step.tip.ljust(width), "cyan"),
                      ("  ", ""), (step.line, "")])
    return lines


def _time_lines(report: ReportLike) -> list[Line]:
    """What the budget cut and what a larger one would add; nothing when every check ran to the end."""
    budget = report.budget()
    if not budget["cut"]:
        return []
    lines: list[Line] = [[("Time", "bold underline")]]
    for cut in budget["cut"]:
        done = f" ({cut['done']})" if cut["done"] else ""
        lines.append([("  ", ""), ("cut  ", STATUS_STYLES["skip"]),
                      (f"{', '.join(cut['tips'])}: needs about {cut['needs_s']:.0f} s more{done}", "")])
    if budget["suggested_budget_s"] is not None:
        lines.append([("  ", ""), (f"--budget {budget['suggested_budget_s']:.0f} would let every check finish.", "")])
    return lines


def _totals_line(summary: dict[str, int]) -> Line:
    """One count per status, coloured where non-zero."""
    totals: Line = []
    for status, count in summary.items():
        if totals:
            totals.append((", ", ""))
        totals.append((f"{count} {status}", STATUS_STYLES[status] if count else "dim"))
    return totals


def _error_text(finding: Finding) -> str:
    """The error a check raised, on one line and clipped: from its evidence, else its title."""
    text = str(finding.evidence.get("error") or finding.title)
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _incomplete_line(incomplete: list[Finding]) -> Line:
    """The line that opens an incomplete report: how many checks could not run, each with its error."""
    count = f"{len(incomplete)} check{'' if len(incomplete) == 1 else 's'}"
    errors = ", ".join(f"{f.tip} ({_error_text(f)}"
                       f"{'; raised inside dltips: please report it' if _ours(f) else ''})" for f in incomplete)
    whose = "of an error" if any(_ours(f) for f in incomplete) else "your code raised"
    return [("INCOMPLETE:", STATUS_STYLES["fail"]), (f" {count} could not run because {whose}: {errors}", "")]


def _ours(finding: Finding) -> bool:
    return finding.evidence.get("raised_in") == "dltips"


def _exit_segments(status: int, fail_on: str) -> Line:
    """The end of an incomplete report's totals line: the exit status and what it means."""
    meaning = EXIT_MEANINGS[status]
    if status == 1:
        meaning = ("a check failed or warned" if fail_on == "warn" else meaning) + "; also incomplete"
    return [(" - ", ""), (f"exit status {status} ({meaning})", "bold")]


def terminal_lines(report: ReportLike, fail_on: str = "fail") -> list[Line]:
    """The terminal summary as lines of styled segments (see the module docstring for the layout).

    When the report is incomplete the INCOMPLETE line comes first and the totals
    end with the exit status that `fail_on` (the CLI's `--fail-on`) gives.
    """
    incomplete = report.incomplete
    status = report.exit_status(fail_on)
    lines: list[Line] = [_incomplete_line(incomplete), []] if incomplete else []
    lines += [_header_line(report), []]
    lines += _summary_lines(report)
    width = max((len(f.tip) for f in report.findings), default=0)
    timed: set[str] = set()
    for stage, items in by_stage(report.findings):
        lines += [[], [(STAGES[stage], "bold underline")]]
        for f in items:
            line = [("  ", ""), (f.status.upper().ljust(4), STATUS_STYLES[f.status]), ("  ", ""),
                     (f.tip.ljust(width), "cyan"), ("  ", ""), (f.title, "")]
            check = f.check or f.tip
            if check in report.timings and check not in timed:
                timed.add(check)
                line.append((f"  ({_check_time(check, f.tip, report.timings[check])})", "dim"))
            lines.append(line)
            if f.fix:
                pad = " " * (2 + 4 + 2 + width + 2)
                for i, text in enumerate(str(f.fix).splitlines() or [""]):
                    lines.append([(pad, ""), ("fix: " if i == 0 else "     ", "dim"), (text, "")])
    time_lines = _time_lines(report)
    if time_lines:
        lines += [[], *time_lines]
    totals = _totals_line(report.summary)
    if incomplete:
        totals += _exit_segments(status, fail_on)
    return lines + [[], totals]


def _check_time(check: str, tip: str, seconds: float) -> str:
    """A check's time as shown beside its first finding, named when the check is not the tip itself."""
    return format_seconds(float(seconds)) + ("" if check == tip else f", {check}")


def _rich_console_class() -> type | None:
    """rich's Console class, or None when rich is not installed."""
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console


def render_terminal(report: ReportLike, console: Any = None, fail_on: str = "fail") -> None:
    """Print the summary: with rich's colours on a terminal, else as plain text.

    `console` is a rich Console, a text stream, or None for sys.stdout (rich is
    used only when it is installed and stdout is a terminal); `fail_on` as in `Report.exit_status`.
    """
    print_lines(terminal_lines(report, fail_on), console)


def print_lines(lines: list[Line], console: Any = None) -> None:
    """Print styled lines: with rich on a terminal (or to the rich Console given), plain text on any other stream."""
    console_class = _rich_console_class()
    if console is None:
        isatty = getattr(sys.stdout, "isatty", None)
        if console_class is not None and isatty is not None and isatty():
            console = console_class()
        else:
            console = sys.stdout
    if console_class is not None and isinstance(console, console_class):
        from rich.text import Text

        for line in lines:
            console.print(Text.assemble(*line), soft_wrap=True)
        return
    if not callable(getattr(console, "writelines", None)):
        raise ParamError(f"console must be a rich Console, a text stream or None, got {type(console).__name__}")
    _write_plain(lines, console)


def _write_plain(lines: list[Line], stream: TextIO) -> None:
    """The lines without their styles, trailing spaces trimmed."""
    stream.writelines("".join(text for text, _ in line).rstrip() + "\n" for line in lines)
    if hasattr(stream, "flush"):
        stream.flush()
