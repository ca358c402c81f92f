"""A Report as a terminal summary: one line per finding under its theme, then the totals.

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
from dltips.diagnosis.text import ReportLike, by_theme, format_duration, task_facts, task_name, theme_title
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
    return header


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
    """The terminal summary as lines of styled segments: per theme, one line per finding, then totals.

    When the report is incomplete the INCOMPLETE line comes first and the totals
    end with the exit status that `fail_on` (the CLI's `--fail-on`) gives.
    """
    incomplete = report.incomplete
    status = report.exit_status(fail_on)
    lines: list[Line] = [_incomplete_line(incomplete), []] if incomplete else []
    lines.append(_header_line(report))
    width = max((len(f.tip) for f in report.findings), default=0)
    for theme, items in by_theme(report.findings):
        lines += [[], [(theme_title(theme), "bold underline")]]
        for f in items:
            lines.append([("  ", ""), (f.status.upper().ljust(4), STATUS_STYLES[f.status]), ("  ", ""),
                          (f.tip.ljust(width), "cyan"), ("  ", ""), (f.title, "")])
            if f.fix:
                pad = " " * (2 + 4 + 2 + width + 2)
                for i, text in enumerate(str(f.fix).splitlines() or [""]):
                    lines.append([(pad, ""), ("fix: " if i == 0 else "     ", "dim"), (text, "")])
    totals = _totals_line(report.summary)
    if incomplete:
        totals += _exit_segments(status, fail_on)
    return lines + [[], totals]


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
    lines = terminal_lines(report, fail_on)
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
