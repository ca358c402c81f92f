"""What a watch measured, as host data: one sampled step (`Sample`), a run (`WatchedRun`), and `rebin`.

These sit below both `dltips.monitor.watch`, which records them, and
`dltips.monitor.verdicts`, which reads them, so that neither imports the other's
module for its types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dltips.monitor import stats


@dataclass
class Sample:
    """What one sampled step measured, read back to the host.

    `activations[layer]` and `gradients[parameter]` are rows laid out as
    `stats.ACTIVATION_FIELDS` / `stats.GRADIENT_FIELDS` followed by the histogram
    counts; `updates[parameter]` is norm(update) / norm(weights before the step)
    and `weight_norms[parameter]` the norm before the step (both on the
    subsample of `stats.subsample` for tensors above `max_values` entries).
    """

    step: int
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    gradients: dict[str, np.ndarray] = field(default_factory=dict)
    updates: dict[str, float] = field(default_factory=dict)
    weight_norms: dict[str, float] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)

    def activation(self, layer: str, name: str) -> float:
        return float(self.activations[layer][stats.ACTIVATION_FIELDS.index(name)])

    def gradient(self, parameter: str, name: str) -> float:
        return float(self.gradients[parameter][stats.GRADIENT_FIELDS.index(name)])

    def histogram(self, row: np.ndarray, fields: tuple[str, ...]) -> tuple[float, float, np.ndarray]:
        """(low, high, counts) of a row."""
        low, high = row[fields.index("min")], row[fields.index("max")]
        return float(low), float(high), row[len(fields):]


class WatchedRun(Protocol):
    """What the verdicts read from a watched run; a `dltips.monitor.watch.Watch` provides it.

    `samples` is the bounded history and `last` the newest sample; the counters
    and names describe the optimizer and the parameters it held.
    """

    every: int
    bins: int
    samples: list[Sample]
    last: Sample | None
    optimizer: Any
    training_forwards: int
    optimizer_steps: int
    not_in_optimizer: list[str]
    no_gradient: set[str]
    shapes: dict[str, tuple[int, ...]]
    layer_types: dict[str, str]
    loop: Any  # dltips.monitor.loop.LoopRecord

    @property
    def first_nonfinite_loss_step(self) -> int | None:
        """The first step whose logged loss was NaN or infinite (None when all were finite)."""


def rebin(counts: np.ndarray, low: float, high: float, new_low: float, new_high: float, bins: int) -> np.ndarray:
    """Counts over equal bins of [low, high] spread onto `bins` equal bins of [new_low, new_high].

    Each old bin's count is shared among the new bins in proportion to overlap
    (counts are assumed uniform within a bin); counts outside the new range go to
    its nearest end bin, and a zero-width old range puts its count in the bin holding `low`.
    """
    counts = np.asarray(counts, dtype=np.float64)
    out = np.zeros(bins)
    if not all(map(math.isfinite, (low, high, new_low, new_high))) or counts.sum() == 0:
        return out
    if new_high <= new_low:
        out[0] = counts.sum()
        return out
    if high <= low:
        out[int(np.clip((low - new_low) / (new_high - new_low) * bins, 0, bins - 1))] = counts.sum()
        return out
    edges = np.linspace(low, high, len(counts) + 1)
    new_edges = np.linspace(new_low, new_high, bins + 1)
    overlap = np.minimum(edges[1:, None], new_edges[None, 1:]) - np.maximum(edges[:-1, None], new_edges[None, :-1])
    share = np.clip(overlap, 0.0, None) / (edges[1:] - edges[:-1])[:, None]
    out += counts @ share
    outside = counts * (1.0 - share.sum(axis=1))  # the part of each old bin beyond the new range
    left = (edges[:-1] + edges[1:]) / 2 < (new_low + new_high) / 2
    out[0] += outside[left].sum()
    out[-1] += outside[~left].sum()
    return out
