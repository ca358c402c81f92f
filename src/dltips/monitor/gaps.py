"""The three error gaps: bias, variance, and overfitting to the validation set.

With training, validation and test errors (1 - accuracy, or MSE for
regression) and the error of a baseline predictor:

    bias                  = the training error, read against the baseline error
    variance              = validation error - training error
    validation overfit    = test error - validation error

A gap is *large* (warn) when it exceeds both an absolute floor and a fraction
of the problem's scale S, and *mild* (info) at half of that:

    gap            large when above        mild when above
    bias           max(0.05, 0.20 * S)     max(0.025, 0.10 * S)
    variance       max(0.05, 0.15 * S)     max(0.025, 0.075 * S)
    valid -> test  max(0.05, 0.15 * S)     max(0.025, 0.075 * S)

S is the baseline error when given (0.5, a balanced coin, when not). The
absolute floors (five points of error) keep the sampling noise of a few
hundred validation items from being read as a gap. For regression the errors
carry the units of the target, so there are no floors: S is the baseline MSE
(the variance of the targets), and a large bias means a training R^2 below
0.8. Without a baseline a regression's bias is not judged, and a gap counts as
large when the later error is more than twice the earlier (mild: 4/3). A
language model's next-token error has a floor set by the text, so its bias is
large only above 95% of the majority-token baseline (`LM_BASELINE_FRACTION`,
calibrated in `dltips.predict`), and never mild.

Calibration: sklearn's digits (1078 train / 359 valid / 360 test items, 8x8
images scaled to [0, 1]), fitted with `dltips.fit` on the CPU; the trivial
(majority class) baseline error is 0.905:

    run                                        train  valid  test   verdict
    small CNN, 10 epochs (3.6 s)               0.000  0.017  0.017  pass
    small CNN, 3 epochs                        0.032  0.064  0.031  pass
    linear model on 2x2-pooled images          0.535  0.529  0.533  warn: high bias
    MLP (64-512-10) on 60 training items       0.000  0.203  0.169  warn: high variance
    MLP memorising 300 shuffled labels         0.000  0.877  0.908  warn: high variance
    best of 100 seeds on 20 valid items (*)    0.667  0.600  0.747  warn: high bias (+ valid->test gap)

(*) linear models on 30 training items; the validation error of the seed
picked on 20 items is optimistic by 0.147, just past the 0.135 threshold.

Time plan: the items scored are fixed by the task's sizes and `max_items` alone (at most
MAX_TRAIN_ITEMS training items, or `max_items`, and MAX_EVAL_ITEMS validation and test items,
evenly spaced); the clock never shrinks them. When the deadline passes before the plan is
scored, the check returns a `skip` with the time the rest would take, never a verdict on part
of the items. The deadline is read between batches, so an already spent deadline costs one batch,
whose timing gives the estimate.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from numbers import Real
from typing import Any

import torch
from torch import nn

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline, as_deadline
from dltips.core.device import model_on_device, resolve_device
from dltips.core.params import ParamError, number, one_of, optional_int
from dltips.findings import Finding, skipped_for_time
from dltips.predict import (
    LM_BASELINE_FRACTION,
    OutOfTime,
    Predictions,
    baseline_error,
    error_rate,
    estimate_needed,
    evenly_spaced,
    predict,
    standard_error,
)
from dltips.task import KINDS, Task

TIP = "error-gaps"
MAX_TRAIN_ITEMS = 2000  # training items measured by `measure_error_gaps` (unless `max_items` says otherwise)
MAX_EVAL_ITEMS = 4096  # validation and test items measured, each (evenly spaced when a split is larger)

# (floor, fraction of S) for a large gap; a mild gap is at half of both.
BIAS_LIMIT = (0.05, 0.20)
VARIANCE_LIMIT = (0.05, 0.15)
VALID_OVERFIT_LIMIT = (0.05, 0.15)
MILD = 0.5  # mild threshold = MILD * large threshold
DEFAULT_SCALE = 0.5  # S for error rates when no baseline is given
RATIO_LIMIT = 2.0  # regression without a baseline: large when later > 2 x earlier
RATIO_MILD = 4 / 3  # ... and mild when later > 4/3 x earlier
NOISE_Z = 2.0  # a gap must also exceed this many standard errors of the difference to be large (one to be mild)

_FIXES = {
    "bias": "Reduce bias first: train longer, use a bigger model (more layers or units), lower the "
            "regularisation (weight decay, dropout, heavy augmentation), and check the learning rate.",
    "variance": "Reduce variance: get more training data, add regularisation (weight decay, dropout), "
                "use data augmentation, or stop earlier / use a smaller model.",
    "valid_overfit": "Stop tuning against the validation set: get a fresh validation set, run fewer "
                     "hyper-parameter trials (or cross-validate), and look at the test set only once.",
}
_NAMES = {"bias": "bias", "variance": "variance", "valid_overfit": "validation overfitting"}


@dataclass
class Gap:
    """One of the three gaps with the thresholds it was judged against (None: not judged)."""

    value: float | None
    large: float | None
    mild: float | None

    @property
    def level(self) -> str:
        if self.value is None or self.large is None:
            return "none"
        if self.value > self.large:
            return "large"
        return "mild" if self.value > self.mild else "none"

    @property
    def severity(self) -> float:
        """How far past its large threshold the gap is (for naming the dominant problem)."""
        if self.value is None or self.large is None:
            return 0.0
        if self.large <= 0:
            return math.inf if self.value > 0 else 0.0
        return self.value / self.large


@dataclass
class ErrorGaps:
    """The errors a trained model makes on each split, with their standard errors: what `judge_error_gaps` reads."""

    train_error: float
    valid_error: float
    test_error: float | None
    baseline_error: float
    standard_errors: dict[str, float]
    n_items: dict[str, int]


def check_error_gaps(
    task: Task,
    *args: Any,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
    **kwargs: Any,
) -> list[Finding]:
    """The three error gaps of a trained `model` (default `task.model`) on the Task's splits; one Finding.

    Measures the errors (`measure_error_gaps`) and reads the gaps (`judge_error_gaps`); the
    evidence's "n_items" gives the items scored and the size of each split. When `deadline`
    passes before every planned item is scored, the one Finding is a `skip` saying how much more
    time the plan needs. The check draws no random numbers; `seed` is accepted for the common
    check signature.
    The old form `check_error_gaps(train_error, valid_error, ...)` still works for one release
    (a DeprecationWarning): it is now `judge_error_gaps`.
    """
    if isinstance(task, Real):
        warnings.warn("check_error_gaps(train_error, valid_error, ...) is deprecated; use judge_error_gaps(...) "
                      "for errors you measured, or check_error_gaps(task, model=...)", DeprecationWarning, stacklevel=2)
        return judge_error_gaps(task, *args, **kwargs)
    if args or kwargs:
        raise TypeError(f"check_error_gaps(task, ...) takes keyword options model, device, seed, max_items and "
                        f"deadline only, got {len(args)} more positional and {sorted(kwargs)}")
    _, max_items, deadline = check_args(seed, max_items, deadline)
    try:
        gaps = measure_error_gaps(task, model=model, device=device, max_items=max_items, deadline=deadline)
    except OutOfTime as err:
        planned = {name: len(positions) for name, (_, positions) in _plan(task, max_items).items()}
        listed = ", ".join(f"{n} {_SPLIT_NAMES[name]}" for name, n in planned.items())
        return [skipped_for_time(TIP, estimate_needed(err), done=f"scored {err.done} of the {err.total} planned "
                                 f"items ({listed})", evidence={"n_items": planned})]
    findings = judge_error_gaps(gaps.train_error, gaps.valid_error, gaps.test_error, gaps.baseline_error,
                                kind=task.kind, standard_errors=gaps.standard_errors)
    findings[0].evidence["n_items"] = dict(gaps.n_items)
    return findings


def judge_error_gaps(
    train_error: float,
    valid_error: float,
    test_error: float | None = None,
    baseline_error: float | None = None,
    *,
    kind: str = "classification",
    standard_errors: dict[str, float] | None = None,
) -> list[Finding]:
    """Read the bias, variance and validation-overfitting gaps from four errors; one Finding.

    Errors are 1 - accuracy for classification-like kinds and MSE for
    regression. `baseline_error` is the error of a reference the model must
    clearly beat: the trivial predictor (majority class or mean) or a simple model.
    `standard_errors` ("train", "valid", "test": std / sqrt(n) of each error
    estimate) keep a gap that small splits can produce by chance from being
    called large: it must also exceed NOISE_Z standard errors of the difference.
    Measured on the diabetes set (73 validation items), a regularised MLP showed
    validation MSE 0.55 against test 0.38: sampling noise, not overfitting.
    """
    one_of("kind", kind, KINDS)
    rate = kind != "regression"
    errors = {"train": train_error, "valid": valid_error, "test": test_error, "baseline": baseline_error}
    for name, value in errors.items():
        if value is None and name in ("test", "baseline"):
            continue
        _check_error(f"{name}_error", value, rate)

    gaps = _gaps(train_error, valid_error, test_error, baseline_error, rate)
    if kind == "language-model":
        gaps["bias"] = _language_model_bias(train_error, baseline_error)
    if standard_errors:
        for key, (a, b) in {"variance": ("valid", "train"), "valid_overfit": ("test", "valid")}.items():
            g = gaps[key]
            if g.large is not None:
                se = math.hypot(standard_errors.get(a, 0.0), standard_errors.get(b, 0.0))
                gaps[key] = Gap(g.value, max(g.large, NOISE_Z * se), max(g.mild, se))
    large = [k for k, g in gaps.items() if g.level == "large"]
    mild = [k for k, g in gaps.items() if g.level == "mild"]
    flagged = large or mild
    status = "warn" if large else "info" if mild else "pass"
    dominant = max(flagged, key=lambda k: gaps[k].severity) if flagged else None

    fmt = _pct if rate else _num
    measured = f"Training error {fmt(train_error)}, validation {fmt(valid_error)}"
    measured += f", test {fmt(test_error)}" if test_error is not None else " (no test set)"
    measured += f"; baseline error {fmt(baseline_error)}." if baseline_error is not None else "; no baseline given."
    parts = [measured]
    if baseline_error is not None and train_error >= baseline_error:
        parts.append("The model is no better than the baseline on its own training data.")
    for key in ("bias", "variance", "valid_overfit"):
        parts.append(_describe(key, gaps[key], fmt, key in large, key in mild, kind == "language-model"))
    message = " ".join(p for p in parts if p)

    if dominant is None:
        title = "Error gaps are small: no sign of high bias, high variance or validation overfitting"
        fix = None
    else:
        others = [k for k in flagged if k != dominant]
        title = _title(dominant, dominant in large, errors, fmt)
        title += f" (also {', '.join(_NAMES[k] for k in others)})" if others else ""
        fix = " ".join(_FIXES[k] for k in [dominant, *others])

    evidence = {
        "kind": kind,
        "errors": dict(errors),
        "gaps": {k: asdict(g) | {"level": g.level} for k, g in gaps.items()},
        "scale": _scale(baseline_error, rate),
        "limits": {"bias": BIAS_LIMIT, "variance": VARIANCE_LIMIT, "valid_overfit": VALID_OVERFIT_LIMIT,
                   "mild": MILD, "default_scale": DEFAULT_SCALE,
                   "ratio_without_baseline": [RATIO_LIMIT, RATIO_MILD]},
        "dominant": dominant,
        "standard_errors": dict(standard_errors or {}),
    }
    return [Finding(TIP, status, title, message, fix, evidence)]


def measure_error_gaps(
    task: Task,
    *args: Any,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
    **kwargs: Any,
) -> ErrorGaps:
    """The errors of a trained `model` (default `task.model`) on the Task's splits.

    The training error is measured on at most `max_items` (default `MAX_TRAIN_ITEMS`) evenly
    spaced training items, validation and test on at most `MAX_EVAL_ITEMS` evenly spaced items
    each; the baseline is the trivial predictor fitted on those training items' targets and
    scored on the validation items. When `deadline` (a Deadline or seconds) passes before all of
    them are scored, `OutOfTime` is raised with the items scored and the seconds spent over the
    whole plan.
    The old form `measure_error_gaps(model, task, device)` returned Findings; it still does for
    one release, with a DeprecationWarning (use `check_error_gaps(task, model=model)`).
    """
    if isinstance(task, nn.Module):
        warnings.warn("measure_error_gaps(model, task, ...) is deprecated; use check_error_gaps(task, model=model) "
                      "for the verdict, measure_error_gaps(task, model=model) for the errors",
                      DeprecationWarning, stacklevel=2)
        model, task = task, args[0]
        device = args[1] if len(args) > 1 else device
        return check_error_gaps(task, model=model, device=device, max_items=kwargs.get("max_train_items", max_items),
                                deadline=deadline)
    if args or kwargs:
        raise TypeError(f"measure_error_gaps(task, ...) takes keyword options model, device, max_items and deadline "
                        f"only, got {len(args)} more positional and {sorted(kwargs)}")
    max_items = optional_int("max_items", max_items)
    deadline = as_deadline(deadline)
    device = resolve_device(device, model if model is not None else task.model)
    model = model_on_device(model if model is not None else task.model, device)
    plan = _plan(task, max_items)
    scored = _score(model, task, plan, device, deadline)
    train, valid, test = scored["train"], scored["valid"], scored.get("test")
    n_items = {"train": len(train), "train_total": len(task.train), "valid": len(valid),
               "valid_total": len(task.valid), "test": len(test) if test is not None else 0,
               "test_total": len(task.test) if task.test is not None else 0}
    return ErrorGaps(
        train_error=error_rate(task.kind, train.outputs, train.targets),
        valid_error=error_rate(task.kind, valid.outputs, valid.targets),
        test_error=error_rate(task.kind, test.outputs, test.targets) if test is not None else None,
        baseline_error=baseline_error(task.kind, train.targets, valid.targets),
        standard_errors={name: standard_error(task.kind, p.outputs, p.targets) for name, p in scored.items()},
        n_items=n_items,
    )


_SPLIT_NAMES = {"train": "training", "valid": "validation", "test": "test"}


def _plan(task: Task, max_items: int | None) -> dict[str, tuple[Any, list[int]]]:
    """The items each split is scored on: fixed by the split sizes and `max_items`, never by the clock."""
    plan = {"train": (task.train, evenly_spaced(len(task.train), max_items or MAX_TRAIN_ITEMS)),
            "valid": (task.valid, evenly_spaced(len(task.valid), MAX_EVAL_ITEMS))}
    if task.test is not None:
        plan["test"] = (task.test, evenly_spaced(len(task.test), MAX_EVAL_ITEMS))
    return plan


def _score(model: nn.Module, task: Task, plan: dict[str, tuple[Any, list[int]]], device: torch.device,
           deadline: Deadline | None) -> dict[str, Predictions]:
    """Predictions on every split of `plan`; `OutOfTime` counts the items and seconds of the whole plan."""
    total = sum(len(positions) for _, positions in plan.values())
    started, done, scored = time.monotonic(), 0, {}
    for name, (data, positions) in plan.items():
        try:
            scored[name] = predict(model, task, data, indices=positions, device=device, deadline=deadline)
        except OutOfTime as err:
            raise OutOfTime(done + err.done, total, time.monotonic() - started) from err
        done += len(positions)
    return scored


def _check_error(name: str, value: object, rate: bool) -> None:
    value = number(name, value, 0.0)
    if rate and value > 1:
        raise ParamError(f"{name} must be an error rate in [0, 1] (1 - accuracy), got {value!r}")


def _scale(baseline: float | None, rate: bool) -> float | None:
    if baseline is not None:
        return float(baseline)
    return DEFAULT_SCALE if rate else None


def _limit(limit: tuple[float, float], scale: float, rate: bool) -> tuple[float, float]:
    floor, fraction = limit
    large = max(floor, fraction * scale) if rate else fraction * scale
    return large, MILD * large


def _ratio_limit(earlier: float) -> tuple[float, float]:
    """Regression without a baseline: large when the later error exceeds RATIO_LIMIT x the earlier."""
    return (RATIO_LIMIT - 1.0) * earlier, (RATIO_MILD - 1.0) * earlier


def _gaps(train: float, valid: float, test: float | None, baseline: float | None, rate: bool) -> dict[str, Gap]:
    scale = _scale(baseline, rate)
    if scale is None:  # regression, no baseline: bias cannot be judged, gaps relative to the earlier error
        gaps = {"bias": Gap(train, None, None), "variance": Gap(valid - train, *_ratio_limit(train))}
        gaps["valid_overfit"] = Gap(test - valid if test is not None else None, *_ratio_limit(valid))
        return gaps
    return {
        "bias": Gap(train, *_limit(BIAS_LIMIT, scale, rate)),
        "variance": Gap(valid - train, *_limit(VARIANCE_LIMIT, scale, rate)),
        "valid_overfit": Gap(test - valid if test is not None else None, *_limit(VALID_OVERFIT_LIMIT, scale, rate)),
    }


def _language_model_bias(train: float, baseline: float | None) -> Gap:
    """A language model's bias is judged against the majority-token baseline, not against zero.

    Next-token error has a floor set by the text's own unpredictability, so a large training error
    is expected; only one above LM_BASELINE_FRACTION of the baseline (the model has learned
    little beyond token frequencies) counts as large. Without a baseline bias is not judged.
    """
    if baseline is None:
        return Gap(train, None, None)
    limit = LM_BASELINE_FRACTION * baseline
    return Gap(train, limit, limit)


def _title(key: str, is_large: bool, errors: dict, fmt) -> str:
    train, valid, test, base = (errors[k] for k in ("train", "valid", "test", "baseline"))
    if key == "bias":
        head = "High bias (underfitting)" if is_large else "Some bias (mild underfitting)"
        against = f" against a baseline of {fmt(base)}" if base is not None else ""
        return f"{head}: training error {fmt(train)}{against}"
    if key == "variance":
        head = "High variance (overfitting)" if is_large else "Some variance (mild overfitting)"
        return f"{head}: validation error {fmt(valid)} against training {fmt(train)}"
    head = "Overfitting to the validation set" if is_large else "Mild overfitting to the validation set"
    return f"{head}: test error {fmt(test)} against validation {fmt(valid)}"


def _describe(key: str, gap: Gap, fmt, is_large: bool, is_mild: bool, language_model: bool = False) -> str:
    if gap.value is None:
        return ""
    if gap.large is None:
        reference = "the error of predicting the most frequent token" if language_model else "the MSE of predicting the mean"
        return f"Bias is not judged without a baseline error (pass {reference})."
    if key == "bias" and language_model:
        judged = (f"The training error ({fmt(gap.value)}) is read against {LM_BASELINE_FRACTION:.0%} of the "
                  f"baseline ({fmt(gap.large)}), not against zero: part of a language model's next-token error "
                  "is the text's own unpredictability.")
        if is_large:
            return judged + " The model has learned little beyond the tokens' frequencies."
        return judged
    what = {"bias": f"The training error ({fmt(gap.value)})",
            "variance": f"The validation-training gap ({_signed(gap.value, fmt)})",
            "valid_overfit": f"The test-validation gap ({_signed(gap.value, fmt)})"}[key]
    meaning = {"bias": "the model underfits the training set",
               "variance": "the model does not generalise beyond its training items",
               "valid_overfit": "choices tuned on the validation set do not carry over to new data"}[key]
    if is_large:
        return f"{what} is large (limit {fmt(gap.large)}): {meaning}."
    if is_mild:
        return f"{what} is moderate (between {fmt(gap.mild)} and {fmt(gap.large)}): {meaning}, mildly."
    return f"{what} is small (limit {fmt(gap.large)})."


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _signed(value: float, fmt) -> str:
    return ("+" if value >= 0 else "-") + fmt(abs(value))
