"""The loss at initialisation: is the untrained model as unsure as the task implies?

An untrained model should not prefer any answer, so its loss is known before
training starts:

    classification   between the entropy of the label prior H and ln C
    binary           between the binary entropy of the positive rate and ln 2
    multilabel       between the mean over labels of the per-label binary entropy and ln 2
    language model   between the unigram entropy of the training tokens and ln V (per token)
    regression (MSE) the target variance (a head that predicts the target mean)

For the kinds trained with a cross-entropy the accepted range has two ends. A
head with PyTorch's default initialisation gives near-uniform predictions, so
its loss is ln C (a little above, from the spread of its random logits). A head
whose bias is set to the log of the class frequencies, as Karpathy recommends,
predicts the prior and gets its entropy H, the lowest loss any constant
prediction reaches. Both are healthy; `expected` in the evidence is H for
classification, binary and multilabel (the best constant prediction; it equals
ln C for balanced classes), and ln V for a language model, whose unigram
distribution is usually far from uniform and which an untrained model has no
reason to know. A loss far above the range means over-confident initial
outputs; far below it, a model that already knows something (pretrained
weights, or labels leaking into the inputs).

The loss is measured per item on up to `max_items` evenly spaced training items
in eval mode without gradients. Over-confidence shows in two numbers, and
either one flags it:

- the excess: how far the lower end of the loss's 95% confidence interval lies
  above the top of the range, as a fraction of it (warn above `WARN_EXCESS`,
  fail above `FAIL_EXCESS`). It catches confident outputs that are wrong on average.
- the spread: how much the predictions change from item to item, in nats (the
  entropy of the mean prediction minus the mean entropy of the predictions), as
  a fraction of the top of the range (warn above `WARN_SPREAD`, fail above
  `FAIL_SPREAD`). A
  well-initialised model predicts nearly the same for every input, so this is
  near 0 whether its head predicts uniform or the prior. It catches confident
  outputs that happen to be right on average, which the loss alone misses.

For regression the same two numbers are the lower end of the interval over the
target variance (`WARN_RATIO`, `FAIL_RATIO`) and the variance of the outputs
over the target variance (`WARN_OUTPUT_VARIANCE`, `FAIL_OUTPUT_VARIANCE`). The outputs are also
checked for two classic bugs: outputs that are already probabilities (a
softmax in front of CrossEntropyLoss) and (log-)probabilities normalised over
the wrong dimension (the batch, or the sequence). A negative loss is impossible
for a cross-entropy or a squared error.

The measurements behind the thresholds are in docs/calibration.md ("initialization").
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device
from dltips.findings import Finding
from dltips.predict import evenly_spaced, predict
from dltips.task import DEFAULT_LOSSES, IGNORE_INDEX, Task, normalised_form, read_targets

__all__ = ["ExpectedLoss", "check_initial_loss", "expected_initial_loss"]

TIP = "initialization"
MAX_ITEMS = 512  # training items measured, by default

# Cross-entropy kinds. "Excess": how far the lower end of the loss's 95% interval lies above the top of the
# healthy range, as a fraction of it. "Spread": how much the predictions depend on the input, in nats
# (entropy of the mean prediction minus the mean entropy of the predictions), as a fraction of the top.
WARN_EXCESS = 0.10
FAIL_EXCESS = 0.50
WARN_SPREAD = 0.08
FAIL_SPREAD = 0.25
LOW_FRACTION = 0.10  # upper end of the interval below the bottom of the range by this fraction: "below"
# Regression with MSE. "Ratio": lower end of the loss's interval / target variance. "Spread": variance of
# the outputs / target variance.
WARN_RATIO = 1.3
FAIL_RATIO = 4.0
WARN_OUTPUT_VARIANCE = 0.1
FAIL_OUTPUT_VARIANCE = 1.0
LOW_RATIO = 0.7
_LABEL_SCAN = 4096  # training items read for the label prior when labels are not one tensor
_LM_VALUES = 2**24  # most logits kept for a language model (items are reduced to fit)
FLOAT_SLACK = 1e-6  # relative rounding of a float32 mean loss: a mean this close to the range is inside it


@dataclass
class ExpectedLoss:
    """What an untrained model's loss should be, from the training targets alone.

    `low` and `high` bound the healthy range (equal for regression, where
    `high` is the variance and the tolerance is a ratio). `expected` is the
    reference reported as the ratio's denominator. `extra` holds the numbers
    reported beside it (ln_c or ln_v, the prior or unigram entropy, the target
    mean).
    """

    expected: float
    low: float
    high: float
    extra: dict


def expected_initial_loss(task: Task) -> ExpectedLoss:
    """The initial loss the task implies, computed from its training targets."""
    y = task.counted_targets(training_targets(task.train))
    kind = task.kind
    if kind in ("classification", "language-model"):
        counted = y[y != IGNORE_INDEX].long().flatten()
        counts = torch.bincount(counted, minlength=task.n_classes).double()
        h = entropy(counts / counts.sum())
        log_k = math.log(task.n_classes)
        if kind == "classification":
            return ExpectedLoss(h, min(h, log_k), log_k, {"ln_c": log_k, "prior_entropy": h})
        return ExpectedLoss(log_k, min(h, log_k), log_k, {"ln_v": log_k, "unigram_entropy": h})
    if kind in ("binary", "multilabel"):
        y = y.double().reshape(len(y), -1) if kind == "multilabel" else y.double().reshape(-1, 1)
        h = float(sum(_binary_entropy(float(p)) for p in y.mean(0)) / y.shape[1])
        return ExpectedLoss(h, h, math.log(2), {"ln_2": math.log(2), "prior_entropy": h,
                                                 "positive_rate": y.mean().item()})
    y = y.double().reshape(len(y), -1)
    variance = float(y.var(0, unbiased=False).mean())
    mean_sq = float(y.mean(0).pow(2).mean())
    return ExpectedLoss(variance, variance, variance, {"target_variance": variance, "target_mean": y.mean().item(),
                                                       "target_mean_squared": mean_sq})


def training_targets(data: Dataset, limit: int = _LABEL_SCAN) -> torch.Tensor:
    """The targets of a dataset: all of them for a TensorDataset (or a Subset of one), else up to `limit`
    (flattened and joined when they differ in shape, as sequences of different lengths do)."""
    if isinstance(data, TensorDataset) or (isinstance(data, Subset) and isinstance(data.dataset, TensorDataset)):
        return read_targets(data)
    return read_targets(data, evenly_spaced(len(data), limit))


def check_initial_loss(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
) -> list[Finding]:
    """Compare the untrained model's loss with the loss the task implies (tip `initialization`).

    Runs a copy of `model` (default `task.model`; the model itself is not touched) in eval mode
    on up to `max_items` (default `MAX_ITEMS`) evenly spaced training items (fewer for a language
    model with a large vocabulary, to bound the memory held by its logits). The check draws no
    random numbers: `seed` and `deadline` are accepted for the common check signature.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    max_items = max_items or MAX_ITEMS
    model = copy.deepcopy(model if model is not None else task.model)
    device = resolve_device(device, model)
    model.to(device)
    n_items = min(max_items, _lm_item_limit(task)) if task.kind == "language-model" else max_items
    preds = predict(model, task, task.train, indices=evenly_spaced(len(task.train), n_items), device=device)
    losses = preds.losses
    n = len(losses)
    measured = float(losses.mean())
    half = 1.96 * float(losses.std()) / math.sqrt(n) if n > 1 else math.inf
    ref = expected_initial_loss(task)
    evidence = {
        "measured": measured,
        "expected": ref.expected,
        "range": [ref.low, ref.high],
        "interval": [measured - half, measured + half],
        "n_items": n,
        "ratio": measured / ref.expected if ref.expected > 0 else None,
        "default_loss": _is_default_loss(task),
        **ref.extra,
        **_output_stats(task, preds.outputs, ref),
    }
    verdict = _verdict(task, preds.outputs, losses, evidence)
    evidence["problem"] = verdict.problem
    figure = _loss_figure(losses, ref, task.kind)
    return [Finding(TIP, verdict.status, verdict.title, verdict.message, verdict.fix, evidence, [figure])]


def _output_stats(task: Task, outputs: torch.Tensor, ref: ExpectedLoss) -> dict:
    """How confident and how input-dependent the initial predictions are.

    `prediction_spread` (nats) is the entropy of the mean prediction minus the
    mean entropy of the predictions: zero when every item gets the same
    prediction (uniform or the prior, both healthy), large when the random
    weights already make confident, input-dependent guesses.
    """
    out = outputs.double()
    if task.kind == "regression":
        variance = ref.extra["target_variance"]
        spread = float(out.reshape(len(out), -1).var(0, unbiased=False).mean())
        return {"output_variance": spread, "output_variance_ratio": spread / variance if variance > 0 else None,
                "output_mean": float(out.mean())}
    if task.kind in ("binary", "multilabel"):
        q = torch.sigmoid(out.reshape(len(out), -1))
        q = torch.stack([q, 1 - q], -1)  # (items, labels, 2)
        spread = float((_entropy_rows(q.mean(0)) - _entropy_rows(q).mean(0)).mean())
        return {"prediction_spread": spread, "spread_fraction": spread / ref.high,
                "mean_probability": float(q[..., 0].mean())}
    dim = 1 if task.kind == "classification" else out.dim() - 1
    q = F.softmax(out, dim).movedim(dim, -1).reshape(-1, out.shape[dim])
    mean_q = q.mean(0)
    spread = float(_entropy_rows(mean_q) - _entropy_rows(q).mean())
    stats = {"prediction_spread": spread, "spread_fraction": spread / ref.high,
             "mean_probability_range": [float(mean_q.min()), float(mean_q.max())]}
    if task.kind == "classification":
        stats["mean_probability_per_class"] = mean_q.tolist() if len(mean_q) <= 100 else None
    return stats


@dataclass
class _Verdict:
    status: str
    title: str
    message: str
    fix: str | None = None
    problem: str | None = None  # a short tag kept in the evidence: "too-high", "probabilities", ...


def _verdict(task: Task, outputs: torch.Tensor, losses: torch.Tensor, ev: dict) -> _Verdict:
    """The verdict from the measured losses and outputs; bugs in the outputs come before the loss level."""
    kind, measured = task.kind, ev["measured"]
    lo_ci, hi_ci = ev["interval"]
    numbers = f"mean loss {measured:.4g} (95% interval {lo_ci:.4g} to {hi_ci:.4g}, {ev['n_items']} training items)"
    cross_entropy = kind != "regression"
    negative = int((losses < -1e-6).sum())
    if negative and (cross_entropy or ev["default_loss"]):
        what = "a cross-entropy" if cross_entropy else "a squared error"
        return _Verdict(
            "fail", "The loss at initialisation is negative",
            message=(f"The untrained model's {numbers}; {negative} of {len(losses)} items have a negative loss, "
                     f"which {what} cannot have."),
            fix=("Check the loss's sign and what it receives: nll_loss expects log-probabilities (log_softmax), "
                 "not probabilities; a loss written by hand may be missing a minus sign."),
            problem="negative-loss")
    shape = _normalisation(kind, outputs, task.batch_size) if kind in ("classification", "language-model") else None
    if shape is not None and shape["wrong_dim"] is not None:
        dim, form = shape["wrong_dim"], shape["wrong_form"]
        where = "the batch" if dim == 0 else f"dimension {dim}"
        class_dim = 1 if kind == "classification" else -1
        return _Verdict(
            "fail", f"The outputs are {form} normalised over {where}, not over the classes",
            message=(f"The model's outputs are {form} that sum to 1 over {where} (dimension {dim}) instead of over "
                     f"the class dimension, so each prediction depends on the other items. The untrained model's "
                     f"{numbers}."),
            fix=(f"Normalise over the class dimension (log_softmax(dim={class_dim})), or return raw logits and let "
                 "the loss normalise them."),
            problem="wrong-dimension")
    if shape is not None and shape["probabilities"]:
        fix = ("Remove the softmax at the end of the model and return logits; apply softmax only when you need "
               "probabilities at inference.")
        known = "but cross-entropy applies" if ev["default_loss"] else "and if your loss is a cross-entropy, it applies"
        message = (f"The model's outputs are already probabilities (in [0, 1], summing to 1 over the classes), "
                   f"{known} its own log-softmax, so predictions are squashed towards uniform and gradients are "
                   f"tiny. The untrained model's {numbers}.")
        if ev["default_loss"]:
            return _Verdict("fail", "Softmax before CrossEntropyLoss", message, fix, "probabilities")
        return _Verdict("warn", "The outputs are already probabilities", message, fix, "probabilities")
    if cross_entropy:
        return _entropy_verdict(kind, numbers, ev)
    if not ev["default_loss"]:
        return _Verdict(
            "info", "Initial loss measured (custom regression loss: no expected value)",
            message=(f"The untrained model's {numbers}; the target variance is {ev['expected']:.4g}. An expected "
                     "value is known only for the mean squared error."))
    return _regression_verdict(numbers, ev)


def _entropy_verdict(kind: str, numbers: str, ev: dict) -> _Verdict:
    measured, (low, high) = ev["measured"], ev["range"]
    lo_ci, hi_ci = ev["interval"]
    top = {"classification": "ln C", "language-model": "ln V"}.get(kind, "ln 2")
    bottom = "unigram entropy" if kind == "language-model" else "prior entropy"
    span = f"{low:.4g} ({bottom}) to {high:.4g} ({top})"
    custom = "" if ev["default_loss"] else " (the Task's own loss; the range assumes a cross-entropy)"
    excess = (lo_ci - high) / high
    spread = ev["spread_fraction"]
    if (low - hi_ci) / high > LOW_FRACTION:
        return _Verdict(
            "info", f"The loss at initialisation is below the {bottom}",
            message=(f"The untrained model's {numbers}, below the expected range {span}{custom}: it already "
                     "predicts better than any constant. Expected for pretrained weights; otherwise check that the "
                     "labels do not leak into the inputs."),
            problem="below")
    if excess > WARN_EXCESS or spread > WARN_SPREAD:
        return _Verdict(
            "fail" if excess > FAIL_EXCESS or spread > FAIL_SPREAD else "warn",
            f"Over-confident outputs at initialisation (loss {measured:.3g}, {top} = {high:.3g})",
            message=(f"The untrained model's {numbers}, {_position(measured, lo_ci, hi_ci, low, high, span)}"
                     f"{custom}; the predictions already differ from item to item by "
                     f"{ev['prediction_spread']:.3g} nats ({spread:.0%} of {top}). A well-initialised model "
                     "predicts nearly the same for every input; confident random guesses are often wrong, and the "
                     "first steps are spent undoing them."),
            fix=("Scale down the last layer's initial weights (e.g. by 0.1, or initialise them to zero) and set "
                 "its bias to the log of the class frequencies; check the input scale and any temperature."),
            problem="too-high")
    title = (f"The loss at initialisation ({measured:.3g}) is what the task implies" if _inside(measured, low, high) else
             f"The loss at initialisation ({measured:.3g}) is within tolerance of what the task implies")
    return _Verdict("pass", title, f"The untrained model's {numbers}, "
                                   f"{_position(measured, lo_ci, hi_ci, low, high, span)}{custom}.")


def _inside(measured: float, low: float, high: float) -> bool:
    """Whether the mean loss is in [low, high] up to float32 rounding (losses are computed in float32)."""
    return low - FLOAT_SLACK * abs(low) <= measured <= high + FLOAT_SLACK * abs(high)


def _position(measured: float, lo_ci: float, hi_ci: float, low: float, high: float, span: str) -> str:
    """Where the mean loss lies against the expected range, in words that hold for its numbers.

    "Within the expected range" is said only for a mean inside [low, high]. A mean outside it is said
    to be above or below it, by how much, and whether its 95% interval is within the tolerance the
    verdict applies (WARN_EXCESS of the top above it, LOW_FRACTION of the top below it).
    """
    if _inside(measured, low, high):
        return f"within the expected range {span}"
    if measured > high:
        excess = (lo_ci - high) / high
        side = "within" if excess <= WARN_EXCESS else "beyond"
        where = (f"the lower end of its 95% interval is {excess:.1%} above the top" if excess > 0 else
                 "its 95% interval reaches into the range")
        return (f"{(measured - high) / high:.1%} above the top of the expected range {span}, {side} the "
                f"{WARN_EXCESS:.0%} tolerance ({where})")
    short = (low - hi_ci) / high
    side = "within" if short <= LOW_FRACTION else "beyond"
    where = (f"the upper end of its 95% interval is {low - hi_ci:.3g} below the bottom" if short > 0 else
             "its 95% interval reaches into the range")
    return (f"{low - measured:.3g} below the bottom of the expected range {span}, {side} the tolerance of "
            f"{LOW_FRACTION:.0%} of the top ({where})")


def _regression_verdict(numbers: str, ev: dict) -> _Verdict:
    measured, variance = ev["measured"], ev["expected"]
    lo_ci, hi_ci = ev["interval"]
    if variance <= 0:
        return _Verdict(
            "info", "The training targets are constant",
            message=(f"The untrained model's {numbers}; every training target has the same value, so no expected "
                     "loss can be given."),
            problem="constant-targets")
    ratio, low_ratio, spread = measured / variance, lo_ci / variance, ev["output_variance_ratio"]
    mean, mean_sq = ev["target_mean"], ev["target_mean_squared"]
    if hi_ci / variance < LOW_RATIO:
        return _Verdict(
            "info", "The loss at initialisation is below the target variance",
            message=(f"The untrained model's {numbers}, below the target variance {variance:.4g}: it already "
                     "predicts better than the mean. Expected for pretrained weights; otherwise check that the "
                     "targets do not leak into the inputs."),
            problem="below")
    if low_ratio <= WARN_RATIO and spread <= WARN_OUTPUT_VARIANCE:
        inside = LOW_RATIO <= ratio <= WARN_RATIO
        title = (f"The loss at initialisation ({measured:.3g}) matches the target variance" if inside else
                 f"The loss at initialisation ({measured:.3g}) is within tolerance of the target variance")
        return _Verdict("pass", title, f"The untrained model's {numbers}; the target variance is {variance:.4g} "
                                       f"({_ratio_position(ratio, low_ratio, hi_ci / variance)}).")
    status = "fail" if low_ratio > FAIL_RATIO or spread > FAIL_OUTPUT_VARIANCE else "warn"
    output_mean = ev["output_mean"]
    if low_ratio > WARN_RATIO and mean_sq > 0.5 * (measured - variance):
        cause = (f"Most of the excess comes from the targets' mean ({mean:.4g}) being far from the model's "
                 "initial outputs, which are near 0.")
        fix = (f"Set the final layer's bias to the target mean ({mean:.4g}), or standardise the targets "
               "(subtract the mean, divide by the standard deviation) and undo it at prediction time.")
        problem = "target-offset"
    elif spread > WARN_OUTPUT_VARIANCE:
        cause = (f"The variance of the initial outputs is {spread:.2g} times the targets': the random weights "
                 "already make large, input-dependent guesses.")
        fix = ("Scale down the last layer's initial weights (e.g. by 0.1, or initialise them to zero) and check "
               "the scale of the inputs.")
        problem = "too-high"
    else:
        cause = (f"The initial outputs vary little ({spread:.2g} times the targets' variance) but average "
                 f"{output_mean:.4g}, far from the targets' mean ({mean:.4g}).")
        fix = (f"Set the final layer's bias to the target mean ({mean:.4g}) and check what shifts the initial "
               "outputs (a bias initialised far from 0, an offset added in the forward pass).")
        problem = "output-offset"
    return _Verdict(status, f"The loss at initialisation is {ratio:.3g} times the target variance",
                    f"The untrained model's {numbers}; a model that predicts the target mean gets the variance, "
                    f"{variance:.4g} ({_ratio_position(ratio, low_ratio, hi_ci / variance)}). {cause}", fix, problem)


def _ratio_position(ratio: float, low_ratio: float, high_ratio: float) -> str:
    """The loss over the target variance, said "within" the accepted ratios only when it is inside them."""
    band = f"{LOW_RATIO:g} to {WARN_RATIO:g}"
    if LOW_RATIO <= ratio <= WARN_RATIO:
        return f"ratio {ratio:.2f}, within the accepted ratios {band}"
    side = "within" if low_ratio <= WARN_RATIO else "beyond"
    if ratio > WARN_RATIO:
        return (f"ratio {ratio:.2f}, above the accepted ratios {band}; the lower end of its 95% interval gives "
                f"{low_ratio:.2f}, {side} the tolerance of {WARN_RATIO:g}")
    side = "within" if high_ratio >= LOW_RATIO else "beyond"
    return (f"ratio {ratio:.2f}, below the accepted ratios {band}; the upper end of its 95% interval gives "
            f"{high_ratio:.2f}, {side} the tolerance of {LOW_RATIO:g}")


def _normalisation(kind: str, outputs: torch.Tensor, batch_size: int) -> dict:
    """Whether outputs are (log-)probabilities over the class dimension, or normalised over another one."""
    out = outputs.double()
    class_dim = 1 if kind == "classification" else out.dim() - 1
    result = {"probabilities": normalised_form(out, class_dim) == "probabilities", "wrong_dim": None, "wrong_form": None}
    if normalised_form(out, class_dim) is not None:
        return result
    for dim in range(out.dim()):
        if dim == class_dim:
            continue
        if dim == 0:  # normalised within each batch the model saw: check every full chunk of at least 2 items
            chunks = [c for c in out.split(batch_size) if len(c) >= 2 and len(c) == min(batch_size, len(out))]
            forms = {normalised_form(c, 0) for c in chunks}
            form = forms.pop() if len(forms) == 1 and chunks else None
        else:
            form = normalised_form(out, dim) if out.shape[dim] >= 2 else None
        if form is not None:
            result["wrong_dim"] = dim
            result["wrong_form"] = "log-probabilities" if form == "log-probabilities" else "probabilities"
            return result
    return result


def _is_default_loss(task: Task) -> bool:
    """Whether the Task's loss is the kind's default (or the same function under torch's names)."""
    loss = task.loss
    if loss is None or loss is DEFAULT_LOSSES[task.kind]:
        return True
    same = {
        "classification": (F.cross_entropy, nn.CrossEntropyLoss),
        "language-model": (F.cross_entropy, nn.CrossEntropyLoss),
        "binary": (F.binary_cross_entropy_with_logits, nn.BCEWithLogitsLoss),
        "multilabel": (F.binary_cross_entropy_with_logits, nn.BCEWithLogitsLoss),
        "regression": (F.mse_loss, nn.MSELoss),
    }[task.kind]
    return loss is same[0] or (isinstance(loss, same[1]) and getattr(loss, "reduction", "mean") == "mean")


def entropy(p: torch.Tensor) -> float:
    """Entropy in nats of the probabilities `p` (zeros ignored)."""
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def _entropy_rows(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) along the last dimension."""
    return -(p * p.clamp_min(1e-300).log()).sum(-1)


def _lm_item_limit(task: Task) -> int:
    """Sequences whose logits fit in `_LM_VALUES` values (at least 8)."""
    tokens = torch.as_tensor(task.train[0][1]).numel()
    return max(8, _LM_VALUES // max(1, tokens * task.n_classes))


def _binary_entropy(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log(p) + (1 - p) * math.log(1 - p))


def _loss_figure(losses: torch.Tensor, ref: ExpectedLoss, kind: str) -> dict:
    """Sorted per-item losses (at most 200 points) against the expected range."""
    ordered = losses.sort().values
    keep = evenly_spaced(len(ordered), 200)
    n = len(ordered)
    return {
        "kind": "lines",
        "title": "Per-item loss at initialisation (sorted)",
        "x": [i / max(n - 1, 1) for i in keep],
        "series": {"per-item loss": [float(ordered[i]) for i in keep],
                   "expected": [ref.expected] * len(keep)},
        "xlabel": "fraction of items",
        "ylabel": "loss" + (" per token" if kind == "language-model" else ""),
        "xlog": False,
        "ylog": False,
        "band": [ref.low * LOW_RATIO, ref.high * WARN_RATIO] if kind == "regression" else [ref.low, ref.high],
    }
