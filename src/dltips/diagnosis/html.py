"""A Report as HTML: one self-contained file (no scripts, no network) and the notebook view.

CSS is inline and figures are PNG data URIs (see `figures` and `heatmap`).
All styles are scoped under `.dltips-report`, so the notebook view leaves the
page around it alone.
"""

from __future__ import annotations

import os
from html import escape

from dltips import __version__
from dltips.core.io import atomic_write_text
from dltips.diagnosis.figures import MAX_ROWS, figure_html
from dltips.diagnosis.summary import STAGES, by_stage
from dltips.diagnosis.text import ReportLike, compact, format_duration, format_seconds, plain, task_facts, task_name
from dltips.findings import STATUSES, Finding

# Scoped under .dltips-report; statuses colour badges and borders through --c.
CSS = """
.dltips-report{--pass:#1a7f37;--warn:#9a6700;--fail:#cf222e;--info:#0969da;--skip:#6e7781;
 --ink:#1f2328;--muted:#59636e;--line:#d1d9e0;--soft:#f6f8fa;
 font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:var(--ink);background:#fff;max-width:1000px;margin:0 auto;padding:24px 28px;box-sizing:border-box}
.dltips-report *{box-sizing:border-box}
.dltips-report h1{font-size:1.6em;margin:0 0 .3em;line-height:1.25}
.dltips-report h2{font-size:1.25em;margin:1.6em 0 .4em;padding-bottom:.2em;border-bottom:1px solid var(--line)}
.dltips-report h3{display:inline;font-size:1.05em;margin:0}
.dltips-report code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em}
.dltips-report .facts{display:flex;flex-wrap:wrap;gap:.2em 1.6em;margin:.4em 0 .8em;padding:0}
.dltips-report .facts div{display:flex;gap:.4em}
.dltips-report .facts dt{color:var(--muted)}
.dltips-report .facts dd{margin:0;font-weight:600}
.dltips-report .summary,.dltips-report nav ul{list-style:none;display:flex;flex-wrap:wrap;gap:.5em;margin:0;padding:0}
.dltips-report .count{display:flex;align-items:center;gap:.35em;border:1px solid var(--line);border-radius:6px;
 padding:.2em .6em .2em .3em}
.dltips-report .count b{font-size:1.1em}
.dltips-report .count.zero{opacity:.45}
.dltips-report nav{margin:1em 0 0;font-size:.9em}
.dltips-report nav a{color:var(--info)}
.dltips-report nav span{color:var(--muted)}
.dltips-report .badge{display:inline-block;min-width:3.4em;text-align:center;padding:.05em .45em;border-radius:4px;
 color:#fff;font-weight:700;font-size:.72em;letter-spacing:.05em;text-transform:uppercase;vertical-align:.15em}
.dltips-report .pass{--c:var(--pass)}.dltips-report .warn{--c:var(--warn)}.dltips-report .fail{--c:var(--fail)}
.dltips-report .info{--c:var(--info)}.dltips-report .skip{--c:var(--skip)}
.dltips-report .badge{background:var(--c)}
.dltips-report .finding{border:1px solid var(--line);border-left:5px solid var(--c);border-radius:6px;
 padding:.7em 1em;margin:.8em 0;break-inside:avoid}
.dltips-report .finding header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.5em}
.dltips-report .tip{color:var(--muted);margin-left:auto}
.dltips-report .message{margin:.4em 0;white-space:pre-line}
.dltips-report .fix{margin:.5em 0;padding:.4em .7em;background:#fff8c5;border-left:3px solid #d4a72c;
 border-radius:4px;white-space:pre-line}
.dltips-report details{margin:.4em 0}
.dltips-report summary{cursor:pointer;color:var(--muted);font-size:.9em}
.dltips-report .kv{border-collapse:collapse;font-size:.85em;margin:.3em 0}
.dltips-report .kv th{text-align:left;font-weight:600;color:var(--muted);padding:.1em 1em .1em 0;
 vertical-align:top;white-space:nowrap}
.dltips-report .kv td{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
 overflow-wrap:anywhere;padding:.1em 0}
.dltips-report .kv .kv{margin:0;font-size:1em}
.dltips-report .figs{display:flex;flex-wrap:wrap;gap:1em 1.5em;margin-top:.6em}
.dltips-report figure{margin:0;max-width:100%}
.dltips-report figcaption{font-size:.85em;color:var(--muted);font-weight:600;margin-bottom:.2em}
.dltips-report img{max-width:100%;height:auto}
.dltips-report img.plot{border:1px solid var(--line);border-radius:4px}
.dltips-report .grid{display:flex;flex-wrap:wrap;gap:.6em}
.dltips-report .cell{text-align:center}
.dltips-report .cell img{display:block;border:1px solid var(--line);background:var(--soft)}
.dltips-report .cell figcaption{font-weight:400;max-width:10em;margin:.1em auto 0}
.dltips-report img.pixelated{image-rendering:pixelated}
.dltips-report .data{border-collapse:collapse;font-size:.85em}
.dltips-report .data th,.dltips-report .data td{border:1px solid var(--line);padding:.15em .6em;text-align:left}
.dltips-report .data th{background:var(--soft)}
.dltips-report .data td.num{text-align:right;font-variant-numeric:tabular-nums}
.dltips-report .more,.dltips-report .note{color:var(--muted);font-style:italic}
.dltips-report footer{margin-top:2em;color:var(--muted);font-size:.85em}
.dltips-report .next{border:1px solid var(--line);border-radius:6px;padding:.6em 1em;margin:1em 0;background:var(--soft)}
.dltips-report .next h2{margin:.1em 0 .4em;border:0;padding:0}
.dltips-report .next ol{margin:0;padding-left:1.6em}
.dltips-report .next li{margin:.35em 0}
.dltips-report .next .clear{margin:0;color:var(--pass);font-weight:600}
.dltips-report .took{color:var(--muted);font-size:.8em}
@media print{
 .dltips-report{max-width:none;padding:0;font-size:10.5pt}
 .dltips-report *{-webkit-print-color-adjust:exact;print-color-adjust:exact}
 .dltips-report nav{display:none}
 .dltips-report h2{break-after:avoid}
 .dltips-report details::details-content{content-visibility:visible;display:block}
}
"""


def evidence_html(evidence: dict) -> str:
    """Evidence as a collapsible key/value table; nested dicts as nested tables."""
    if not evidence:
        return ""
    rows = []
    for key, value in evidence.items():
        value = plain(value)
        if isinstance(value, dict) and value:
            inner = [f'<tr><th scope="row">{escape(str(k))}</th><td>{escape(compact(v))}</td></tr>'
                     for k, v in list(value.items())[:MAX_ROWS]]
            if len(value) > MAX_ROWS:
                inner.append(f'<tr><td class="more" colspan="2">… {len(value) - MAX_ROWS} more</td></tr>')
            cell = f'<table class="kv">{"".join(inner)}</table>'
        else:
            cell = escape(compact(value))
        rows.append(f'<tr><th scope="row">{escape(str(key))}</th><td>{cell}</td></tr>')
    return f'<details class="evidence"><summary>Evidence</summary><table class="kv">{"".join(rows)}</table></details>'


def finding_html(finding: Finding, took: str = "") -> str:
    """One finding as an <article>: status badge, title, the check's time, tip, message, fix, evidence and
    figures."""
    status = finding.status
    took_html = f' <span class="took">{escape(took)}</span>' if took else ""
    parts = [
        f'<article class="finding {status}">',
        (f'<header><span class="badge {status}">{status}</span> '
         f"<h3>{escape(finding.title)}</h3>{took_html} <code class=tip>{escape(finding.tip)}</code></header>"),
        f'<p class="message">{escape(finding.message)}</p>',
    ]
    if finding.fix:
        parts.append(f'<p class="fix"><strong>Fix:</strong> {escape(finding.fix)}</p>')
    parts.append(evidence_html(finding.evidence))
    if finding.figures:
        parts.append('<div class="figs">' + "".join(figure_html(f) for f in finding.figures) + "</div>")
    parts.append("</article>")
    return "".join(parts)


def _header_html(report: ReportLike) -> str:
    """The title, the task's facts and one count per status."""
    name = task_name(report.task)
    facts = task_facts(report.task) + [("duration", format_duration(report.duration_s))]
    dl = "".join(f"<div><dt>{escape(label)}</dt><dd>{escape(value)}</dd></div>" for label, value in facts)
    counts = report.summary
    pills = "".join(
        f'<li class="count {status}{" zero" if counts[status] == 0 else ""}">'
        f'<span class="badge {status}">{status}</span> <b>{counts[status]}</b></li>'
        for status in STATUSES
    )
    return (f"<header class=top><h1>dltips report: {escape(name)}</h1><dl class=facts>{dl}</dl>"
            f'<ul class="summary" aria-label="findings by status">{pills}</ul></header>')


def _nav_html(groups: list[tuple[str, list[Finding]]]) -> str:
    """Links to each stage's section, with its number of findings."""
    links = "".join(f'<li><a href="#stage-{stage}">{escape(STAGES[stage])}</a> '
                    f"<span>{len(items)}</span></li>" for stage, items in groups)
    return f'<nav aria-label="sections"><ul>{links}</ul></nav>'


def _next_html(report: ReportLike) -> str:
    """The summary box: the numbered steps to take first, or the one line that says all is well."""
    steps = report.next_steps
    if not steps:
        return f'<section class="next" id="next-steps"><h2>Summary</h2><p class="clear">{escape(report.all_clear)}</p></section>'
    items = "".join(
        f'<li class="{s.status}"><span class="badge {s.status}">{"error" if s.status == "skip" else s.status}</span> '
        f"<code>{escape(s.tip)}</code> {escape(s.line)}</li>" for s in steps)
    return f'<section class="next" id="next-steps"><h2>Fix first</h2><ol>{items}</ol></section>'


def _timings_html(report: ReportLike) -> str:
    """The time section: the budget, what it cut and the budget that would let every check finish, then the
    time each check took (a collapsible table)."""
    budget = report.budget()
    parts = []
    if budget["budget_s"] is not None:
        parts.append(f"<p>{escape(format_duration(report.duration_s))} of a "
                     f"{escape(format_duration(budget['budget_s']))} budget.</p>")
    if budget["cut"]:
        cuts = "".join(f"<li><code>{escape(', '.join(c['tips']))}</code>: needs about {c['needs_s']:.0f} s more"
                       f"{' (' + escape(c['done']) + ')' if c['done'] else ''}</li>" for c in budget["cut"])
        parts.append(f"<p>The budget cut these checks short (they give no verdict on part of their plan):</p><ul>{cuts}</ul>")
        if budget["suggested_budget_s"] is not None:
            parts.append(f"<p><code>--budget {budget['suggested_budget_s']:.0f}</code> would let every check finish.</p>")
    if report.timings:
        rows = "".join(f'<tr><th scope="row">{escape(str(k))}</th><td>{escape(format_seconds(float(v)))}</td></tr>'
                       for k, v in report.timings.items())
        parts.append(f'<details class="evidence"><summary>Time per check</summary><table class="kv">{rows}</table></details>')
    return f'<section id="time"><h2>Time</h2>{"".join(parts)}</section>' if parts else ""


def _took(report: ReportLike, finding: Finding, timed: set[str]) -> str:
    """The time of the finding's check, given once per check (on its first finding in the report)."""
    check = finding.check or finding.tip
    if check not in report.timings or check in timed:
        return ""
    timed.add(check)
    return format_seconds(float(report.timings[check])) + ("" if check == finding.tip else f" ({check})")


def render_fragment(report: ReportLike) -> str:
    """The report as one self-contained <div> (its own <style>), as shown in notebooks."""
    groups = by_stage(report.findings)
    timed: set[str] = set()
    sections = "".join(
        f'<section id="stage-{stage}"><h2>{escape(STAGES[stage])}</h2>'
        + "".join(finding_html(f, _took(report, f, timed)) for f in items) + "</section>"
        for stage, items in groups
    )
    if not groups:
        sections = '<p class="note">No findings.</p>'
    return (f'<div class="dltips-report"><style>{CSS}</style>{_header_html(report)}{_next_html(report)}'
            f"{_nav_html(groups) if len(groups) > 1 else ''}<main>{sections}{_timings_html(report)}</main>"
            f"<footer><p>dltips {escape(__version__)}</p></footer></div>")


def render_html(report: ReportLike) -> str:
    """The report as one self-contained HTML document (no scripts, no network)."""
    name = escape(task_name(report.task))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>dltips report: {name}</title>"
            "<style>body{margin:0;background:#fff}</style></head>"
            f"<body>{render_fragment(report)}</body></html>\n")


def write_html(report: ReportLike, path: str | os.PathLike) -> str:
    """Render the report and write it atomically to `path`; return the HTML."""
    text = render_html(report)
    atomic_write_text(path, text)
    return text
