"""Training loops with one bug each, on two architectures, and healthy loops that use the same parts on purpose.

Each run trains on the digits (standardised) in a hand-written loop inside `dltips.watch(model, optimizer,
every=EVERY)` and returns the watch. The bugs are those of the loop-bug studies (Humbatova et al., ICSE
2020: missing zero_grad, wrong order of the optimizer calls, model left in eval mode; Islam et al., FSE
2019: wrong learning-rate schedule): `python tests/monitor/test_loop_calibration.py` prints the table of
docs/calibration.md ("Loop bugs").
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dltips import Task, watch
from dltips.demos.digits import load_digits_tensors

STEPS = 160
EVERY = 10
BATCH = 64


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits_tensors()
    return (x - x.mean()) / x.std(), y


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 64), nn.ReLU(),
                         nn.Linear(64, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 64),
                         nn.ReLU(), nn.Linear(64, 10))


ARCHITECTURES = {"mlp": mlp, "cnn": cnn}


class Detached(nn.Module):
    """The first block's output is detached before the rest: no gradient reaches the first block."""

    def __init__(self, model: nn.Sequential):
        super().__init__()
        self.first, self.rest = model[:2], model[2:]

    def forward(self, x):
        return self.rest(self.first(x).detach())


def run(arch: str, *, lr: float = 1e-3, optimizer: Callable | None = None, zero: str = "before-backward",
        scheduler: Callable | None = None, clip: float | None = None, accumulate: int = 1, eval_at: int | None = None,
        train_after_eval: bool = True, detach: bool = False, scaler: bool = False, set_to_none: bool = True,
        steps: int = STEPS, seed: int = 0):
    """One loop: `zero` is "before-backward", "after-forward", "after-step", "between" (after backward, before
    step: the bug) or "never" (the bug)."""
    torch.manual_seed(seed)
    x, y = digits()
    model = ARCHITECTURES[arch]()
    if detach:
        model = Detached(model)
    opt = (optimizer or (lambda p: torch.optim.AdamW(p, lr=lr)))(model.parameters())
    sched = scheduler(opt) if scheduler is not None else None
    grad_scaler = torch.amp.GradScaler("cpu") if scaler else None
    g = torch.Generator().manual_seed(seed)
    model.train()
    with watch(model, opt, every=EVERY) as w:
        for step in range(steps):
            for micro in range(accumulate):
                i = torch.randint(0, len(x), (BATCH // accumulate,), generator=g)
                if zero == "before-backward" and micro == 0:
                    opt.zero_grad(set_to_none=set_to_none)
                if scaler:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        loss = F.cross_entropy(model(x[i]), y[i]) / accumulate
                else:
                    loss = F.cross_entropy(model(x[i]), y[i]) / accumulate
                if zero == "after-forward" and micro == 0:
                    opt.zero_grad(set_to_none=set_to_none)
                (grad_scaler.scale(loss) if scaler else loss).backward()
            if zero == "between":
                opt.zero_grad(set_to_none=set_to_none)
            if scaler:
                grad_scaler.unscale_(opt)
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if scaler:
                grad_scaler.step(opt)
                grad_scaler.update()
            else:
                opt.step()
            if zero == "after-step":
                opt.zero_grad(set_to_none=set_to_none)
            if sched is not None:
                sched.step()
            w.log(loss=loss)
            if eval_at is not None and step % eval_at == eval_at - 1:
                model.eval()
                with torch.no_grad():
                    model(x[:256])
                if train_after_eval:
                    model.train()
    return w


def diverging(arch: str, factor: float = 2.05, steps: int = STEPS):
    """Least squares on the digits (label as a standardised number) with SGD at `factor` / the loss's largest
    curvature: above 2 each step overshoots a little more, so the loss and the gradients grow geometrically.
    `arch` "linear" is an nn.Linear on the 64 pixels, "conv" an 8x8 convolution over the image (the same map)."""
    torch.manual_seed(0)
    x, y = digits()
    flat = x.flatten(1)
    flat = (flat - flat.mean(0)) / (flat.std(0) + 1e-6)
    t = (y.float() - y.float().mean()) / y.float().std()
    curvature = float(torch.linalg.eigvalsh(2 * flat.T @ flat / len(flat)).max())
    model, inputs = (nn.Linear(64, 1), flat) if arch == "linear" else (nn.Sequential(nn.Conv2d(1, 1, 8), nn.Flatten()),
                                                                      flat.view(-1, 1, 8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=factor / curvature)
    g = torch.Generator().manual_seed(0)
    with watch(model, opt, every=EVERY) as w:
        for _ in range(steps):
            i = torch.randint(0, len(t), (BATCH,), generator=g)
            loss = F.mse_loss(model(inputs[i]).squeeze(1), t[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            w.log(loss=loss)
    return w


# name -> (run, the tips one of which must warn or fail, the words that name the cause)
BROKEN: dict[str, tuple[Callable, set[str], str]] = {}
for arch in ARCHITECTURES:
    BROKEN.update({
        f"no-zero-grad-{arch}": (lambda a=arch: run(a, zero="never", lr=3e-4), {"gradient-accumulation"},
                                 r"zero_grad\(\) is missing"),
        f"zero-grad-between-{arch}": (lambda a=arch: run(a, zero="between"), {"update-ratio"},
                                      r"zeroed between backward\(\) and step\(\)"),
        f"eval-mode-{arch}": (lambda a=arch: run(a, eval_at=20, train_after_eval=False),
                              {"activation-gradient-stats"}, r"eval mode"),
        f"lr-per-batch-{arch}": (lambda a=arch: run(a, optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                                                    scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.1)),
                                 {"one-cycle"}, r"collapses"),
        f"detached-{arch}": (lambda a=arch: run(a, detach=True), {"update-ratio"}, r"No gradient reaches"),
        f"clip-too-low-{arch}": (lambda a=arch: run(a, clip=1e-3, optimizer=lambda p: torch.optim.SGD(p, lr=0.1)),
                                 {"activation-gradient-stats"}, r"clipping sets every update"),
    })
for arch in ("linear", "conv"):
    BROKEN[f"diverging-{arch}"] = (lambda a=arch: diverging(a), {"activation-gradient-stats"}, r"keep growing while the loss")

HEALTHY: dict[str, Callable] = {"converging-linear": lambda: diverging("linear", 0.5)}
for arch in ARCHITECTURES:
    HEALTHY.update({
        f"adamw-{arch}": lambda a=arch: run(a),
        f"sgd-momentum-{arch}": lambda a=arch: run(a, optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
        f"rmsprop-{arch}": lambda a=arch: run(a, optimizer=lambda p: torch.optim.RMSprop(p, lr=1e-3)),
        f"accumulation-{arch}": lambda a=arch: run(a, accumulate=4),
        f"zero-after-forward-{arch}": lambda a=arch: run(a, zero="after-forward"),
        f"zero-after-step-{arch}": lambda a=arch: run(a, zero="after-step"),
        f"set-to-none-false-{arch}": lambda a=arch: run(a, set_to_none=False),
        f"one-cycle-{arch}": lambda a=arch: run(a, scheduler=lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=3e-3, total_steps=STEPS)),
        f"cosine-over-run-{arch}": lambda a=arch: run(a, scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
            o, T_max=STEPS)),
        f"clip-at-1-{arch}": lambda a=arch: run(a, clip=1.0),
        f"amp-grad-scaler-{arch}": lambda a=arch: run(a, scaler=True),
        f"eval-then-train-{arch}": lambda a=arch: run(a, eval_at=20),
    })


# ---------------------------------------------------------------------- the same loops as a Task's own step

def own_step(*, zero: str = "before-backward", clip: float | None = None, accumulate: int = 1, eval_mode: bool = False,
             set_to_none: bool = True) -> Callable:
    """`run`'s loop body as a `Task.step(model, batch, optimizer)`: the doctor trains with it. `accumulate` splits
    the batch into that many micro-batches; `eval_mode` puts the model in eval mode first (the bug)."""
    def step(model, batch, optimizer):
        x, y = batch
        if eval_mode:
            model.eval()
        total = 0.0
        for micro, (mx, my) in enumerate(zip(x.chunk(accumulate), y.chunk(accumulate))):
            if zero == "before-backward" and micro == 0:
                optimizer.zero_grad(set_to_none=set_to_none)
            loss = F.cross_entropy(model(mx), my) / accumulate
            if zero == "after-forward" and micro == 0:
                optimizer.zero_grad(set_to_none=set_to_none)
            loss.backward()
            total += float(loss.detach())
        if zero == "between":
            optimizer.zero_grad(set_to_none=set_to_none)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if zero == "after-step":
            optimizer.zero_grad(set_to_none=set_to_none)
        return total
    return step


def step_task(arch: str, step: Callable, *, optimizer: Callable | None = None, detach: bool = False) -> Task:
    """The digits (300 held out) with `arch` and the Task's own `step`; AdamW at 1e-3 unless `optimizer`."""
    x, y = digits()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, valid = order[300:], order[:300]
    torch.manual_seed(0)
    model = Detached(ARCHITECTURES[arch]()) if detach else ARCHITECTURES[arch]()
    return Task(model, TensorDataset(x[train], y[train]), TensorDataset(x[valid], y[valid]), batch_size=BATCH,
                optimizer=optimizer or (lambda p: torch.optim.AdamW(p, lr=1e-3)), step=step, name=f"own-step-{arch}")


def _sgd(lr: float, momentum: float = 0.0) -> Callable:
    return lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum)


# name -> (Task factory, the tips one of which must warn or fail, the words that name the cause): for dltips.doctor
STEP_BROKEN: dict[str, tuple[Callable, set[str], str]] = {}
STEP_HEALTHY: dict[str, Callable] = {}
for arch in ARCHITECTURES:
    STEP_BROKEN.update({
        f"no-zero-grad-{arch}": (lambda a=arch: step_task(a, own_step(zero="never")), {"gradient-accumulation"},
                                 r"zero_grad\(\) is missing"),
        f"zero-grad-between-{arch}": (lambda a=arch: step_task(a, own_step(zero="between")), {"update-ratio"},
                                      r"zeroed between backward\(\) and step\(\)"),
        f"eval-mode-{arch}": (lambda a=arch: step_task(a, own_step(eval_mode=True)), {"activation-gradient-stats"},
                              r"eval mode"),
        f"detached-{arch}": (lambda a=arch: step_task(a, own_step(), detach=True), {"update-ratio"},
                             r"no gradient reache"),
        f"clip-too-low-{arch}": (lambda a=arch: step_task(a, own_step(clip=1e-3), optimizer=_sgd(0.1)),
                                 {"activation-gradient-stats"}, r"clipping sets every update"),
    })
    STEP_HEALTHY.update({
        f"adamw-{arch}": lambda a=arch: step_task(a, own_step()),
        f"sgd-momentum-{arch}": lambda a=arch: step_task(a, own_step(), optimizer=_sgd(0.05, 0.9)),
        f"accumulation-{arch}": lambda a=arch: step_task(a, own_step(accumulate=4, zero="after-step")),
        f"zero-after-forward-{arch}": lambda a=arch: step_task(a, own_step(zero="after-forward")),
        f"set-to-none-false-{arch}": lambda a=arch: step_task(a, own_step(set_to_none=False)),
        f"clip-at-1-{arch}": lambda a=arch: step_task(a, own_step(clip=1.0)),
    })
