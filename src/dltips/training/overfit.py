"""Overfit one example, then a few, then a training subset: can the model learn at all?

`overfit_ladder` trains a fresh copy of the model on 1, 2, 8, 32 training
items (each rung one full batch, no augmentation) until it predicts every one
of them (tip `overfit-tiny`). Where the ladder first fails points to the
cause: failing on one example means the optimisation or the training code is
broken (a loss that does not reach the parameters, frozen weights, an optimizer
over the wrong parameters, a learning rate far off); passing one but failing on
a few points at batch-dependent layers, label handling or too little capacity.

`check_capacity` trains a fresh copy on a training subset with minibatches and
asks whether the training error gets near zero (tip `overfit-then-regularize`).
If it does not, the architecture or the optimisation is the problem and
regularisation would only make it worse; if it does and the validation error is
much larger, it ranks the regularisers to try first.

Both train with the Task's own loss and optimizer at its own constant learning
rate, in train mode, and never touch `task.model`.

A rung is fitted when, in eval mode (train mode with the running statistics
kept for a model with BatchNorm, see `_evaluate`), every prediction is right and the loss
has closed 95% of the gap between its start and the loss of a confident,
correct prediction (which is not 0 with label smoothing). For a language model
"every prediction" excludes what no model can know: two sequences that share a
prefix but continue differently. For regression the loss must close 99% of the
gap from the smaller of its start and the loss of predicting the rung's mean
target, so learning the mean alone does not count.

The capacity check passes at a training error of at most 2% (10% of the target
variance for regression). When it does not get there, it warns if the error
has flattened out, and only informs if the error was still falling by more
than 20% over the second half of the run, or if fewer than 4 measurements
(every 25 steps, or every epoch) were made: then the budget, not the model,
was the limit. A training error that becomes NaN warns too. A language model
is the exception to "near zero": part of its next-token error is the text's
own unpredictability, so an error that levels off clearly below the
majority-token baseline (at most `LM_BASELINE_FRACTION`, 95%, of it) is
reported as `info`; only one at or above that warns.

Calibration (default sizes and steps, AdamW at `default_lr` unless the task
has its own optimizer; seconds on 2 CPU cores):

    overfit_ladder (sizes 1, 2, 8, 32; max_steps 300): steps to fit each rung
    healthy                                   1    2    8   32   verdict  seconds
    digits CNN                               10   10   10   10   pass     0.3 (+2 s first conv call)
    digits CNN with BatchNorm             skip   10   10   20   pass     0.2
    digits MLP; wine; imbalanced MLP      10-20 for every rung      pass     < 0.1
    digits CNN, SGD lr 0.05 momentum 0.9     10   20   20   30   pass     0.3
    spirals MLP                              10   10   20   50   pass     0.1
    breast cancer (binary); digits (multilabel)   10-20            pass     < 0.1
    diabetes (regression; MLP, wide MLP)     20   10-40 30  40-60 pass     0.1-0.5
    count mod 12 LM (embedding+linear)       30   30   30   30   pass     0.1
    Markov V=64 LM (GRU; transformer)     20-40 30   30-40 40-70 pass     2.1; 0.8
    broken                                first failed  cause named                      seconds
    every parameter frozen                   1       frozen (nothing to optimise)            0.0
    all frozen but the last bias             1       slow loss; "0.1% trainable"             0.2
    optimizer over another module's params   1       optimizer holds none of the params      0.2
    loss on output.detach() + 0*sum(params)  1       no gradient reaches the parameters      0.2
      (same for regression)                  1       no gradient reaches the parameters      0.2
    AdamW lr 1e-7                            1       loss barely moved: lr far too low       0.4
    AdamW lr 3                               8       loss jumped to 1e5: lr far too high     0.5
    targets shuffled in the loss (MLP, CNN)  2       batch: targets misaligned / capacity    0.5-1.5
    linear model on spirals                  8       batch / too little capacity             0.4
    bigram LM on a 3-successor Markov chain  2       batch / too little capacity (a bigram   0.4
                                                     cannot memorise ambiguous successors)
    random labels; raw 0-255 pixels          pass    (left to capacity, error gaps, transforms)

    check_capacity (512 items or all, max_steps 600): training error at the end
    healthy                         error  threshold  steps  verdict
    digits CNN, also BatchNorm, SGD  0-0.8%   2%       25-75  pass
    digits MLP; imbalanced MLP      1.0%; 1.4%  2%       50     pass
    wine; breast cancer             0%; 1.6%    2%       25     pass
    digits multilabel               0.6%        2%       75     pass
    spirals MLP                     1.4%        2%      175     pass
    count mod 12 LM                 0%          2%       25     pass
    diabetes MLP; wide MLP (MSE)    0.090; 0.076  0.100  300; 225  pass
    Markov V=64 LM, GRU             26%         2%      600     info (still falling)
    Markov V=64 LM, transformer     4.2%        2%      600     info (still falling)
    CharGPT "small", stdlib text    61%         2%      500     info (levelled off by the 20% rule,
                                                                at 0.72 of the 85% baseline)
    bigram LM, 3 random successors  65%         2%      600     info (the floor is 2/3; baseline 91%)
    broken
    linear model on spirals         53%         2%      600     warn (flat)
    2 hidden units on digits        31%         2%      600     warn (flat)
    linear model on diabetes        0.476       0.100   600     warn (flat)
    bigram LM on the Markov chain   58%         2%      600     info (was warn before the language-
                                                                model rule: a plateau below 95% of the
                                                                baseline that this check cannot tell
                                                                from the floor of real text)
    model blind to its input (text) 85%         2%     2000     warn (flat, 1.00 of the baseline)
    AdamW lr 1e-7                   89%         2%      600     warn (flat)
    all frozen but the last bias    87%         2%      600     warn (flat)
    random labels (CNN)             2.0%        2%      350     pass: it memorises them; the
                                                                validation error says the rest

The thresholds leave room on both sides: healthy ladders fit every rung in at
most 70 of the 300 steps, and the regression capacity threshold (10% of the
target variance; 5% was reached only after 425 steps on diabetes) keeps the
noisy diabetes targets inside the budget while a linear model stays flat at
48%.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data._utils.collate import default_collate

from dltips.core.device import model_device, resolve_device, to_device
from dltips.core.state import eval_mode, grads_kept, modes_kept
from dltips.findings import Finding
from dltips.predict import LM_BASELINE_FRACTION, baseline_error, error_rate
from dltips.task import IGNORE_INDEX, Task
from dltips.training.lr import make_optimizer

__all__ = ["OverfitResult", "Rung", "check_capacity", "check_overfit_tiny", "overfit_ladder"]

TIP_TINY = "overfit-tiny"
TIP_CAPACITY = "overfit-then-regularize"

# overfit-tiny: a rung passes when every prediction is right (classification-like kinds) and the eval-mode
# loss has closed this much of the gap between its start and the loss of a perfect prediction.
LOSS_FRACTION = 0.05
# Regression: the loss must fall below this fraction of the start (of the loss of predicting the rung's mean
# target, when smaller), measured from the loss of a perfect prediction.
REGRESSION_FRACTION = 0.01
CHECK_EVERY = 10  # steps between checks of the criterion
MONITOR_SAMPLES = 10  # sampled steps of dltips.watch per rung, to explain a failure layer by layer
# A training loss that jumps this many times above its start in the first 20 steps points at a far too high LR
# (AdamW at lr 3: 1e4-1e5 times); targets shuffled within the batch make it jump about 2 times.
LR_JUMP = 10.0
# overfit-then-regularize: "near zero" training error.
CAPACITY_ERROR = 0.02  # error rate (classification, binary, multilabel, language model)
CAPACITY_FRACTION = 0.10  # regression: MSE as a fraction of the baseline (the target variance)
CAPACITY_EVAL_EVERY = 25  # steps between measurements of the training error (at least one epoch)
IMPROVING = 0.2  # relative fall of the error over the second half of training that counts as "still improving"
MIN_MEASUREMENTS = 4  # fewer measurements of the training error cannot tell flat from falling
GAP_ERROR = 0.02  # validation error this much above training error (and twice it) is "much larger"
GAP_FRACTION = 0.05  # regression: the same, as a fraction of the baseline


@dataclass
class Rung:
    """One rung of the ladder: training on the first `size` items of a seeded permutation."""

    size: int
    status: str  # "passed" | "failed" | "stopped" (time budget) | "not run" | "skipped"
    reason: str = ""
    steps: int = 0
    initial_loss: float | None = None
    final_loss: float | None = None
    target_loss: float | None = None
    accuracy: float | None = None
    seconds: float = 0.0
    curve: list[float] = field(default_factory=list)  # training loss (train mode) after each step
    diagnosis: dict = field(default_factory=dict)
    monitors: list = field(default_factory=list)  # the watch's warn/fail findings on this rung (dltips.watch)

    @property
    def passed(self) -> bool | None:
        """True or False for a rung that ran to a verdict, None otherwise."""
        return {"passed": True, "failed": False}.get(self.status)

    def evidence(self) -> dict:
        return {"size": self.size, "status": self.status, "passed": self.passed, "reason": self.reason,
                "steps": self.steps, "initial_loss": self.initial_loss, "final_loss": self.final_loss,
                "target_loss": self.target_loss, "accuracy": self.accuracy, "seconds": round(self.seconds, 3),
                **self.diagnosis}


@dataclass
class OverfitResult:
    """The ladder: its rungs, and the Finding that sums them up."""

    rungs: list[Rung]
    findings: list[Finding]

    @property
    def first_failed_size(self) -> int | None:
        return next((r.size for r in self.rungs if r.status == "failed"), None)

    @property
    def curves(self) -> dict[int, list[float]]:
        return {r.size: r.curve for r in self.rungs if r.curve}


def check_overfit_tiny(
    task: Task,
    *,
    sizes: Sequence[int] = (1, 2, 8, 32),
    max_steps: int = 300,
    budget_s: float | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> list[Finding]:
    """Overfit 1 training item, then a few (tip `overfit-tiny`); see `overfit_ladder`."""
    return overfit_ladder(task, sizes=sizes, max_steps=max_steps, budget_s=budget_s, seed=seed,
                          device=device).findings


def overfit_ladder(
    task: Task,
    *,
    sizes: Sequence[int] = (1, 2, 8, 32),
    max_steps: int = 300,
    budget_s: float | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> OverfitResult:
    """Train a fresh copy of the model on each of `sizes` items until it fits them, smallest first.

    Each rung is one batch of distinct training items (the first `size` of a
    permutation seeded by `seed`), with dropout and weight decay switched off
    (the question is whether the model and optimiser can fit, not whether the
    regularised model does), trained in train mode for at most
    `max_steps` steps and checked every `CHECK_EVERY` steps in eval mode. The
    ladder stops at the first failing rung. With `budget_s`, rungs stop when
    that many seconds have passed since the ladder began, and later rungs are
    reported as not run. A model with BatchNorm skips the rung of one item
    (BatchNorm cannot train on a batch of one) and starts at 2.
    """
    sizes = _check_sizes(sizes)
    _check_positive_int("max_steps", max_steps)
    if budget_s is not None and not budget_s > 0:
        raise ValueError(f"budget_s must be positive or None, got {budget_s!r}")
    torch.manual_seed(seed)
    start = time.perf_counter()
    deadline = start + budget_s if budget_s is not None else math.inf
    n = len(task.train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    batchnorm = has_batchnorm(task.model)
    if batchnorm and sizes[0] == 1 and 2 not in sizes and n >= 2:
        sizes = sorted({2, *sizes})
    rungs: list[Rung] = []
    failed = False
    for k in sizes:
        if k > n:
            rungs.append(Rung(k, "not run", f"the training set has only {n} items"))
        elif k == 1 and batchnorm:
            rungs.append(Rung(1, "skipped", "the model has BatchNorm, which cannot train on a batch of one "
                                            "item in train mode; the ladder starts at 2"))
        elif failed:
            rungs.append(Rung(k, "not run", "an earlier rung failed"))
        elif time.perf_counter() >= deadline:
            rungs.append(Rung(k, "not run", "the time budget was spent"))
        else:
            rungs.append(_run_rung(task, order[:k], max_steps, deadline, device))
            failed = rungs[-1].status == "failed"
    return OverfitResult(rungs, [_ladder_finding(rungs, max_steps, time.perf_counter() - start)])


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _run_rung(task: Task, indices: list[int], max_steps: int, deadline: float,
              device: torch.device | str | None) -> Rung:
    """Train a fresh copy on the items at `indices` as one batch; an error in the user's code fails the rung."""
    start = time.perf_counter()
    model = copy.deepcopy(task.model)
    model.to(resolve_device(device, model))
    trainable = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    rung = Rung(len(indices), "failed", diagnosis={
        "trainable_fraction": sum(p.numel() for p in trainable) / total if total else 0.0,
        "augmentation": "off",
    })
    if not trainable:
        rung.reason = "no parameter requires a gradient: the whole model is frozen"
    else:
        with grads_kept(task.model):
            try:
                _train_rung(rung, task, model, trainable, indices, max_steps, deadline)
            except Exception as e:  # noqa: BLE001 -- the model, loss or optimizer raised: report it as the verdict
                rung.status, rung.reason = "failed", f"training raised {type(e).__name__}: {e}"
                rung.diagnosis["cause"] = "code"
    if rung.status == "failed" and not rung.reason:
        rung.reason, rung.diagnosis["cause"] = _why_failed(rung)
    rung.seconds = time.perf_counter() - start
    return rung


def _train_rung(rung: Rung, task: Task, model: nn.Module, trainable: list[nn.Parameter], indices: list[int],
                max_steps: int, deadline: float) -> None:
    """The rung's loop: fills in `rung` (steps, losses, curve, status, diagnosis) as it goes."""
    diagnosis, loss_fn = rung.diagnosis, task.loss_fn
    device = model_device(model)
    x, y = _batch(task.train, indices, device)
    optimizer = make_optimizer(task, model)
    diagnosis["regularisation_switched_off"] = _switch_off_regularisation(model, optimizer)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    diagnosis["optimized_fraction"] = sum(id(p) in held for p in trainable) / len(trainable)
    diagnosis["lr"] = float(optimizer.param_groups[0]["lr"]) if optimizer.param_groups else None
    ceiling, entropy = _best_possible(task, x, y)
    if ceiling < 1.0:
        diagnosis["best_possible_accuracy"] = ceiling
    rung.initial_loss, rung.accuracy, _ = _evaluate(model, task, loss_fn, x, y, ceiling)
    rung.target_loss = target = _target_loss(task, loss_fn, x, y, rung.initial_loss, model, entropy)
    before = [p.detach().clone() for p in trainable]
    losses: list[torch.Tensor] = []
    model.train()
    from dltips.monitor.watch import Watch

    monitor = Watch(model, optimizer, every=max(1, max_steps // MONITOR_SAMPLES)).attach()
    try:
        for step in range(1, max_steps + 1):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            if step == 1:
                diagnosis["gradient_fraction"] = sum(
                    p.grad is not None and bool(p.grad.ne(0).any()) for p in trainable) / len(trainable)
            optimizer.step()
            monitor.log(loss=loss)
            losses.append(loss.detach().float())
            rung.steps = step
            if step % CHECK_EVERY == 0 or step == max_steps:
                if not math.isfinite(float(losses[-1])):
                    rung.reason = (f"the training loss became NaN or infinite by step {step}: the learning "
                                   "rate is far too high, or the loss or the inputs produce NaN")
                    diagnosis["cause"] = "lr"
                    break
                rung.final_loss, rung.accuracy, correct = _evaluate(model, task, loss_fn, x, y, ceiling)
                if correct and rung.final_loss <= target:
                    rung.status = "passed"
                    break
            if time.perf_counter() >= deadline:
                rung.status, rung.reason = "stopped", f"the time budget ran out after {step} steps"
                rung.final_loss, rung.accuracy, _ = _evaluate(model, task, loss_fn, x, y, ceiling)
                break
    finally:
        monitor.detach()
        if rung.status != "passed":
            rung.monitors = [f for f in monitor.findings() if f.status in ("warn", "fail")]
        rung.curve = torch.stack(losses).tolist() if losses else []
        diagnosis["changed_fraction"] = sum(
            not torch.equal(p.detach(), b) for p, b in zip(trainable, before)) / len(trainable)


@torch.no_grad()
def _evaluate(model: nn.Module, task: Task, loss_fn: Callable, x: Any, y: torch.Tensor,
              ceiling: float = 1.0) -> tuple:
    """(loss, accuracy or None, every prediction that can be right is right) on one batch.

    In eval mode, except for a model with BatchNorm: its running variance is
    the unbiased variance of the rung's tiny batch (twice the biased one that
    training normalised with, at 2 items), so eval mode cannot reproduce what
    training fitted. It is judged in train mode, its running statistics
    restored afterwards.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in norms]
    try:
        with modes_kept(model):
            model.train(bool(norms))
            output = model(x)
            loss = float(loss_fn(output, y))
    finally:
        for m, buffers in zip(norms, saved):
            for name, value in buffers.items():
                getattr(m, name).copy_(value)
    if task.kind == "regression":
        return loss, None, True
    accuracy = 1.0 - error_rate(task.kind, output.float(), y)
    return loss, accuracy, accuracy >= ceiling - 1e-6  # error_rate may be a float32 ratio


def _best_possible(task: Task, x: Any, y: torch.Tensor) -> tuple[float, float]:
    """(best accuracy, lowest mean cross-entropy) that any model can reach on this batch.

    Both are 1 and 0 except for a language model, where two sequences that
    share a prefix but continue differently cannot both be predicted: the
    bound assumes the model sees the whole prefix (a shorter context only
    lowers what it can reach).
    """
    if task.kind != "language-model" or not isinstance(x, torch.Tensor) or x.shape != y.shape \
            or x.is_floating_point() or x.dim() != 2:
        return 1.0, 0.0
    nodes: dict[tuple[int, int], int] = {}
    groups: dict[int, dict[int, int]] = {}
    parents = [-1] * x.shape[0]
    for column, targets in zip(x.T.tolist(), y.T.tolist()):
        for b, (token, target) in enumerate(zip(column, targets)):
            parents[b] = nodes.setdefault((parents[b], token), len(nodes))
            if target != IGNORE_INDEX:
                counts = groups.setdefault(parents[b], {})
                counts[target] = counts.get(target, 0) + 1
    total = sum(sum(c.values()) for c in groups.values())
    if total == 0:
        return 1.0, 0.0
    best = sum(max(c.values()) for c in groups.values()) / total
    entropy = -sum(n * math.log(n / sum(c.values())) for c in groups.values() for n in c.values()) / total
    return best, entropy


def _target_loss(task: Task, loss_fn: Callable, x: Any, y: torch.Tensor, initial: float,
                 model: nn.Module, entropy: float = 0.0) -> float:
    """The loss a rung must reach: LOSS_FRACTION (or REGRESSION_FRACTION) of the way from start to perfect."""
    with torch.no_grad():
        with eval_mode(model):
            output = model(x)
        floor = _perfect_loss(task, loss_fn, output, y) + entropy
        if task.kind != "regression":
            return floor + LOSS_FRACTION * max(initial - floor, 0.0)
        reference = initial
        if len(y) > 1:  # predicting the mean of the rung's targets must not count as fitting them
            mean = y.float().mean(0, keepdim=True).expand_as(y).reshape(output.shape)
            reference = min(initial, float(loss_fn(mean, y)))
        return floor + REGRESSION_FRACTION * max(reference - floor, 0.0)


def _perfect_loss(task: Task, loss_fn: Callable, output: torch.Tensor, y: torch.Tensor) -> float:
    """The lowest loss of confident, correct predictions (not 0 with label smoothing); 0 if it cannot be made."""
    try:
        if task.kind == "regression":
            return float(loss_fn(y.float().reshape(output.shape), y))
        if task.kind in ("binary", "multilabel"):
            sign = (2.0 * y.float() - 1.0).reshape(output.shape)
            return min(float(loss_fn(scale * sign, y)) for scale in (2.0, 4.0, 8.0, 16.0))
        dim = 1 if task.kind == "classification" else output.dim() - 1
        onehot = F.one_hot(y.clamp_min(0), output.shape[dim]).movedim(-1, dim).to(output.dtype)
        return min(float(loss_fn(scale * onehot, y)) for scale in (2.0, 4.0, 8.0, 16.0))
    except (RuntimeError, ValueError, TypeError, IndexError):  # a loss that wants other outputs
        return 0.0


def _why_failed(rung: Rung) -> tuple[str, str]:
    """What a failing rung's numbers point to: (reason, cause), cause one of "code", "lr", "batch"."""
    d = rung.diagnosis
    if d.get("optimized_fraction", 1.0) == 0.0:
        return "the optimizer holds none of the model's trainable parameters", "code"
    if d.get("gradient_fraction", 1.0) == 0.0:
        return ("no gradient reaches the parameters: the loss is cut off from the model's output "
                "(a detach, an item(), a numpy round trip)"), "code"
    if d.get("changed_fraction", 1.0) == 0.0:
        return "no parameter changed: the learning rate is zero, or the optimizer never steps", "code"
    start, end, curve = rung.initial_loss, rung.final_loss, rung.curve
    lr = f" (lr={d['lr']:.3g})" if d.get("lr") is not None else ""
    early_peak = max(curve[:20], default=start)
    if start is not None and end is not None and start > 0 and (early_peak > LR_JUMP * start or end > start):
        return (f"the loss jumped from {start:.4g} to {early_peak:.4g} in the first steps and ended at "
                f"{end:.4g}: the learning rate{lr} is far too high"), "lr"
    if start is not None and end is not None and start - end < 0.1 * abs(start - (rung.target_loss or 0.0)):
        return f"the loss barely moved ({start:.4g} to {end:.4g}): the learning rate{lr} is far too low", "lr"
    accuracy = f", {rung.accuracy:.0%} right" if rung.accuracy is not None else ""
    return (f"after {rung.steps} steps the loss is {end:.4g}{accuracy}; it had to reach {rung.target_loss:.4g}"
            + (" with every prediction right" if rung.accuracy is not None else ""), "batch")


def _ladder_finding(rungs: list[Rung], max_steps: int, seconds: float) -> Finding:
    ran = [r for r in rungs if r.passed is not None]
    failed = next((r for r in rungs if r.status == "failed"), None)
    evidence = {"rungs": [r.evidence() for r in rungs], "max_steps": max_steps, "augmentation": "off",
                "seconds": round(seconds, 3), "first_failed_size": failed.size if failed else None}
    figures = [_curves_figure(rungs)] if any(r.curve for r in rungs) else []
    summary = "; ".join(_rung_words(r) for r in rungs)
    if failed is not None:
        trainable = failed.diagnosis.get("trainable_fraction", 1.0)
        frozen = f" Only {trainable:.1%} of the parameters are trainable." if trainable < 0.5 else ""
        cause = failed.diagnosis.get("cause", "code")
        if failed is ran[0] and cause == "batch":
            cause = "code"
        if cause == "lr":
            points = "The learning rate is the first suspect: the model should fit a handful of items easily."
            fix = ("Run `dltips.lr_find` (the LR range test) and use its suggestion, or move the learning rate by "
                   "10x towards it; see `dltips tips default-lr`.")
        elif cause == "code":
            points = ("Failing on the smallest batch points at the optimisation or the training code: a loss that "
                      "does not reach the parameters, frozen or detached parameters, an optimizer over the wrong "
                      "parameters, or a learning rate far too low or too high.")
            fix = ("Train on this single batch by hand and watch the loss and the parameters: check that "
                   "loss.backward() gives non-zero gradients to the model's parameters, that the optimizer holds "
                   "those parameters, and try the learning rate 10x up and down.")
        else:
            fitted = max(r.size for r in ran if r.passed)
            points = (f"It fits {fitted} item{'s' if fitted > 1 else ''} but not {failed.size}: that points at "
                      "what changes with several items in a batch: batch-dependent layers (BatchNorm on tiny "
                      "batches, anything that mixes items), targets misaligned with their inputs, or too little "
                      "capacity.")
            fix = ("Check that each target stays with its input through the data pipeline and the loss, look for "
                   "layers that mix items across the batch, and give the model more capacity if it is very small.")
        if failed.monitors:
            evidence["monitors"] = [f.to_dict() for f in failed.monitors]
            seen = ("The monitors on that rung point at the cause: "
                    + " ".join(f"{f.title}: {f.message}" for f in failed.monitors))
            # layer-level evidence replaces the guess made from the rung sizes, and adds to the others
            points = seen if cause == "batch" else f"{points} {seen}"
            fix = " ".join(f.fix for f in failed.monitors if f.fix) + " " + fix
        return Finding(TIP_TINY, "fail", f"Cannot overfit {failed.size} training item{'s' if failed.size > 1 else ''}",
                       f"{summary}. Rung {failed.size} failed: {failed.reason}. {points}{frozen}", fix,
                       evidence, figures)
    if not ran:
        return Finding(TIP_TINY, "skip", "Overfitting tiny batches was not run",
                       f"{summary}.", None, evidence, figures)
    fitted = ", ".join(str(r.size) for r in ran)
    return Finding(TIP_TINY, "pass", f"Overfits {fitted} training item{'s' if ran[-1].size > 1 else ''}",
                   f"{summary}. The model fits every rung it was given.", None, evidence, figures)


def _rung_words(rung: Rung) -> str:
    if rung.status == "passed":
        return f"{rung.size}: fitted in {rung.steps} steps (loss {rung.initial_loss:.3g} to {rung.final_loss:.3g})"
    if rung.status in ("failed", "stopped") and rung.final_loss is not None:
        return (f"{rung.size}: {rung.status} after {rung.steps} steps "
                f"(loss {rung.initial_loss:.3g} to {rung.final_loss:.3g})")
    return f"{rung.size}: {rung.status} ({rung.reason})"


def _curves_figure(rungs: list[Rung]) -> dict:
    length = max(len(r.curve) for r in rungs)
    series = {f"{r.size} item{'s' if r.size > 1 else ''}": r.curve + [math.nan] * (length - len(r.curve))
              for r in rungs if r.curve}
    positive = all(v > 0 for r in rungs for v in r.curve if math.isfinite(v))
    return {"kind": "lines", "title": "Overfitting tiny batches: training loss per rung",
            "x": list(range(1, length + 1)), "series": series, "xlabel": "step", "ylabel": "training loss",
            "xlog": False, "ylog": positive}


# ---------------------------------------------------------------------------------------------- capacity


def check_capacity(
    task: Task,
    *,
    n_items: int = 512,
    max_steps: int = 600,
    budget_s: float | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    valid_error: float | None = None,
) -> list[Finding]:
    """Can the model drive the training error near zero on a training subset? (tip `overfit-then-regularize`)

    Trains a fresh copy on up to `n_items` training items (a seeded subset)
    with minibatches of `task.batch_size`, no augmentation and no
    regularisation (dropout probabilities and weight decay set to 0: the tip
    asks for the capacity first, regularisation second), for at most
    `max_steps` steps or `budget_s` seconds, stopping once the training error
    is near zero. `valid_error` (the same error measure on validation data:
    error rate, or MSE for regression) turns a pass into a ranking of
    regularisers when it is much larger than the training error. A language
    model whose error levels off above zero but clearly below the majority-token
    baseline gets `info`, not `warn`: text has an error floor of its own.
    """
    _check_positive_int("n_items", n_items)
    _check_positive_int("max_steps", max_steps)
    if budget_s is not None and not budget_s > 0:
        raise ValueError(f"budget_s must be positive or None, got {budget_s!r}")
    torch.manual_seed(seed)
    start = time.perf_counter()
    deadline = start + budget_s if budget_s is not None else math.inf
    n = min(n_items, len(task.train))
    indices = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    model = copy.deepcopy(task.model)
    device = resolve_device(device, model)
    model.to(device)
    targets = _targets(task.train, indices)
    baseline = baseline_error(task.kind, targets, targets)
    threshold = CAPACITY_FRACTION * baseline if task.kind == "regression" else CAPACITY_ERROR
    history: list[tuple[int, float]] = []
    steps, stopped = 0, "max_steps"
    with grads_kept(task.model):
        optimizer = make_optimizer(task, model)
        lr = float(optimizer.param_groups[0]["lr"]) if optimizer.param_groups else None
        regularisation_off = _switch_off_regularisation(model, optimizer)
        batch_size = min(task.batch_size, n)
        steps_per_epoch = n // batch_size
        every = max(CAPACITY_EVAL_EVERY, steps_per_epoch)
        generator = torch.Generator().manual_seed(seed)
        loss_fn = task.loss_fn
        for x, y in _forever(Subset(task.train, indices), batch_size, generator):
            model.train()
            x, y = to_device(x, device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            steps += 1
            out_of_time = time.perf_counter() >= deadline
            if steps % every == 0 or steps == max_steps or out_of_time:
                history.append((steps, _train_error(model, task, indices, device)))
                if not math.isfinite(history[-1][1]) or history[-1][1] <= threshold:
                    stopped = "target" if history[-1][1] <= threshold else "non-finite"
                    break
            if steps >= max_steps or out_of_time:
                stopped = "budget" if out_of_time and steps < max_steps else "max_steps"
                break
    train_error = history[-1][1]
    evidence = {"train_error": train_error, "baseline_error": baseline, "threshold": threshold, "steps": steps,
                "n_items": n, "batch_size": batch_size, "lr": lr, "stopped_by": stopped, "augmentation": "off",
                "regularisation_switched_off": regularisation_off,
                "valid_error": valid_error, "seconds": round(time.perf_counter() - start, 3),
                "error_curve": {"steps": [s for s, _ in history], "errors": [e for _, e in history]}}
    figure = {"kind": "lines", "title": "Training error on the subset", "x": [s for s, _ in history],
              "series": {"train error": [e for _, e in history]}, "xlabel": "step",
              "ylabel": "MSE" if task.kind == "regression" else "error rate", "xlog": False, "ylog": False,
              "band": [0.0, threshold]}
    return [_capacity_finding(task, evidence, history, [figure])]


def _switch_off_regularisation(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Set dropout probabilities and weight decay to 0 on a copy: capacity first, regularisation second.

    Returns what was switched off, for the evidence.
    """
    dropout = [module for module in model.modules()
               if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0]
    for module in dropout:
        module.p = 0.0
    decay = [group["weight_decay"] for group in optimizer.param_groups if group.get("weight_decay")]
    for group in optimizer.param_groups:
        if "weight_decay" in group:
            group["weight_decay"] = 0.0
    return {"dropout_layers": len(dropout), "weight_decay": decay}


def _capacity_finding(task: Task, ev: dict, history: list[tuple[int, float]], figures: list) -> Finding:
    regression = task.kind == "regression"
    err, base, n, steps = ev["train_error"], ev["baseline_error"], ev["n_items"], ev["steps"]
    measure = "MSE" if regression else "error"
    fmt = (lambda v: f"{v:.4g}") if regression else (lambda v: f"{v:.1%}")
    numbers = (f"training {measure} of {fmt(err)} on {n} training items after {steps} steps (a constant "
               f"prediction gets {fmt(base)}; near zero means at most {fmt(ev['threshold'])})")
    if not math.isfinite(err):
        return Finding(TIP_CAPACITY, "warn", "Training diverged on a training subset",
                       f"The training {measure} became NaN or infinite after {steps} steps on {n} training items, "
                       "so the model's capacity could not be measured.",
                       "Lower the learning rate (see `dltips tips default-lr`) and check the inputs and the loss "
                       "for NaN.", ev, figures)
    if err > ev["threshold"]:
        ev["trend"] = _trend(history)
        if ev["trend"] != "flat":
            limit = "time budget" if ev["stopped_by"] == "budget" else f"step budget ({steps} steps)"
            why = ("the error was still falling" if ev["trend"] == "falling"
                   else f"{len(history)} measurements are too few to tell whether the error still falls")
            return Finding(TIP_CAPACITY, "info", "Capacity not settled within the budget",
                           f"The model reached a {numbers}; {why} when the {limit} ran out, so this run cannot "
                           "tell whether it gets near zero.",
                           "Give the check more steps (max_steps, budget_s) to settle it.", ev, figures)
        if task.kind == "language-model" and err <= LM_BASELINE_FRACTION * base:
            return Finding(TIP_CAPACITY, "info", "Training error levelled off above zero, as text allows",
                           f"The model reached a {numbers}; the error had levelled off. Part of a language "
                           "model's next-token error is the text's own unpredictability, so a plateau above zero "
                           f"does not show a capacity limit, and the model beats the majority-token baseline "
                           f"(at most {LM_BASELINE_FRACTION:.0%} of it).",
                           "To see whether capacity limits the loss, train a model twice as wide for the same "
                           "steps: a clearly lower training loss means the smaller one was too small.", ev, figures)
        return Finding(TIP_CAPACITY, "warn", "The model cannot fit its training data",
                       f"The model reached a {numbers}, and the error had stopped falling. The architecture or "
                       "the optimisation is the limit, so regularisation will not help yet: it would only make "
                       "fitting harder.",
                       "Make fitting easier first: a bigger model (wider or deeper), normalisation layers, "
                       "longer training, or a higher learning rate (see `dltips tips default-lr`). Regularise only "
                       "once the training error is near zero.", ev, figures)
    valid = ev["valid_error"]
    gap = (GAP_FRACTION * base) if regression else GAP_ERROR
    if valid is not None and valid - err > gap and valid >= 2 * err:
        ranking, why = _regularisers(task)
        ev["regularisers"] = ranking
        return Finding(TIP_CAPACITY, "info", "The model fits its training data; regularise next",
                       f"The model reached a {numbers}, but the validation {measure} is {fmt(valid)}: it "
                       f"overfits. Try, in this order: {', '.join(ranking)}. {why}",
                       f"Add {ranking[0]} first, then {ranking[1]}; more training data beats them all when "
                       "available.", ev, figures)
    tail = ("" if valid is None else f" The validation {measure}, {fmt(valid)}, is close to it: no sign of "
                                      "overfitting.")
    return Finding(TIP_CAPACITY, "pass", "The model can fit its training data",
                   f"The model reached a {numbers}.{tail}", None, ev, figures)


def _regularisers(task: Task) -> tuple[list[str], str]:
    """Regularisers to try, most promising first for this kind of input, and why."""
    x = task.train[0][0]
    if task.kind == "language-model" or (isinstance(x, torch.Tensor) and not x.is_floating_point()):
        return ["dropout", "weight decay", "early stopping", "data augmentation"], (
            "For tokens, few transformations keep the label, so dropout and weight decay come first.")
    if isinstance(x, torch.Tensor) and x.dim() >= 2:
        return ["data augmentation", "weight decay", "dropout", "early stopping"], (
            "For images and other signals, label-preserving augmentation adds data, the strongest regulariser "
            "(see `dltips tips label-preserving-augmentation`).")
    return ["weight decay", "dropout", "early stopping", "data augmentation"], (
        "For tabular rows there is no natural label-preserving transformation (mixup needs much longer training), "
        "so weight decay and dropout come first.")


def _trend(history: list[tuple[int, float]]) -> str:
    """"falling" if the error fell by more than IMPROVING (relative) over the second half of training,
    "flat" if not, "short" with fewer than MIN_MEASUREMENTS measurements."""
    if len(history) < MIN_MEASUREMENTS:
        return "short"
    half = history[-1][0] / 2
    early = [e for s, e in history if s <= half] or [history[0][1]]
    return "falling" if history[-1][1] < (1.0 - IMPROVING) * min(early) else "flat"


@torch.no_grad()
def _train_error(model: nn.Module, task: Task, indices: list[int], device: torch.device) -> float:
    """The kind's error (`error_rate`) of `model` in eval mode on the training items at `indices`."""
    outputs, targets = [], []
    with eval_mode(model):
        for x, y in DataLoader(Subset(task.train, indices), batch_size=max(task.batch_size, 256)):
            outputs.append(model(to_device(x, device)).float().cpu())
            targets.append(y)
    return error_rate(task.kind, torch.cat(outputs), torch.cat(targets))


def _forever(data: Dataset, batch_size: int, generator: torch.Generator) -> Iterator:
    """Shuffled minibatches, epoch after epoch; no batch smaller than `batch_size` unless it is the only one."""
    drop_last = len(data) > batch_size
    while True:
        yield from DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=drop_last, generator=generator)


# ---------------------------------------------------------------------------------------------- helpers


def _batch(data: Dataset, indices: list[int], device: torch.device) -> tuple[Any, torch.Tensor]:
    x, y = default_collate([data[i] for i in indices])
    return to_device(x, device), y.to(device)


def _targets(data: Dataset, indices: list[int]) -> torch.Tensor:
    return default_collate([data[i][1] for i in indices])


def _check_sizes(sizes: Sequence[int]) -> list[int]:
    sizes = list(sizes)
    if not sizes or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in sizes):
        raise ValueError(f"sizes must be positive ints, got {sizes!r}")
    return sorted(set(sizes))


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
