"""Can the output layer produce what the loss needs? The last activation's range against the targets.

A model whose final module is an activation can only output values in that activation's range. That
is right for a sigmoid before BCELoss, or a sigmoid on targets scaled into [0, 1]; it is a bug when the
range cannot reach the targets, or cannot give the loss the values it expects:

    final activation        wrong when
    ReLU, ReLU6, Softplus   classes (logits that cannot go negative: a class whose logits are all zero
                            gets no gradient), or regression targets below 0
    Sigmoid, Hardsigmoid    classes or logits for BCEWithLogitsLoss (a sigmoid applied twice: its outputs
                            in (0, 1) read as logits cap the confidence at sigmoid(1) = 0.73), or
                            regression targets outside [0, 1]
    Tanh, Hardtanh          classes, or regression targets outside [-1, 1]
    Softmax, LogSoftmax     over a dimension of size 1: the output is always 1 (or 0), whatever the input

The final module is the leaf module whose output tensor is the model's output, found with forward hooks;
an activation written as a function call in `forward` is not seen (no verdict, never a false one).
Regression targets count as out of reach when more than OUT_OF_REACH of the training targets (up to
MAX_ITEMS) lie outside the range: a sigmoid on [0, 1] targets has none outside, a sigmoid on
standardised targets about half (friedman1: 51 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import model_device, model_on_device, resolve_device, to_device
from dltips.core.state import eval_mode, rng_kept
from dltips.findings import Finding
from dltips.task import Task

__all__ = ["OutputLayer", "check_output_layer", "final_module"]

TIP = "initialization"
MAX_ITEMS = 2048
OUT_OF_REACH = 0.01
_RANGES: tuple[tuple[type, tuple[float, float]], ...] = (
    (nn.ReLU6, (0.0, 6.0)),  # before Hardtanh: ReLU6 is one
    (nn.ReLU, (0.0, math.inf)),
    (nn.Softplus, (0.0, math.inf)),
    (nn.Sigmoid, (0.0, 1.0)),
    (nn.Hardsigmoid, (0.0, 1.0)),
    (nn.Tanh, (-1.0, 1.0)),
)


@dataclass
class OutputLayer:
    """The model's final module, the range it can output and, for regression, the targets out of reach."""

    name: str | None
    module: str | None  # class name
    low: float
    high: float
    problem: str | None = None  # what is wrong, in words; None when nothing is
    fix: str | None = None
    out_of_reach: float | None = None  # fraction of regression targets outside [low, high]


def final_module(model: nn.Module, x: Any, run: Callable[[], Any] | None = None) -> tuple[str | None, nn.Module | None, Any]:
    """(name, module, output): the leaf module whose output is the model's output, or (None, None, output).
    `run` makes the forward pass (default `model(x)`), e.g. through a Task's `outputs`."""
    names = {m: n for n, m in model.named_modules()}
    produced: list[tuple[nn.Module, torch.Tensor]] = []  # kept alive, so that `is` below compares live tensors

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            produced.append((module, output))

    handles = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        output = run() if run is not None else model(x)
    finally:
        for h in handles:
            h.remove()
    module = next((m for m, o in reversed(produced) if o is output), None)
    return (names.get(module), module, output) if module is not None else (None, None, output)


def describe_output_layer(task: Task, model: nn.Module | None = None, max_items: int = MAX_ITEMS) -> OutputLayer:
    """What the final module can output, judged against the Task's kind, loss and training targets."""
    model = task.model if model is None else model
    x, y = to_device(task.first_batch(task.train, max_items), model_device(model))
    with torch.no_grad(), eval_mode(model):
        name, module, output = final_module(model, x, lambda: task.outputs(model, (x, y))[0])
    if module is None:
        return OutputLayer(None, None, -math.inf, math.inf)
    kind = type(module).__name__
    if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        dim = module.dim if module.dim is not None else -1
        if isinstance(output, torch.Tensor) and output.dim() > 0 and output.shape[dim] == 1:
            value = 1.0 if isinstance(module, nn.Softmax) else 0.0
            return OutputLayer(name, kind, value, value,
                               f"the output layer {name} ({kind}) normalises over a dimension of size 1, so the "
                               f"model always outputs {value:g} whatever its input: no gradient reaches any layer",
                               f"Remove the {kind}: a single output needs none (or a Sigmoid for a probability).")
        layer = OutputLayer(name, kind, *((0.0, 1.0) if isinstance(module, nn.Softmax) else (-math.inf, 0.0)))
        if isinstance(output, torch.Tensor) and output.dim() > 1 and dim % output.dim() == 0:
            layer.problem = (f"the output layer {name} ({kind}) normalises over dimension 0, the batch: each "
                             "item's output depends on the other items of its batch, not only on its classes")
            layer.fix = f"Normalise over the classes: {kind}(dim=1) (or dim=-1)."
        elif isinstance(module, nn.Softmax) and _is_cross_entropy(task.loss_fn) and task.kind != "regression":
            layer.problem = (f"the output layer {name} (Softmax) gives probabilities to CrossEntropyLoss, which "
                             "applies log_softmax itself: a softmax applied twice squashes the loss's range")
            layer.fix = "Remove the final Softmax (CrossEntropyLoss takes logits), or use log_softmax with nll_loss."
        return layer
    low, high = next((r for cls, r in _RANGES if isinstance(module, cls)), (-math.inf, math.inf))
    if isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6):
        low, high = float(module.min_val), float(module.max_val)
    layer = OutputLayer(name, kind, low, high)
    if (low, high) == (-math.inf, math.inf):
        return layer
    span = f"[{low:g}, {high:g}]" if math.isfinite(high) else f"[{low:g}, inf)"
    if task.kind in ("classification", "language-model") and task.output_form == "logits":
        layer.problem = (f"the output layer {name} ({kind}) bounds the logits to {span}: "
                         + ("a class whose logits it zeroes gets no gradient" if low == 0 and high == math.inf
                            else "the loss's softmax of bounded logits cannot become confident"))
        layer.fix = f"Remove the final {kind}: CrossEntropyLoss takes unbounded logits from a Linear layer."
    elif task.kind in ("binary", "multilabel") and task.output_form == "logits" and (low, high) != (-math.inf, math.inf):
        layer.problem = (f"the output layer {name} ({kind}) bounds the logits that BCEWithLogitsLoss reads to "
                         f"{span}" + (": a sigmoid applied twice caps the confidence at sigmoid(1) = 0.73"
                                      if high <= 1 else ""))
        layer.fix = (f"Remove the final {kind} (BCEWithLogitsLoss applies the sigmoid), or keep a Sigmoid and use "
                     "BCELoss.")
    elif task.kind == "regression":
        targets = y.float().reshape(len(y), -1)
        outside = float(((targets < low) | (targets > high)).float().mean())
        layer.out_of_reach = outside
        if outside > OUT_OF_REACH:
            layer.problem = (f"the output layer {name} ({kind}) can only output values in {span}, but "
                             f"{outside:.0%} of the training targets lie outside (they range from "
                             f"{float(targets.min()):.3g} to {float(targets.max()):.3g})")
            layer.fix = (f"Remove the final {kind} (a Linear output reaches any target), or scale the targets into "
                         f"{span}.")
    return layer


def _is_cross_entropy(loss_fn: Any) -> bool:
    import torch.nn.functional as F

    from dltips.task import DEFAULT_LOSSES

    return (isinstance(loss_fn, nn.CrossEntropyLoss) or loss_fn is F.cross_entropy
            or loss_fn in (DEFAULT_LOSSES["classification"], DEFAULT_LOSSES["language-model"]))


def check_output_layer(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
) -> list[Finding]:
    """Whether the model's final activation can produce what the loss needs (see the module docstring).

    One Finding, tip "initialization": fail when it cannot, pass when it can, skip when the final module is not
    an activation module (or the model ends in a function call). The model runs once, in eval mode, untouched.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    model = task.model if model is None else model
    model = model_on_device(model, resolve_device(device, model))
    with rng_kept(seed):
        layer = describe_output_layer(task, model, MAX_ITEMS if max_items is None else max_items)
    evidence = {"final_module": layer.name, "module": layer.module, "range": [layer.low, layer.high],
                "kind": task.kind, "output_form": task.output_form, "out_of_reach": layer.out_of_reach,
                "out_of_reach_limit": OUT_OF_REACH}
    if layer.problem is not None:
        return [Finding(TIP, "fail", "The output layer cannot produce what the loss needs",
                        layer.problem[0].upper() + layer.problem[1:] + ".", layer.fix,
                        {**evidence, "cause": "output-layer"})]
    if layer.module is None:
        return [Finding(TIP, "skip", "No output activation module to check",
                        "The model's output does not come from a leaf module's forward (it ends in a function call "
                        "or a Linear layer), so there is no activation range to judge.", None, evidence)]
    return [Finding(TIP, "pass", f"The output {layer.module} fits the task",
                    f"The final module {layer.name} ({layer.module}) outputs values in [{layer.low:g}, "
                    f"{layer.high:g}], which the {task.kind} task's loss and targets allow.", None, evidence)]
