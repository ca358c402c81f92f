"""Calibration sweep for `dltips.training.lr.default_lr` (AdamW).

Trains MLP students of several sizes to imitate a fixed random teacher
network, for a fixed number of AdamW steps (linear warm-up, cosine decay)
over a grid of peak learning rates, and prints per size the best grid LR,
the LR the rule gives, and the held-out loss at each. A ratio near 1 means
the rule's LR is about as good as the best one on the grid.

Run: python bench/default_lr.py   (2-3 minutes on 2 CPU cores)
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from dltips.training.lr import default_lr

D_IN = 16
STEPS = 400
BATCH = 64
WIDTHS = (24, 64, 160, 360, 700)  # 3 hidden layers: ~1.6e3 .. ~1e6 parameters
LR_GRID = [10 ** (k / 3) for k in range(-11, -3)]  # 2.2e-4 .. 4.6e-2, a third of a decade apart
SEEDS = (0, 1)


def mlp(width: int, depth: int = 3, d_in: int = D_IN) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.GELU()]
        d = width
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


@torch.no_grad()
def make_teacher(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(1000 + seed)
    teacher = nn.Sequential(nn.Linear(D_IN, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    for p in teacher.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * (1.5 / math.sqrt(p.shape[-1]) if p.dim() > 1 else 0.1))
    x = torch.randn(4096, D_IN, generator=g)
    y = teacher(x)
    teacher.append(_Standardize(y.mean(), y.std()))
    return teacher.requires_grad_(False)


class _Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.mean, self.std = float(mean), float(std)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean) / self.std


def warmup_cosine(step: int) -> float:
    warm = STEPS // 10
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / (STEPS - warm)))


def run(job: tuple[int, float, int]) -> float:
    """Held-out MSE after STEPS AdamW steps at peak LR ``lr`` (inf if it blew up)."""
    width, lr, seed = job
    torch.set_num_threads(1)
    teacher = make_teacher(seed)
    x_test = torch.randn(2048, D_IN, generator=torch.Generator().manual_seed(10_000 + seed))
    y_test = teacher(x_test)
    torch.manual_seed(seed)
    model = mlp(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine)
    g = torch.Generator().manual_seed(seed)
    for _ in range(STEPS):
        x = torch.randn(BATCH, D_IN, generator=g)
        loss = nn.functional.mse_loss(model(x), teacher(x))
        if not torch.isfinite(loss):
            return math.inf
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        test = nn.functional.mse_loss(model(x_test), y_test).item()
    return test if math.isfinite(test) else math.inf


@dataclass
class Row:
    width: int
    params: int
    best_lr: float
    best_loss: float
    rule_lr: float
    rule_loss: float


def sweep(workers: int) -> list[Row]:
    sizes = {w: sum(p.numel() for p in mlp(w).parameters()) for w in WIDTHS}
    grids = {w: sorted(set(LR_GRID) | {default_lr(n)}) for w, n in sizes.items()}
    # Largest models first so the workers finish together.
    jobs = [(w, lr, seed) for w in reversed(WIDTHS) for lr in grids[w] for seed in SEEDS]
    with mp.get_context("spawn").Pool(workers) as pool:
        losses = dict(zip(jobs, pool.map(run, jobs, chunksize=1)))
    rows = []
    for w, n in sizes.items():
        mean_loss = {lr: sum(losses[w, lr, s] for s in SEEDS) / len(SEEDS) for lr in grids[w]}
        best = min(LR_GRID, key=mean_loss.__getitem__)
        rule = default_lr(n)
        rows.append(Row(w, n, best, mean_loss[best], rule, mean_loss[rule]))
        curve = "  ".join(f"{lr:.1e}:{mean_loss[lr]:.3f}" for lr in LR_GRID)
        print(f"{n:.1e} params, loss by lr: {curve}")
    return rows


def main() -> None:
    t0 = time.perf_counter()
    rows = sweep(workers=min(2, os.cpu_count() or 1))
    print()
    print(f"{'params':>9} {'best lr':>9} {'rule lr':>9} {'best loss':>10} {'rule loss':>10} {'ratio':>6}")
    for r in rows:
        print(
            f"{r.params:9.2e} {r.best_lr:9.2e} {r.rule_lr:9.2e} {r.best_loss:10.4f} "
            f"{r.rule_loss:10.4f} {r.rule_loss / r.best_loss:6.2f}"
        )
    print(f"\n{len(SEEDS)} seeds, {STEPS} AdamW steps of batch {BATCH}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
