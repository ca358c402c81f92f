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
from zoo import BROKEN, HEALTHY, LEARNS_NOTHING  # noqa: E402

from dltips import doctor  # noqa: E402
from dltips.findings import SKIP_TIME  # noqa: E402

BUDGET_S = 30.0
FLAGS = ("warn", "fail")
# Tasks whose every plan fits in the budget with room to spare on 2 CPU cores shared with two busy processes:
# the load test compares their verdicts idle and under load.
LOAD_SUBSET = ("digits-mlp", "wine", "breast-cancer", "friedman1", "spirals", "count-lm", "label-smoothing",
               "lr-far-too-low", "random-labels", "shifted-test")
# Their plans take 1-3 s idle; beside two busy processes torch's threads slow down up to 5 times, so the
# budget leaves room for that: both runs must run every plan to its end for the comparison to mean anything.
LOAD_BUDGET_S = 60.0


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
    assert report.exit_status() == 0  # nothing the user's code raised either


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_tasks_are_flagged_by_the_tip_that_names_the_cause(name):
    _, expected = BROKEN[name]
    report, _ = diagnosed(name)
    flagged = {f.tip for f in report.findings if f.status in FLAGS}
    assert flagged & expected, f"expected one of {expected} to flag; got {verdicts(report)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", LEARNS_NOTHING)
def test_a_model_that_learns_nothing_is_a_failure_not_a_warning(name):
    report, _ = diagnosed(name)
    assert report.exit_status() == 1, verdicts(report)


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


def time_skips(report) -> set[str]:
    return {f.tip for f in report.findings if f.status == "skip" and f.evidence.get("skip_reason") == SKIP_TIME}


@pytest.mark.slow
def test_verdicts_are_the_same_on_an_idle_and_on_a_busy_machine():
    """The load may cost a check its time (a `skip` naming the seconds it needs), never its verdict.

    Idle, every plan of these tasks fits in LOAD_BUDGET_S; under load, a verdict that differs from the idle
    one must be a skip for time. How many checks a shared machine leaves room for is printed, not asserted:
    it depends on what else the machine runs.
    """
    def run(name):
        return diagnose(HEALTHY.get(name) or BROKEN[name][0], LOAD_BUDGET_S)[0]

    idle = {name: run(name) for name in LOAD_SUBSET}
    assert not {name: time_skips(r) for name, r in idle.items() if time_skips(r)}  # idle, every plan fits
    with busy_processes() as procs:
        loaded = {name: run(name) for name in LOAD_SUBSET}
        assert all(p.poll() is None for p in procs)  # the load lasted the whole comparison
    changed = {}
    for name in LOAD_SUBSET:
        before, after, skipped = dict(verdicts(idle[name])), dict(verdicts(loaded[name])), time_skips(loaded[name])
        assert before.keys() == after.keys(), name
        changed[name] = {tip: (before[tip], after[tip]) for tip in before
                         if before[tip] != after[tip] and tip not in skipped}
        compared = sum(tip not in skipped for tip in before)
        print(f"{name}: {compared} of {len(before)} verdicts compared under load; skipped for time: "
              f"{sorted(skipped) or 'none'}; timings {loaded[name].timings}")
    assert not {name: c for name, c in changed.items() if c}


def compare(idle, loaded) -> str:
    """"yes" when the (tip, status) lists are identical; "skips only" when every difference is a check that
    ran to a verdict on one machine and skipped for time on the other; else "NO"."""
    if idle == loaded:
        return "yes"
    a, b = dict(idle), dict(loaded)
    if a.keys() == b.keys() and all(a[t] == b[t] or "skip" in (a[t], b[t]) for t in a):
        return "skips only"
    return "NO"


def table(load: bool) -> list[str]:
    rows = ["| task | kind | expected | flagged (warn/fail) | result | wall s / budget s |"
            + (f" same at {LOAD_BUDGET_S:.0f} s, idle and under load |" if load else ""),
            "|---|---|---|---|---|---|" + ("---|" if load else "")]
    names = (*HEALTHY, *BROKEN)
    make = {n: HEALTHY.get(n) or BROKEN[n][0] for n in names}
    same = {}
    if load:
        idle = {n: verdicts(diagnose(make[n], LOAD_BUDGET_S)[0]) for n in names}
        with busy_processes(seconds=1800):
            same = {n: compare(idle[n], verdicts(diagnose(make[n], LOAD_BUDGET_S)[0])) for n in names}
    for name in names:
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
            row += f" {same[name]} |"
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    rows = table(load="--load" in sys.argv)
    out = Path(__file__).resolve().parents[2] / "docs" / "calibration.md"
    before, after = out.read_text().split("<!-- table -->\n")
    rest = after[after.index("\n## "):] if "\n## " in after else ""  # the sections after the table stay
    out.write_text(before + "<!-- table -->\n" + "\n".join(rows) + "\n" + rest)


if __name__ == "__main__":
    main()
