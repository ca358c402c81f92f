"""Loop bugs on two architectures each are found and named; healthy loops with the same parts raise nothing.

    python tests/monitor/test_loop_calibration.py    # writes the tables of docs/calibration.md ("Loop bugs")
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loop_zoo  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
FLAGS = ("warn", "fail")


@functools.lru_cache(maxsize=None)
def findings(name):
    make = loop_zoo.BROKEN[name][0] if name in loop_zoo.BROKEN else loop_zoo.HEALTHY[name]
    return tuple(make().findings())


def named(found, words) -> bool:
    return any(re.search(words, f"{f.title} {f.message}", re.IGNORECASE) for f in found if f.status in FLAGS)


@pytest.mark.parametrize("name", sorted(loop_zoo.BROKEN))
def test_each_loop_bug_is_found_and_named(name):
    _, tips, words = loop_zoo.BROKEN[name]
    found = findings(name)
    assert {f.tip for f in found if f.status in FLAGS} & tips, [(f.tip, f.status, f.title) for f in found]
    assert named(found, words), [(f.tip, f.status, f.title) for f in found]


@pytest.mark.parametrize("name", sorted(loop_zoo.HEALTHY))
def test_healthy_loops_raise_nothing(name):
    assert not [(f.tip, f.status, f.title) for f in findings(name) if f.status in FLAGS]


@functools.lru_cache(maxsize=None)
def doctor_findings(name):
    import dltips

    make = loop_zoo.STEP_BROKEN[name][0] if name in loop_zoo.STEP_BROKEN else loop_zoo.STEP_HEALTHY[name]
    return tuple(dltips.doctor(make(), budget_s=DOCTOR_BUDGET_S, progress=False).findings)


DOCTOR_BUDGET_S = 30


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(loop_zoo.STEP_BROKEN))
def test_the_doctor_finds_and_names_each_bug_of_a_tasks_own_step(name):
    _, tips, words = loop_zoo.STEP_BROKEN[name]
    found = doctor_findings(name)
    assert {f.tip for f in found if f.status in FLAGS} & tips, [(f.tip, f.status, f.title) for f in found]
    assert named(found, words), [(f.tip, f.status, f.title) for f in found]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(loop_zoo.STEP_HEALTHY))
def test_the_doctor_raises_nothing_on_a_healthy_own_step(name):
    assert not [(f.tip, f.status, f.title) for f in doctor_findings(name) if f.status in FLAGS]


def table() -> list[str]:
    rows = ["| loop | expected tips | flagged (warn/fail) | found | cause named |", "|---|---|---|---|---|"]
    hits = says = 0
    for name, (_, tips, words) in loop_zoo.BROKEN.items():
        found = findings(name)
        flagged = sorted({f.tip for f in found if f.status in FLAGS})
        hit, say = bool(set(flagged) & tips), named(found, words)
        hits, says = hits + hit, says + say
        rows.append(f"| {name} | {', '.join(sorted(tips))} | {', '.join(flagged) or 'none'} | "
                    f"{'yes' if hit else 'NO'} | {'yes' if say else 'NO'} |")
    n = len(loop_zoo.BROKEN)
    alarms = [h for h in loop_zoo.HEALTHY if any(f.status in FLAGS for f in findings(h))]
    rows += ["", f"Found {hits}/{n}, cause named {says}/{n}; false alarms on the {len(loop_zoo.HEALTHY)} healthy "
                 f"loops: {len(alarms)}{' (' + ', '.join(alarms) + ')' if alarms else ''}."]
    return rows


def doctor_table() -> list[str]:
    rows = ["| own step | expected tips | flagged (warn/fail) by the doctor | found | cause named |", "|---|---|---|---|---|"]
    hits = says = 0
    for name, (_, tips, words) in loop_zoo.STEP_BROKEN.items():
        found = doctor_findings(name)
        flagged = sorted({f.tip for f in found if f.status in FLAGS})
        hit, say = bool(set(flagged) & tips), named(found, words)
        hits, says = hits + hit, says + say
        rows.append(f"| {name} | {', '.join(sorted(tips))} | {', '.join(flagged) or 'none'} | "
                    f"{'yes' if hit else 'NO'} | {'yes' if say else 'NO'} |")
    n = len(loop_zoo.STEP_BROKEN)
    alarms = [h for h in loop_zoo.STEP_HEALTHY if any(f.status in FLAGS for f in doctor_findings(h))]
    rows += ["", f"Found {hits}/{n}, cause named {says}/{n}; false alarms on the {len(loop_zoo.STEP_HEALTHY)} healthy "
                 f"steps: {len(alarms)}{' (' + ', '.join(alarms) + ')' if alarms else ''}."]
    return rows


def _write(text: str, marker: str, rows: list[str]) -> str:
    open_, close = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if open_ not in text:
        text += f"\n{open_}\n{close}\n"
    start = text.index(open_ + "\n") + len(open_) + 1
    return text[:start] + "\n".join(rows) + "\n" + text[text.index(close):]


def main() -> None:
    import torch

    torch.set_num_threads(1)
    out = Path(__file__).resolve().parents[2] / "docs" / "calibration.md"
    text = out.read_text()
    for marker, rows in (("loops", table()), ("own-steps", doctor_table())):
        print("\n".join(rows) + "\n")
        text = _write(text, marker, rows)
    out.write_text(text)


if __name__ == "__main__":
    main()
