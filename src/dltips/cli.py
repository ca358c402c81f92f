"""The `dltips` command line.

Under torchrun (`torchrun --nproc_per_node=N -m dltips demo NAME`) the demo
trains one run spread over the N processes: the command joins torchrun's
process group for its whole length, `fit` shards the data and all-reduces the
metrics, and only rank 0 prints and writes files. The doctor and the scaling
study (`demo charlm --sizes`) run in one process by design; under torchrun they
refuse with a one-line error (printed by rank 0) and exit status 2.

Exit status of `dltips doctor` (usable as a CI gate):

  0  healthy: no check failed (with --fail-on warn: none warned either)
  1  a check failed (with --fail-on warn: or warned)
  2  bad usage, or the target or its Task could not be loaded or validated
  3  incomplete: a check could not run because your code (model, loss, optimizer, data) raised

A failure takes precedence over incompleteness. A check cut short by the time
budget is not incomplete: the budget decides how much is examined.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Iterator, Sequence, TextIO

from dltips.catalog import THEME_TITLES, THEMES, TIPS, format_tip, tips_by_theme


DOCTOR_DESCRIPTION = """Diagnose a Task: a verdict per tip, with the numbers and the fix, what to fix first on top.

A Task is your model and its data, (x, y) items split in train and valid (and test), with your loss
and optimizer if not the defaults:  dltips.Task(model, train_set, valid_set, loss=F.nll_loss, ...)
TARGET names a function without arguments that returns one; your model is never modified.

The doctor runs in one process (its checks train small copies of the model side by side); under
torchrun it refuses with exit status 2. Read more: docs/doctor.md (the Task, the report, the exit
status) and `dltips tips ID` for one heuristic."""

DOCTOR_EPILOG = """exit status:
  0  healthy: no check failed (with --fail-on warn: none warned either)
  1  a check failed (with --fail-on warn: or warned)
  2  bad usage, or the target or its Task could not be loaded or validated
  3  incomplete: a check could not run because your code (model, loss, optimizer, data) raised
A failure takes precedence over incompleteness; a check cut short by --budget is not incomplete."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dltips", description="Deep-learning training heuristics, as checks and parts.")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands")
    tips = commands.add_parser("tips", help="list the tips, or show one in full (source, citation, code, defaults, example)")
    tips.add_argument("id", nargs="?", help="a tip id, e.g. one-cycle")
    tips.add_argument("--theme", choices=THEMES, help="only the tips of this theme")
    tips.set_defaults(command="tips", run=_run_tips)

    doctor = commands.add_parser("doctor", help="diagnose a Task: a verdict per tip, with the numbers and the fix",
                                 description=DOCTOR_DESCRIPTION, epilog=DOCTOR_EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    doctor.add_argument("target", nargs="?", help="path/to/file.py:function or package.module:function: a function "
                                                  "without arguments that returns a dltips.Task")
    doctor.add_argument("--demo", choices=sorted(DEMOS), help="diagnose a bundled demo task instead")
    doctor.add_argument("--json", metavar="PATH", help="write the report as JSON")
    doctor.add_argument("--html", metavar="PATH", help="write the report as one self-contained HTML file")
    doctor.add_argument("--budget", type=float, default=60.0, metavar="SECONDS", help="time budget (default 60)")
    doctor.add_argument("--seed", type=int, default=0,
                        help="seed of every random draw the checks make (default 0): the same seed gives the same verdicts")
    doctor.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                        help="where the checks train their copies of the model (default auto: cuda when available)")
    doctor.add_argument("--only", type=_tip_list, metavar="TIP,...", help="run only these tips")
    doctor.add_argument("--skip", type=_tip_list, default=[], metavar="TIP,...", help="skip these tips")
    doctor.add_argument("--fail-on", choices=("fail", "warn"), default="fail",
                        help="the lowest status that makes the exit status 1 (default fail)")
    doctor.add_argument("--debug", action="store_true", help="show tracebacks")
    doctor.set_defaults(command="doctor", run=_run_doctor)

    demo = commands.add_parser("demo", help="train a demo task with the recommended recipe",
                               description="Train a demo task with the recommended recipe, watched by the monitors,"
                                           " and print a summary line and the monitors' findings. Works under"
                                           " torchrun (torchrun --nproc_per_node=N -m dltips demo NAME): one run over"
                                           " N processes, rank 0 alone printing and writing.")
    demo.add_argument("name", choices=sorted(DEMOS))
    demo.add_argument("--epochs", type=_positive_int, default=8, help="training epochs (default 8)")
    demo.add_argument("--sizes", type=_name_list, metavar="SIZE,...",
                      help="charlm only: train these model sizes (e.g. tiny,small,medium) for --steps steps each and "
                           "report the validation loss and the probes per size (emergent-scaling, logloss-downstream); "
                           "one process: not under torchrun")
    demo.add_argument("--steps", type=int, default=300, help="training steps per size with --sizes (default 300)")
    demo.add_argument("--json", metavar="PATH", help="write the report as JSON")
    demo.add_argument("--html", metavar="PATH", help="write the report, with the plots, as HTML")
    demo.set_defaults(command="demo", run=_run_demo)

    diff = commands.add_parser("diff", help="compare two doctor reports (--json files): which verdicts changed",
                               description="Compare two reports written by `dltips doctor --json`: the verdicts that"
                                           " got worse, better, appeared or went, with their key numbers side by side."
                                           " Exit status 0, or 1 with --fail-on-worse when a verdict got worse, 2 when"
                                           " a file cannot be read as a dltips report.")
    diff.add_argument("before", help="the earlier report's JSON")
    diff.add_argument("after", help="the later report's JSON")
    diff.add_argument("--json", metavar="PATH", help="write the comparison as JSON")
    diff.add_argument("--fail-on-worse", action="store_true", help="exit status 1 when a verdict got worse")
    diff.set_defaults(command="diff", run=_run_diff)

    budget = commands.add_parser("budget", help="complete a training budget (C = 6·N·D) and show trade-offs at the same compute",
                                 description="Give two of --params, --tokens and --flops to complete C = 6·N·D, or one"
                                             " alone for the compute-optimal budget through it.")
    budget.add_argument("--params", metavar="N", help="parameters, e.g. 124M")
    budget.add_argument("--tokens", metavar="D", help="training tokens, e.g. 10B")
    budget.add_argument("--flops", metavar="C", help="training FLOPs, e.g. 1e21")
    budget.add_argument("--law", choices=("chinchilla", "besiroglu"), default="chinchilla",
                        help="chinchilla: 20 tokens per parameter, Hoffmann et al. 2022 loss fit;"
                             " besiroglu: the Besiroglu et al. 2024 refit (default chinchilla)")
    budget.set_defaults(command="budget", run=_run_budget)
    return parser


DEMOS = {"digits": "dltips.demos.digits:digits_task", "tabular": "dltips.demos.tabular:tabular_task",
         "charlm": "dltips.demos.charlm:charlm_task"}


class TargetError(Exception):
    """The doctor's target cannot be loaded or does not give a valid Task."""


def _name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one name, e.g. tiny,small,medium")
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _tip_list(text: str) -> list[str]:
    ids = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in ids if t not in TIPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown tip ids {unknown}; see `dltips tips`")
    return ids


def load_target(spec: str):
    """Call the function named by `path/to/file.py:function` or `package.module:function`; it must return a Task."""
    from dltips.task import Task, TaskError

    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise TargetError(f"target {spec!r} must look like path/to/file.py:function or package.module:function")
    try:
        if where.endswith(".py") or "/" in where or "\\" in where:
            path = Path(where).resolve()
            if not path.is_file():
                raise TargetError(f"target file {where} does not exist")
            sys.path.insert(0, str(path.parent))  # as running the script would
            spec_obj = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec_obj)
            spec_obj.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        function = getattr(module, name, None)
        if not callable(function):
            raise TargetError(f"{where} has no function {name!r}")
        task = function()
    except (TargetError, TaskError):
        raise
    except Exception as e:
        raise TargetError(f"loading {spec} raised {type(e).__name__}: {e}") from e
    if not isinstance(task, Task):
        raise TargetError(f"{spec} returned {type(task).__name__}; it must return a dltips.Task")
    return task


def _fail(message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print("dltips: " + message, file=sys.stderr)
    return 2


def _task_from_args(args: argparse.Namespace):
    if (args.target is None) == (args.demo is None):
        raise TargetError("give either a TARGET (file.py:function or module:function) or --demo NAME")
    return load_target(args.target if args.target is not None else DEMOS[args.demo])


def _torchrun_world_size() -> int:
    """How many processes torchrun started (its WORLD_SIZE), 1 outside torchrun: the test `fit` uses to join a group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _refuse_under_torchrun(what: str, command: str) -> int | None:
    """Exit status 2 when started by torchrun with several processes (rank 0 says why), else None.

    `what` runs in one process by design: its ranks would each train their own
    copies and race to write the same files, or wait on collectives the others never join.
    """
    if _torchrun_world_size() <= 1:
        return None
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"dltips: {what} runs in one process; run `{command}` without torchrun", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _process_group() -> Iterator[tuple[int, int]]:
    """(rank, world size): torchrun's process group, joined for the whole command and left at its end.

    Outside torchrun this is (0, 1) and nothing is joined. Holding the group here,
    not inside `fit`, keeps it open for the report built after training.
    """
    from dltips.training.fit import init_distributed, leave_distributed

    rank, world_size, owns_group = init_distributed()
    try:
        yield rank, world_size
    finally:
        if owns_group:
            leave_distributed()


def _run_doctor(args: argparse.Namespace) -> int:
    """Diagnose the target and print the report; the exit status is `Report.exit_status(--fail-on)` (see DOCTOR_EPILOG)."""
    from dltips.core.deadline import process_age_s
    from dltips.diagnosis.recipe import doctor
    from dltips.task import TaskError

    refused = _refuse_under_torchrun("the doctor", "dltips doctor ...")
    if refused is not None:
        return refused
    try:
        task = _task_from_args(args)
    except (TargetError, TaskError) as e:
        return _fail(str(e), args.debug)
    if not args.budget > 0:
        return _fail(f"--budget must be a positive number of seconds, got {args.budget}", args.debug)
    # the budget bounds the whole command: start-up, imports and building the Task come off it
    budget = max(args.budget - process_age_s(), 1.0)
    try:
        report = doctor(task, budget_s=budget, seed=args.seed, device=args.device, only=args.only,
                        skip=args.skip, debug=args.debug)
    except ValueError as e:
        return _fail(str(e), args.debug)
    # the report speaks of the command the user timed: the budget given and the time since start-up
    report.budget_s, report.duration_s = args.budget, process_age_s()
    report.print(fail_on=args.fail_on)
    if args.json:
        report.to_json(args.json)
    if args.html:
        report.to_html(args.html)
    return report.exit_status(args.fail_on)


def _run_demo(args: argparse.Namespace) -> int:
    """Train a demo with the recipe, watched; under torchrun one run over all ranks, rank 0 printing and writing.

    The JSON report adds a "training" section to the findings: epochs, optimizer
    steps (per rank: each step is one global batch of world_size x batch_size
    items), world_size, duration and the per-epoch history of `fit`.
    """
    from dltips.diagnosis.report import Report
    from dltips.findings import jsonable
    from dltips.monitor.metrics import MetricTracker
    from dltips.monitor.watch import Watch
    from dltips.training.fit import Recipe, fit

    if args.sizes is not None:
        return _run_scaling(args)
    with _process_group() as (rank, world_size):
        task = load_target(DEMOS[args.name])
        monitor = Watch(every=_watch_every(len(task.train), task.batch_size, args.epochs, world_size))
        tracker = MetricTracker()
        result = fit(task, epochs=args.epochs, recipe=Recipe(), callbacks=[monitor, tracker])
        findings = monitor.findings() + tracker.findings()
    if rank != 0:
        return 0
    last = result.history[-1]
    print(f"{args.name}: {result.steps} steps in {result.duration_s:.1f}s; "
          + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.startswith("valid")))
    training = f"{_plural(args.epochs, 'epoch')}, {_plural(result.steps, 'step')}, {_plural(world_size, 'process')}"
    summary = {**task.summary(), "training": training}
    report = Report(task=summary, findings=findings, duration_s=result.duration_s)
    report.print()
    if args.json:
        training = {"epochs": args.epochs, "steps": result.steps, "world_size": world_size,
                    "duration_s": round(result.duration_s, 3), "history": result.history}
        _write_json({**report.to_dict(), "training": jsonable(training)}, args.json)
    if args.html:
        report.to_html(args.html)
    return 0


def _plural(n: int, noun: str) -> str:
    """`n noun`, with the noun's plural (+s, or +es after s) unless n is 1."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def _write_json(data: dict, path: str) -> None:
    """Write `data` (plain JSON data, no NaN) atomically, as `Report.to_json` does."""
    import json

    from dltips.core.io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def _watch_every(n_train: int, batch_size: int, epochs: int, world_size: int) -> int:
    """The watch's sampling interval: about as many sampled steps as the doctor's short run (each rank sees 1/world_size)."""
    from dltips.diagnosis.recipe import MONITOR_SAMPLES

    steps = epochs * max(math.ceil(n_train / world_size) // batch_size, 1)
    return max(1, steps // MONITOR_SAMPLES)


def _run_scaling(args: argparse.Namespace) -> int:
    """`dltips demo charlm --sizes ...`: a scaling study of the demo's model sizes, as a report."""
    import time

    from dltips.demos.charlm import SIZES, charlm_data, charlm_task
    from dltips.diagnosis.report import Report
    from dltips.nlp.emergent import char_probes, check_emergent_scaling, scaling_study

    if args.name != "charlm":
        return _fail(f"--sizes is for the charlm demo only, not {args.name!r}", False)
    refused = _refuse_under_torchrun("the scaling study (--sizes)", "dltips demo charlm --sizes ...")
    if refused is not None:
        return refused
    unknown = [size for size in args.sizes if size not in SIZES]
    if unknown or args.steps < 1:
        return _fail(f"unknown sizes {unknown}; choose from {', '.join(SIZES)}" if unknown
                     else f"--steps must be at least 1, got {args.steps}", False)
    start = time.perf_counter()
    vocab = charlm_data()[0]
    points = scaling_study(charlm_task, args.sizes, args.steps, char_probes(vocab.chars), progress=True)
    summary = {"name": "charlm scaling", "kind": "language-model", "n_classes": len(vocab), "sizes": args.sizes,
               "steps": args.steps, "n_params": {p.size: p.params for p in points}}
    report = Report(task=summary, findings=check_emergent_scaling(points), duration_s=time.perf_counter() - start)
    report.print()
    if args.json:
        report.to_json(args.json)
    if args.html:
        report.to_html(args.html)
    return 0


def _run_diff(args: argparse.Namespace) -> int:
    """`dltips diff before.json after.json`: see dltips.diagnosis.diff."""
    from dltips.diagnosis.diff import diff_main

    return diff_main(args.before, args.after, json_path=args.json, fail_on_worse=args.fail_on_worse)


def _run_budget(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from dltips.nlp.scaling import compute_budget, format_count

    out = out if out is not None else sys.stdout
    try:
        budget = compute_budget(params=args.params, tokens=args.tokens, flops=args.flops, law=args.law)
    except ValueError as e:
        return _fail(str(e), debug=False)
    optimum = compute_budget(flops=budget.flops, law=args.law)
    rows = budget.nearby()
    if not any(_same_size(row.params, optimum.params) for row in rows):
        rows = sorted(rows + [optimum], key=lambda row: row.params)
    out.write(f"{budget}\n\nSame compute ({budget.flops:.3g} FLOPs), other splits:\n")
    out.write(f"  {'params':>8}  {'tokens':>8}  {'tokens/param':>12}  {'predicted loss':>14}\n")
    for row in rows:
        notes = [note for note, match in (("yours", _same_size(row.params, budget.params)),
                                          ("compute-optimal", _same_size(row.params, optimum.params))) if match]
        out.write(f"  {format_count(row.params):>8}  {format_count(row.tokens):>8}  {row.tokens_per_param:>12.3g}"
                  f"  {row.predicted_loss:>14.3f}  {', '.join(notes)}".rstrip() + "\n")
    if args.law == "chinchilla":
        out.write("compute-optimal: 20 tokens per parameter (Hoffmann et al. 2022, Table 3); the loss fit of their"
                  " Approach 3 has its minimum at more tokens per parameter.\n")
    return 0


def _same_size(a: float, b: float) -> bool:
    return abs(a / b - 1) <= 0.01


def _run_tips(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    if args.id is not None:
        if args.id not in TIPS:
            print(f"dltips: unknown tip {args.id!r}. Valid ids:\n  " + "\n  ".join(TIPS), file=sys.stderr)
            return 2
        out.write(format_tip(TIPS[args.id]))
        return 0
    theme = None
    for tip in tips_by_theme(args.theme):
        if tip.theme != theme:
            theme = tip.theme
            out.write(f"\n{THEME_TITLES[theme]}\n")
        status = "" if tip.implemented_by else "  (to come)"
        out.write(f"  {tip.id:<30} {tip.kind:<12} {tip.title}{status}\n")
    out.write("\n`dltips tips ID` shows one in full: where it comes from, the code and its defaults, an example.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
