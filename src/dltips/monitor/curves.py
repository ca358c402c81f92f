"""Statistics over a metric's history: the curves of tracked evaluations and what they show.

`Curves` holds each metric's values over the evaluations, its direction and its
noise level (`curve_noise`); `smooth` averages neighbouring evaluations;
`divergence_statistics` measures how far pairs of metrics moved apart after the
worsening one's best evaluation; `spearman` and `loss_agreement` measure how well
the loss ranks the evaluations as each metric does. Nothing here applies a
threshold: `dltips.monitor.metrics` turns these numbers into verdicts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from dltips.core.params import ParamError


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


def spearman(x: Iterable[float], y: Iterable[float]) -> float:
    """Spearman's rank correlation (ties get their average rank); NaN when either side is constant."""
    a, b = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ParamError(f"spearman needs two 1-D sequences of the same length, got shapes {a.shape} and {b.shape}")
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
