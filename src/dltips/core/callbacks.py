"""The callback protocol of `dltips.fit`: the state a callback sees and the events it receives.

A callback overrides any of the event methods; each receives the live `FitState` (model,
optimizer, step, epoch, last loss, history). Setting `state.stop = True` ends training after the
current step. When training raises, `on_exception` is called instead of `on_fit_end`, then the
error propagates. The concrete callbacks live with what they do (`dltips.training.callbacks`,
`dltips.monitor`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class FitState:
    """What callbacks see while `fit` runs."""

    task: Any  # the dltips.Task being trained
    model: nn.Module  # the model being trained (DDP-wrapped under torch.distributed)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    epochs: int
    total_steps: int
    device: torch.device
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    batch: int = 0  # next batch of the epoch
    step: int = 0  # optimizer steps taken
    loss: torch.Tensor | None = None  # the last micro-batch's mean loss, on the device
    train_loss: float = math.nan  # mean training loss of the epoch so far, at the last sync
    history: list[dict[str, float]] = field(default_factory=list)
    stop: bool = False


class Callback:
    """Base class: every event is a no-op until overridden."""

    def on_fit_start(self, state: FitState) -> None: ...

    def on_epoch_start(self, state: FitState) -> None: ...

    def on_step_end(self, state: FitState) -> None:
        """After each optimizer step (once per accumulation window)."""

    def on_sync(self, state: FitState) -> None:
        """After the loop synchronised with the device (`state.train_loss` is fresh)."""

    def on_eval_end(self, state: FitState, metrics: dict[str, float]) -> None: ...

    def on_epoch_end(self, state: FitState) -> None: ...

    def on_fit_end(self, state: FitState) -> None: ...

    def on_exception(self, state: FitState, error: BaseException) -> None:
        """When training raises (the error is re-raised afterwards): release hooks, files, ..."""
