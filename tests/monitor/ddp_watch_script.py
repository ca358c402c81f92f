"""Run by test_watch_ddp.py under torchrun: a 2-process DDP loop inside dltips.watch."""

import gc
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dltips import watch

STEPS, EVERY, BATCH = 6, 2, 8


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).double()


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS * 2 * BATCH, 4, generator=g, dtype=torch.float64)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def batches(rank):
    """The global batch of step s is rows [2*BATCH*s, 2*BATCH*(s+1)); rank r takes its r-th half."""
    x, y = data()
    for s in range(STEPS):
        start = 2 * BATCH * s + rank * BATCH
        yield x[start:start + BATCH], y[start:start + BATCH]


if __name__ == "__main__":
    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = DistributedDataParallel(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, optimizer, every=EVERY, sinks=[os.path.join(out, "watch.jsonl")]) as w:
        for x, y in batches(rank):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            w.log(loss=loss)
    torch.save({"samples": w.samples}, os.path.join(out, f"rank{rank}.pt"))
    del model, optimizer, w  # the DDP wrapper holds the group: free it first (gloo aborts a process that frees it at exit)
    gc.collect()
    dist.destroy_process_group()
