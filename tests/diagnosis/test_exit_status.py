"""The doctor's exit status as a CI gate, the report's "incomplete" key, and the INCOMPLETE summary line."""

import io
import itertools
import json
import textwrap

import pytest
import torch

from dltips import Finding, ParamError, Report
from dltips.cli import main
from dltips.findings import SKIP_ERROR, SKIP_TIME, could_not_run, skipped_for_time

TASK = {"name": "t", "kind": "classification", "n_classes": 2}


def verdict(tip: str, status: str) -> Finding:
    return Finding(tip, status, f"{status} title", f"{status} message")


def crashed(tip: str, message: str = "bad shapes") -> Finding:
    return could_not_run(tip, TypeError(message))


def timed_out(tip: str) -> Finding:
    return skipped_for_time(tip, 12.0, "3 of 5 rungs")


# The pieces a report can hold, each with what it implies: (failing statuses, incomplete).
PIECES = {
    "pass": (lambda: verdict("initialization", "pass"), set(), False),
    "info": (lambda: verdict("one-cycle", "info"), set(), False),
    "warn": (lambda: verdict("mixup", "warn"), {"warn"}, False),
    "fail": (lambda: verdict("default-lr", "fail"), {"fail"}, False),
    "plain skip": (lambda: verdict("weight-tying", "skip"), set(), False),
    "time skip": (lambda: timed_out("overfit-tiny"), set(), False),
    "error skip": (lambda: crashed("error-gaps"), set(), True),
}


def expected_status(pieces: tuple[str, ...], fail_on: str) -> int:
    """The documented rule, read from the pieces' declared meaning rather than the findings."""
    failing = {"fail"} if fail_on == "fail" else {"warn", "fail"}
    if any(PIECES[p][1] & failing for p in pieces):
        return 1
    return 3 if any(PIECES[p][2] for p in pieces) else 0


@pytest.mark.parametrize("fail_on", ["fail", "warn"])
def test_exit_status_for_every_combination_of_findings(fail_on):
    for size in range(len(PIECES) + 1):
        for pieces in itertools.combinations(PIECES, size):
            report = Report(TASK, [PIECES[p][0]() for p in pieces])
            assert report.exit_status(fail_on) == expected_status(pieces, fail_on), (pieces, fail_on)


def test_named_cases():
    assert Report(TASK, [verdict("initialization", "pass")]).exit_status() == 0
    warned = Report(TASK, [verdict("initialization", "pass"), verdict("mixup", "warn")])
    assert warned.exit_status() == 0 and warned.exit_status("fail") == 0 and warned.exit_status("warn") == 1
    assert Report(TASK, [verdict("default-lr", "fail")]).exit_status() == 1
    assert Report(TASK, [crashed("initialization")]).exit_status() == 3
    both = Report(TASK, [crashed("initialization"), verdict("default-lr", "fail")])
    assert both.exit_status() == 1 and both.incomplete == [both.findings[0]]
    only_time = Report(TASK, [timed_out("overfit-tiny"), timed_out("default-lr"), verdict("mixup", "pass")])
    assert only_time.exit_status() == 0 and only_time.exit_status("warn") == 0 and only_time.incomplete == []
    assert Report(TASK, []).exit_status() == 0


def test_incomplete_reads_the_skip_reason_only():
    findings = [crashed("initialization"), timed_out("overfit-tiny"), verdict("weight-tying", "skip"),
                Finding("error-gaps", "skip", "x", "y", evidence={"skip_reason": SKIP_ERROR}),
                Finding("worst-predictions", "skip", "x", "y", evidence={"skip_reason": SKIP_TIME})]
    report = Report(TASK, findings)
    assert [f.tip for f in report.incomplete] == ["initialization", "error-gaps"]


def test_fail_on_is_validated():
    report = Report(TASK, [verdict("initialization", "pass")])
    for bad in ("info", "FAIL", None, ["warn"]):
        with pytest.raises(ParamError, match="fail_on"):
            report.exit_status(bad)


def test_json_lists_the_incomplete_tips_and_round_trips():
    report = Report(TASK, [verdict("initialization", "pass"), crashed("overfit-tiny"), timed_out("default-lr"),
                           crashed("error-gaps", "size mismatch")])
    data = json.loads(report.to_json())
    assert data["incomplete"] == ["overfit-tiny", "error-gaps"]
    assert list(data)[:6] == ["dltips_version", "task", "duration_s", "next_steps", "findings", "summary"]
    back = Report.from_json(report.to_json())
    assert [f.tip for f in back.incomplete] == ["overfit-tiny", "error-gaps"]
    assert back.exit_status() == 3 and back.to_dict() == report.to_dict()


def test_older_json_without_the_key_still_reads():
    report = Report(TASK, [verdict("initialization", "pass"), crashed("overfit-tiny")])
    data = report.to_dict()
    del data["incomplete"]
    back = Report.from_json(json.dumps(data))
    assert [f.tip for f in back.incomplete] == ["overfit-tiny"] and back.exit_status() == 3
    assert json.loads(Report(TASK, [verdict("mixup", "pass")]).to_json())["incomplete"] == []


def plain_text(report: Report, fail_on: str = "fail") -> str:
    stream = io.StringIO()
    report.print(stream, fail_on=fail_on)
    return stream.getvalue()


def test_terminal_starts_with_the_incomplete_line_and_ends_with_the_exit_status():
    report = Report(TASK, [verdict("initialization", "pass"), crashed("overfit-tiny", "bad shapes"),
                           timed_out("default-lr"), crashed("error-gaps", "size\nmismatch")])
    lines = plain_text(report).splitlines()
    assert lines[0] == ("INCOMPLETE: 2 checks could not run because your code raised: "
                        "overfit-tiny (TypeError: bad shapes), error-gaps (TypeError: size mismatch)")
    assert lines[2].startswith("dltips report: t")
    assert lines[-1] == "1 pass, 0 warn, 0 fail, 0 info, 3 skip - exit status 3 (incomplete)"
    one = plain_text(Report(TASK, [crashed("initialization", "boom")])).splitlines()
    assert one[0] == "INCOMPLETE: 1 check could not run because your code raised: initialization (TypeError: boom)"


def test_terminal_summary_gives_the_failure_first_when_both():
    report = Report(TASK, [crashed("initialization"), verdict("mixup", "warn")])
    assert plain_text(report).splitlines()[-1].endswith("exit status 3 (incomplete)")
    assert plain_text(report, "warn").splitlines()[-1].endswith(
        "exit status 1 (a check failed or warned; also incomplete)")
    report.findings.append(verdict("default-lr", "fail"))
    assert plain_text(report).splitlines()[-1].endswith("exit status 1 (a check failed; also incomplete)")


def test_terminal_is_unchanged_when_complete():
    report = Report(TASK, [verdict("initialization", "pass"), timed_out("overfit-tiny"), verdict("default-lr", "fail")])
    lines = plain_text(report).splitlines()
    assert lines[0].startswith("dltips report: t") and "INCOMPLETE" not in "".join(lines)
    assert lines[-1] == "1 pass, 0 warn, 1 fail, 0 info, 1 skip"


def test_terminal_with_rich_puts_the_incomplete_line_first():
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=300)
    Report(TASK, [crashed("initialization", "boom")]).print(console)
    text = console.file.getvalue()
    assert "\x1b[" in text
    plain = Console(file=io.StringIO(), width=300)
    Report(TASK, [crashed("initialization", "boom")]).print(plain)
    assert plain.file.getvalue().startswith("INCOMPLETE: 1 check could not run")


TARGET = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from dltips import Task

    def tiny():
        g = torch.Generator().manual_seed(0)
        d = TensorDataset(torch.randn(64, 5, generator=g), torch.randint(0, 3, (64,), generator=g))
        return Task(nn.Linear(5, 3), d, d, batch_size=16)
""")


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "exit_status_task.py"
    path.write_text(TARGET)
    return f"{path}:tiny"


def test_cli_exits_0_on_a_healthy_task(target, capsys):
    assert main(["doctor", target, "--budget", "5", "--only", "initialization"]) == 0
    out = capsys.readouterr().out
    assert "INCOMPLETE" not in out and "exit status" not in out


def test_cli_exits_3_when_the_users_code_raises_inside_a_check(target, tmp_path, capsys, monkeypatch):
    import dltips.training.init as init

    def raising(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(init, "check_initial_loss", raising)
    json_path = tmp_path / "r.json"
    args = ["doctor", target, "--budget", "5", "--only", "initialization", "--json", str(json_path)]
    assert main(args) == 3
    out = capsys.readouterr().out
    assert out.startswith("INCOMPLETE: 1 check could not run because your code raised: "
                          "initialization (RuntimeError: mat1 and mat2 shapes cannot be multiplied)")
    assert out.rstrip().endswith("exit status 3 (incomplete)")
    assert json.loads(json_path.read_text())["incomplete"] == ["initialization"]
    assert main(args + ["--fail-on", "warn"]) == 3
    capsys.readouterr()


def test_cli_rejects_an_unknown_fail_on(target):
    with pytest.raises(SystemExit) as e:
        main(["doctor", target, "--fail-on", "info"])
    assert e.value.code == 2


def test_cli_fail_on_warn_turns_a_warning_into_exit_1(target, capsys, monkeypatch):
    import dltips.training.init as init

    monkeypatch.setattr(init, "check_initial_loss", lambda *args, **kwargs: [verdict("initialization", "warn")])
    args = ["doctor", target, "--budget", "5", "--only", "initialization"]
    assert main(args) == 0
    assert main(args + ["--fail-on", "warn"]) == 1
    assert main(args + ["--fail-on", "fail"]) == 0
    assert "INCOMPLETE" not in capsys.readouterr().out


def test_an_error_raised_inside_dltips_is_reported_as_a_dltips_bug_not_the_users():
    from dltips.core.params import positive

    try:
        positive("x", -1.0)  # raised by dltips's own code
    except ValueError as e:
        ours = could_not_run("default-lr", e)
    try:
        torch.nn.Linear(2, 2)(torch.zeros(1, 3))  # raised in torch, called from "user" code
    except RuntimeError as e:
        theirs = could_not_run("overfit-tiny", e)
    assert ours.evidence["raised_in"] == "dltips" and "bug in dltips" in ours.fix
    assert theirs.evidence["raised_in"] == "your code" and "bug in dltips" not in theirs.fix
    report = Report(TASK, [ours])
    first = plain_text(report).splitlines()[0]
    assert first.startswith("INCOMPLETE: 1 check could not run because of an error: default-lr (")
    assert "raised inside dltips: please report it" in first
    assert report.exit_status() == 3
