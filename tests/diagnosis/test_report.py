"""The report renderers: self-contained HTML (checked in a real browser), notebook view, terminal text."""

import base64
import dataclasses
import html
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from dltips import Finding, ParamError, Report
from dltips.core.png import image_pixels, png_bytes
from dltips.diagnosis.figures import figure_html
from dltips.diagnosis.heatmap import heatmap_columns, heatmap_extent
from dltips.diagnosis.html import render_html
from dltips.diagnosis.summary import STAGES
from dltips.diagnosis.terminal import render_terminal
from dltips.diagnosis.text import MAX_CHARS, compact
from dltips.findings import STATUSES

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
EVIL = "<script>alert('x')</script>"


def heat_panel(name: str, bins: int = 12, steps: int = 20, nan: bool = False) -> dict:
    """A heat-map panel: a bump of counts drifting up the value bins over time, as log1p(count)."""
    centre = bins / 4 + np.arange(steps) * bins / (2 * steps)
    counts = 100 * np.exp(-((np.arange(bins)[:, None] - centre[None, :]) ** 2) / 4)
    z = np.log1p(np.round(counts)).tolist()
    if nan:
        z[0][0] = float("nan")
    return {"name": name, "z": z, "x": list(range(0, 10 * steps, 10)), "y_range": [-2.0, 2.0]}


def make_report() -> Report:
    """A report with every status, every theme and every figure kind."""
    steps = list(range(1, 61))
    loss = np.exp(-np.arange(60) / 15.0) + 0.02
    findings = [
        Finding("initialization", "pass", "Loss at initialisation is as expected",
                "Measured 2.31 at step 0; ln(10) = 2.30 for 10 balanced classes.",
                evidence={"measured": torch.tensor(2.31), "expected": np.float64(2.302585),
                          "per_class": list(range(100)), "nested": {"a": 1, "b": [1.5, float("nan")]}}),
        Finding("overfit-tiny", "fail", "Cannot overfit one example",
                f"The loss stayed at 2.3 after 200 steps. {EVIL}", fix=f"Check the loss function. {EVIL}",
                figures=[{"kind": "lines", "title": "Loss on one example", "x": steps,
                          "series": {"train": loss.tolist(), "valid": [None] + (loss[1:] * 1.3).tolist()},
                          "xlabel": "step", "ylabel": "loss", "ylog": True, "band": [0.01, 0.1]}]),
        Finding("one-cycle", "info", "One-cycle schedule", "Warm-up 25% of 1,000 steps, peak 3e-3."),
        Finding("worst-predictions", "warn", "Confident mistakes among the worst predictions",
                "5 of the 16 worst examples are scored above 0.9 for a wrong class.",
                fix="Look at these examples: wrong labels or a preprocessing bug?",
                figures=[{"kind": "images", "title": "Worst predictions",
                          "images": [torch.rand(8, 8) for _ in range(5)]
                          + [np.random.rand(3, 16, 16), np.ones((1, 8, 8))],
                          "captions": [f"true {i}, predicted {(i + 3) % 10}" for i in range(7)]}]),
        Finding("update-ratio", "warn", "Some layers update too slowly", "2 of 6 layers below 1e-4.",
                fix="Raise the learning rate.",
                figures=[{"kind": "lines", "title": "Update / weight ratio", "x": steps,
                          "series": {f"layer{i}": (10.0 ** -(i + 1) * np.ones(60)).tolist() for i in range(4)},
                          "xlabel": "step", "ylabel": "ratio", "xlog": True, "ylog": True, "band": [1e-3, 1e-1]}]),
        Finding("activation-gradient-stats", "info", "Activation histograms over time",
                "Per-layer histograms of activations every 10 steps.",
                figures=[{"kind": "heatmap", "title": "Activations", "xlabel": "step", "ylabel": "activation",
                          "panels": [heat_panel("conv1"), heat_panel("fc", nan=True)]}]),
        Finding("error-gaps", "info", "The three error gaps", "train 1.0%, valid 5.0%, test 5.5%.",
                figures=[{"kind": "table", "title": "Error by split", "columns": ["split", "error", "note"],
                          "rows": [["train", 0.01, "bias"], ["valid", 0.05, "variance"], ["test", 0.055, EVIL]]}]),
        Finding("gradient-accumulation", "pass", "Accumulation matches the large batch", "max difference 1e-7"),
        Finding("weight-tying", "skip", "Skipped: not a language model", "The task kind is classification."),
        Finding("categorical-embedding-size", "skip", "Skipped: no categorical inputs", "No embeddings found."),
    ]
    return Report(task={"name": "digits", "kind": "classification", "n_classes": 10, "n_params": 12345,
                        "n_train": 1000, "n_valid": 200, "n_test": 0},
                  findings=findings, duration_s=12.34, timings={"initialization": 0.5, "overfit-tiny": 3.2})


@pytest.fixture(scope="module")
def rendered() -> tuple[Report, str]:
    report = make_report()
    return report, report.to_html()


def test_html_is_self_contained_with_every_status_theme_and_figure(rendered):
    report, text = rendered
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", text), "the report must not reach the network"
    assert "<script" not in text and "<link" not in text
    for status in STATUSES:
        assert f'<span class="badge {status}">{status}</span>' in text
        assert f'<article class="finding {status}">' in text
    for finding in report.findings:
        assert html.escape(finding.title) in text and f"<code class=tip>{finding.tip}</code>" in text
    headings = re.findall(r"<h2>(.*?)</h2>", text)
    stages = ["data", "model", "optimization", "generalization"]  # those of the findings, in causal order
    assert headings == ["Fix first", *(html.escape(STAGES[s]) for s in stages), "Time"]
    # inside a stage, the most severe first: a fail, a warn, the infos in their given order, a pass
    order = [text.index(f"<h3>{t}</h3>") for t in ("Cannot overfit one example", "Some layers update too slowly",
                                                    "One-cycle schedule", "Activation histograms over time",
                                                    "Accumulation matches the large batch")]
    assert order == sorted(order)
    assert "Check the loss function." in text and 'class="fix"' in text
    # 2 line plots + 7 images + 1 heat map, each a PNG data URI that decodes
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == 10
    assert all(base64.b64decode(u).startswith(b"\x89PNG\r\n\x1a\n") for u in uris)
    assert re.findall(r"<table class=\"data\">", text) and ">variance<" in text
    assert "12,345" in text and "12.3 s" in text


def test_stages_follow_causal_order_and_severity_whatever_the_order_given():
    shuffled = [dataclasses.replace(f, figures=[]) for f in reversed(make_report().findings)]
    text = render_html(Report(task={}, findings=shuffled))
    stages = ["data", "model", "optimization", "generalization"]
    assert re.findall(r"<h2>(.*?)</h2>", text) == ["Fix first", *(html.escape(STAGES[s]) for s in stages)]
    titles = re.findall(r"<h3>(.*?)</h3>", text)
    assert titles.index("Cannot overfit one example") < titles.index("Some layers update too slowly")  # fail first
    # equal severity keeps the given (here reversed) order
    assert titles.index("Activation histograms over time") < titles.index("One-cycle schedule")
    assert "<title>dltips report: task</title>" in text


def test_text_is_escaped_everywhere(rendered):
    text = rendered[1]
    assert EVIL not in text and "<script" not in text
    assert html.escape(EVIL) in text
    assert text.count(html.escape(EVIL)) == 5  # message, fix, table cell, and the summary's line (message and fix)


def test_evidence_is_compact_and_truncated(rendered):
    text = rendered[1]
    evidence = text[text.index('<details class="evidence">'):text.index("</details>")]
    assert "[0, 1, 2, 3, 4, 5, 6, 7, … 92 more]" in evidence
    assert ", 8," not in evidence and "99" not in evidence
    assert "<th scope=\"row\">measured</th><td>2.31</td>" in evidence  # a tensor, shown as a number
    assert "[1.5, –]" in evidence  # nested dict as a nested table, a value not measured as a dash, never "nan"
    assert compact({f"k{i}": i for i in range(10)}, max_items=2) == "{k0: 0, k1: 1, … 8 more}"
    assert compact("x" * 1000).endswith("…") and len(compact("x" * 1000)) == MAX_CHARS


def test_png_encoder_round_trips_through_pillow():
    from PIL import Image

    gray = np.arange(12 * 7, dtype=np.uint8).reshape(7, 12) * 3
    rgb = np.random.default_rng(0).integers(0, 256, (5, 9, 3), dtype=np.uint8)
    for pixels in (gray, rgb):
        decoded = np.asarray(Image.open(io.BytesIO(png_bytes(pixels))))
        np.testing.assert_array_equal(decoded, pixels)


def test_images_are_min_max_scaled_in_every_layout():
    gray = image_pixels(torch.tensor([[-1.0, 0.0], [1.0, float("nan")]]))
    np.testing.assert_array_equal(gray, [[0, 128], [255, 0]])
    rgb = image_pixels(np.stack([np.zeros((2, 3)), np.ones((2, 3)), np.full((2, 3), 0.5)]))
    assert rgb.shape == (2, 3, 3) and rgb[0, 0].tolist() == [0, 255, 128]
    assert image_pixels(np.ones((1, 4, 5))).shape == (4, 5)  # constant: no division by zero
    with pytest.raises(ValueError, match="shape"):
        image_pixels(np.ones((2, 4, 5)))
    bad = figure_html({"kind": "images", "title": "t", "images": [np.ones((7, 2, 2))]})
    assert "(7, 2, 2)" in bad  # a bad image is reported, not fatal


def test_without_matplotlib_plots_become_tables_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    text = make_report().to_html()
    assert html.escape('pip install "dltips[report]"') in text
    assert len(re.findall(r'src="data:image/png', text)) == 7 + 2  # the image grid and gray heat maps need none
    assert '<th scope="col">layer3</th>' in text and "… 10 more rows" in text


def test_a_plot_that_cannot_be_drawn_becomes_a_table():
    figure = {"kind": "lines", "title": "t", "x": [1, 2], "series": {"a": [1, 2]}, "ylabel": "$\\frac{$"}
    text = figure_html(figure)
    assert "Could not draw this plot" in text and "<img" not in text and '<th scope="col">a</th>' in text


def png_images(text: str) -> list[np.ndarray]:
    """The PNG data URIs in `text`, decoded to pixel arrays."""
    from PIL import Image

    images = []
    for uri in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text):
        png = base64.b64decode(uri)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        images.append(np.asarray(Image.open(io.BytesIO(png))))
    return images


def heat_figure(panels: list) -> dict:
    return {"kind": "heatmap", "title": "Activations", "xlabel": "step", "ylabel": "activation", "panels": panels}


def test_heatmap_is_one_png_of_small_multiples():
    text = figure_html(heat_figure([heat_panel(f"layer{i}") for i in range(5)]))
    (image,) = png_images(text)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20  # coloured, not blank
    assert "note" not in text and 'alt="Heat maps of layer0, layer1, layer2, layer3, layer4' in text
    width, height = re.search(r'width="(\d+)" height="(\d+)"', text).groups()
    assert (int(height), int(width)) == image.shape[:2]


def test_heatmap_puts_low_bins_at_the_bottom():
    # two value bins: the low one empty, the high one full; viridis: low = dark purple, high = bright yellow
    text = figure_html(heat_figure([{"name": "one", "z": [[0.0] * 4, [5.0] * 4], "x": [0, 1, 2, 3],
                                            "y_range": [0.0, 1.0]}]))
    (image,) = png_images(text)
    height, width = image.shape[:2]
    upper, lower = image[int(0.35 * height), width // 2, :3], image[int(0.7 * height), width // 2, :3]
    assert upper[:2].astype(int).sum() > 400 and lower[:2].astype(int).sum() < 150  # yellow above purple


def test_heatmap_extent_centres_columns_on_steps_and_layout_uses_3_or_4_columns():
    assert heatmap_extent([0.0, 10.0, 20.0], -1.0, 1.0) == (-5.0, 25.0, -1.0, 1.0)
    assert heatmap_extent([5.0], 0.0, 2.0) == (4.5, 5.5, 0.0, 2.0)
    assert heatmap_extent([5.0, 5.0], 3.0, 3.0) == (4.5, 5.5, 2.5, 3.5)  # no zero-size extent
    columns = {n: heatmap_columns(n) for n in range(1, 13)}
    assert columns == {1: 1, 2: 2, 3: 3, 4: 4, 5: 3, 6: 3, 7: 4, 8: 4, 9: 3, 10: 4, 11: 4, 12: 4}


def block_matplotlib(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)


def check_gray_flipped(image: np.ndarray) -> None:
    """z = [[0, 1], [2, 3], [4, 5]] in gray: the high bins [4, 5] on top, the low [0, 1] at the bottom."""
    assert image.ndim == 2 and image.shape == (120, 240)  # 3 x 2 cells, each stretched to 40 x 120 pixels
    assert image[0, 0] == 204 and image[0, -1] == 255  # 4/5 and 5/5 of 255
    assert image[-1, 0] == 0 and image[-1, -1] == 51
    assert image[60, 0] == 102 and image[60, -1] == 153


GRAY_PANEL = {"name": "fc", "z": [[0, 1], [2, 3], [4, 5]], "x": [10, 20], "y_range": [-1, 1]}


def test_without_matplotlib_heatmaps_are_gray_images_with_low_bins_at_the_bottom(monkeypatch):
    block_matplotlib(monkeypatch)
    text = figure_html(heat_figure([GRAY_PANEL, heat_panel("conv1")]))
    assert html.escape('pip install "dltips[report]"') in text and "low values at the bottom" in text
    first, second = png_images(text)
    check_gray_flipped(first)
    assert second.shape == (12 * 10, 20 * 12)  # 12 bins x 20 steps, stretched
    assert "fc: step 10 to 20, activation -1 to 1" in text  # what the gray image leaves out: the axes


def test_a_heatmap_that_cannot_be_drawn_becomes_gray_images():
    text = figure_html(heat_figure([dict(GRAY_PANEL, name="$\\frac{$")]))
    assert "Could not draw this plot" in text and 'class="plot"' not in text
    (image,) = png_images(text)
    check_gray_flipped(image)


def test_bad_heatmap_panels_become_notes_and_the_good_ones_are_drawn():
    good = heat_panel("good")
    bad = [{"name": "ragged", "z": [[1, 2], [3]], "x": [0, 1], "y_range": [0, 1]},
           {"name": "empty", "z": [], "x": [], "y_range": [0, 1]},
           {"name": "no-columns", "z": [[], []], "x": [], "y_range": [0, 1]},
           {"name": "short-x", "z": [[1, 2, 3]], "x": [0, 1], "y_range": [0, 1]},
           {"name": "flat", "z": [1, 2, 3], "x": [0, 1, 2], "y_range": [0, 1]},
           {"name": "words", "z": [["a", "b"]], "x": [0, 1], "y_range": [0, 1]},
           {"name": "upside-down", "z": [[1]], "x": [0], "y_range": [1, 0]},
           {"name": "infinite", "z": [[1]], "x": [0], "y_range": [0, float("inf")]},
           "not a panel"]
    text = figure_html(heat_figure([*bad, good]))
    notes = re.findall(r'<p class="note">(.*?)</p>', text)
    assert notes[0] == "Panel ragged not drawn: z is ragged (rows of 1, 2 values)."
    assert notes[3] == "Panel short-x not drawn: x has 2 steps for 3 columns of z."
    assert notes[-1].startswith("Panel 9 not drawn: expected a dict")
    assert len(notes) == len(bad) and all(" not drawn: " in n for n in notes)
    assert len(png_images(text)) == 1 and 'alt="Heat maps of good:' in text
    only_bad = figure_html(heat_figure(bad[:2]))
    assert "<img" not in only_bad and only_bad.count('class="note"') == 2
    assert "No panels to draw." in figure_html(heat_figure([]))
    no_axes = figure_html(heat_figure([{"name": "bare", "z": [[1, 2], [3, 4]]}]))  # x, y_range optional
    assert len(png_images(no_axes)) == 1 and "note" not in no_axes


def test_more_than_12_heatmap_panels_leave_a_note(monkeypatch):
    figure = heat_figure([heat_panel(f"p{i}", bins=4, steps=3) for i in range(15)])
    text = figure_html(figure)
    assert "… 3 more panels" in text and "p11" in text and "p12" not in text
    assert len(png_images(text)) == 1
    block_matplotlib(monkeypatch)
    text = figure_html(figure)
    assert "… 3 more panels" in text and len(png_images(text)) == 12


def test_terminal_plain_text_has_every_finding_and_fix(capsys):
    report = make_report()
    stream = io.StringIO()
    render_terminal(report, stream)
    text = stream.getvalue()
    assert "\x1b[" not in text
    lines = text.splitlines()
    for finding in report.findings:
        line = next(line for line in lines if f" {finding.tip} " in line)
        assert finding.status.upper() in line and finding.title in line
        if finding.fix:
            assert f"fix: {finding.fix}" in text
    stages = ["data", "model", "optimization", "generalization"]
    assert [line for line in lines if line in STAGES.values()] == [STAGES[s] for s in stages]
    # the summary opens the report: the flagged findings in causal order (data, then optimization), each with
    # its numbers and the first sentence of its fix
    assert lines[2] == "Fix first"
    steps = lines[3:6]
    assert [line.split()[1:3] for line in steps] == [["WARN", "worst-predictions"], ["FAIL", "overfit-tiny"],
                                                     ["WARN", "update-ratio"]]
    assert "5 of the 16 worst examples are scored above 0.9" in steps[0] and "Fix: Look at these examples" in steps[0]
    assert "Fix: Raise the learning rate." in steps[2]
    assert lines[6] == ""
    # each check's time beside its first finding
    assert next(line for line in lines if line.startswith("  FAIL  overfit-tiny ")).endswith("(3.2 s)")
    assert lines[-1] == "2 pass, 2 warn, 1 fail, 3 info, 2 skip"
    report.print()  # stdout is captured, not a terminal: plain text
    assert capsys.readouterr().out == text


def test_terminal_refuses_a_console_that_is_not_a_stream():
    with pytest.raises(ParamError, match="console must be a rich Console, a text stream or None, got int"):
        make_report().print(3)


def test_terminal_uses_rich_when_given_a_console():
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    make_report().print(console)
    text = console.file.getvalue()
    assert "\x1b[" in text and "overfit-tiny" in text and "Check the loss function." in text


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_colours_only_with_rich_on_a_terminal(monkeypatch):
    report = Report(task={"name": "t"}, findings=[Finding("mixup", "warn", "Mixup off", "alpha 0", fix="use 0.4")])
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    report.print()
    assert "\x1b[" in sys.stdout.getvalue()
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.console", None)
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    report.print()
    text = sys.stdout.getvalue()
    assert "\x1b[" not in text and "WARN  mixup  Mixup off" in text and "fix: use 0.4" in text


def test_notebook_view_is_the_report_body(rendered):
    report, text = rendered
    fragment = report._repr_html_()
    assert fragment.startswith('<div class="dltips-report"><style>') and fragment.endswith("</div>")
    assert "<html" not in fragment and fragment in text


def test_to_html_writes_atomically(rendered, tmp_path, monkeypatch):
    report, text = rendered
    path = tmp_path / "out" / "report.html"
    assert report.to_html(path) == text  # same text with or without a path
    assert path.read_text(encoding="utf-8") == text

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        report.to_html(path)
    assert path.read_text(encoding="utf-8") == text  # the old file is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]  # no temporary left


# ---------------------------------------------------------------------------
# a real browser, driven over chromedriver's W3C WebDriver HTTP API

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


class WebDriver:
    """A headless Chromium session; only the few WebDriver calls the test needs."""

    def __init__(self, tmp_path: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self.session = None
        deadline = time.monotonic() + 15
        while True:
            try:
                if self.call("GET", "/status").get("ready"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1200,1000", f"--user-data-dir={tmp_path / 'profile'}"]
        capabilities = {"browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"},
                        "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}
        self.session = self.call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})["sessionId"]

    def call(self, method: str, path: str, body: dict | None = None):
        if self.session is not None and path != "/status":
            path = f"/session/{self.session}{path}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["value"]

    def open(self, path: Path) -> None:
        self.call("POST", "/url", {"url": path.resolve().as_uri()})

    def run(self, script: str):
        return self.call("POST", "/execute/sync", {"script": script, "args": []})

    def console(self) -> list[dict]:
        """Browser console entries since the last call."""
        return self.call("POST", "/se/log", {"type": "browser"})

    def close(self) -> None:
        try:
            if self.session is not None:
                self.call("DELETE", "")
        finally:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    driver = WebDriver(tmp_path)
    yield driver
    driver.close()


@pytest.mark.slow
def test_report_renders_in_chromium_without_console_errors(rendered, browser, tmp_path):
    # the console log is read for real: a page that logs an error shows up
    control = tmp_path / "control.html"
    control.write_text("<!DOCTYPE html><script>console.error('dltips-control')</script>")
    browser.open(control)
    assert any("dltips-control" in entry["message"] for entry in browser.console())

    report, text = rendered
    ARTIFACTS.mkdir(exist_ok=True)
    page = ARTIFACTS / "report.html"
    page.write_text(text, encoding="utf-8")
    browser.open(page)
    state = browser.run("""return {
        title: document.title,
        findings: Array.from(document.querySelectorAll('article.finding h3'), h => h.textContent),
        badges: Array.from(document.querySelectorAll('article .badge'), b => getComputedStyle(b).backgroundColor),
        images: document.images.length,
        broken: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length,
        overflow: document.documentElement.scrollWidth > window.innerWidth,
        height: document.documentElement.scrollHeight};""")
    entries = browser.console()
    assert entries == [], f"console messages: {entries}"
    assert state["title"] == "dltips report: digits"
    assert sorted(state["findings"]) == sorted(f.title for f in report.findings)
    assert len(set(state["badges"])) == len(STATUSES)  # one colour per status
    assert state["images"] == 10 and state["broken"] == 0
    assert not state["overflow"]
    browser.call("POST", "/window/rect", {"width": 1200, "height": min(int(state["height"]) + 100, 8000)})
    png = base64.b64decode(browser.call("GET", "/screenshot"))
    assert png.startswith(b"\x89PNG")
    (ARTIFACTS / "report.png").write_bytes(png)


def dead_digits_task():
    """The digits demo with an MLP whose hidden ReLUs all start dead (biases -5): overfit-tiny fails, and the
    cause probes name the dead layers."""
    from torch import nn

    from dltips.demos.digits import digits_task

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].bias.fill_(-5.0)
        model[3].bias.fill_(-5.0)
    return dataclasses.replace(digits_task(), model=model, name="digits-dead-relu")


SATURATED_PIXELS = """return Array.from(document.querySelectorAll('img.plot'), img => {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const context = canvas.getContext('2d');
    context.drawImage(img, 0, 0);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let coloured = 0;
    for (let i = 0; i < data.length; i += 4) {
        const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
        if (Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured++;
    }
    return coloured;});"""


def read_in_browser(browser, report: Report, name: str) -> dict:
    """Write `report` as tests/artifacts/NAME.html, open it, check what every report must satisfy on screen, and
    return what the page shows."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = ARTIFACTS / f"{name}.html"
    report.to_html(page)
    browser.open(page)
    state = browser.run("""return {
        text: document.body.innerText,
        headings: Array.from(document.querySelectorAll('h2'), h => h.textContent),
        steps: Array.from(document.querySelectorAll('#next-steps li'), li => li.textContent),
        clear: Array.from(document.querySelectorAll('#next-steps .clear'), p => p.textContent),
        first: document.querySelector('article.finding').getBoundingClientRect().top,
        summary: document.querySelector('#next-steps').getBoundingClientRect().top,
        plots: Array.from(document.querySelectorAll('img.plot'), i => i.src),
        height: document.documentElement.scrollHeight};""")
    assert browser.console() == []
    assert not re.search(r"\bnan\b", state["text"], re.IGNORECASE)
    # the headings are the report's own sections, whatever the task's kind: no "NLP" on an image task
    assert set(state["headings"]) <= {"Fix first", "Summary", "Time", *STAGES.values()}
    assert state["summary"] < state["first"]  # the summary before the first card
    # no two figures draw the same picture, and each has coloured marks (series, bands or heat), not axes alone
    assert len(state["plots"]) == len(set(state["plots"]))
    assert all(count > 200 for count in browser.run(SATURATED_PIXELS))
    return state


@pytest.mark.slow
def test_healthy_task_report_in_chromium(browser, one_thread):
    from dltips import doctor
    from dltips.demos.digits import digits_task

    report = doctor(digits_task(), budget_s=40, progress=False)
    state = read_in_browser(browser, report, "healthy-report")
    assert len(state["plots"]) >= 5 and state["steps"] == []
    assert state["clear"] and state["clear"][0].startswith("Nothing to fix")


@pytest.mark.slow
def test_broken_task_report_reads_cause_first_in_chromium(browser, one_thread):
    from dltips import doctor

    report = doctor(dead_digits_task(), budget_s=30, progress=False)
    state = read_in_browser(browser, report, "broken-report")
    # the summary names the cause, with the layers to fix and the symptom it explains
    assert "activation-gradient-stats" in state["steps"][0] and "explains overfit-tiny" in state["steps"][0]
    assert "layers 1, 3 (before 2, 4)" in state["steps"][0]
    assert len(state["plots"]) >= 2
    browser.call("POST", "/window/rect", {"width": 1200, "height": min(int(state["height"]) + 100, 8000)})
    png = base64.b64decode(browser.call("GET", "/screenshot"))
    assert png.startswith(b"\x89PNG")
    (ARTIFACTS / "broken-report.png").write_bytes(png)
