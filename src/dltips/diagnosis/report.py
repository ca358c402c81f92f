"""Render a Report: one self-contained HTML file, a notebook view, and a terminal summary.

The HTML needs no network and no JavaScript: CSS is inline and figures are PNG
data URIs. Line plots and heat maps need matplotlib (the `report` extra);
without it a plot's data is shown as a table and a heat map as one gray image
per panel. Image grids are encoded here, with the standard library.
"""

from __future__ import annotations

import base64
import io
import math
import os
import struct
import sys
import warnings
import zlib
from collections.abc import Iterable
from html import escape
from typing import Any, TextIO

import numpy as np

from dltips.catalog import THEME_TITLES, THEMES, TIPS
from dltips.core.io import atomic_write_text
from dltips.findings import STATUSES, Finding, Report

MAX_ITEMS = 8  # list items / dict entries shown inside one evidence value
MAX_ROWS = 50  # rows shown in a table figure or a plot's data table
MAX_IMAGES = 64  # images shown in one grid
MAX_CHARS = 300  # characters shown for one evidence value
MAX_PANELS = 12  # panels drawn in one heat-map figure
HEAT_SIZE = (240, 120)  # least (width, height) in pixels of a gray heat-map panel (cells are repeated)
INSTALL_HINT = 'pip install "dltips[report]"'

# ---------------------------------------------------------------------------
# values -> short text


def _plain(value: Any) -> Any:
    """Tensors and arrays as nested lists, numpy scalars as Python numbers."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple, str)):
        return value.tolist()
    return value


def format_number(value: float) -> str:
    """A number in at most four significant digits; nan and inf spelled out."""
    if isinstance(value, int):  # bool included
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def _clip(text: str, limit: int = MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compact(value: Any, max_items: int = MAX_ITEMS) -> str:
    """One-line text for an evidence value; long lists and dicts end in '… N more'."""
    value = _plain(value)
    if isinstance(value, dict):
        parts = [f"{k}: {compact(v, max_items)}" for k, v in list(value.items())[:max_items]]
        if len(value) > max_items:
            parts.append(f"… {len(value) - max_items} more")
        return _clip("{" + ", ".join(parts) + "}")
    if isinstance(value, (list, tuple)):
        parts = [compact(v, max_items) for v in value[:max_items]]
        if len(value) > max_items:
            parts.append(f"… {len(value) - max_items} more")
        return _clip("[" + ", ".join(parts) + "]")
    if isinstance(value, (int, float)):
        return format_number(value)
    if value is None:
        return "–"
    return _clip(str(value))


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s"


def task_facts(task: dict) -> list[tuple[str, str]]:
    """(label, value) pairs describing the task, known keys first, then any others."""
    task = {k: _plain(v) for k, v in task.items()}
    facts = []
    if task.get("kind") is not None:
        facts.append(("kind", str(task["kind"])))
    if task.get("n_classes") is not None:
        label = "vocabulary" if task.get("kind") == "language-model" else "classes"
        facts.append((label, str(task["n_classes"])))
    if isinstance(task.get("n_params"), int):
        facts.append(("parameters", f"{task['n_params']:,}"))
    sizes = [f"{split} {task[f'n_{split}']:,}" for split in ("train", "valid", "test")
             if isinstance(task.get(f"n_{split}"), int)]
    if sizes:
        facts.append(("examples", ", ".join(sizes)))
    known = {"name", "kind", "n_classes", "n_params", "n_train", "n_valid", "n_test"}
    facts += [(str(k), compact(v)) for k, v in task.items() if k not in known]
    return facts


def by_theme(findings: Iterable[Finding]) -> list[tuple[str, list[Finding]]]:
    """Findings grouped by theme, themes in catalog order, findings in the order given."""
    groups: dict[str, list[Finding]] = {theme: [] for theme in THEMES}
    for finding in findings:
        groups.setdefault(TIPS[finding.tip].theme, []).append(finding)
    return [(theme, items) for theme, items in groups.items() if items]


# ---------------------------------------------------------------------------
# figures


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode uint8 pixels, (H, W) gray or (H, W, 3) RGB, as a PNG file."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    rows = pixels.reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def image_pixels(image: Any) -> np.ndarray:
    """An (H, W) or (C, H, W) image as min-max scaled uint8 pixels, (H, W) or (H, W, 3)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().float().numpy()
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 3 and array.shape[0] in (3, 4):
        array = array[:3].transpose(1, 2, 0)
    elif not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise ValueError(f"expected an image of shape (H, W) or (C, H, W) with C in 1, 3; got {array.shape}")
    finite = np.isfinite(array)
    low, high = (array[finite].min(), array[finite].max()) if finite.any() else (0.0, 0.0)
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return np.round(np.where(finite, scaled, 0.0) * 255).astype(np.uint8)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _floats(values: Iterable[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in _plain(values)]


def _lines_png(figure: dict) -> bytes:
    """Draw a "lines" figure with matplotlib's Agg canvas (raises ImportError without matplotlib)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    series = figure.get("series") or {}
    x = figure.get("x")
    for name, values in series.items():
        ys = _floats(values)
        xs = _floats(x)[: len(ys)] if x is not None else list(range(len(ys)))
        ax.plot(xs, ys[: len(xs)], label=str(name), linewidth=1.6)
    band = figure.get("band")
    if band is not None:
        low, high = _floats(band)
        ax.axhspan(low, high, color="#1a7f37", alpha=0.12, linewidth=0,
                   label=f"band [{format_number(low)}, {format_number(high)}]")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # log axes over data with no positive values
        if figure.get("xlog"):
            ax.set_xscale("log")
        if figure.get("ylog"):
            ax.set_yscale("log")
    ax.set_xlabel(str(figure.get("xlabel", "")))
    ax.set_ylabel(str(figure.get("ylabel", "")))
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    if series or band is not None:
        n = len(series) + (band is not None)
        fig.legend(loc="outside right upper", fontsize=8, frameon=False, ncol=1 + (n - 1) // 14)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _table(columns: list, rows: list, max_rows: int = MAX_ROWS) -> str:
    head = "".join(f'<th scope="col">{escape(str(c))}</th>' for c in columns)
    body = []
    for row in list(rows)[:max_rows]:
        cells = []
        for value in _plain(row):
            value = _plain(value)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            cells.append(f'<td{" class=num" if numeric else ""}>{escape(compact(value))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    if len(rows) > max_rows:
        span = max(1, len(columns))
        body.append(f'<tr><td class="more" colspan="{span}">… {len(rows) - max_rows} more rows</td></tr>')
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _lines_html(figure: dict) -> str:
    series = figure.get("series") or {}
    try:
        png = _lines_png(figure)
    except ImportError:
        note = f"Install matplotlib to draw this plot: <code>{escape(INSTALL_HINT)}</code>. Its data:"
        return f'<p class="note">{note}</p>' + _lines_table(figure)
    except (ValueError, TypeError, RuntimeError) as error:  # e.g. a label matplotlib cannot typeset
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        note = f"Could not draw this plot ({escape(reason)}). Its data:"
        return f'<p class="note">{note}</p>' + _lines_table(figure)
    names = ", ".join(str(n) for n in series) or "no series"
    alt = f"Line plot of {names} against {figure.get('xlabel') or 'x'}"
    return f'<img class="plot" src="{_data_uri(png)}" alt="{escape(alt)}" width="704" height="352">'


def _lines_table(figure: dict) -> str:
    """A "lines" figure's data as a table: x, then one column per series."""
    series = figure.get("series") or {}
    length = max((len(_plain(v)) for v in series.values()), default=0)
    x = _plain(figure.get("x"))
    xs = x if x is not None else list(range(length))
    rows = [[_at(xs, i)] + [_at(v, i) for v in series.values()] for i in range(length)]
    return _table([figure.get("xlabel") or "x", *series], rows)


def _at(values: Any, i: int) -> Any:
    values = _plain(values)
    return values[i] if i < len(values) else None


def _images_html(figure: dict) -> str:
    images = list(figure.get("images") or [])
    captions = list(figure.get("captions") or [])
    cells = []
    for i, image in enumerate(images[:MAX_IMAGES]):
        caption = str(captions[i]) if i < len(captions) else ""
        try:
            pixels = image_pixels(image)
        except ValueError as error:
            cells.append(f'<figure class="cell"><p class="note">{escape(str(error))}</p></figure>')
            continue
        height, width = pixels.shape[:2]
        scale = 112 / max(height, width)
        scale = math.floor(scale) if scale >= 1 else scale
        klass = "pixelated" if scale > 1 else ""
        alt = caption or f"image {i + 1}"
        cells.append(
            f'<figure class="cell"><img class="{klass}" src="{_data_uri(png_bytes(pixels))}" alt="{escape(alt)}" '
            f'width="{max(1, round(width * scale))}" height="{max(1, round(height * scale))}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    if len(images) > MAX_IMAGES:
        cells.append(f'<p class="note">… {len(images) - MAX_IMAGES} more images</p>')
    return f'<div class="grid">{"".join(cells)}</div>'


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) read from a PNG's header."""
    return struct.unpack(">II", png[16:24])


def _heatmap_panel(panel: Any) -> dict:
    """A heat-map panel checked and made drawable: z as a float array, its name and extent.

    Raises ValueError (TypeError for a panel that is not a dict) saying what is
    wrong, so one bad panel becomes a note instead of hiding the others.
    Without "x" the columns are numbered; without "y_range" the rows are.
    """
    if not isinstance(panel, dict):
        raise TypeError(f"expected a dict with name, z, x, y_range; got {type(panel).__name__}")
    rows = _plain(panel.get("z"))
    if not isinstance(rows, (list, tuple)) or not rows or not all(isinstance(r, (list, tuple)) for r in rows):
        raise ValueError("z must be a non-empty 2-D list (rows = value bins, columns = time)")
    lengths = sorted({len(r) for r in rows})
    if len(lengths) > 1:
        raise ValueError(f"z is ragged (rows of {', '.join(map(str, lengths))} values)")
    if lengths[0] == 0:
        raise ValueError("z has no columns")
    try:
        z = np.array([_floats(r) for r in rows], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("z must hold numbers") from None
    n_bins, n_steps = z.shape
    try:
        x = _floats(panel["x"]) if panel.get("x") is not None else list(range(n_steps))
        y_range = _floats(panel["y_range"]) if panel.get("y_range") is not None else [0.0, float(n_bins)]
    except (TypeError, ValueError):
        raise ValueError("x and y_range must hold numbers") from None
    if len(x) != n_steps:
        raise ValueError(f"x has {len(x)} steps for {n_steps} columns of z")
    if len(y_range) != 2 or not all(map(math.isfinite, y_range + [x[0], x[-1]])) or y_range[0] > y_range[1]:
        raise ValueError("y_range must be finite [lo, hi] with lo <= hi, and x finite")
    return {"name": str(panel.get("name", "")), "z": z, "steps": (x[0], x[-1]), "y_range": tuple(y_range),
            "extent": _heatmap_extent(x, *y_range)}


def _heatmap_extent(x: list[float], low: float, high: float) -> tuple[float, float, float, float]:
    """imshow's (left, right, bottom, top): each column centred on its step, rows spanning [low, high]."""
    half = (x[-1] - x[0]) / (len(x) - 1) / 2 if len(x) > 1 and x[-1] != x[0] else 0.5
    if high == low:  # a constant tensor: give its single value some height
        low, high = low - 0.5, high + 0.5
    return (x[0] - half, x[-1] + half, low, high)


def _heatmap_columns(n: int) -> int:
    """3 or 4 columns, whichever leaves fewer empty slots (4 on a tie); n itself when n < 3."""
    if n < 3:
        return max(n, 1)
    return min((4, 3), key=lambda c: (-n) % c)


def _heatmap_png(panels: list[dict], figure: dict) -> bytes:
    """Draw heat-map panels as small multiples with matplotlib's Agg canvas (ImportError without it).

    The grid is laid out by hand, in inches: a layout engine measures every
    tick label of every panel and takes several times longer than the drawing.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ncols = _heatmap_columns(len(panels))
    nrows = math.ceil(len(panels) / ncols)
    (ax_w, ax_h), (gap_w, gap_h) = (1.65, 1.2), (0.5, 0.5)
    left, right, bottom, top = 0.6, 0.15, 0.5, 0.3
    width = left + ncols * ax_w + (ncols - 1) * gap_w + right
    height = bottom + nrows * ax_h + (nrows - 1) * gap_h + top
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    grid = {"left": left / width, "right": 1 - right / width, "bottom": bottom / height, "top": 1 - top / height,
            "wspace": gap_w / ax_w, "hspace": gap_h / ax_h}
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=grid)
    for ax, panel in zip(axes.flat, panels):
        ax.imshow(panel["z"], origin="lower", aspect="auto", extent=panel["extent"], cmap="viridis",
                  interpolation="nearest")
        ax.set_title(panel["name"], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(4))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.supxlabel(str(figure.get("xlabel", "")), fontsize=9, y=0.02 / height)
    fig.supylabel(str(figure.get("ylabel", "")), fontsize=9, x=0.02 / width)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _heatmap_gray(panel: dict, figure: dict) -> str:
    """One panel as a gray PNG (brighter = larger), low values at the bottom, stretched to HEAT_SIZE."""
    pixels = image_pixels(np.flipud(panel["z"]))  # PNG rows run top to bottom
    n_bins, n_steps = pixels.shape
    pixels = np.repeat(np.repeat(pixels, -(-HEAT_SIZE[1] // n_bins), axis=0), -(-HEAT_SIZE[0] // n_steps), axis=1)
    (first, last), (low, high) = panel["steps"], panel["y_range"]
    xlabel, ylabel = figure.get("xlabel") or "x", figure.get("ylabel") or "y"
    caption = (f"{panel['name']}: {xlabel} {format_number(first)} to {format_number(last)}, "
               f"{ylabel} {format_number(low)} to {format_number(high)}")
    height, width = pixels.shape
    return (f'<figure class="cell"><img class="pixelated" src="{_data_uri(png_bytes(pixels))}" '
            f'alt="{escape(caption)}" width="{width}" height="{height}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _heatmap_html(figure: dict) -> str:
    """A "heatmap" figure: small multiples drawn by matplotlib, else gray images; bad panels as notes."""
    given = list(figure.get("panels") or [])
    panels, notes = [], []
    for i, panel in enumerate(given[:MAX_PANELS]):
        try:
            panels.append(_heatmap_panel(panel))
        except (TypeError, ValueError) as error:
            name = panel.get("name") if isinstance(panel, dict) and panel.get("name") else i + 1
            notes.append(f"Panel {name} not drawn: {error}.")
    if len(given) > MAX_PANELS:
        notes.append(f"… {len(given) - MAX_PANELS} more panels")
    if not given:
        notes.append("No panels to draw.")
    body = ""
    if panels:
        try:
            png = _heatmap_png(panels, figure)
            names = ", ".join(p["name"] for p in panels)
            width, height = _png_size(png)
            alt = f"Heat maps of {names}: {figure.get('ylabel') or 'value'} against {figure.get('xlabel') or 'x'}"
            body = f'<img class="plot" src="{_data_uri(png)}" alt="{escape(alt)}" width="{width}" height="{height}">'
        except ImportError:
            body = (f'<p class="note">Install matplotlib to draw this plot: <code>{escape(INSTALL_HINT)}</code>. '
                    "In gray instead (brighter = larger), time to the right, low values at the bottom:</p>"
                    + _heatmap_grays(panels, figure))
        except (ValueError, TypeError, RuntimeError) as error:  # e.g. a name matplotlib cannot typeset
            reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
            body = (f'<p class="note">Could not draw this plot ({escape(reason)}). In gray instead '
                    "(brighter = larger), time to the right, low values at the bottom:</p>"
                    + _heatmap_grays(panels, figure))
    return body + "".join(f'<p class="note">{escape(note)}</p>' for note in notes)


def _heatmap_grays(panels: list[dict], figure: dict) -> str:
    return '<div class="grid">' + "".join(_heatmap_gray(p, figure) for p in panels) + "</div>"


def figure_html(figure: dict) -> str:
    """One figure from a Finding's `figures` as an HTML <figure>."""
    kind = figure.get("kind")
    if kind == "lines":
        body = _lines_html(figure)
    elif kind == "images":
        body = _images_html(figure)
    elif kind == "heatmap":
        body = _heatmap_html(figure)
    elif kind == "table":
        body = _table(list(figure.get("columns") or []), list(figure.get("rows") or []))
    else:
        body = f'<p class="note">Unknown figure kind {escape(repr(kind))}.</p>'
    title = figure.get("title")
    caption = f"<figcaption>{escape(str(title))}</figcaption>" if title else ""
    return f'<figure class="fig {escape(str(kind))}">{caption}{body}</figure>'


# ---------------------------------------------------------------------------
# HTML


def evidence_html(evidence: dict) -> str:
    """Evidence as a collapsible key/value table; nested dicts as nested tables."""
    if not evidence:
        return ""
    rows = []
    for key, value in evidence.items():
        value = _plain(value)
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


def finding_html(finding: Finding) -> str:
    status = finding.status
    parts = [
        f'<article class="finding {status}">',
        (f'<header><span class="badge {status}">{status}</span> '
         f"<h3>{escape(finding.title)}</h3> <code class=tip>{escape(finding.tip)}</code></header>"),
        f'<p class="message">{escape(finding.message)}</p>',
    ]
    if finding.fix:
        parts.append(f'<p class="fix"><strong>Fix:</strong> {escape(finding.fix)}</p>')
    parts.append(evidence_html(finding.evidence))
    if finding.figures:
        parts.append('<div class="figs">' + "".join(figure_html(f) for f in finding.figures) + "</div>")
    parts.append("</article>")
    return "".join(parts)


def _header_html(report: Report) -> str:
    name = str(report.task.get("name") or "task")
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
    links = "".join(f'<li><a href="#theme-{theme}">{escape(THEME_TITLES.get(theme, theme))}</a> '
                    f"<span>{len(items)}</span></li>" for theme, items in groups)
    return f'<nav aria-label="themes"><ul>{links}</ul></nav>'


def _timings_html(timings: dict) -> str:
    if not timings:
        return ""
    rows = "".join(f'<tr><th scope="row">{escape(str(k))}</th><td>{escape(format_duration(float(v)))}</td></tr>'
                   for k, v in timings.items())
    return f'<details class="evidence"><summary>Timings</summary><table class="kv">{rows}</table></details>'


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
@media print{
 .dltips-report{max-width:none;padding:0;font-size:10.5pt}
 .dltips-report *{-webkit-print-color-adjust:exact;print-color-adjust:exact}
 .dltips-report nav{display:none}
 .dltips-report h2{break-after:avoid}
 .dltips-report details::details-content{content-visibility:visible;display:block}
}
"""


def render_fragment(report: Report) -> str:
    """The report as one self-contained <div> (its own <style>), as shown in notebooks."""
    from dltips import __version__

    groups = by_theme(report.findings)
    sections = "".join(
        f'<section id="theme-{theme}"><h2>{escape(THEME_TITLES.get(theme, theme))}</h2>'
        + "".join(finding_html(f) for f in items) + "</section>"
        for theme, items in groups
    )
    if not groups:
        sections = '<p class="note">No findings.</p>'
    return (f'<div class="dltips-report"><style>{CSS}</style>{_header_html(report)}'
            f"{_nav_html(groups) if len(groups) > 1 else ''}<main>{sections}</main>"
            f"<footer>{_timings_html(report.timings)}<p>dltips {escape(__version__)}</p></footer></div>")


def render_html(report: Report) -> str:
    """The report as one self-contained HTML document (no scripts, no network)."""
    name = escape(str(report.task.get("name") or "task"))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>dltips report: {name}</title>"
            "<style>body{margin:0;background:#fff}</style></head>"
            f"<body>{render_fragment(report)}</body></html>\n")


def write_html(report: Report, path: str | os.PathLike) -> str:
    """Render the report and write it atomically to `path`; return the HTML."""
    text = render_html(report)
    atomic_write_text(path, text)
    return text


# ---------------------------------------------------------------------------
# terminal

STATUS_STYLES = {"pass": "bold green", "warn": "bold yellow", "fail": "bold red", "info": "bold blue", "skip": "dim"}
Line = list[tuple[str, str]]  # (text, rich style) segments


def terminal_lines(report: Report) -> list[Line]:
    """The terminal summary as lines of styled segments: per theme, one line per finding, then totals."""
    name = str(report.task.get("name") or "task")
    facts = ", ".join(f"{value} {label}" if label in ("classes", "parameters", "vocabulary") else value
                      for label, value in task_facts(report.task))
    header: Line = [("dltips report: ", "bold"), (name, "bold")]
    if facts:
        header.append((f" ({facts})", ""))
    header.append((f" in {format_duration(report.duration_s)}", ""))
    lines: list[Line] = [header]
    width = max((len(f.tip) for f in report.findings), default=0)
    for theme, items in by_theme(report.findings):
        lines += [[], [(THEME_TITLES.get(theme, theme), "bold underline")]]
        for f in items:
            lines.append([("  ", ""), (f.status.upper().ljust(4), STATUS_STYLES[f.status]), ("  ", ""),
                          (f.tip.ljust(width), "cyan"), ("  ", ""), (f.title, "")])
            if f.fix:
                pad = " " * (2 + 4 + 2 + width + 2)
                for i, text in enumerate(str(f.fix).splitlines() or [""]):
                    lines.append([(pad, ""), ("fix: " if i == 0 else "     ", "dim"), (text, "")])
    totals: Line = []
    for status, count in report.summary.items():
        if totals:
            totals.append((", ", ""))
        totals.append((f"{count} {status}", STATUS_STYLES[status] if count else "dim"))
    lines += [[], totals]
    return lines


def _rich_console_class() -> type | None:
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console


def render_terminal(report: Report, console: Any = None) -> None:
    """Print the summary: with rich's colours on a terminal, else as plain text.

    `console` is a rich Console, a text stream, or None for sys.stdout (rich is
    used only when it is installed and stdout is a terminal).
    """
    lines = terminal_lines(report)
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
    _write_plain(lines, console)


def _write_plain(lines: list[Line], stream: TextIO) -> None:
    stream.writelines("".join(text for text, _ in line).rstrip() + "\n" for line in lines)
    if hasattr(stream, "flush"):
        stream.flush()
