"""Data integrity: does an index always give the same item, and do the splits share items?

Neither check runs the model; both read the datasets only, under `rng_kept` so that a dataset
drawing from the global random generators leaves them as they were.

check_stable_pairing (tip "verify-transforms")
    Reads `max_items` training indices (default STABLE_ITEMS, drawn with `seed`) twice each, in two
    passes. A label that changes between the two reads of one index is a broken pairing (labels drawn
    inside `__getitem__`, an index looked up in an order that changes): fail. An input that changes
    may be random augmentation inside the dataset, which is healthy, or another item's input. They
    are told apart by the read ratio: for each changed item k, the share of the other indices j whose
    second read lies closer to k's first read than k's own second read does, doubled and averaged
    over the changed items. A read of an unrelated item is as close as any other (ratio about 1); an
    augmented read stays closer to its own item (ratio near 0). Distances are taken in three views
    (raw values; sorted values, blind to flips and rotations; Fourier magnitudes, blind to shifts)
    and the lowest ratio counts. At RATIO_WARN or above the check warns: the pairing changes, or the
    augmentation moves an item as far from itself as from other items, which a look at the previews
    tells apart.

    Calibration (tests/calibration/causes_data.py, digits 8x8, seeds 0-2): augmentation inside
    `__getitem__` with noise up to 1 standard deviation, shifts up to 2 pixels and flips gives 0.01
    to 0.61; a dataset returning a random index's image gives 0.81 to 1.09. A shift of 3 of the 8
    pixels with flips gives 0.60 to 0.94 (a warn: such a shift pushes most of the digit out of the
    image). The 39 calibration tasks of tests/calibration/zoo.py return the same item on every read.

check_split_overlap (tip "val-test-match")
    Hashes each item's input (the bytes of its contiguous CPU tensor, with dtype and shape; a dict
    by its sorted keys) and label, for up to `max_items` items per split (default OVERLAP_ITEMS,
    drawn with `seed` when a split is larger), and counts validation items whose input also appears
    in training, test items in training and test items in validation, and among those the ones
    whose label also matches.

    Some data repeats inputs legitimately (a language model over a small alphabet, a table of a few
    categories, a few exact duplicate images): a random split then shares inputs between splits at
    the rate the data repeats itself. That rate is measured on the reference split: a validation
    item is, under a random split, exchangeable with a training item, so the chance that its input
    appears in training is the fraction of training items whose input appears elsewhere in
    training (`expected`). The check warns when the shared count exceeds the expected count by at
    least MIN_EXCESS items and by more than MAX_EXCESS of the split, beyond 3 binomial standard
    deviations of the expected count.

    Calibration: the 39 tasks of tests/calibration/zoo.py share no input between splits, except the
    bigram language models, whose 100 one-token inputs repeat in every split as the data's own repeats
    predict (info); a digits validation set with 5% or 30% of its items copied from training (15 or
    90 items) warns. Hashing takes 2 to 44 ms there.

Time plan: both checks look at the deadline after every READ_CHUNK items read (the pairing check
after every item); once it has passed they return a `skip` with the time the rest would take,
extrapolated from the pace of the reads so far, never a verdict on part of the items.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device
from dltips.core.params import int_at_least
from dltips.core.state import rng_kept
from dltips.findings import Finding, skipped_for_time
from dltips.task import IGNORE_INDEX, Task

__all__ = ["check_split_overlap", "check_stable_pairing"]

PAIRING_TIP = "verify-transforms"
OVERLAP_TIP = "val-test-match"
STABLE_ITEMS = 32  # training indices read twice by default
RATIO_WARN = 0.65  # read ratio at or above which the changed inputs look unrelated to their index
OVERLAP_ITEMS = 20_000  # items hashed per split by default
MAX_EXCESS = 0.01  # shared inputs beyond the expected rate, as a fraction of the split, that warn
MIN_EXCESS = 5  # and at least this many items beyond the expected count
SPREAD = 5.0  # and this many standard deviations of the shared count of a random split
RATE_DRAWS = 4  # random training subsets that measure the rate of a random split
READ_CHUNK = 256  # items read between two looks at the deadline
EXAMPLES = 5  # example indices named

_PAIRING_FIX = ("Make `__getitem__(i)` a function of i: look the item up in a fixed order (shuffle with the "
                "DataLoader's `shuffle=True`, not inside the dataset), never draw a label at random, and keep "
                "random augmentation to the input of the item asked for.")
_OVERLAP_FIX = ("Remove exact duplicates before splitting (deduplicate on the inputs), and split by group (patient, "
                "user, source file, session) when items of one group are near copies; then measure validation and "
                "test again.")


class _OutOfTime(Exception):
    def __init__(self, needs_s: float, done: str):
        super().__init__(needs_s, done)
        self.needs_s, self.done = needs_s, done


# ---------------------------------------------------------------- stable pairing


@dataclass
class Rereads:
    """Two reads of the same training indices: which inputs and labels changed, and the read ratio."""

    indices: list[int]
    labels_changed: list[int]
    inputs_changed: list[int]
    ratio: float | None  # the read ratio of the changed inputs, in the view that keeps them closest
    view: str | None = None  # that view
    view_ratios: dict[str, float] = field(default_factory=dict)
    distance_ratio: float | None = None  # median same-index / other-index distance in that view
    shape_changed: list[int] = field(default_factory=list)  # changed items whose input shape changed
    masked_labels: bool = False  # every label change is between a class and IGNORE_INDEX (masked-token targets)
    shifted_targets: bool = False  # every read has targets equal to its inputs shifted by one (language model)


def check_stable_pairing(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
) -> list[Finding]:
    """Read training indices twice and check that each index gives the same input and label; one Finding.

    `max_items` indices (default STABLE_ITEMS, at least 2) are drawn with `seed`. fail when a label
    changes between reads; warn when the inputs change as much as unrelated items do (read ratio at
    least RATIO_WARN); info when the inputs change as random augmentation does; pass when every index
    gives the same item. `model` and `device` are accepted for the common call form; the model is
    not run. When `deadline` passes before every read is done, the Finding is a `skip`.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    resolve_device(device, task.model if model is None else model)  # validated for the common form; not used
    n_items = STABLE_ITEMS if max_items is None else int_at_least("max_items", max_items, 2)
    n = min(n_items, len(task.train))
    indices = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    try:
        first, second = _read_twice(task.train, indices, seed, deadline)
    except _OutOfTime as late:
        return [skipped_for_time(PAIRING_TIP, late.needs_s, late.done, {"n_items": n})]
    return [_pairing_finding(compare_reads(indices, first, second, task.kind))]


def _read_twice(data: Dataset, indices: list[int], seed: int, deadline: Deadline | None) -> tuple[list, list]:
    """Two passes over `indices`, reading `data[i]` for each; the global generators kept."""
    reads: list[list] = [[], []]
    total, started = 2 * len(indices), time.monotonic()
    with rng_kept(seed):
        for p in range(2):
            for i in indices:
                reads[p].append(data[i])
                done = p * len(indices) + len(reads[p])
                if deadline is not None and done < total and deadline.expired():
                    pace = (time.monotonic() - started) / done
                    raise _OutOfTime(pace * (total - done), f"read {done} of {total} items")
    return reads[0], reads[1]


def compare_reads(indices: list[int], first: list, second: list, kind: str = "classification") -> Rereads:
    """Which of the items read twice (`first[k]` and `second[k]` read from `indices[k]`) changed their
    label or input, and the read ratio of the changed inputs (see the module docstring)."""
    labels_changed = [k for k, (a, b) in enumerate(zip(first, second)) if not _same(a[1], b[1])]
    changed = [k for k, (a, b) in enumerate(zip(first, second)) if not _same(a[0], b[0])]
    keys = [_shape_key(a[0]) for a in first], [_shape_key(b[0]) for b in second]
    shape_changed = [k for k in changed if keys[0][k] != keys[1][k]]
    comparable = [k for k in changed if k not in shape_changed]
    view_ratios, distance_ratios = {}, {}
    for name, view in VIEWS.items():
        ranked = _rank_shares(comparable, [view(a[0]) for a in first], [view(b[0]) for b in second], keys[1])
        if ranked:
            view_ratios[name] = 2 * statistics.mean(share for share, _ in ranked)
            distance_ratios[name] = statistics.median(ratio for _, ratio in ranked)
    best = min(view_ratios, key=view_ratios.__getitem__) if view_ratios else None
    return Rereads(indices, [indices[k] for k in labels_changed], [indices[k] for k in changed],
                   view_ratios.get(best), best, view_ratios, distance_ratios.get(best),
                   [indices[k] for k in shape_changed],
                   bool(labels_changed) and all(_masked(first[k][1], second[k][1]) for k in labels_changed),
                   kind == "language-model" and all(_targets_shifted(item) for item in first + second))


def _rank_shares(changed: list[int], x1: list[torch.Tensor], x2: list[torch.Tensor],
                 keys: list[tuple]) -> list[tuple[float, float]]:
    """For each changed item k: (the share of other indices j whose second read lies closer to k's first read
    than k's own second read does, |x1_k - x2_k| / median_j |x1_k - x2_j|), over the j of k's input shape."""
    out = []
    for k in changed:
        others = [j for j in range(len(x2)) if j != k and keys[j] == keys[k]]
        if not others:
            continue
        own = float((x1[k] - x2[k]).norm())
        distances = torch.stack([(x1[k] - x2[j]).norm() for j in others])
        typical = float(distances.median())
        out.append((float((distances < own).double().mean()), own / typical if typical > 0 else math.inf))
    return out


def _parts(x: Any) -> list[torch.Tensor]:
    """The tensors of an input, a dict's by its sorted keys, as float64 on the CPU."""
    values = [x[k] for k in sorted(x, key=str)] if isinstance(x, dict) else [x]
    return [torch.as_tensor(v).detach().cpu().double() for v in values]


def _shape_key(x: Any) -> tuple:
    if isinstance(x, dict):
        return tuple((str(k), tuple(torch.as_tensor(x[k]).shape)) for k in sorted(x, key=str))
    return (tuple(torch.as_tensor(x).shape),)


def _raw_view(x: Any) -> torch.Tensor:
    return torch.cat([v.flatten() for v in _parts(x)])


def _sorted_view(x: Any) -> torch.Tensor:
    """The values of each tensor in increasing order: unchanged by flips, rotations and shifts of the values."""
    return torch.cat([v.flatten().sort().values for v in _parts(x)])


def _fourier_view(x: Any) -> torch.Tensor:
    """The magnitudes of the discrete Fourier transform over the last two dimensions (the last one for a vector),
    averaged with their mirror images: unchanged by circular shifts and flips, little changed by shifts with
    padding."""
    return torch.cat([_mirrored_magnitudes(v).flatten() for v in _parts(x)])


def _mirrored_magnitudes(v: torch.Tensor) -> torch.Tensor:
    if v.dim() == 0:
        return v
    dims = tuple(range(max(v.dim() - 2, 0), v.dim()))
    magnitude = torch.fft.fftn(v, dim=dims).abs()
    for d in dims:  # frequency k and -k: the spectrum of the mirror image
        magnitude = magnitude + torch.roll(magnitude.flip(d), 1, d)
    return magnitude


VIEWS = {"values": _raw_view, "sorted values": _sorted_view, "Fourier magnitudes": _fourier_view}


def _same(a: Any, b: Any) -> bool:
    """Whether two inputs or labels (tensors, dicts of tensors, numbers) are equal, bit for bit."""
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and \
            all(_same(a[k], b[k]) for k in a)
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    return ta.shape == tb.shape and ta.dtype == tb.dtype and bool(torch.equal(ta, tb))


def _masked(a: Any, b: Any) -> bool:
    """Whether two reads of a label differ only where one of them is IGNORE_INDEX (tokens masked at random)."""
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    if ta.shape != tb.shape or ta.is_floating_point() or tb.is_floating_point():
        return False
    differ = ta != tb
    return bool(differ.any()) and bool(((ta == IGNORE_INDEX) | (tb == IGNORE_INDEX))[differ].all())


def _targets_shifted(item: tuple) -> bool:
    """Whether a language-model item's targets are its inputs shifted by one token (a window of one text)."""
    x, y = item
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape != y.shape or x.dim() != 1:
        return False
    return bool(torch.equal(x[1:], y[:-1]))


def _pairing_finding(r: Rereads) -> Finding:
    n = len(r.indices)
    evidence = {"n_items": n, "labels_changed": len(r.labels_changed), "inputs_changed": len(r.inputs_changed),
                "read_ratio": r.ratio, "view": r.view, "view_ratios": r.view_ratios,
                "distance_ratio": r.distance_ratio, "ratio_warn": RATIO_WARN, "shape_changed": len(r.shape_changed),
                "examples": (r.labels_changed or r.inputs_changed)[:EXAMPLES]}
    read = f"Each of {n} training indices was read twice"
    if r.labels_changed and r.shifted_targets:
        return Finding(PAIRING_TIP, "info", "The dataset draws a new window of text on each read",
                       f"{read}: {len(r.labels_changed)} gave other tokens on the second read, but every read's "
                       "targets are its inputs shifted by one token, so inputs and targets stay paired. An index "
                       "does not name an item, so validation scores vary from one pass to the next.", None, evidence)
    if r.labels_changed and not r.masked_labels:
        return Finding(PAIRING_TIP, "fail", "The label of an index changes from read to read",
                       f"{read}: {len(r.labels_changed)} of {n} returned a different label the second time (indices "
                       f"{_listed(r.labels_changed)}). The pairing of inputs and labels changes from read to read, "
                       "so the model is trained on labels that do not belong to its inputs.", _PAIRING_FIX,
                       {**evidence, "cause": "unstable-pairing"})
    masked = (f"; {len(r.labels_changed)} changed their targets only where tokens are masked "
              f"(targets {IGNORE_INDEX}), as random masking does") if r.labels_changed else ""
    if not r.inputs_changed:
        return Finding(PAIRING_TIP, "pass" if not masked else "info", "The same index gives the same item",
                       f"{read}: each gave the same input both times and the same label{masked}.", None, evidence)
    share = f"{len(r.inputs_changed)} of {n} returned a different input the second time (labels unchanged{masked})"
    if r.ratio is None:
        return Finding(PAIRING_TIP, "info", "The inputs change between reads; unrelated reads cannot be told apart",
                       f"{read}: {share}, {len(r.shape_changed)} of them of another shape, so their distance to "
                       "other items cannot be compared.", None, evidence)
    measured = (f"their read ratio is {r.ratio:.2f} (in {r.view}: 1 when the second read of an index lies no "
                "closer to its first read than the reads of other indices do, 0 when it is always the closest; "
                f"their distance is {r.distance_ratio:.2f} times the typical distance to other items)")
    if r.ratio >= RATIO_WARN:
        return Finding(PAIRING_TIP, "warn", "The input of an index changes as much as another item's would",
                       f"{read}: {share}, and {measured}. At {RATIO_WARN} or more the second read is no closer to "
                       f"the item than other items are (indices {_listed(r.inputs_changed)}): either the pairing of "
                       "inputs and labels changes from read to read, or the dataset's random augmentation moves an "
                       "item as far as another item.", _PAIRING_FIX + " If the change is augmentation, look at its "
                       "previews (dltips.data.preview) and make it milder.", {**evidence, "cause": "unstable-pairing"})
    return Finding(PAIRING_TIP, "info", "The dataset returns augmented inputs",
                   f"{read}: {share}, and {measured}: below {RATIO_WARN}, the second read stays close to the "
                   "item, as random augmentation inside the dataset gives; inputs stay paired with their labels.",
                   None, evidence)


def _listed(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:EXAMPLES])
    return shown + (", ..." if len(indices) > EXAMPLES else "")


# ---------------------------------------------------------------- split overlap


@dataclass
class Hashed:
    """The input and label hashes of the items read from one split."""

    split: str
    indices: list[int]
    inputs: list[bytes]
    labels: list[bytes]
    size: int  # items in the split


@dataclass
class Shared:
    """Items of split `split` whose input also appears in split `reference`."""

    split: str
    reference: str
    n_items: int
    shared: int
    same_label: int
    expected: float  # shared items a random split gives, from the reference's own repeats
    excess: float  # shared - expected
    limit: float  # excess at which it warns
    examples: list[list[int]] = field(default_factory=list)  # [index in split, index in reference]

    @property
    def leaks(self) -> bool:
        return self.excess >= self.limit


def check_split_overlap(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
) -> list[Finding]:
    """Count the items shared between training, validation and test (exact copies of the input); one Finding.

    Up to `max_items` items per split (default OVERLAP_ITEMS, drawn with `seed` from a larger split)
    are hashed. warn when validation or test shares clearly more inputs with an earlier split than a
    random split of the same data would (see the module docstring); pass otherwise, with the counts.
    `model` and `device` are accepted for the common call form; the model is not run. When `deadline`
    passes before every item is hashed, the Finding is a `skip`.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    resolve_device(device, task.model if model is None else model)  # validated for the common form; not used
    cap = OVERLAP_ITEMS if max_items is None else int_at_least("max_items", max_items, 1)
    splits = [("train", task.train), ("validation", task.valid)]
    if task.test is not None:
        splits.append(("test", task.test))
    plan = [(name, data, _sample(len(data), cap, seed + k)) for k, (name, data) in enumerate(splits)]
    try:
        hashed = _hash_splits(plan, seed, deadline)
    except _OutOfTime as late:
        return [skipped_for_time(OVERLAP_TIP, late.needs_s, late.done, {"max_items": cap})]
    by_name = {h.split: h for h in hashed}
    pairs = [("validation", "train"), ("test", "train"), ("test", "validation")]
    train = by_name["train"]
    shared = [shared_items(by_name[a], by_name[b], random_split_rate(train, len(by_name[b].inputs), seed))
              for a, b in pairs if a in by_name]
    return [_overlap_finding(shared, repeats(by_name["train"]), hashed)]


def _sample(n: int, cap: int, seed: int) -> list[int]:
    if n <= cap:
        return list(range(n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:cap].sort().values.tolist()


def _hash_splits(plan: list[tuple[str, Dataset, list[int]]], seed: int, deadline: Deadline | None) -> list[Hashed]:
    total = sum(len(idx) for _, _, idx in plan)
    started, done, hashed = time.monotonic(), 0, []
    with rng_kept(seed):
        for name, data, indices in plan:
            inputs, labels = [], []
            for start in range(0, len(indices), READ_CHUNK):
                chunk = indices[start:start + READ_CHUNK]
                for x, y in _items(data, chunk):
                    inputs.append(item_hash(x))
                    labels.append(item_hash(y))
                done += len(chunk)
                if deadline is not None and done < total and deadline.expired():
                    pace = (time.monotonic() - started) / done
                    raise _OutOfTime(pace * (total - done), f"hashed {done} of {total} items")
            hashed.append(Hashed(name, indices, inputs, labels, len(data)))
    return hashed


def _items(data: Dataset, indices: list[int]) -> list[tuple[Any, Any]]:
    """The (x, y) items at `indices`; a two-tensor TensorDataset is sliced instead of read item by item."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        x, y = data.tensors[0][indices], data.tensors[1][indices]
        return list(zip(x, y))
    return [data[i] for i in indices]


def item_hash(value: Any) -> bytes:
    """A digest of a tensor (its dtype, shape and bytes), a number, or a dict of them by sorted keys."""
    digest = hashlib.blake2b(digest_size=16)
    _feed(digest, value)
    return digest.digest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            digest.update(f"<{key}>".encode())
            _feed(digest, value[key])
        return
    tensor = torch.as_tensor(value).detach().cpu().contiguous()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def repeats(h: Hashed) -> int:
    """Items of a split whose input appears elsewhere in the same split."""
    counts: dict[bytes, int] = {}
    for key in h.inputs:
        counts[key] = counts.get(key, 0) + 1
    return sum(c for c in counts.values() if c > 1)


def random_split_rate(train: Hashed, reference_size: int, seed: int = 0) -> float:
    """The chance that an item's input appears among `reference_size` other items of the same data, measured on
    training: its own repeat rate when the reference is training itself, else the share of training items found
    in random training subsets of that size (RATE_DRAWS draws, seeded)."""
    n = len(train.inputs)
    if n < 2:
        return 0.0
    if reference_size >= n - 1:
        return repeats(train) / n
    generator = torch.Generator().manual_seed(seed)
    found = asked = 0
    for _ in range(RATE_DRAWS):
        order = torch.randperm(n, generator=generator).tolist()
        subset = {train.inputs[k] for k in order[:reference_size]}
        rest = order[reference_size:]
        found += sum(train.inputs[k] in subset for k in rest)
        asked += len(rest)
    return found / asked


def shared_items(split: Hashed, reference: Hashed, rate: float = 0.0) -> Shared:
    """The items of `split` whose input appears in `reference`, against the `rate` a random split gives
    (`random_split_rate`): the excess over the expected count, and the excess that warns."""
    where: dict[bytes, list[int]] = {}
    for k, key in enumerate(reference.inputs):
        where.setdefault(key, []).append(k)
    shared = same_label = 0
    examples = []
    for k, key in enumerate(split.inputs):
        found = where.get(key)
        if not found:
            continue
        shared += 1
        same_label += any(reference.labels[j] == split.labels[k] for j in found)
        if len(examples) < EXAMPLES:
            examples.append([split.indices[k], reference.indices[found[0]]])
    n, m = len(split.inputs), max(len(reference.inputs), 1)
    expected = n * rate
    limit = max(MIN_EXCESS, MAX_EXCESS * n) + SPREAD * math.sqrt(n * rate * (1 - rate) * (1 + n / m))
    return Shared(split.split, reference.split, n, shared, same_label, expected, shared - expected, limit, examples)


def _overlap_finding(shared: list[Shared], train_repeats: int, hashed: list[Hashed]) -> Finding:
    sizes = {h.split: len(h.inputs) for h in hashed}
    evidence = {"pairs": [asdict(s) | {"leaks": s.leaks} for s in shared], "items_hashed": sizes,
                "train_repeats": train_repeats, "max_excess": MAX_EXCESS, "min_excess": MIN_EXCESS, "spread": SPREAD}
    counts = "; ".join(f"{s.shared} of {s.n_items} {s.split} inputs appear in {s.reference} ({s.same_label} with the "
                       f"same label; a random split of this data gives about {s.expected:.0f})" for s in shared)
    sampled = [f"{h.split} ({sizes[h.split]} of {h.size})" for h in hashed if h.size > sizes[h.split]]
    parts = [f"Inputs compared as exact copies: {counts}.",
             f"Within training, {train_repeats} of {sizes['train']} items repeat an input found elsewhere in training."]
    if sampled:
        parts.append(f"Items drawn at random from the larger splits: {', '.join(sampled)}; the counts are of those.")
    leaking = [s for s in shared if s.leaks]
    if leaking:
        worst = max(leaking, key=lambda s: s.excess / max(s.n_items, 1))
        examples = ", ".join(f"{worst.split} {a} = {worst.reference} {b}" for a, b in worst.examples)
        parts.append(f"About {worst.excess:.0f} {worst.split} items ({100 * worst.excess / worst.n_items:.1f}% of "
                     f"those compared) are copies of {worst.reference} items beyond what the data's own repeats "
                     f"explain (e.g. {examples}): the {worst.split} error is too good to be true, since the model "
                     "has trained on these items.")
        what = " and ".join(f"{s.split} and {s.reference}" for s in leaking)
        return Finding(OVERLAP_TIP, "warn", f"Items shared between {what}", " ".join(parts), _OVERLAP_FIX,
                       {**evidence, "cause": "split-overlap"})
    repeated = [s for s in shared if s.shared > max(MIN_EXCESS, MAX_EXCESS * s.n_items)]
    if repeated:
        parts.append("The data repeats its own inputs, so a random split shares them at this rate; when the "
                     "repeats are accidental copies rather than inputs met again in use, deduplicate before "
                     "splitting.")
        return Finding(OVERLAP_TIP, "info", "The splits share inputs, as the data's own repeats explain",
                       " ".join(parts), None, evidence)
    return Finding(OVERLAP_TIP, "pass", "The splits share no more items than a random split would",
                   " ".join(parts), None, evidence)
