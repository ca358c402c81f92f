"""Overfit one example, then a few: can the model and its training code learn at all?

`overfit_ladder` trains a fresh copy of the model on 1, 2, 8, 32 training
items (each rung one full batch, no augmentation) until it predicts every one
of them (tip `overfit-tiny`). Where the ladder first fails points to the
cause: failing on one example means the optimisation or the training code is
broken (a loss that does not reach the parameters, frozen weights, an optimizer
over the wrong parameters, a learning rate far off); passing one but failing on
a few points at batch-dependent layers, label handling or too little capacity.

`check_capacity` (in `dltips.training.capacity`) asks the next question: can the model fit a
training subset (tip `overfit-then-regularize`).

The ladder trains with the Task's own loss and optimizer at its own constant learning
rate, in train mode, and never touches `task.model`.

A rung is fitted when, in eval mode (train mode with the running statistics
kept for a model with BatchNorm, see `_evaluate`), every prediction is right and the loss
has closed all but `LOSS_FRACTION` of the gap between its start and the loss of a
confident, correct prediction (which is not 0 with label smoothing). For a language model
"every prediction" excludes what no model can know: two sequences that share a
prefix but continue differently. For regression the loss must close all but
`REGRESSION_FRACTION` of the gap from the smaller of its start and the loss of predicting
the rung's mean target, so learning the mean alone does not count.

The measurements behind the thresholds are in docs/calibration.md ("overfit-tiny").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from dltips.core.checks import check_args, renamed_kwargs
from dltips.core.deadline import Deadline
from dltips.core.device import model_device, resolve_device, to_device
from dltips.core.params import ints, positive_int
from dltips.core.state import eval_mode, grads_kept, modes_kept, rng_kept, training_copy
from dltips.findings import Finding, skipped_for_time
from dltips.predict import error_rate
from dltips.task import IGNORE_INDEX, Task, as_logits, gradients_seen
from dltips.training.floor import LossFloor, describe, loss_floor
from dltips.training.lr import make_optimizer

__all__ = ["OverfitResult", "Rung", "check_overfit_tiny", "overfit_ladder"]

TIP_TINY = "overfit-tiny"
DEFAULT_SIZES = (1, 2, 8, 32)

# overfit-tiny: a rung passes when every prediction is right (classification-like kinds) and the eval-mode
# loss has closed this much of the gap between its start and the loss of a perfect prediction.
LOSS_FRACTION = 0.05
# Regression: the loss must fall below this fraction of the start (of the loss of predicting the rung's mean
# target, when smaller), measured from the loss of a perfect prediction.
REGRESSION_FRACTION = 0.01
CHECK_EVERY = 10  # steps between checks of the criterion
# A rung whose loss (its distance to the floor) still shrank by FALLING over the last third of its steps is not
# failed: it is extended, up to EXTEND times max_steps in all, when its rate projects the target within reach,
# and called undecided (a skip that names the steps needed) when it is still falling at the end.
FALLING = 0.2
EXTEND = 3
MONITOR_SAMPLES = 10  # sampled steps of dltips.watch per rung, to explain a failure layer by layer
# A training loss that jumps this many times above its start in the first 20 steps points at a far too high LR
# (AdamW at lr 3: 1e4-1e5 times); targets shuffled within the batch make it jump about 2 times.
LR_JUMP = 10.0


@dataclass
class Rung:
    """One rung of the ladder: training on the first `size` items of a seeded permutation."""

    size: int
    status: str  # "passed" | "failed" | "undecided" (still falling) | "stopped" (time budget) | "not run" | "skipped"
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
    needed_steps: int | None = None  # an undecided rung: steps still needed at its last rate

    @property
    def passed(self) -> bool | None:
        """True or False for a rung that ran to a verdict, None otherwise."""
        return {"passed": True, "failed": False}.get(self.status)

    def evidence(self) -> dict:
        return {"size": self.size, "status": self.status, "passed": self.passed, "reason": self.reason,
                "steps": self.steps, "initial_loss": self.initial_loss, "final_loss": self.final_loss,
                "target_loss": self.target_loss, "accuracy": self.accuracy, "seconds": round(self.seconds, 3),
                "needed_steps": self.needed_steps,
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


@renamed_kwargs(budget_s="deadline")
def check_overfit_tiny(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
    sizes: Sequence[int] = DEFAULT_SIZES,
    max_steps: int = 300,
) -> list[Finding]:
    """Overfit 1 training item, then a few (tip `overfit-tiny`); see `overfit_ladder`."""
    return overfit_ladder(task, model=model, device=device, seed=seed, max_items=max_items, deadline=deadline,
                          sizes=sizes, max_steps=max_steps).findings


@renamed_kwargs(budget_s="deadline")
def overfit_ladder(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
    sizes: Sequence[int] = DEFAULT_SIZES,
    max_steps: int = 300,
) -> OverfitResult:
    """Train a fresh copy of the model on each of `sizes` items until it fits them, smallest first.

    Each rung is one batch of distinct training items (the first `size` of a
    permutation seeded by `seed`), with dropout and weight decay switched off
    (the question is whether the model and optimiser can fit, not whether the
    regularised model does), trained in train mode for at most
    `max_steps` steps and checked every `CHECK_EVERY` steps in eval mode. The
    ladder stops at the first failing rung. With a `deadline` (or a number of
    seconds), rungs stop when it has passed, and later rungs are reported as not run.
    `max_items` caps the largest rung (default: the largest of `sizes`); `model`
    replaces `task.model` as the model copied. A model with BatchNorm skips the rung of one item
    (BatchNorm cannot train on a batch of one) and starts at 2.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    sizes = sorted(set(ints("sizes", sizes)))
    if max_items is not None:
        sizes = [k for k in sizes if k <= max_items] or [max_items]
    max_steps = positive_int("max_steps", max_steps)
    with rng_kept(seed):
        return _climb(task, model if model is not None else task.model, sizes, max_steps, seed, deadline, device)


def _climb(task: Task, original: nn.Module, sizes: list[int], max_steps: int, seed: int, deadline: Deadline | None,
           device: torch.device | str | None) -> OverfitResult:
    """Run the rungs smallest first, stopping at the first that fails or when the deadline has passed."""
    start = time.perf_counter()
    n = len(task.train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    batchnorm = has_batchnorm(original)
    if batchnorm and sizes[0] == 1 and 2 not in sizes and n >= 2:
        sizes = sorted({2, *sizes})
    rungs: list[Rung] = []
    ended: str | None = None  # why the ladder stopped climbing: a rung failed, was undecided or ran out of time
    for k in sizes:
        if k > n:
            rungs.append(Rung(k, "not run", f"the training set has only {n} items"))
        elif k == 1 and batchnorm:
            rungs.append(Rung(1, "skipped", "the model has BatchNorm, which cannot train on a batch of one "
                                            "item in train mode; the ladder starts at 2"))
        elif ended is not None:
            rungs.append(Rung(k, "not run", ended))
        elif deadline is not None and deadline.expired():
            rungs.append(Rung(k, "not run", "the time budget was spent"))
        else:
            rungs.append(_run_rung(task, original, order[:k], max_steps, deadline, device))
            ended = {"failed": "an earlier rung failed", "undecided": "an earlier rung was undecided",
                     "stopped": "the time budget was spent"}.get(rungs[-1].status)
    return OverfitResult(rungs, [_ladder_finding(rungs, max_steps, time.perf_counter() - start)])


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _run_rung(task: Task, original: nn.Module, indices: list[int], max_steps: int, deadline: Deadline | None,
              device: torch.device | str | None) -> Rung:
    """Train a fresh copy on the items at `indices` as one batch; an error in the user's code fails the rung."""
    start = time.perf_counter()
    with training_copy(original) as model:
        model.to(resolve_device(device, model))
        trainable = [p for p in model.parameters() if p.requires_grad]
        total = sum(p.numel() for p in model.parameters())
        rung = Rung(len(indices), "failed", diagnosis={
            "trainable_fraction": sum(p.numel() for p in trainable) / total if total else 0.0,
            "augmentation": "off", "trained_in_place": model is original,
        })
        if not trainable:
            rung.reason = "no parameter requires a gradient: the whole model is frozen"
        else:
            with grads_kept(original):
                try:
                    _train_rung(rung, task, model, trainable, indices, max_steps, deadline)
                except Exception as e:  # noqa: BLE001 -- the model, loss or optimizer raised: the verdict
                    rung.status, rung.reason = "failed", f"training raised {type(e).__name__}: {e}"
                    rung.diagnosis["cause"] = "code"
    if rung.status == "failed" and not rung.reason:
        rung.reason, rung.diagnosis["cause"] = _why_failed(rung)
    rung.seconds = time.perf_counter() - start
    return rung


def _train_rung(rung: Rung, task: Task, model: nn.Module, trainable: list[nn.Parameter], indices: list[int],
                max_steps: int, deadline: Deadline | None) -> None:
    """The rung's loop: fills in `rung` (steps, losses, curve, status, diagnosis) as it goes."""
    diagnosis, loss_fn = rung.diagnosis, task.loss_fn
    device = model_device(model)
    x, y = _batch(task, task.train, indices, device)
    optimizer = make_optimizer(task, model)
    diagnosis["regularisation_switched_off"] = switch_off_regularisation(model, optimizer)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    diagnosis["optimized_fraction"] = sum(id(p) in held for p in trainable) / len(trainable)
    diagnosis["lr"] = float(optimizer.param_groups[0]["lr"]) if optimizer.param_groups else None
    ceiling, entropy = _best_possible(task, x, y)
    if ceiling < 1.0:
        diagnosis["best_possible_accuracy"] = ceiling
    rung.initial_loss, rung.accuracy, _ = _evaluate(model, task, loss_fn, x, y, ceiling)
    floor = _loss_floor(task, loss_fn, model, x, y)
    diagnosis.update(describe(floor))
    if not floor.bounded:
        rung.reason = (f"the loss has no lower bound on the model's outputs ({floor.form}): it keeps falling as they "
                       f"grow (below {floor.value:.4g}), so no value of it means fitted. nll_loss expects "
                       "log-probabilities (end the model with log_softmax); BCELoss expects probabilities (sigmoid)")
        diagnosis["cause"] = "code"
        return
    rung.target_loss = target = _target_loss(task, loss_fn, model, x, y, rung.initial_loss, floor.value + entropy)
    before = [p.detach().clone() for p in trainable]
    losses: list[torch.Tensor] = []
    model.train()
    from dltips.monitor.watch import Watch

    monitor = Watch(model, optimizer, every=max(1, max_steps // MONITOR_SAMPLES)).attach()
    evaluations: list[tuple[int, float]] = []
    limit, step = max_steps, 0
    try:
        while step < limit:
            step += 1
            if step == 1:
                with gradients_seen(trainable) as reached:
                    loss = task.train_step(model, (x, y), optimizer)
                diagnosis["gradient_fraction"] = len(reached) / len(trainable)
            else:
                loss = task.train_step(model, (x, y), optimizer)
            monitor.log(loss=loss)
            losses.append(loss.float())
            rung.steps = step
            if step % CHECK_EVERY == 0 or step == limit:
                if not math.isfinite(float(losses[-1])):
                    rung.reason = (f"the training loss became NaN or infinite by step {step}: the learning "
                                   "rate is far too high, or the loss or the inputs produce NaN")
                    diagnosis["cause"] = "lr"
                    break
                rung.final_loss, rung.accuracy, correct = _evaluate(model, task, loss_fn, x, y, ceiling)
                evaluations.append((step, rung.final_loss))
                if correct and rung.final_loss <= target:
                    rung.status = "passed"
                    break
                if step == limit:
                    limit = _extended_limit(evaluations, floor.value, target, limit, max_steps)
            if deadline is not None and deadline.expired() and step < limit:
                rung.status, rung.reason = "stopped", f"the time budget ran out after {step} steps"
                rung.final_loss, rung.accuracy, _ = _evaluate(model, task, loss_fn, x, y, ceiling)
                break
        if rung.status == "failed" and not rung.reason and _still_falling(evaluations, floor.value):
            rung.status, rung.needed_steps = "undecided", _steps_needed(evaluations, floor.value, target)
            rung.reason = (f"the loss was still falling after {step} steps ({rung.initial_loss:.4g} to "
                           f"{rung.final_loss:.4g}; the target is {target:.4g})")
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
            output, y = task.outputs(model, (x, y))
            loss = float(loss_fn(output, y))
    finally:
        for m, buffers in zip(norms, saved):
            for name, value in buffers.items():
                getattr(m, name).copy_(value)
    if task.kind == "regression":
        return loss, None, True
    accuracy = 1.0 - error_rate(task.kind, as_logits(task, output.float()), y)
    return loss, accuracy, accuracy >= ceiling - 1e-6  # error_rate may be a float32 ratio


def _best_possible(task: Task, x: Any, y: torch.Tensor) -> tuple[float, float]:
    """(best accuracy, lowest mean cross-entropy) that any model can reach on this batch.

    Both are 1 and 0 except for a language model, where two sequences that
    share a prefix but continue differently cannot both be predicted: the
    bound assumes the model sees the whole prefix (a shorter context only
    lowers what it can reach).
    """
    if isinstance(x, Mapping):  # a Hugging Face batch: its token ids
        x = x.get("input_ids")
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


def _loss_floor(task: Task, loss_fn: Callable, model: nn.Module, x: Any, y: torch.Tensor) -> LossFloor:
    """The floor of the Task's loss on this batch, for outputs of the form the model gives (see training.floor)."""
    with torch.no_grad(), eval_mode(model):
        output, y = task.outputs(model, (x, y))
    return loss_floor(task.kind, loss_fn, output, y, task.output_form)


def _target_loss(task: Task, loss_fn: Callable, model: nn.Module, x: Any, y: torch.Tensor, initial: float,
                 floor: float) -> float:
    """The loss a rung must reach: LOSS_FRACTION (or REGRESSION_FRACTION) of the way from start to the floor."""
    if task.kind != "regression":
        return floor + LOSS_FRACTION * max(initial - floor, 0.0)
    reference = initial
    if len(y) > 1:  # predicting the mean of the rung's targets must not count as fitting them
        with torch.no_grad(), eval_mode(model):
            shape = task.outputs(model, (x, y))[0].shape
        mean = y.float().mean(0, keepdim=True).expand_as(y).reshape(shape)
        with torch.no_grad():
            reference = min(initial, float(loss_fn(mean, y)))
    return floor + REGRESSION_FRACTION * max(reference - floor, 0.0)


def _gaps(evaluations: list[tuple[int, float]], floor: float) -> list[tuple[int, float]]:
    return [(s, max(v - floor, 1e-12)) for s, v in evaluations]


def _still_falling(evaluations: list[tuple[int, float]], floor: float) -> bool:
    """Whether the loss's distance to its floor shrank by FALLING over the last third of the run."""
    gaps = _gaps(evaluations, floor)
    if len(gaps) < 3:
        return False
    last_step, last = gaps[-1]
    earlier = [g for s, g in gaps if s <= last_step * 2 / 3] or [gaps[0][1]]
    return last < (1.0 - FALLING) * earlier[-1]


def _steps_needed(evaluations: list[tuple[int, float]], floor: float, target: float) -> int | None:
    """Steps still needed to reach `target` at the rate the gap to the floor shrank over the last third."""
    gaps = _gaps(evaluations, floor)
    if len(gaps) < 3 or target <= floor:
        return None
    s2, g2 = gaps[-1]
    s1, g1 = next((s, g) for s, g in gaps if s >= s2 * 2 / 3)
    needed_gap = target - floor
    if g2 <= needed_gap:
        return 0
    if s2 <= s1 or g2 >= g1:
        return None
    rate = math.log(g1 / g2) / (s2 - s1)  # per step, on the log of the gap
    return math.ceil(math.log(g2 / needed_gap) / rate)


def _extended_limit(evaluations: list[tuple[int, float]], floor: float, target: float, limit: int,
                    max_steps: int) -> int:
    """A longer step limit for a rung still falling fast enough to reach its target, else `limit`.

    Set by the loss curve, never by the clock, and at most EXTEND times `max_steps` in all.
    """
    cap = EXTEND * max_steps
    needed = _steps_needed(evaluations, floor, target)
    if limit >= cap or needed is None or not _still_falling(evaluations, floor):
        return limit
    return min(cap, limit + max(CHECK_EVERY, math.ceil(1.5 * needed / CHECK_EVERY) * CHECK_EVERY))


def _why_failed(rung: Rung) -> tuple[str, str]:
    """What a failing rung's numbers point to: (reason, cause), cause one of "code", "lr", "batch"."""
    d = rung.diagnosis
    if d.get("optimized_fraction", 1.0) == 0.0:
        return "the optimizer holds none of the model's trainable parameters", "code"
    if d.get("gradient_fraction", 1.0) == 0.0:
        return ("no gradient reaches the parameters: the loss is cut off from the model's output "
                "(a detach, an item(), a numpy round trip)"), "code"
    if d.get("changed_fraction", 1.0) == 0.0:
        if d.get("gradient_fraction", 0.0) > 0.0:
            return ("no parameter changed although gradients reached them: the optimizer stepped on gradients "
                    "zeroed after backward(), its learning rate is zero, or it never steps"), "code"
        return "no parameter changed: the learning rate is zero, or the optimizer never steps", "code"
    start, end, curve = rung.initial_loss, rung.final_loss, rung.curve
    lr = f" (lr={d['lr']:.3g})" if d.get("lr") is not None else ""
    early_peak = max(curve[:20], default=start)
    if start is not None and end is not None and start > 0 and (early_peak > LR_JUMP * start or end > start):
        return (f"the loss jumped from {start:.4g} to {early_peak:.4g} in the first steps and ended at "
                f"{end:.4g}: the learning rate{lr} is far too high"), "lr"
    if start is not None and end is not None and start - end < 0.1 * abs(start - (rung.target_loss or 0.0)):
        return f"the loss barely moved ({start:.4g} to {end:.4g}): the learning rate{lr} is far too low", "lr"
    accuracy = f", {_share(rung.accuracy)} right" if rung.accuracy is not None else ""
    return (f"after {rung.steps} steps the loss is {end:.4g}{accuracy}; it had to reach {rung.target_loss:.4g}"
            + (" with every prediction right" if rung.accuracy is not None else ""), "batch")


def _share(fraction: float) -> str:
    """A fraction as a percentage that never rounds up to 100 % (or down to 0 %) unless it is exactly that."""
    text = f"{fraction:.0%}"
    if text == "100%" and fraction < 1.0 or text == "0%" and fraction > 0.0:
        text = f"{fraction:.2%}" if f"{fraction:.2%}" not in ("100.00%", "0.00%") else f"{fraction:.4%}"
    return text


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
    undecided = next((r for r in rungs if r.status == "undecided"), None)
    if undecided is not None:
        more = (f"about {undecided.needed_steps} more steps at its last rate"
                if undecided.needed_steps is not None else "more steps than the rate can project")
        evidence["skip_reason"] = "undecided"
        return Finding(TIP_TINY, "skip", f"Undecided: still converging on {undecided.size} item"
                                         f"{'s' if undecided.size > 1 else ''} after {undecided.steps} steps",
                       f"{summary}. Rung {undecided.size}: {undecided.reason}. It needs {more}: a run still "
                       "falling is not a failure to fit, and not yet a success.",
                       f"Rerun the ladder with more steps: `dltips.check_overfit_tiny(task, max_steps="
                       f"{_rounded_up(undecided.steps + (undecided.needed_steps or undecided.steps))})`.",
                       evidence, figures)
    cut = [r for r in rungs if r.status == "stopped" or (r.status == "not run" and "time" in r.reason)]
    if cut:
        return skipped_for_time(TIP_TINY, _seconds_still_needed(rungs, max_steps),
                                f"{summary}", evidence)
    if not ran:
        return Finding(TIP_TINY, "skip", "No rung of the ladder could run", f"{summary}.", None, evidence, figures)
    fitted = ", ".join(str(r.size) for r in ran)
    return Finding(TIP_TINY, "pass", f"Overfits {fitted} training item{'s' if ran[-1].size > 1 else ''}",
                   f"{summary}. The model fits every rung it was given.", None, evidence, figures)


def _seconds_still_needed(rungs: list[Rung], max_steps: int) -> float:
    """The time the rungs cut short by the clock still need: their planned steps at the pace measured so far."""
    timed = [r for r in rungs if r.steps > 0 and r.seconds > 0]
    per_step = max((r.seconds / r.steps for r in timed), default=0.05)
    left = sum(max(max_steps - r.steps, 0) for r in rungs if r.status in ("stopped", "not run")
               and "only" not in r.reason)
    return left * per_step * 1.2


def _rounded_up(steps: int) -> int:
    return int(math.ceil(steps / 100) * 100)


def _rung_words(rung: Rung) -> str:
    if rung.status == "passed":
        return f"{rung.size}: fitted in {rung.steps} steps (loss {rung.initial_loss:.3g} to {rung.final_loss:.3g})"
    if rung.status in ("failed", "stopped", "undecided") and rung.final_loss is not None:
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


def switch_off_regularisation(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
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


def _batch(task: Task, data: Dataset, indices: list[int], device: torch.device) -> tuple[Any, torch.Tensor]:
    x, y = task.collate([data[i] for i in indices])
    return to_device(x, device), y.to(device)
