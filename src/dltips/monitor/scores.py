"""Validation metrics as additive sums that stream across batches and ranks.

`metric_sums` turns one batch into sums that add up across batches and across
processes (a confusion matrix, true/false positive counts, error sums), kept on
the device; `add_sums` accumulates them, `reduce_sums` adds them over ranks with
one all-reduce of one packed tensor, and `metrics_from_sums` turns the totals
into the kind's metrics, with scikit-learn's definitions. `evaluate` (and so
`fit`) uses them once per evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dltips.core.params import int_at_least, one_of
from dltips.task import IGNORE_INDEX, KINDS, count_items

# The metrics of each kind, in the order `metrics_from_sums` returns them.
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("loss", "accuracy", "balanced_accuracy", "macro_f1"),
    "binary": ("loss", "accuracy", "balanced_accuracy", "f1", "precision", "recall"),
    "multilabel": ("loss", "accuracy", "macro_f1"),
    "regression": ("loss", "rmse", "mae", "mape"),
    "language-model": ("loss", "perplexity", "accuracy"),
}
MAPE_EPSILON = float(np.finfo(np.float64).eps)  # as sklearn.metrics.mean_absolute_percentage_error
# Above this many classes a classification keeps per-class counts (true, predicted, hits) instead of
# the n_classes x n_classes confusion matrix: the same metrics, in memory linear in the classes.
MAX_CONFUSION_CLASSES = 1024


def sum_shapes(kind: str, n_classes: int | None = None) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the sums `metric_sums` returns for `kind`."""
    one_of("kind", kind, KINDS)
    if kind in ("classification", "multilabel"):
        what = "classes" if kind == "classification" else "labels"
        n_classes = int_at_least(f"n_classes (the number of {what} of kind {kind!r})", n_classes)
    base: dict[str, tuple[int, ...]] = {"items": (), "loss": ()}
    if kind == "classification":
        if n_classes <= MAX_CONFUSION_CLASSES:
            return base | {"confusion": (n_classes, n_classes)}
        return base | {"true": (n_classes,), "predicted": (n_classes,), "hits": (n_classes,)}
    if kind == "binary":
        return base | {"tp": (), "fp": (), "fn": (), "tn": ()}
    if kind == "multilabel":
        return base | {"correct": (), "labels": (), "tp": (n_classes,), "fp": (n_classes,), "fn": (n_classes,)}
    if kind == "regression":
        return base | {"values": (), "abs_error": (), "sq_error": (), "pct_error": ()}
    return base | {"correct": (), "labels": ()}


def zero_sums(kind: str, n_classes: int | None = None, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Sums of no batch at all (float64 zeros): the start of a running total, also on a rank with no data."""
    shapes = sum_shapes(kind, n_classes)
    return {k: torch.zeros(shape, dtype=torch.float64, device=device) for k, shape in shapes.items()}


def metric_sums(kind: str, output: torch.Tensor, target: torch.Tensor, loss: torch.Tensor,
                n_classes: int | None = None) -> dict[str, torch.Tensor]:
    """One batch's additive sums for the metrics of `kind`, as float64 tensors on the batch's device.

    `loss` is the batch's mean loss (over items; over counted tokens for a
    language model). The values add up across batches and ranks, so the metrics
    of a whole dataset are `metrics_from_sums(kind, sum of every batch's sums)`.
    Nothing is read back to the host. `n_classes` defaults to the output's
    class (or label) dimension.
    """
    one_of("kind", kind, KINDS)
    output, loss = output.detach(), loss.detach()
    n = _count(count_items(kind, target), output.device)
    # a batch with nothing counted (every token ignored) has a NaN mean loss and adds nothing
    sums = {"items": n, "loss": torch.where(n > 0, loss.double() * n, torch.zeros_like(n))}
    if kind == "classification":
        sums |= _class_counts(output, target, n_classes)
    elif kind == "binary":
        predicted, truth = output.reshape(target.shape) > 0, target > 0.5
        for name, p, t in (("tp", True, True), ("fp", True, False), ("fn", False, True), ("tn", False, False)):
            sums[name] = ((predicted == p) & (truth == t)).sum().double()
    elif kind == "multilabel":
        predicted, truth = _labels_last(output > 0, n_classes), _labels_last(target > 0.5, n_classes)
        sums["correct"] = (predicted == truth).sum().double()
        sums["labels"] = _count(truth.numel(), output.device)
        sums["tp"] = (predicted & truth).sum(0).double()
        sums["fp"] = (predicted & ~truth).sum(0).double()
        sums["fn"] = (~predicted & truth).sum(0).double()
    elif kind == "regression":
        y = target.double()
        error = output.reshape(target.shape).double() - y
        sums["values"] = _count(y.numel(), output.device)
        sums["abs_error"] = error.abs().sum()
        sums["sq_error"] = error.pow(2).sum()
        sums["pct_error"] = (error.abs() / y.abs().clamp_min(MAPE_EPSILON)).sum()
    else:  # language model: next-token accuracy over the counted tokens
        counted = target != IGNORE_INDEX
        sums["correct"] = ((output.argmax(-1) == target) & counted).sum().double()
        sums["labels"] = counted.sum().double()
    return sums


def _count(n: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A count as a float64 scalar on `device`, filled there (no copy from the host, no sync)."""
    if isinstance(n, torch.Tensor):
        return n.to(device=device, dtype=torch.float64)
    return torch.full((), float(n), dtype=torch.float64, device=device)


def add_sums(total: dict[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add `batch` into `total` in place (same names and shapes) and return `total`."""
    if total.keys() != batch.keys():
        raise ValueError(f"cannot add sums with names {sorted(batch)} to sums with names {sorted(total)}")
    for name, value in batch.items():
        total[name] += value
    return total


def reduce_sums(sums: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum `sums` over all processes with one all-reduce of one packed tensor; the result is on the CPU.

    Without an initialised process group (or with one process) the sums are only moved to the CPU.
    """
    names = list(sums)
    shapes = [tuple(sums[k].shape) for k in names]
    packed = torch.cat([sums[k].reshape(-1).to(torch.float64) for k in names])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(packed)
    pieces = packed.cpu().split([math.prod(s) for s in shapes])
    return {k: p.reshape(s) for k, p, s in zip(names, pieces, shapes)}


def metrics_from_sums(kind: str, sums: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The metrics of `kind` from summed `metric_sums`, each name preceded by `prefix` (e.g. "valid_").

    Definitions follow scikit-learn: balanced accuracy is the mean recall over
    the classes present in the targets; macro-F1 (classification) averages over
    the classes present in the targets or the predictions; multilabel macro-F1
    averages over every label; a precision, recall or F1 with a zero
    denominator is 0; MAPE divides by max(|y|, float64 eps). With no items a
    metric is NaN.
    """
    one_of("kind", kind, KINDS)
    needed = set(sum_shapes(kind, 1))
    if kind == "classification" and "confusion" not in sums:
        needed = set(sum_shapes(kind, MAX_CONFUSION_CLASSES + 1))
    if not needed <= set(sums):
        raise ValueError(f"sums for kind {kind!r} need the names {sorted(needed)}; got {sorted(sums)} "
                         "(make them with metric_sums for the same kind)")
    s = {k: torch.as_tensor(v, dtype=torch.float64).cpu() for k, v in sums.items()}
    metrics = {"loss": _ratio(_item(s["loss"]), _item(s["items"]))}
    if kind == "classification" and "confusion" in s:
        confusion = s["confusion"]
        metrics |= _class_metrics(confusion.sum(1), confusion.sum(0), confusion.diagonal())
    elif kind == "classification":
        metrics |= _class_metrics(s["true"], s["predicted"], s["hits"])
    elif kind == "binary":
        metrics |= _binary_metrics(*(_item(s[k]) for k in ("tp", "fp", "fn", "tn")))
    elif kind == "multilabel":
        metrics["accuracy"] = _ratio(_item(s["correct"]), _item(s["labels"]))
        metrics["macro_f1"] = float(_f1(s["tp"], s["fp"], s["fn"]).mean()) if s["tp"].numel() else math.nan
    elif kind == "regression":
        values = _item(s["values"])
        mse = _ratio(_item(s["sq_error"]), values)
        metrics["rmse"] = math.sqrt(mse) if not math.isnan(mse) else math.nan
        metrics["mae"] = _ratio(_item(s["abs_error"]), values)
        metrics["mape"] = _ratio(_item(s["pct_error"]), values)
    else:
        loss = metrics["loss"]
        metrics["perplexity"] = math.exp(min(loss, 700.0)) if not math.isnan(loss) else math.nan
        metrics["accuracy"] = _ratio(_item(s["correct"]), _item(s["labels"]))
    return {prefix + name: metrics[name] for name in KIND_METRICS[kind]}


def _class_counts(output: torch.Tensor, target: torch.Tensor, n_classes: int | None) -> dict[str, torch.Tensor]:
    """Counts of (true class, predicted class) on the device, without a host sync.

    {"confusion": the (C, C) matrix, rows true, columns predicted}, or for more
    than MAX_CONFUSION_CLASSES classes the per-class counts {"true",
    "predicted", "hits"}. Targets outside [0, C) (the ignore index) are left out.
    """
    if output.dim() < 2:
        raise ValueError(f"classification output must have shape (batch, classes, ...), got {tuple(output.shape)}")
    c = output.shape[1] if n_classes is None else n_classes
    if output.shape[1] != c:
        raise ValueError(f"classification output must have shape (batch, {c}, ...) (one logit per class), "
                         f"got {tuple(output.shape)}")
    predicted, truth = output.argmax(1).reshape(-1), target.reshape(-1).long()
    counted = (truth >= 0) & (truth < c)
    if c > MAX_CONFUSION_CLASSES:
        return {"true": _bin_counts(truth, counted, c), "predicted": _bin_counts(predicted, counted, c),
                "hits": _bin_counts(truth, counted & (truth == predicted), c)}
    return {"confusion": _bin_counts(truth * c + predicted, counted, c * c).reshape(c, c)}


def _bin_counts(index: torch.Tensor, counted: torch.Tensor, size: int) -> torch.Tensor:
    """How many counted entries fall in each of `size` bins, as float64 (scatter_add: no host sync, deterministic)."""
    cells = torch.where(counted, index, torch.full_like(index, size))  # an extra bin collects the others
    counts = torch.zeros(size + 1, dtype=torch.long, device=index.device)
    counts.scatter_add_(0, cells, torch.ones_like(cells))
    return counts[:-1].double()


def _labels_last(x: torch.Tensor, n_labels: int | None) -> torch.Tensor:
    """(batch, labels, ...) -> (rows, labels)."""
    if x.dim() < 2 or (n_labels is not None and x.shape[1] != n_labels):
        raise ValueError(f"multilabel output and target must have shape (batch, {n_labels}, ...), got {tuple(x.shape)}")
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def _class_metrics(true: torch.Tensor, predicted: torch.Tensor, hits: torch.Tensor) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 from per-class counts of targets, predictions and hits."""
    total = float(true.sum())
    present = true > 0
    seen = present | (predicted > 0)
    recall = hits[present] / true[present]
    f1 = _f1(hits, predicted - hits, true - hits)[seen]
    return {
        "accuracy": _ratio(float(hits.sum()), total),
        "balanced_accuracy": float(recall.mean()) if recall.numel() else math.nan,
        "macro_f1": float(f1.mean()) if f1.numel() else math.nan,
    }


def _binary_metrics(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    recalls = [tp / (tp + fn)] if tp + fn else []
    recalls += [tn / (tn + fp)] if tn + fp else []
    return {
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "balanced_accuracy": sum(recalls) / len(recalls) if recalls else math.nan,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
    }


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    denominator = 2 * tp + fp + fn
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1e-300), torch.zeros_like(tp))


def _item(value: torch.Tensor) -> float:
    return float(value.sum())


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan
