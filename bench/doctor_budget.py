"""Wall time of `dltips doctor` against its budget, start-up included: every calibration task and the demos.

Each run is a fresh `python -m dltips doctor ... --budget B` process, timed from before its start to after
its exit, so interpreter start-up, imports and building the Task count. The promise is
wall <= 1.1 x budget + 5 s. Prints one row per run and the ratio wall / budget; with `--load` each run is
repeated with two CPU-bound processes beside it (interleaved with the idle run: idle, loaded, next task).

Run: python bench/doctor_budget.py [--budget 30] [--demo-budget 60] [--load] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMOS = ("digits", "charlm", "tabular")


@contextmanager
def busy(n: int = 2):
    code = "import time\nend = time.monotonic() + 900\nwhile time.monotonic() < end:\n    pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def run(target: list[str], budget: float) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dltips", "doctor", *target, "--budget", str(budget)],
                          cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=30.0, help="budget of the calibration tasks")
    parser.add_argument("--demo-budget", type=float, default=60.0)
    parser.add_argument("--load", action="store_true")
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests" / "calibration"))
    import zoo

    names = [*zoo.HEALTHY, *zoo.BROKEN]
    runs = [(f"demo {d}", ["--demo", d], args.demo_budget) for d in DEMOS]
    runs += [(n, [f"tests/calibration/zoo.py:{_factory(n)}"], args.budget) for n in names]
    if args.only:
        keep = set(args.only.split(","))
        runs = [r for r in runs if r[0] in keep or r[0].removeprefix("demo ") in keep]
    print("| run | budget s | wall s | wall / budget | within 1.1 x budget + 5 |"
          + (" wall s under load | within |" if args.load else ""))
    print("|---|---|---|---|---|" + ("---|---|" if args.load else ""))
    ratios = []
    for name, target, budget in runs:
        wall, _ = run(target, budget)
        ratios.append(wall / budget)
        row = f"| {name} | {budget:.0f} | {wall:.1f} | {wall / budget:.2f} | {'yes' if wall <= 1.1 * budget + 5 else 'NO'} |"
        if args.load:
            with busy():
                loaded, _ = run(target, budget)
            row += f" {loaded:.1f} | {'yes' if loaded <= 1.1 * budget + 5 else 'NO'} |"
        print(row, flush=True)
    print(f"\nmedian wall / budget {statistics.median(ratios):.2f}, largest {max(ratios):.2f}")


def _factory(name: str) -> str:
    """The zoo function building task `name`, as a CLI target (zoo.task_named takes the name)."""
    return f"task_{name.replace('-', '_')}"


if __name__ == "__main__":
    main()
