"""A "heatmap" figure as HTML: values over time, one small panel per layer (or other source).

Panels are drawn together by matplotlib as one PNG of small multiples; without
it, or when it cannot draw them, each panel is shown as a gray image. A
malformed panel becomes a note saying what is wrong, and the others are drawn.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import numpy as np

from dltips.core.png import data_uri, image_pixels, png_bytes, png_size
from dltips.diagnosis.plots import DRAW_ERRORS, agg_figure, figure_png, not_drawn_note
from dltips.diagnosis.text import floats, format_number, plain

MAX_PANELS = 12  # panels drawn in one heat-map figure
HEAT_SIZE = (240, 120)  # least (width, height) in pixels of a gray heat-map panel (cells are repeated)
GRAY_INSTEAD = "In gray instead (brighter = larger), time to the right, low values at the bottom:"


def heatmap_panel(panel: Any) -> dict:
    """A heat-map panel checked and made drawable: z as a float array, its name and extent.

    Raises ValueError (TypeError for a panel that is not a dict) saying what is
    wrong, so one bad panel becomes a note instead of hiding the others.
    Without "x" the columns are numbered; without "y_range" the rows are.
    """
    if not isinstance(panel, dict):
        raise TypeError(f"expected a dict with name, z, x, y_range; got {type(panel).__name__}")
    z = _panel_z(panel.get("z"))
    n_bins, n_steps = z.shape
    try:
        x = floats(panel["x"]) if panel.get("x") is not None else list(range(n_steps))
        y_range = floats(panel["y_range"]) if panel.get("y_range") is not None else [0.0, float(n_bins)]
    except (TypeError, ValueError):
        raise ValueError("x and y_range must hold numbers") from None
    if len(x) != n_steps:
        raise ValueError(f"x has {len(x)} steps for {n_steps} columns of z")
    if len(y_range) != 2 or not all(map(math.isfinite, y_range + [x[0], x[-1]])) or y_range[0] > y_range[1]:
        raise ValueError("y_range must be finite [lo, hi] with lo <= hi, and x finite")
    return {"name": str(panel.get("name", "")), "z": z, "steps": (x[0], x[-1]), "y_range": tuple(y_range),
            "extent": heatmap_extent(x, *y_range)}


def _panel_z(value: Any) -> np.ndarray:
    """A panel's "z" as a (bins, steps) float array; ValueError saying what is wrong with it."""
    rows = plain(value)
    if not isinstance(rows, (list, tuple)) or not rows or not all(isinstance(r, (list, tuple)) for r in rows):
        raise ValueError("z must be a non-empty 2-D list (rows = value bins, columns = time)")
    lengths = sorted({len(r) for r in rows})
    if len(lengths) > 1:
        raise ValueError(f"z is ragged (rows of {', '.join(map(str, lengths))} values)")
    if lengths[0] == 0:
        raise ValueError("z has no columns")
    try:
        return np.array([floats(r) for r in rows], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("z must hold numbers") from None


def heatmap_extent(x: list[float], low: float, high: float) -> tuple[float, float, float, float]:
    """imshow's (left, right, bottom, top): each column centred on its step, rows spanning [low, high]."""
    half = (x[-1] - x[0]) / (len(x) - 1) / 2 if len(x) > 1 and x[-1] != x[0] else 0.5
    if high == low:  # a constant tensor: give its single value some height
        low, high = low - 0.5, high + 0.5
    return (x[0] - half, x[-1] + half, low, high)


def heatmap_columns(n: int) -> int:
    """3 or 4 columns, whichever leaves fewer empty slots (4 on a tie); n itself when n < 3."""
    if n < 3:
        return max(n, 1)
    return min((4, 3), key=lambda c: (-n) % c)


def heatmap_png(panels: list[dict], figure: dict) -> bytes:
    """Draw heat-map panels as small multiples with matplotlib (ImportError without it).

    The grid is laid out by hand, in inches: a layout engine measures every
    tick label of every panel and takes several times longer than the drawing.
    """
    ncols = heatmap_columns(len(panels))
    nrows = math.ceil(len(panels) / ncols)
    (ax_w, ax_h), (gap_w, gap_h) = (1.65, 1.2), (0.5, 0.5)
    left, right, bottom, top = 0.6, 0.15, 0.5, 0.3
    width = left + ncols * ax_w + (ncols - 1) * gap_w + right
    height = bottom + nrows * ax_h + (nrows - 1) * gap_h + top
    fig = agg_figure(figsize=(width, height), dpi=110)
    from matplotlib.ticker import MaxNLocator

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
    return figure_png(fig)


def _gray_panel(panel: dict, figure: dict) -> str:
    """One panel as a gray PNG (brighter = larger), low values at the bottom, stretched to HEAT_SIZE."""
    pixels = image_pixels(np.flipud(panel["z"]))  # PNG rows run top to bottom
    n_bins, n_steps = pixels.shape
    pixels = np.repeat(np.repeat(pixels, -(-HEAT_SIZE[1] // n_bins), axis=0), -(-HEAT_SIZE[0] // n_steps), axis=1)
    (first, last), (low, high) = panel["steps"], panel["y_range"]
    xlabel, ylabel = figure.get("xlabel") or "x", figure.get("ylabel") or "y"
    caption = (f"{panel['name']}: {xlabel} {format_number(first)} to {format_number(last)}, "
               f"{ylabel} {format_number(low)} to {format_number(high)}")
    height, width = pixels.shape
    return (f'<figure class="cell"><img class="pixelated" src="{data_uri(png_bytes(pixels))}" '
            f'alt="{escape(caption)}" width="{width}" height="{height}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _gray_panels(panels: list[dict], figure: dict) -> str:
    return '<div class="grid">' + "".join(_gray_panel(p, figure) for p in panels) + "</div>"


def _checked_panels(given: list) -> tuple[list[dict], list[str]]:
    """The drawable panels among the first MAX_PANELS given, and a note for each one left out."""
    panels, notes = [], []
    for i, panel in enumerate(given[:MAX_PANELS]):
        try:
            panels.append(heatmap_panel(panel))
        except (TypeError, ValueError) as error:
            name = panel.get("name") if isinstance(panel, dict) and panel.get("name") else i + 1
            notes.append(f"Panel {name} not drawn: {error}.")
    if len(given) > MAX_PANELS:
        notes.append(f"… {len(given) - MAX_PANELS} more panels")
    if not given:
        notes.append("No panels to draw.")
    return panels, notes


def heatmap_html(figure: dict) -> str:
    """A "heatmap" figure: small multiples drawn by matplotlib, else gray images; bad panels as notes."""
    panels, notes = _checked_panels(list(figure.get("panels") or []))
    body = ""
    if panels:
        try:
            png = heatmap_png(panels, figure)
            names = ", ".join(p["name"] for p in panels)
            width, height = png_size(png)
            alt = f"Heat maps of {names}: {figure.get('ylabel') or 'value'} against {figure.get('xlabel') or 'x'}"
            body = f'<img class="plot" src="{data_uri(png)}" alt="{escape(alt)}" width="{width}" height="{height}">'
        except DRAW_ERRORS as error:
            body = not_drawn_note(error, GRAY_INSTEAD) + _gray_panels(panels, figure)
    return body + "".join(f'<p class="note">{escape(note)}</p>' for note in notes)
