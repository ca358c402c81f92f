"""Mixup on tabular rows: validation RMSE of the tabular demo with and without mixup, at several training lengths.

Run:
    python bench/tabular_mixup.py                  # epochs 5, 10, 20, 40; seeds 0, 1, 2 (about 2 minutes on 2 cores)
    python bench/tabular_mixup.py --epochs 5 10 --seeds 0

The tip says mixup works on tabular rows and embeddings but needs longer
training. Each run trains the demo's `TabularModel` (the messy-streets table,
1,200 training rows) with `dltips.fit` and the recipe's one-cycle schedule,
with `Recipe(mixup=None)` and `Recipe(mixup=alpha)`, for the same number of
epochs; runs are interleaved (baseline, mixup, baseline, ...). Printed per
length: median validation RMSE of each (min-max over seeds) and the median of
the per-seed ratios mixup / baseline. The least RMSE possible is the noise,
0.30.
"""

from __future__ import annotations

import argparse
import statistics

from dltips.demos.tabular import tabular_task
from dltips.training.fit import Recipe, fit


def valid_rmse(epochs: int, seed: int, mixup: float | None) -> float:
    task = tabular_task(seed=seed)
    result = fit(task, epochs=epochs, recipe=Recipe(mixup=mixup), seed=seed, device="cpu", progress=False)
    return result.history[-1]["valid_rmse"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alpha", type=float, default=0.4)
    args = parser.parse_args()
    print(f"tabular demo, TabularModel, AdamW + one-cycle; mixup alpha {args.alpha}; validation RMSE (noise floor 0.30)")
    print(f"{'epochs':>6}  {'baseline':>22}  {'mixup':>22}  {'mixup / baseline':>16}")
    for epochs in args.epochs:
        base, mixed = [], []
        for seed in args.seeds:
            base.append(valid_rmse(epochs, seed, None))
            mixed.append(valid_rmse(epochs, seed, args.alpha))
        ratio = statistics.median(m / b for m, b in zip(mixed, base))
        print(f"{epochs:>6}  {_spread(base):>22}  {_spread(mixed):>22}  {ratio:>16.3f}", flush=True)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


if __name__ == "__main__":
    main()
