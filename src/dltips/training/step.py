"""One optimizer step: the user's own (`Task.step`) or dltips's plain one.

A Task's `step(model, batch, optimizer) -> loss` is the user's training step with their loss,
regularisers, clipping and accumulation: it runs the forward pass, calls `backward`, and steps the
optimizer it is given (zeroing the gradients where the user's loop does). When a Task has one, every
training dltips does on it (the overfit ladder, the LR range test, the doctor's short run and
capacity check, `fit`) runs it instead of the plain step, so the watch sees the user's loop and
names its bugs (dltips.monitor.loop). `batch` is `(x, y)` as the Task's DataLoader collates it, on
the model's device (augmented by `Task.augment` where the caller augments). dltips still evaluates
with `Task.loss`: give the Task the loss the step uses. The Task checks its step when built
(dltips.task: it returns a scalar loss, calls backward and steps the optimizer).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.optim import Optimizer

from dltips.task import as_loss

__all__ = ["StepFn", "plain_step", "take_step"]

StepFn = Callable[[nn.Module, Any, Optimizer], Any]


def plain_step(model: nn.Module, batch: Any, optimizer: Optimizer, loss_fn: Callable) -> torch.Tensor:
    """dltips's own step: zero the gradients, `loss_fn(model(x), y)`, backward, step. Returns the loss."""
    x, y = batch
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss


def take_step(model: nn.Module, batch: Any, optimizer: Optimizer, loss_fn: Callable,
              step: StepFn | None = None) -> torch.Tensor:
    """One optimizer step, the user's `step` when given; the loss it returned as a detached tensor."""
    if step is None:
        return plain_step(model, batch, optimizer, loss_fn).detach()
    return as_loss(step(model, batch, optimizer))
