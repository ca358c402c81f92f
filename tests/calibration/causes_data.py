"""Calibration tasks for the data-integrity checks: one data fault each, and healthy tasks that use the same
constructions legitimately.

The faults are among the data bugs of the deep-learning bug studies (Islam et al., FSE 2019; Humbatova et al.,
ICSE 2020: wrong data pairing, data leakage between splits): a Dataset whose `__getitem__` reads another item
than the one asked for, labels drawn at random inside `__getitem__`, and a validation set that holds copies of
training items. The healthy counterpart draws random augmentation inside `__getitem__`, as torchvision-style
datasets do.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset

from dltips import Task
from dltips.demos.digits import DigitsCNN, load_digits_tensors, split
from zoo import _with, digits_mlp


def _digit_splits() -> tuple[tuple[torch.Tensor, torch.Tensor], TensorDataset, TensorDataset]:
    """Standardised digits images (N, 1, 8, 8): (train tensors, valid dataset, test dataset), the demo's split."""
    x, y = load_digits_tensors()
    train, valid, test = split(len(x), 300, 300)
    x = (x - x[train].mean()) / x[train].std()
    return (x[train], y[train]), TensorDataset(x[valid], y[valid]), TensorDataset(x[test], y[test])


class ShuffledReads(Dataset):
    """Returns the label of the index asked for with the image of a random index, drawn anew on every read
    (the bug of a dataset that indexes a list shuffled elsewhere, or reads `order[i]` of a stale order)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        j = int(torch.randint(len(self.y), ()))  # the global generator, as buggy code uses it
        return self.x[j], self.y[i]


class RandomLabelReads(Dataset):
    """Returns the right image with a label drawn at random on every read."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int = 10):
        self.x, self.y, self.n_classes = x, y, n_classes

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(torch.randint(self.n_classes, ()))


class AugmentedDigits(Dataset):
    """Random augmentation inside `__getitem__`, as torchvision transforms do: Gaussian noise of std `noise`
    (in units of the standardised pixels), a shift of up to `max_shift` pixels each way (zero padded),
    and a horizontal flip with probability `flip`. Draws from the global generator."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, noise: float = 0.1, max_shift: int = 1, flip: float = 0.0):
        self.x, self.y = x, y
        self.noise, self.max_shift, self.flip = noise, max_shift, flip
        self.background = float(x.min())

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i]
        if self.max_shift:
            dy, dx = (int(v) for v in torch.randint(-self.max_shift, self.max_shift + 1, (2,)))
            x = _shift(x, dy, dx, self.background)
        if self.flip and float(torch.rand(())) < self.flip:
            x = x.flip(-1)
        return x + self.noise * torch.randn(x.shape), self.y[i]


def _shift(x: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """`x` (C, H, W) moved by (dy, dx) pixels, the uncovered border filled with `fill`."""
    m = max(abs(dy), abs(dx))
    if m == 0:
        return x
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (m, m, m, m), value=fill)
    return padded[..., m - dy:m - dy + h, m - dx:m - dx + w]


def _digits_task(train: Dataset, valid: Dataset, test: Dataset, name: str) -> Task:
    torch.manual_seed(0)
    return Task(DigitsCNN(), train, valid, test, kind="classification", n_classes=10, name=name)


def shuffled_pairing_task() -> Task:
    """The digits CNN whose training dataset returns the image of a random index on every read."""
    (x, y), valid, test = _digit_splits()
    return _digits_task(ShuffledReads(x, y), valid, test, "shuffled-pairing")


def random_label_reads_task() -> Task:
    """The digits CNN whose training dataset draws a random label on every read."""
    (x, y), valid, test = _digit_splits()
    return _digits_task(RandomLabelReads(x, y), valid, test, "random-label-reads")


def augmented_dataset_task(noise: float = 0.1, max_shift: int = 1, flip: float = 0.0) -> Task:
    """Healthy: the digits CNN whose training dataset applies random noise and shift (and optionally flip)
    augmentation inside `__getitem__`."""
    (x, y), valid, test = _digit_splits()
    return _digits_task(AugmentedDigits(x, y, noise, max_shift, flip), valid, test, "augmented-dataset")


def leaked_validation_task(share: float = 0.3) -> Task:
    """The digits MLP whose validation set has `share` of its items replaced by copies of training items."""
    task = digits_mlp()
    x_train, y_train = task.train.tensors
    x_valid, y_valid = task.valid.tensors
    n_copied = round(share * len(y_valid))
    picked = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(7))[:n_copied]
    x_valid, y_valid = x_valid.clone(), y_valid.clone()
    x_valid[:n_copied], y_valid[:n_copied] = x_train[picked], y_train[picked]
    return _with(task, valid=TensorDataset(x_valid, y_valid), name="leaked-validation")
