"""The device rule, in one place, and moving batches to a device.

- None: where the model is (its first parameter, else its first buffer, else the CPU);
- "auto": this rank's GPU (LOCAL_RANK under torchrun, else `rank`) when CUDA is available, else the CPU;
- anything else: that device, which must exist (`ParamError` otherwise).
"""

from __future__ import annotations

import copy
import os
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
