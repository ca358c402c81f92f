"""Loop bugs on two architectures each are found and named; healthy loops with the same parts raise nothing.

    python tests/monitor/test_loop_calibration.py    # writes the table of docs/calibration.md ("Loop bugs")
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


def main() -> None:
    import torch

    torch.set_num_threads(1)
    rows = table()
    print("\n".join(rows))
    out = Path(__file__).resolve().parents[2] / "docs" / "calibration.md"
    text = out.read_text()
    if "<!-- loops -->" not in text:
        text += "\n<!-- loops -->\n<!-- /loops -->\n"
    start = text.index("<!-- loops -->\n") + len("<!-- loops -->\n")
    out.write_text(text[:start] + "\n".join(rows) + "\n" + text[text.index("<!-- /loops -->"):])


if __name__ == "__main__":
    main()
