"""Differential diagnosis: when a fundamental check fails, probe for the cause and name it.

"Cannot overfit 2 items" is a symptom. When initialization, overfit-tiny, overfit-then-regularize or
error-gaps warns or fails, the doctor runs cause probes on the untrained model and one training batch:

- `dltips.monitor.probe`: dead layers, saturated layers, a hidden softmax, vanishing gradients
  (activation-gradient-stats); parameters no gradient reaches or the optimizer does not hold
  (update-ratio);
- `dltips.training.output`: a final activation whose range cannot reach the targets or give the loss
  what it expects (initialization);
- `dltips.data.integrity` and `dltips.data.leakage`, run on the data before any training: an index
  whose label or input changes from read to read, a feature that gives the label away, items shared
  between splits; `dltips.nlp.causal`: a language model whose outputs read the tokens they predict;
- `dltips.training.reduction`: a loss summed over the batch stepped by SGD, whose LR is then the
  batch size times what a mean would take (batch-size-lr-scaling);
- `labels_unrelated`, read off the error gaps: a model that fits small batches but whose validation
  error is no better than the baseline's has labels that say nothing about the inputs;
- `regularisation_underfits`: a model that fits its training data with dropout and weight decay off
  (the capacity check) but not with them on (the short run) is held back by its regularisation.

Each probe's problem is reported twice: as a finding of its own tip (so activation-gradient-stats
fails for an all-dead layer even though overfit-tiny failed first and the watched run never ran), and,
ranked, inside each failing fundamental finding as its "most likely cause", numbers included.

A bug in the user's own training step (`Task.step`) that the watch on the failing rung of the overfit
ladder names (dltips.monitor.loop: a zero_grad missing or misplaced, training in eval mode, ...) is a
cause too.

Ranking: a fail before a warn, then CAUSE_ORDER: a fault in the data comes first (no model can learn
pairs that change from read to read), then a bug of the training loop, then a structural fault that explains the others (an output
layer that cannot reach the targets, a layer entirely dead: both also leave parameters without gradient)
comes first, then faults that stop some parameters learning, then those that slow learning.
"""

from __future__ import annotations

import math
import re

from torch import nn

from dltips.findings import Finding
from dltips.monitor.loop import LOOP_CAUSES
from dltips.task import Task

__all__ = ["CHECK_CAUSES", "FUNDAMENTAL", "attach_causes", "labels_unrelated", "one_voice_on_lr", "rank_causes",
           "regularisation_underfits"]

FUNDAMENTAL = ("initialization", "overfit-tiny", "overfit-then-regularize", "error-gaps")
FLAGS = ("warn", "fail")
CHECK_CAUSES = ("unstable-pairing", "target-leak", "causal-leak", "split-overlap")  # named by checks the doctor runs
CAUSE_ORDER = ("unstable-pairing", "target-leak", "causal-leak", "split-overlap", *LOOP_CAUSES, "output-layer",
               "sum-reduction", "dead-layer", "hidden-softmax",
               "not-optimized", "no-gradient", "vanishing", "labels-unrelated", "regularisation", "frozen", "dead-units",
               "saturated")
# labels_unrelated: the validation error within this many standard errors of the baseline's (or above it)
CHANCE_SE = 2.0
# regularisation_underfits: the short run's training error (dropout and weight decay on) above the capacity
# check's (both off) by this much. Measured on the 15 healthy classification and binary tasks and the
# usual-dropout look-alike: at most +0.2 points; dropout 0.9: +66 points, AdamW weight decay 10: +17.
REG_GAP = 0.05


def rank_causes(causes: list[Finding]) -> list[Finding]:
    """Fails first, then by CAUSE_ORDER."""
    def key(f: Finding) -> tuple[int, int]:
        name = f.evidence.get("cause")
        return (0 if f.status == "fail" else 1, CAUSE_ORDER.index(name) if name in CAUSE_ORDER else len(CAUSE_ORDER))
    return sorted((f for f in causes if f.status in FLAGS and f.evidence.get("cause")), key=key)


def attach_causes(findings: list[Finding], causes: list[Finding]) -> None:
    """Name the ranked `causes` inside every warn/fail fundamental finding: evidence "causes", the top one in
    the message ("Most likely cause: ...") and its fix first."""
    ranked = rank_causes(causes)
    if not ranked:
        return
    for f in findings:
        if f.tip not in FUNDAMENTAL or f.status not in FLAGS or f.evidence.get("causes") or "cause" in f.evidence:
            continue
        f.evidence["causes"] = [{"cause": c.evidence["cause"], "tip": c.tip, "status": c.status, "title": c.title,
                                 "message": c.message} for c in ranked]
        top = ranked[0]
        others = "; ".join(f"{c.title.lower()} ({c.tip})" for c in ranked[1:])
        told = top.message in f.message  # the check quoted it already (the overfit ladder quotes its monitors)
        f.message += (f" Most likely cause ({top.tip}): {top.title}." + ("" if told else f" {top.message}")
                      + (f" Also seen: {others}." if others else ""))
        if top.fix and top.fix not in (f.fix or ""):
            f.fix = " ".join(part for part in (top.fix, f.fix) if part)


def labels_unrelated(gaps: Finding | None, ladder_passed: bool) -> Finding | None:
    """A cause for error-gaps and capacity: the model fits small batches, yet its validation error is no better
    than always predicting the most frequent class (within CHANCE_SE standard errors). Classification and
    binary tasks only: a language model's baseline is not a chance level its inputs could beat."""
    if gaps is None or not ladder_passed or gaps.evidence.get("kind") not in ("classification", "binary"):
        return None
    errors, se = gaps.evidence.get("errors", {}), gaps.evidence.get("standard_errors", {})
    valid, baseline = errors.get("valid"), errors.get("baseline")
    if valid is None or baseline is None or baseline <= 0:
        return None
    spread = se.get("valid") or math.sqrt(max(valid * (1 - valid), 1e-12) / 100)
    if valid < baseline - CHANCE_SE * spread:
        return None
    train = errors.get("train")
    fitted = f"training error {train:.1%}, " if train is not None else ""
    return Finding(
        "error-gaps", "fail", "Labels may be shuffled relative to the inputs",
        f"The model fits a few items (overfit-tiny passed) but its validation error, {valid:.1%} ({fitted}"
        f"baseline {baseline:.1%}), is no better than always predicting the most frequent class: the labels carry "
        "no information the inputs can predict. Labels shuffled relative to their inputs (a sort, a join or a "
        "shuffle applied to one of them), or inputs that do not hold what the label depends on.",
        "Print a few inputs beside their labels and check them by hand; check that inputs and labels are "
        "shuffled, filtered and joined together. More capacity or longer training will not help.",
        {"cause": "labels-unrelated", "valid_error": valid, "baseline_error": baseline, "train_error": train,
         "standard_error": spread, "chance_se": CHANCE_SE})


def regularisation_underfits(task: Task, gaps: Finding | None, capacity: Finding | None) -> Finding | None:
    """overfit-then-regularize's own cause: the training error with the Task's dropout and weight decay (the
    short run, read by error-gaps) exceeds the training error without them (the capacity check) by REG_GAP."""
    if gaps is None or capacity is None or gaps.evidence.get("kind") not in ("classification", "binary"):
        return None
    with_reg, without = gaps.evidence.get("errors", {}).get("train"), capacity.evidence.get("train_error")
    if with_reg is None or without is None or with_reg - without < REG_GAP:
        return None
    from dltips.training.lr import make_optimizer

    dropout = {name: m.p for name, m in task.model.named_modules()
               if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0}
    groups = make_optimizer(task, task.model).param_groups  # built only to read its settings
    decay = sorted({(float(g.get("weight_decay") or 0.0), float(g["lr"])) for g in groups if g.get("weight_decay")})
    if not dropout and not decay:
        return None
    held = []
    if dropout:
        held.append("dropout " + ", ".join(f"p={p:g} ({name})" for name, p in dropout.items()))
    if decay:
        held.append("weight decay " + ", ".join(f"{wd:g} at lr {lr:g}" for wd, lr in decay))
    return Finding(
        "overfit-then-regularize", "warn", "Regularisation keeps the model from fitting its training data",
        f"Without dropout and weight decay the model reaches a training error of {without:.1%} (the capacity "
        f"check); with the Task's {' and '.join(held)} the short run ends at {with_reg:.1%}, "
        f"{(with_reg - without) * 100:.0f} points higher. The regularisation costs more fit than it can give back: "
        "first reach a low training error, then add regularisation a step at a time.",
        "Lower the regularisation named (dropout 0.1 to 0.5, AdamW weight decay about 0.01 to 0.1) until the "
        "training error is low, then raise it while the validation error falls.",
        {"cause": "regularisation", "train_error_with": with_reg, "train_error_without": without, "gap": with_reg - without,
         "reg_gap": REG_GAP, "dropout": dropout, "weight_decay": [list(d) for d in decay],
         "capacity": capacity.evidence})


def one_voice_on_lr(findings: list[Finding]) -> None:
    """Make the findings that give learning-rate advice agree with the range test (default-lr).

    A range test that puts the Task's LR in range says the LR is not the first suspect, so the advice to lower
    it elsewhere gets that said; a range test that finds it too high or too low is quoted in the training
    findings that warn or fail.
    """
    summed = next((f for f in findings if f.evidence.get("cause") == "sum-reduction"), None)
    if summed is not None:
        for f in findings:
            if f.status in FLAGS and f is not summed and re.search(r"\(LR x[0-9.]+\)|raise the (LR|learning rate)",
                                                                    f"{f.message} {f.fix or ''}"):
                f.message += (" The loss sums over the batch (batch-size-lr-scaling), so the step is already the batch "
                              "size times a mean's: lower the learning rate, do not raise it.")
    lr = next((f for f in findings if f.tip == "default-lr" and f.evidence.get("conclusive")), None)
    if lr is None or not lr.evidence.get("comparable", True):
        return
    ratio = lr.evidence.get("ratio_to_min")
    limits = lr.evidence.get("limits", {})
    for f in findings:
        if f is lr or f.status not in FLAGS or f.tip not in ("overfit-tiny", "activation-gradient-stats",
                                                            "update-ratio", "overfit-then-regularize"):
            continue
        if lr.status == "pass" and _advises_lr(f):
            f.message += (" The range test (default-lr) puts the Task's learning rate in range, so the learning rate "
                          "is not the first suspect here.")
            f.evidence["lr_verdict"] = "in range"
        elif lr.status == "warn" and ratio is not None:
            side = "high" if ratio > limits.get("max_ratio", math.inf) else "low"
            f.message += f" The range test (default-lr) finds the Task's learning rate too {side}: {lr.title}."
            f.evidence["lr_verdict"] = f"too {side}"


def _advises_lr(finding: Finding) -> bool:
    text = f"{finding.message} {finding.fix or ''}".lower()
    return "lower the lr" in text or "learning rate: lower" in text or "learning rate is far too" in text
