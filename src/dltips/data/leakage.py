"""Too good to be true: an input feature that gives the label away.

A column derived from the label (the label itself, an encoding of it, a value recorded after the
outcome) makes the validation error near zero and every error gap meaningless: the model reads the
answer instead of learning the task. The check looks at each input feature alone, on up to
`MAX_ITEMS` training items (inputs flattened; a dict's values concatenated):

- classes: a feature with few distinct values (at most `MAX_LEVELS` of the items) whose every value
  goes with one label on at least `PURITY` of the items, where always predicting the most frequent
  class is right less often than that;
- regression: a feature whose absolute Pearson correlation with a target column is at least
  `CORRELATION`.

Calibration (the 39 tasks of tests/calibration/zoo.py, healthy and broken for other causes): the
highest purity of a few-valued feature is 0.29 (digits' pixels, 17 levels; 0.17 with random labels),
and the highest absolute correlation 0.63 (friedman1; diabetes 0.61, the messy-streets codes 0.58); a
label copied into a column or a blank pixel gives purity 1.0, a regression target copied gives
correlation 1.0 (tests/data/test_leakage.py). Each check takes 1 to 13 ms there (100 ms on big-mlp).
Continuous features with more than `MAX_LEVELS` distinct values are left to the correlation rule
only (a unique value per item "determines" any label).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device
from dltips.findings import Finding, skipped_for_time
from dltips.task import Task

__all__ = ["check_target_leak"]

TIP = "error-gaps"
MAX_ITEMS = 4096
MAX_FEATURES = 4096
MAX_LEVELS = 0.1  # a feature with at most this share of the items as distinct values is read as levels
PURITY = 0.999
CORRELATION = 0.9999


def _features(x: Any) -> torch.Tensor | None:
    """(N, F) float features from a batch of inputs, or None when they are not tensors."""
    if isinstance(x, dict):
        parts = [_features(v) for _, v in sorted(x.items())]
        return None if not parts or any(p is None for p in parts) else torch.cat(parts, 1)
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return None
    return x.reshape(len(x), -1).double()


def check_target_leak(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
) -> list[Finding]:
    """Whether one input feature alone determines the label (see the module docstring); one Finding.

    fail naming the feature, pass otherwise; skip for a language model (its inputs are its labels, shifted) or
    inputs that are not tensors. The model is not run.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    resolve_device(device, task.model if model is None else model)  # validated for the common form; not used
    if task.kind == "language-model":
        return [Finding(TIP, "skip", "No leak check for a language model",
                        "A language model's labels are its inputs shifted by one token, so a feature that "
                        "predicts them is the task itself (the causal-leak probe covers a model that sees the "
                        "future).")]
    n = min(MAX_ITEMS if max_items is None else max_items, len(task.train))
    x, y = task.first_batch(task.train, n)
    features = _features(x)
    if features is None:
        return [Finding(TIP, "skip", "No tensor inputs to check for a leak",
                        f"The inputs are {type(x).__name__}, not tensors or dicts of tensors.")]
    features = features[:, :MAX_FEATURES]
    evidence = {"items": n, "features": features.shape[1], "limits": {
        "max_levels": MAX_LEVELS, "purity": PURITY, "correlation": CORRELATION}}
    if task.kind == "regression":
        column, score = _most_correlated(features, y.double().reshape(n, -1))
        evidence.update({"feature": column, "correlation": score})
        if score is not None and score >= CORRELATION:
            return [_leak(column, f"its correlation with the target is {score:.6f}", evidence)]
        return [_clean(f"no feature's absolute correlation with the target reaches {CORRELATION} (highest "
                       f"{score:.3g}, feature {column})" if score is not None else "no feature varies", evidence)]
    labels = y.long().reshape(n, -1)[:, 0] if task.kind in ("binary", "multilabel") else y.long().reshape(n)
    baseline = float(torch.bincount(labels - labels.min()).max()) / n
    best, best_column, levels = 0.0, None, None
    for j in range(features.shape[1]):
        if deadline is not None and deadline.expired():
            return [skipped_for_time(TIP, 0.01 * (features.shape[1] - j),
                                     f"{j} of {features.shape[1]} features examined", evidence)]
        values, inverse = torch.unique(features[:, j], return_inverse=True)
        if len(values) < 2 or len(values) > max(2, MAX_LEVELS * n):
            continue
        purity = _purity(inverse, labels - labels.min(), len(values))
        if purity > best:
            best, best_column, levels = purity, j, len(values)
    evidence.update({"feature": best_column, "purity": best, "levels": levels, "baseline_accuracy": baseline})
    if best_column is not None and best >= PURITY and baseline < PURITY:
        return [_leak(best_column, f"each of its {levels} values goes with one label on {best:.2%} of {n} "
                                   f"training items (always predicting the most frequent class: {baseline:.1%})",
                      evidence)]
    words = (f"the purest few-valued feature ({best_column}, {levels} values) matches the labels on {best:.1%} "
             f"of the items" if best_column is not None else "no feature has few enough distinct values to "
             "read as levels")
    return [_clean(words, evidence)]


def _purity(inverse: torch.Tensor, labels: torch.Tensor, levels: int) -> float:
    """The share of items whose label is the most frequent one among the items with their feature value."""
    classes = int(labels.max()) + 1
    counts = torch.zeros(levels * classes, dtype=torch.long).index_add_(
        0, inverse * classes + labels, torch.ones_like(labels))
    return float(counts.view(levels, classes).amax(1).sum()) / len(labels)


def _most_correlated(features: torch.Tensor, targets: torch.Tensor) -> tuple[int | None, float | None]:
    f = features - features.mean(0)
    t = targets - targets.mean(0)
    norms = f.norm(dim=0)[:, None] * t.norm(dim=0)[None, :]
    valid = norms > 0
    if not bool(valid.any()):
        return None, None
    r = torch.where(valid, (f.T @ t) / norms.clamp_min(1e-300), torch.zeros_like(norms)).abs().amax(1)
    column = int(r.argmax())
    value = float(r[column])
    return column, value if math.isfinite(value) else None


def _leak(column: int, words: str, evidence: dict) -> Finding:
    return Finding(TIP, "fail", f"Input feature {column} gives the label away",
                   f"Input feature {column} alone determines the label: {words}. A model reads it instead of "
                   "learning the task, so its validation error (and every error gap) is too good to be true.",
                   f"Remove feature {column} from the inputs: it is computed from the label, or recorded after "
                   "the outcome it should predict.", {**evidence, "cause": "target-leak"})


def _clean(words: str, evidence: dict) -> Finding:
    return Finding(TIP, "pass", "No input feature gives the label away", f"On {evidence['items']} training "
                   f"items and {evidence['features']} features: {words}.", None, evidence)
