"""The device rule, in one place, and moving batches to a device.

- None: where the model is (its first parameter, else its first buffer, else the CPU);
- "auto": this rank's GPU (LOCAL_RANK under torchrun, else `rank`) when CUDA is available, else the CPU;
- anything else: that device, which must exist (`ParamError` otherwise).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltips.core.params import ParamError


def model_device(model: nn.Module) -> torch.device:
    """Where `model` lives: its first parameter's device, else its first buffer's, else the CPU."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None = None, model: nn.Module | None = None, *,
                   rank: int | None = None) -> torch.device:
    """The device a check or the loop runs on, by the rule in this module's docstring."""
    if device is None:
        return model_device(model) if model is not None else torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", rank or 0))
            return torch.device("cuda", local % torch.cuda.device_count())
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise ParamError(f"device must be None, 'auto', a device string or a torch.device, got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ParamError(f"device must be None, 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ParamError(f"device {str(device)!r} was asked for but torch sees no CUDA device; use 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ParamError(f"device {str(device)!r} does not exist: torch sees {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ParamError("device 'mps' was asked for but it is not available; use 'cpu' or 'auto'")
    return device


def model_on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` itself when its parameters and buffers are on `device`, else a copy moved there (`model` stays put)."""
    index = device.index
    if index is None and device.type != "cpu":  # "cuda" means the current device, "mps" its only one
        index = torch.cuda.current_device() if device.type == "cuda" else 0
    if all(t.device.type == device.type and t.device.index == index
           for t in (*model.parameters(), *model.buffers())):
        return model
    return copy.deepcopy(model).to(device)


def to_device(x: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Move a batch input (a tensor, or a dict, list or tuple of them) to `device`."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=non_blocking)
    if isinstance(x, dict):
        return {k: to_device(v, device, non_blocking) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device, non_blocking) for v in x)
    return x


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, lowered by a cgroup CPU quota (containers).

    torch sizes its thread pool from the machine's CPU count, which a container's quota does not lower;
    more threads than CPUs make every parallel op wait for descheduled threads.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else max(cpus, 1)


def _cgroup_quota() -> float | None:
    """CPUs allowed by cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`), or None when there is no quota."""
    root = Path("/sys/fs/cgroup")
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def threads_at_most(n: int) -> Iterator[None]:
    """torch's intra-op threads lowered to `n` (never raised) inside the block, and restored after it."""
    before = torch.get_num_threads()
    if n < before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
