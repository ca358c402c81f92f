"""Picking a learning rate: a size-based default, batch-size scaling, and the LR range test.

`make_optimizer(task, model)` gives a Task's optimizer, or the default AdamW at `default_lr`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from dltips.core.device import model_device, to_device
from dltips.core.params import ParamError, instance, int_at_least, number, positive, positive_int, probability
from dltips.core.state import get_rng_state, set_rng_state
from dltips.task import as_loss, plain_step

__all__ = ["LRFinderResult", "default_lr", "lr_find", "make_optimizer", "scale_lr"]

# default_lr for Adam/AdamW: 3e-4 * (1e8 / n) ** 0.5, clipped to [3e-4, 1e-2].
# Calibrated with bench/default_lr.py (table in default_lr's docstring).
_ADAM_LR = 3e-4
_ADAM_MAX_LR = 1e-2
_REF_PARAMS = 1e8
_EXPONENT = 0.5
_SGD_LR = 0.1
_OPTIMIZERS = ("adam", "adamw", "sgd")


def _count_trainable(model: nn.Module | int) -> int:
    if isinstance(model, bool):
        raise ParamError("model must be an nn.Module or a parameter count (int), got bool")
    if isinstance(model, int):
        if model <= 0:
            raise ParamError(f"parameter count must be > 0, got {model}")
        return model
    if isinstance(model, nn.Module):
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if n == 0:
            raise ParamError("model has no trainable parameters (none with requires_grad=True)")
        return n
    raise ParamError(f"model must be an nn.Module or a parameter count (int), got {type(model).__name__}")


def default_lr(model: nn.Module | int, optimizer: str = "adamw") -> float:
    """A starting (peak) learning rate from the number ``n`` of trainable parameters.

    Adam's 3e-4 is right for models of ~100M parameters and up; smaller
    models train best with larger steps. For "adam" and "adamw"::

        lr = 3e-4 * (1e8 / n) ** 0.5, clipped to [3e-4, 1e-2]

    i.e. ``3 / sqrt(n)``: 1e-2 up to ~9e4 parameters, 3e-3 at 1e6, 3e-4 from
    1e8. Measured with ``bench/default_lr.py`` (MLP students of a random
    teacher, 400 AdamW steps with warm-up and cosine decay, 2 seeds; LR grid
    2.2e-4..4.6e-2 in thirds of a decade; loss ratio = held-out loss at the
    rule's LR / at the best grid LR)::

        params   best lr  rule lr  loss ratio
        1.6e3    4.6e-2   1.0e-2   1.10
        9.5e3    2.2e-2   1.0e-2   1.15
        5.4e4    1.0e-2   1.0e-2   1.00
        2.7e5    1.0e-2   5.8e-3   1.02
        9.9e5    4.6e-3   3.0e-3   1.04

    The rule sits a little below the best LR on purpose: past it, loss rises
    steeply or training diverges. The slope matches GPT-3's LR table (Brown
    et al. 2020, arXiv:2005.14165: 6e-4 at 125M, 3e-4 at 350M); beyond ~1B
    parameters they went lower than this rule's 3e-4 floor (2e-4 at 1.3B).

    "sgd" (momentum ~0.9) returns 0.1 whatever the size: the classic value
    for normalised networks at batch 256 (He et al. 2016; Goyal et al. 2017),
    to be adapted with `scale_lr`; it is not calibrated here.

    ``model`` may be an int, taken as the parameter count.
    """
    if not isinstance(optimizer, str) or optimizer.lower() not in _OPTIMIZERS:
        raise ParamError(f"unknown optimizer {optimizer!r}; expected one of {list(_OPTIMIZERS)}")
    n = _count_trainable(model)
    if optimizer.lower() == "sgd":
        return _SGD_LR
    return min(max(_ADAM_LR * (_REF_PARAMS / n) ** _EXPONENT, _ADAM_LR), _ADAM_MAX_LR)


def make_optimizer(task: Any, model: nn.Module, lr: float | None = None) -> Optimizer:
    """The Task's optimizer over `model`'s parameters (`Task.optimizer_for`), or AdamW at `lr` (default:
    `default_lr(model)`) when the Task has none."""
    optimizer = task.optimizer_for(model)
    if optimizer is not None:
        return optimizer
    return torch.optim.AdamW(model.parameters(), lr=lr if lr is not None else default_lr(model))


def scale_lr(
    lr: float,
    from_batch: int,
    to_batch: int,
    rule: str = "linear",
    *,
    accumulation: int = 1,
    world_size: int = 1,
) -> float:
    """Rescale a learning rate tuned at batch size ``from_batch`` to a new effective batch.

    The effective batch is ``to_batch * accumulation * world_size``.
    "linear" (Goyal et al. 2017, arXiv:1706.02677) suits SGD; "sqrt"
    (Krizhevsky 2014, arXiv:1404.5997; Malladi et al. 2022 for Adam,
    arXiv:2205.10287) keeps gradient-noise scale fixed and suits Adam.
    """
    lr = positive("lr", lr)
    b0 = positive_int("from_batch", from_batch)
    b = positive_int("to_batch", to_batch)
    b *= positive_int("accumulation", accumulation) * positive_int("world_size", world_size)
    if rule == "linear":
        return lr * b / b0
    if rule == "sqrt":
        return lr * math.sqrt(b / b0)
    raise ParamError(f"unknown rule {rule!r}; expected 'linear' or 'sqrt'")


@dataclass
class LRFinderResult:
    """Outcome of `lr_find`.

    ``losses`` are bias-corrected exponential moving averages of
    ``raw_losses``; ``steepest`` is the LR where the smoothed loss falls
    fastest per unit of log-LR (None with fewer than 3 points).
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float
    steepest: float | None
    min_loss_lr: float
    stopped_early: bool


class _Snapshot:
    """Everything `lr_find` may change, copied so it can be put back bit-for-bit."""

    def __init__(self, model: nn.Module, optimizer: Optimizer) -> None:
        self.tensors = [(t, t.detach().clone()) for t in _model_tensors(model)]
        self.grads = [(p, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()]
        self.modes = [(m, m.training) for m in model.modules()]
        self.opt_state = {p: copy.deepcopy(s) for p, s in optimizer.state.items()}
        self.opt_groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        self.rng = get_rng_state()

    def restore(self, optimizer: Optimizer) -> None:
        with torch.no_grad():
            for t, saved in self.tensors:
                t.copy_(saved)
        for p, g in self.grads:
            p.grad = g
        for m, training in self.modes:
            m.training = training
        optimizer.state.clear()
        optimizer.state.update(self.opt_state)
        for group, saved in zip(optimizer.param_groups, self.opt_groups, strict=True):
            for key in [k for k in group if k != "params" and k not in saved]:
                del group[key]
            for key, value in saved.items():
                if isinstance(value, Tensor) and isinstance(group.get(key), Tensor):
                    group[key].copy_(value)
                else:
                    group[key] = value
        set_rng_state(self.rng)


def _model_tensors(model: nn.Module) -> list[Tensor]:
    return [*model.parameters(), *model.buffers()]


def _batches(data: Iterable) -> Iterator:
    """Yield from ``data`` forever, restarting it when exhausted."""
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("data yielded no batches")


def _set_lr(optimizer: Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def lr_find(
    model: nn.Module,
    optimizer: Optimizer,
    data: Iterable,
    loss_fn: Callable[[Any, Any], Tensor],
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smooth: float = 0.98,
    diverge: float = 4.0,
    step: Callable[[nn.Module, Any, Optimizer], Any] | None = None,
) -> LRFinderResult:
    """LR range test (Smith 2017, arXiv:1506.01186): train briefly with an exponentially growing LR.

    Step ``i`` uses ``start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))``
    for every param group, on batches ``(x, y)`` drawn from ``data`` (cycled
    when exhausted) with ``loss_fn(model(x), y)``, or with ``step(model, (x, y),
    optimizer)`` when given: a training step that returns its loss (a Task's
    `train_step`). The test stops early once the smoothed loss is
    non-finite or above ``diverge`` times its best.

    ``suggestion`` is ``min_loss_lr / 10``: the loss bottoms out right where
    the LR starts to be too large, so a decade below it is the largest LR
    that is still safely stable (the classic reading of the range test).

    The model's parameters, buffers, gradients and train/eval modes, the
    optimizer's state and param groups, and all RNGs are put back exactly
    afterwards, also when an exception escapes.
    """
    instance("model", model, nn.Module, "an nn.Module")
    instance("optimizer", optimizer, Optimizer, "a torch.optim.Optimizer")
    if not callable(loss_fn):
        raise ParamError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if step is not None and not callable(step):
        raise ParamError(f"step must be callable or None, got {type(step).__name__}")
    start_lr = positive("start_lr", start_lr)
    end_lr = positive("end_lr", end_lr)
    if end_lr <= start_lr:
        raise ParamError(f"end_lr must be > start_lr, got start_lr={start_lr}, end_lr={end_lr}")
    num_steps = int_at_least("num_steps", num_steps, 2)
    smooth = probability("smooth", smooth)
    if diverge != math.inf:  # inf: never stop early
        diverge = number("diverge", diverge, 1.0, open_low=True)
    if next(model.parameters(), None) is None:
        raise ParamError("model has no parameters")
    device = model_device(model)
    snapshot = _Snapshot(model, optimizer)
    try:
        lrs, raw, smoothed, stopped = _range_test(
            model, optimizer, _batches(data), loss_fn, device, start_lr, end_lr, num_steps, smooth, diverge, step
        )
    finally:
        snapshot.restore(optimizer)
    return _summarize(lrs, raw, smoothed, stopped)


def _range_test(
    model: nn.Module,
    optimizer: Optimizer,
    batches: Iterator,
    loss_fn: Callable[[Any, Any], Tensor],
    device: torch.device,
    start_lr: float,
    end_lr: float,
    num_steps: int,
    smooth: float,
    diverge: float,
    step: Callable[[nn.Module, Any, Optimizer], Any] | None,
) -> tuple[list[float], list[float], list[float], bool]:
    model.train()
    lrs: list[float] = []
    raw: list[float] = []
    smoothed: list[float] = []
    avg, best = 0.0, math.inf
    for i in range(num_steps):
        lr = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))
        _set_lr(optimizer, lr)
        x, y = next(batches)
        batch = to_device(x, device), to_device(y, device)
        loss = as_loss(step(model, batch, optimizer)) if step is not None else plain_step(model, batch, optimizer, loss_fn)
        value = float(loss)
        avg = smooth * avg + (1.0 - smooth) * value
        s = avg / (1.0 - smooth ** (i + 1))
        lrs.append(lr)
        raw.append(value)
        smoothed.append(s)
        if not math.isfinite(s) or s > diverge * best:
            return lrs, raw, smoothed, True
        best = min(best, s)
    return lrs, raw, smoothed, False


def _summarize(lrs: list[float], raw: list[float], smoothed: list[float], stopped: bool) -> LRFinderResult:
    finite = [i for i, s in enumerate(smoothed) if math.isfinite(s)]
    if not finite:
        raise ValueError("the loss was not finite at the first step; lower start_lr or check the model and data")
    i_min = min(finite, key=lambda i: smoothed[i])
    steepest = None
    if len(finite) >= 3:
        log_lr = np.log(np.asarray([lrs[i] for i in finite]))
        slope = np.gradient(np.asarray([smoothed[i] for i in finite]), log_lr)
        steepest = float(lrs[finite[int(np.argmin(slope))]])
    return LRFinderResult(
        lrs=lrs,
        losses=smoothed,
        raw_losses=raw,
        suggestion=lrs[i_min] / 10.0,
        steepest=steepest,
        min_loss_lr=lrs[i_min],
        stopped_early=stopped,
    )
