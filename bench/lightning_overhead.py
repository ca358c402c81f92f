"""Cost of `DltipsCallback` in a Lightning Trainer: fit time with the callback against without it.

An MLP (784 -> 512 -> 256 -> 10, ReLU and tanh) at batch 64, AdamW, on the CPU,
`max_steps` steps (16 per epoch) with validation on 256 items after each
epoch; the Trainer runs without
logger, checkpoints, progress bar or model summary, so what differs between
the two runs is the callback alone. With the callback: its default settings
(every=25, the first-batch checks, a Lightning logger sink with no logger to
send to, no report printed). Runs are interleaved in one process; the median of
the per-repeat ratios (callback / bare) is printed with the median times.

    python bench/lightning_overhead.py [--repeats 7] [--steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dltips.integrations.lightning import DltipsCallback

BATCH = 64


class MLP(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.Tanh(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16 * BATCH + 256, 784, generator=g)
    y = torch.randint(0, 10, (len(x),), generator=g)
    train, valid = TensorDataset(x[:-256], y[:-256]), TensorDataset(x[-256:], y[-256:])
    return DataLoader(train, batch_size=BATCH, shuffle=True, generator=g), DataLoader(valid, batch_size=256)


def fit_seconds(with_callback: bool, steps: int) -> float:
    """Wall time of one `Trainer.fit` of `steps` steps (validations included)."""
    torch.manual_seed(0)
    callbacks = [DltipsCallback(print_report=False)] if with_callback else []
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=callbacks)
    model = MLP()
    train, valid = loaders()
    start = time.perf_counter()
    trainer.fit(model, train, valid)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    print(f"CPU, 1 thread, batch {BATCH}, {args.steps} steps per fit, {args.repeats} interleaved repeats; "
          f"DltipsCallback at its defaults (every=25)")
    fit_seconds(False, 20)  # warm-up: imports, kernels
    fit_seconds(True, 20)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for with_callback in (False, True):
            times[with_callback].append(fit_seconds(with_callback, args.steps))
    bare, watched = statistics.median(times[False]), statistics.median(times[True])
    ratio = statistics.median(w / b for w, b in zip(times[True], times[False]))
    print(f"bare Trainer.fit      {bare:.3f} s ({bare / args.steps * 1e3:.2f} ms/step)")
    print(f"with DltipsCallback   {watched:.3f} s ({watched / args.steps * 1e3:.2f} ms/step)")
    ratios = [w / b for w, b in zip(times[True], times[False])]
    print(f"fit time x{ratio:.3f} (median of per-repeat ratios; min x{min(ratios):.3f}, max x{max(ratios):.3f})")


if __name__ == "__main__":
    main()
