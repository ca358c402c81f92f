"""`dltips diff before.json after.json`: which verdicts changed between two runs, with their numbers."""

import io
import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dltips import Finding, Report, Task, doctor
from dltips.cli import main
from dltips.diagnosis.diff import diff_files, diff_reports
from dltips.findings import could_not_run


def report(*findings: Finding, name: str = "t") -> dict:
    return json.loads(Report(task={"name": name}, findings=list(findings), duration_s=1.0).to_json())


def ratio(status: str, value: float, check: str | None = None) -> Finding:
    return Finding("update-ratio", status, f"ratios {status}", "m", evidence={"median_ratio": {"fc": value},
                   "band": [1e-4, 1e-2], "skip_reason": "x"}, check=check)


def test_changes_are_classified_and_their_numbers_shown_side_by_side():
    before = report(ratio("warn", 3e-5), Finding("initialization", "pass", "ok", "m", evidence={"loss": 2.3}),
                    Finding("default-lr", "pass", "lr ok", "m"))
    after = report(ratio("pass", 1.2e-3), Finding("initialization", "fail", "too high", "m", evidence={"loss": 9.1}),
                   Finding("error-gaps", "warn", "variance", "m"))
    diff = diff_reports(before, after)
    kinds = {c.check: c.kind for c in diff.changes}
    assert kinds == {"update-ratio": "better", "initialization": "worse", "default-lr": "gone", "error-gaps": "new"}
    assert diff.worse
    change = next(c for c in diff.changes if c.check == "update-ratio")
    assert change.numbers == [("median_ratio.fc", 3e-5, 1.2e-3)]  # the band did not change, so it is left out
    assert next(c for c in diff.changes if c.check == "initialization").numbers == [("loss", 2.3, 9.1)]
    assert [c.kind for c in diff.ordered()] == ["worse", "better", "new", "gone"]
    text = io.StringIO()
    from dltips.diagnosis.diff import render_diff

    render_diff(diff, text)
    lines = text.getvalue().splitlines()
    assert "\x1b[" not in text.getvalue()
    assert lines[3].split() == ["worse", "pass", "->", "fail", "initialization", "too", "high"]
    assert lines[4].strip() == "loss 2.3 -> 9.1"
    assert lines[-1] == "0 verdicts unchanged."


def test_findings_of_one_tip_from_different_checks_are_matched_by_check():
    leak = Finding("error-gaps", "pass", "no leak", "m", check="target-leak")
    causal = Finding("error-gaps", "fail", "sees the future", "m", check="causal-leak")
    fixed = Finding("error-gaps", "pass", "does not see the future", "m", check="causal-leak")
    diff = diff_reports(report(leak, causal), report(fixed, leak))  # the order of the findings does not matter
    assert {c.check: c.kind for c in diff.changes} == {"target-leak": "same", "causal-leak": "better"}


def test_a_check_that_could_not_run_ranks_below_a_warning():
    try:
        raise RuntimeError("boom")
    except RuntimeError as e:
        crashed = could_not_run("update-ratio", e)
    diff = diff_reports(report(ratio("warn", 1e-5)), report(crashed))
    assert [(c.before, c.after, c.kind) for c in diff.changes] == [("warn", "error", "worse")]


def test_an_older_report_without_checks_reads(tmp_path):
    old = report(ratio("warn", 3e-5))
    for f in old["findings"]:
        del f["check"]
    del old["timings"], old["next_steps"]
    (tmp_path / "a.json").write_text(json.dumps(old))
    (tmp_path / "b.json").write_text(json.dumps(report(ratio("warn", 3e-5))))
    diff = diff_files(str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert [c.kind for c in diff.changes] == ["same"] and not diff.worse


def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(report(ratio("pass", 1e-3))))
    (tmp_path / "text.json").write_text("not json")
    (tmp_path / "other.json").write_text(json.dumps({"loss": 1.0}))
    for bad, words in (("missing.json", "no such file"), ("text.json", "not a JSON file"),
                       ("other.json", "not a dltips report")):
        assert main(["diff", str(good), str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dltips: ") and bad in err and words in err and err.count("\n") == 1


def tiny_task(dead: bool) -> Task:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    if dead:
        with torch.no_grad():
            model[0].bias.fill_(-8.0)
    return Task(model, TensorDataset(x[:192], y[:192]), TensorDataset(x[192:], y[192:]), kind="classification",
                n_classes=2, batch_size=32, name="dead" if dead else "healthy")


@pytest.mark.slow
def test_the_loop_fix_one_thing_and_run_again(tmp_path, one_thread, capsys):
    only = {"initialization", "overfit-tiny", "activation-gradient-stats", "update-ratio"}
    for name, dead in (("before", True), ("after", False)):
        doctor(tiny_task(dead), budget_s=20, only=only, progress=False).to_json(tmp_path / f"{name}.json")
    before, after, out = (str(tmp_path / n) for n in ("before.json", "after.json", "diff.json"))
    assert main(["diff", before, after, "--fail-on-worse", "--json", out]) == 0  # fixed: nothing got worse
    text = capsys.readouterr().out
    assert "better  fail -> pass  overfit-tiny" in text
    data = json.loads(open(out).read())
    assert {"check": "overfit-tiny", "kind": "better"}.items() <= next(
        c for c in data["changes"] if c["check"] == "overfit-tiny").items()
    assert main(["diff", after, before, "--fail-on-worse"]) == 1  # the other way round, a regression
    assert main(["diff", after, before]) == 0


def test_a_checks_findings_are_matched_by_tip_not_by_position():
    dead = Finding("activation-gradient-stats", "fail", "all dead", "m", check="cause-probes")
    output = Finding("initialization", "pass", "output range ok", "m", check="cause-probes")
    revived = Finding("activation-gradient-stats", "pass", "alive", "m", check="cause-probes")
    diff = diff_reports(report(dead, output), report(output, revived))  # order swapped, tips kept
    assert {(c.tip, c.kind) for c in diff.changes} == {("activation-gradient-stats", "better"), ("initialization", "same")}
