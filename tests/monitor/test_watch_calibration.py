"""The monitors' calibration: healthy runs raise no warning, each broken run is flagged by its tip.

    python tests/monitor/test_watch_calibration.py    # prints the measurements per run
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import watch_zoo  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", sorted(watch_zoo.HEALTHY))
def test_healthy_run_raises_no_warning(name):
    w = watch_zoo.HEALTHY[name]()
    findings = w.findings()
    bad = [(f.tip, f.status, f.message) for f in findings if f.status in ("warn", "fail")]
    assert not bad, bad
    assert {f.tip for f in findings} == {"activation-gradient-stats", "update-ratio"}
    assert all(f.status == "pass" for f in findings)


@pytest.mark.parametrize("name", sorted(watch_zoo.BROKEN))
def test_broken_run_is_flagged_by_its_tip(name):
    run, tips = watch_zoo.BROKEN[name]
    findings = run().findings()
    flagged = {f.tip for f in findings if f.status in ("warn", "fail")}
    assert flagged & tips, [(f.tip, f.status, f.title) for f in findings]


def main() -> None:
    print("| run | kind | verdicts | max dead (late / init) | max saturated (late / init) "
          "| update ratio: median per matrix, min..max | largest sampled ratio |")
    print("|---|---|---|---|---|---|---|")
    runs = {**{k: (v, "healthy") for k, v in watch_zoo.HEALTHY.items()},
            **{k: (v[0], "broken") for k, v in watch_zoo.BROKEN.items()}}
    for name, (run, kind) in runs.items():
        w = run()
        m = watch_zoo.measurements(w)
        verdicts = ", ".join(f"{f.tip} {f.status}" for f in w.findings() if f.status != "pass") or "all pass"

        def fmt(v):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2g}"

        print(f"| {name} | {kind} | {verdicts} | {fmt(m['dead'])} / {fmt(m['dead_init'])} | "
              f"{fmt(m['saturated'])} / {fmt(m['saturated_init'])} | {fmt(m['ratio_min'])}..{fmt(m['ratio_max'])} | "
              f"{fmt(m['ratio_peak'])} |",
              flush=True)


if __name__ == "__main__":
    main()
