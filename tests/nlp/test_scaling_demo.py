"""`dltips demo charlm --sizes ...`: a scaling study of the demo's sizes, written as a report."""

import json

import pytest

from dltips.cli import main


def test_sizes_is_for_charlm_only_and_checks_its_arguments(capsys):
    assert main(["demo", "digits", "--sizes", "tiny"]) == 2
    assert "charlm demo only" in capsys.readouterr().err
    assert main(["demo", "charlm", "--sizes", "tiny,huge"]) == 2
    assert "unknown sizes ['huge']" in capsys.readouterr().err
    assert main(["demo", "charlm", "--sizes", "tiny", "--steps", "0"]) == 2


@pytest.mark.slow
def test_scaling_study_report_has_both_verdicts_and_the_plots(tmp_path, capsys):
    html, report = tmp_path / "scaling.html", tmp_path / "scaling.json"
    assert main(["demo", "charlm", "--sizes", "tiny,small,medium", "--steps", "20", "--html", str(html),
                 "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert [f["tip"] for f in data["findings"]] == ["emergent-scaling", "logloss-downstream"]
    assert data["task"]["sizes"] == ["tiny", "small", "medium"]
    params = data["task"]["n_params"]
    assert params["tiny"] < params["small"] < params["medium"]
    page = html.read_text()
    assert "next-char" in page and "close-bracket" in page and "keyword" in page
    assert page.count("<img") >= 2  # the probe and loss curves against compute
