"""The doctor on the cause set: every broken task found by an expected tip with its cause named, and no
warning on the healthy look-alikes.

`python tests/calibration/test_cause_set.py` runs the set and writes its table in docs/calibration.md
(section "Causes"), with the two rates: found, and cause named.
"""

import functools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cause_set import CAUSE_HEALTHY, CAUSES, cause_named, named_first  # noqa: E402

from dltips import doctor  # noqa: E402

BUDGET_S = 30.0
FLAGS = ("warn", "fail")


@functools.lru_cache(maxsize=None)
def diagnosed(name):
    make = CAUSES[name][0] if name in CAUSES else CAUSE_HEALTHY[name]
    return doctor(make(), budget_s=BUDGET_S, seed=0, device="cpu", progress=False)


def flagged(report):
    return {f.tip for f in report.findings if f.status in FLAGS}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CAUSES))
def test_each_cause_is_found_and_named(name):
    _, tips, words = CAUSES[name]
    report = diagnosed(name)
    assert flagged(report) & tips, sorted(flagged(report))
    assert cause_named(report, words), [(f.tip, f.title) for f in report.findings if f.status in FLAGS]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CAUSE_HEALTHY))
def test_healthy_look_alikes_get_no_warning(name):
    report = diagnosed(name)
    assert not [(f.tip, f.status, f.title) for f in report.findings if f.status in FLAGS]


def table() -> list[str]:
    rows = ["| task | expected tips | flagged (warn/fail) | found | cause named | named first |", "|---|---|---|---|---|---|"]
    found = named = first = 0
    for name, (_, tips, words) in CAUSES.items():
        report = diagnosed(name)
        hit, says, top = bool(flagged(report) & tips), cause_named(report, words), named_first(report, words)
        found, named, first = found + hit, named + says, first + top
        rows.append(f"| {name} | {', '.join(sorted(tips))} | {', '.join(sorted(flagged(report))) or 'none'} | "
                    f"{'yes' if hit else 'NO'} | {'yes' if says else 'NO'} | {'yes' if top else 'no'} |")
    n = len(CAUSES)
    alarms = sum(bool(flagged(diagnosed(h))) for h in CAUSE_HEALTHY)
    rows += ["", f"Found {found}/{n} ({found / n:.0%}), cause named {named}/{n} ({named / n:.0%}), named first "
                 f"{first}/{n} ({first / n:.0%}); false alarms on the {len(CAUSE_HEALTHY)} healthy look-alikes: {alarms}."]
    return rows


def main() -> None:
    rows = table()
    print("\n".join(rows))
    out = Path(__file__).resolve().parents[2] / "docs" / "calibration.md"
    text = out.read_text()
    start = text.index("<!-- causes -->\n") + len("<!-- causes -->\n")
    end = text.index("<!-- /causes -->")
    out.write_text(text[:start] + "\n".join(rows) + "\n" + text[end:])


if __name__ == "__main__":
    main()
