import inspect
import re
import warnings
from pathlib import Path

import pytest
import torch

from dltips import catalog, cli
from dltips.catalog import (KINDS, MAX_DEFAULTS, SEED, THEME_TITLES, THEMES, TIPS, defaults_of, format_tip, get_tip,
                            is_check, short_repr, signature_line, source_path, summary_line, tip_defaults, tips_by_theme)
from dltips.cli import main

IDS = {
    "training": ["default-lr", "overfit-tiny", "mixup", "mixed-precision", "overfit-then-regularize",
                 "batch-size-lr-scaling", "one-cycle", "initialization"],
    "data": ["worst-predictions", "verify-transforms", "image-resolution", "toy-problems",
             "label-preserving-augmentation", "augmentation-invariances", "compose-augmentations", "val-test-match"],
    "monitoring": ["activation-gradient-stats", "update-ratio", "error-gaps", "metric-divergence"],
    "efficiency": ["gradient-accumulation"],
    "nlp": ["compute-scaling", "logloss-downstream", "emergent-scaling", "weight-tying", "unseen-tokens"],
    "tabular": ["categorical-embedding-size", "encode-categoricals"],
}


def test_exactly_the_28_contract_ids_in_their_themes():
    assert len(TIPS) == 28
    for theme, ids in IDS.items():
        assert [t.id for t in tips_by_theme(theme)] == ids


@pytest.mark.parametrize("tip", list(TIPS.values()), ids=list(TIPS))
def test_every_tip_is_complete_and_its_objects_import(tip):
    assert tip.theme in THEMES and tip.kind in KINDS
    assert tip.title and len(tip.advice) > 80
    for name, obj in zip(tip.implemented_by, tip.resolve()):
        assert callable(obj), name


def test_tricks_of_this_version_are_implemented():
    for tip_id in ("default-lr", "mixup", "mixed-precision", "batch-size-lr-scaling", "one-cycle",
                   "gradient-accumulation"):
        assert get_tip(tip_id).implemented_by


def test_unknown_ids_and_themes_list_the_valid_ones():
    with pytest.raises(KeyError, match="one-cycle"):
        get_tip("one_cycle")
    with pytest.raises(ValueError, match="monitoring"):
        tips_by_theme("monitors")


def test_cli_lists_shows_and_rejects(capsys):
    assert main(["tips"]) == 0
    out = capsys.readouterr().out
    assert all(tip_id in out for tip_id in TIPS)
    assert ("(to come)" in out) == any(not tip.implemented_by for tip in TIPS.values())
    assert main(["tips", "--theme", "nlp"]) == 0
    out = capsys.readouterr().out
    assert "weight-tying" in out and "one-cycle" not in out
    assert main(["tips", "one-cycle"]) == 0
    out = capsys.readouterr().out
    assert "dltips.OneCycle" in out and get_tip("one-cycle").title in out
    assert main(["tips", "no-such-tip"]) == 2
    err = capsys.readouterr().err
    assert "no-such-tip" in err and "gradient-accumulation" in err
    assert main([]) == 2


def test_python_dash_m_entry_point_exit_codes():
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "dltips", "tips", "mixup"], capture_output=True, text=True)
    assert ok.returncode == 0 and "dltips.Mixup" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "dltips", "tips", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "valid ids" in bad.stderr.lower()


def test_the_catalog_cli_does_not_import_torch_and_every_public_name_resolves():
    import subprocess
    import sys

    import dltips

    code = "import sys; from dltips.cli import main; main(['tips']); assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    for name in dltips.__all__:
        assert getattr(dltips, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(dltips, "no_such_name")  # noqa: B009 -- the module __getattr__ is what is tested


# ---------------------------------------------------------------------- `dltips tips ID` in full

COMMON = ("model", "device", "seed", "max_items", "deadline")


def signature_defaults(obj) -> dict:
    """What the page should list for `obj`, read here straight from inspect.signature."""
    params = inspect.signature(obj).parameters
    check = all(name in params and params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in COMMON)
    return {name: p.default for name, p in params.items()
            if p.default is not inspect.Parameter.empty and not (check and name in COMMON)}


@pytest.mark.parametrize("tip", list(TIPS.values()), ids=list(TIPS))
def test_every_tip_says_where_it_comes_from_and_has_a_short_snippet(tip):
    assert tip.source.startswith(f"{SEED}, {THEME_TITLES[tip.theme]}: '") and tip.source.endswith("'")
    assert len(tip.source) < 120  # a locator, not a copy of the text
    assert re.search(r"\b(19|20)\d\d\b", tip.citation), "a citation names a year"
    lines = tip.snippet.splitlines()
    assert 3 <= len(lines) <= 12 and tip.snippet.endswith("\n") and not tip.snippet.startswith((" ", "\n"))
    assert "dltips" in tip.snippet
    compile(tip.snippet, f"<snippet {tip.id}>", "exec")


@pytest.mark.parametrize("tip", list(TIPS.values()), ids=list(TIPS))
def test_every_snippet_runs_as_is(tip, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # a snippet must not use a deprecated form
            torch.manual_seed(0)
            exec(compile(tip.snippet, f"<snippet {tip.id}>", "exec"), {"__name__": "__snippet__"})
    finally:
        torch.set_num_threads(threads)
    assert capsys.readouterr().out.strip(), "a snippet shows what it did"
    assert not list(tmp_path.iterdir()), "a snippet writes no files"


@pytest.mark.parametrize("tip", [t for t in TIPS.values() if t.implemented_by], ids=[t.id for t in TIPS.values()
                                                                                      if t.implemented_by])
def test_the_defaults_shown_are_those_of_the_code(tip):
    shown = tip_defaults(tip)
    page = format_tip(tip)
    for name, obj in zip(tip.implemented_by, tip.resolve()):
        expected = signature_defaults(obj)
        assert shown[name] == expected, name
        for key, value in list(expected.items())[:MAX_DEFAULTS]:
            if isinstance(value, (int, float, str, tuple, type(None))) and len(repr(value)) <= 40:
                assert f"{key}={value!r}" in page, (name, key)
    has_check = any(is_check(obj) for obj in tip.resolve())
    assert ("every check_* also takes model=None, device=None, seed=0, max_items=None" in " ".join(page.split())) == has_check


def test_a_changed_default_changes_the_page(monkeypatch):
    import dltips
    from dltips.training.schedule import OneCycle

    tip = get_tip("one-cycle")
    assert "pct_start=0.25," in format_tip(tip)
    defaults = OneCycle.__init__.__defaults__
    monkeypatch.setattr(OneCycle.__init__, "__defaults__", (0.3, *defaults[1:]))
    page = format_tip(tip)
    assert "pct_start=0.3," in page and "pct_start=0.25" not in page

    def stand_in(optimizer, max_lr, total_steps, warmup=7):
        """A schedule with other defaults."""

    monkeypatch.setattr(dltips, "OneCycle", stand_in)
    page = format_tip(tip)
    assert "OneCycle(optimizer, max_lr, total_steps, warmup=7)" in page and "  OneCycle: warmup=7" in page
    assert "A schedule with other defaults." in page and "test_catalog.py" in page
    assert tip_defaults(tip)["dltips.OneCycle"] == {"warmup": 7}


def test_a_dataclass_shows_its_field_defaults_factories_included():
    from dltips.nlp.emergent import ScalingPoint

    assert defaults_of(ScalingPoint) == {"scores": {}, "totals": {}, "valid_tokens": 0}


def test_every_implementing_object_has_a_file_in_the_package_a_signature_and_a_summary():
    root = Path(catalog.__file__).resolve().parent.parent
    for tip in TIPS.values():
        for name, obj in zip(tip.implemented_by, tip.resolve()):
            path = source_path(obj)
            assert path.startswith("dltips/") and (root / path).is_file(), (name, path)  # decorators unwrapped
            line = signature_line(name.rsplit(".", 1)[-1], obj, 84)
            assert len(line) <= 84 and line.startswith(name.rsplit(".", 1)[-1] + "("), line
            assert summary_line(obj), name


def test_signature_lines_keep_the_markers_and_clip_between_arguments():
    def f(a, /, b, *, c=1, d="x" * 100):
        pass

    def g(task, *args, key=None, **kwargs) -> list[int]:
        pass

    assert signature_line("f", f, 200) == f"f(a, /, b, *, c=1, d={short_repr('x' * 100)})"
    assert signature_line("f", f, 30) == "f(a, /, b, *, c=1, ...)"
    assert signature_line("g", g) == "g(task, *args, key=None, **kwargs) -> list[int]"
    assert len(short_repr("x" * 100)) <= 40 and short_repr(len) == "<built-in function len>"


def test_the_summary_is_the_first_sentence_of_the_docstring():
    def f():
        """Tie the weights (Inan et al. 2017; Press et al.). Then more. `x` too.

        Details."""

    def g():
        """One line without a full stop"""

    assert summary_line(f) == "Tie the weights (Inan et al. 2017; Press et al.)."
    assert summary_line(g) == "One line without a full stop" and summary_line(lambda: 0) == ""


def test_a_checks_signature_shows_its_own_options_before_the_common_arguments():
    from dltips.training.overfit import check_overfit_tiny

    line = signature_line("check_overfit_tiny", check_overfit_tiny, 84)
    assert line == "check_overfit_tiny(task, *, sizes=(1, 2, 8, 32), ...) -> list[Finding]"
    assert signature_line("check_overfit_tiny", check_overfit_tiny, 200) == (
        "check_overfit_tiny(task, *, sizes=(1, 2, 8, 32), max_steps=300, model=None, device=None, seed=0, "
        "max_items=None, deadline=None) -> list[Finding]")


def test_cli_shows_one_cycle_in_full(capsys):
    from dltips.training.schedule import OneCycle

    assert main(["tips", "one-cycle"]) == 0
    out = capsys.readouterr().out
    tip = get_tip("one-cycle")
    pct_start = inspect.signature(OneCycle).parameters["pct_start"].default
    assert "Smith & Topin 2019" in out and "Super-Convergence" in " ".join(out.split())
    assert f"pct_start={pct_start!r}" in out and "dltips/training/schedule.py" in out
    assert "OneCycle(optimizer, max_lr, total_steps, pct_start=" in out
    assert tip.snippet in out and tip.source.split(": ")[-1] in " ".join(out.split())
    assert cli.format_tip is format_tip


def test_cli_rejects_an_unknown_id_with_the_list(capsys):
    assert main(["tips", "one_cycle"]) == 2
    captured = capsys.readouterr()
    assert not captured.out and "one_cycle" in captured.err
    assert all(f"\n  {tip_id}" in captured.err for tip_id in TIPS)
