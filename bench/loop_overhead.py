"""Step time of `dltips.fit` against a hand-written PyTorch loop doing the same work.

Same small CNN, data, batch size 64, AdamW + OneCycle, same number of steps and
one evaluation of the validation set per epoch; the two runs are interleaved
in one process and the median of the repeats is reported.

    python bench/loop_overhead.py [--repeats 7] [--steps 60]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dltips import OneCycle, Recipe, Task, default_lr, fit

BATCH = 64


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )


def make_data(steps: int) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * BATCH + BATCH, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (len(x),), generator=g)
    return TensorDataset(x[:-BATCH], y[:-BATCH]), TensorDataset(x[-BATCH:], y[-BATCH:])


def hand_written(train: TensorDataset, valid: TensorDataset, steps: int) -> float:
    torch.manual_seed(0)
    model = small_cnn()
    optimizer = torch.optim.AdamW(model.parameters(), lr=default_lr(model))
    scheduler = OneCycle(optimizer, max_lr=default_lr(model), total_steps=steps)
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, drop_last=True)
    start = time.perf_counter()
    model.train()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in DataLoader(valid, batch_size=BATCH))
    assert correct >= 0
    return (time.perf_counter() - start) / steps


def with_fit(train: TensorDataset, valid: TensorDataset, steps: int) -> float:
    torch.manual_seed(0)
    task = Task(small_cnn(), train, valid, batch_size=BATCH)
    start = time.perf_counter()
    result = fit(task, epochs=1, recipe=Recipe(), progress=False)
    assert result.steps == steps
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    train, valid = make_data(args.steps)
    hand_written(train, valid, args.steps)  # warm-up both paths
    with_fit(train, valid, args.steps)
    base, ours, ratios = [], [], []
    for _ in range(args.repeats):
        b = hand_written(train, valid, args.steps)
        f = with_fit(train, valid, args.steps)
        base.append(b)
        ours.append(f)
        ratios.append(f / b)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, {args.steps} steps, "
          f"{args.repeats} interleaved repeats")
    print(f"hand-written loop: median {statistics.median(base) * 1e3:.2f} ms/step")
    print(f"dltips.fit:        median {statistics.median(ours) * 1e3:.2f} ms/step")
    print(f"ratio fit / hand-written: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
