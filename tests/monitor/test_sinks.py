"""Monitor sinks: memory, JSON Lines (readable while written), TensorBoard, and the `sinks=` argument."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dltips.monitor.sinks import (
    JsonlSink,
    MemorySink,
    Sink,
    TensorBoardSink,
    histogram_args,
    read_jsonl,
    resolve_sinks,
)


def record(step: int, **scalars: float) -> dict:
    return {"step": step, "scalars": {"loss": 1.0 / (step + 1), **scalars}}


# ---------------------------------------------------------------------------
# JSONL


def test_jsonl_round_trip_with_non_finite_values_as_null(tmp_path):
    path = tmp_path / "run.jsonl"
    records = [
        {"step": 0, "scalars": {"act/conv1/mean": 0.25, "grad/fc/std": float("nan"), "ratio/0.weight": float("inf")},
         "histograms": {"act/conv1": {"range": [-1.0, 1.0], "counts": [0, 3, 5, 2], "sum": 0.5,
                                      "sum_sq": float("-inf")}}},
        {"step": 10, "scalars": {"act/conv1/mean": np.float32(0.5), "grad/fc/std": torch.tensor(2.0)}},
    ]
    with JsonlSink(path) as sink:
        for r in records:
            sink.write(r)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])  # strict JSON: no NaN / Infinity tokens
    assert "NaN" not in lines[0] and "Infinity" not in lines[0]
    assert first["scalars"] == {"act/conv1/mean": 0.25, "grad/fc/std": None, "ratio/0.weight": None}
    assert first["histograms"]["act/conv1"]["sum_sq"] is None

    back = read_jsonl(path)
    assert [r["step"] for r in back] == [0, 10]
    assert back[0]["scalars"]["act/conv1/mean"] == 0.25
    assert math.isnan(back[0]["scalars"]["grad/fc/std"]) and math.isnan(back[0]["scalars"]["ratio/0.weight"])
    assert back[0]["histograms"]["act/conv1"]["counts"] == [0, 3, 5, 2]
    assert back[0]["histograms"]["act/conv1"]["sum"] == 0.5 and math.isnan(back[0]["histograms"]["act/conv1"]["sum_sq"])
    assert back[1]["scalars"] == {"act/conv1/mean": 0.5, "grad/fc/std": 2.0}
    assert "histograms" not in back[1]


def test_jsonl_file_can_be_tailed_while_open(tmp_path):
    path = tmp_path / "run.jsonl"
    sink = JsonlSink(path)
    for step in range(5):
        sink.write(record(step, big=float(step) * 1e300 * 1e10))  # inf from step 1 on
        text = path.read_text(encoding="utf-8")  # a second reader, while the sink stays open
        assert text.endswith("\n")
        parsed = [json.loads(line) for line in text.splitlines()]
        assert [p["step"] for p in parsed] == list(range(step + 1))
        assert [r["step"] for r in read_jsonl(path)] == list(range(step + 1))
    sink.close()


def test_jsonl_writes_each_line_with_one_call(tmp_path):
    sink = JsonlSink(tmp_path / "run.jsonl")
    sink.write(record(0))
    calls = []

    class Recorder:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            calls.append(bytes(data))
            return self.file.write(data)

        def flush(self):
            calls.append("flush")

        def close(self):
            self.file.close()

    sink._file = Recorder(sink._file)
    sink.write(record(1, x=2.0))
    sink.close()
    assert len(calls) == 2 and calls[1] == "flush"
    assert calls[0].endswith(b"\n") and calls[0].count(b"\n") == 1 and json.loads(calls[0])["step"] == 1


def test_jsonl_opens_lazily_and_truncates_or_appends_at_the_first_write(tmp_path):
    path = tmp_path / "deep" / "dir" / "run.jsonl"
    sink = JsonlSink(path)
    sink.close()
    assert not (tmp_path / "deep").exists()  # neither the file nor its parents (another rank's sink)

    sink = JsonlSink(path)
    assert not path.exists()
    sink.write(record(0))
    assert path.exists() and len(read_jsonl(path)) == 1
    sink.close()
    with pytest.raises(ValueError, match="closed"):
        sink.write(record(1))  # would otherwise reopen and truncate the file
    assert len(read_jsonl(path)) == 1

    with JsonlSink(path, append=True) as sink:
        sink.write(record(1))
    assert [r["step"] for r in read_jsonl(path)] == [0, 1]
    sink = JsonlSink(path)
    assert len(read_jsonl(path)) == 2  # not truncated before the first write
    sink.write(record(7))
    sink.close()
    assert [r["step"] for r in read_jsonl(path)] == [7]


def test_read_jsonl_skips_a_partial_last_line_and_names_a_bad_one(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text('{"step": 0, "scalars": {}}\n\n{"step": 1, "scal')
    assert read_jsonl(path) == [{"step": 0, "scalars": {}}]
    path.write_text('{"step": 0, "scalars": {}}\nnot json\n{"step": 2, "scalars": {}}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path)


def test_jsonl_refuses_values_that_are_not_json(tmp_path):
    sink = JsonlSink(tmp_path / "run.jsonl")
    with pytest.raises(TypeError, match="object"):
        sink.write({"step": 0, "scalars": {"x": object()}})
    assert not (tmp_path / "run.jsonl").exists()  # nothing half-written


# ---------------------------------------------------------------------------
# memory


def test_memory_sink_keeps_the_newest_records_when_bounded():
    bounded, unbounded = MemorySink(max_records=3), MemorySink()
    for step in range(7):
        bounded.write(record(step))
        unbounded.write(record(step))
        assert len(bounded.records) == min(step + 1, 3)
    assert [r["step"] for r in bounded.records] == [4, 5, 6]
    assert [r["step"] for r in unbounded.records] == list(range(7))
    with MemorySink() as sink:
        sink.write(record(0))
    assert len(sink.records) == 1  # records stay readable after close
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_records"):
            MemorySink(max_records=bad)


# ---------------------------------------------------------------------------
# resolve_sinks


def test_resolve_sinks_accepts_the_documented_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = MemorySink()
    assert resolve_sinks(None) == [] and resolve_sinks([]) == []
    assert resolve_sinks(mine) == [mine]
    (memory,) = resolve_sinks("memory")
    assert type(memory) is MemorySink and memory.max_records is None
    (jsonl,) = resolve_sinks("logs/run.jsonl")
    assert isinstance(jsonl, JsonlSink) and jsonl.path == Path("logs/run.jsonl") and not jsonl.append
    (from_path,) = resolve_sinks(Path("other.jsonl"))
    assert isinstance(from_path, JsonlSink) and from_path.path == Path("other.jsonl")
    many = resolve_sinks(["memory", mine, tmp_path / "a.jsonl", ("b.jsonl")])
    assert [type(s) for s in many] == [MemorySink, MemorySink, JsonlSink, JsonlSink] and many[1] is mine
    assert resolve_sinks(("memory",))[0].records == []
    assert list(tmp_path.iterdir()) == []  # resolving creates no file


def test_resolve_sinks_builds_tensorboard_sinks_without_touching_the_disk(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    (default,) = resolve_sinks("tensorboard")
    (custom,) = resolve_sinks("tensorboard:logs/exp1")
    assert isinstance(default, TensorBoardSink) and default.log_dir == "runs"
    assert isinstance(custom, TensorBoardSink) and custom.log_dir == "logs/exp1"
    default.close()
    custom.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["jsonl", "run.json", "Memory", "tensorboard:", "tb", Path("run.txt"),
                                 b"run.jsonl", 3, {"memory": 1}, [["memory"]], [MemorySink(), "nope"]])
def test_resolve_sinks_rejects_anything_else_saying_what_is_accepted(bad):
    with pytest.raises(ValueError, match="unknown sink") as info:
        resolve_sinks(bad)
    message = str(info.value)
    assert '"memory"' in message and ".jsonl" in message and "tensorboard:DIR" in message
    shown = bad[-1] if isinstance(bad, list) else bad
    assert repr(shown) in message


def test_resolve_sinks_refuses_two_jsonl_sinks_on_one_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="same file"):
        resolve_sinks(["run.jsonl", tmp_path / "run.jsonl"])


def test_a_sink_must_implement_write():
    with pytest.raises(NotImplementedError):
        Sink().write(record(0))


# ---------------------------------------------------------------------------
# TensorBoard


def test_histogram_args_estimate_missing_sums_from_bin_centres():
    args = histogram_args("h", {"range": [0.0, 4.0], "counts": [1, 0, 2, 1]})
    assert args["bucket_limits"] == [1.0, 2.0, 3.0, 4.0] and args["bucket_counts"] == [1, 0, 2, 1]
    assert (args["min"], args["max"], args["num"]) == (0.0, 4.0, 4.0)
    assert args["sum"] == pytest.approx(0.5 + 2 * 2.5 + 3.5)
    assert args["sum_squares"] == pytest.approx(0.25 + 2 * 6.25 + 12.25)
    given = histogram_args("h", {"range": [0.0, 4.0], "counts": [1, 0, 2, 1], "sum": 7.0, "sum_sq": 20.0})
    assert (given["sum"], given["sum_squares"]) == (7.0, 20.0)
    nan_sum = histogram_args("h", {"range": [0.0, 4.0], "counts": [1, 0, 2, 1], "sum": None, "sum_sq": math.nan})
    assert nan_sum["sum"] == pytest.approx(9.0) and nan_sum["sum_squares"] == pytest.approx(25.0)
    constant = histogram_args("h", {"range": [3.0, 3.0], "counts": [5]})
    assert constant["bucket_limits"][0] > 3.0 and constant["num"] == 5.0  # widened, still increasing
    for empty in ({"range": [0, 1], "counts": []}, {"range": [0, 1], "counts": [0, 0]},
                  {"range": [float("nan"), 1], "counts": [1]}, {"range": [0, float("inf")], "counts": [1]}):
        assert histogram_args("h", empty) is None
    for bad in ({"counts": [1]}, {"range": [0], "counts": [1]}, {"range": [0, 1], "counts": [1, -1]},
                {"range": [0, 1], "counts": [[1], [2]]}, [1, 2]):
        with pytest.raises(ValueError, match="'h'"):
            histogram_args("h", bad)


def test_tensorboard_sink_writes_scalars_and_histograms_that_tensorboard_reads_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "tb"
    hist = {"range": [-2.0, 2.0], "counts": [1, 3, 4, 2], "sum": 0.75, "sum_sq": 9.5}
    with TensorBoardSink(log_dir) as sink:
        assert not log_dir.exists()  # the event file is created at the first write
        sink.write({"step": 5, "scalars": {"act/fc/mean": 0.5, "grad/fc/std": float("nan")},
                    "histograms": {"act/fc": hist, "act/empty": {"range": [0, 1], "counts": [0, 0]},
                                   "act/none": {"range": [0, 1], "counts": []}}})
        sink.write({"step": 10, "scalars": {"act/fc/mean": -1.25},
                    "histograms": {"act/fc": {"range": [0.0, 1.0], "counts": [2, 2]}}})
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["act/fc/mean", "grad/fc/std"]
    assert acc.Tags()["histograms"] == ["act/fc"]  # the empty ones are skipped
    assert [(e.step, e.value) for e in acc.Scalars("act/fc/mean")] == [(5, 0.5), (10, -1.25)]
    (nan,) = acc.Scalars("grad/fc/std")
    assert nan.step == 5 and math.isnan(nan.value)
    first, second = acc.Histograms("act/fc")
    assert first.step == 5 and second.step == 10
    h = first.histogram_value
    assert list(h.bucket_limit) == [-1.0, 0.0, 1.0, 2.0] and list(h.bucket) == [1, 3, 4, 2]
    assert (h.min, h.max, h.num, h.sum, h.sum_squares) == (-2.0, 2.0, 10, 0.75, 9.5)
    h = second.histogram_value
    assert list(h.bucket_limit) == [0.5, 1.0] and h.num == 4
    assert h.sum == pytest.approx(2 * 0.25 + 2 * 0.75) and h.sum_squares == pytest.approx(2 * 0.0625 + 2 * 0.5625)
    with pytest.raises(ValueError, match="closed"):
        sink.write(record(11))


def test_tensorboard_sink_names_the_extra_when_tensorboard_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r'pip install "dltips\[tensorboard\]"'):
        TensorBoardSink("runs")
    with pytest.raises(ImportError, match="tensorboard"):
        resolve_sinks("tensorboard:somewhere")
