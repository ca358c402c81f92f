"""dltips.watch under torch.distributed: statistics merged across ranks, written by rank 0 only."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

HERE = os.path.dirname(__file__)


@pytest.mark.slow
def test_watch_under_torchrun_merges_ranks_and_only_rank_0_writes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(HERE, "ddp_watch_script.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["rank0.pt", "rank1.pt", "watch.jsonl"]
    from dltips.monitor.sinks import read_jsonl

    records = read_jsonl(tmp_path / "watch.jsonl")
    assert [r["step"] for r in records] == [0, 2, 4]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False)["samples"] for r in (0, 1))

    # the same steps in one process on the global batches
    sys.path.insert(0, HERE)
    import ddp_watch_script as script

    model = script.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x_all, y_all = script.data()
    b = 2 * script.BATCH
    for step in range(script.STEPS):
        x, y = x_all[step * b:(step + 1) * b], y_all[step * b:(step + 1) * b]
        hidden = model[0](x)
        if step % script.EVERY == 0:
            sample = r0[step // script.EVERY]
            assert sample.step == step
            h = hidden.detach().numpy()
            assert sample.activation("0", "n") == h.size
            assert sample.activation("0", "mean") == pytest.approx(h.mean(), rel=1e-6)
            assert sample.activation("0", "var") == pytest.approx(h.var(), rel=1e-6)
            assert sample.activation("0", "min") == pytest.approx(h.min())
            assert sample.activation("0", "max") == pytest.approx(h.max())
            assert sample.activations["0"][7:].sum() == pytest.approx(h.size)  # both ranks' histograms merged
            before = [p.detach().clone() for p in model.parameters()]
        loss = F.cross_entropy(model[2](torch.relu(hidden)), y)
        optimizer.zero_grad()
        loss.backward()
        if step % script.EVERY == 0:
            grad = model[0].weight.grad.numpy()
            assert sample.gradient("0.weight", "norm") == pytest.approx(np.linalg.norm(grad), rel=1e-5)
        optimizer.step()
        if step % script.EVERY == 0:
            change = (model[0].weight.detach() - before[0]).norm() / before[0].norm()
            assert sample.updates["0.weight"] == pytest.approx(change.item(), rel=1e-5)
    for a, b_ in zip(r0, r1):  # every rank ends with the same merged statistics
        assert a.step == b_.step
        assert np.allclose(a.activations["0"], b_.activations["0"], equal_nan=True)
