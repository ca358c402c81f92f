"""The doctor on the calibration set: no false alarm on healthy tasks, every broken task caught, words that
match their numbers, a budget that holds, and the same verdicts on an idle and on a busy machine.

`python tests/calibration/test_calibration.py` runs the set and writes the table in docs/calibration.md;
`python tests/calibration/test_calibration.py --load` writes the idle/under-load table as well.
"""

import functools
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from consistency import contradictions  # noqa: E402
from zoo import BROKEN, HEALTHY  # noqa: E402

from dltips import doctor  # noqa: E402

BUDGET_S = 30.0
FLAGS = ("warn", "fail")
# Tasks whose every plan fits in the budget with room to spare on 2 CPU cores shared with two busy processes:
# the load test compares their verdicts idle and under load.
LOAD_SUBSET = ("digits-mlp", "wine", "breast-cancer", "friedman1", "spirals", "count-lm", "label-smoothing",
               "lr-far-too-low", "random-labels", "shifted-test")


def diagnose(make_task, budget_s=BUDGET_S):
    start = time.perf_counter()
    report = doctor(make_task(), budget_s=budget_s, seed=0, device="cpu", progress=False)
    return report, time.perf_counter() - start


@functools.lru_cache(maxsize=None)
def diagnosed(name):
    """Each task is diagnosed once per session; the tests below read the same report."""
    make = HEALTHY[name] if name in HEALTHY else BROKEN[name][0]
    return diagnose(make)


def verdicts(report):
    return [(f.tip, f.status) for f in report.findings]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HEALTHY))
def test_healthy_tasks_get_no_warning(name):
    report, _ = diagnosed(name)
    alarms = [(f.tip, f.status, f.message) for f in report.findings if f.status in FLAGS]
    assert not alarms


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_tasks_are_flagged_by_the_tip_that_names_the_cause(name):
    _, expected = BROKEN[name]
    report, _ = diagnosed(name)
    flagged = {f.tip for f in report.findings if f.status in FLAGS}
    assert flagged & expected, f"expected one of {expected} to flag; got {verdicts(report)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", [*HEALTHY, *BROKEN])
def test_every_finding_says_what_its_numbers_say(name):
    report, _ = diagnosed(name)
    found = {f"{f.tip} ({f.status})": contradictions(f) for f in report.findings}
    assert not {k: v for k, v in found.items() if v}


@pytest.mark.slow
@pytest.mark.parametrize("name", [*HEALTHY, *BROKEN])
def test_the_budget_holds(name):
    _, seconds = diagnosed(name)
    assert seconds <= 1.1 * BUDGET_S + 5  # bench/doctor_budget.py measures it with start-up, and the demos


@contextmanager
def busy_processes(n=2, seconds=600):
    """`n` CPU-bound processes, each ended after `seconds` at the latest, and killed on exit."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    try:
        time.sleep(0.5)
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)


@pytest.mark.slow
def test_verdicts_are_the_same_on_an_idle_and_on_a_busy_machine():
    idle = {name: verdicts(diagnosed(name)[0]) for name in LOAD_SUBSET}
    with busy_processes() as procs:
        loaded = {name: verdicts(diagnose(HEALTHY.get(name) or BROKEN[name][0])[0]) for name in LOAD_SUBSET}
        assert all(p.poll() is None for p in procs)  # the load lasted the whole comparison
    differ = {name: (idle[name], loaded[name]) for name in LOAD_SUBSET if idle[name] != loaded[name]}
    assert not differ


def table(load: bool) -> list[str]:
    rows = ["| task | kind | expected | flagged (warn/fail) | result | wall s / budget s |"
            + (" same under load |" if load else ""), "|---|---|---|---|---|---|" + ("---|" if load else "")]
    with_load = {}
    if load:
        with busy_processes():
            with_load = {n: verdicts(diagnose(HEALTHY.get(n) or BROKEN[n][0])[0]) for n in (*HEALTHY, *BROKEN)}
    for name in (*HEALTHY, *BROKEN):
        report, seconds = diagnosed(name)
        flagged = {f.tip: f.status for f in report.findings if f.status in FLAGS}
        shown = ", ".join(f"{t} ({s})" for t, s in sorted(flagged.items())) or "none"
        if name in HEALTHY:
            kind, expected, result = "healthy", "none", "ok" if not flagged else "FALSE ALARM"
        else:
            expected_tips = BROKEN[name][1]
            kind, expected = "broken", ", ".join(sorted(expected_tips))
            result = "caught" if set(flagged) & expected_tips else "MISSED"
        row = f"| {name} | {kind} | {expected} | {shown} | {result} | {seconds:.1f} / {BUDGET_S:.0f} |"
        if load:
            row += f" {'yes' if with_load[name] == verdicts(report) else 'NO'} |"
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    rows = table(load="--load" in sys.argv)
    out = Path(__file__).resolve().parents[2] / "docs" / "calibration.md"
    out.write_text(out.read_text().split("<!-- table -->")[0] + "<!-- table -->\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
