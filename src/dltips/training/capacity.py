"""Can the model fit a training subset? The capacity half of "overfit, then regularize".

`check_capacity` trains a fresh copy on a training subset with minibatches and
asks whether the training error gets near zero (tip `overfit-then-regularize`).
If it does not, the architecture or the optimisation is the problem and
regularisation would only make it worse; if it does and the validation error is
much larger, it ranks the regularisers to try first. It trains with the Task's
own loss and optimizer at its own constant learning rate, and never touches the
model it is given. The measurements behind the thresholds are in
docs/calibration.md ("overfit-tiny and overfit-then-regularize").
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from dltips.core.checks import check_args, renamed_kwargs
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device, to_device
from dltips.core.params import number, positive_int
from dltips.core.state import eval_mode, grads_kept, rng_kept, training_copy
from dltips.findings import Finding, skipped_for_time
from dltips.predict import LM_BASELINE_FRACTION, baseline_error, cat_batches, error_rate
from dltips.task import Task, as_logits
from dltips.training.lr import make_optimizer
from dltips.training.overfit import switch_off_regularisation

__all__ = ["check_capacity"]

TIP = "overfit-then-regularize"
MAX_ITEMS = 512  # training items in the subset, by default
# overfit-then-regularize: "near zero" training error.
CAPACITY_ERROR = 0.02  # error rate (classification, binary, multilabel, language model)
CAPACITY_FRACTION = 0.10  # regression: MSE as a fraction of the baseline (the target variance)
CAPACITY_EVAL_EVERY = 25  # steps between measurements of the training error (at least one epoch)
IMPROVING = 0.2  # relative fall of the error over the second half of training that counts as "still improving"
MIN_MEASUREMENTS = 4  # fewer measurements of the training error cannot tell flat from falling
# A flat training error at this fraction of the constant predictor's or above is a fail: nothing is learned
# (the calibration's AdamW at LR 1: 89.9% error against a 90% baseline; blind-lm: 1.02 x its baseline).
AT_BASELINE = 0.9
GAP_ERROR = 0.02  # validation error this much above training error (and twice it) is "much larger"
GAP_FRACTION = 0.05  # regression: the same, as a fraction of the baseline


@renamed_kwargs(n_items="max_items", budget_s="deadline")
def check_capacity(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
    max_steps: int = 600,
    valid_error: float | None = None,
) -> list[Finding]:
    """Can the model drive the training error near zero on a training subset? (tip `overfit-then-regularize`)

    Trains a fresh copy of `model` (default `task.model`) on up to `max_items`
    (default `MAX_ITEMS`) training items (a seeded subset)
    with minibatches of `task.batch_size`, no augmentation and no
    regularisation (dropout probabilities and weight decay set to 0: the tip
    asks for the capacity first, regularisation second), for at most
    `max_steps` steps or until the `deadline`, stopping once the training error
    is near zero. `valid_error` (the same error measure on validation data:
    error rate, or MSE for regression) turns a pass into a ranking of
    regularisers when it is much larger than the training error. A language
    model whose error levels off above zero but clearly below the majority-token
    baseline gets `info`, not `warn`: text has an error floor of its own.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    max_steps = positive_int("max_steps", max_steps)
    if valid_error is not None:
        valid_error = number("valid_error", valid_error, 0.0)
    with rng_kept(seed):
        return [_fit_subset(task, model if model is not None else task.model, max_items or MAX_ITEMS, max_steps,
                            seed, deadline, device, valid_error)]


def _fit_subset(task: Task, original: nn.Module, max_items: int, max_steps: int, seed: int,
                deadline: Deadline | None, device: torch.device | str | None, valid_error: float | None) -> Finding:
    """Train a copy of `original` on a seeded training subset until its error is near zero or the plan ends."""
    start = time.perf_counter()
    n = min(max_items, len(task.train))
    indices = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    with training_copy(original) as model, grads_kept(original):
        device = resolve_device(device, model)
        model.to(device)
        targets = task.collate([task.train[i] for i in indices])[1]
        baseline = baseline_error(task.kind, targets, targets)
        threshold = CAPACITY_FRACTION * baseline if task.kind == "regression" else CAPACITY_ERROR
        history: list[tuple[int, float]] = []
        steps, stopped = 0, "max_steps"
        optimizer = make_optimizer(task, model)
        lr = float(optimizer.param_groups[0]["lr"]) if optimizer.param_groups else None
        regularisation_off = switch_off_regularisation(model, optimizer)
        batch_size = min(task.batch_size, n)
        steps_per_epoch = n // batch_size
        every = max(CAPACITY_EVAL_EVERY, steps_per_epoch)
        generator = torch.Generator().manual_seed(seed)
        for x, y in _forever(task, Subset(task.train, indices), batch_size, generator):
            model.train()
            task.train_step(model, (to_device(x, device), y.to(device)), optimizer)
            steps += 1
            out_of_time = deadline is not None and deadline.expired()
            if steps % every == 0 or steps == max_steps or out_of_time:
                history.append((steps, _train_error(model, task, indices, device)))
                if not math.isfinite(history[-1][1]) or history[-1][1] <= threshold:
                    stopped = "target" if history[-1][1] <= threshold else "non-finite"
                    break
            if steps >= max_steps or out_of_time:
                stopped = "budget" if out_of_time and steps < max_steps else "max_steps"
                break
    train_error = history[-1][1]
    evidence = {"train_error": train_error, "baseline_error": baseline, "threshold": threshold, "steps": steps,
                "n_items": n, "batch_size": batch_size, "lr": lr, "stopped_by": stopped, "max_steps": max_steps,
                "augmentation": "off",
                "regularisation_switched_off": regularisation_off,
                "valid_error": valid_error, "seconds": round(time.perf_counter() - start, 3),
                "error_curve": {"steps": [s for s, _ in history], "errors": [e for _, e in history]}}
    figure = {"kind": "lines", "title": "Training error on the subset", "x": [s for s, _ in history],
              "series": {"train error": [e for _, e in history]}, "xlabel": "step",
              "ylabel": "MSE" if task.kind == "regression" else "error rate", "xlog": False, "ylog": False,
              "band": [0.0, threshold]}
    return _capacity_finding(task, evidence, history, [figure])


def _capacity_finding(task: Task, ev: dict, history: list[tuple[int, float]], figures: list) -> Finding:
    regression = task.kind == "regression"
    err, base, n, steps = ev["train_error"], ev["baseline_error"], ev["n_items"], ev["steps"]
    measure = "MSE" if regression else "error"
    fmt = (lambda v: f"{v:.4g}") if regression else (lambda v: f"{v:.1%}")
    numbers = (f"training {measure} of {fmt(err)} on {n} training items after {steps} steps (a constant "
               f"prediction gets {fmt(base)}; near zero means at most {fmt(ev['threshold'])})")
    if not math.isfinite(err):
        return Finding(TIP, "warn", "Training diverged on a training subset",
                       f"The training {measure} became NaN or infinite after {steps} steps on {n} training items, "
                       "so the model's capacity could not be measured.",
                       "Lower the learning rate (see `dltips tips default-lr`) and check the inputs and the loss "
                       "for NaN.", ev, figures)
    if ev["stopped_by"] == "budget":
        needed = ev["seconds"] * (ev["max_steps"] - steps) / max(steps, 1)
        return skipped_for_time(TIP, needed, f"{steps} of its {ev['max_steps']} planned steps ran", ev)
    if err > ev["threshold"]:
        ev["trend"] = _trend(history)
        if ev["trend"] != "flat":
            why = ("the error was still falling" if ev["trend"] == "falling"
                   else f"{len(history)} measurements are too few to tell whether the error still falls")
            return Finding(TIP, "info", "Capacity not settled within the plan",
                           f"The model reached a {numbers}; {why} when its plan of {steps} steps ended, so this run "
                           "cannot tell whether it gets near zero.",
                           "Give the check more steps (`max_steps`) to settle it.", ev, figures)
        if err >= AT_BASELINE * base:
            return Finding(TIP, "fail", "The model does not learn its training data",
                           f"The model reached a {numbers}: no better than a constant prediction, and the error "
                           "had stopped falling, under the Task's own optimizer and learning rate. Nothing is being "
                           "learned, so no later verdict on generalisation means anything yet.",
                           "Look at the learning rate first (`dltips tips default-lr`; far too high or too low both "
                           "end here), then at whether the loss reaches the parameters (`dltips tips overfit-tiny`) "
                           "and at the inputs' scale.", ev, figures)
        if task.kind == "language-model" and err <= LM_BASELINE_FRACTION * base:
            return Finding(TIP, "info", "Training error levelled off above zero, as text allows",
                           f"The model reached a {numbers}; the error had levelled off. Part of a language "
                           "model's next-token error is the text's own unpredictability, so a plateau above zero "
                           f"does not show a capacity limit, and the model beats the majority-token baseline "
                           f"(at most {LM_BASELINE_FRACTION:.0%} of it).",
                           "To see whether capacity limits the loss, train a model twice as wide for the same "
                           "steps: a clearly lower training loss means the smaller one was too small.", ev, figures)
        return Finding(TIP, "warn", "The model cannot fit its training data",
                       f"The model reached a {numbers}, and the error had stopped falling. The architecture or "
                       "the optimisation is the limit, so regularisation will not help yet: it would only make "
                       "fitting harder.",
                       "Make fitting easier first: a bigger model (wider or deeper), normalisation layers, "
                       "longer training, or a higher learning rate (see `dltips tips default-lr`). Regularise only "
                       "once the training error is near zero.", ev, figures)
    valid = ev["valid_error"]
    gap = (GAP_FRACTION * base) if regression else GAP_ERROR
    if valid is not None and valid - err > gap and valid >= 2 * err:
        ranking, why = _regularisers(task)
        ev["regularisers"] = ranking
        return Finding(TIP, "info", "The model fits its training data; regularise next",
                       f"The model reached a {numbers}, but the validation {measure} is {fmt(valid)}: it "
                       f"overfits. Try, in this order: {', '.join(ranking)}. {why}",
                       f"Add {ranking[0]} first, then {ranking[1]}; more training data beats them all when "
                       "available.", ev, figures)
    tail = ("" if valid is None else f" The validation {measure}, {fmt(valid)}, is close to it: no sign of "
                                      "overfitting.")
    return Finding(TIP, "pass", "The model can fit its training data",
                   f"The model reached a {numbers}.{tail}", None, ev, figures)


def _regularisers(task: Task) -> tuple[list[str], str]:
    """Regularisers to try, most promising first for this kind of input, and why."""
    x = task.train[0][0]
    if task.kind == "language-model" or (isinstance(x, torch.Tensor) and not x.is_floating_point()):
        return ["dropout", "weight decay", "early stopping", "data augmentation"], (
            "For tokens, few transformations keep the label, so dropout and weight decay come first.")
    if isinstance(x, torch.Tensor) and x.dim() >= 2:
        return ["data augmentation", "weight decay", "dropout", "early stopping"], (
            "For images and other signals, label-preserving augmentation adds data, the strongest regulariser "
            "(see `dltips tips label-preserving-augmentation`).")
    return ["weight decay", "dropout", "early stopping", "data augmentation"], (
        "For tabular rows there is no natural label-preserving transformation (mixup needs much longer training), "
        "so weight decay and dropout come first.")


def _trend(history: list[tuple[int, float]]) -> str:
    """"falling" if the error fell by more than IMPROVING (relative) over the second half of training,
    "flat" if not, "short" with fewer than MIN_MEASUREMENTS measurements."""
    if len(history) < MIN_MEASUREMENTS:
        return "short"
    half = history[-1][0] / 2
    early = [e for s, e in history if s <= half] or [history[0][1]]
    return "falling" if history[-1][1] < (1.0 - IMPROVING) * min(early) else "flat"


@torch.no_grad()
def _train_error(model: nn.Module, task: Task, indices: list[int], device: torch.device) -> float:
    """The kind's error (`error_rate`) of `model` in eval mode on the training items at `indices`."""
    outputs, targets = [], []
    with eval_mode(model):
        for x, y in task.loader(Subset(task.train, indices), batch_size=max(task.batch_size, 256)):
            output, y = task.outputs(model, to_device((x, y), device))
            outputs.append(as_logits(task, output.float()).cpu())
            targets.append(y.cpu())
    return error_rate(task.kind, *cat_batches(outputs, targets))


def _forever(task: Task, data: Dataset, batch_size: int, generator: torch.Generator) -> Iterator:
    """Shuffled minibatches, epoch after epoch; no batch smaller than `batch_size` unless it is the only one."""
    drop_last = len(data) > batch_size
    while True:
        yield from task.loader(data, batch_size=batch_size, shuffle=True, drop_last=drop_last, generator=generator)


# ---------------------------------------------------------------------------------------------- helpers


