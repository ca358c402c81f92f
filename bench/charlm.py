"""The charlm demo model: training throughput through `dltips.fit`, and what the recipe buys in validation loss.

1. Throughput. The demo's `CharGPT` (`--size`, default "small"; batch 32 of 128
   characters) trained for `--steps` steps by `dltips.fit` (AdamW at
   `default_lr`, one-cycle) and by a hand-written loop doing the same work
   (AdamW at the same LR, `OneCycle`, a shuffled DataLoader, one evaluation of
   the same 32 validation windows at the end). Each timing covers everything
   from the untrained model to the evaluated one, so fit's setup (Task
   validation, sampler, sync) is included. The two are interleaved in one
   process; tokens/s are medians over `--repeats`, and the ratio fit /
   hand-written is the median of the per-repeat ratios.
2. Recipe. Validation loss (nats/char, the whole validation split) after
   `--train-steps` optimizer steps with the recipe (AdamW at `default_lr` +
   one-cycle) against AdamW at the same LR held constant (`Recipe(one_cycle=
   False)`), same steps, same seed, for each of `--seeds`. The unigram entropy
   of the training text and ln V are printed for reference.

    python bench/charlm.py [--size small] [--repeats 5] [--steps 40] [--train-steps 400] [--seeds 0 1 2]
    python bench/charlm.py --quick      # about 2 minutes on one CPU thread: --repeats 3 --steps 20 --train-steps 150 --seeds 0 1
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from dltips import OneCycle, Recipe, Task, default_lr, fit
from dltips.demos.charlm import charlm_task, unigram_entropy

BATCH, SEQ_LEN = 32, 128
EVAL_WINDOWS = 32  # validation windows evaluated at the end of each throughput run


def throughput_task(size: str) -> Task:
    """The demo Task with a small validation set, so that both loops spend their time training."""
    task = charlm_task(size, seed=0, batch_size=BATCH, seq_len=SEQ_LEN)
    task.valid = Subset(task.valid, range(EVAL_WINDOWS))
    return task


def hand_written(size: str, steps: int) -> float:
    """Tokens per second of a plain PyTorch loop: AdamW at default_lr, OneCycle, mean cross-entropy."""
    task = throughput_task(size)
    model = task.model
    start = time.perf_counter()
    lr = default_lr(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = OneCycle(optimizer, max_lr=lr, total_steps=steps, pct_start=0.25)
    loader = DataLoader(task.train, batch_size=BATCH, shuffle=True, drop_last=True)
    model.train()
    for step, (x, y) in enumerate(loader):
        if step == steps:
            break
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        total = sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item()
                    for x, y in DataLoader(task.valid, batch_size=BATCH))
    assert math.isfinite(total)
    return steps * BATCH * SEQ_LEN / (time.perf_counter() - start)


def with_fit(size: str, steps: int) -> float:
    """Tokens per second of `dltips.fit` with the recipe on the same Task."""
    task = throughput_task(size)
    start = time.perf_counter()
    result = fit(task, epochs=1, max_steps=steps, progress=False)
    assert result.steps == steps
    return steps * BATCH * SEQ_LEN / (time.perf_counter() - start)


def valid_loss(size: str, steps: int, seed: int, one_cycle: bool) -> float:
    """Validation loss after `steps` steps of fit, with one-cycle or at a constant LR (AdamW at default_lr)."""
    task = charlm_task(size, seed=seed, batch_size=BATCH, seq_len=SEQ_LEN)
    result = fit(task, epochs=math.ceil(steps * BATCH / len(task.train)), recipe=Recipe(one_cycle=one_cycle),
                 max_steps=steps, seed=seed, progress=False)
    return result.history[-1]["valid_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="steps per throughput run")
    parser.add_argument("--train-steps", type=int, default=400, help="steps per recipe comparison run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="--repeats 3 --steps 20 --train-steps 150 --seeds 0 1")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps, args.train_steps, args.seeds = 3, 20, 150, [0, 1]

    task = charlm_task(args.size, batch_size=BATCH, seq_len=SEQ_LEN)
    n_params = sum(p.numel() for p in task.model.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; charlm {args.size}: {n_params:,} parameters, "
          f"vocabulary {task.n_classes}, {len(task.train)} training windows, batch {BATCH} x {SEQ_LEN} characters, "
          f"default_lr {default_lr(task.model):.2e}")

    hand_written(args.size, 3)  # warm-up both paths (first optimizer, kernels)
    with_fit(args.size, 3)
    base, ours, ratios = [], [], []
    for _ in range(args.repeats):
        b = hand_written(args.size, args.steps)
        f = with_fit(args.size, args.steps)
        base.append(b)
        ours.append(f)
        ratios.append(f / b)
    print(f"\nthroughput, {args.steps} steps, {args.repeats} interleaved repeats")
    print(f"  hand-written loop: median {statistics.median(base):,.0f} tokens/s")
    print(f"  dltips.fit:        median {statistics.median(ours):,.0f} tokens/s")
    print(f"  ratio fit / hand-written: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")

    train_ids = task.train.tensors[1]
    print(f"\nvalidation loss after {args.train_steps} steps (nats/char; unigram entropy of the training text "
          f"{unigram_entropy(train_ids, task.n_classes):.3f}, ln V {math.log(task.n_classes):.3f})")
    print("  seed  one-cycle  constant LR  difference")
    gaps = []
    for seed in args.seeds:
        cycle = valid_loss(args.size, args.train_steps, seed, one_cycle=True)
        constant = valid_loss(args.size, args.train_steps, seed, one_cycle=False)
        gaps.append(constant - cycle)
        print(f"  {seed:>4}  {cycle:9.3f}  {constant:11.3f}  {constant - cycle:+10.3f}")
    print(f"  median difference constant - one-cycle: {statistics.median(gaps):+.3f} nats/char")


if __name__ == "__main__":
    main()
