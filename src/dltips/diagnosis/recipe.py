"""The doctor: run the checks in the order an expert would, within a time budget.

Order (the tips' order): what reaches the model -> loss at init -> overfit one
example, then a few -> LR range test -> a short training run -> the three
error gaps and the worst predictions on its model -> capacity on a training
subset -> validation against test. When the model cannot overfit a few
examples, the expensive steps are skipped with the reason: their verdicts
would only restate that failure.

The doctor diagnoses the user's setup, not ours: every training run uses a
fresh copy of the Task's model, its loss, its optimizer at its learning rate
(constant) and its augmentation. dltips's own suggestions (the range test's
LR, one-cycle) are reported beside, never substituted.

Time. The budget decides how much is examined, never what a check concludes.
Each check has a fixed plan set by the task (the ladder's rungs and steps, the
range test's 100 steps, the short run's `short_run_steps`, capacity's
`CAPACITY_STEPS`, the items the evaluations score). Each gets a deadline: its
share of the time left (`SHARES`, time unused flowing on), with `RESERVE` of
the budget kept for the last check and the report. A check whose plan does
not fit says `skip` with the time it needs; none judges part of its plan.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

import torch

from dltips.catalog import TIPS
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device, threads_at_most, to_device, usable_cpus
from dltips.core.params import ParamError, int_at_least, positive
from dltips.core.progress import live_progress
from dltips.core.state import rng_kept, training_copy
from dltips.diagnosis.causes import (CHECK_CAUSES, FLAGS, FUNDAMENTAL, attach_causes, labels_unrelated,
                                    one_voice_on_lr, rank_causes, regularisation_underfits)
from dltips.diagnosis.report import Report
from dltips.findings import Finding, could_not_run, skipped_for_time
from dltips.monitor.loop import LOOP_CAUSES
from dltips.task import Task
from dltips.training.lr import make_optimizer
from dltips.training.schedule import EveryKthStep

# The plan of each training check is fixed by the task, never by the clock: the budget only decides whether a
# check runs to the end of its plan, and a check that cannot says `skip` with the time it needs.
LADDER_MAX_STEPS = 300  # overfit-tiny's steps per rung before its convergence rule may extend it
SHORT_RUN_EPOCHS = 20  # the short run trains this many epochs, within these bounds on the steps
SHORT_RUN_MIN_STEPS, SHORT_RUN_MAX_STEPS = 400, 1000
CAPACITY_STEPS = 2000  # overfit-then-regularize's most steps; it stops once the training error is near zero
# Shares of the time left for training (after the cheap checks, less the reserve); what a check leaves unused
# goes to the checks after it. The evaluations after the short run use what remains before the reserve.
SHARES = {"overfit-tiny": 0.25, "default-lr": 0.10, "short-run": 0.40, "overfit-then-regularize": 0.25}
RESERVE = 0.08  # of the budget, kept for the checks that come last (val-test-match) and the report
PLAN_MARGIN = 1.25  # a plan starts only when its estimated time, times this, fits in its share
SHORT_RUN_TIPS = ("error-gaps", "worst-predictions")
# Verdicts of the monitors watching the short run (dltips.watch and the metric tracker).
MONITOR_TIPS = ("activation-gradient-stats", "update-ratio", "metric-divergence", "logloss-downstream")
MONITOR_SAMPLES = 40  # sampled steps of the watch over the short run
THREADS_WIN = 1.5  # several threads are kept only when a step is this many times faster than with one


@dataclass
class Doctor:
    """One doctor run; `run()` returns the Report. Use `dltips.doctor(...)` for the one-call form."""

    task: Task
    budget_s: float = 60.0
    seed: int = 0
    device: str | torch.device = "auto"
    only: set[str] | None = None
    skip: set[str] = field(default_factory=set)
    progress: bool = True
    debug: bool = False
    stream: TextIO | None = None
    findings: list[Finding] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    short_run_needs: float | None = None  # seconds the short run still needed when it did not fit
    causes: list[Finding] = field(default_factory=list)  # the cause probes' warn/fail findings
    probed: bool = False
    _live: Any = field(default=None, init=False, repr=False)  # the live progress line on a terminal, while running

    def __post_init__(self) -> None:
        for name, tips in (("only", self.only or set()), ("skip", self.skip)):
            unknown = sorted(set(tips) - set(TIPS))
            if unknown:
                raise ParamError(f"{name}: unknown tip ids {unknown}; valid ids: {', '.join(TIPS)}")
        self.budget_s = positive("budget_s", self.budget_s)
        self.seed = int_at_least("seed", self.seed, 0)
        self.device = resolve_device(self.device)
        self._start = time.perf_counter()
        self.deadline = Deadline.after(self.budget_s)

    def wanted(self, tip: str) -> bool:
        return (self.only is None or tip in self.only) and tip not in self.skip

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def run(self) -> Report:
        """Run the checks in order; the global random generators are seeded for the run and restored after it.

        The checks work on a copy of the model. When `copy.deepcopy` cannot make one that is
        independent (a module reached through a closure stays shared, see `core.state.shared_with`),
        they train the user's model itself and an exact snapshot puts it back afterwards. torch's thread
        count is lowered to the CPUs the process may use (a container's quota) and restored after.
        """
        stream = self.stream if self.stream is not None else sys.stderr
        self._live = live_progress(stream, "doctor") if self.progress else None
        try:
            with rng_kept(self.seed), threads_at_most(usable_cpus()), training_copy(self.task.model) as model:
                if model is self.task.model:
                    self.say("the model shares modules with its deep copy (a closure?): training it in place, "
                             "restored afterwards")
                return self._run(model)
        finally:
            if self._live is not None:
                self._live.stop()
                self._live = None

    def _run(self, model: torch.nn.Module) -> Report:
        from dltips.data.inputs import check_inputs
        from dltips.data.integrity import check_stable_pairing
        from dltips.data.invariance import describe_invariances
        from dltips.data.leakage import check_target_leak
        from dltips.data.resolution import check_image_resolution
        from dltips.nlp.causal import check_causal_leak
        from dltips.nlp.tying import check_weight_tying
        from dltips.tabular.categoricals import check_categoricals, tabular_data
        from dltips.tabular.embeddings import check_embedding_sizes
        from dltips.tabular.model import check_tabular_mixup
        from dltips.training.init import check_initial_loss
        from dltips.training.reduction import check_loss_reduction

        task = dataclasses.replace(self.task, model=model.to(self.device))
        common = self.common()
        self.step("verify-transforms", lambda: check_inputs(task, **common))
        self.step("verify-transforms", lambda: check_stable_pairing(task, **common), label="stable-pairing")
        self.step("image-resolution", lambda: check_image_resolution(task, **common))
        if tabular_data(task) is not None:
            self.step("encode-categoricals", lambda: check_categoricals(task, **common))
            self.step("categorical-embedding-size", lambda: check_embedding_sizes(task, **common))
            self.step("mixup", lambda: check_tabular_mixup(task, **common))
        if task.kind == "language-model":
            self.step("weight-tying", lambda: check_weight_tying(task, **common))
            self.step("error-gaps", lambda: check_causal_leak(task, **common), label="causal-leak")
        if task.augment is not None:
            self.step("augmentation-invariances", lambda: describe_invariances(task.augment))
        self.step("error-gaps", lambda: check_target_leak(task, **common), label="target-leak")
        self.step("initialization", lambda: check_initial_loss(task, **common))
        self.step("batch-size-lr-scaling", lambda: check_loss_reduction(task, **common), label="loss-reduction")
        try:
            step_s = self.choose_threads(task)
        except Exception as e:  # the user's training step raises: every training check would too
            if self.debug:
                raise
            for tip in ("overfit-tiny", "default-lr", "overfit-then-regularize", *short_run_tips(task), *MONITOR_TIPS):
                if self.wanted(tip):
                    self.findings.append(could_not_run(tip, e, "A training step"))
            return self.finish(task)
        ladder_ok = self.overfit_ladder(task, LADDER_MAX_STEPS, self.share("overfit-tiny"))
        if self.flagged():
            self.probe_causes(task)
        if not ladder_ok:
            reason = ("Not run: the model cannot overfit a few training examples (see overfit-tiny), so longer "
                      "training would only restate that failure. Fix that first.")
            reported = {id(f) for f in self.findings}
            found = {c.tip: c for c in reversed(rank_causes(self.causes)) if id(c) not in reported}  # top cause a tip
            for tip in ("default-lr", "overfit-then-regularize", *short_run_tips(task), *MONITOR_TIPS):
                if self.wanted(tip):
                    self.findings.append(found.pop(tip, None) or Finding(tip, "skip", "Skipped: overfit-tiny failed",
                                                                         reason))
            self.findings.extend(f for f in found.values() if self.wanted(f.tip))
            return self.finish(task)
        self.lr_check(task, self.share("default-lr"))
        with training_copy(task.model) as run_model:  # kept trained until the checks that read it are done
            trained, valid_error = self.short_run(task, run_model, short_run_steps(task), step_s,
                                                  self.share("short-run"))
            if trained is not None:
                self.on_trained(task, trained)
        self.capacity(task, CAPACITY_STEPS, self.share("overfit-then-regularize"), valid_error)
        self.regularisation_cause(task)
        if self.flagged():
            self.probe_causes(task)
            gaps = next((f for f in self.findings if _is_gaps(f) and f.status in FLAGS), None)
            unrelated = labels_unrelated(gaps, ladder_passed=True)
            if unrelated is not None:
                self.causes.append(unrelated)
            present = {f.tip for f in self.findings}
            self.findings.extend(c for c in rank_causes(self.causes)
                                 if c.tip not in present and c is not unrelated and self.wanted(c.tip))
        return self.finish(task)

    def regularisation_cause(self, task: Task) -> None:
        """Replace the capacity finding by its cause when the Task's regularisation is what stops the fit."""
        gaps = next((f for f in self.findings if _is_gaps(f)), None)
        capacity = next((i for i, f in enumerate(self.findings) if f.tip == "overfit-then-regularize"
                         and f.status in ("pass", "info")), None)
        if capacity is None or labels_unrelated(gaps, ladder_passed=True) is not None:
            return  # labels at chance: the short run cannot fit them in its steps, whatever the regularisation
        if any(f.status == "fail" and f.evidence.get("cause") in LOOP_CAUSES for f in self.findings):
            return  # a bug of the Task's own step trains both runs: the gap between them is not the regularisation's
        cause = regularisation_underfits(task, gaps, self.findings[capacity])
        if cause is not None:
            self.findings[capacity] = cause
            self.causes.append(cause)

    def flagged(self) -> bool:
        """Whether a fundamental check (causes.FUNDAMENTAL) has warned or failed."""
        return any(f.tip in FUNDAMENTAL and f.status in FLAGS for f in self.findings)

    def probe_causes(self, task: Task) -> None:
        """Run the cause probes once (layers and gradients, the output layer) on the untrained model; a probe that
        raises is left out, since it only explains a finding that is already there."""
        if self.probed:
            return
        self.probed = True
        from dltips.monitor.probe import layer_findings, probe_layers
        from dltips.training.output import check_output_layer
        from dltips.training.reduction import sum_reduction_cause

        self.say("cause probes ...")
        start = time.perf_counter()
        for probe in (lambda: layer_findings(probe_layers(task, seed=self.seed)),
                      lambda: check_output_layer(task, seed=self.seed),
                      lambda: [f for f in [sum_reduction_cause(task)] if f is not None]):
            try:
                found = [f for f in probe() if f.status in FLAGS]
                for f in found:
                    f.check = "cause-probes"
                self.causes.extend(found)
                if any(f.evidence.get("cause") == "sum-reduction" for f in found):  # the cause replaces the info
                    self.findings = [f for f in self.findings if not (f.tip == "batch-size-lr-scaling"
                                                                      and f.evidence.get("reduction") == "sum")]
            except Exception:
                if self.debug:
                    raise
        self.timings["cause-probes"] = time.perf_counter() - start

    def choose_threads(self, task: Task) -> float:
        """Time a training step with torch's threads and with one; keep one thread unless the others win by
        THREADS_WIN (restored when the run ends). Returns the chosen step time in seconds.

        A small model gains nothing from several threads, and on a busy machine every parallel op waits for
        its slowest thread to be scheduled: 40 steps of a 13-input MLP took 0.09 s idle and 5.9 s beside two
        busy processes on 2 cores with 2 threads, against 0.15 s with one.
        """
        threads = torch.get_num_threads()
        step_s = _seconds_per_step(task, self.device)
        if self.device.type != "cpu" or threads == 1:
            return step_s
        torch.set_num_threads(1)
        one_s = _seconds_per_step(task, self.device)
        if one_s <= THREADS_WIN * step_s:
            self.say(f"one thread: {one_s * 1e3:.1f} ms a step against {step_s * 1e3:.1f} ms with {threads}")
            return one_s
        torch.set_num_threads(threads)
        return step_s

    def on_trained(self, task: Task, trained: torch.nn.Module) -> None:
        """The checks judged on the short run's trained model, within the time left before the reserve."""
        from dltips.data.worst import check_worst_predictions
        from dltips.monitor.gaps import check_error_gaps

        on_trained = {**self.common(), "model": trained, "deadline": self.before_reserve()}
        self.step("error-gaps", lambda: check_error_gaps(task, **on_trained))
        self.step("worst-predictions", lambda: check_worst_predictions(task, **on_trained))
        if task.kind == "language-model":
            from dltips.nlp.unseen import check_unseen_tokens

            self.step("unseen-tokens", lambda: check_unseen_tokens(task, **on_trained))
        if task.augment is not None:
            from dltips.data.invariance import check_label_preserving

            self.step("label-preserving-augmentation", lambda: check_label_preserving(task, **on_trained))

    def share(self, name: str) -> Deadline:
        """The deadline of a training check: its share of the time left before the reserve, among the
        checks still to come (so time a check leaves unused goes to the ones after it)."""
        names = list(SHARES)
        to_come = sum(SHARES[n] for n in names[names.index(name):])
        return self.deadline.within(SHARES[name] / to_come * max(self.before_reserve().left(), 0.0))

    def before_reserve(self) -> Deadline:
        """The doctor's deadline less the reserve kept for the last checks and the report."""
        return Deadline(self.deadline.at - RESERVE * self.budget_s)

    def finish(self, task: Task) -> Report:
        """The checks that need no trained model and come last, then the report."""
        from dltips.data.integrity import check_split_overlap
        from dltips.data.shift import check_val_test_match

        self.step("val-test-match", lambda: check_split_overlap(task, **self.common()), label="split-overlap")
        self.step("val-test-match", lambda: check_val_test_match(task, **self.common()))
        attach_causes(self.findings, self.causes)
        one_voice_on_lr(self.findings)
        return self.report()

    def common(self) -> dict[str, Any]:
        """The arguments every check gets from the doctor: its device, its seed and its deadline."""
        return {"device": self.device, "seed": self.seed, "deadline": self.deadline}

    def step(self, tip: str, check: Callable[[], list[Finding]], label: str | None = None) -> list[Finding]:
        """Run one check (if wanted), time it, and keep its findings; a crash becomes a `skip` finding."""
        if not self.wanted(tip):
            return []
        label = label or tip
        self.say(f"{label} ...")
        start = time.perf_counter()
        try:
            found = check()
        except Exception as e:  # a broken user model must not end the whole diagnosis
            if self.debug:
                raise
            found = [could_not_run(tip, e)]
        self.timings[label] = time.perf_counter() - start
        for f in found:
            f.check = f.check or label
        self.findings.extend(found)
        self.causes.extend(f for f in found if f.status in FLAGS and f.evidence.get("cause") in CHECK_CAUSES)
        return found

    def overfit_ladder(self, task: Task, max_steps: int, deadline: Deadline) -> bool:
        from dltips.training.overfit import check_overfit_tiny

        found = self.step("overfit-tiny", lambda: check_overfit_tiny(
            task, **{**self.common(), "deadline": deadline}, max_steps=max_steps))
        failed = [f for f in found if f.status == "fail"]
        for f in failed:  # a bug of the Task's own step, named by the watch on the failing rung, is a cause
            monitors = (Finding.from_dict(m) for m in f.evidence.get("monitors", []))
            self.causes.extend(m for m in monitors if m.evidence.get("cause") in LOOP_CAUSES)
        return not failed

    def lr_check(self, task: Task, deadline: Deadline) -> None:
        from dltips.training.lr_check import check_lr

        self.step("default-lr", lambda: check_lr(task, **{**self.common(), "deadline": deadline}))

    def short_run(self, task: Task, model: torch.nn.Module, max_steps: int, step_s: float,
                  deadline: Deadline) -> tuple[torch.nn.Module | None, float | None]:
        """Train `model` (a fresh copy) at the Task's own settings for `max_steps` steps, watched by the monitors.

        The trained model feeds the gaps and worst predictions; the monitors'
        findings (also when training fails: they say where NaNs appeared) join the report.
        The plan is fixed (`short_run_steps`): it starts only when its time, estimated from one
        step's, fits before `deadline`, and a run the deadline cuts short gives no verdicts, only
        `skip`s with the time it needed: the monitors' and the gaps' verdicts would otherwise
        depend on how fast the machine was.
        """
        tips = [t for t in (*MONITOR_TIPS, *short_run_tips(task)) if self.wanted(t)]  # the order of a full run
        if not tips and not self.wanted("overfit-then-regularize"):
            return None, None
        from dltips.monitor.metrics import MetricTracker
        from dltips.monitor.watch import Watch
        from dltips.predict import error_rate, evenly_spaced, predict
        from dltips.training.callbacks import TimeLimit
        from dltips.training.fit import Recipe, fit

        steps_per_epoch = max(len(task.train) // task.batch_size, 1)
        epochs = math.ceil(max_steps / steps_per_epoch)
        estimate = PLAN_MARGIN * (max_steps * step_s + epochs * _seconds_to_evaluate(task, step_s))
        if estimate > deadline.left():
            self.short_run_needs = estimate - max(deadline.left(), 0.0)
            for tip in tips:
                self.findings.append(skipped_for_time(
                    tip, estimate - max(deadline.left(), 0.0), f"the short training run ({max_steps} steps, about "
                    f"{estimate:.0f} s) that it is judged on did not fit", {"planned_steps": max_steps}))
                self.findings[-1].check = "short-run"
            return None, None
        self.say(f"short training run ({max_steps} steps, monitored) ...")
        start = time.perf_counter()
        run_task = dataclasses.replace(task, model=model, scheduler=_short_run_scheduler(task, epochs))
        monitor, tracker = Watch(every=max(1, max_steps // MONITOR_SAMPLES)), MetricTracker()
        limit = TimeLimit(max(deadline.left(), 0.1))
        try:
            fit(run_task, epochs=epochs, recipe=Recipe(one_cycle=False), max_steps=max_steps, device=self.device,
                seed=self.seed, progress=False, callbacks=[monitor, tracker, limit])
        except Exception as e:
            if self.debug:
                raise
            for tip in short_run_tips(task):
                if self.wanted(tip):
                    self.findings.append(could_not_run(tip, e, "The short training run"))
            self.monitor_findings(monitor, tracker)
            return None, None
        finally:
            self.timings["short-run"] = time.perf_counter() - start
        if limit.stopped_at is not None:
            seconds = time.perf_counter() - start
            needed = seconds * (max_steps - limit.stopped_at) / max(limit.stopped_at, 1)
            self.say(f"short training run stopped by the clock at step {limit.stopped_at} of {max_steps}")
            self.short_run_needs = needed
            for tip in tips:
                self.findings.append(skipped_for_time(
                    tip, needed, f"the short training run it is judged on stopped at step {limit.stopped_at} of "
                    f"{max_steps}", {"planned_steps": max_steps, "steps_done": limit.stopped_at}))
                self.findings[-1].check = "short-run"
            return None, None
        self.monitor_findings(monitor, tracker)
        valid = predict(run_task.model, task, task.valid, indices=evenly_spaced(len(task.valid), 2000),
                        device=self.device)
        return run_task.model, error_rate(task.kind, valid.outputs, valid.targets)

    def monitor_findings(self, monitor: Any, tracker: Any) -> None:
        """Keep the wanted verdicts of the short run's monitors; one that cannot be given becomes a `skip`."""
        for tip, source in (("activation-gradient-stats", monitor.findings), ("metric-divergence", tracker.findings)):
            try:
                found = source()
            except Exception as e:
                if self.debug:
                    raise
                found = [could_not_run(tip, e, "The monitor")]
            for f in found:
                f.check = "short-run"
            self.findings.extend(f for f in found if self.wanted(f.tip))

    def capacity(self, task: Task, max_steps: int, deadline: Deadline, valid_error: float | None) -> None:
        """overfit-then-regularize, given the short run's validation error; without it when the short run did
        not fit, the check skips too: its verdict (fits, or fits and overfits) reads that error."""
        from dltips.training.capacity import check_capacity

        if self.short_run_needs is not None:
            if self.wanted("overfit-then-regularize"):
                self.findings.append(skipped_for_time(
                    "overfit-then-regularize", self.short_run_needs, "its verdict reads the validation error of "
                    "the short training run, which did not fit"))
            return

        self.step("overfit-then-regularize", lambda: check_capacity(
            task, **{**self.common(), "deadline": deadline}, max_steps=max_steps, valid_error=valid_error))

    def say(self, text: str) -> None:
        """Progress: the live line on a terminal (the current check, time elapsed and left), else a plain line."""
        if not self.progress:
            return
        left = max(self.budget_s - self.elapsed, 0.0)
        if self._live is not None:
            if not self._live.tasks:
                self._live.add_task(text, total=None, deadline=time.monotonic() + left)
            self._live.update(self._live.tasks[0].id, description=text)
            return
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(f"[dltips {self.elapsed:5.1f}s, {left:4.0f}s left] {text}\n")
        stream.flush()

    def report(self) -> Report:
        return Report(task=self.task.summary(), findings=self.findings, duration_s=self.elapsed,
                      timings=dict(self.timings), budget_s=self.budget_s)


def short_run_tips(task: Task) -> tuple[str, ...]:
    """The tips judged on the short run's trained model (unseen-tokens only for a language model)."""
    return (*SHORT_RUN_TIPS, "unseen-tokens") if task.kind == "language-model" else SHORT_RUN_TIPS


def doctor(
    task: Task,
    budget_s: float = 60.0,
    seed: int = 0,
    *,
    device: str | torch.device = "auto",
    only: set[str] | list[str] | None = None,
    skip: set[str] | list[str] | None = None,
    progress: bool = True,
    debug: bool = False,
) -> Report:
    """Diagnose `task` within about `budget_s` seconds and return the Report.

    The user's model is never modified. `only` / `skip` take tip ids. Seeded
    runs give the same verdicts.
    """
    return Doctor(task, budget_s, seed, device, set(only) if only is not None else None, set(skip or ()),
                  progress, debug).run()


def _is_gaps(finding: Finding) -> bool:
    """The error-gaps check's own finding (the target-leak check reports under the same tip)."""
    return finding.tip == "error-gaps" and "errors" in finding.evidence


def _short_run_scheduler(task: Task, epochs: int) -> Callable | None:
    """The Task's scheduler for a short run of `epochs` epochs: a per-epoch one steps every k-th epoch, so that
    it takes at most SHORT_RUN_EPOCHS steps (a small dataset's run has more epochs than a user's own)."""
    every = math.ceil(epochs / SHORT_RUN_EPOCHS)
    build = task.scheduler
    if build is None or task.scheduler_interval != "epoch" or every <= 1:
        return build
    return lambda optimizer: EveryKthStep(build(optimizer), every)


def short_run_steps(task: Task) -> int:
    """The short run's plan: SHORT_RUN_EPOCHS epochs of the Task's batches, within the step bounds."""
    steps_per_epoch = max(len(task.train) // task.batch_size, 1)
    return int(min(SHORT_RUN_MAX_STEPS, max(SHORT_RUN_MIN_STEPS, SHORT_RUN_EPOCHS * steps_per_epoch)))


def _seconds_to_evaluate(task: Task, step_s: float) -> float:
    """A rough time of one pass over the validation set: a forward pass costs about a third of a training step."""
    return step_s / 3 * math.ceil(len(task.valid) / task.batch_size)


def _seconds_per_step(task: Task, device: torch.device, repeats: int = 3) -> float:
    """Wall time of one training step at the Task's batch size, measured on a throwaway copy."""
    with training_copy(task.model) as model:
        model.to(device).train()
        optimizer = make_optimizer(task, model)
        x, y = task.first_batch(task.train, task.batch_size)
        batch = to_device(x, device), y.to(device)
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            task.train_step(model, batch, optimizer)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return max(min(times[1:]), 1e-4)  # the first step pays one-time costs
