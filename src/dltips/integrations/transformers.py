"""dltips in the Hugging Face Trainer: `Trainer(..., callbacks=[DltipsCallback()])`.

    from dltips.integrations.transformers import DltipsCallback

    callback = DltipsCallback(html="report.html")
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    with callback:                 # removes every hook, also when training raises
        trainer.train()
    callback.report                # the Report (None when training raised)

What the callback does, through a `Session` (see `dltips.integrations.session`):

- at the start of training it attaches `dltips.watch` to the model and to the
  plain torch optimizer behind accelerate's wrapper;
- just before the first training forward, a forward pre-hook runs the checks
  on that batch (`initialization`, `verify-transforms`), with the random number
  generators put back afterwards, so the run is the same with and without them;
- after each optimizer step it logs the exact token-weighted training loss of the
  step's accumulation window (see below), which the watch checks for NaN;
- after each evaluation it passes the metrics it knows (`eval_loss` as
  `valid_loss`, `eval_accuracy` as `valid_accuracy`, ...) to `metric-divergence`;
- at the end of training it removes its hooks and makes the Report (printed and
  written on the main process only).

The training loss. The Trainer's logged `loss` is a mean over logging steps of
per-step losses. A forward hook here reads each training micro-batch's
`output.loss` and counts its labels that enter the loss (`labels != -100`, after
the shift for a causal LM, or the batch's `shift_labels`). A model that received
`num_items_in_batch` (transformers >= 4.46 passes the window's label count to
models that accept loss kwargs) returned sum / num_items_in_batch, so its
summed loss is loss x num_items_in_batch; otherwise it returned a mean over its
own labels, and its summed loss is loss x count. The step's loss is
sum of summed losses / sum of counts: the mean cross-entropy per counted label
over the whole window, whatever the micro-batch sizes or padding. Under
torch.distributed it is the loss of this process's share of the window. Nothing
is read back to the host for it: the watch reads it with its other statistics.

transformers is imported when a callback is built, not when this module is:
`DltipsCallback(...)` returns an instance of a subclass of both `DltipsCallback`
and `transformers.TrainerCallback` (made once, on first use), so
`isinstance(callback, TrainerCallback)` holds and the module imports without
transformers installed.

Limitations. The Trainer has no event for a failed run, so hooks are removed
at `on_train_end`, by `close()`, or on leaving a `with callback:` block. The
training loss needs a model that returns its loss and receives the labels:
with label smoothing or a `compute_loss_func` the Trainer keeps the labels from
the model, and no training loss is logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dltips.diagnosis.report import Report
from dltips.integrations.session import Session, call_model, items_in, output_field, plain_optimizer, validation_metrics
from dltips.monitor.watch import DEFAULT_EVERY
from dltips.task import IGNORE_INDEX, shifted_labels

TRANSFORMERS_HINT = 'pip install "dltips[transformers]"'
# Keyword arguments of a training forward that are targets or loss scaling, not the model's inputs.
NOT_INPUTS = frozenset({"labels", "shift_labels", "num_items_in_batch", "return_loss"})
_BOTH_NAME = "_TrainerDltipsCallback"  # the subclass of DltipsCallback and TrainerCallback, made on first use
_both: dict[type, type] = {}


def _trainer_callback_class() -> type:
    """transformers' TrainerCallback, imported only when a callback is built."""
    try:
        from transformers import TrainerCallback
    except ImportError as error:
        raise ImportError(f"DltipsCallback needs the transformers package: {TRANSFORMERS_HINT} ({error})") from error
    return TrainerCallback


class DltipsCallback:
    """A `transformers.TrainerCallback` that runs dltips's checks and monitors during `Trainer.train()`.

    every, sinks: as for `dltips.watch`. checks: run the first-batch checks.
    html, json: paths the report is written to at the end of training (main
    process only). kind, n_classes: what the model predicts (see `Task`); inferred
    from the first batch when left out. objective: the metric `metric-divergence`
    reads the loss against (e.g. "valid_accuracy"). print_report: print the
    terminal summary at the end of training.

    After training: `report` (the Report), `session` (the watch, the first-batch
    findings), `last_loss` (the token-weighted loss of the last optimizer step, a
    tensor on the model's device). Call `close()` (or use `with callback:`) so
    that a run that raises leaves no hooks behind.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> DltipsCallback:
        base = _trainer_callback_class()
        if issubclass(cls, base):
            return super().__new__(cls)
        return super().__new__(_with_trainer_callback(cls, base))

    def __init__(
        self,
        every: int = DEFAULT_EVERY,
        sinks: Any = None,
        checks: bool = True,
        html: str | None = None,
        json: str | None = None,
        kind: str | None = None,
        n_classes: int | None = None,
        objective: str | None = None,
        print_report: bool = True,
    ):
        self._options = {"every": every, "sinks": sinks, "checks": checks, "html": html, "json": json,
                         "kind": kind, "n_classes": n_classes, "objective": objective, "print_report": print_report}
        self.session = Session(**self._options)  # also checks the options now, not at the start of training
        self.report: Report | None = None
        self.last_loss: torch.Tensor | None = None
        self._runs = 0
        self._shifts_labels = False
        self._handles: list[Any] = []
        self._first_batch_handle: Any = None
        self._n_train: int | None = None
        self._n_valid: int | None = None
        self._reset_window()

    def __enter__(self) -> DltipsCallback:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook the callback added (its own and the watch's); safe to call more than once.

        The Trainer calls no event when training raises: call this in a `finally`
        block, or use `with callback: trainer.train()`. No report is made for a run
        that did not reach `on_train_end`; `callback.session.watch.findings()` still
        reads what the watch measured.
        """
        self._remove_hooks()
        if self.session.watch.attached:
            self.session.watch.detach()

    # ------------------------------------------------------------------ Trainer events

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       optimizer: torch.optim.Optimizer | None = None, train_dataloader: Any = None,
                       eval_dataloader: Any = None, **kwargs: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"DltipsCallback.on_train_begin needs the Trainer's model, got {type(model).__name__}")
        self.close()  # an earlier run of this callback that raised
        if self._runs:
            self.session = Session(**self._options)  # one session per train() call
        self._runs += 1
        self.report, self.last_loss = None, None
        self._reset_window()
        if not state.is_world_process_zero:
            self.session.print_report, self.session.html, self.session.json = False, None, None
        self._shifts_labels = loss_shifts_labels(model)
        self._n_train, self._n_valid = items_in(train_dataloader), items_in(eval_dataloader)
        self.session.start(model, plain_optimizer(optimizer), start_step=state.global_step)
        self._handles.append(model.register_forward_hook(self._on_forward, with_kwargs=True))
        if self.session.checks:
            self._first_batch_handle = model.register_forward_pre_hook(self._on_first_forward, with_kwargs=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if isinstance(self._count, torch.Tensor):
            self.last_loss = self._loss_sum / self._count.clamp(min=1)
            self.session.log(loss=self.last_loss)
        self._reset_window()

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None,
                    eval_dataloader: Any = None, **kwargs: Any) -> None:
        known = validation_metrics(metrics or {})
        if not known or not self.session.watch.attached:
            return  # nothing dltips reads, or an evaluation outside `train()`
        size = items_in(eval_dataloader)
        self._n_valid = size or self._n_valid
        n_items = size if size and self.session.kind not in (None, "language-model") else None
        self.session.log_eval(known, step=state.global_step, n_items=n_items)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._remove_hooks()
        self.report = self.session.finish(n_train=self._n_train, n_valid=self._n_valid)

    # ------------------------------------------------------------------ hooks on the model

    def _on_first_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Before the first training forward: the first-batch checks on its inputs and labels."""
        if not (module.training and torch.is_grad_enabled()):
            return  # an evaluation before training (eval_on_start)
        self._first_batch_handle.remove()
        self._first_batch_handle = None
        x, y = first_batch(kwargs, self._shifts_labels)
        self.session.check_first_batch(module, x, y, forward=call_model)  # a batch it cannot read gives a skip

    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """After each training forward: add the micro-batch's summed loss and label count to the window."""
        if not (module.training and torch.is_grad_enabled()):
            return
        loss = output_field(output, "loss")
        counted = counted_labels(kwargs, self._shifts_labels)
        if not isinstance(loss, torch.Tensor) or counted is None:
            return
        loss = loss.detach().float().reshape(-1)[0]
        items = kwargs.get("num_items_in_batch")
        if isinstance(items, torch.Tensor):
            items = items.detach().reshape(-1)[0].to(loss.device)
        self._loss_sum = self._loss_sum + loss * (counted if items is None else items)
        self._count = self._count + counted

    def _reset_window(self) -> None:
        self._loss_sum: torch.Tensor | float = 0.0
        self._count: torch.Tensor | int = 0

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._first_batch_handle is not None:
            self._first_batch_handle.remove()
            self._first_batch_handle = None


def _with_trainer_callback(cls: type, base: type) -> type:
    """The subclass of `cls` and transformers' TrainerCallback that callbacks are made of (made once per class)."""
    both = _both.get(cls)
    if both is None or not issubclass(both, base):
        qualname = _BOTH_NAME if cls is DltipsCallback else f"{cls.__qualname__}.{_BOTH_NAME}"
        both = type(cls.__name__, (cls, base), {"__module__": cls.__module__, "__qualname__": qualname,
                                                 "__doc__": cls.__doc__})
        _both[cls] = both
    return both


def __getattr__(name: str) -> type:
    """`_TrainerDltipsCallback`, made on first use: pickle finds the callback's class by this name."""
    if name == _BOTH_NAME:
        return _with_trainer_callback(DltipsCallback, _trainer_callback_class())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------- helpers


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model behind DistributedDataParallel (`.module`) and PEFT (`get_base_model()`) wrappers."""
    for _ in range(8):
        inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif callable(getattr(model, "get_base_model", None)):
            inner = model.get_base_model()
            if inner is model:
                break
            model = inner
        else:
            break
    return model


def loss_shifts_labels(model: nn.Module) -> bool:
    """Whether the model's loss predicts labels[t + 1] at position t (a causal LM).

    Not an encoder-decoder, and the model's `loss_type` maps to transformers'
    causal-LM loss; without a `loss_type` (GPT-2's `GPT2LMHeadModel` has none), the
    class name: `...ForCausalLM` or `...LMHeadModel`.
    """
    model = unwrap_model(model)
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False
    loss_type = getattr(model, "loss_type", None)
    try:
        from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
    except ImportError:
        loss_type = None
    if loss_type is not None:
        return LOSS_MAPPING.get(loss_type) is ForCausalLMLoss
    name = type(model).__name__
    return name.endswith("ForCausalLM") or name.endswith("LMHeadModel")


def aligned_labels(kwargs: Mapping[str, Any], shifts: bool) -> torch.Tensor | None:
    """The forward's targets aligned with its logits: `shift_labels`, shifted `labels`, or `labels`; None without them."""
    if isinstance(kwargs.get("shift_labels"), torch.Tensor):
        return kwargs["shift_labels"]
    labels = kwargs.get("labels")
    if not isinstance(labels, torch.Tensor):
        return None
    return shifted_labels(labels) if shifts and labels.dim() >= 2 else labels


def counted_labels(kwargs: Mapping[str, Any], shifts: bool) -> torch.Tensor | None:
    """How many labels the forward's loss averages over (a 0-d tensor on the device, no host sync)."""
    if isinstance(kwargs.get("shift_labels"), torch.Tensor):
        return (kwargs["shift_labels"] != IGNORE_INDEX).sum()
    labels = kwargs.get("labels")
    if not isinstance(labels, torch.Tensor):
        return None
    if labels.is_floating_point():  # regression or multilabel targets: a mean over rows
        return torch.tensor(labels.shape[0], device=labels.device)
    if shifts and labels.dim() >= 2:
        labels = labels[:, 1:]
    return (labels != IGNORE_INDEX).sum()


def first_batch(kwargs: Mapping[str, Any], shifts: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """(inputs, targets) of a training forward for the first-batch checks.

    Inputs are the tensor keyword arguments with one row per item (not the
    labels, nor `num_items_in_batch`); targets are aligned with the logits.
    """
    y = aligned_labels(kwargs, shifts)
    rows = None if y is None else y.shape[0]
    x = {k: v for k, v in kwargs.items() if k not in NOT_INPUTS and isinstance(v, torch.Tensor) and v.dim() >= 1
         and (rows is None or v.shape[0] == rows)}
    return x, y
