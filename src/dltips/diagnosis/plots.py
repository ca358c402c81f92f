"""Matplotlib plumbing shared by the drawn figures: a headless canvas, PNG output, and the note when drawing fails.

Matplotlib is optional (the `report` extra) and imported only when a figure is
drawn, so the rest of the report renders without it.
"""

from __future__ import annotations

import io
from html import escape
from typing import Any

INSTALL_HINT = 'pip install "dltips[report]"'
# Why a plot may not be drawn: no matplotlib, or data or a label that it cannot handle.
DRAW_ERRORS = (ImportError, ValueError, TypeError, RuntimeError)


def agg_figure(**kwargs: Any) -> Any:
    """A matplotlib Figure on the Agg canvas (no display needed); raises ImportError without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Any) -> bytes:
    """A drawn figure as PNG bytes, with no software stamp (the same data gives the same file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def not_drawn_note(error: BaseException, instead: str) -> str:
    """An HTML note saying why a plot was not drawn, then `instead` (HTML) introducing what is shown."""
    if isinstance(error, ImportError):
        why = f"Install matplotlib to draw this plot: <code>{escape(INSTALL_HINT)}</code>."
    else:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        why = f"Could not draw this plot ({escape(reason)})."
    return f'<p class="note">{why} {instead}</p>'
