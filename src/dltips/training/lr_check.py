"""Is the Task's learning rate sane? An LR range test on a copy of the model answers.

`check_lr` runs `lr_find` (LR from 1e-7 to 10 over `num_steps` steps) on a deep
copy of the model with the Task's own optimizer, and compares the Task's LR
(the optimizer's first param group) with the LR where the smoothed loss
bottomed out ("minimum") and the range test's suggestion (a decade below it):

    Task LR > minimum                       warn: past the minimum, training is likely unstable
    Task LR < minimum / 100,000             warn: far below, training will be slow
    the smoothed loss fell by < 0.2%, or    info: the range test says nothing
      not below its values in the first
      tenth of the sweep
    otherwise                               pass

Calibration (100 steps, batch 64, 2 seeds each; standardised sklearn data,
spirals = two interleaved 2-D spirals of 1000 points; MLP 2x64 hidden units,
CNN 2 conv + 2 linear layers on digits images / 16). The range test's curve
depends on the optimizer's kind, not on its LR: the minimum lay at 0.055-0.74
for AdamW and 0.42-1.3 for SGD. Ratio = Task LR / minimum:

    task                 optimizer                ratio range        verdict
    digits/wine/bc/      AdamW at default_lr      0.014 - 0.18       pass
      spirals MLP,       SGD 0.1, momentum 0.9    0.077 - 0.24       pass
      digits CNN         AdamW 1.0                1.4 - 18           warn (past the minimum)
                         AdamW 10                 14 - 180           warn (past the minimum)
                         AdamW 1e-7               1.4e-7 - 1.8e-6    warn (far below)
    digits/wine/bc/      Adam 1e-3 and 3e-4       5.2e-5 - 3.4e-3    pass
      spirals MLP with   Adam 1e-7                1.7e-8 - 3.4e-7    warn (far below)
      BatchNorm

BatchNorm moves the minimum up to 4.8-5.7 (breast cancer), so Adam's usual 3e-4 lies
5.2e-5 of the way to it: the lower limit (1e-5) sits between that and the 1.8e-6 of an
LR of 1e-7, about 5x from each. Healthy ratios stay 4x below the upper limit (1); the
minimum itself moved by up to 10x between seeds on spirals, whose
loss falls by only 1-5% in 100 steps. Each test took 0.1-0.3 s for the MLPs
and under 1 s for the CNN on 2 CPU cores.

Where the range test's scale does not apply, the finding is `info` with the
numbers, never pass or warn: Adadelta's `lr` multiplies its adaptive step
(default 1.0) and Rprop's is only its first step size (it adapts each one from
the gradient's sign, so the sweep does not set its steps); LBFGS needs a closure
and scales a line-searched step, so the test is not run for it. `default_lr`
is quoted only for the optimizers it is calibrated for (SGD, Adam, AdamW).

The plan (`num_steps` steps) is fixed. Its first `PROBE_STEPS` steps are timed;
when the steps still to run would end after the deadline (or the deadline has
passed during the sweep), the check stops and returns a `skip` with the time it
still needs, never a verdict on part of the sweep.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device, to_device
from dltips.core.params import int_at_least
from dltips.core.state import grads_kept, training_copy
from dltips.findings import Finding, skipped_for_time
from dltips.predict import evenly_spaced
from dltips.task import Task
from dltips.training.lr import LRFinderResult, default_lr, lr_find, make_optimizer

TIP = "default-lr"
NUM_STEPS = 100  # steps of the range test
START_LR, END_LR = 1e-7, 10.0
MAX_RATIO = 1.0  # Task LR / minimum above this: past the minimum
MIN_RATIO = 1e-5  # Task LR / minimum below this (a ten-thousandth of the suggestion): far below
EARLY = 0.1  # a minimum within this fraction of the sweep means the loss never fell
MIN_FALL = 0.002  # ... as does a smoothed loss that fell by less than this fraction
PROBE_STEPS = 5  # steps timed before the whole sweep's time is projected against the deadline
# Optimizers whose `lr` is not a step size the sweep sets: what it is instead.
NOT_A_STEP_SIZE: dict[type, str] = {
    torch.optim.Adadelta: "a multiplier of its adaptive step",
    torch.optim.Rprop: ("only its first step size: Rprop adapts each step size from the gradient's sign, so the "
                        "sweep does not set its steps"),
    torch.optim.LBFGS: "the scale of a quasi-Newton step, and its step needs a closure",
}


@dataclass
class _Setup:
    """The Task's optimizer as the verdict names it: its LRs, its `default_lr` family and torch's default."""

    optimizer: str  # the class name, e.g. "AdamW"
    task_lr: float
    group_lrs: list[float]
    family: str | None  # the `default_lr` name, None when default_lr has no reference for it
    default: float | None  # default_lr for the model, None without a family
    torch_default: float | None  # the optimizer class's own default lr
    lr_is: str | None  # what its lr is when it is not a step size the sweep sets
    num_steps: int

    def evidence(self) -> dict:
        return {"task_lr": self.task_lr, "param_group_lrs": self.group_lrs, "optimizer": self.optimizer,
                "optimizer_family": self.family, "default_lr": self.default,
                "torch_default_lr": self.torch_default, "planned_steps": self.num_steps}


class _OutOfTime(Exception):
    """The sweep stopped for the deadline: `steps` ran in `seconds`, about `needs_s` more are needed."""

    def __init__(self, steps: int, seconds: float, needs_s: float) -> None:
        super().__init__(f"{steps} steps in {seconds:.1f} s; needs {needs_s:.1f} s more")
        self.steps, self.seconds, self.needs_s = steps, seconds, needs_s


def check_lr(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
    num_steps: int = NUM_STEPS,
) -> list[Finding]:
    """Run an LR range test on a copy of `model` (default the Task's); judge the Task's LR against it. One Finding.

    The test takes `num_steps` shuffled training batches (seeded by `seed`), drawn from up to
    `max_items` evenly spaced training items (default: all of them). Its plan is fixed: when
    `deadline` would pass before the last step (projected from the first `PROBE_STEPS` steps, or
    once it has passed), the Finding is a `skip` with the time still needed.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    num_steps = int_at_least("num_steps", num_steps, 2)
    original = model if model is not None else task.model
    device = resolve_device(device, original)
    with training_copy(original) as model, grads_kept(original):
        return _range_test(task, model.to(device), device, seed, max_items, deadline, num_steps)


def _range_test(task: Task, model: nn.Module, device: torch.device, seed: int, max_items: int | None,
                deadline: Deadline | None, num_steps: int) -> list[Finding]:
    """The range test on `model`, which it trains (a copy, or the model under a snapshot)."""
    train = task.train if max_items is None else Subset(task.train, evenly_spaced(len(task.train), max_items))
    optimizer = make_optimizer(task, model)
    setup = _setup(optimizer, model, num_steps)
    if isinstance(optimizer, torch.optim.LBFGS):
        return [_not_run(setup)]

    loader = task.loader(train, shuffle=True, drop_last=len(train) >= task.batch_size,
                         generator=torch.Generator().manual_seed(seed))
    batches = _TrainingBatches(loader, task, device, deadline, num_steps)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # dropout and augmentation draws leave no trace
        torch.manual_seed(seed)
        try:
            result = lr_find(model, optimizer, batches, task.loss_fn,
                             start_lr=START_LR, end_lr=END_LR, num_steps=num_steps, step=task.train_step)
        except _OutOfTime as cut:
            return [skipped_for_time(TIP, cut.needs_s, f"{cut.steps} of the {num_steps} range-test steps ran in "
                                                        f"{cut.seconds:.1f} s",
                                     {**setup.evidence(), "steps_done": cut.steps, "seconds": round(cut.seconds, 3)})]
        except ValueError as e:
            if "not finite" not in str(e):
                raise
            return [Finding(TIP, "fail", "LR range test could not run: the loss is not finite at LR 1e-7",
                            f"The LR range test failed at its first step: {e}.",
                            "Check the inputs for NaN values and the initial loss (`dltips tips initialization`).",
                            {**setup.evidence(), "error": str(e)})]
    return [_verdict(result, setup)]


def _setup(optimizer: torch.optim.Optimizer, model: nn.Module, num_steps: int) -> _Setup:
    group_lrs = [float(g["lr"]) for g in optimizer.param_groups]
    family = _family(optimizer)
    lr_is = next((what for kind, what in NOT_A_STEP_SIZE.items() if isinstance(optimizer, kind)), None)
    return _Setup(type(optimizer).__name__, group_lrs[0], group_lrs, family,
                  default_lr(model, family) if family else None, _torch_default_lr(optimizer), lr_is, num_steps)


def _family(optimizer: torch.optim.Optimizer) -> str | None:
    """The `default_lr` optimizer name matching `optimizer`, if any."""
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return "adamw"
    return None


def _torch_default_lr(optimizer: torch.optim.Optimizer) -> float | None:
    """The default of the `lr` argument of the optimizer's class, when it has a numeric one."""
    try:
        value = inspect.signature(type(optimizer).__init__).parameters["lr"].default
    except (KeyError, TypeError, ValueError):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class _TrainingBatches:
    """Training batches as the loop sees them: on the device, augmented when the Task augments (re-iterable).

    With a deadline it also keeps the sweep's time: batch k is asked for once k steps have run, so
    the time since the first batch gives the pace; `_OutOfTime` stops the sweep when the steps left
    would end after the deadline (judged from `PROBE_STEPS` steps on) or the deadline has passed.
    """

    def __init__(self, loader: DataLoader, task: Task, device: torch.device, deadline: Deadline | None = None,
                 num_steps: int = NUM_STEPS) -> None:
        self.loader, self.augment, self.device = loader, task.augment, device
        self.deadline, self.num_steps = deadline, num_steps
        self.requested, self.started = 0, 0.0

    def __iter__(self):
        for x, y in self.loader:
            self._keep_time()
            x = to_device(x, self.device)
            yield (self.augment(x) if self.augment is not None else x), y

    def _keep_time(self) -> None:
        done, now = self.requested, time.perf_counter()
        self.requested += 1
        if done == 0:
            self.started = now
        if self.deadline is None or done == 0 or done >= self.num_steps:
            return
        seconds = now - self.started
        needs = seconds / done * (self.num_steps - done)
        left = self.deadline.left()
        if (left <= 0 or done >= PROBE_STEPS) and needs > left:
            raise _OutOfTime(done, seconds, needs - left)


def _numbers(r: LRFinderResult, setup: _Setup, fell: float) -> str:
    """The measurements every verdict quotes; default_lr only where it has a reference for the optimizer."""
    text = (f"The Task's LR is {setup.task_lr:.3g} ({setup.optimizer}); in the range test ({len(r.lrs)} steps from "
            f"{START_LR:g} to {r.lrs[-1]:.3g}{', stopped when the loss diverged' if r.stopped_early else ''}) the "
            f"smoothed loss fell by {fell:.0%} and was lowest at LR {r.min_loss_lr:.3g}, which suggests "
            f"{r.suggestion:.3g}.")
    if r.lrs.index(r.min_loss_lr) == len(r.lrs) - 1 and not r.stopped_early:
        text += f" The loss was still falling at the sweep's last LR, so its minimum may lie beyond {r.min_loss_lr:.3g}."
    return text + " " + _reference(setup)


def _reference(setup: _Setup) -> str:
    if setup.default is not None:
        return f"default_lr for this model is {setup.default:.3g}."
    own = f"; torch's default lr for {setup.optimizer} is {setup.torch_default:g}" if setup.torch_default else ""
    return f"The optimizer family ({setup.optimizer}) has no default_lr reference{own}."


def _verdict(r: LRFinderResult, setup: _Setup) -> Finding:
    task_lr = setup.task_lr
    ratio = task_lr / r.min_loss_lr
    i_min = r.lrs.index(r.min_loss_lr)
    first, lowest = r.losses[0], min(v for v in r.losses if math.isfinite(v))
    fell = (first - lowest) / abs(first) if first != 0 else 0.0  # share of the starting loss shed
    conclusive = i_min >= EARLY * setup.num_steps and fell >= MIN_FALL
    numbers = _numbers(r, setup, fell)
    fix = None
    if setup.lr_is is not None:
        status = "info"
        title = f"LR range test not comparable for {setup.optimizer} (Task lr {task_lr:.3g})"
        message = (numbers + f" The range test's scale does not apply to {setup.optimizer}'s lr, {setup.lr_is}; "
                   f"the curve does not say whether {task_lr:.3g} is too high or too low.")
    elif not conclusive:
        status, title = "info", f"LR range test inconclusive: the loss did not fall (Task LR {task_lr:.3g})"
        message = numbers + " The loss never went below its values at the smallest LRs, so the curve says nothing."
        fix = "Check that the model can learn at all (`dltips tips overfit-tiny`), then rerun with more steps."
    elif ratio > MAX_RATIO:
        status = "warn"
        title = f"LR {task_lr:.3g} is past the loss minimum of the range test ({r.min_loss_lr:.3g}): likely unstable"
        message = numbers + f" The Task's LR is {ratio:.3g}x the LR of the minimum, where the loss already rises."
        fix = f"Lower the learning rate to about {r.suggestion:.3g} (a decade below the minimum)."
    elif ratio < MIN_RATIO:
        status = "warn"
        title = f"LR {task_lr:.3g} is far below the range test's suggestion ({r.suggestion:.3g}): training will be slow"
        message = numbers + f" The Task's LR is {task_lr / r.suggestion:.2g}x the suggestion."
        fix = f"Raise the learning rate to about {r.suggestion:.3g}" + (
            f", or start from default_lr ({setup.default:.3g})." if setup.default is not None else ".")
    else:
        status = "pass"
        title, position = _sane_words(task_lr, r)
        message = f"{numbers} {position}"
    evidence = {
        **setup.evidence(),
        "suggestion": r.suggestion,
        "min_loss_lr": r.min_loss_lr,
        "steepest": r.steepest,
        "ratio_to_min": ratio,
        "loss_fell": fell,
        "stopped_early": r.stopped_early,
        "conclusive": conclusive,
        "comparable": setup.lr_is is None,
        "limits": {"max_ratio": MAX_RATIO, "min_ratio": MIN_RATIO, "early": EARLY, "min_fall": MIN_FALL},
        "curve": {"lr": r.lrs, "loss": r.losses},
    }
    figure = {"kind": "lines", "title": "LR range test", "x": r.lrs,
              "series": {"smoothed loss": r.losses},
              "xlabel": "learning rate", "ylabel": "training loss", "xlog": True, "ylog": False}
    return Finding(TIP, status, title, message, fix, evidence, [figure])


def _sane_words(task_lr: float, r: LRFinderResult) -> tuple[str, str]:
    """Title and sentence of a pass, saying where the LR lies without suggesting a change.

    "Below its suggestion" is said only for an LR below the suggestion as printed; an LR between the
    suggestion and the minimum is said to be so, and one at the minimum is at the minimum.
    """
    lr, low, top = f"{task_lr:.3g}", f"{r.suggestion:.3g}", f"{r.min_loss_lr:.3g}"
    ratio = task_lr / r.min_loss_lr
    if lr == top:
        return (f"LR {lr} is at the range test's loss minimum, not past it",
                f"The Task's LR is {ratio:.3g}x the LR of the minimum: the loss had not yet risen there.")
    if task_lr >= r.suggestion or lr == low:
        return (f"LR {lr} is between the range test's suggestion ({low}) and its loss minimum ({top})",
                f"The Task's LR is {ratio:.2g}x the LR of the minimum, where the loss still fell, and "
                f"{task_lr / r.suggestion:.2g}x the suggestion (a decade below the minimum).")
    return (f"LR {lr} is in the sane range of the range test: below its suggestion ({low}), within "
            f"{1 / MIN_RATIO / 10:.0f}x of it",
            f"The Task's LR is {task_lr / r.suggestion:.2g}x the suggestion and {ratio:.2g}x the LR of the minimum: "
            f"below it, and within {1 / MIN_RATIO / 10:.0f}x of the suggestion.")


def _not_run(setup: _Setup) -> Finding:
    """An `info` for an optimizer the range test cannot step (LBFGS): the numbers it has, no verdict."""
    message = (f"The Task's optimizer is {setup.optimizer} with lr {setup.task_lr:.3g}. The range test's scale does "
               f"not apply to {setup.optimizer}'s lr, {setup.lr_is}, so the test was not run. {_reference(setup)}")
    return Finding(TIP, "info", f"LR range test not run for {setup.optimizer} (Task lr {setup.task_lr:.3g})", message,
                   None, {**setup.evidence(), "comparable": False, "conclusive": False})
