"""The worst predictions: training examples ranked by their loss after training.

The examples a trained model gets most wrong, and those it is most unsure
about, expose wrong labels and preprocessing bugs faster than any aggregate
metric. The ranking runs over the training set (or an evenly spaced subset),
in chunks, keeping a few numbers per item; inputs are fetched again only for
the items shown in the figure.

What is listed, besides the ranking by loss:

    kind               confident mistakes                      least confident
    classification     label probability <= 0.1                smallest top-2 probability margin
    binary             false_negatives: y=1 with p <= 0.1      p nearest 0.5
                       false_positives: y=0 with p >= 0.9
    multilabel         some label with |y - p| >= 0.9          some label with p nearest 0.5
    regression         (largest squared errors come first)     -
    language model     sequences ranked by mean token loss     -

Calibration: sklearn's digits (1078 training images, 8x8 scaled to [0, 1]),
a small CNN fitted for 10 epochs with `dltips.fit`, the check run on all
training items (0.1 s):

    labels                               misclassified  confident mistakes  flipped among the 100 worst
    clean                                0              0                   -
    107 (10%) flipped to another class   113            91, all flipped     99
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dltips.core.checks import check_args, task_first
from dltips.core.deadline import Deadline
from dltips.core.device import model_on_device, resolve_device
from dltips.core.params import instance, positive_int
from dltips.findings import Finding, skipped_for_time
from dltips.predict import evenly_spaced, predict
from dltips.task import IGNORE_INDEX, Task

TIP = "worst-predictions"
CONFIDENT = 0.9  # a mistake is confident when the label gets probability <= 1 - CONFIDENT
FIGURE_ITEMS = 16  # items drawn in the figure
MESSAGE_ITEMS = 5  # items named in the message
TOKENS_SHOWN = 32  # tokens kept per sequence in the evidence
FEATURES_SHOWN = 6  # feature columns in the table of a tabular task


@dataclass
class Ranked:
    """Per-item numbers of the ranked items, worst first (positions are indices into task.train)."""

    indices: list[int]
    losses: list[float]
    predictions: list[Any]
    targets: list[Any]
    extra: dict[str, list]  # kind-specific lists (index lists, probabilities)
    counts: dict[str, int]


@task_first
def check_worst_predictions(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
    top: int = 50,
) -> list[Finding]:
    """Rank training items by loss; list the worst, the confident mistakes and the least confident.

    `model` is the trained model (default `task.model`); it runs in eval mode on `device` (default:
    where it is; a copy runs when `device` is elsewhere). `max_items` limits the ranking to that many
    evenly spaced training items (default: all): that is its plan, never shortened by the clock. When
    `deadline` passes, or the rate so far says it will, before every planned item is scored, the check
    returns a `skip` with the time still needed (`skipped_for_time`), not a ranking of part of the
    items. It draws no random numbers: `seed` is accepted for the common check signature. The old form
    `check_worst_predictions(model, task, ...)` still works for one release, with a DeprecationWarning.
    Evidence: "split", "indices" (positions in task.train, worst first),
    "losses", "predictions", "targets", and per kind "confident_mistakes",
    "false_negatives" / "false_positives" (binary), "least_confident".
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    top = positive_int("top", top)
    model = task.model if model is None else instance("model", model, nn.Module, "an nn.Module or None")
    device = resolve_device(device, model)
    model = model_on_device(model, device)
    positions = evenly_spaced(len(task.train), max_items)
    try:
        scores = _score(model, task, positions, device, deadline)
    except _OutOfTime as cut:
        return [skipped_for_time(TIP, cut.needs_s, f"scored {cut.scored} of the {len(positions)} training items "
                                                    f"planned in {cut.seconds:.1f} s",
                                 {"n_planned": len(positions), "n_scored": cut.scored, "n_train": len(task.train),
                                  "seconds": round(cut.seconds, 3)})]
    ranked = _rank(task, model, scores, top, device)

    evidence = {
        "split": "train",
        "n_ranked": len(positions),
        "n_train": len(task.train),
        "indices": ranked.indices,
        "losses": ranked.losses,
        "predictions": ranked.predictions,
        "targets": ranked.targets,
        **ranked.extra,
        "counts": ranked.counts,
        "confidence": CONFIDENT,
    }
    title, message = _summary(task.kind, ranked, len(positions))
    fix = _fix(ranked.counts)
    figures = [_figure(task, ranked)]
    return [Finding(TIP, "info", title, message, fix, evidence, figures)]


# ---------------------------------------------------------------- pass 1: a few numbers per item


class _OutOfTime(Exception):
    """Scoring stopped before the planned items: `scored` done in `seconds`, about `needs_s` more needed."""

    def __init__(self, scored: int, seconds: float, needs_s: float) -> None:
        super().__init__(f"scored {scored} items in {seconds:.1f} s; needs {needs_s:.1f} s more")
        self.scored, self.seconds, self.needs_s = scored, seconds, needs_s


def _score(model: nn.Module, task: Task, positions: list[int], device,
           deadline: Deadline | None = None) -> dict[str, torch.Tensor]:
    """Per-item losses and the kind's summary numbers, computed chunk by chunk (outputs are not kept).

    After each chunk the rate so far projects the time the other items need; when that is more than
    `deadline` leaves (always so once it has passed), `_OutOfTime` says how much more is needed.
    """
    chunk = task.batch_size * (1 if task.kind == "language-model" else 16)
    parts: list[dict[str, torch.Tensor]] = []
    started = time.perf_counter()
    for start in range(0, len(positions), chunk):
        p = predict(model, task, task.train, indices=positions[start:start + chunk], device=device)
        parts.append({"index": p.indices, "loss": p.losses, **_item_numbers(task.kind, p.outputs, p.targets)})
        scored = min(start + chunk, len(positions))
        if deadline is not None and scored < len(positions):
            seconds = time.perf_counter() - started
            needs = seconds / scored * (len(positions) - scored)
            left = deadline.left()
            if needs > left:
                raise _OutOfTime(scored, seconds, needs - left)
    return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}


def _dense(kind: str, outputs: torch.Tensor) -> bool:
    """Outputs with one prediction per position (tokens, pixels): summarised by accuracy."""
    return kind == "language-model" or (kind == "classification" and outputs.dim() > 2)


def _item_numbers(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    n = len(outputs)
    if _dense(kind, outputs):
        logits = outputs if kind == "language-model" else outputs.movedim(1, -1)
        counted = targets != IGNORE_INDEX
        right = (logits.argmax(-1) == targets) & counted
        acc = right.flatten(1).sum(1).double() / counted.flatten(1).sum(1).clamp(min=1).double()
        return {"accuracy": acc}
    if kind == "classification":
        probs = outputs.double().softmax(1)
        top2 = probs.topk(min(2, probs.shape[1]), dim=1).values
        margin = top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0)
        return {"pred": probs.argmax(1), "p_pred": top2[:, 0], "target": targets.reshape(n),
                "p_true": probs.gather(1, targets.reshape(n, 1).long()).squeeze(1), "margin": margin}
    if kind == "binary":
        return {"p": outputs.double().reshape(n).sigmoid(), "target": targets.double().reshape(n)}
    if kind == "multilabel":
        probs, y = outputs.double().sigmoid(), targets.double()
        return {"probs": probs, "target": y, "worst_gap": (y - probs).abs().max(1).values,
                "closest": (probs - 0.5).abs().min(1).values}
    return {"pred": outputs.double().reshape(targets.shape), "target": targets.double()}  # regression


# ---------------------------------------------------------------- pass 2: rank and describe


def _rank(task: Task, model: nn.Module, s: dict[str, torch.Tensor], top: int, device) -> Ranked:
    order = torch.argsort(-s["loss"], stable=True)
    worst = order[:top]
    idx = s["index"]
    kind = task.kind
    extra: dict[str, list] = {}
    counts: dict[str, int] = {}

    def pick(mask: torch.Tensor, key: torch.Tensor) -> list[int]:
        """Positions in task.train of the items in `mask`, sorted by `key` ascending, at most `top`."""
        chosen = torch.nonzero(mask).flatten()
        chosen = chosen[torch.argsort(key[chosen], stable=True)]
        return idx[chosen[:top]].tolist()

    if "accuracy" in s:  # language model or dense classification
        shown = idx[worst].tolist()
        p = predict(model, task, task.train, indices=shown, device=device) if shown else None
        predictions, targets = _dense_tokens(kind, p)
        extra["accuracies"] = s["accuracy"][worst].tolist()
    elif kind == "classification":
        predictions, targets = s["pred"][worst].tolist(), s["target"][worst].tolist()
        extra["probabilities"] = s["p_pred"][worst].tolist()
        extra["label_probabilities"] = s["p_true"][worst].tolist()
        confident = (s["pred"] != s["target"]) & (s["p_true"] <= 1 - CONFIDENT)
        extra["confident_mistakes"] = pick(confident, -s["loss"])
        extra["least_confident"] = pick(torch.ones_like(confident), s["margin"])
        counts = {"wrong": int((s["pred"] != s["target"]).sum()), "confident_mistakes": int(confident.sum())}
    elif kind == "binary":
        p, y = s["p"], s["target"]
        predictions, targets = p[worst].tolist(), y[worst].long().tolist()
        fn, fp = (y > 0.5) & (p <= 1 - CONFIDENT), (y < 0.5) & (p >= CONFIDENT)
        extra["false_negatives"] = pick(fn, p)
        extra["false_positives"] = pick(fp, -p)
        extra["confident_mistakes"] = pick(fn | fp, -s["loss"])
        extra["least_confident"] = pick(torch.ones_like(fn), (p - 0.5).abs())
        counts = {"wrong": int(((p > 0.5) != (y > 0.5)).sum()), "false_negatives": int(fn.sum()),
                  "false_positives": int(fp.sum()), "confident_mistakes": int((fn | fp).sum())}
    elif kind == "multilabel":
        probs, y = s["probs"][worst], s["target"][worst]
        predictions = [torch.nonzero(row > 0.5).flatten().tolist() for row in probs]
        targets = [torch.nonzero(row > 0.5).flatten().tolist() for row in y]
        extra["probabilities"] = probs.tolist()
        confident = s["worst_gap"] >= CONFIDENT
        extra["confident_mistakes"] = pick(confident, -s["loss"])
        extra["least_confident"] = pick(torch.ones_like(confident), s["closest"])
        wrong = ((s["probs"] > 0.5) != (s["target"] > 0.5)).any(1)
        counts = {"wrong": int(wrong.sum()), "confident_mistakes": int(confident.sum())}
    else:  # regression
        predictions, targets = s["pred"][worst].tolist(), s["target"][worst].tolist()
    return Ranked(idx[worst].tolist(), s["loss"][worst].tolist(), predictions, targets, extra, counts)


def _dense_tokens(kind: str, p) -> tuple[list, list]:
    """Predicted and target ids of the shown sequences (first TOKENS_SHOWN positions)."""
    if p is None:
        return [], []
    logits = p.outputs if kind == "language-model" else p.outputs.movedim(1, -1)
    pred = logits.argmax(-1).flatten(1)[:, :TOKENS_SHOWN]
    return pred.tolist(), p.targets.flatten(1)[:, :TOKENS_SHOWN].tolist()


def _summary(kind: str, r: Ranked, n: int) -> tuple[str, str]:
    named = ", ".join(_describe_item(kind, r, i) for i in range(min(MESSAGE_ITEMS, len(r.indices))))
    c = r.counts
    if kind == "classification" and "confident_mistakes" in r.extra:
        title = f"{_count(c['confident_mistakes'], n)} ({c['wrong']} misclassified)"
        head = (f"{c['wrong']} of {n} training examples are misclassified; {c['confident_mistakes']} of them "
                f"give their label at most {1 - CONFIDENT:.0%} probability.")
    elif kind == "binary":
        title = (f"{_count(c['confident_mistakes'], n)} ({c['false_positives']} false positives, "
                 f"{c['false_negatives']} false negatives)")
        head = (f"{c['wrong']} of {n} training examples are on the wrong side of 0.5: {c['false_positives']} "
                f"negatives score >= {CONFIDENT} and {c['false_negatives']} positives <= {1 - CONFIDENT:.1f}.")
    elif kind == "multilabel":
        title = f"{c['confident_mistakes']} of {n} training examples have a label confidently wrong"
        head = (f"{c['confident_mistakes']} of {n} training examples have a label predicted wrong with "
                f">= {CONFIDENT:.0%} confidence.")
    elif kind == "regression":
        title = f"The {len(r.indices)} training examples with the largest errors"
        head = f"Ranked {n} training examples by squared error."
    else:
        title = f"The {len(r.indices)} training examples with the highest mean loss"
        head = f"Ranked {n} training examples by their mean loss per position."
    least = r.extra.get("least_confident")
    tail = f" The least confident: {', '.join(f'#{i}' for i in least[:MESSAGE_ITEMS])}." if least else ""
    message = f"{head} The {min(MESSAGE_ITEMS, len(r.indices))} worst: {named}.{tail} {_look_for(c)}"
    return title, message


def _look_for(counts: dict[str, int]) -> str:
    """What the listed items may show, from the mistake counts: wrong labels only where some mistake is confident."""
    if not counts:
        return "Look at them for wrong targets, corrupted or mis-processed inputs, and rare cases."
    if counts["confident_mistakes"]:
        return "Look at them for wrong labels, corrupted or mis-processed inputs, and rare cases."
    if counts["wrong"]:
        return ("No mistake is confident, so none points at a wrong label; look at the mistakes for ambiguous or "
                "mis-processed inputs and rare cases.")
    return "The model gets every ranked item right: the list shows its least certain fits, not mistakes."


def _fix(counts: dict[str, int]) -> str | None:
    """The advice the counts support: relabelling only with confident mistakes, nothing with no mistake at all."""
    if not counts:
        return ("Look at these items: check their targets, fix the preprocessing step that produced odd inputs, "
                "and collect more examples like the ones the model finds hard.")
    if counts["confident_mistakes"]:
        return (f"Look at the {counts['confident_mistakes']} confident mistakes first: relabel or drop the wrong "
                "labels among them, fix the preprocessing step that produced odd inputs, and collect more examples "
                "like the ones the model finds hard.")
    if counts["wrong"]:
        return ("Look at the misclassified items for ambiguous or mis-processed inputs, and collect more examples "
                "like the ones the model finds hard.")
    return None


def _count(confident: int, n: int) -> str:
    if confident == 0:
        return f"No confident mistakes among {n} training examples"
    return f"{confident} of {n} training examples are confident mistakes"


def _describe_item(kind: str, r: Ranked, i: int) -> str:
    idx, loss, pred, y = r.indices[i], r.losses[i], r.predictions[i], r.targets[i]
    if kind == "classification" and "probabilities" in r.extra:
        return f"#{idx} (label {y}, predicted {pred} with p={r.extra['probabilities'][i]:.2f})"
    if kind == "binary":
        return f"#{idx} (label {y}, p={pred:.3f})"
    if kind == "regression":
        return f"#{idx} (target {_short(y)}, predicted {_short(pred)})"
    if kind == "multilabel":
        return f"#{idx} (labels {y}, predicted {pred})"
    return f"#{idx} (loss {loss:.3g}, accuracy {r.extra['accuracies'][i]:.0%})"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value[:4]) + (", ...]" if len(value) > 4 else "]")
    return str(value)


# ---------------------------------------------------------------- figure: images or a table


def _figure_title(r: Ranked) -> str:
    """What the figure shows: mistakes first, or, when the model gets every item right, its least certain fits."""
    wrong = r.counts.get("wrong")
    if wrong == 0:
        return "Highest-loss training items: every one predicted right (the least certain fits, not mistakes)"
    if wrong is not None:
        return f"Highest-loss training items ({wrong} misclassified in all; each marked right or wrong)"
    return "Worst training predictions (highest loss first)"


def _figure(task: Task, r: Ranked) -> dict:
    shown = list(range(min(FIGURE_ITEMS, len(r.indices))))
    inputs = [task.train[r.indices[i]][0] for i in shown]  # fetched only for the shown items
    if inputs and all(is_image(x) for x in inputs):
        captions = [f"#{r.indices[i]} y={_short(r.targets[i])} p={_caption_pred(task.kind, r, i)}{_verdict(task.kind, r, i)}"
                    for i in shown]
        return {"kind": "images", "title": _figure_title(r),
                "images": [display_image(x) for x in inputs], "captions": captions}
    columns = ["index", "target", "prediction", "loss"]
    rows = [[r.indices[i], _short(r.targets[i]), _short(r.predictions[i]), round(r.losses[i], 4)] for i in shown]
    describe = getattr(task.train, "describe", None)
    if callable(describe) and shown:  # a dataset that can show its rows as a person reads them (e.g. TabularDataset)
        described = [describe(r.indices[i]) for i in shown]
        keys = list(described[0])[:FEATURES_SHOWN]
        return {"kind": "table", "title": _figure_title(r), "columns": columns + keys,
                "rows": [row + [_short(d.get(k)) for k in keys] for row, d in zip(rows, described, strict=True)]}
    if inputs and all(isinstance(x, torch.Tensor) and x.dim() == 1 and x.is_floating_point() for x in inputs):
        k = min(FEATURES_SHOWN, len(inputs[0]))
        columns += [f"x[{j}]" for j in range(k)]
        rows = [row + [round(float(v), 4) for v in x[:k]] for row, x in zip(rows, inputs, strict=True)]
    elif inputs and all(isinstance(x, torch.Tensor) and not x.is_floating_point() for x in inputs):
        columns.append("input (first tokens)")
        rows = [row + [_short(x.flatten()[:8].tolist())] for row, x in zip(rows, inputs, strict=True)]
    return {"kind": "table", "title": _figure_title(r), "columns": columns, "rows": rows}


def _caption_pred(kind: str, r: Ranked, i: int) -> str:
    if kind == "classification" and "probabilities" in r.extra:
        return f"{r.predictions[i]} ({_probability(r.extra['probabilities'][i])})"
    return _short(r.predictions[i])


def _probability(p: float) -> str:
    """A probability in two decimals, with more near 0 and 1, where two would say 0.00 or 1.00."""
    if p < 0.01:
        return f"{p:.2g}"
    if p <= 0.99:
        return f"{p:.2f}"
    return f"{p:.4f}" if p < 0.9999 else ">0.9999"


def _verdict(kind: str, r: Ranked, i: int) -> str:
    """", right" or ", wrong" after a classification or binary caption; nothing for other kinds."""
    if kind == "classification" and "probabilities" in r.extra:
        return ", right" if r.predictions[i] == r.targets[i] else ", wrong"
    if kind == "binary":
        return ", right" if (r.predictions[i] > 0.5) == (r.targets[i] > 0.5) else ", wrong"
    return ""


def is_image(x: Any) -> bool:
    """A float (C, H, W) tensor with 1, 3 or 4 channels, or a float (H, W) one of at least 4 x 4."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return False
    if x.dim() == 3:
        return x.shape[0] in (1, 3, 4) and min(x.shape[1:]) >= 4
    return x.dim() == 2 and min(x.shape) >= 4


def display_image(x: torch.Tensor) -> np.ndarray:
    """The image scaled to [0, 1] for display (standardised inputs are not drawable as they are)."""
    x = x.detach().float().cpu()
    x = x[0] if x.dim() == 3 and x.shape[0] == 1 else x
    low, high = x.min(), x.max()
    x = (x - low) / (high - low) if high > low else torch.zeros_like(x)
    return x.numpy()
