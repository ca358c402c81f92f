import pytest

from dltips.catalog import KINDS, THEMES, TIPS, get_tip, tips_by_theme
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
