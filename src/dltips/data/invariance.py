"""Label-safe augmentation: does a transform keep the label, and which invariances does it assert?

Every augmentation asserts "the label does not change under this". A trained
model is a cheap witness of the labels: `check_label_preserving` runs it on
validation items and on transformed copies of the same items, and measures how
often its predicted class changes and how far its accuracy drops. A transform
that turns a 6 into a 9 (a 180-degree rotation) or mirrors text makes the model
"wrong" on the copies, because the copies' true labels have changed.
`describe_invariances` says in plain words what an augmentation asserts.

A model that never saw a transform in training can be somewhat sensitive to it
even when it keeps the label, so the verdict asks for a drop that is large both
in absolute terms and in standard errors. The doctor passes the model of its
short run, trained with the Task's augmentation, which is invariant to what it
was taught.

Randomness: the global RNG is seeded with `seed` before each transform and its
state (CPU, and CUDA on the model's device) is restored afterwards; a
`torch.Generator` stored as the `generator` attribute of the transform (or of
one of its submodules, as in `AffineAugment` and `Lighting`) is seeded the same
way and its state restored. Transforms that are `nn.Module`s run in training
mode (augmentation is a training-time step; `AffineAugment` only resizes in
eval mode) and get their modes back afterwards.

Bad inputs: a `transforms` that is not a dict of callables raises ParamError (a TypeError).
A transform that returns something that is not a batch of the same number of
items, or whose output the model cannot take, gives a `skip` finding naming
it (the other transforms are still checked). Errors raised by the transform
itself propagate.

Calibration: sklearn's digits (`dltips.demos.digits.digits_task()`, 300
validation images), the small CNN fitted for 8 epochs with `dltips.fit` and an
augmentation of shifts only (`AffineAugment`, max_translate=0.15, as the doctor
checks a model trained with the Task's augmentation), 98.3% validation
accuracy; accuracy drop (standard error) and rate of changed predictions:

    transform                                           drop           changed   z     verdict
    identity                                            0.0% (0.0)     0.0%      0     pass
    Gaussian noise, std 0.05 (inputs have std 1)        0.3% (0.3)     0.3%      1.0   pass
    AffineAugment, translations up to 5%                0.0% (0.5)     0.7%      0     pass
    roll right by 1 pixel                               1.0% (0.7)     1.7%      1.3   pass
    AffineAugment, rotate 10, zoom 1-1.1, shift 10%     2.7% (0.9)     3.0%      2.9   pass
    roll down by 1 pixel (bottom row wraps to the top)  13.3% (2.1)    15.7%     6.3   warn
    AffineAugment, mirror with probability 0.5          31.3% (2.7)    32.0%     11.5  warn
    180-degree rotation                                 52.3% (3.0)    54.0%     17.7  warn
    horizontal flip                                     65.7% (2.8)    68.0%     23.2  warn

Healthy transforms drop at most 2.7% (z 2.9), label-changing ones at least
31% (z 11.5); MIN_DROP = 10% sits between them, and MIN_Z = 4 keeps a large
drop measured on a handful of items from being called certain. Changed
predictions: healthy at most 3.0%, label-changing at least 15.7%. In the
doctor, with the model trained WITH the transform: shifts change 2.0% of the
predictions (accuracy 99.0% -> 97.0%), rotations up to 180 degrees change
20.7% while the accuracy barely moves (84.7% -> 84.3%: the model is equally
unsure of 6 and 9 either way), so MIN_FLIP = 10% also catches what the drop
cannot. Mirroring digits, learnt in training, changes only 4.0% (98.7% ->
96.0%): a mirrored digit is not another digit, and it passes. A model
trained without the shifts is less forgiving (a 1-pixel horizontal roll then
drops 17%): check the model trained with the augmentation under test.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import Subset

from dltips.core.checks import check_args, positional_options, task_first
from dltips.core.deadline import Deadline
from dltips.core.device import model_on_device, resolve_device, to_device
from dltips.core.params import ParamError, instance
from dltips.data.augment import AffineAugment, Lighting
from dltips.data.worst import display_image, is_image
from dltips.findings import Finding
from dltips.predict import evenly_spaced
from dltips.task import Task

TIP = "label-preserving-augmentation"
TIP_INVARIANCES = "augmentation-invariances"
KINDS = ("classification", "binary")
MIN_DROP = 0.10  # flag: accuracy drop on transformed copies of at least this (absolute) ...
MIN_Z = 4.0  # ... and at least this many standard errors
MIN_FLIP = 0.10  # or: predictions changed on at least this share of the items (and MIN_Z standard errors)
TOP_CONFUSIONS = 10  # rows of the confusion table
FIGURE_PAIRS = 8  # original/transformed pairs in the images figure
MAX_ITEMS = 1000  # validation items read by default


@dataclass
class Outcome:
    """Per-item results of one transform: positions in task.valid, targets, predictions before and after."""

    indices: torch.Tensor
    targets: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor
    shown: list[tuple[torch.Tensor, torch.Tensor]]  # (original, transformed) inputs of the first items


class _Incompatible(Exception):
    """The transform's output cannot be compared with the original batch (the message says why)."""


# ----------------------------------------------------------------------------- the check


@task_first
@positional_options("transforms")
def check_label_preserving(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
    transforms: dict[str, Callable] | None = None,
) -> list[Finding]:
    """Per transform, how often a trained `model` changes its prediction on transformed validation items.

    `model` is the trained model (default `task.model`), run in eval mode on `device` (default: where
    it is; a copy runs when `device` is elsewhere). `transforms` maps a name to a batch -> batch
    callable (default: {"augment": task.augment}). Each runs on up to `max_items` (default MAX_ITEMS)
    evenly spaced validation items, seeded with `seed` (see the module docstring). The check has no
    time plan; `deadline` is accepted for the common check signature. One Finding per transform: `warn`
    when the accuracy drop is at least MIN_DROP and MIN_Z standard errors, else `pass`; `skip` for kinds
    other than classification and binary, with nothing to check, or when the transform's output does
    not fit the model. Evidence: "n_items", "flip_rate", "accuracy", "accuracy_transformed", "drop",
    "drop_se", "drop_z", "per_class", "confusions". The old form `check_label_preserving(model, task,
    transforms)` still works for one release, with a DeprecationWarning.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    instance("task", task, Task, "a dltips.Task")
    model = task.model if model is None else instance("model", model, nn.Module, "an nn.Module or None")
    device = resolve_device(device, model)
    transforms = _transforms(task, transforms)
    if task.kind not in KINDS:
        return [_skip(f"The check compares predicted classes; a {task.kind} task has none.",
                      {"kind": task.kind})]
    if not transforms:
        return [_skip("The task has no augmentation and no transforms were given: nothing to check.", {})]
    if len(task.valid) == 0:
        return [_skip("The validation set is empty: nothing to check.", {})]
    model = model_on_device(model, device)
    positions = evenly_spaced(len(task.valid), MAX_ITEMS if max_items is None else max_items)
    findings = []
    for name, transform in transforms.items():
        try:
            outcome = _run(model, task, transform, positions, seed, device)
        except _Incompatible as e:
            findings.append(_skip(f"Transform {name!r} could not be checked: {e}.", {"transform": name}))
            continue
        findings.append(_finding(task, name, outcome))
    return findings


def _transforms(task: Task, transforms: Any) -> dict[str, Callable]:
    """The transforms to check (default: the Task's augmentation), or ParamError naming a bad one."""
    if transforms is None:
        return {"augment": task.augment} if task.augment is not None else {}
    instance("transforms", transforms, dict, "a dict {name: callable batch -> batch} or None")
    for name, transform in transforms.items():
        if not isinstance(name, str):
            raise ParamError(f"transforms keys must be names (str), got {name!r}")
        if not callable(transform):
            raise ParamError(f"transforms[{name!r}] must be a callable batch -> batch, "
                             f"got {type(transform).__name__}")
    return dict(transforms)


def _skip(message: str, evidence: dict) -> Finding:
    return Finding(TIP, "skip", "Label preservation not checked", message, None, evidence)


# ----------------------------------------------------------------------------- running a transform


@torch.no_grad()
def _run(model: nn.Module, task: Task, transform: Callable, positions: list[int], seed: int,
         device: torch.device) -> Outcome:
    """Predictions on the original and the transformed batches, with the RNG seeded and restored."""
    loader = task.loader(Subset(task.valid, positions))
    targets, before, after, shown = [], [], [], []
    with _seeded(transform, seed, device), _modes(model, transform):
        for x, y in loader:
            x, y_device = to_device((x, y), device)
            x_t = transform(x)
            _check_output(x, x_t)
            before.append(_labels(task.kind, task.outputs(model, (x, y_device))[0]))
            try:
                out = task.outputs(model, (x_t, y_device))[0]
            except (RuntimeError, ValueError, TypeError) as e:
                raise _Incompatible(f"the model fails on its output ({type(e).__name__}: {e})") from e
            if not isinstance(out, torch.Tensor) or out.shape[0] != len(y):
                raise _Incompatible("the model's output on the transformed batch is not one row per item")
            after.append(_labels(task.kind, out))
            targets.append(torch.as_tensor(y).reshape(len(y)).long().cpu())
            if len(shown) < FIGURE_PAIRS * 4 and isinstance(x, torch.Tensor):
                shown += list(zip(x.cpu(), x_t.cpu(), strict=True))[:FIGURE_PAIRS * 4 - len(shown)]
    return Outcome(torch.tensor(positions), torch.cat(targets), torch.cat(before), torch.cat(after), shown)


def _labels(kind: str, output: torch.Tensor) -> torch.Tensor:
    """Predicted classes (N,): the argmax, or logit > 0 for a binary task."""
    if kind == "binary":
        return (output.reshape(len(output)) > 0).long().cpu()
    if output.dim() != 2:
        raise _Incompatible(f"the model's output has shape {tuple(output.shape)}, not (items, classes); "
                            "dense predictions change with the transform's geometry")
    return output.argmax(1).cpu()


def _batch_len(x: Any) -> int | None:
    if isinstance(x, torch.Tensor) and x.dim() > 0:
        return len(x)
    if isinstance(x, dict) and x:
        return _batch_len(next(iter(x.values())))
    return None


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    if isinstance(x, dict):
        return "a dict of " + ", ".join(f"{k}: {_describe(v)}" for k, v in x.items())
    return f"a {type(x).__name__}"


def _check_output(x: Any, x_t: Any) -> None:
    """The transformed batch must be of the same type (tensor or dict) and hold as many items."""
    n = _batch_len(x)
    if type(x_t) is not type(x) and not (isinstance(x, torch.Tensor) and isinstance(x_t, torch.Tensor)):
        raise _Incompatible(f"it returned {_describe(x_t)} for {_describe(x)}")
    if _batch_len(x_t) != n:
        raise _Incompatible(f"it returned {_describe(x_t)} for {_describe(x)}: "
                            "a transform must keep the number of items")


@contextmanager
def _seeded(transform: Callable, seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global RNG and the transform's generators with `seed`; restore all their states on exit."""
    generators = _generators(transform)
    states = [g.get_state() for g in generators]
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for g in generators:
            g.manual_seed(seed)
        try:
            yield
        finally:
            for g, state in zip(generators, states, strict=True):
                g.set_state(state)


def _generators(transform: Callable) -> list[torch.Generator]:
    """The distinct torch.Generators held as `generator` by the transform or its submodules."""
    holders = list(transform.modules()) if isinstance(transform, nn.Module) else [transform]
    found: list[torch.Generator] = []
    for holder in holders:
        g = getattr(holder, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not other for other in found):
            found.append(g)
    return found


@contextmanager
def _modes(model: nn.Module, transform: Callable) -> Iterator[None]:
    """The model in eval mode and a module transform in training mode; every submodule's mode restored."""
    roots = [model] + ([transform] if isinstance(transform, nn.Module) else [])
    saved = [(m, m.training) for root in roots for m in root.modules()]
    model.eval()
    for root in roots[1:]:
        root.train()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


# ----------------------------------------------------------------------------- numbers and verdict


def measure(outcome: Outcome) -> dict:
    """Flip rate, accuracies, paired drop with its standard error, per-class numbers and new confusions."""
    y, before, after = outcome.targets, outcome.before, outcome.after
    n = len(y)
    right, right_t = (before == y).double(), (after == y).double()
    diff = right - right_t
    drop = float(diff.mean())
    se = float(diff.std() / math.sqrt(n)) if n > 1 else 0.0
    z = drop / se if se > 0 else (math.inf if drop > 0 else 0.0)
    flip = float((before != after).double().mean())
    per_class = []
    for c in torch.unique(y).tolist():
        m = y == c
        per_class.append({"class": c, "n": int(m.sum()), "accuracy": float(right[m].mean()),
                          "accuracy_transformed": float(right_t[m].mean()),
                          "flip_rate": float((before[m] != after[m]).double().mean())})
    created = (right == 1) & (right_t == 0)  # right on the original, wrong on its copy
    pairs: dict[tuple[int, int], int] = {}
    for t, p in zip(y[created].tolist(), after[created].tolist(), strict=True):
        pairs[(t, p)] = pairs.get((t, p), 0) + 1
    counts = {row["class"]: row["n"] for row in per_class}
    confusions = [{"true": t, "predicted": p, "n": k, "share": k / counts[t]}
                  for (t, p), k in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))]
    return {"n_items": n, "flip_rate": flip, "flip_rate_se": math.sqrt(flip * (1 - flip) / n),
            "accuracy": float(right.mean()), "accuracy_transformed": float(right_t.mean()),
            "drop": drop, "drop_se": se, "drop_z": z, "per_class": per_class, "confusions": confusions}


def changes_labels(numbers: dict) -> bool:
    """The verdict: the accuracy drop, or the rate of changed predictions, is large and certain.

    A drop of at least MIN_DROP and MIN_Z standard errors; or predictions changed
    on at least MIN_FLIP of the items, at MIN_Z standard errors. The second shows
    when the model was trained with the transform: it cannot become invariant to
    a change that swaps classes (6 and 9), so its predictions stay unstable
    while its accuracy on the copies may not drop.
    """
    flip, se = numbers["flip_rate"], numbers["flip_rate_se"]
    unstable = flip >= MIN_FLIP and (se == 0 or flip / se >= MIN_Z)
    return (numbers["drop"] >= MIN_DROP and numbers["drop_z"] >= MIN_Z) or unstable


def _finding(task: Task, name: str, outcome: Outcome) -> Finding:
    e = measure(outcome)
    e.update({"transform": name, "indices_checked": len(outcome.indices), "min_drop": MIN_DROP, "min_z": MIN_Z})
    numbers = (f"On {e['n_items']} validation items, transform {name!r} changes the predicted class of "
               f"{e['flip_rate']:.1%} of them; accuracy goes from {e['accuracy']:.1%} to "
               f"{e['accuracy_transformed']:.1%} (a drop of {e['drop']:.1%} +- {e['drop_se']:.1%}).")
    worst = _worst_classes(e)
    figures = [_table(name, e)] + _images(name, outcome)
    e["min_flip"] = MIN_FLIP
    if changes_labels(e):
        dropped = e["drop"] >= MIN_DROP and e["drop_z"] >= MIN_Z
        title = (f"Transform {name!r} seems to change labels: accuracy drops by {e['drop']:.0%}" if dropped else
                 f"Transform {name!r} seems to change labels: it changes {e['flip_rate']:.0%} of the predictions")
        message = (f"{numbers} The trained model no longer recognises the transformed copies, which suggests "
                   f"their true labels changed.{worst}" if dropped else
                   f"{numbers} A model trained with a label-keeping transform learns to ignore it; this one "
                   f"changes at least {MIN_FLIP:.0%} of the predictions, which suggests it turns some classes "
                   f"into others.{worst}")
        fix = (f"Drop {name!r} or restrict it (e.g. limit the rotation angle, turn off mirroring for text or "
               "digits), or restrict it to the classes it keeps; look at the transformed copies in the figure.")
        return Finding(TIP, "warn", title, message, fix, e, figures)
    title = f"Transform {name!r} keeps the model's predictions (accuracy drop {e['drop']:.1%})"
    message = (f"{numbers} Below the thresholds (a {MIN_DROP:.0%} drop or {MIN_FLIP:.0%} changed predictions, "
               f"at {MIN_Z:g} standard errors): no sign that it changes labels.{worst}")
    return Finding(TIP, "pass", title, message, None, e, figures)


def _worst_classes(e: dict) -> str:
    rows = sorted(e["per_class"], key=lambda r: r["accuracy_transformed"] - r["accuracy"])[:3]
    rows = [r for r in rows if r["accuracy"] - r["accuracy_transformed"] > 0]
    if not rows:
        return ""
    named = ", ".join(f"class {r['class']} ({r['accuracy']:.0%} -> {r['accuracy_transformed']:.0%})" for r in rows)
    top = e["confusions"][:3]
    turned = "; most often " + ", ".join(f"{c['true']} -> {c['predicted']} ({c['n']})" for c in top) if top else ""
    return f" Most affected: {named}{turned}."


def _table(name: str, e: dict) -> dict:
    rows = [[c["true"], c["predicted"], c["n"], round(c["share"], 4)] for c in e["confusions"][:TOP_CONFUSIONS]]
    return {"kind": "table", "title": f"Confusions created by {name!r} (right on the original, wrong on the copy)",
            "columns": ["true class", "predicted on the copy", "items", "share of the class"], "rows": rows}


def _images(name: str, outcome: Outcome) -> list[dict]:
    """Originals next to their transformed copies, items whose prediction changed first."""
    pairs = outcome.shown
    if not pairs or not all(is_image(a) and is_image(b) for a, b in pairs):
        return []
    k = len(pairs)
    changed = (outcome.before[:k] != outcome.after[:k]).tolist()
    order = sorted(range(k), key=lambda i: not changed[i])[:FIGURE_PAIRS]
    images, captions = [], []
    for i in order:
        idx, y = int(outcome.indices[i]), int(outcome.targets[i])
        images += [display_image(pairs[i][0]), display_image(pairs[i][1])]
        captions += [f"#{idx} y={y} p={int(outcome.before[i])}", f"{name}: p={int(outcome.after[i])}"]
    return [{"kind": "images", "title": f"Originals and their copies under {name!r}", "images": images,
             "captions": captions}]


# ----------------------------------------------------------------------------- what an augmentation asserts


def describe_invariances(augment: Callable | None) -> list[Finding]:
    """The invariances an augmentation encodes, in plain words (one `info` Finding; `skip` when None).

    Reads `AffineAugment` and `Lighting` parameters; an `nn.Sequential`, list or tuple is read part by
    part; other callables are listed as unknown. Evidence: "invariances" (name, detail, source) and
    "unknown" (type names of the parts that cannot be read).
    """
    if augment is None:
        return [Finding(TIP_INVARIANCES, "skip", "No augmentation", "The task has no augmentation, so it "
                        "asserts no invariance.", None, {"invariances": [], "unknown": []})]
    if not callable(augment) and not isinstance(augment, (list, tuple)):
        raise ParamError(f"augment must be a callable, a list of callables or None, got {type(augment).__name__}")
    invariances: list[dict] = []
    unknown: list[str] = []
    for part in _parts(augment):
        if isinstance(part, AffineAugment):
            invariances += _affine(part)
        elif isinstance(part, Lighting):
            invariances += _lighting(part)
        elif not isinstance(part, nn.Identity):
            unknown.append(type(part).__name__)
    evidence = {"invariances": invariances, "unknown": unknown}
    reminder = ("Each augmentation asserts \"the label does not change under this\": it adds no information, "
                "only makes an invariance explicit, so it must hold for the task (no mirror for digits or text, "
                "no large rotations where orientation matters, as in 6 and 9).")
    if invariances:
        listed = "; ".join(f"{i['name']} ({i['detail']})" for i in invariances)
        head = f"The augmentation teaches the model that the label does not change under: {listed}."
        title = f"Augmentation asserts {len(invariances)} invariance{'s' if len(invariances) > 1 else ''}"
    else:
        head = "The augmentation asserts no invariance that can be read from its parameters."
        title = "No readable invariance in the augmentation"
    if unknown:
        head += f" Cannot tell what {', '.join(unknown)} assert{'s' if len(unknown) == 1 else ''}."
    fix = ("Keep only the invariances that hold for this task; check them with "
           "`check_label_preserving(task, model=trained_model)`.")
    return [Finding(TIP_INVARIANCES, "info", title, f"{head} {reminder}", fix, evidence)]


def _parts(augment: Any) -> Iterator[Any]:
    """The leaves of a Sequential, list or tuple of augmentations, in order."""
    if isinstance(augment, (nn.Sequential, list, tuple)):
        for part in augment:
            yield from _parts(part)
    else:
        yield augment


def _affine(a: AffineAugment) -> list[dict]:
    source = "AffineAugment"
    out = []
    if a.flip > 0:
        out.append({"name": "horizontal mirror", "detail": f"with probability {a.flip:g}", "source": source})
    if a.p_affine > 0:
        if a.max_rotate > 0:
            out.append({"name": "rotation", "detail": f"up to +-{a.max_rotate:g} degrees", "source": source})
        if a.zoom != (1.0, 1.0):
            out.append({"name": "scale", "detail": f"zoom from {a.zoom[0]:g}x to {a.zoom[1]:g}x", "source": source})
        if a.max_translate > 0:
            out.append({"name": "translation", "detail": f"up to {a.max_translate:.0%} of the size per axis",
                        "source": source})
        if a.max_shear > 0:
            out.append({"name": "shear", "detail": f"horizontal, up to +-{a.max_shear:g} degrees",
                        "source": source})
        if a.max_warp > 0:
            out.append({"name": "perspective", "detail": f"corners moved up to {a.max_warp:.0%} of the size",
                        "source": source})
    return out


def _lighting(a: Lighting) -> list[dict]:
    if a.p == 0:
        return []
    out = []
    if a.brightness > 0:
        out.append({"name": "brightness", "detail": f"shifts up to +-{a.brightness:g}", "source": "Lighting"})
    if a.contrast > 0:
        out.append({"name": "contrast", "detail": f"scaled by {1 - a.contrast:g} to {1 + a.contrast:g}",
                    "source": "Lighting"})
    return out
