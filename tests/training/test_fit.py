import math
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import dltips.training.fit as fit_module
from dltips import Callback, NonFiniteLossError, Recipe, Task, evaluate, fit
from dltips.core.params import ParamError
from dltips.training.fit import ShardedSampler

HERE = os.path.dirname(__file__)


def blobs(n=240, seed=0, dtype=torch.float32):
    """Three Gaussian blobs in 4-D: an easy classification task."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    y = torch.randint(0, 3, (n,), generator=g)
    x = centers[y] + torch.randn(n, 4, generator=g)
    return TensorDataset(x.to(dtype), y)


def make_model(seed=0, dropout=0.1, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 3)).to(dtype)


def make_task(seed=0, **kw):
    return Task(make_model(seed, **kw.pop("model_kw", {})), blobs(240, 1), blobs(90, 2), batch_size=16, **kw)


def weights(model):
    return [p.detach().clone() for p in model.state_dict().values()]


def test_fit_learns_an_easy_task_and_reports_per_epoch_history():
    task = make_task()
    result = fit(task, epochs=3, progress=False)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.steps == 3 * (240 // 16)
    assert result.history[-1]["valid_accuracy"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_evaluate_matches_metrics_computed_by_hand():
    task = make_task()
    model = task.model.eval()
    metrics = evaluate(model, task, task.valid)
    x, y = task.valid.tensors
    with torch.no_grad():
        logits = model(x)
    assert math.isclose(metrics["valid_loss"], F.cross_entropy(logits, y).item(), rel_tol=1e-5)
    assert metrics["valid_accuracy"] == (logits.argmax(1) == y).sum().item() / len(y)

    torch.manual_seed(0)
    xr = torch.randn(50, 3)
    yr = xr.sum(1) + 0.1 * torch.randn(50)
    reg = Task(nn.Linear(3, 1), TensorDataset(xr, yr), TensorDataset(xr, yr), kind="regression", batch_size=8)
    m = evaluate(reg.model, reg, reg.valid)
    with torch.no_grad():
        err = reg.model(xr).squeeze(1) - yr
    assert math.isclose(m["valid_rmse"], err.pow(2).mean().sqrt().item(), rel_tol=1e-5)
    assert math.isclose(m["valid_mae"], err.abs().mean().item(), rel_tol=1e-5)
    assert math.isclose(m["valid_loss"], err.pow(2).mean().item(), rel_tol=1e-5)


def test_language_model_metrics_count_tokens():
    torch.manual_seed(0)
    seqs = torch.randint(0, 7, (20, 6))
    targets = seqs.roll(-1, dims=1)
    targets[:5, 3:] = -100
    model = nn.Embedding(7, 7)
    task = Task(model, TensorDataset(seqs, targets), TensorDataset(seqs, targets), kind="language-model", batch_size=3)
    m = evaluate(model, task, task.valid)
    with torch.no_grad():
        logits = model(seqs)
    want = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert math.isclose(m["valid_loss"], want.item(), rel_tol=1e-5)
    assert math.isclose(m["valid_perplexity"], math.exp(want.item()), rel_tol=1e-5)
    fit(task, epochs=1, progress=False)


def test_accumulation_in_fit_equals_the_large_batch_run():
    def run(batch_size, accumulate):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).double()
        task = Task(model, blobs(100, 1, torch.float64), blobs(30, 2, torch.float64), batch_size=batch_size)
        fit(task, epochs=2, recipe=Recipe(lr=1e-2, accumulate=accumulate), progress=False)
        return weights(model)

    # the epoch order does not depend on the batch size, so windows of 2 x 8 hold the same items as batches of 16
    for a, b in zip(run(16, 1), run(8, 2)):
        assert torch.allclose(a, b, atol=1e-10)


class StopAt(Callback):
    def __init__(self, step, hard=False):
        self.step, self.hard = step, hard

    def on_step_end(self, state):
        if state.step == self.step:
            if self.hard:
                os._exit(3)
            raise KeyboardInterrupt


RESUME_RECIPE = Recipe(mixup=0.4, max_grad_norm=1.0)


def test_resume_after_an_interruption_gives_the_uninterrupted_weights(tmp_path):
    task = make_task(model_kw={"dropout": 0.3})  # dropout and mixup draw random numbers: RNG must be restored
    fit(task, epochs=3, recipe=RESUME_RECIPE, progress=False)
    want = weights(task.model)

    broken = make_task(seed=0, model_kw={"dropout": 0.3})
    with pytest.raises(KeyboardInterrupt):
        fit(broken, epochs=3, recipe=RESUME_RECIPE, checkpoint_dir=tmp_path, checkpoint_every=4,
            callbacks=[StopAt(22)], progress=False)
    resumed = make_task(seed=123, model_kw={"dropout": 0.3})  # other initial weights: everything comes from the checkpoint
    result = fit(resumed, epochs=3, recipe=RESUME_RECIPE, checkpoint_dir=tmp_path, checkpoint_every=4, progress=False)
    assert result.steps == 45
    assert len(result.history) == 3
    for a, b in zip(weights(resumed.model), want):
        assert torch.equal(a, b)


class SetStop(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        state.stop = state.stop or state.step == self.step


def test_a_stopped_run_resumes_mid_epoch_and_max_steps_is_final(tmp_path):
    reference = make_task()
    fit(reference, epochs=2, progress=False)
    stopped = make_task()
    first = fit(stopped, epochs=2, checkpoint_dir=tmp_path, callbacks=[SetStop(20)], progress=False)
    assert first.steps == 20 and len(first.history) == 2  # the partial second epoch is evaluated too
    resumed = make_task(seed=5)
    result = fit(resumed, epochs=2, checkpoint_dir=tmp_path, progress=False)
    assert result.steps == 30 and [row["epoch"] for row in result.history] == [1, 2]
    for a, b in zip(weights(resumed.model), weights(reference.model)):
        assert torch.equal(a, b)

    capped = tmp_path / "capped"
    assert fit(make_task(), epochs=2, max_steps=7, checkpoint_dir=capped, progress=False).steps == 7
    again = fit(make_task(), epochs=2, max_steps=7, checkpoint_dir=capped, progress=False)
    assert again.steps == 7  # nothing left to train, and no step past the schedule


@pytest.mark.slow
def test_resume_after_the_process_is_killed(tmp_path):
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {HERE!r})
        from test_fit import make_task, StopAt, RESUME_RECIPE
        from dltips import fit
        fit(make_task(model_kw={{"dropout": 0.3}}), epochs=2, recipe=RESUME_RECIPE, checkpoint_dir={str(tmp_path)!r},
            checkpoint_every=5, callbacks=[StopAt(13, hard=True)], progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]

    resumed = make_task(seed=7, model_kw={"dropout": 0.3})
    fit(resumed, epochs=2, recipe=RESUME_RECIPE, checkpoint_dir=tmp_path, checkpoint_every=5, progress=False)
    reference = make_task(model_kw={"dropout": 0.3})
    fit(reference, epochs=2, recipe=RESUME_RECIPE, progress=False)
    for a, b in zip(weights(resumed.model), weights(reference.model)):
        assert torch.equal(a, b)


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    with pytest.raises(KeyboardInterrupt):  # a checkpoint at step 5, stopped at step 6
        fit(make_task(), epochs=2, checkpoint_dir=tmp_path, checkpoint_every=5, callbacks=[StopAt(6)], progress=False)
    before = (tmp_path / "last.pt").read_bytes()

    real_save = torch.save

    def failing_save(obj, f):
        real_save({"partial": True}, f)
        raise OSError("disk full")

    monkeypatch.setattr(fit_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):  # resumes, then fails writing the step-10 checkpoint
        fit(make_task(), epochs=2, checkpoint_dir=tmp_path, checkpoint_every=5, progress=False)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]


def test_resuming_with_another_schedule_is_refused(tmp_path):
    fit(make_task(), epochs=1, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="15 optimizer steps"):
        fit(make_task(), epochs=2, checkpoint_dir=tmp_path, progress=False)


def test_a_non_finite_loss_stops_training_naming_the_step_and_the_tips():
    calls = {"n": 0}

    def loss_that_breaks(output, target):
        calls["n"] += 1
        loss = F.cross_entropy(output, target)
        return loss * float("nan") if calls["n"] > 6 else loss  # calls 1-2 validate the Task; 3-6 are steps 1-4

    task = make_task(loss=loss_that_breaks)
    with pytest.raises(NonFiniteLossError, match=r"step 5 .*initialization.*update-ratio"):
        fit(task, epochs=1, progress=False)


def test_callbacks_see_events_in_order_and_can_stop():
    events = []

    class Recorder(Callback):
        def on_fit_start(self, s): events.append("fit_start")
        def on_epoch_start(self, s): events.append("epoch_start")
        def on_step_end(self, s):
            events.append("step")
            if s.step == 3:
                s.stop = True
        def on_eval_end(self, s, metrics): events.append(("eval", sorted(metrics)))
        def on_epoch_end(self, s): events.append("epoch_end")
        def on_fit_end(self, s): events.append("fit_end")

    result = fit(make_task(), epochs=5, callbacks=[Recorder()], progress=False)
    assert events == ["fit_start", "epoch_start", "step", "step", "step",
                      ("eval", ["valid_accuracy", "valid_balanced_accuracy", "valid_loss", "valid_macro_f1"]),
                      "epoch_end", "fit_end"]
    assert result.steps == 3


def test_bf16_training_reduces_the_loss():
    task = make_task()
    result = fit(task, epochs=2, recipe=Recipe(precision="bf16"), progress=False)
    assert result.history[-1]["valid_accuracy"] > 0.8


def test_progress_prints_one_line_per_epoch_when_not_a_terminal(capsys):
    fit(make_task(), epochs=2)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and "valid_accuracy" in lines[0]


def test_bad_arguments_are_reported():
    task = make_task()
    with pytest.raises(ValueError, match="epochs"):
        fit(task, epochs=0)
    with pytest.raises(ValueError, match="accumulate"):
        fit(task, recipe=Recipe(accumulate=0))
    with pytest.raises(ValueError, match="lr"):
        fit(task, recipe=Recipe(lr=-1.0))
    with pytest.raises(ParamError, match="epochs must be an int >= 1, got str"):
        fit(task, epochs="2")
    with pytest.raises(ParamError, match="checkpoint_every"):
        fit(task, checkpoint_every=0)
    with pytest.raises(ParamError, match="recipe.mixup is not defined for language models"):
        fit_module._make_mixup(SimpleNamespace(kind="language-model"), 0.4, None, None)


def test_sharded_sampler_resumes_mid_epoch_and_splits_like_distributed_sampler():
    full = ShardedSampler(10, seed=3)
    full.set_epoch(2)
    order = list(full)
    assert sorted(order) == list(range(10))
    part = ShardedSampler(10, seed=3)
    part.set_epoch(2, start=4)
    assert list(part) == order[4:]
    shards = []
    for rank in range(3):
        s = ShardedSampler(10, seed=3, rank=rank, world_size=3)
        s.set_epoch(2)
        shards.append(list(s))
    padded = order + order[:2]
    assert shards == [padded[r::3] for r in range(3)]
    ref = torch.utils.data.DistributedSampler(range(10), num_replicas=3, rank=1, shuffle=False)
    s = ShardedSampler(10, shuffle=False, rank=1, world_size=3)
    assert list(s) == list(ref)


@pytest.mark.slow
def test_fit_under_torchrun_with_two_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(HERE, "ddp_fit_script.py"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for a, b in zip(r0["weights"], r1["weights"]):
        assert torch.equal(a, b)
    assert os.listdir(tmp_path / "ckpt") == ["last.pt"]  # rank 0 alone wrote a checkpoint
    for r in (r0, r1):  # fit left the group it joined, and nothing it made keeps a DDP wrapper (and the group) alive
        assert r["group_left"] and r["wrappers_alive"] == 0 and r["findings"] > 0

    # the same steps in one process: each global batch is the union of both ranks' batches
    import ddp_fit_script as script

    task = script.make_task()
    model = task.model
    opt = torch.optim.SGD(model.parameters(), lr=script.LR)
    samplers = [ShardedSampler(len(task.train), seed=0, rank=r, world_size=2) for r in (0, 1)]
    x_all, y_all = task.train.tensors
    for epoch in range(script.EPOCHS):
        shards = []
        for s in samplers:
            s.set_epoch(epoch)
            shards.append(s.shard())
        b = task.batch_size
        for i in range(len(shards[0]) // b):
            idx = shards[0][i * b:(i + 1) * b] + shards[1][i * b:(i + 1) * b]
            opt.zero_grad()
            F.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
            opt.step()
    for a, b in zip(r0["weights"], weights(model)):
        assert torch.allclose(a, b, atol=1e-10)
    assert math.isclose(r0["history"][-1]["valid_accuracy"], evaluate(model, task, task.valid)["valid_accuracy"])
    assert r0["history"] == r1["history"]  # metrics reduced over both ranks


def test_time_limit_stops_training_at_a_sync_and_reports_the_step():
    import time

    from dltips.training.callbacks import TimeLimit

    class Slow(Callback):
        def on_step_end(self, state):
            time.sleep(0.02)

    limit = TimeLimit(0.3)
    result = fit(make_task(), epochs=50, progress=False, sync_every=4, callbacks=[Slow(), limit])
    assert limit.stopped_at is not None and (limit.stopped_at % 4 == 0 or limit.stopped_at % 15 == 0)  # at a sync
    assert result.steps == limit.stopped_at < 50 * 4  # far fewer than the planned steps
    assert result.steps <= 0.3 / 0.02 + 4  # the sync after the deadline: at most 4 steps late
    assert result.duration_s >= 0.3
    with pytest.raises(ParamError, match="seconds must be a finite number > 0"):
        TimeLimit(0)
    untouched = TimeLimit(60.0)
    fit(make_task(), epochs=1, progress=False, callbacks=[untouched])
    assert untouched.stopped_at is None
