"""Exact gradient accumulation: a large batch trained as several micro-batches.

Each micro-batch back-propagates a *summed* loss; when the window closes, the
gradients are divided by the number of items seen in the whole window (rows,
or tokens for a language model). The result equals the gradient of the window
as one batch, also for a short last window and for micro-batches of unequal
size, which a mean of per-batch means gets wrong.

    acc = GradientAccumulator(model, optimizer, window=4)
    for i, (x, y) in enumerate(batches):
        with acc.micro_batch(n_items=len(y), last=(i == len(batches) - 1)):
            acc.backward(F.cross_entropy(model(x), y, reduction="sum"))
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dltips.core.params import positive, positive_int
from dltips.training.precision import MixedPrecision


class GradientAccumulator:
    """Steps `optimizer` once every `window` micro-batches, with exact large-batch gradients.

    `precision` (a MixedPrecision) scales the loss and unscales before the
    division and clipping; `max_grad_norm` clips the window's gradient. Under
    DDP, gradients are all-reduced only on the window's last micro-batch
    (`no_sync` on the others). After each micro-batch, `stepped` says whether
    the optimizer stepped, and `skipped` whether an fp16 overflow skipped it.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        window: int = 1,
        precision: MixedPrecision | None = None,
        max_grad_norm: float | None = None,
    ):
        window = positive_int("window", window)
        if max_grad_norm is not None and max_grad_norm != math.inf:  # inf: measure the norm without clipping
            positive("max_grad_norm", max_grad_norm)
        self.model = model
        self.optimizer = optimizer
        self.window = window
        self.precision = precision
        self.max_grad_norm = max_grad_norm
        self.stepped = False
        self.skipped = False
        self.last_grad_norm: torch.Tensor | None = None
        self._micro = 0  # micro-batches seen in the open window
        self._items: int | torch.Tensor = 0  # items seen in the open window
        self._closing = False  # the current micro-batch closes the window
        self._in_micro_batch = False
        if window > 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            warnings.warn(
                "gradient-accumulation: the model has BatchNorm layers, whose statistics are computed per "
                "micro-batch, so accumulated gradients differ from those of one large batch. "
                "See `dltips tips gradient-accumulation`.",
                stacklevel=2,
            )

    @contextlib.contextmanager
    def micro_batch(self, n_items: int | torch.Tensor, last: bool = False) -> Iterator[None]:
        """One micro-batch of `n_items` items; steps on leaving when the window is full or `last`."""
        if self._in_micro_batch:
            raise RuntimeError("micro_batch() blocks cannot be nested")
        self.stepped = self.skipped = False
        self._closing = last or self._micro + 1 == self.window
        # DDP decides in the forward pass whether backward all-reduces, so no_sync spans the block.
        skip_sync = isinstance(self.model, DistributedDataParallel) and not self._closing
        self._in_micro_batch = True
        try:
            with self.model.no_sync() if skip_sync else contextlib.nullcontext():
                yield
        finally:
            self._in_micro_batch = False
        self._micro += 1
        self._items = self._items + n_items
        if self._closing:
            self._step()

    def backward(self, loss_sum: torch.Tensor) -> None:
        """Back-propagate the micro-batch's loss summed over its items (reduction="sum")."""
        if not self._in_micro_batch:
            raise RuntimeError("call backward() inside a `with accumulator.micro_batch(...)` block")
        if self.precision is not None:
            self.precision.backward(loss_sum)
        else:
            loss_sum.backward()

    def _step(self) -> None:
        precision = self.precision
        if precision is not None:
            precision.unscale_(self.optimizer)
        items = self._items
        if isinstance(self.model, DistributedDataParallel):
            # DDP averages gradient sums over ranks; divide by the mean item count per rank so the
            # result is the mean over every item of every rank, also when ranks saw different counts.
            items = torch.as_tensor(items, dtype=torch.float64, device=_grad_device(self.optimizer))
            torch.distributed.all_reduce(items)
            items = items / torch.distributed.get_world_size()
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(items)
        if self.max_grad_norm is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            self.last_grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        if precision is not None:
            self.skipped = not precision.step(self.optimizer)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.stepped = True
        self._micro = 0
        self._items = 0

    def state_dict(self) -> dict:
        if self._micro:
            raise RuntimeError("save the accumulator between windows, not with gradients half accumulated")
        return {"window": self.window}

    def load_state_dict(self, state: dict) -> None:
        if state["window"] != self.window:
            raise ValueError(f"checkpoint was saved with window={state['window']}, this accumulator has {self.window}")


def _grad_device(optimizer: torch.optim.Optimizer) -> torch.device:
    return next(p.device for group in optimizer.param_groups for p in group["params"])
