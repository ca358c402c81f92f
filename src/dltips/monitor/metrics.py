"""A tracker that records the validation metrics of each evaluation and reads their curves.

`MetricTracker` records the metrics of each evaluation (the sums behind them are
in `dltips.monitor.scores`, the statistics over their curves in
`dltips.monitor.curves`) and reports two tips:

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dltips.core.callbacks import Callback, FitState
from dltips.core.params import int_at_least, optional_int
from dltips.findings import Finding
from dltips.monitor.curves import Curves, curve_noise, divergence_statistics, loss_agreement
from dltips.task import IGNORE_INDEX

if TYPE_CHECKING:
    from dltips.task import Task

TIP_DIVERGENCE = "metric-divergence"
TIP_LOGLOSS = "logloss-downstream"

HIGHER_IS_BETTER: dict[str, bool] = {
    "loss": False, "accuracy": True, "balanced_accuracy": True, "macro_f1": True, "f1": True,
    "precision": True, "recall": True, "rmse": False, "mae": False, "mape": False, "perplexity": False,
}
PROPORTIONS = frozenset({"accuracy", "balanced_accuracy", "macro_f1", "f1", "precision", "recall"})
PREFIXES = ("valid_", "train_", "test_")
# The objective assumed when none is declared: the first of these that was recorded.
DEFAULT_OBJECTIVES = ("balanced_accuracy", "macro_f1", "mae", "accuracy")

# Thresholds (calibrated, see the module docstring and docs/calibration.md).
DIVERGENCE_Z = 3.0  # each metric's move after the parting point, in noise units
DIVERGENCE_SHARE = 0.25  # the worsening metric lost at least this share of its range over the run
TOGETHER_Z = 1.0  # it had first improved by this many noise units: the metrics moved together, then parted
COST_Z = 3.0  # choosing by loss costs the objective this many noise units ...
COST_SHARE = 0.10  # ... and this share of the objective's range over the run
MIN_EVALUATIONS = 3
# Metrics that are the default loss in another unit (RMSE of an MSE loss, a language model's perplexity): when
# one is recorded and ranks the evaluations as the loss does (at least TWIN_RHO), and no objective is declared,
# a cost measured on another, assumed metric is a modelling choice (info), not a warn. A healthy BatchNorm
# regression lost 0.05 of MAE (3.0 noise units) by choosing its checkpoint by MSE.
LOSS_TWINS = ("rmse", "perplexity")
TWIN_RHO = 0.99


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


def _base_name(name: str) -> str:
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


# ----------------------------------------------------------------------------- records and divergences


@dataclass
class Record:
    """One evaluation: the optimizer step, the metrics, and how many items they were measured on."""

    step: int
    metrics: dict[str, float]
    n_items: int | None = None


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
        self.objective = objective
        self.declared = dict(higher_is_better or {})
        self.loss = loss
        self.max_records = int_at_least("max_records", max_records, 2 * MIN_EVALUATIONS)
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
        n_items = optional_int("n_items", n_items)
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


def _loss_figure(curves: Curves, loss: str) -> list[dict]:
    """Each metric against the validation loss (evaluations sorted by loss): a rank that agrees is a monotone
    line. Not the metric curves over time, which metric-divergence draws."""
    if loss not in curves.values or len(curves.values) < 2:
        return []
    order = np.argsort(curves.values[loss], kind="stable")
    series = {n: [float(v) for v in vals[order]] for n, vals in curves.values.items() if n != loss}
    return [{"kind": "lines", "title": f"Metrics against the validation loss ({loss}), one point per evaluation",
             "x": [float(v) for v in curves.values[loss][order]], "series": series, "xlabel": loss,
             "ylabel": "metric", "xlog": False, "ylog": False, "markers": True}]


def _skip(tip: str, curves: Curves, objective: str | None, declared: bool, title: str, reason: str,
          why: str) -> Finding:
    """A `skip` whose title and message name the condition that stopped the analysis (`why`, kept in the evidence)."""
    return Finding(tip, "skip", title, f"{reason} {_objective_text(objective, declared)}", None,
                   {"evaluations": len(curves), "objective": objective, "objective_declared": declared,
                    "min_evaluations": MIN_EVALUATIONS, "metrics": list(curves.values),
                    "left_out": dict(curves.left_out), "skip_reason": why})


def _too_few_evaluations(tip: str, curves: Curves, objective: str | None, declared: bool, what: str) -> Finding:
    n = len(curves)
    return _skip(tip, curves, objective, declared,
                 f"Not enough evaluations to read metric curves ({n} of the {MIN_EVALUATIONS} needed)",
                 f"{what} needs at least {MIN_EVALUATIONS} evaluations; there were {n} evaluation{'' if n == 1 else 's'}.",
                 "too-few-evaluations")


def _left_out_text(curves: Curves) -> str:
    """The metrics recorded but not analysed, with why (empty when none)."""
    if not curves.left_out:
        return ""
    return " Left out: " + "; ".join(f"{name} ({why})" for name, why in curves.left_out.items()) + "."


def _second_metric(name: str) -> str:
    """A metric to log beside `name` so that two can be compared: the loss beside a metric, a metric beside the loss."""
    prefix = name[: len(name) - len(_base_name(name))]
    if _base_name(name) == "loss":
        return f"{prefix}accuracy (or {prefix}balanced_accuracy, {prefix}macro_f1, {prefix}mae)"
    return f"{prefix}loss"


def _one_metric(tip: str, curves: Curves, objective: str | None, declared: bool, what: str) -> Finding:
    """A `skip` for fewer than two usable metrics: none recorded in every evaluation, or only one."""
    n = len(curves)
    if not curves.values:
        return _skip(tip, curves, objective, declared, "No metric recorded with finite values in every evaluation",
                     f"{what} compares two metrics recorded in every evaluation; over {n} evaluations none was."
                     f"{_left_out_text(curves)}", "no-metric")
    (name,) = curves.values
    logged = "usable metric" if curves.left_out else "metric logged"
    return _skip(tip, curves, objective, declared, f"Only one {logged} ({name}): {what.lower()} needs two",
                 f"Over {n} evaluations only {name} was recorded"
                 f"{' in every evaluation with finite values' if curves.left_out else ''}.{_left_out_text(curves)} "
                 f"{what} compares two metrics: log {_second_metric(name)} beside it.", "one-metric")


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _divergence_finding(curves: Curves, objective: str | None, declared: bool) -> Finding:
    if len(curves) < MIN_EVALUATIONS:
        return _too_few_evaluations(TIP_DIVERGENCE, curves, objective, declared, "Divergence")
    if len(curves.values) < 2:
        return _one_metric(TIP_DIVERGENCE, curves, objective, declared, "Divergence")
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
        return _too_few_evaluations(TIP_LOGLOSS, curves, objective, declared, "Rank agreement")
    if loss not in curves.values:
        reason = curves.left_out.get(loss, "not recorded")
        others = ", ".join(curves.values) or "none"
        finding = _skip(TIP_LOGLOSS, curves, objective, declared,
                        f"No validation loss to compare with the metrics ({loss}: {reason})",
                        f"Rank agreement compares the loss {loss!r} with the other metrics, and {loss} was {reason} "
                        f"over {len(curves)} evaluations (analysed: {others}).{_left_out_text(curves)} Log it, or "
                        "name the loss that was logged (MetricTracker(loss=...)).", "no-loss")
    elif len(curves.values) < 2:
        finding = _skip(TIP_LOGLOSS, curves, objective, declared,
                        f"Only the loss was logged ({loss}): no metric to compare it with",
                        f"Over {len(curves)} evaluations only {loss} was recorded"
                        f"{' in every evaluation with finite values' if curves.left_out else ''}."
                        f"{_left_out_text(curves)} Rank agreement compares the loss with a downstream metric: log "
                        f"{_second_metric(loss)} beside it.", "one-metric")
    else:
        finding = None
    if finding is not None:
        finding.evidence["loss"] = loss
        return finding
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
    twins = [m for m, r in agreement.spearman.items()
             if _base_name(m) in LOSS_TWINS and m != target and not math.isnan(r) and r >= TWIN_RHO]
    if costly and twins and not declared:
        evidence["loss_twin"] = twins[0]
        title = (f"{loss} ranks the evaluations as {twins[0]} does; against the assumed objective {target} it "
                 f"costs {_fmt(agreement.cost)}")
        message += (f" The loss orders the evaluations as {twins[0]} does (rank agreement "
                    f"{agreement.spearman[twins[0]]:+.2f}): choosing by it is choosing by {twins[0]}, a fair "
                    f"objective in its own right, and {target} was only assumed.")
        fix = f"If {target} is what matters, declare it (MetricTracker(objective={target!r})) and select by it."
        return Finding(TIP_LOGLOSS, "info", title, message, fix, evidence, _loss_figure(curves, loss))
    if costly:
        title = (f"Choosing by lowest {loss} costs {_fmt(agreement.cost)} of {target} "
                 f"(step {agreement.loss_step} instead of {agreement.objective_step})")
        fix = (f"Select checkpoints and stop early by {target}, not by {loss}; the loss also scores confidence, "
               "which the objective does not reward. If the loss must guide training, calibrate the model "
               "(temperature scaling) or regularise it against over-confidence.")
        return Finding(TIP_LOGLOSS, "warn", title, message, fix, evidence, _loss_figure(curves, loss))
    rho = agreement.spearman.get(target, math.nan)
    title = (f"{loss} against {target}: rank agreement {rho:+.2f}; choosing the checkpoint by {loss} costs "
             f"{_fmt(agreement.cost)} of {target}")
    return Finding(TIP_LOGLOSS, "info", title, message, None, evidence, _loss_figure(curves, loss))
