"""Validation metrics that stream across batches and ranks, and a tracker that reads their curves.

`metric_sums` turns one batch into sums that add up across batches and across
processes (a confusion matrix, true/false positive counts, error sums), kept on
the device; `metrics_from_sums` turns the totals into the kind's metrics, with
scikit-learn's definitions. `evaluate` (and so `fit`) uses both, with one
all-reduce of one packed tensor per evaluation.

`MetricTracker` records the metrics of each evaluation and reports two tips:

- `metric-divergence`: metrics that moved together and then parted (accuracy up
  while balanced accuracy falls; validation loss up while accuracy rises), with
  the evaluation where they parted and the objective the user declared.
- `logloss-downstream`: how well the validation loss ranks the evaluations the
  way each downstream metric does (Spearman), and what choosing the checkpoint
  by the lowest loss costs on the objective.

Verdicts. A metric's noise is the larger of its jitter during the run and,
for proportions, the binomial standard error on the validation items; curves
are averaged over 3 neighbouring evaluations. `metric-divergence` warns when,
after one metric's best evaluation, it falls by more than DIVERGENCE_Z noise
units and DIVERGENCE_SHARE of its range while another improves by more than
DIVERGENCE_Z noise units, the falling one having first improved by TOGETHER_Z
(or being the objective). `logloss-downstream` warns when the objective around
the lowest validation loss is worse than at its best by more than COST_Z noise
units and COST_SHARE of its range.

Calibration (docs/calibration.md, "Metric curves"; 2-core CPU): over 130
healthy runs of `fit` (13 configurations x 10 seeds: blobs, spirals, binary,
regression, imbalanced and overlapping classes, label noise) the largest
divergence statistic was 1.34 and the largest cost 1.86 noise units, against
3 for both. Broken runs: a model drifting to the majority class (flagged in
9/10 seeds at LR 3e-4) and an over-confident model on noisy validation labels
(10/10 at 30% noise).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from numbers import Integral
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from dltips.core.callbacks import Callback, FitState
from dltips.findings import Finding
from dltips.task import IGNORE_INDEX, KINDS, count_items

if TYPE_CHECKING:
    from dltips.task import Task

TIP_DIVERGENCE = "metric-divergence"
TIP_LOGLOSS = "logloss-downstream"

# The metrics of each kind, in the order `metrics_from_sums` returns them.
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("loss", "accuracy", "balanced_accuracy", "macro_f1"),
    "binary": ("loss", "accuracy", "balanced_accuracy", "f1", "precision", "recall"),
    "multilabel": ("loss", "accuracy", "macro_f1"),
    "regression": ("loss", "rmse", "mae", "mape"),
    "language-model": ("loss", "perplexity", "accuracy"),
}
HIGHER_IS_BETTER: dict[str, bool] = {
    "loss": False, "accuracy": True, "balanced_accuracy": True, "macro_f1": True, "f1": True,
    "precision": True, "recall": True, "rmse": False, "mae": False, "mape": False, "perplexity": False,
}
PROPORTIONS = frozenset({"accuracy", "balanced_accuracy", "macro_f1", "f1", "precision", "recall"})
PREFIXES = ("valid_", "train_", "test_")
# The objective assumed when none is declared: the first of these that was recorded.
DEFAULT_OBJECTIVES = ("balanced_accuracy", "macro_f1", "mae", "accuracy")
MAPE_EPSILON = float(np.finfo(np.float64).eps)  # as sklearn.metrics.mean_absolute_percentage_error
# Above this many classes a classification keeps per-class counts (true, predicted, hits) instead of
# the n_classes x n_classes confusion matrix: the same metrics, in memory linear in the classes.
MAX_CONFUSION_CLASSES = 1024

# Thresholds (calibrated, see the module docstring and docs/calibration.md).
DIVERGENCE_Z = 3.0  # each metric's move after the parting point, in noise units
DIVERGENCE_SHARE = 0.25  # the worsening metric lost at least this share of its range over the run
TOGETHER_Z = 1.0  # it had first improved by this many noise units: the metrics moved together, then parted
COST_Z = 3.0  # choosing by loss costs the objective this many noise units ...
COST_SHARE = 0.10  # ... and this share of the objective's range over the run
MIN_EVALUATIONS = 3


# ----------------------------------------------------------------------------- streaming sums


def sum_shapes(kind: str, n_classes: int | None = None) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the sums `metric_sums` returns for `kind`."""
    _check_kind(kind)
    if kind in ("classification", "multilabel") and (not isinstance(n_classes, int) or n_classes < 1):
        what = "classes" if kind == "classification" else "labels"
        raise ValueError(f"kind {kind!r} needs n_classes (the number of {what}) as a positive int, got {n_classes!r}")
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
    _check_kind(kind)
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
    _check_kind(kind)
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


def higher_is_better(name: str, declared: Mapping[str, bool] | None = None) -> bool:
    """Whether a larger value of metric `name` is better.

    Knows the metrics of every kind, with or without a "valid_", "train_" or
    "test_" prefix; `declared` gives (or overrides) the direction of other names.
    """
    if declared:
        for candidate in (name, _base_name(name)):
            if candidate in declared:
                return bool(declared[candidate])
    base = _base_name(name)
    if base not in HIGHER_IS_BETTER:
        raise ValueError(f"no direction is known for the metric {name!r}: known names are "
                         f"{', '.join(HIGHER_IS_BETTER)} (optionally prefixed by {', '.join(PREFIXES)}); "
                         f"declare it, e.g. higher_is_better={{{name!r}: True}}")
    return HIGHER_IS_BETTER[base]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _base_name(name: str) -> str:
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


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


# ----------------------------------------------------------------------------- curves


@dataclass
class Record:
    """One evaluation: the optimizer step, the metrics, and how many items they were measured on."""

    step: int
    metrics: dict[str, float]
    n_items: int | None = None


@dataclass
class Curves:
    """The tracked metrics as arrays over evaluations, with each metric's direction and noise level."""

    steps: np.ndarray
    values: dict[str, np.ndarray]
    higher: dict[str, bool]
    noise: dict[str, float]
    n_items: int | None = None
    left_out: dict[str, str] = field(default_factory=dict)  # metric -> why it is not analysed

    def __len__(self) -> int:
        return len(self.steps)

    def goodness(self, name: str) -> np.ndarray:
        """The metric oriented so that larger is better."""
        return self.values[name] if self.higher[name] else -self.values[name]


@dataclass
class Divergence:
    """Two metrics that parted: after `step` one kept improving while the other got worse."""

    improving: str
    worsening: str
    index: int  # the evaluation where they parted: the worsening metric's best (smoothed)
    step: int
    improving_values: tuple[float, float]  # (at the parting evaluation, at the last one)
    worsening_values: tuple[float, float]
    improving_z: float  # each move over its metric's noise
    worsening_z: float
    worsening_share: float  # the worsening metric's fall as a share of its range over the run
    rise_z: float  # how much the worsening metric had improved before, over its noise

    @property
    def parted(self) -> bool:
        """True when the metrics first moved together; False when one got worse from the start."""
        return self.rise_z >= TOGETHER_Z

    @property
    def score(self) -> float:
        return min(self.improving_z, self.worsening_z)


@dataclass
class LossAgreement:
    """How the loss ranks the evaluations against the objective, and what choosing by the loss costs."""

    spearman: dict[str, float]  # metric -> rank correlation of (-loss) with the metric's goodness
    loss_step: int  # the evaluation with the lowest loss
    objective_step: int  # the evaluation with the best objective
    objective_at_loss: float  # the objective there, averaged over the neighbouring evaluations (see `smooth`)
    objective_best: float  # the best of the objective, averaged the same way
    cost: float  # how much worse the objective is at the lowest loss (>= 0)
    noise: float
    cost_z: float
    cost_share: float


def smooth(values: np.ndarray) -> np.ndarray:
    """A centred moving average over 3 evaluations (2 at the ends): damps evaluation noise, keeps turns."""
    v = np.asarray(values, dtype=float)
    if len(v) < 3:
        return v.copy()
    padded = np.concatenate([[np.nan], v, [np.nan]])
    windows = np.stack([padded[:-2], padded[1:-1], padded[2:]])
    return np.nanmean(windows, axis=0)


def curve_noise(values: np.ndarray, proportion: bool = False, n_items: int | None = None) -> float:
    """The noise level of one metric's curve: the larger of two estimates.

    From the run: the robust spread of second differences (a linear trend
    cancels out; white noise of level s gives differences of spread s*sqrt(6)).
    For a proportion measured on n items: the binomial standard error at the
    curve's median p, with the Agresti-Coull adjustment (p' = (pn + 2) / (n + 4))
    so that a proportion stuck at 0 or 1 still has the noise of a couple of
    items. A small floor relative to the curve's scale keeps the level positive.
    """
    v = np.asarray(values, dtype=float)
    run = 0.0
    if len(v) >= 3:
        d2 = v[2:] - 2 * v[1:-1] + v[:-2]
        run = 1.4826 * float(np.median(np.abs(d2))) / math.sqrt(6)
    binomial = 0.0
    if proportion and n_items:
        p = min(max(float(np.median(v)), 0.0), 1.0)
        adjusted = (p * n_items + 2) / (n_items + 4)
        binomial = math.sqrt(adjusted * (1 - adjusted) / (n_items + 4))
    floor = 1e-6 * max(float(np.max(np.abs(v))) if len(v) else 0.0, 1e-12)
    return max(run, binomial, floor)


def divergence_statistics(curves: Curves) -> dict[tuple[str, str], dict[str, float]]:
    """For every ordered pair (improving, worsening) of metrics, the numbers the verdict compares.

    The parting point is the evaluation where the worsening metric's smoothed
    curve (see `smooth`) was best. Before it: "rise_z", the worsening metric's
    gain from the first evaluation, over its noise. From there to the end:
    "worsening_z", its fall over its noise; "share", that fall over its range
    during the run; "improving_z", the other metric's gain over its own noise.
    """
    stats = {}
    smoothed = {name: smooth(curves.goodness(name)) for name in curves.values}
    for worsening, sb in smoothed.items():
        k = int(np.argmax(sb))
        span = float(sb.max() - sb.min())
        drop = float(sb[k] - sb[-1])
        for improving, sa in smoothed.items():
            if improving != worsening:
                stats[(improving, worsening)] = {
                    "index": k,
                    "rise_z": float(sb[k] - sb[0]) / curves.noise[worsening],
                    "improving_z": float(sa[-1] - sa[k]) / curves.noise[improving],
                    "worsening_z": drop / curves.noise[worsening],
                    "share": drop / span if span > 0 else 0.0,
                }
    return stats


def find_divergences(curves: Curves) -> list[Divergence]:
    """Every ordered pair (improving, worsening) of metrics that moved apart, most significant first.

    A pair moved apart when, after the worsening metric's best evaluation, it
    fell by more than DIVERGENCE_Z times its noise and DIVERGENCE_SHARE of its
    range, while the other metric improved by more than DIVERGENCE_Z times its
    own noise. It `parted` when the worsening metric had first improved by
    TOGETHER_Z noise units (the two moved together, then apart); otherwise the
    two disagreed from the start.
    """
    found = []
    for (improving, worsening), st in divergence_statistics(curves).items():
        if st["worsening_z"] <= DIVERGENCE_Z or st["share"] < DIVERGENCE_SHARE or st["improving_z"] <= DIVERGENCE_Z:
            continue
        k = int(st["index"])
        a, b = curves.values[improving], curves.values[worsening]
        found.append(Divergence(improving, worsening, k, int(curves.steps[k]), (float(a[k]), float(a[-1])),
                                (float(b[k]), float(b[-1])), st["improving_z"], st["worsening_z"], st["share"],
                                st["rise_z"]))
    return sorted(found, key=lambda d: -d.score)


def spearman(x: Iterable[float], y: Iterable[float]) -> float:
    """Spearman's rank correlation (ties get their average rank); NaN when either side is constant."""
    a, b = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"spearman needs two 1-D sequences of the same length, got shapes {a.shape} and {b.shape}")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum()) / denominator if denominator > 0 else math.nan


def _average_ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tied = v == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def loss_agreement(curves: Curves, loss: str, objective: str) -> LossAgreement:
    """Rank agreement of the loss with each metric, and the objective lost by choosing the lowest-loss evaluation.

    The cost compares the smoothed objective (see `smooth`) at the evaluation
    with the lowest loss and at the smoothed objective's best: the best single
    value of a noisy curve overstates what choosing by the objective would gain.
    """
    good_loss = curves.goodness(loss)
    rho = {m: spearman(good_loss, curves.goodness(m)) for m in curves.values if m != loss}
    k_loss = int(np.argmax(good_loss))
    objective_good = smooth(curves.goodness(objective))
    k_best = int(np.argmax(objective_good))
    cost = float(objective_good[k_best] - objective_good[k_loss])
    span = float(objective_good.max() - objective_good.min())
    noise = curves.noise[objective]
    averaged = smooth(curves.values[objective])
    return LossAgreement(rho, int(curves.steps[k_loss]), int(curves.steps[k_best]), float(averaged[k_loss]),
                         float(averaged[k_best]), cost, noise, cost / noise, cost / span if span > 0 else 0.0)


# ----------------------------------------------------------------------------- the tracker


class MetricTracker(Callback):
    """Records the metrics of each evaluation and reports where they part and how well the loss tracks them.

    Plug it into `dltips.fit(..., callbacks=[tracker])` (it records at every
    `on_eval_end`), or call `tracker.record(step, metrics, n_items)` by hand.
    `objective` is the metric you care about; by default the first recorded of
    balanced accuracy, macro-F1, MAE and accuracy (balanced accuracy equals
    accuracy on balanced classes and does not reward predicting the majority
    class on imbalanced ones). `higher_is_better` declares the direction of
    metrics this module does not know. History is bounded: past `max_records`
    evaluations, every other old record is dropped (the first and the newest
    are kept), so the whole run stays covered.
    """

    def __init__(self, objective: str | None = None, higher_is_better: dict[str, bool] | None = None,
                 loss: str = "valid_loss", max_records: int = 10_000):
        if not isinstance(max_records, int) or max_records < 2 * MIN_EVALUATIONS:
            raise ValueError(f"max_records must be an int >= {2 * MIN_EVALUATIONS}, got {max_records!r}")
        self.objective = objective
        self.declared = dict(higher_is_better or {})
        self.loss = loss
        self.max_records = max_records
        self._records: list[Record] = []
        self._valid_items: int | None = None

    @classmethod
    def from_history(cls, history: Iterable[Mapping[str, float]], n_items: int | None = None,
                     **kwargs: Any) -> MetricTracker:
        """A tracker filled from `FitResult.history` rows (their "step" and validation metrics)."""
        tracker = cls(**kwargs)
        for row in history:
            metrics = {k: v for k, v in row.items() if k not in ("epoch", "step") and not k.startswith("train_")}
            tracker.record(int(row["step"]), metrics, n_items)
        return tracker

    @property
    def records(self) -> tuple[Record, ...]:
        return tuple(self._records)

    def record(self, step: int, metrics: Mapping[str, float], n_items: int | None = None) -> None:
        """Add one evaluation: its optimizer step, its metrics, and the items it was measured on (if known)."""
        for name in metrics:
            higher_is_better(name, self.declared)  # an unknown direction is reported now, not at the end
        if n_items is not None and (not isinstance(n_items, Integral) or isinstance(n_items, bool) or n_items < 1):
            raise ValueError(f"n_items must be a positive int or None, got {n_items!r}")
        n_items = int(n_items) if n_items is not None else None
        self._records.append(Record(int(step), {k: float(v) for k, v in metrics.items()}, n_items))
        if len(self._records) > self.max_records:
            newest = self._records[-1]
            self._records = self._records[:-1:2] + [newest]

    def on_eval_end(self, state: FitState, metrics: dict[str, float]) -> None:
        if self._valid_items is None:
            self._valid_items = _count_targets(state.task)
        self.record(state.step, metrics, self._valid_items)

    def curves(self) -> Curves:
        """The recorded metrics as arrays; metrics missing from some evaluation or not finite are left out."""
        records = self._records
        steps = np.array([r.step for r in records])
        names = list(dict.fromkeys(name for r in records for name in r.metrics))
        sizes = [r.n_items for r in records if r.n_items is not None]
        n_items = min(sizes) if sizes else None
        values, left_out = {}, {}
        for name in names:
            if not all(name in r.metrics for r in records):
                left_out[name] = "missing from some evaluations"
                continue
            v = np.array([r.metrics[name] for r in records], dtype=float)
            if not np.isfinite(v).all():
                left_out[name] = "not finite in some evaluations"
                continue
            values[name] = v
        higher = {name: higher_is_better(name, self.declared) for name in values}
        noise = {name: curve_noise(v, _base_name(name) in PROPORTIONS, n_items) for name, v in values.items()}
        return Curves(steps, values, higher, noise, n_items, left_out)

    def resolve_objective(self, names: Iterable[str]) -> tuple[str | None, bool]:
        """(objective, declared): the declared objective, else the default among `names`."""
        names = list(names)
        if self.objective is not None:
            return self.objective, True
        for base in DEFAULT_OBJECTIVES:
            for name in names:
                if _base_name(name) == base:
                    return name, False
        others = [n for n in names if n != self.loss]
        return (others[0] if others else (names[0] if names else None)), False

    def findings(self) -> list[Finding]:
        """Two findings: `metric-divergence` and `logloss-downstream`."""
        curves = self.curves()
        objective, declared = self.resolve_objective(curves.values)
        if objective is not None and objective not in curves.values:
            reason = curves.left_out.get(objective, "never recorded")
            raise ValueError(f"the objective {objective!r} cannot be analysed ({reason}); "
                             f"recorded metrics: {', '.join(curves.values) or 'none'}")
        return [_divergence_finding(curves, objective, declared), _loss_finding(curves, self.loss, objective, declared)]


def _count_targets(task: Task) -> int:
    """Items behind a validation proportion: rows, or counted tokens for a language model."""
    valid = task.valid
    if task.kind != "language-model":
        return len(valid)
    tensors = getattr(valid, "tensors", None)
    if tensors is not None and len(tensors) == 2:
        return int((tensors[1] != IGNORE_INDEX).sum())
    return len(valid) * int(torch.as_tensor(valid[0][1]).numel())


# ----------------------------------------------------------------------------- findings


def _objective_text(objective: str | None, declared: bool) -> str:
    if objective is None:
        return "No objective metric was recorded."
    if declared:
        return f"Objective: {objective} (declared)."
    return f"Objective: {objective}, assumed since none was declared (set it with MetricTracker(objective=...))."


def _figure(curves: Curves, title: str) -> list[dict]:
    x = [int(s) for s in curves.steps]
    proportions = {n: [float(v) for v in vals] for n, vals in curves.values.items() if _base_name(n) in PROPORTIONS}
    others = {n: [float(v) for v in vals] for n, vals in curves.values.items() if n not in proportions}
    figures = []
    if proportions:
        figures.append({"kind": "lines", "title": f"{title}: metrics in [0, 1]", "x": x, "series": proportions,
                        "xlabel": "optimizer step", "ylabel": "value", "xlog": False, "ylog": False})
    if others:
        figures.append({"kind": "lines", "title": f"{title}: loss and other metrics", "x": x, "series": others,
                        "xlabel": "optimizer step", "ylabel": "value", "xlog": False, "ylog": False})
    return figures


def _skip(tip: str, curves: Curves, objective: str | None, declared: bool, reason: str) -> Finding:
    return Finding(tip, "skip", f"Not enough evaluations to read metric curves ({len(curves)})",
                   f"{reason} {_objective_text(objective, declared)}", None,
                   {"evaluations": len(curves), "objective": objective, "objective_declared": declared,
                    "min_evaluations": MIN_EVALUATIONS})


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _divergence_finding(curves: Curves, objective: str | None, declared: bool) -> Finding:
    if len(curves) < MIN_EVALUATIONS or len(curves.values) < 2:
        what = f"{len(curves)} evaluation(s)" if len(curves) < MIN_EVALUATIONS else f"{len(curves.values)} metric(s)"
        return _skip(TIP_DIVERGENCE, curves, objective, declared,
                     f"Divergence needs at least {MIN_EVALUATIONS} evaluations of at least 2 metrics; "
                     f"there were {what}.")
    found = find_divergences(curves)
    stats = divergence_statistics(curves)
    evidence = {
        "objective": objective, "objective_declared": declared, "evaluations": len(curves),
        "steps": [int(s) for s in curves.steps], "n_items": curves.n_items,
        "noise": curves.noise, "left_out": curves.left_out,
        "thresholds": {"z": DIVERGENCE_Z, "share": DIVERGENCE_SHARE, "together_z": TOGETHER_Z},
        # the largest min(improving_z, worsening_z) over the pairs that could warn
        "max_statistic": max((min(st["improving_z"], st["worsening_z"]) for (_, worse), st in stats.items()
                              if st["share"] >= DIVERGENCE_SHARE
                              and (st["rise_z"] >= TOGETHER_Z or worse == objective)), default=0.0),
        "divergences": [d.__dict__ | {"score": d.score} for d in found],
    }
    figures = _figure(curves, "Validation metrics")
    if not found:
        message = (f"Over {len(curves)} evaluations (steps {int(curves.steps[0])} to {int(curves.steps[-1])}) no "
                   f"metric fell by more than {DIVERGENCE_Z:g} noise units and {DIVERGENCE_SHARE:.0%} of its range "
                   f"while another kept improving. {_objective_text(objective, declared)}")
        return Finding(TIP_DIVERGENCE, "pass", "The validation metrics move together", message, None, evidence, figures)
    parted = [d for d in found if d.parted]
    from_start = [d for d in found if not d.parted]
    objective_from_start = [d for d in from_start if d.worsening == objective]
    main = _main_divergence(parted or objective_from_start or found, objective)
    evidence["main"] = main.__dict__ | {"score": main.score, "parted": main.parted}
    partners = " and ".join(list(dict.fromkeys(
        [main.improving, *(d.improving for d in found if d.worsening == main.worsening)]))[:2])
    if main.parted:
        title = f"{main.worsening} got worse after step {main.step} while {partners} kept improving"
    else:
        title = f"{main.worsening} got worse from the first evaluation on while {partners} improved"
    sentences = _describe_divergences(parted, main) if parted else []
    if from_start:
        sentences.append("From the first evaluation on, without first improving with the others: "
                         + " ".join(_describe_divergences(from_start, from_start[0])))
    if not parted and not objective_from_start:
        sentences.append("Metrics that disagree from the start usually measure different things (a relative error "
                         "against a squared one, a rare class against the frequent ones) and the objective is not "
                         "among those getting worse, so this is for information.")
    status = "warn" if parted or objective_from_start else "info"
    message = " ".join([*sentences, _objective_note(curves, objective, main), _objective_text(objective, declared)])
    return Finding(TIP_DIVERGENCE, status, title, message, _divergence_fix(found, objective), evidence, figures)


def _main_divergence(found: list[Divergence], objective: str | None) -> Divergence:
    """The most significant divergence that involves the objective, else the most significant one."""
    with_objective = [d for d in found if objective in (d.improving, d.worsening)]
    return (with_objective or found)[0]


def _describe_divergences(found: list[Divergence], main: Divergence, most: int = 3) -> list[str]:
    """One sentence per worsening metric (the main one first), naming the metrics that kept improving."""
    worsening = list(dict.fromkeys([main.worsening, *(d.worsening for d in found)]))[:most]
    sentences = []
    for name in worsening:
        group = [d for d in found if d.worsening == name][:most]
        d = group[0]
        (b0, b1) = d.worsening_values
        when = f"from step {d.step}" if d.parted else "from the first evaluation"
        partners = " and ".join(f"{g.improving} went from {_fmt(g.improving_values[0])} to "
                                f"{_fmt(g.improving_values[1])} ({g.improving_z:.1f} noise units)" for g in group)
        sentences.append(f"{name} went from {_fmt(b0)} to {_fmt(b1)} {when} to the end ({d.worsening_z:.1f} noise "
                         f"units, {d.worsening_share:.0%} of its range over the run), while {partners}.")
    return sentences


def _objective_note(curves: Curves, objective: str | None, main: Divergence) -> str:
    if objective is None:
        return ""
    values = curves.values[objective]
    best = int(np.argmax(curves.goodness(objective)))
    return (f"The objective {objective} was {_fmt(values[main.index])} at step {main.step} and is "
            f"{_fmt(values[-1])} at the end (step {int(curves.steps[-1])}); its best evaluation was at step "
            f"{int(curves.steps[best])} ({_fmt(values[best])}).")


def _divergence_fix(found: list[Divergence], objective: str | None) -> str:
    fixes = [(f"Choose checkpoints (and stop early) by the objective{f' {objective}' if objective else ''}, "
              "and keep the other metrics as guardrails.")]
    worsening = {_base_name(d.worsening) for d in found}
    improving = {_base_name(d.improving) for d in found}
    if worsening & {"balanced_accuracy", "macro_f1", "recall", "f1"} and improving & {"accuracy", "loss", "precision"}:
        fixes.append("The model favours the frequent classes: weight the loss by inverse class frequency, "
                     "resample the classes, or tune the decision threshold on the validation set.")
    if "loss" in worsening:
        fixes.append("The loss rises while the decisions still improve: the model grows over-confident. Calibrate "
                     "its probabilities (temperature scaling on the validation set), or regularise (weight decay, "
                     "label smoothing, earlier stopping).")
    if {"precision", "recall"} <= worsening | improving:
        fixes.append("Precision and recall trade against each other: pick the decision threshold for the objective.")
    if worsening & {"mape", "mae", "rmse"}:
        fixes.append("The error measures weigh items differently (relative errors weigh small targets); train "
                     "with the loss that matches the objective.")
    return " ".join(fixes)


def _loss_finding(curves: Curves, loss: str, objective: str | None, declared: bool) -> Finding:
    if len(curves) < MIN_EVALUATIONS:
        return _skip(TIP_LOGLOSS, curves, objective, declared,
                     f"Rank agreement needs at least {MIN_EVALUATIONS} evaluations; there were {len(curves)}.")
    if loss not in curves.values or len(curves.values) < 2:
        reason = curves.left_out.get(loss, "not recorded") if loss not in curves.values else "no other metric recorded"
        return Finding(TIP_LOGLOSS, "skip", f"No validation loss to compare with the metrics ({loss}: {reason})",
                       f"The loss {loss!r} is needed beside at least one other metric. "
                       f"{_objective_text(objective, declared)}", None,
                       {"loss": loss, "objective": objective, "objective_declared": declared})
    target = objective if objective != loss else next(m for m in curves.values if m != loss)
    agreement = loss_agreement(curves, loss, target)
    costly = agreement.cost_z > COST_Z and agreement.cost_share > COST_SHARE
    rhos = ", ".join(f"{m} {r:+.2f}" if not math.isnan(r) else f"{m} n/a (constant)"
                     for m, r in agreement.spearman.items())
    choice = (f"Averaged over neighbouring evaluations, {target} is {_fmt(agreement.objective_at_loss)} around "
              f"the lowest {loss} (step {agreement.loss_step}) and {_fmt(agreement.objective_best)} at its own best "
              f"(step {agreement.objective_step}): choosing the checkpoint by {loss} costs {_fmt(agreement.cost)} "
              f"({agreement.cost_z:.1f} noise units of {_fmt(agreement.noise)}, "
              f"{agreement.cost_share:.0%} of its range over the run).")
    message = (f"Over {len(curves)} evaluations, rank agreement (Spearman) of a lower {loss} with a better metric: "
               f"{rhos}. {choice} {_objective_text(objective, declared)}")
    evidence = {
        "loss": loss, "objective": objective, "objective_declared": declared, "compared_with": target,
        "evaluations": len(curves), "n_items": curves.n_items, "spearman": agreement.spearman,
        "loss_step": agreement.loss_step, "objective_step": agreement.objective_step,
        "objective_at_loss": agreement.objective_at_loss, "objective_best": agreement.objective_best,
        "cost": agreement.cost, "noise": agreement.noise, "cost_z": agreement.cost_z,
        "cost_share": agreement.cost_share, "thresholds": {"z": COST_Z, "share": COST_SHARE},
    }
    if costly:
        title = (f"Choosing by lowest {loss} costs {_fmt(agreement.cost)} of {target} "
                 f"(step {agreement.loss_step} instead of {agreement.objective_step})")
        fix = (f"Select checkpoints and stop early by {target}, not by {loss}; the loss also scores confidence, "
               "which the objective does not reward. If the loss must guide training, calibrate the model "
               "(temperature scaling) or regularise it against over-confidence.")
        return Finding(TIP_LOGLOSS, "warn", title, message, fix, evidence, _figure(curves, "Loss against metrics"))
    rho = agreement.spearman.get(target, math.nan)
    title = (f"{loss} against {target}: rank agreement {rho:+.2f}; choosing the checkpoint by {loss} costs "
             f"{_fmt(agreement.cost)} of {target}")
    return Finding(TIP_LOGLOSS, "info", title, message, None, evidence, _figure(curves, "Loss against metrics"))
