"""State kept across a block: module modes, gradients and the random generators.

Each context manager puts back exactly what it saved, also when the block raises.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from dltips.core.params import ParamError


@contextlib.contextmanager
def modes_kept(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module's train/eval flag back as it was, whatever the block does."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode for the block (no BatchNorm statistics updated, no dropout), modes restored after."""
    with modes_kept(model):
        model.eval()
        yield model


@contextlib.contextmanager
def grads_kept(model: nn.Module) -> Iterator[nn.Module]:
    """Put back each parameter's `.grad` object (None included) as it was before the block."""
    saved = [(p, p.grad) for p in model.parameters()]
    try:
        yield model
    finally:
        for p, grad in saved:
            p.grad = grad


@contextlib.contextmanager
def rng_kept(seed: int | None = None) -> Iterator[None]:
    """Save the torch, CUDA, numpy and python generators, optionally seed torch, and restore them after."""
    state = get_rng_state()
    try:
        if seed is not None:
            torch.manual_seed(seed)
        yield
    finally:
        set_rng_state(state)


def get_rng_state() -> dict[str, Any]:
    """Snapshot the torch (CPU and CUDA), numpy-global and python ``random`` generators.

    The result holds only CPU tensors and plain python values, so it can go
    through ``torch.save`` (also with ``weights_only=True`` loading).
    """
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators from a dict made by `get_rng_state`."""
    if not isinstance(state, dict) or not {"torch", "numpy", "python"} <= state.keys():
        raise ParamError("state must be a dict from get_rng_state() with keys 'torch', 'numpy', 'python'")
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) != torch.cuda.device_count():
            raise ParamError(
                f"state holds {len(cuda_states)} CUDA generators but {torch.cuda.device_count()} devices are visible"
            )
        torch.cuda.set_rng_state_all(cuda_states)
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["bit_generator"],
            np.asarray(np_state["key"], dtype=np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
