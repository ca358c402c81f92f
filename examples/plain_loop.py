"""A hand-written PyTorch training loop that takes four dltips parts and nothing else.

    python examples/plain_loop.py

It trains a small MLP on scikit-learn's 8x8 handwritten digits (bundled with
scikit-learn, no download) for a few seconds on a CPU, with:

- `dltips.OneCycle`: the one-cycle learning-rate schedule (warm up, then anneal);
- `dltips.Mixup`: each batch mixed with a shuffled copy of itself, labels too;
- `dltips.GradientAccumulator`: micro-batches of 16 rows, one optimizer step per
  4 of them, with the gradient of the whole 64-row window (exact, also for the
  short last window of an epoch);
- `dltips.watch(model, optimizer)`: activation, gradient and update statistics,
  read back once every `every` steps, and its verdicts at the end.

Nothing else in the loop belongs to dltips: swap in your own model and data.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dltips

EPOCHS = 8
MICRO_BATCH = 16  # rows per forward/backward
WINDOW = 4  # micro-batches per optimizer step: 64 rows per step
MAX_LR = 3e-3


def digits_data(n_valid: int = 300, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, valid) datasets of flattened, standardised 8x8 digits and their labels."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, valid = order[n_valid:], order[:n_valid]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-3)  # some border pixels are always 0
    x = (x - mean) / std
    return TensorDataset(x[train], y[train]), TensorDataset(x[valid], y[valid])


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset) -> float:
    """The fraction of `data` that `model` classifies right (in eval mode)."""
    model.eval()
    x, y = data.tensors
    correct = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return correct


def train() -> tuple[list[float], float, list[dltips.Finding]]:
    """Train; return the mean training loss of each epoch, the final validation accuracy and the watch's findings."""
    torch.manual_seed(0)
    train_data, valid_data = digits_data()
    loader = DataLoader(train_data, batch_size=MICRO_BATCH, shuffle=True)
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=MAX_LR, weight_decay=1e-2)
    steps_per_epoch = math.ceil(len(loader) / WINDOW)  # the last window of an epoch may be short
    scheduler = dltips.OneCycle(optimizer, max_lr=MAX_LR, total_steps=EPOCHS * steps_per_epoch)
    mixup = dltips.Mixup(alpha=0.4, n_classes=10)
    accumulator = dltips.GradientAccumulator(model, optimizer, window=WINDOW)

    epoch_losses = []
    with dltips.watch(model, optimizer, every=10) as w:
        for epoch in range(EPOCHS):
            total, items = torch.zeros(()), 0  # a tensor sum (on the GPU: device=...) needs no host sync per batch
            for i, (x, y) in enumerate(loader):
                x, soft_y = mixup(x, y)  # soft_y: (N, 10) mixed class probabilities
                with accumulator.micro_batch(n_items=len(y), last=(i == len(loader) - 1)):
                    loss = F.cross_entropy(model(x), soft_y, reduction="sum")  # summed: the accumulator divides
                    accumulator.backward(loss)
                if accumulator.stepped:
                    scheduler.step()
                w.log(loss=loss.detach() / len(y))
                total, items = total + loss.detach(), items + len(y)
            epoch_losses.append(total.item() / items)
            print(f"epoch {epoch + 1}/{EPOCHS}  train_loss {epoch_losses[-1]:.4f}  "
                  f"lr {scheduler.get_last_lr()[0]:.2e}")
    return epoch_losses, accuracy(model, valid_data), w.findings()


def main() -> None:
    epoch_losses, valid_accuracy, findings = train()
    print(f"train loss {epoch_losses[0]:.3f} -> {epoch_losses[-1]:.3f}; valid accuracy {valid_accuracy:.3f}")
    print("watch findings:")
    for finding in findings:
        print(f"  {finding.status.upper():4}  {finding.tip}: {finding.title}")


if __name__ == "__main__":
    main()
