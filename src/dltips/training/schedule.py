"""The one-cycle learning-rate policy as a resumable PyTorch scheduler.

One cycle (Smith & Topin, "Super-Convergence", 2017, arXiv:1708.07120;
Smith, "A disciplined approach to neural network hyper-parameters",
2018, arXiv:1803.09820): warm the learning rate up from ``max_lr / div`` to
``max_lr``, then anneal it to ``max_lr / div_final``, while momentum moves the
other way. High LR with low momentum explores; the long annealing tail
settles into a flat minimum.

Every value is a closed-form function of the schedule position, so a run
restored from checkpoints continues on exactly the same curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from dltips.core.params import ParamError, instance, int_at_least, number, positive, probability

__all__ = ["OneCycle", "one_cycle_value"]


def _cosine(start: float, end: float, t: float) -> float:
    """Cosine interpolation from ``start`` (t=0) to ``end`` (t=1), exact at both ends."""
    w = (1.0 + math.cos(math.pi * t)) / 2.0
    return start * w + end * (1.0 - w)


def one_cycle_value(
    position: int,
    total_steps: int,
    pct_start: float,
    start: float,
    peak: float,
    end: float,
) -> float:
    """Value of a two-phase cosine cycle at ``position``.

    The curve goes from ``start`` at position 0 to ``peak`` at
    ``pct_start * (total_steps - 1)`` and on to ``end`` at ``total_steps - 1``.
    Position ``total_steps`` (the scheduler step after the last optimizer step)
    keeps the final value.
    """
    if not 0 <= position <= total_steps:
        raise ParamError(f"position must be in [0, {total_steps}], got {position}")
    last = total_steps - 1
    p = min(position, last)
    warmup_end = pct_start * last
    if p <= warmup_end:
        return _cosine(start, peak, p / warmup_end)
    return _cosine(peak, end, (p - warmup_end) / (last - warmup_end))


def _max_lrs(max_lr: float | Sequence[float], num_groups: int) -> list[float]:
    if isinstance(max_lr, Sequence) and not isinstance(max_lr, str):
        if len(max_lr) != num_groups:
            raise ParamError(
                f"max_lr has {len(max_lr)} values but the optimizer has {num_groups} "
                "param groups; pass one value per group or a single float"
            )
        return [positive(f"max_lr[{i}]", v) for i, v in enumerate(max_lr)]
    return [positive("max_lr", max_lr)] * num_groups


def _moms(moms: Sequence[float] | None) -> tuple[float, float, float] | None:
    if moms is None:
        return None
    if not isinstance(moms, Sequence) or len(moms) != 3:
        raise ParamError(
            f"moms must be a sequence of 3 numbers (start, at peak LR, end) or None, got {moms!r}"
        )
    start, peak, end = (probability(f"moms[{i}]", m) for i, m in enumerate(moms))
    return (start, peak, end)


def _pct_start(value: Any) -> float:
    """A fraction strictly inside (0, 1): both phases of the cycle need a length."""
    value = number("pct_start", value)
    if not 0.0 < value < 1.0:
        raise ParamError(f"pct_start must be in (0, 1), got {value!r}")
    return value


def _momentum_key(optimizer: Optimizer) -> str:
    """'betas' for Adam-like optimizers, 'momentum' for SGD-like ones."""
    for key in ("betas", "momentum"):
        if all(key in g for g in optimizer.param_groups):
            return key
    raise ParamError(
        f"{type(optimizer).__name__} has no 'momentum' or 'betas' in its param groups, "
        "so momentum cannot be cycled; pass moms=None (Recipe(moms=None) in dltips.fit)"
    )


def _set_group_value(group: dict[str, Any], key: str, value: float) -> None:
    if isinstance(group[key], Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


class OneCycle(LRScheduler):
    """One-cycle LR (and inverse momentum) schedule over ``total_steps`` optimizer steps.

    Call ``scheduler.step()`` once after every ``optimizer.step()``. The
    position ``p`` is the number of such calls (0 after construction); the
    optimizer step taken at position ``p`` uses ``lr_at(p)``.

    Args:
        optimizer: the wrapped optimizer.
        max_lr: peak LR, a float or one value per param group.
        total_steps: number of optimizer steps the cycle spans (>= 2).
        pct_start: fraction of the cycle spent warming up, in (0, 1).
        div: the cycle starts at ``max_lr / div``.
        div_final: the cycle ends at ``max_lr / div_final``.
        moms: momentum (SGD ``momentum``, Adam ``betas[0]``) at the start, at
            the LR peak and at the end; ``None`` leaves momentum alone. An SGD
            optimizer built with ``momentum=0`` gains momentum from this.
        last_epoch: position of a run being resumed by hand; prefer
            ``load_state_dict``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | Sequence[float],
        total_steps: int,
        pct_start: float = 0.25,
        div: float = 25.0,
        div_final: float = 1e5,
        moms: Sequence[float] | None = (0.95, 0.85, 0.95),
        last_epoch: int = -1,
    ) -> None:
        instance("optimizer", optimizer, Optimizer, "a torch.optim.Optimizer")
        total_steps = int_at_least("total_steps", total_steps, 2)
        pct_start = _pct_start(pct_start)
        last_epoch = int_at_least("last_epoch", last_epoch, -1, total_steps - 1)
        self.max_lrs = _max_lrs(max_lr, len(optimizer.param_groups))
        self.total_steps = total_steps
        self.pct_start = pct_start
        self.div = positive("div", div)
        self.div_final = positive("div_final", div_final)
        self.moms = _moms(moms)
        self.momentum_key = None if self.moms is None else _momentum_key(optimizer)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, position: int) -> list[float]:
        """LR of every param group at schedule position ``position``."""
        return [
            one_cycle_value(position, self.total_steps, self.pct_start, m / self.div, m, m / self.div_final)
            for m in self.max_lrs
        ]

    def momentum_at(self, position: int) -> float | None:
        """Momentum (or beta1) at ``position``; None when momentum is not cycled."""
        if self.moms is None:
            return None
        return one_cycle_value(position, self.total_steps, self.pct_start, *self.moms)

    def get_lr(self) -> list[float]:
        return self.lr_at(self.last_epoch)

    def step(self, epoch: None = None) -> None:
        """Advance one position and write LR and momentum into the optimizer."""
        if epoch is not None:
            raise TypeError("OneCycle.step() takes no epoch; call it once per optimizer step")
        if self.last_epoch + 1 > self.total_steps:
            raise ValueError(
                f"OneCycle was stepped past its end: the schedule has total_steps={self.total_steps} "
                "steps and all were used; raise total_steps to the number of optimizer steps you take"
            )
        super().step()
        self._apply_momentum()

    def _apply_momentum(self) -> None:
        m = self.momentum_at(self.last_epoch)
        if m is None:
            return
        for group in self.optimizer.param_groups:
            if self.momentum_key == "betas":
                beta1, beta2 = group["betas"]
                if isinstance(beta1, Tensor):
                    beta1.fill_(m)
                else:
                    group["betas"] = (m, beta2)
            else:
                _set_group_value(group, "momentum", m)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the position and re-apply its LR and momentum to the optimizer.

        Re-applying makes the result independent of whether the optimizer's
        state was loaded before or after this one.
        """
        saved_groups = len(state_dict.get("max_lrs", self.max_lrs))
        if saved_groups != len(self.optimizer.param_groups):
            raise ValueError(
                f"state_dict is for {saved_groups} param groups but the optimizer has "
                f"{len(self.optimizer.param_groups)}"
            )
        super().load_state_dict(state_dict)
        for group, lr in zip(self.optimizer.param_groups, self.lr_at(self.last_epoch), strict=True):
            _set_group_value(group, "lr", lr)
        self._apply_momentum()
        self._last_lr = [
            g["lr"].clone() if isinstance(g["lr"], Tensor) else g["lr"] for g in self.optimizer.param_groups
        ]


class EveryKthStep:
    """A scheduler stepped on every `k`-th call of `step()` only; any other attribute is the scheduler's.

    The doctor's short run trains small datasets for many more epochs than a user's own run (at least
    its step count), so a per-epoch schedule (`StepLR(gamma=0.7)` for pytorch/examples' 14 epochs)
    would decay the LR far past anything the user's program reaches. Stepping it once every `k`
    epochs keeps the schedule to the number of epochs the short run stands for.
    """

    def __init__(self, scheduler: Any, k: int):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.scheduler, self.k, self.calls = scheduler, k, 0

    def step(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls % self.k == 0:
            self.scheduler.step(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["scheduler"], name)
