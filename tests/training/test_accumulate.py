import gc
import math
import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from dltips.core.params import ParamError
from dltips.training.accumulate import GradientAccumulator
from dltips.training.precision import MixedPrecision


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients it was asked to apply."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, lr=lr)
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.seen.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def big_batch_grads(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_window_gradient_equals_one_big_batch_including_short_last_window():
    torch.manual_seed(1)
    x, y = torch.randn(17, 5, dtype=torch.float64), torch.randint(0, 3, (17,))
    sizes = [2, 3, 2, 4, 1, 3, 2]  # unequal micro-batches; window 3 -> windows of 7, 8 and 2 items (short last)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    model = mlp()
    reference = mlp()
    opt = RecordingSGD(model.parameters(), lr=0.0)  # lr 0: weights stay equal to the reference's
    acc = GradientAccumulator(model, opt, window=3)
    for i, (s, n) in enumerate(zip(starts, sizes)):
        with acc.micro_batch(n_items=n, last=i == len(sizes) - 1):
            acc.backward(F.cross_entropy(model(x[s:s + n]), y[s:s + n], reduction="sum"))
        assert acc.stepped == ((i + 1) % 3 == 0 or i == len(sizes) - 1)
    assert len(opt.seen) == 3
    windows = [(0, 7), (7, 15), (15, 17)]
    for seen, (a, b) in zip(opt.seen, windows):
        for got, want in zip(seen, big_batch_grads(reference, x[a:b], y[a:b])):
            assert (got - want).abs().max() <= 1e-6
    assert all(p.grad is None for p in model.parameters())  # zeroed after the step


def test_token_counts_for_a_language_model_window():
    torch.manual_seed(2)
    emb = nn.Embedding(11, 11).double()
    seqs = torch.randint(0, 11, (6, 5))
    targets = torch.randint(0, 11, (6, 5))
    targets[0, :3] = -100  # padding: not counted
    targets[4, 1:] = -100
    opt = RecordingSGD(emb.parameters(), lr=0.0)
    acc = GradientAccumulator(emb, opt, window=3)
    for i in range(3):
        xb, yb = seqs[2 * i:2 * i + 2], targets[2 * i:2 * i + 2]
        with acc.micro_batch(n_items=(yb != -100).sum()):
            acc.backward(F.cross_entropy(emb(xb).flatten(0, 1), yb.flatten(), reduction="sum"))
    emb.zero_grad()
    F.cross_entropy(emb(seqs).flatten(0, 1), targets.flatten()).backward()  # mean over counted tokens
    assert (opt.seen[0][0] - emb.weight.grad).abs().max() <= 1e-6


def test_clipping_applies_to_the_window_mean_gradient():
    torch.manual_seed(3)
    x, y = torch.randn(8, 5, dtype=torch.float64) * 10, torch.randint(0, 3, (8,))
    model, reference = mlp(), mlp()
    opt = RecordingSGD(model.parameters(), lr=0.0)
    acc = GradientAccumulator(model, opt, window=2, max_grad_norm=0.01)
    for s in (0, 4):
        with acc.micro_batch(n_items=4):
            acc.backward(F.cross_entropy(model(x[s:s + 4]), y[s:s + 4], reduction="sum"))
    want = big_batch_grads(reference, x, y)
    want_norm = torch.sqrt(sum(g.pow(2).sum() for g in want))
    assert want_norm > 0.01
    got_norm = torch.sqrt(sum(g.pow(2).sum() for g in opt.seen[0]))
    assert torch.isclose(got_norm, torch.tensor(0.01, dtype=torch.float64), rtol=1e-5)
    for got, w in zip(opt.seen[0], want):  # same direction as the big batch's gradient
        assert torch.allclose(got, w * (0.01 / want_norm), atol=1e-9)
    assert torch.isclose(acc.last_grad_norm, want_norm)


def test_fp16_scaling_is_undone_before_division():
    torch.manual_seed(4)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    model, reference = mlp(dtype=torch.float32), mlp(dtype=torch.float32)
    opt = RecordingSGD(model.parameters(), lr=0.0)
    amp = MixedPrecision("fp16", device_type="cpu")
    acc = GradientAccumulator(model, opt, window=2, precision=amp)
    for s in (0, 4):
        with acc.micro_batch(n_items=4):
            acc.backward(F.cross_entropy(model(x[s:s + 4]), y[s:s + 4], reduction="sum"))  # no autocast: exact fp32
    for got, want in zip(opt.seen[0], big_batch_grads(reference, x, y)):
        assert torch.allclose(got, want, atol=1e-6)


def test_batchnorm_warns_once_naming_the_tip_and_only_when_accumulating():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="gradient-accumulation") as record:
        GradientAccumulator(model, opt, window=4)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GradientAccumulator(model, opt, window=1)


def test_misuse_is_reported():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="window"):
        GradientAccumulator(model, opt, window=0)
    with pytest.raises(ParamError, match="window must be an int >= 1, got str"):
        GradientAccumulator(model, opt, window="2")
    with pytest.raises(ParamError, match="max_grad_norm"):
        GradientAccumulator(model, opt, max_grad_norm=0.0)
    GradientAccumulator(model, opt, max_grad_norm=math.inf)  # inf measures the norm without clipping
    acc = GradientAccumulator(model, opt, window=2)
    with pytest.raises(RuntimeError, match="micro_batch"):
        acc.backward(model(torch.randn(2, 5, dtype=torch.float64)).sum())


# --- DDP: no_sync on all but the last micro-batch, exact gradients across 2 processes ---

def _ddp_worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    x, y = torch.randn(24, 5, dtype=torch.float64), torch.randint(0, 3, (24,))
    model = torch.nn.parallel.DistributedDataParallel(mlp())
    calls = []

    def counting_allreduce(state, bucket):
        calls.append(1)
        tensor = bucket.buffer().div_(world_size)
        return dist.all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])

    model.register_comm_hook(None, counting_allreduce)
    opt = RecordingSGD(model.parameters(), lr=0.0)
    acc = GradientAccumulator(model, opt, window=3)
    # rank 0 gets micro-batches of 2 items, rank 1 of 4: unequal counts across ranks
    n = 2 if rank == 0 else 4
    base = 0 if rank == 0 else 6
    for i in range(3):
        s = base + i * n
        with acc.micro_batch(n_items=n):
            acc.backward(F.cross_entropy(model(x[s:s + n]), y[s:s + n], reduction="sum"))
    torch.save({"grads": opt.seen[0], "calls": len(calls)}, os.path.join(out_dir, f"rank{rank}.pt"))
    del acc, model  # the DDP wrapper holds the group: free it first (gloo aborts a process that frees it at exit)
    gc.collect()
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_accumulation_syncs_once_per_window_and_is_exact(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["calls"] == r1["calls"] == 1  # one all-reduce for the window (one bucket), not three
    torch.manual_seed(0)
    x, y = torch.randn(24, 5, dtype=torch.float64), torch.randint(0, 3, (24,))
    want = big_batch_grads(mlp(), x[:18], y[:18])  # all 6 + 12 items as one batch
    for grads in (r0["grads"], r1["grads"]):
        for got, w in zip(grads, want):
            assert (got - w).abs().max() <= 1e-6
