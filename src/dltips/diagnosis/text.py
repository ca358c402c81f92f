"""Text shared by the report renderers: values as short text, durations and task facts.

`ReportLike` names what the renderers read from a report, so that they need not
import the Report class that calls them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol

from dltips.findings import Finding

MAX_ITEMS = 8  # list items / dict entries shown inside one evidence value
MAX_CHARS = 300  # characters shown for one evidence value


class ReportLike(Protocol):
    """What a renderer reads from a report."""

    task: dict
    findings: list[Finding]
    duration_s: float
    timings: dict[str, float]
    budget_s: float | None

    @property
    def summary(self) -> dict[str, int]: ...

    @property
    def next_steps(self) -> list[Any]: ...

    @property
    def all_clear(self) -> str: ...

    def budget(self) -> dict: ...

    @property
    def incomplete(self) -> list[Finding]: ...

    def exit_status(self, fail_on: str = "fail") -> int: ...


def plain(value: Any) -> Any:
    """Tensors and arrays as nested lists, numpy scalars as Python numbers."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple, str)):
        return value.tolist()
    return value


def floats(values: Iterable[Any]) -> list[float]:
    """Numbers as floats, None as nan."""
    return [float("nan") if v is None else float(v) for v in plain(values)]


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
    value = plain(value)
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
    if isinstance(value, float) and math.isnan(value):
        return "–"  # a value not measured (e.g. dead units of a layer that is not a ReLU): no "nan" on show
    if isinstance(value, (int, float)):
        return format_number(value)
    if value is None:
        return "–"
    return _clip(str(value))


def format_duration(seconds: float) -> str:
    """Seconds to one decimal under a minute, else whole minutes and seconds."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s"


def format_seconds(seconds: float) -> str:
    """A check's time: milliseconds under a tenth of a second, else as `format_duration` gives it."""
    return f"{seconds * 1000:.0f} ms" if seconds < 0.1 else format_duration(seconds)


def task_name(task: dict) -> str:
    """The task's name as shown in a report's title."""
    return str(task.get("name") or "task")


def task_facts(task: dict) -> list[tuple[str, str]]:
    """(label, value) pairs describing the task, known keys first, then any others."""
    task = {k: plain(v) for k, v in task.items()}
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
    if task.get("own_step") is True:
        facts.append(("training step", "the Task's own"))
    known = {"name", "kind", "n_classes", "n_params", "n_train", "n_valid", "n_test", "own_step"}
    facts += [(str(k), compact(v)) for k, v in task.items() if k not in known]
    return facts
