"""Is the Task's learning rate sane? An LR range test on a copy of the model answers.

`check_lr` runs `lr_find` (LR from 1e-7 to 10 over `num_steps` steps) on a deep
copy of the model with the Task's own optimizer, and compares the Task's LR
(the optimizer's first param group) with the LR where the smoothed loss
bottomed out ("minimum") and the range test's suggestion (a decade below it):

    Task LR > minimum                       warn: past the minimum, training is likely unstable
    Task LR < suggestion / 100              warn: far below, training will be slow
    the smoothed loss fell by < 0.2%, or    info: the range test says nothing
      not below its values in the first
      tenth of the sweep
    otherwise                               pass

Calibration (100 steps, batch 64, 2 seeds each; standardised sklearn data,
spirals = two interleaved 2-D spirals of 1000 points; MLP 2x64 hidden units,
CNN 2 conv + 2 linear layers on digits images / 16). The range test's curve
depends on the optimizer's kind, not on its LR: the minimum lay at 0.055-0.74
for AdamW and 0.42-1.3 for SGD. Ratio = Task LR / minimum:

    task                 optimizer                ratio range        verdict
    digits/wine/bc/      AdamW at default_lr      0.014 - 0.18       pass
      spirals MLP,       SGD 0.1, momentum 0.9    0.077 - 0.24       pass
      digits CNN         AdamW 1.0                1.4 - 18           warn (past the minimum)
                         AdamW 10                 14 - 180           warn (past the minimum)
                         AdamW 1e-7               1.4e-7 - 1.8e-6    warn (far below)

Healthy ratios stay 4x below the upper limit (1) and 14x above the lower one
(1e-3); the minimum itself moved by up to 10x between seeds on spirals, whose
loss falls by only 1-5% in 100 steps. Each test took 0.1-0.3 s for the MLPs
and under 1 s for the CNN on 2 CPU cores.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device, to_device
from dltips.core.params import int_at_least
from dltips.findings import Finding
from dltips.predict import evenly_spaced
from dltips.task import Task
from dltips.training.lr import LRFinderResult, default_lr, lr_find, make_optimizer

TIP = "default-lr"
NUM_STEPS = 100  # steps of the range test
START_LR, END_LR = 1e-7, 10.0
MAX_RATIO = 1.0  # Task LR / minimum above this: past the minimum
MIN_RATIO = 1e-3  # Task LR / minimum below this (a hundredth of the suggestion): far below
EARLY = 0.1  # a minimum within this fraction of the sweep means the loss never fell
MIN_FALL = 0.002  # ... as does a smoothed loss that fell by less than this fraction


def check_lr(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
    num_steps: int = NUM_STEPS,
) -> list[Finding]:
    """Run an LR range test on a copy of `model` (default the Task's); judge the Task's LR against it. One Finding.

    The test takes `num_steps` shuffled training batches (seeded by `seed`), drawn from up to
    `max_items` evenly spaced training items (default: all of them). Its plan is fixed, so
    `deadline` does not shorten it.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    num_steps = int_at_least("num_steps", num_steps, 2)
    model = model if model is not None else task.model
    device = resolve_device(device, model)
    model = copy.deepcopy(model).to(device)
    train = task.train if max_items is None else Subset(task.train, evenly_spaced(len(task.train), max_items))
    optimizer = make_optimizer(task, model)
    group_lrs = [float(g["lr"]) for g in optimizer.param_groups]
    task_lr = group_lrs[0]
    family = _family(optimizer)
    suggested_default = default_lr(model, family) if family else default_lr(model)

    loader = DataLoader(train, batch_size=task.batch_size, shuffle=True,
                        drop_last=len(train) >= task.batch_size,
                        generator=torch.Generator().manual_seed(seed))
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # dropout and augmentation draws leave no trace
        torch.manual_seed(seed)
        try:
            result = lr_find(model, optimizer, _TrainingBatches(loader, task, device), task.loss_fn,
                             start_lr=START_LR, end_lr=END_LR, num_steps=num_steps)
        except ValueError as e:
            if "not finite" not in str(e):
                raise
            return [Finding(TIP, "fail", "LR range test could not run: the loss is not finite at LR 1e-7",
                            f"The LR range test failed at its first step: {e}.",
                            "Check the inputs for NaN values and the initial loss (`dltips tips initialization`).",
                            {"task_lr": task_lr, "error": str(e)})]
    return [_verdict(result, task_lr, group_lrs, suggested_default, family, num_steps)]


def _family(optimizer: torch.optim.Optimizer) -> str | None:
    """The `default_lr` optimizer name matching `optimizer`, if any."""
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return "adamw"
    return None


class _TrainingBatches:
    """Training batches as the loop sees them: on the device, augmented when the Task augments (re-iterable)."""

    def __init__(self, loader: DataLoader, task: Task, device: torch.device) -> None:
        self.loader, self.augment, self.device = loader, task.augment, device

    def __iter__(self):
        for x, y in self.loader:
            x = to_device(x, self.device)
            yield (self.augment(x) if self.augment is not None else x), y


def _verdict(r: LRFinderResult, task_lr: float, group_lrs: list[float], default: float, family: str | None,
             num_steps: int) -> Finding:
    ratio = task_lr / r.min_loss_lr
    i_min = r.lrs.index(r.min_loss_lr)
    first, lowest = r.losses[0], min(v for v in r.losses if math.isfinite(v))
    fell = (first - lowest) / abs(first) if first != 0 else 0.0  # share of the starting loss shed
    conclusive = i_min >= EARLY * num_steps and fell >= MIN_FALL

    numbers = (f"The Task's LR is {task_lr:.3g}; in the range test ({len(r.lrs)} steps from {START_LR:g} to "
               f"{r.lrs[-1]:.3g}{', stopped when the loss diverged' if r.stopped_early else ''}) the smoothed loss "
               f"fell by {fell:.0%} and was lowest at LR {r.min_loss_lr:.3g}, which suggests {r.suggestion:.3g}. "
               f"default_lr for this model is {default:.3g}.")
    if not conclusive:
        status, title = "info", f"LR range test inconclusive: the loss did not fall (Task LR {task_lr:.3g})"
        message = numbers + " The loss never went below its values at the smallest LRs, so the curve says nothing."
        fix = "Check that the model can learn at all (`dltips tips overfit-tiny`), then rerun with more steps."
    elif ratio > MAX_RATIO:
        status = "warn"
        title = f"LR {task_lr:.3g} is past the loss minimum of the range test ({r.min_loss_lr:.3g}): likely unstable"
        message = numbers + f" The Task's LR is {ratio:.3g}x the LR of the minimum, where the loss already rises."
        fix = f"Lower the learning rate to about {r.suggestion:.3g} (a decade below the minimum)."
    elif ratio < MIN_RATIO:
        status = "warn"
        title = f"LR {task_lr:.3g} is far below the range test's suggestion ({r.suggestion:.3g}): training will be slow"
        message = numbers + f" The Task's LR is {task_lr / r.suggestion:.2g}x the suggestion."
        fix = f"Raise the learning rate to about {r.suggestion:.3g}, or start from default_lr ({default:.3g})."
    else:
        status = "pass"
        title = f"LR {task_lr:.3g} is in the sane range of the range test (suggestion {r.suggestion:.3g})"
        message = numbers + (f" The Task's LR is {ratio:.2g}x the LR of the minimum: below it, and within "
                             f"{1 / MIN_RATIO / 10:.0f}x of the suggestion.")
        fix = None
    evidence = {
        "task_lr": task_lr,
        "param_group_lrs": group_lrs,
        "suggestion": r.suggestion,
        "min_loss_lr": r.min_loss_lr,
        "steepest": r.steepest,
        "default_lr": default,
        "optimizer_family": family,
        "ratio_to_min": ratio,
        "loss_fell": fell,
        "stopped_early": r.stopped_early,
        "conclusive": conclusive,
        "limits": {"max_ratio": MAX_RATIO, "min_ratio": MIN_RATIO, "early": EARLY, "min_fall": MIN_FALL},
        "curve": {"lr": r.lrs, "loss": r.losses},
    }
    figure = {"kind": "lines", "title": "LR range test", "x": r.lrs,
              "series": {"smoothed loss": r.losses},
              "xlabel": "learning rate", "ylabel": "training loss", "xlog": True, "ylog": False}
    return Finding(TIP, status, title, message, fix, evidence, [figure])
