"""Mixed-precision training: one object for autocast, loss scaling and clipping.

Micikevicius et al., "Mixed Precision Training" (ICLR 2018): run matmuls and
convolutions in 16-bit, keep fp32 master weights, and scale the loss so that
small fp16 gradients do not flush to zero. bf16 has fp32's exponent range, so
it needs no loss scaling; fp16 (5 exponent bits, max ~65504) does.

    amp = MixedPrecision("bf16")
    with amp.autocast():
        loss = loss_fn(model(x), y)
    amp.backward(loss)
    amp.clip_grad_norm_(model.parameters(), 1.0, optimizer)   # unscales first
    amp.step(optimizer)
    optimizer.zero_grad(set_to_none=True)

The order matters for fp16: gradients must be unscaled before they are
clipped or inspected, or the threshold is compared to grad * scale.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dltips.core.device import model_device
from dltips.core.params import ParamError, instance, one_of, positive, positive_int

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": torch.float32}


class MixedPrecision:
    """Autocast + (for fp16) dynamic loss scaling behind one small interface.

    Args:
        mode: "bf16" (no scaler needed; the recommended mode on CPU and on
            Ampere or newer GPUs), "fp16" (uses a GradScaler; for GPUs without
            bf16; also runs on CPU, where it is mostly useful for testing), or
            "off" (plain fp32; every method degrades to the ordinary call).
        device_type: "cuda", "cpu", ...; defaults to "cuda" when available.

    `step` runs one optimizer per iteration: it also updates the loss scale.
    """

    def __init__(self, mode: str = "bf16", device_type: str | torch.device | None = None) -> None:
        one_of("mode", mode, sorted(_DTYPES))
        if device_type is None:
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        elif isinstance(device_type, torch.device):
            device_type = device_type.type
        else:
            instance("device_type", device_type, str, "a str such as 'cuda' or 'cpu'")
        if device_type == "cuda" and not torch.cuda.is_available():
            # torch would only warn and silently disable autocast and scaling.
            raise ParamError("device_type='cuda' but CUDA is not available; use 'cpu' or leave it None")
        self.mode = mode
        self.device_type = device_type
        self.enabled = mode != "off"
        self.dtype = _DTYPES[mode]  # compute dtype inside autocast regions
        self.scaler = torch.amp.GradScaler(device_type) if mode == "fp16" else None
        self.skipped_steps = 0
        self._unscaled: set[int] = set()  # ids of optimizers unscaled since their last step

    def __repr__(self) -> str:
        return f"MixedPrecision(mode={self.mode!r}, device_type={self.device_type!r})"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context for the forward pass and loss; a null context when off."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        """Backpropagate `loss`, scaled first in fp16 mode."""
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ParamError(f"loss must be a scalar tensor, got {shape}; reduce it (e.g. .mean()) first")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the optimizer's gradients by the loss scale (fp16 only); safe to call twice per step."""
        if self.scaler is None or id(optimizer) in self._unscaled:
            return
        self.scaler.unscale_(optimizer)
        self._unscaled.add(id(optimizer))

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Step the optimizer; in fp16 mode skip it if any gradient is inf/nan.

        Returns False for a skipped step. A skip is detected by the loss scale
        going down: GradScaler.update backs off exactly when it found inf/nan.
        Gradients are not zeroed here.
        """
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        self._unscaled.discard(id(optimizer))
        if self.scaler.get_scale() < scale:
            self.skipped_steps += 1
            return False
        return True

    def clip_grad_norm_(
        self,
        parameters: Tensor | Iterable[Tensor],
        max_norm: float,
        optimizer: torch.optim.Optimizer,
    ) -> Tensor:
        """Unscale (fp16) and then clip the gradients; returns the total norm before clipping.

        In fp16 mode the norm is inf/nan when the step will be skipped.
        """
        if max_norm != math.inf:  # inf: measure the norm without clipping
            positive("max_norm", max_norm)
        self.unscale_(optimizer)
        return nn.utils.clip_grad_norm_(parameters, max_norm)

    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the loss scale and skip count.

        A checkpoint from another mode loads too (switching precision on
        resume is legitimate); its scaler state is used only when both this
        object and the checkpoint are fp16.
        """
        missing = {"mode", "scaler", "skipped_steps"} - set(state)
        if missing:
            raise ParamError(f"state is missing keys {sorted(missing)}; expected a MixedPrecision.state_dict()")
        self.skipped_steps = int(state["skipped_steps"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])


@dataclass(frozen=True)
class AmpPlan:
    """Batch size, learning rate and epochs proposed for a mixed-precision run.

    memory_per_sample_* are bytes of peak memory per sample during one
    forward+backward, None where not measured; ratio = full / amp.
    """

    batch_size: int
    lr: float
    epochs: int
    memory_per_sample_full: float | None
    memory_per_sample_amp: float | None
    ratio: float | None
    device: str
    note: str


def plan_from_memory(
    full_per_sample: float,
    amp_per_sample: float,
    batch_size: int,
    lr: float,
    epochs: int,
    rule: str = "linear",
    *,
    device: str = "cuda",
) -> AmpPlan:
    """Spend the memory that mixed precision frees on a larger batch.

    The new batch is batch_size * full/amp rounded down to a multiple of 8
    (tensor-core friendly) and never below batch_size. The learning rate
    follows `rule` (see `scale_lr`); epochs grow by new/old batch, rounded up,
    so the number of optimizer steps, and hence the schedule, stays the same.
    """
    from dltips.training.lr import scale_lr

    positive("full_per_sample", full_per_sample)
    positive("amp_per_sample", amp_per_sample)
    _check_run(batch_size, lr, epochs)

    ratio = full_per_sample / amp_per_sample
    new_batch = max(batch_size, int(batch_size * ratio) // 8 * 8)
    new_lr = scale_lr(lr, batch_size, new_batch, rule)
    new_epochs = -(-epochs * new_batch // batch_size)
    if new_batch == batch_size:
        note = (
            f"mixed precision saves too little memory per sample (ratio {ratio:.2f}) "
            f"to grow batch {batch_size}; keep the run as it is"
        )
    else:
        note = (
            f"mixed precision uses {ratio:.2f}x less memory per sample: batch {batch_size} -> {new_batch}, "
            f"lr {lr:g} -> {new_lr:g} ({rule} rule), epochs {epochs} -> {new_epochs} "
            "to keep the same number of optimizer steps"
        )
    return AmpPlan(
        batch_size=new_batch,
        lr=new_lr,
        epochs=new_epochs,
        memory_per_sample_full=float(full_per_sample),
        memory_per_sample_amp=float(amp_per_sample),
        ratio=ratio,
        device=device,
        note=note,
    )


def amp_plan(
    model: nn.Module,
    sample_batch: Any,
    batch_size: int,
    lr: float,
    epochs: int,
    loss_fn: Callable[..., Tensor] | None = None,
    mode: str = "bf16",
    rule: str = "linear",
) -> AmpPlan:
    """Measure how much memory autocast saves and propose a bigger batch to match.

    sample_batch is a tensor (or a dict of tensors, passed as one argument as in a Task) fed to
    the model, or a tuple (inputs, target). The loss is loss_fn(out, target),
    loss_fn(out) without a target, or out.float().mean() without a loss_fn;
    the saved activations, and so the memory, hardly depend on which.

    Only CUDA reports peak memory, so on any other device the inputs come back
    unchanged with a note. Fixed costs inside the pass (parameter gradients,
    autocast's cached 16-bit weight copies) are charged per sample, which makes
    the ratio conservative; use a sample batch near the real batch size. The model's
    parameters, gradients, buffers and the RNG state are left as they were.
    """
    one_of("mode", mode, ("bf16", "fp16"))
    instance("model", model, nn.Module, "an nn.Module")
    _check_run(batch_size, lr, epochs)
    from dltips.training.lr import scale_lr

    scale_lr(lr, batch_size, batch_size, rule)  # validates rule (and lr) the same way the plan will
    inputs, target = _split_batch(sample_batch)
    n = _batch_len(inputs)
    device = _model_device(model)
    if device.type != "cuda":
        return AmpPlan(
            batch_size=batch_size,
            lr=lr,
            epochs=epochs,
            memory_per_sample_full=None,
            memory_per_sample_amp=None,
            ratio=None,
            device=str(device),
            note=(
                f"model is on {device}; measuring the memory gain of mixed precision needs a CUDA GPU "
                "(peak-memory statistics), so the run is returned unchanged"
            ),
        )
    measure = functools.partial(_peak_pass_bytes, model, inputs, target, loss_fn, device=device)
    # Unmeasured warm-up: library workspaces and other one-time allocations
    # would otherwise be charged to whichever pass runs first.
    measure(None), measure(_DTYPES[mode])
    full, amp = measure(None), measure(_DTYPES[mode])
    return plan_from_memory(full / n, amp / n, batch_size, lr, epochs, rule, device=str(device))


def _peak_pass_bytes(
    model: nn.Module,
    inputs: Any,
    target: Any,
    loss_fn: Callable[..., Tensor] | None,
    dtype: torch.dtype | None,
    device: torch.device,
) -> int:
    """Peak bytes allocated above the starting point by one forward+backward, state restored afterwards."""
    params = [p for p in model.parameters()]
    saved_grads = [p.grad for p in params]
    saved_buffers = [b.detach().clone() for b in model.buffers()]
    try:
        for p in params:
            p.grad = None
        with torch.random.fork_rng(devices=[device]):
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            ctx = torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()
            with ctx:
                out = model(inputs)
                if loss_fn is None:
                    loss = _first_tensor(out).float().mean()
                elif target is None:
                    loss = loss_fn(out)
                else:
                    loss = loss_fn(out, target)
            loss.backward()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - before
            del out, loss
    finally:
        with torch.no_grad():
            for p, g in zip(params, saved_grads):
                p.grad = g
            for b, saved in zip(model.buffers(), saved_buffers):
                b.copy_(saved)
    return peak


def _check_run(batch_size: int, lr: float, epochs: int) -> None:
    positive_int("batch_size", batch_size)
    positive("lr", lr)
    positive_int("epochs", epochs)


def _split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise ParamError(f"sample_batch as a tuple must be (inputs, target), got {len(batch)} items")
        return batch[0], batch[1]
    return batch, None


def _batch_len(inputs: Any) -> int:
    t = _first_tensor(inputs) if isinstance(inputs, Mapping) else inputs
    if not isinstance(t, Tensor) or t.ndim == 0 or t.shape[0] == 0:
        raise ParamError("sample_batch inputs must be a tensor (or dict of tensors) with a non-empty batch dim")
    return t.shape[0]


def _first_tensor(obj: Any) -> Tensor:
    """The model output (or first tensor inside a tuple/dict output) used for the default loss."""
    if isinstance(obj, Tensor):
        return obj
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (tuple, list)) else ()
    for v in values:
        if isinstance(v, Tensor):
            return v
    raise TypeError(f"expected a tensor or a tuple/dict holding one, got {type(obj).__name__}; pass loss_fn")


def _model_device(model: nn.Module) -> torch.device:
    """`model_device`, refusing a model without parameters: there is nothing to train in mixed precision."""
    if next(model.parameters(), None) is None:
        raise ParamError("model has no parameters; there is nothing to train in mixed precision")
    return model_device(model)
