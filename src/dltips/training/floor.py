"""The lowest loss a Task's loss can reach on a batch: the reference that "fitted" is measured against.

A model's outputs follow one of torch's conventions, and the loss's floor
depends on it: logits for `cross_entropy` and `BCEWithLogitsLoss`,
log-probabilities for `nll_loss` (after `log_softmax`), probabilities for
`BCELoss` (after `sigmoid`) or a softmax output. `dltips.task.output_form`
reads the convention from the model's own outputs (kept as
`Task.output_form`). `loss_floor` then minimises the Task's loss over every
output of that form (free logits pushed through the form's
map: identity, `log_softmax` or `softmax`/`sigmoid`), so label smoothing
(floor above 0), `ignore_index`, class weights and sum reductions all get
their real floor without a case for each. For regression the floor is the
loss of predicting every target exactly (0 for MSE, L1 and Huber).

A loss that keeps falling as the outputs grow has no floor on those outputs
(`nll_loss` fed raw logits): `LossFloor.bounded` is False.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dltips.task import class_dim, output_form

__all__ = ["LossFloor", "describe", "loss_floor"]

STEPS = 150  # Adam steps on the free logits
LR = 0.2
UNBOUNDED_SCALE = 50.0  # logits this large and the loss still falling: no floor


@dataclass
class LossFloor:
    """The floor of a loss on one batch, the output form it assumes, and whether the loss is bounded there."""

    value: float
    form: str
    bounded: bool = True


def loss_floor(kind: str, loss_fn: Callable, output: torch.Tensor, target: torch.Tensor,
               form: str | None = None) -> LossFloor:
    """The lowest value of `loss_fn` over outputs of the model's `form` (`Task.output_form`), for these targets.

    `form` defaults to what `dltips.task.output_form` reads from `output`. Falls back to a floor of 0
    (bounded) when the loss cannot be evaluated on the outputs tried (a loss that wants other outputs).
    """
    form = form if form is not None else output_form(kind, output, target, loss_fn)
    try:
        if form == "values":
            with torch.no_grad():
                return LossFloor(float(loss_fn(target.float().reshape(output.shape).to(output.dtype), target)), form)
        return _minimise(kind, form, loss_fn, output, target)
    except (RuntimeError, ValueError, TypeError, IndexError):
        return LossFloor(0.0, form)


def _minimise(kind: str, form: str, loss_fn: Callable, output: torch.Tensor, target: torch.Tensor) -> LossFloor:
    """Adam on free logits, started at confident correct ones; the lowest loss seen is the floor."""
    start = _confident_logits(kind, output, target, 4.0)
    z = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=LR)
    best = math.inf
    values: list[float] = []
    with torch.enable_grad():
        for _ in range(STEPS):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(_as_form(kind, form, z, output), target)
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            values.append(value)
            best = min(best, value)
            loss.backward()
            optimizer.step()
    # unbounded: the logits ran away and the loss was still falling at the end
    moved = float((z.detach() - start).abs().max()) if values else 0.0
    falling = len(values) > 20 and values[-1] < values[-21] - 1e-3 * max(abs(values[-21]), 1.0)
    if not values:
        return LossFloor(0.0, form)
    return LossFloor(best, form, bounded=not (falling and moved > UNBOUNDED_SCALE / 2))


def _confident_logits(kind: str, output: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """Logits of `output`'s shape that predict every target with confidence `scale`."""
    out = output.detach().float()
    if kind in ("binary", "multilabel"):
        return scale * (2.0 * target.float() - 1.0).reshape(out.shape).to(out.device)
    dim = class_dim(kind, out)
    onehot = F.one_hot(target.long().clamp_min(0), out.shape[dim]).movedim(-1, dim)
    return scale * onehot.to(out.device, torch.float32)


def _as_form(kind: str, form: str, z: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    z = z.to(output.dtype)
    if form == "logits":
        return z
    if kind in ("binary", "multilabel"):
        return torch.sigmoid(z)
    dim = class_dim(kind, z)
    return F.log_softmax(z, dim) if form == "log-probabilities" else F.softmax(z, dim)


def describe(floor: LossFloor) -> dict[str, Any]:
    """The floor as evidence."""
    return {"loss_floor": floor.value, "output_form": floor.form, "loss_bounded": floor.bounded}
