"""Where monitor records go: memory, a JSON Lines file, TensorBoard.

A monitor (`dltips.watch(model, optimizer, sinks=...)`) hands each sink one
record every time it synchronises with the host. A record is a plain dict
(contract):

    {"step": int,                     # optimizer steps taken
     "scalars": {name: float},        # e.g. "act/conv1/mean", "update_ratio/0.weight";
                                      # nan and inf are allowed
     "histograms": {name: {"range": [lo, hi],        # value range the bins cover
                           "counts": [int, ...],     # equal-width bins from lo to hi
                           "sum": float,             # optional: sum of the values
                           "sum_sq": float}}}        # optional: sum of their squares

"histograms" may be absent. Names are "/"-separated paths (TensorBoard groups
them by the first part).

Sinks write what they are given: under torch.distributed the monitor reduces
across ranks and calls `write` on rank 0 only. File sinks open their file on
the first write, so a sink built on another rank never creates the file.

`resolve_sinks` turns the `sinks=` argument (a sink, "memory", "run.jsonl",
"tensorboard", "tensorboard:DIR", or a list of these) into sink objects.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dltips.core.params import ParamError, optional_int

if TYPE_CHECKING:
    from typing_extensions import Self

TENSORBOARD_HINT = 'pip install "dltips[tensorboard]"'


class Sink:
    """Receives monitor records. Subclasses implement `write`; `close` releases what they hold.

    A sink is a context manager: `with JsonlSink("run.jsonl") as sink: ...` closes it on exit.
    """

    def write(self, record: dict) -> None:
        """Take one record (its keys are in the module docstring)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release files or writers; the base sink holds none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MemorySink(Sink):
    """Keeps records in the list `records` (as given, not copied); the doctor reads them from here.

    With `max_records`, only the newest `max_records` are kept, so a long run
    holds bounded memory.
    """

    def __init__(self, max_records: int | None = None) -> None:
        self.max_records = optional_int("max_records", max_records)
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.max_records is not None and len(self.records) > self.max_records:
            del self.records[: len(self.records) - self.max_records]

    def __repr__(self) -> str:
        return f"MemorySink({len(self.records)} records, max_records={self.max_records})"


# ---------------------------------------------------------------------------
# JSON Lines


def _json_ready(value: Any) -> Any:
    """Plain JSON data: numpy/torch numbers as Python numbers, nan and inf as None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float):  # numpy float64 included
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return _json_ready(value.tolist())
    raise TypeError(f"a monitor record holds numbers, strings, lists and dicts; got {type(value).__name__}")


class JsonlSink(Sink):
    """Writes each record as one JSON line to a `.jsonl` file, readable while the run goes on.

    Each record is one line, written with a single unbuffered write, so
    `tail -f` and `read_jsonl` see whole lines only. nan and inf become `null`
    (the file stays valid JSON; `read_jsonl` reads them back as nan). The file
    and its parent directories are created on the first write, not before:
    a sink that never writes (another rank of a distributed run) leaves the
    path untouched. `append=False` truncates an existing file at that first write.
    """

    def __init__(self, path: str | os.PathLike, append: bool = False) -> None:
        self.path = Path(path)
        self.append = append
        self._file: Any = None
        self._closed = False

    def _open(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return open(self.path, "ab" if self.append else "wb", buffering=0)  # unbuffered: one write per line

    def write(self, record: dict) -> None:
        if self._closed:
            raise ValueError(f"JsonlSink({str(self.path)!r}) is closed")
        line = json.dumps(_json_ready(record), allow_nan=False, separators=(",", ":")) + "\n"
        if self._file is None:
            self._file = self._open()
        data = memoryview(line.encode("utf-8"))
        while data:  # a regular file takes it all at once; loop in case of a partial write
            data = data[self._file.write(data):]
        self._file.flush()

    def close(self) -> None:
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r}, append={self.append})"


def _restore_nan(record: dict) -> dict:
    """Nulls where the record contract has floats (scalars, histogram sums) back to nan."""
    scalars = record.get("scalars")
    if isinstance(scalars, dict):
        record["scalars"] = {k: math.nan if v is None else v for k, v in scalars.items()}
    for hist in (record.get("histograms") or {}).values():
        for key in ("sum", "sum_sq"):
            if key in hist and hist[key] is None:
                hist[key] = math.nan
    return record


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSONL file written by `JsonlSink`, with nulls in floats read back as nan.

    A last line without its newline (a writer caught mid-line) is ignored; any
    other line that does not parse raises ValueError naming the line.
    """
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if not line.endswith("\n"):
                break  # incomplete last line
            try:
                records.append(_restore_nan(json.loads(line)))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not a JSON record ({error.msg})") from None
    return records


# ---------------------------------------------------------------------------
# TensorBoard


def _summary_writer_class() -> type:
    """torch's SummaryWriter, imported only when a TensorBoard sink is built."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(f"TensorBoardSink needs the tensorboard package: {TENSORBOARD_HINT} "
                          f"({error})") from error
    return SummaryWriter


def histogram_args(name: str, hist: dict) -> dict | None:
    """Arguments for `SummaryWriter.add_histogram_raw` from a record's histogram; None to skip it.

    Bucket limits are the upper edges of equal-width bins over "range". Missing
    (or non-finite) "sum" and "sum_sq" are estimated from the bin centres. An
    empty or all-zero histogram, or one whose range is not finite, is skipped:
    there is nothing to draw. A zero-width range (a constant tensor) is widened
    a little so the bucket limits increase.
    """
    try:
        counts = np.asarray(hist["counts"], dtype=np.float64)
        low, high = (float(v) for v in hist["range"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"histogram {name!r} needs 'range': [lo, hi] and 'counts': [int, ...]; "
                         f"got {hist!r:.200}") from None
    if counts.ndim != 1 or not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"histogram {name!r}: 'counts' must be a flat list of non-negative numbers")
    if counts.size == 0 or counts.sum() == 0 or not (math.isfinite(low) and math.isfinite(high)):
        return None
    if high <= low:
        high = low + max(abs(low), 1.0) * 1e-6
    edges = np.linspace(low, high, counts.size + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    total = hist.get("sum")
    total_sq = hist.get("sum_sq")
    return {
        "min": low, "max": high, "num": float(counts.sum()),
        "sum": float(total) if _finite(total) else float(counts @ centres),
        "sum_squares": float(total_sq) if _finite(total_sq) else float(counts @ centres**2),
        "bucket_limits": edges[1:].tolist(), "bucket_counts": counts.tolist(),
    }


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardSink(Sink):
    """Writes scalars and histograms to TensorBoard event files in `log_dir`.

    The tensorboard package is imported when the sink is built, so a missing
    install fails at once, with the command to fix it. The event file is created
    on the first write (a sink that never writes leaves `log_dir` untouched).
    `flush_secs` is how often pending events reach the disk while training runs.
    """

    def __init__(self, log_dir: str | os.PathLike = "runs", flush_secs: int = 10) -> None:
        self._writer_class = _summary_writer_class()
        self.log_dir = str(log_dir)
        self.flush_secs = flush_secs
        self._writer: Any = None
        self._closed = False

    def write(self, record: dict) -> None:
        if self._closed:
            raise ValueError(f"TensorBoardSink({self.log_dir!r}) is closed")
        if self._writer is None:
            self._writer = self._writer_class(log_dir=self.log_dir, flush_secs=self.flush_secs)
        step = int(record["step"])
        for name, value in (record.get("scalars") or {}).items():
            self._writer.add_scalar(name, math.nan if value is None else float(value), step)
        for name, hist in (record.get("histograms") or {}).items():
            args = histogram_args(name, hist)
            if args is not None:
                self._writer.add_histogram_raw(name, global_step=step, **args)

    def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    def __repr__(self) -> str:
        return f"TensorBoardSink({self.log_dir!r})"


# ---------------------------------------------------------------------------
# the `sinks=` argument

ACCEPTED = ('a Sink, "memory", a path ending in ".jsonl", "tensorboard", "tensorboard:DIR", '
            "or a list of these")


def _resolve_one(spec: Any) -> Sink:
    """One sink from one item of the `sinks=` argument."""
    if isinstance(spec, Sink):
        return spec
    if isinstance(spec, str):
        if spec == "memory":
            return MemorySink()
        if spec == "tensorboard":
            return TensorBoardSink("runs")
        if spec.startswith("tensorboard:") and len(spec) > len("tensorboard:"):
            return TensorBoardSink(spec[len("tensorboard:"):])
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        if isinstance(path, str) and path.endswith(".jsonl"):
            return JsonlSink(path)
    raise ParamError(f"unknown sink {spec!r}; expected {ACCEPTED}")


def resolve_sinks(spec: Any) -> list[Sink]:
    """Sinks from the `sinks=` argument: None gives [], a single item a one-element list.

    Strings: "memory" -> MemorySink(); "path/run.jsonl" -> JsonlSink; "tensorboard" ->
    TensorBoardSink("runs"); "tensorboard:DIR" -> TensorBoardSink(DIR). Anything
    else raises ParamError (a ValueError) saying what was given and what is accepted, and two
    JSONL sinks on one file (which would overwrite each other) are refused.
    """
    if spec is None:
        return []
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    sinks = [_resolve_one(item) for item in items]
    paths = [s.path.resolve() for s in sinks if isinstance(s, JsonlSink)]
    duplicates = sorted({str(p) for p in paths if paths.count(p) > 1})
    if duplicates:
        raise ParamError(f"two JSONL sinks would write to the same file: {', '.join(duplicates)}")
    return sinks
