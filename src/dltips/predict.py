"""Model outputs, per-item losses and errors on a dataset: what the checks read.

`predict` runs a model in eval mode without gradients and keeps, per item,
its position in the dataset, the output, the target and the loss. Per-item
losses call the Task's own loss on each item, so any mean-reduced loss works
(a language model's item is a sequence; its loss is the mean over its tokens).
Given a deadline, `predict` reads it after each batch and raises `OutOfTime` when it has passed,
so a check with a fixed plan can skip and say how long the rest would take (`estimate_needed`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from dltips.core.deadline import Deadline, as_deadline
from dltips.core.device import resolve_device, to_device
from dltips.core.params import ParamError, int_at_least, number
from dltips.core.state import eval_mode
from dltips.task import IGNORE_INDEX, Task, as_logits


@dataclass
class Predictions:
    indices: torch.Tensor  # positions of the items in the dataset
    outputs: torch.Tensor  # model outputs, float32, on the CPU; probabilities of a binary model as logits (as_logits)
    targets: torch.Tensor  # targets, on the CPU
    losses: torch.Tensor  # one loss per item, float64

    def __len__(self) -> int:
        return len(self.indices)


class OutOfTime(Exception):
    """The deadline passed after `done` of `total` items were scored, in `seconds`.

    At least one item is always done, so the rate is measured: `estimate_needed` gives the
    seconds the remaining items would take.
    """

    def __init__(self, done: int, total: int, seconds: float):
        done = int_at_least("done", done, 1)
        super().__init__(done, int_at_least("total", total, done), number("seconds", seconds, 0.0))

    @property
    def done(self) -> int:
        return self.args[0]

    @property
    def total(self) -> int:
        return self.args[1]

    @property
    def seconds(self) -> float:
        return self.args[2]

    def __str__(self) -> str:
        return f"out of time after scoring {self.done} of {self.total} items in {self.seconds:.2f} s"


def estimate_needed(err: OutOfTime) -> float:
    """Seconds the items left by `err` would take at the rate measured so far: seconds * (total - done) / done."""
    return err.seconds * (err.total - err.done) / err.done


@torch.no_grad()
def predict(
    model: nn.Module,
    task: Task,
    data: Dataset,
    *,
    indices: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    deadline: Deadline | float | None = None,
) -> Predictions:
    """Outputs and per-item losses of `model` on `data` (or on the items at `indices`).

    With a `deadline` (a Deadline or seconds), it is read after every batch but the last: once it
    has passed, `OutOfTime` is raised with the items scored so far (at least the first batch).
    """
    deadline = as_deadline(deadline)
    device = resolve_device(device, model)
    positions = list(range(len(data))) if indices is None else [int(i) for i in indices]
    loader = task.loader(Subset(data, positions))
    outputs, targets = [], []
    started, done = time.monotonic(), 0
    with eval_mode(model):
        for x, y in loader:
            output, y = task.outputs(model, to_device((x, y), device))
            outputs.append(output.float().cpu())
            targets.append(y.cpu())
            done += len(outputs[-1])
            if deadline is not None and done < len(positions) and deadline.expired():
                raise OutOfTime(done, len(positions), time.monotonic() - started)
    output, target = cat_batches(outputs, targets)
    losses = item_losses(task.loss_fn, output, target)
    return Predictions(torch.tensor(positions), as_logits(task, output), target, losses)


def cat_batches(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batches of outputs and targets joined along the items. Sequences padded to different lengths by a
    collate_fn are padded to the longest, the added positions' targets IGNORE_INDEX (not counted)."""
    lengths = {t.shape[1:] for t in targets}
    if len(lengths) == 1 or any(t.is_floating_point() for t in targets) or any(t.dim() < 2 for t in targets):
        return torch.cat(outputs), torch.cat(targets)
    longest = max(t.shape[1] for t in targets)
    padded_out = [F.pad(o, (0, 0) * (o.dim() - 2) + (0, longest - o.shape[1])) for o in outputs]
    padded_target = [F.pad(t, (0, longest - t.shape[1]), value=IGNORE_INDEX) for t in targets]
    return torch.cat(padded_out), torch.cat(padded_target)


def item_losses(loss_fn: Callable, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss of each item alone: `loss_fn` called on one-item slices."""
    return torch.stack([loss_fn(outputs[i:i + 1], targets[i:i + 1]).double() for i in range(len(outputs))])


def item_errors(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One error per scored unit: 0/1 mistakes (per label for multilabel, per counted token for a
    language model, per element for dense targets), squared errors for regression."""
    if kind == "classification":
        return (outputs.argmax(1) != targets).double().flatten()
    if kind == "binary":
        return ((outputs.reshape(targets.shape) > 0) != (targets > 0.5)).double().flatten()
    if kind == "multilabel":
        return ((outputs > 0) != (targets > 0.5)).double().flatten()
    if kind == "language-model":
        counted = targets != IGNORE_INDEX
        return (outputs.argmax(-1) != targets)[counted].double()
    return (outputs.reshape(targets.shape).double() - targets.double()).pow(2).flatten()


def error_rate(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The kind's error: 1 - accuracy (per label for multilabel, per token for a language model), MSE for regression."""
    return float(item_errors(kind, outputs, targets).mean())


def standard_error(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Standard error of `error_rate` as an estimate from these items (std / sqrt(n))."""
    errors = item_errors(kind, outputs, targets)
    return float(errors.std() / len(errors) ** 0.5) if len(errors) > 1 else 0.0


# A language model's next-token error has a floor set by the text itself (its entropy), which no
# model reaches and nobody knows in advance, so "near zero" is no target. What can be judged is
# whether the model beats the majority-token baseline: at or above this fraction of it, the model
# has learned little beyond the tokens' frequencies. Measured on the charlm corpus (seq_len 64,
# 300 AdamW steps; training error / baseline): CharGPT 0.849, a bigram model 0.898 (healthy);
# a model blind to its input 1.017, the CharGPT at LR 1e-7 1.142 (broken).
LM_BASELINE_FRACTION = 0.95


def baseline_error(kind: str, train_targets: torch.Tensor, targets: torch.Tensor) -> float:
    """Error of a trivial predictor fitted on the training targets: the majority class, or the mean."""
    if kind in ("classification", "language-model"):
        counted = train_targets[train_targets != IGNORE_INDEX]
        majority = torch.bincount(counted.flatten()).argmax()
        kept = targets[targets != IGNORE_INDEX]
        return float((kept != majority).double().mean())
    if kind in ("binary", "multilabel"):
        majority = (train_targets.double().mean(0) > 0.5).double()
        return float((targets.double() != majority).double().mean())
    mean = train_targets.double().mean(0)
    return float((targets.double() - mean).pow(2).mean())


def evenly_spaced(n: int, k: int | None) -> list[int]:
    """At most `k` positions spread evenly over range(n) (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return list(range(n))
    if k < 1:
        raise ParamError(f"the number of items must be >= 1, got {k}")
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})
