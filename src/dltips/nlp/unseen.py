"""Probability on tokens the training data never contains (tip `unseen-tokens`).

A language model trained with cross-entropy sees a gradient that lowers the
logit of every id that is not the target, and no target ever raises the
logit of an id that is never a target. After a short run a healthy model therefore puts
almost no probability on the ids that never occur among the training targets
("unseen" ids). What it still puts there is wasted: it costs -ln(1 - mass)
nats on every token.

`token_counts` counts the training targets per id (IGNORE_INDEX = -100 left
out). `measure_unseen_mass` runs the trained model in eval mode over evenly
spaced validation items and averages, over the counted positions, the total
softmax probability on the unseen ids (the "unseen mass"), and each id's mean
probability. `check_unseen_tokens` turns that into a verdict, lists the unseen
ids with the most probability and the rare ids (seen fewer than RARE_COUNT =
10 times: the relative error of a frequency estimated from n occurrences is
about 1/sqrt(n), over 30% below 10), and counts validation targets that are
unseen ids (no model trained on this data can predict them).

The verdict is relative to the uniform baseline: an untrained model puts
about (unseen ids) / V on them, and the ratio mass / ((unseen ids) / V) says
how far training has pushed them down, whatever the vocabulary size and the
number of unseen ids. The check fails when the ratio is above FAIL_RATIO =
0.05 and the mass is above FAIL_MASS = 0.001. The floor keeps a large
vocabulary with a handful of unseen ids (uniform mass under 0.02) from
failing on a mass that costs under 0.001 nats per token, below anything a
loss comparison resolves; every broken case measured below has a mass of at
least 0.008.

Calibration: small language models trained with `dltips.fit` as the doctor's
short run trains them (the Task's AdamW at `default_lr`, constant LR, batches
of 32 sequences), measured on up to 512 validation items. Tasks: counting
modulo 12 with V = 16 (4 ids unseen); Markov chains with Zipf-weighted
transitions, V = 64 (8 unseen) and V = 500 (100 unseen); bytes of this
repository's README + architecture.md, V = 256 (163 unseen, split 85/15).
Ratio (mass) per case:

    task; model                 untrained     5 steps       20 steps       50 steps        200 steps       1000 steps
    count V=16; emb+linear      0.98 (0.24)   0.71 (0.18)   0.12 (0.029)   0.0067 (0.0017)  0.0012 (3.0e-4)  1.4e-4 (3.6e-5)
    Markov V=64; GRU            1.04 (0.13)   0.70 (0.088)  0.12 (0.014)   0.032 (0.0040)   0.0090 (0.0011)  0.0014 (1.8e-4)
    Markov V=64; transformer    0.97 (0.12)   0.42 (0.053)  0.055 (0.0069) 0.020 (0.0025)   0.0064 (8.0e-4)  5.0e-4 (6.2e-5)
    Markov V=500; emb+linear    1.00 (0.20)   0.91 (0.18)   0.64 (0.13)    0.20 (0.040)     0.012 (0.0024)   0.0011 (2.1e-4)
    bytes V=256; GRU            1.00 (0.64)   0.70 (0.45)   0.013 (0.0083) 0.0039 (0.0025)  0.0021 (0.0013)  6.4e-4 (4.1e-4)
    bytes V=256; transformer    1.00 (0.64)   0.39 (0.25)   0.0086 (0.0055) 0.0055 (0.0035) 0.0014 (8.9e-4)  9.6e-5 (6.1e-5)

    200 steps and then:         label smoothing 0.1   label smoothing 0.01   output bias of unseen ids +5
    count V=16; emb+linear      0.100 (0.025)         0.0059 (0.0015)        0.17 (0.042)
    Markov V=64; GRU            0.104 (0.013)         0.017 (0.0021)         0.85 (0.11)
    Markov V=64; transformer    0.107 (0.013)         0.014 (0.0018)         0.68 (0.085)
    Markov V=500; emb+linear    0.105 (0.021)         0.018 (0.0036)         0.95 (0.19)
    bytes V=256; GRU            0.100 (0.064)         0.011 (0.0068)         0.15 (0.093)
    bytes V=256; transformer    0.095 (0.061)         0.0097 (0.0062)        0.12 (0.078)

    splits (200 steps)                                                  ratio (mass)       verdict
    bytes, train fit.py, validate on architecture.md (0.11% of
      validation targets unseen); GRU / emb+linear                      0.0022 / 0.0066    pass
    Markov V=64, validation drawn from a chain over all 64 ids (3.3%
      of validation targets unseen, as from a vocabulary built on every
      split); GRU / emb+linear                                          0.014 / 0.071      pass / fail
    the same, trained on train + validation (a leak); GRU / emb+linear  0.106 / 0.065      fail

After 200 steps every healthy model is at or below 0.012 (the highest, V = 500
with 400 ids in use); the broken ones start at 0.095 (label smoothing 0.1,
whose optimum gives every id epsilon / V, a ratio of epsilon). FAIL_RATIO =
0.05 sits between them: four times the highest healthy ratio, half the
label-smoothing one. Not caught, by design: label smoothing 0.01 (ratio
0.01-0.02, costing under 0.01 nats per token). Runs of 20 steps or fewer fall
on both sides (0.009 to 0.64): a run that short has not finished pushing the
unseen ids down, and the failure says to train longer. A validation split full
of ids never seen in training fails or passes depending on the model (inputs
never seen leave untrained embeddings); the finding reports how many
validation targets are unseen either way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from dltips.core.checks import check_args, positional_options, task_first
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device, to_device
from dltips.core.params import ParamError, callable_or_none, instance, optional_int, positive_int
from dltips.core.state import eval_mode
from dltips.findings import Finding
from dltips.predict import evenly_spaced
from dltips.task import IGNORE_INDEX, Task, target_tensor

__all__ = ["UnseenMass", "check_unseen_tokens", "measure_unseen_mass", "token_counts"]

TIP = "unseen-tokens"

FAIL_RATIO = 0.05  # unseen mass / uniform mass above which the check fails
FAIL_MASS = 0.001  # ... and only when that mass is above this floor (near zero whatever the ratio)
RARE_COUNT = 10  # a token seen fewer times than this in training is "rare"
MAX_ITEMS = 512  # validation items read by default
_TOP = 10  # worst unseen / rarest tokens listed
_SOFTMAX_VALUES = 2**22  # logits turned into probabilities at once (positions are split to fit)
_SCAN_CHUNK = 1024  # items whose targets are stacked per bincount when a dataset is read item by item


@dataclass
class UnseenMass:
    """What a model predicts for tokens the training targets never contain, over validation positions.

    `mass` is the mean over counted positions (targets not IGNORE_INDEX) of the
    total softmax probability on the unseen ids; `uniform_mass` is what a
    uniform prediction puts there (unseen ids / V). `mean_probability` is each
    id's mean probability over the same positions (float64, length V).
    `valid_counts` counts the ids among the counted validation targets.
    """

    mass: float
    uniform_mass: float
    n_positions: int
    n_items: int
    mean_probability: torch.Tensor
    valid_counts: torch.Tensor

    @property
    def ratio(self) -> float:
        """The unseen mass as a fraction of the uniform model's (0 when no id is unseen)."""
        return self.mass / self.uniform_mass if self.uniform_mass > 0 else 0.0


# ---------------------------------------------------------------------- training counts


def token_counts(dataset: Dataset, vocab_size: int, max_items: int | None = None,
                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """How often each token id occurs among the targets of a language-model dataset (int64, length `vocab_size`).

    Items are `(tokens[T], next_tokens[T])`; targets equal to `ignore_index`
    (torch's -100 by default) are not counted. A TensorDataset (or a Subset of one) is counted in
    one pass over its target tensor; other datasets are read item by item. With
    `max_items`, only that many evenly spaced items are read.
    """
    positive_int("vocab_size", vocab_size)
    optional_int("max_items", max_items)
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise ParamError(f"dataset must be a map-style Dataset with __len__ and __getitem__, got {type(dataset).__name__}")
    positions = evenly_spaced(len(dataset), max_items)
    targets = target_tensor(dataset)
    counts = torch.zeros(vocab_size, dtype=torch.long)
    if targets is not None:
        chosen = targets if len(positions) == len(targets) else targets[torch.as_tensor(positions, dtype=torch.long)]
        return counts + _bincount(chosen, vocab_size, ignore_index)
    for start in range(0, len(positions), _SCAN_CHUNK):
        chunk = [torch.as_tensor(dataset[i][1]).flatten() for i in positions[start:start + _SCAN_CHUNK]]
        if chunk:
            counts += _bincount(torch.cat(chunk), vocab_size, ignore_index)
    return counts


def _bincount(targets: torch.Tensor, vocab_size: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Counts of the ids in `targets`, `ignore_index` left out; ids outside [0, vocab_size) raise ParamError."""
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ParamError(f"language-model targets must be integer token ids, got dtype {targets.dtype}")
    ids = targets.flatten().long().cpu()
    ids = ids[ids != ignore_index]
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        raise ParamError(f"targets hold token ids outside [0, {vocab_size}) (e.g. {int(bad[0])}); "
                         f"vocab_size must exceed every id, and only {ignore_index} marks an ignored target")
    return torch.bincount(ids, minlength=vocab_size)


# ---------------------------------------------------------------------- the measurement


@task_first
@positional_options("counts")
@torch.no_grad()
def measure_unseen_mass(
    task: Task,
    *,
    model: nn.Module | None = None,
    counts: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    max_items: int | None = None,
) -> UnseenMass:
    """Run `model` (default `task.model`) in eval mode over up to `max_items` (default MAX_ITEMS) evenly
    spaced validation items and measure its unseen mass.

    `counts` are the training counts per token id (default: `token_counts` of `task.train`). The
    softmax is taken over the last dimension of the model's (batch, T, V)
    logits, a block of positions at a time; the unseen mass is the sum over
    the unseen ids of their mean probability (the same number as the mean of
    the per-position sums). Sums stay on the device and are read back once.
    The model keeps its training mode and its device (a copy runs when
    `device` is elsewhere). The old form `measure_unseen_mass(model, task, counts)`
    still works for one release, with a DeprecationWarning.
    """
    instance("task", task, Task, "a dltips.Task")
    model = task.model if model is None else instance("model", model, nn.Module, "an nn.Module or None")
    max_items = MAX_ITEMS if max_items is None else positive_int("max_items", max_items)
    counts = token_counts(task.train, task.n_classes, ignore_index=task.ignore_index) if counts is None \
        else _check_counts(counts, task.n_classes)
    device = resolve_device(device, model)
    if any(p.device != device for p in model.parameters()):
        model = copy.deepcopy(model).to(device)
    positions = evenly_spaced(len(task.valid), max_items)
    loader = task.loader(Subset(task.valid, positions))
    probability_sum = torch.zeros(task.n_classes, dtype=torch.float64, device=device)
    valid_counts = torch.zeros(task.n_classes, dtype=torch.long, device=device)
    n_positions = torch.zeros((), dtype=torch.long, device=device)
    with eval_mode(model):
        for x, y in loader:
            logits, y = task.outputs(model, to_device((x, y), device))
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (*y.shape, task.n_classes):
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(f"the model returned {shape} for targets of shape {tuple(y.shape)}; expected "
                                 f"{(*y.shape, task.n_classes)}: (batch, tokens, vocabulary) logits")
            counted = y != IGNORE_INDEX
            for rows in logits[counted].split(max(1, _SOFTMAX_VALUES // task.n_classes)):
                probability_sum += torch.softmax(rows.float(), dim=-1).sum(0, dtype=torch.float64)
            valid_counts += torch.bincount(y[counted].long(), minlength=task.n_classes)
            n_positions += counted.sum()
    n = int(n_positions)
    if n == 0:
        raise ValueError("the validation items read have no counted target (all are IGNORE_INDEX)")
    mean_probability = (probability_sum / n).cpu()
    unseen = counts == 0
    return UnseenMass(mass=float(mean_probability[unseen].sum()), uniform_mass=int(unseen.sum()) / task.n_classes,
                      n_positions=n, n_items=len(positions), mean_probability=mean_probability,
                      valid_counts=valid_counts.cpu())


def _check_counts(counts: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    if not isinstance(counts, torch.Tensor) or counts.dim() != 1:
        raise ParamError(f"counts must be a 1-D tensor of training counts per token id, got {counts!r:.80}")
    if vocab_size is not None and len(counts) != vocab_size:
        raise ParamError(f"counts has {len(counts)} entries but the vocabulary (task.n_classes) has {vocab_size} ids")
    if counts.is_floating_point() and not bool(torch.isfinite(counts).all()):
        raise ParamError("counts must be finite")
    if bool((counts < 0).any()):
        raise ParamError("counts must be >= 0")
    return counts.cpu()


# ---------------------------------------------------------------------- the check


@task_first
@positional_options("counts")
def check_unseen_tokens(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
    counts: torch.Tensor | None = None,
    decode: Callable[[int], str] | None = None,
) -> list[Finding]:
    """The `unseen-tokens` verdict on a trained language model; [] for other kinds of Task.

    `model` is the trained model (default `task.model`). `counts` are the training counts per token
    id (default: `token_counts` of `task.train`). The model runs in eval mode over up to `max_items`
    (default MAX_ITEMS) evenly spaced validation items (see `measure_unseen_mass`). `decode`, when
    given, turns a token id into its text for the tables and the message. The check draws no random
    numbers and has no time plan: `seed` and `deadline` are accepted for the common check signature.
    The old form `check_unseen_tokens(model, task, counts)` still works for one release, with a
    DeprecationWarning.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    instance("task", task, Task, "a dltips.Task")
    model = task.model if model is None else instance("model", model, nn.Module, "an nn.Module or None")
    resolve_device(device, model)
    callable_or_none("decode", decode)
    if task.kind != "language-model":
        return []
    counts = token_counts(task.train, task.n_classes, ignore_index=task.ignore_index) if counts is None \
        else _check_counts(counts, task.n_classes)
    name = _namer(decode)
    n_unseen = int((counts == 0).sum())
    total = int(counts.sum())
    evidence: dict = {"vocab_size": task.n_classes, "n_unseen": n_unseen, "n_train_tokens": total,
                      "unseen_ids": torch.nonzero(counts == 0).flatten()[:100].tolist(),
                      "fail_ratio": FAIL_RATIO, "fail_mass": FAIL_MASS, "rare_count": RARE_COUNT}
    if n_unseen == 0:
        rare = _rare(counts, None, name)
        evidence.update(unseen_mass=0.0, uniform_mass=0.0, ratio_to_uniform=0.0, worst_unseen=[], **rare)
        message = (f"Every one of the {task.n_classes} token ids occurs among the {total} training targets, so no "
                   f"probability can go to an unseen token.{_rare_sentence(rare)}")
        return [Finding(TIP, "pass", "Every vocabulary id occurs in training", message, None, evidence,
                        _figures([], rare["rare"], task.n_classes))]
    m = measure_unseen_mass(task, model=model, counts=counts, device=device, max_items=max_items)
    worst = _worst_unseen(counts, m.mean_probability, name)
    rare = _rare(counts, m.mean_probability, name)
    valid_unseen = int(m.valid_counts[counts == 0].sum())
    evidence.update(unseen_mass=m.mass, uniform_mass=m.uniform_mass, ratio_to_uniform=m.ratio,
                    n_positions=m.n_positions, n_items=m.n_items, worst_unseen=worst, **rare,
                    valid_unseen_targets=valid_unseen, valid_unseen_share=valid_unseen / m.n_positions)
    figures = _figures(worst, rare["rare"], task.n_classes)
    numbers = (f"Over {m.n_positions} validation positions ({m.n_items} items), the model puts on average "
               f"{m.mass:.3g} of its probability on the {n_unseen} of {task.n_classes} token ids that never occur "
               f"among the {total} training targets; a uniform prediction puts {m.uniform_mass:.3g} there "
               f"(ratio {m.ratio:.3g}).")
    notes = _valid_sentence(valid_unseen, m.n_positions) + _rare_sentence(rare)
    if m.ratio > FAIL_RATIO and m.mass > FAIL_MASS:
        top = ", ".join(f"{w['token']} ({w['mean_probability']:.2g})" for w in worst[:5])
        message = (f"{numbers} Training should push these tokens towards zero; here they keep {m.ratio:.0%} of the "
                   f"uniform level. Most probable: {top}.{notes}")
        return [Finding(TIP, "fail", f"{m.mass:.2g} of the probability goes to tokens never seen in training",
                        message, _fix(valid_unseen > 0), evidence, figures)]
    if m.ratio > FAIL_RATIO:
        why = (f"That is near zero (at most {FAIL_MASS:g} of the probability), though still {m.ratio:.0%} of the "
               "uniform level: the unseen ids are few for this vocabulary.")
    else:
        why = f"That is near zero: training has pushed them below {FAIL_RATIO:.0%} of the uniform level."
    message = f"{numbers} {why}{notes}"
    return [Finding(TIP, "pass", "Tokens never seen in training get almost no probability", message, None,
                    evidence, figures)]


def _fix(valid_has_unseen: bool) -> str:
    """What to do about unseen mass, the split first when validation targets hold unseen ids."""
    split = ("Validation targets include these ids: build the vocabulary and the splits from the same data, "
             "or make sure the model was not trained on the validation split. ") if valid_has_unseen else ""
    return (split + "Train longer if the run was short or the model is untrained. A loss with label smoothing "
            "epsilon gives every id at least epsilon / V (ratio about epsilon): lower epsilon or accept it. Check "
            "the output layer's bias and initialisation for these ids. If the model was trained or pretrained on "
            "other data than task.train (a leak, or a vocabulary built from every split), count the training "
            "targets it really saw. Ids that can never occur can be dropped from the vocabulary or masked out.")


def _namer(decode: Callable[[int], str] | None) -> Callable[[int], str]:
    """How a token id is shown: its decoded text in quotes when `decode` is given, else `id N`."""
    if decode is None:
        return lambda i: f"id {i}"
    return lambda i: f"{decode(i)!r} (id {i})"


def _worst_unseen(counts: torch.Tensor, mean_probability: torch.Tensor, name: Callable[[int], str]) -> list[dict]:
    """The unseen ids with the highest mean predicted probability, highest first."""
    ids = torch.nonzero(counts == 0).flatten()
    order = mean_probability[ids].argsort(descending=True, stable=True)[:_TOP]
    return [{"id": int(ids[k]), "token": name(int(ids[k])), "mean_probability": float(mean_probability[ids[k]])}
            for k in order]


def _rare(counts: torch.Tensor, mean_probability: torch.Tensor | None, name: Callable[[int], str]) -> dict:
    """Ids seen in training fewer than RARE_COUNT times: how many, and the rarest with their counts."""
    total = max(int(counts.sum()), 1)
    is_rare = (counts > 0) & (counts < RARE_COUNT)
    ids = torch.nonzero(is_rare).flatten()
    order = counts[ids].argsort(stable=True)[:_TOP]
    rows = []
    for k in order:
        i = int(ids[k])
        row = {"id": i, "token": name(i), "count": int(counts[i]), "share": int(counts[i]) / total}
        if mean_probability is not None:
            row["mean_probability"] = float(mean_probability[i])
        rows.append(row)
    return {"n_rare": len(ids), "rare": rows}


def _rare_sentence(rare: dict) -> str:
    if rare["n_rare"] == 0:
        return ""
    listed = ", ".join(f"{r['token']} x{r['count']}" for r in rare["rare"][:5])
    return (f" {rare['n_rare']} ids are rare (seen fewer than {RARE_COUNT} times in training, so their "
            f"probabilities are poorly estimated): {listed}.")


def _valid_sentence(valid_unseen: int, n_positions: int) -> str:
    if valid_unseen == 0:
        return ""
    return (f" {valid_unseen} of the {n_positions} validation targets ({valid_unseen / n_positions:.2%}) are ids "
            "never seen in training: no model trained on this data can predict them, so check that the "
            "vocabulary and the splits come from the same data.")


def _figures(worst: list[dict], rare: list[dict], vocab_size: int) -> list[dict]:
    """Tables of the most probable unseen ids and of the rarest ids (none when a list is empty)."""
    figures = []
    if worst:
        figures.append({"kind": "table", "title": "Unseen tokens with the most predicted probability",
                        "columns": ["token", "mean probability", "times uniform (1/V)"],
                        "rows": [[w["token"], f"{w['mean_probability']:.3g}", f"{w['mean_probability'] * vocab_size:.3g}"]
                                 for w in worst]})
    if rare:
        with_p = "mean_probability" in rare[0]
        figures.append({"kind": "table", "title": f"Rarest tokens (seen fewer than {RARE_COUNT} times in training)",
                        "columns": ["token", "training count", "share of training tokens"]
                        + (["mean probability"] if with_p else []),
                        "rows": [[r["token"], r["count"], f"{r['share']:.2g}"]
                                 + ([f"{r['mean_probability']:.3g}"] if with_p else []) for r in rare]})
    return figures
