"""`dltips.fit` with a `dltips.Watch`, on one process or many: the same script either way.

    python examples/torchrun_fit.py                            # one process
    torchrun --nproc_per_node=2 examples/torchrun_fit.py       # 2 processes on this machine (N GPUs: N)
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 \\
             --master_addr=10.0.0.1 --master_port=29500 examples/torchrun_fit.py   # node 0 of 2; node 1: --node_rank=1

The only change is the launcher: `python` becomes `torchrun --nproc_per_node=N`.
Under torchrun, `fit` joins the process group (NCCL on GPUs, gloo on CPUs),
wraps the model in DistributedDataParallel, gives each rank its shard of the
training data (each optimizer step is one global batch of N x batch_size rows),
and evaluates over all ranks: the validation metrics are computed from sums
all-reduced across ranks, so every rank gets the same history. The watch gathers
the activation statistics of all ranks and merges them; gradients and weights
are already equal on every rank after DDP's all-reduce. Only rank 0 prints here,
as only rank 0 writes the watch's sinks and fit's checkpoints.
"""

from __future__ import annotations

import os

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

import dltips


def digits_task(n_valid: int = 300, seed: int = 0) -> dltips.Task:
    """scikit-learn's 8x8 digits (flattened, standardised) and a small MLP, as a dltips Task."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, valid = order[n_valid:], order[:n_valid]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    torch.manual_seed(seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    return dltips.Task(model, TensorDataset(x[train], y[train]), TensorDataset(x[valid], y[valid]),
                       kind="classification", n_classes=10, batch_size=32, name="digits-mlp")


def main() -> None:
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun; 0 under plain python
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    task = digits_task()
    watch = dltips.Watch(every=5)
    result = dltips.fit(task, epochs=4, callbacks=[watch])
    findings = watch.findings()  # the same on every rank: the statistics were merged during training
    if rank != 0:
        return
    last = result.history[-1]
    print(f"{world_size} process(es): {result.steps} optimizer steps in {result.duration_s:.1f}s; "
          f"valid_loss {last['valid_loss']:.4f}, valid_accuracy {last['valid_accuracy']:.4f}")
    for finding in findings:
        print(f"  {finding.status.upper():4}  {finding.tip}: {finding.title}")


if __name__ == "__main__":
    main()
