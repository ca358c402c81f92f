"""What reaches the model: statistics of the training inputs after every transform.

A few shuffled training batches go through the Task's `augment` exactly as in
training, then their values are summarised: per channel for images
(N, C, H, W) and other inputs of 4 or more dimensions, over all values for
(N, H, W) inputs, per feature for tabular rows (N, F), and as an id range for
integer inputs (token ids, category codes). Dict inputs are summarised per key.

Verdicts, per channel or feature:

    fail   NaN or infinite values
    warn   unnormalised: std > 10 or 99th percentile of |x| > 20 (raw pixels, raw measurements)
    warn   tiny scale (normalised twice): an image channel with 0 < std < 0.1, or
           tabular features whose values all lie within +-0.1 without being constant,
           at least half of the non-constant ones (a second normalisation shrinks them
           all); fewer are `info` (a feature in other units, or almost always 0, as a
           corner pixel of digits / 16 is)
    info   constant tabular feature (std 0 over the sampled items): reported, not a
           warning, because flattened images legitimately have constant border pixels
           (last row below) and a constant input does no harm by itself; constant image
           channels are left alone, constant pixels are normal
    pass   otherwise

The 99th percentile rather than the maximum keeps a standardised feature with a
few outliers from being flagged: standardised digits has a pixel at z = 42.

Calibration on 512 sampled training items (stats as min / max std over the
channels or features; "|x| q99": largest 99th percentile of |x|):

    inputs                                         std           |x| q99   verdict
    digits images / 16, (N, 1, 8, 8)              0.375         1.0       pass
    digits images standardised                     0.997         1.85      pass
    wine standardised (13 features)                1.00          3.13      pass
    breast_cancer standardised (30 features)       0.99-1.03     3.95      pass
    3 x 16 x 16 images uniform in [0, 1]           0.29          0.99      pass
    digits images as raw 0-255                     95.6          255       warn: unnormalised
    wine raw (proline up to 1680)                  0.12-314      1520      warn: unnormalised
    breast_cancer raw (area up to 4254)            0.0027-574    2890      warn: unnormalised; info: 5/30 tiny
    wine in [0, 1], then / 255 again               0.0006-0.0010 0.0037    warn: tiny scale (13 of 13)
    digits images standardised twice               0.050         0.092     warn: tiny scale
    wine standardised + a constant column          0             -         info: constant
    wine standardised with one NaN                 -             -         fail
    digits / 16 as 64 columns                      0-0.41        1.0       info: 6-8 constant, 1-4 tiny
    digits standardised as 64 columns              0-1.87        6.99      info: constant (border pixels)

The last row is why constant features are `info`: flattened images have constant
pixels, which the tabular reading reports; a healthy model must not be warned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from dltips.core.checks import check_args, renamed_kwargs
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device, to_device
from dltips.findings import Finding
from dltips.task import Task

TIP = "verify-transforms"
MAX_ITEMS = 512  # training items summarised by default
UNNORMALISED_STD = 10.0
UNNORMALISED_ABS = 20.0  # on the 99th percentile of |x|
TINY_IMAGE_STD = 0.1
TINY_TABULAR_ABS = 0.1
TINY_SHARE = 0.5  # tiny tabular features warn only when they are at least this share of the non-constant ones
MAX_LISTED = 64  # channels/features listed in the evidence; beyond, a summary and the worst offenders
WORST_LISTED = 16
SAMPLE_PER_BATCH = 4096  # values per channel and batch kept for the percentile


@dataclass
class ChannelStats:
    """Statistics of one channel (image) or feature (tabular) over the sampled inputs."""

    name: str
    min: float
    max: float
    mean: float
    std: float
    abs_q99: float
    nonfinite: int
    flags: list[str] = field(default_factory=list)


@renamed_kwargs(n_items="max_items")
def check_inputs(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
) -> list[Finding]:
    """Summarise what the model receives (after `task.augment`) and flag bad scaling; one Finding.

    Reads shuffled training batches (drawn with `seed`) until `max_items` (default MAX_ITEMS) items
    are seen; `task.augment` runs on `device` (default: where `model`, default `task.model`, is).
    The model itself is not run. `deadline` is accepted for the common check signature. The old
    keyword `n_items` still works for one release, with a DeprecationWarning.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    n_items = MAX_ITEMS if max_items is None else max_items
    device = resolve_device(device, task.model if model is None else model)
    accumulators: dict[str, _Accumulator] = {}
    n_seen = 0
    for x in _training_inputs(task, n_items, seed, device):
        named = x if isinstance(x, dict) else {"x": x}
        for key, value in named.items():
            if key not in accumulators:
                accumulators[key] = _Accumulator(value, seed)
            accumulators[key].add(value)
        n_seen += len(next(iter(named.values())))

    report = {key: acc.result() for key, acc in accumulators.items()}
    finding = _finding(task, report, n_seen, keyed=len(report) > 1 or "x" not in report)
    if task.augment is not None:
        finding.figures.append(_augment_preview(task, seed, device))
    return [finding]


PREVIEWED = 6  # training items shown before and after the Task's augmentation


def _augment_preview(task: Task, seed: int, device: torch.device) -> dict:
    """A few training items before and after `task.augment` (an "images" figure; empty for non-images)."""
    from dltips.data.preview import preview

    items = [task.train[i][0] for i in range(min(PREVIEWED, len(task.train)))]
    if any(not isinstance(x, torch.Tensor) for x in items):
        return {"kind": "images", "title": "Augmentation preview (inputs are not tensors)", "images": []}
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():  # the preview's draws leave no trace
        torch.manual_seed(seed)
        shown = preview([("augment", lambda x: task.augment(to_device(x[None], device))[0].cpu())], items)
    figure = shown.figure()
    figure["title"] = "Training items before and after the Task's augmentation (each image min-max scaled)"
    return figure


def _training_inputs(task: Task, n_items: int, seed: int, device: torch.device):
    """Inputs of shuffled training batches, augmented as in training (on `device`), until `n_items` are seen."""
    loader = task.loader(task.train, batch_size=min(task.batch_size, n_items), shuffle=True,
                         generator=torch.Generator().manual_seed(seed))
    seen = 0
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():  # augmentation draws leave no trace
        torch.manual_seed(seed)
        for x, _ in loader:
            if task.augment is not None:
                x = task.augment(to_device(x, device))
            yield to_device(x, "cpu")
            seen += len(next(iter(x.values())) if isinstance(x, dict) else x)
            if seen >= n_items:
                return


class _Accumulator:
    """Running per-channel sums and extremes, and a sample of |x| for the percentile, for one input tensor."""

    def __init__(self, first: torch.Tensor, seed: int) -> None:
        self.integer = not (first.is_floating_point() or first.is_complex())
        self.layout = _layout(first)
        self.shape = tuple(first.shape[1:])
        self.generator = torch.Generator().manual_seed(seed)
        self.sums: torch.Tensor | None = None  # (4, channels): finite count, sum, sum of squares, non-finite count
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        if self.integer:
            v = x.reshape(1, -1).long()
            self._extremes(v.min(1).values, v.max(1).values)
            self.samples.append(torch.unique(v))
            return
        v = _channels(x.detach(), self.layout).double()
        finite = torch.isfinite(v)
        clean = torch.where(finite, v, 0.0)
        sums = torch.stack([finite.sum(1), clean.sum(1), clean.pow(2).sum(1), (~finite).sum(1)]).double()
        self.sums = sums if self.sums is None else self.sums + sums
        self._extremes(torch.where(finite, v, math.inf).min(1).values, torch.where(finite, v, -math.inf).max(1).values)
        if v.shape[1] > SAMPLE_PER_BATCH:
            v = v[:, torch.randint(v.shape[1], (SAMPLE_PER_BATCH,), generator=self.generator)]
        self.samples.append(v.abs())

    def _extremes(self, low: torch.Tensor, high: torch.Tensor) -> None:
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)

    def result(self) -> dict[str, Any]:
        if self.integer:
            unique = torch.unique(torch.cat(self.samples))
            return {"layout": "integer", "shape": self.shape, "min": int(self.low), "max": int(self.high),
                    "n_unique": len(unique), "channels": []}
        count, total, squares, nonfinite = self.sums
        mean = total / count.clamp(min=1)
        std = (squares / count.clamp(min=1) - mean.pow(2)).clamp(min=0).sqrt()
        sample = torch.cat(self.samples, dim=1)
        q99 = torch.nanquantile(torch.where(torch.isfinite(sample), sample, torch.nan), 0.99, dim=1)
        channels = []
        for i, name in enumerate(_channel_names(self.layout, len(mean))):
            empty = count[i] == 0  # every value non-finite
            values = [self.low[i], self.high[i], mean[i], std[i]]
            low, high, m, sd = [math.nan] * 4 if empty else [float(v) for v in values]
            stats = ChannelStats(name, low, high, m, sd, float(q99[i]), int(nonfinite[i]))
            stats.flags = _flags(stats, self.layout)
            channels.append(stats)
        return {"layout": self.layout, "shape": self.shape, "channels": channels}


def _layout(x: torch.Tensor) -> str:
    """How a batch is summarised: "image" per channel (dim 1), "image-1" all values as one, "tabular" per column."""
    if x.dim() >= 4:
        return "image"
    if x.dim() == 3:
        return "image-1"
    return "tabular"


def _channels(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The batch's values as (channels, values)."""
    if layout == "image":
        return x.transpose(0, 1).reshape(x.shape[1], -1)
    if layout == "image-1":
        return x.reshape(1, -1)
    return x.reshape(len(x), -1).T


def _channel_names(layout: str, n: int) -> list[str]:
    if layout == "image":
        return [f"channel {i}" for i in range(n)]
    if layout == "image-1":
        return ["all values"]
    return [f"feature {i}" for i in range(n)]


def _flags(s: ChannelStats, layout: str) -> list[str]:
    flags = []
    if s.nonfinite:
        flags.append("nonfinite")
    if s.std > UNNORMALISED_STD or s.abs_q99 > UNNORMALISED_ABS:
        flags.append("unnormalised")
    constant = s.max == s.min
    if layout == "tabular":
        if constant:
            flags.append("constant")
        elif max(abs(s.min), abs(s.max)) < TINY_TABULAR_ABS:
            flags.append("tiny")
    elif not constant and 0 < s.std < TINY_IMAGE_STD:
        flags.append("tiny")
    return flags


# ---------------------------------------------------------------- the verdict


_PROBLEMS = {  # flag: (status, what it means, what to do)
    "nonfinite": ("fail", "contain NaN or infinite values",
                  ("Find where the NaN/inf values come from (missing values, division by zero, log of 0) and "
                   "fill or drop them before training.")),
    "unnormalised": ("warn", "look unnormalised (std > 10, or over 1% of values beyond +-20)",
                     ("Scale the inputs: divide raw pixels by 255 and standardise each channel with the training "
                      "mean and std; standardise each tabular feature (e.g. StandardScaler fitted on the "
                      "training split).")),
    "tiny": ("warn", "have a tiny scale (normalised twice?)",
             ("Check that the inputs are normalised once: a second division by 255 or a second standardisation "
              "shrinks them far below unit scale.")),
    "few-tiny": ("info", "include a few features of tiny scale",
                 "Scale those features like the others (values in other units, such as a rate below 0.1, or a "
                 "sparse feature that is almost always 0)."),
    "constant": ("info", "are constant over the sampled items",
                 "Drop constant features (they carry no information) or check the step that produced them."),
}
_ORDER = ("nonfinite", "unnormalised", "tiny", "few-tiny", "constant")
_LABELS = {
    "nonfinite": "NaN or infinite values",
    "unnormalised": f"Unnormalised (std > {UNNORMALISED_STD:g} or 99th percentile of |x| > {UNNORMALISED_ABS:g})",
    "tiny": f"Tiny scale (image channel std < {TINY_IMAGE_STD:g}, or tabular values all within "
            f"+-{TINY_TABULAR_ABS:g})",
    "few-tiny": f"Tabular values all within +-{TINY_TABULAR_ABS:g}, in fewer than {TINY_SHARE:.0%} of the "
                "non-constant features",
    "constant": "Constant",
}


def _few_tiny(report: dict[str, dict]) -> bool:
    """Whether the tiny-scale flags are a few tabular features only: fewer than TINY_SHARE of the non-constant
    ones, no image channel. A second normalisation shrinks every feature; a few tiny ones are other units."""
    tiny = varying = 0
    for r in report.values():
        for s in r["channels"]:
            if "tiny" in s.flags and r["layout"] != "tabular":
                return False
            tiny += "tiny" in s.flags
            varying += "constant" not in s.flags
    return tiny < TINY_SHARE * varying


def _finding(task: Task, report: dict[str, dict], n_seen: int, keyed: bool) -> Finding:
    flagged: dict[str, list[str]] = {flag: [] for flag in _ORDER}
    for key, r in report.items():
        for s in r["channels"]:
            for flag in s.flags:
                flagged[flag].append(f"{key}[{s.name}]" if keyed else s.name)
    if flagged["tiny"] and _few_tiny(report):
        flagged["few-tiny"], flagged["tiny"] = flagged["tiny"], []
    problems = [flag for flag in _ORDER if flagged[flag]]
    levels = {_PROBLEMS[flag][0] for flag in problems}
    status = next((level for level in ("fail", "warn", "info") if level in levels), "pass")
    augmented = " after augmentation" if task.augment is not None else ""

    parts = [f"Statistics of {n_seen} training inputs{augmented}."]
    for key, r in report.items():
        parts.append(_describe_input(key if keyed else None, r))
    for flag in problems:
        names = flagged[flag]
        listed = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        parts.append(f"{_LABELS[flag]} ({len(names)}): {listed}.")
    message = " ".join(parts)

    if problems:
        first = problems[0]
        title = f"Model inputs {_PROBLEMS[first][1]}"
        title += f" (also: {', '.join(_PROBLEMS[f][1].split(' (')[0] for f in problems[1:])})" if problems[1:] else ""
        fix = " ".join(_PROBLEMS[flag][2] for flag in problems)
    else:
        title = "Model inputs are finite and on a sensible scale"
        fix = None
    evidence = {
        "n_items": n_seen,
        "augmented": task.augment is not None,
        "inputs": {key: _evidence(r) for key, r in report.items()},
        "flags": {flag: names for flag, names in flagged.items() if names},
        "thresholds": {"unnormalised_std": UNNORMALISED_STD, "unnormalised_abs_q99": UNNORMALISED_ABS,
                       "tiny_image_std": TINY_IMAGE_STD, "tiny_tabular_abs": TINY_TABULAR_ABS},
    }
    return Finding(TIP, status, title, message, fix, evidence, [_table(report, keyed)])


def _describe_input(key: str | None, r: dict) -> str:
    prefix = f"Input {key!r}" if key is not None else "Inputs"
    if r["layout"] == "integer":
        return f"{prefix}: integer ids from {r['min']} to {r['max']} ({r['n_unique']} distinct values)."
    finite = [s for s in r["channels"] if math.isfinite(s.min)]
    if not finite:
        return f"{prefix}: no finite values."
    low, high = min(s.min for s in finite), max(s.max for s in finite)
    stds = [s.std for s in finite]
    unit = {"image": "channel", "image-1": "overall", "tabular": "feature"}[r["layout"]]
    std_text = f"std {stds[0]:.3g}" if len(stds) == 1 else f"{unit} std from {min(stds):.3g} to {max(stds):.3g}"
    means = [s.mean for s in finite]
    mean_text = f"mean {means[0]:.3g}" if len(means) == 1 else f"{unit} means from {min(means):.3g} to {max(means):.3g}"
    return f"{prefix} {tuple(r['shape'])}: values from {low:.3g} to {high:.3g}, {mean_text}, {std_text}."


def _evidence(r: dict) -> dict:
    out = {k: v for k, v in r.items() if k != "channels"}
    channels = r["channels"]
    if len(channels) <= MAX_LISTED:
        out["channels"] = [asdict(s) for s in channels]
        return out
    finite = [s for s in channels if math.isfinite(s.min)]
    out["summary"] = {
        "n": len(channels),
        "min": min((s.min for s in finite), default=None), "max": max((s.max for s in finite), default=None),
        "mean_range": [min((s.mean for s in finite), default=None), max((s.mean for s in finite), default=None)],
        "std_range": [min((s.std for s in finite), default=None), max((s.std for s in finite), default=None)],
        "n_flagged": sum(1 for s in channels if s.flags),
    }
    out["worst"] = [asdict(s) for s in sorted(channels, key=_badness, reverse=True)[:WORST_LISTED] if s.flags]
    return out


def _badness(s: ChannelStats) -> tuple[int, float]:
    """Order offenders: non-finite first, then by how far the scale is from 1."""
    scale = max(s.std, 1e-12)
    return (s.nonfinite > 0, len(s.flags), abs(math.log10(scale)) if math.isfinite(scale) else math.inf)


def _table(report: dict[str, dict], keyed: bool) -> dict:
    rows = []
    for key, r in report.items():
        prefix = f"{key}: " if keyed else ""
        if r["layout"] == "integer":
            rows.append([f"{prefix}ids", r["min"], r["max"], None, None, ""])
            continue
        channels = r["channels"]
        if len(channels) > MAX_LISTED:
            channels = sorted(channels, key=_badness, reverse=True)[:MAX_LISTED]
        for s in channels:
            rows.append([prefix + s.name, _round(s.min), _round(s.max), _round(s.mean), _round(s.std),
                         ", ".join(s.flags)])
    return {"kind": "table", "title": "What the model receives (sampled training inputs)",
            "columns": ["input", "min", "max", "mean", "std", "flags"], "rows": rows}


def _round(value: float) -> float | None:
    return float(f"{value:.4g}") if math.isfinite(value) else None
