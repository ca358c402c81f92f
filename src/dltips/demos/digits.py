"""The `digits` demo: a small CNN on scikit-learn's bundled 8x8 handwritten digits.

No download: the 1,797 images ship with scikit-learn. Pixels (0..16) are
scaled to [0, 1] and standardised with the training mean and std; the split
(1,197 train / 300 valid / 300 test) is a fixed seeded permutation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dltips.task import Task


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as (N, 1, 8, 8) float images in [0, 1] and (N,) labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError('the digits demo needs scikit-learn: pip install "dltips[sklearn]"') from e
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(data.target, dtype=torch.long)


def split(n: int, n_valid: int, n_test: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index tensors for train/valid/test from a seeded permutation of range(n)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_valid + n_test:], order[:n_valid], order[n_valid:n_valid + n_test]


class DigitsCNN(nn.Sequential):
    def __init__(self, width: int = 16, n_classes: int = 10):
        super().__init__(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 4 * 4, 64), nn.ReLU(), nn.Linear(64, n_classes),
        )


def digits_task(seed: int = 0, batch_size: int = 64) -> Task:
    """The healthy demo Task: DigitsCNN, AdamW at the default LR."""
    x, y = load_digits_tensors()
    train, valid, test = split(len(x), 300, 300)
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    torch.manual_seed(seed)
    return Task(DigitsCNN(), TensorDataset(x[train], y[train]), TensorDataset(x[valid], y[valid]),
                TensorDataset(x[test], y[test]), kind="classification", n_classes=10, batch_size=batch_size,
                name="digits")
