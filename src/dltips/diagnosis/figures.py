"""A Finding's figures as HTML: line plots, image grids and tables (heat maps in `heatmap`).

Line plots are PNGs drawn by matplotlib; without it, or when it cannot draw
the data, the plot's data is shown as a table instead.
"""

from __future__ import annotations

import math
import warnings
from html import escape
from typing import Any

from dltips.core.png import data_uri, image_pixels, png_bytes
from dltips.diagnosis.heatmap import heatmap_html
from dltips.diagnosis.plots import DRAW_ERRORS, agg_figure, figure_png, not_drawn_note
from dltips.diagnosis.text import compact, floats, format_number, plain

MAX_ROWS = 50  # rows shown in a table figure or a plot's data table
MAX_IMAGES = 64  # images shown in one grid


def table_html(columns: list, rows: list, max_rows: int = MAX_ROWS) -> str:
    """A data table; numbers right-aligned, rows past `max_rows` counted in a last row."""
    head = "".join(f'<th scope="col">{escape(str(c))}</th>' for c in columns)
    body = []
    for row in list(rows)[:max_rows]:
        cells = []
        for value in plain(row):
            value = plain(value)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            cells.append(f'<td{" class=num" if numeric else ""}>{escape(compact(value))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    if len(rows) > max_rows:
        span = max(1, len(columns))
        body.append(f'<tr><td class="more" colspan="{span}">… {len(rows) - max_rows} more rows</td></tr>')
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def lines_png(figure: dict) -> bytes:
    """Draw a "lines" figure with matplotlib (raises ImportError without matplotlib)."""
    fig = agg_figure(figsize=(6.4, 3.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    series = figure.get("series") or {}
    x = figure.get("x")
    markers = bool(figure.get("markers"))
    for name, values in series.items():
        ys = floats(values)
        xs = floats(x)[: len(ys)] if x is not None else list(range(len(ys)))
        ax.plot(xs, ys[: len(xs)], label=str(name), linewidth=1.0 if markers else 1.6, marker="o" if markers else None,
                markersize=3.5)
    band = figure.get("band")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # log axes over data with no positive values
        if figure.get("xlog"):
            ax.set_xscale("log")
        if figure.get("ylog"):
            ax.set_yscale("log")
    if band is not None:
        draw_band(ax, *floats(band), log=bool(figure.get("ylog")))
    ax.set_xlabel(str(figure.get("xlabel", "")))
    ax.set_ylabel(str(figure.get("ylabel", "")))
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    if series or band is not None:
        n = len(series) + (band is not None)
        fig.legend(loc="outside right upper", fontsize=8, frameon=False, ncol=1 + (n - 1) // 14)
    return figure_png(fig)


BAND_MIN_SHARE = 0.025  # a band is drawn at least this share of the plot's height, so a narrow one stays visible


def draw_band(ax: Any, low: float, high: float, log: bool = False) -> None:
    """Shade the y range [low, high], edged by dashed lines; a band thinner than BAND_MIN_SHARE of the axis is
    widened about its centre (its legend keeps the true limits)."""
    bottom, top = ax.get_ylim()
    bottom, top = min(bottom, low), max(top, high)  # the band is always in view
    if log and bottom <= 0:
        bottom = ax.get_ylim()[0]
    scale = (lambda v: math.log10(max(v, 1e-300))) if log else (lambda v: v)
    unscale = (lambda v: 10.0 ** v) if log else (lambda v: v)
    lo, hi, span = scale(low), scale(high), abs(scale(top) - scale(bottom)) or 1.0
    if hi - lo < BAND_MIN_SHARE * span:
        centre, half = (lo + hi) / 2, BAND_MIN_SHARE * span / 2
        lo, hi = centre - half, centre + half
    label = f"band [{format_number(low)}, {format_number(high)}]"
    ax.axhspan(unscale(lo), unscale(hi), color="#1a7f37", alpha=0.22, linewidth=0, label=label)
    for edge in (low, high):
        ax.axhline(edge, color="#1a7f37", linewidth=1.0, linestyle="--", alpha=0.9)
    ax.set_ylim(bottom, top)


def lines_html(figure: dict) -> str:
    """A "lines" figure as an <img>, or as a table of its data when it cannot be drawn."""
    series = figure.get("series") or {}
    try:
        png = lines_png(figure)
    except DRAW_ERRORS as error:
        return not_drawn_note(error, "Its data:") + lines_table(figure)
    names = ", ".join(str(n) for n in series) or "no series"
    alt = f"Line plot of {names} against {figure.get('xlabel') or 'x'}"
    return f'<img class="plot" src="{data_uri(png)}" alt="{escape(alt)}" width="704" height="352">'


def lines_table(figure: dict) -> str:
    """A "lines" figure's data as a table: x, then one column per series."""
    series = figure.get("series") or {}
    length = max((len(plain(v)) for v in series.values()), default=0)
    x = plain(figure.get("x"))
    xs = x if x is not None else list(range(length))
    rows = [[_at(xs, i)] + [_at(v, i) for v in series.values()] for i in range(length)]
    return table_html([figure.get("xlabel") or "x", *series], rows)


def _at(values: Any, i: int) -> Any:
    values = plain(values)
    return values[i] if i < len(values) else None


def images_html(figure: dict) -> str:
    """An "images" figure as a grid of captioned PNGs; an image that cannot be shown becomes a note."""
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
            f'<figure class="cell"><img class="{klass}" src="{data_uri(png_bytes(pixels))}" alt="{escape(alt)}" '
            f'width="{max(1, round(width * scale))}" height="{max(1, round(height * scale))}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    if len(images) > MAX_IMAGES:
        cells.append(f'<p class="note">… {len(images) - MAX_IMAGES} more images</p>')
    return f'<div class="grid">{"".join(cells)}</div>'


def figure_html(figure: dict) -> str:
    """One figure from a Finding's `figures` as an HTML <figure>."""
    kind = figure.get("kind")
    if kind == "lines":
        body = lines_html(figure)
    elif kind == "images":
        body = images_html(figure)
    elif kind == "heatmap":
        body = heatmap_html(figure)
    elif kind == "table":
        body = table_html(list(figure.get("columns") or []), list(figure.get("rows") or []))
    else:
        body = f'<p class="note">Unknown figure kind {escape(repr(kind))}.</p>'
    title = figure.get("title")
    caption = f"<figcaption>{escape(str(title))}</figcaption>" if title else ""
    return f'<figure class="fig {escape(str(kind))}">{caption}{body}</figure>'
