"""Is the loss a mean over the items of a batch, or a sum? Its scale against the batch size.

The test is exact and needs no data assumption: the loss of a batch fed twice over (the same outputs
and targets, concatenated) over the loss of the batch once. A mean over items gives 1, a sum over
items 2 (a sum over tokens too; class weights and `ignore_index` keep a mean at 1, since every weight
and count doubles with it). The outputs are computed once, in eval mode, so no BatchNorm statistic
or dropout draw enters.

Why it matters (tip batch-size-lr-scaling): a summed loss's gradient is the batch size times a mean's.
With SGD, with or without momentum, the step grows with it, so the LR that suits a mean-reduced loss
is `batch_size` times too high, and any change of batch size changes the effective LR. Adam, AdamW,
RMSprop, Adagrad, Adadelta and their kin divide the gradient by its own scale and do not care
(`SCALE_FREE`).

Calibration (tests/calibration/cause_set.py): the digits MLP with `cross_entropy(reduction="sum")`
and SGD at 0.05 (a mean's LR) cannot overfit 32 items (loss 74 to 66 in 300 steps, 98% of a ReLU
layer dead); at 0.05 / 64 it is healthy, and with Adam at 1e-3 the sum does not matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import model_device, model_on_device, resolve_device, to_device
from dltips.core.params import int_at_least
from dltips.core.state import eval_mode, rng_kept
from dltips.findings import Finding
from dltips.task import Task

__all__ = ["Reduction", "check_loss_reduction", "loss_reduction", "sum_reduction_cause"]

TIP = "batch-size-lr-scaling"
ITEMS = 8  # items of the batch that is fed once and twice
TOLERANCE = 0.05  # a ratio within this of 1 is a mean, of 2 a sum
SCALE_FREE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam,
              torch.optim.Adagrad, torch.optim.Adadelta, torch.optim.RMSprop, torch.optim.Rprop,
              torch.optim.SparseAdam)


@dataclass
class Reduction:
    """How the Task's loss reduces over items: "mean", "sum", "other" (neither) or "unknown" (a loss of 0)."""

    name: str
    ratio: float | None  # the loss of the batch fed twice over that of the batch once
    items: int
    once: float | None = None  # the loss of the batch once


def loss_reduction(task: Task, model: nn.Module | None = None, *, device: torch.device | str | None = None,
                   max_items: int = ITEMS) -> Reduction:
    """Measure the reduction of `task.loss_fn` on the first `max_items` training items (see the module docstring)."""
    model = task.model if model is None else model
    max_items = int_at_least("max_items", max_items, 1)
    device = resolve_device(device, model)
    x, y = task.first_batch(task.train, max_items)
    run = model_on_device(model, device)
    with torch.no_grad(), eval_mode(run), rng_kept():
        out, y = task.outputs(run, to_device((x, y), model_device(run)))
        once = float(task.loss_fn(out, y))
        twice = float(task.loss_fn(torch.cat([out, out]), torch.cat([y, y])))
    if not (math.isfinite(once) and math.isfinite(twice)) or abs(once) < 1e-12:
        return Reduction("unknown", None, len(y), once)
    ratio = twice / once
    name = "mean" if abs(ratio - 1) <= TOLERANCE else "sum" if abs(ratio - 2) <= 2 * TOLERANCE else "other"
    return Reduction(name, ratio, len(y), once)


def check_loss_reduction(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
) -> list[Finding]:
    """Whether the Task's loss is a mean over items; one Finding: pass for a mean, info for a sum (with what it
    means for the LR and the batch size) or another reduction, skip when the loss is 0 on the items."""
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    r = loss_reduction(task, model, device=device, max_items=ITEMS if max_items is None else max_items)
    evidence = {"reduction": r.name, "ratio": r.ratio, "items": r.items, "tolerance": TOLERANCE}
    if r.name == "unknown":
        return [Finding(TIP, "skip", "The loss's reduction could not be measured",
                        f"The loss is {r.once} on {r.items} training items, so its scale cannot be read.", None,
                        evidence)]
    measured = f"fed the same {r.items} items twice over, the loss is {r.ratio:.3f} times the loss of the items once"
    if r.name == "mean":
        return [Finding(TIP, "pass", "The loss is a mean over the items of a batch",
                        f"{measured}: its scale does not depend on the batch size.", None, evidence)]
    if r.name == "sum":
        return [Finding(TIP, "info", "The loss sums over the items of a batch",
                        f"{measured}: it sums over items, so its gradient is the batch size ({task.batch_size}) "
                        "times a mean's. With SGD the effective LR grows with the batch: halving the batch halves "
                        "it. Adam-like optimizers divide by the gradient's scale and are not affected.",
                        "Keep the LR divided by the batch size with SGD (or use reduction='mean'), and rescale it "
                        "whenever the batch size changes.", evidence)]
    return [Finding(TIP, "info", "The loss is neither a mean nor a sum over items",
                    f"{measured} (a mean gives 1, a sum 2): its scale changes with the batch in another way, so the "
                    "LR that suits one batch size may not suit another.", None, evidence)]


def sum_reduction_cause(task: Task, model: nn.Module | None = None) -> Finding | None:
    """A cause for a model that cannot fit: a loss summed over items stepped by an optimizer that does not
    divide by the gradient's scale (SGD), so the LR is the batch size times what a mean would take."""
    from dltips.training.lr import make_optimizer

    model = task.model if model is None else model
    optimizer = make_optimizer(task, model)  # built only to read its type and LR
    if isinstance(optimizer, SCALE_FREE):
        return None
    r = loss_reduction(task, model)
    if r.name != "sum":
        return None
    lr = float(optimizer.param_groups[0]["lr"])
    name = type(optimizer).__name__
    return Finding(
        TIP, "warn", "The loss sums over the batch, so the LR is batch-size times too high",
        f"Fed the same {r.items} items twice over, the loss doubles (ratio {r.ratio:.3f}): it sums over the items "
        f"of a batch. {name} steps by LR x gradient, so LR {lr:g} on a sum over {task.batch_size} items moves the "
        f"weights as LR {lr * task.batch_size:g} would on a mean, and the overfit rungs' smaller batches each get "
        "another effective LR.",
        f"Use reduction='mean' (or divide the loss by the batch size), or lower the LR to about {lr / task.batch_size:g}"
        " for this batch size.",
        {"cause": "sum-reduction", "reduction": r.name, "ratio": r.ratio, "lr": lr, "optimizer": name,
         "batch_size": task.batch_size})
