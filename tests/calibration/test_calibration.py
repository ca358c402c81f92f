"""The doctor on the calibration set: no false alarm on healthy tasks, every broken task caught.

`python tests/calibration/test_calibration.py` runs the set and writes the table in docs/calibration.md.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from zoo import BROKEN, HEALTHY  # noqa: E402

from dltips import doctor  # noqa: E402

BUDGET_S = 15.0
FLAGS = ("warn", "fail")


def diagnose(make_task):
    return doctor(make_task(), budget_s=BUDGET_S, seed=0, device="cpu", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HEALTHY))
def test_healthy_tasks_get_no_warning(name):
    report = diagnose(HEALTHY[name])
    alarms = [(f.tip, f.status, f.message) for f in report.findings if f.status in FLAGS]
    assert not alarms


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_tasks_are_flagged_by_the_tip_that_names_the_cause(name):
    make_task, expected = BROKEN[name]
    report = diagnose(make_task)
    flagged = {f.tip for f in report.findings if f.status in FLAGS}
    assert flagged & expected, f"expected one of {expected} to flag; got {[(f.tip, f.status) for f in report.findings]}"


def main() -> None:
    rows = ["| task | kind | expected | flagged (warn/fail) | result | seconds |", "|---|---|---|---|---|---|"]
    for name, make_task in HEALTHY.items():
        report = diagnose(make_task)
        flagged = sorted(f"{f.tip} ({f.status})" for f in report.findings if f.status in FLAGS)
        rows.append(f"| {name} | healthy | none | {', '.join(flagged) or 'none'} | "
                    f"{'ok' if not flagged else 'FALSE ALARM'} | {report.duration_s:.1f} |")
        print(rows[-1], flush=True)
    for name, (make_task, expected) in BROKEN.items():
        report = diagnose(make_task)
        flagged = {f.tip: f.status for f in report.findings if f.status in FLAGS}
        shown = ", ".join(f"{t} ({s})" for t, s in sorted(flagged.items())) or "none"
        rows.append(f"| {name} | broken | {', '.join(sorted(expected))} | {shown} | "
                    f"{'caught' if set(flagged) & expected else 'MISSED'} | {report.duration_s:.1f} |")
        print(rows[-1], flush=True)
    out = Path(__file__).resolve().parents[2] / "docs" / "calibration.md"
    out.write_text(out.read_text().split("<!-- table -->")[0] + "<!-- table -->\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
