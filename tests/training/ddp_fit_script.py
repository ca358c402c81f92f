"""Run by test_fit.py under torchrun: a 2-process fit whose result the test checks."""

import gc
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

from dltips import Recipe, Task, Watch, fit

LR, EPOCHS = 0.05, 2


def make_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    return Task(model, TensorDataset(x[:150], y[:150]), TensorDataset(x[150:], y[150:]), batch_size=10,
                optimizer=lambda params: torch.optim.SGD(params, lr=LR))


if __name__ == "__main__":
    out = sys.argv[1]
    task = make_task()
    watch = Watch(every=5)  # a callback that saw the DDP wrapper and outlives fit
    result = fit(task, epochs=EPOCHS, recipe=Recipe(one_cycle=False), checkpoint_dir=os.path.join(out, "ckpt"),
                 progress=False, callbacks=[watch])
    rank = int(os.environ["RANK"])
    weights = [p.detach().clone() for p in task.model.state_dict().values()]
    gc.collect()
    wrappers = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    torch.save({"weights": weights, "history": result.history, "wrappers_alive": wrappers,
                "group_left": not dist.is_initialized(), "findings": len(watch.findings())},
               os.path.join(out, f"rank{rank}.pt"))
