"""Bugs in the user's own training loop, named: what `watch` records about the loop, and its verdicts.

The watch's hooks see the loop from the inside (dltips.monitor.watch):

- a forgotten `optimizer.zero_grad()`: a tensor hook on a few of the optimizer's parameters runs on the
  first backward of a sampled step before the new gradient is added, so `.grad` there still holds what
  the previous step left. Gradient accumulation is not flagged: several backwards between two
  optimizer steps are one step's, and only the first is read;
- `zero_grad()` between `backward()` and `step()`: the step's gradients are all None or zero although
  a backward ran;
- training in eval mode: the optimizer steps while the model reports `training=False`;
- an LR schedule that collapses (falls `COLLAPSE` times below its highest value within the first
  `EARLY` of the run: a per-epoch scheduler stepped per batch) or rises back after it fell (warm
  restarts, or a cosine schedule whose period is shorter than the run);
- parameters that no gradient reaches, named;
- gradient clipping that sets every update: the total gradient norm at `step` is the same value (the
  clip's `max_norm`) on most sampled steps;
- gradient norms that keep growing from one sampled step to the next while the logged loss does not
  fall (a logged `loss` is needed).

The LR and the train/eval flag are read on every optimizer step (two Python reads); the gradient
checks run on sampled steps only and stay on the device until the watch's next read-back.
Thresholds and their calibration: tests/monitor/loop_zoo.py and docs/calibration.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from dltips.findings import Finding

__all__ = ["LOOP_CAUSES", "LoopRecord", "MODE_DEPENDENT", "loop_findings"]

# the causes the loop's findings name, in the order the doctor ranks them (dltips.diagnosis.causes)
LOOP_CAUSES = ("zeroed-before-step", "zero-grad-missing", "eval-mode-training", "lr-collapse", "growing-gradients",
               "clipping-dominates")

# modules whose training and eval behaviour differ (dropout with p = 0 does not count)
MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)
COLLAPSE = 1000.0  # the LR fell this many times below its highest value so far ...
EARLY = 0.1  # ... within this share of the run's optimizer steps
MIN_STEPS = 20  # runs shorter than this get no schedule verdict
RISE = 10.0  # after falling RISE times below its highest value, the LR rose RISE times above its lowest
CLIPPED_SAME = 1e-3  # total gradient norms within this relative distance of the median are "the same"
CLIPPED_SHARE = 0.9  # ... on at least this share of the sampled steps: the clip sets every update
GROWTH = 10.0  # the total gradient norm grew this many times ...
GROWTH_RANK = 0.9  # ... with a Spearman correlation of at least this with the step
MIN_SAMPLES = 8  # sampled steps needed before clipping or growth is judged


@dataclass
class LoopRecord:
    """What a watch recorded about the loop that drove it."""

    mode_matters: bool = False  # the model has dropout or BatchNorm
    steps: int = 0  # optimizer steps seen
    eval_steps: int = 0  # ... taken while the model was in eval mode
    first_eval_step: int | None = None
    lr_first: float | None = None
    lr_max: float = 0.0
    lr_low: float | None = None  # the lowest LR after it fell RISE times below lr_max
    collapse: tuple[int, float, float] | None = None  # (step, highest LR before, LR)
    rise: tuple[int, float, float] | None = None  # (step, lowest LR before, LR)
    checks: dict[str, list[tuple[int, bool]]] = field(default_factory=dict)  # name -> (step, failed)

    def on_step(self, step: int, training: bool, lr: Any) -> None:
        """Called by the watch before every optimizer step."""
        self.steps += 1
        if not training:
            self.eval_steps += 1
            if self.first_eval_step is None:
                self.first_eval_step = step
        lr = float(lr)
        if self.lr_first is None:
            self.lr_first = lr
        self.lr_max = max(self.lr_max, lr)
        if self.collapse is None and self.lr_max > 0 and lr <= self.lr_max / COLLAPSE * (1 + 1e-6):
            self.collapse = (step, self.lr_max, lr)
        if self.lr_max > 0 and lr <= self.lr_max / RISE:
            self.lr_low = lr if self.lr_low is None else min(self.lr_low, lr)
        elif self.rise is None and self.lr_low is not None and lr >= RISE * max(self.lr_low, 1e-300):
            self.rise = (step, self.lr_low, lr)

    def add_check(self, name: str, step: int, failed: bool) -> None:
        self.checks.setdefault(name, []).append((step, failed))

    def failed(self, name: str) -> tuple[list[int], int]:
        """The steps on which check `name` failed, and how many times it ran."""
        runs = self.checks.get(name, [])
        return [step for step, bad in runs if bad], len(runs)


def loop_findings(watch: Any) -> list[Finding]:
    """The loop's findings: a warn or fail for each bug found, nothing for a healthy loop."""
    record: LoopRecord = watch.loop
    zeroed = _zeroed(record)
    found = [f for f in (_carried(watch, record), zeroed, _eval_mode(record), _schedule(record),
                         None if zeroed else _no_gradient(watch)) if f is not None]
    samples = [s for s in watch.samples if s.gradients]
    if len(samples) >= MIN_SAMPLES:
        found += [f for f in (_clipping(samples), _growing(samples)) if f is not None]
    return found


def _steps(steps: list[int], limit: int = 5) -> str:
    return ", ".join(map(str, steps[:limit])) + (", ..." if len(steps) > limit else "")


def _carried(watch: Any, record: LoopRecord) -> Finding | None:
    bad, runs = record.failed("carried")
    if not bad:
        return None
    status = "fail" if len(bad) >= max(2, runs // 2) else "warn"
    return Finding(
        "gradient-accumulation", status, "optimizer.zero_grad() is missing: gradients carry over between steps",
        f"On {len(bad)} of {runs} sampled steps (steps {_steps(bad)}), the first backward after optimizer.step() "
        "found the previous step's gradients still in .grad: each step adds the gradients of every step before "
        "it, so the update grows with the run and points where the model was, not where it is.",
        "Call optimizer.zero_grad() once per optimizer step (before the backward, or right after step()). To "
        "accumulate on purpose, zero after each optimizer step, not never (dltips.GradientAccumulator).",
        {"cause": "zero-grad-missing", "steps": bad, "checked_steps": runs})


def _zeroed(record: LoopRecord) -> Finding | None:
    bad, runs = record.failed("zeroed")
    if not bad or len(bad) < max(1, runs // 2):
        return None
    return Finding(
        "update-ratio", "fail", "Gradients are zeroed between backward() and step()",
        f"On {len(bad)} of {runs} sampled steps (steps {_steps(bad)}) a backward ran, yet when optimizer.step() "
        "came every gradient it reads was None or zero: zero_grad() runs after backward(), so the optimizer "
        "steps on nothing (weight decay and momentum alone move the weights).",
        "Order the loop as optimizer.zero_grad(); loss.backward(); optimizer.step() (or zero right after step).",
        {"cause": "zeroed-before-step", "steps": bad, "checked_steps": runs})


def _eval_mode(record: LoopRecord) -> Finding | None:
    if not record.eval_steps:
        return None
    share = record.eval_steps / max(record.steps, 1)
    what = ("so dropout is off and BatchNorm normalises with its running statistics, which it no longer updates"
            if record.mode_matters else "which changes nothing for this model (it has no dropout or BatchNorm), "
            "but will for the next one")
    return Finding(
        "activation-gradient-stats", "warn" if record.mode_matters else "info",
        "The optimizer steps while the model is in eval mode",
        f"{record.eval_steps} of {record.steps} optimizer steps ({share:.0%}, from step {record.first_eval_step}) "
        f"ran with model.training False, {what}. The usual cause is an evaluation inside the loop (model.eval()) "
        "without model.train() after it.",
        "Call model.train() at the start of each training epoch, and after every evaluation.",
        {"cause": "eval-mode-training", "eval_steps": record.eval_steps, "steps": record.steps,
         "first_eval_step": record.first_eval_step, "mode_matters": record.mode_matters})


def _schedule(record: LoopRecord) -> Finding | None:
    if record.steps < MIN_STEPS:
        return None
    if record.collapse is not None and record.collapse[0] <= EARLY * record.steps:
        step, high, lr = record.collapse
        return Finding(
            "one-cycle", "warn", "The learning rate collapses early in the run",
            f"The LR fell from {high:.3g} to {lr:.3g} ({COLLAPSE:g} times or more) by step {step} of "
            f"{record.steps} ({step / record.steps:.0%} of the run): every step after that barely moves the weights. "
            "A scheduler whose steps are counted in epochs (StepLR, MultiStepLR, CosineAnnealingLR with T_max in "
            "epochs) stepped once per batch does this.",
            "Step per-epoch schedulers once per epoch, or give them their sizes in batches (T_max, step_size, "
            "total_steps = epochs x batches per epoch).",
            {"cause": "lr-collapse", "step": step, "lr_max": high, "lr": lr, "steps": record.steps,
             "collapse": COLLAPSE, "early": EARLY})
    if record.rise is not None:
        step, low, lr = record.rise
        return Finding(
            "one-cycle", "info", "The learning rate rises again after it fell",
            f"After falling to {low:.3g} (from {record.lr_max:.3g}) the LR rose to {lr:.3g} at step {step}: the "
            "schedule restarts. Right for warm restarts (CosineAnnealingWarmRestarts, cyclical schedules); a "
            "cosine schedule whose period is shorter than the run does it by mistake.",
            None, {"step": step, "lr_low": low, "lr": lr, "lr_max": record.lr_max, "rise": RISE})
    return None


def _no_gradient(watch: Any) -> Finding | None:
    names = sorted(watch.no_gradient)
    if not names or not watch.optimizer_steps:
        return None
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return Finding(
        "update-ratio", "warn", f"No gradient reaches {len(names)} parameter(s)",
        f"At optimizer.step() on sampled steps these parameters had no gradient (None): {shown}. They are not "
        "connected to the loss: a detach() or torch.no_grad() in forward, an output that is not used, or a part "
        "meant to be frozen that is still given to the optimizer.",
        "Remove the detach()/no_grad() on the path to the loss, or freeze them on purpose (requires_grad_(False)) "
        "and leave them out of the optimizer.", {"cause": "no-gradient", "parameters": names})


def _total_norms(samples: list) -> tuple[list[int], np.ndarray]:
    steps, norms = [], []
    for s in samples:
        values = [s.gradient(p, "norm") for p in s.gradients]
        if values and all(math.isfinite(v) for v in values):
            steps.append(s.step)
            norms.append(math.sqrt(sum(v * v for v in values)))
    return steps, np.asarray(norms)


def _clipping(samples: list) -> Finding | None:
    steps, norms = _total_norms(samples)
    if len(norms) < MIN_SAMPLES or not np.median(norms) > 0:
        return None
    median = float(np.median(norms))
    same = np.abs(norms / median - 1) <= CLIPPED_SAME
    share = float(same.mean())
    if share < CLIPPED_SHARE:
        return None
    return Finding(
        "activation-gradient-stats", "warn", "Gradient clipping sets every update",
        f"On {int(same.sum())} of {len(norms)} sampled steps ({share:.0%}) the total gradient norm at "
        f"optimizer.step() was {median:.4g} to within {CLIPPED_SAME:.1%}: clipping scaled the gradient to its "
        "max_norm on those steps, so the clip, not the gradient, decides how far each step goes (the LR is "
        "effectively max_norm x LR, and the gradient's size carries no information).",
        "Raise max_norm above the gradient norm of most steps (log clip_grad_norm_'s return value: it is the norm "
        "before clipping) so that clipping catches only the spikes, or lower the LR if the norms are that large "
        "because training is unstable.",
        {"cause": "clipping-dominates", "norm": median, "share": share, "samples": len(norms),
         "same": CLIPPED_SAME, "limit": CLIPPED_SHARE})


def _growing(samples: list) -> Finding | None:
    """Total gradient norms that grow GROWTH times, steadily, while the logged loss does not fall. Gradients
    alone would mislead: a deep network's first layers start with tiny gradients that grow 16 to 21 times in
    healthy runs (tests/monitor/watch_zoo.py) while its loss falls."""
    from dltips.monitor.curves import spearman

    steps, norms = _total_norms(samples)
    logged = [s.scalars["loss"] for s in samples if s.step in set(steps) and math.isfinite(s.scalars.get("loss", math.nan))]
    losses = logged[:1] + logged[-1:]  # the loss is logged after its step: the first sample may have none
    if len(norms) < MIN_SAMPLES or not norms[0] > 0 or len(logged) < 2:
        return None
    growth, rank = float(norms[-1] / norms[0]), spearman(steps, norms)
    if growth < GROWTH or rank < GROWTH_RANK or losses[-1] < losses[0]:
        return None
    first = next(iter(samples[0].gradients))
    return Finding(
        "activation-gradient-stats", "warn", "Gradient norms keep growing while the loss does not fall",
        f"The total gradient norm grew {growth:.3g} times over {len(norms)} sampled steps (from {norms[0]:.3g} at "
        f"step {steps[0]} to {norms[-1]:.3g} at step {steps[-1]}, Spearman {rank:.2f} with the step), and the "
        f"logged loss went from {losses[0]:.3g} to {losses[-1]:.3g}: training is on its way to diverge (first "
        f"layer: {first}).",
        "Lower the learning rate (or add warm-up), check that zero_grad() runs every step, and clip the gradient "
        "norm at about its early value.",
        {"cause": "growing-gradients", "parameter": first, "growth": growth, "spearman": rank,
         "loss": [losses[0], losses[-1]], "limits": {"growth": GROWTH, "spearman": GROWTH_RANK}})
