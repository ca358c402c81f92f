"""Task.step: the user's own training step, checked when the Task is built and run by every training dltips does."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dltips
from dltips import ParamError, Recipe, Task, TaskError, fit, lr_find
from dltips.core.state import get_rng_state
from dltips.task import as_loss, gradients_seen
from dltips.task import plain_step


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def plain(model, batch, optimizer):
    x, y = batch
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss


def make_task(step, **kw):
    return Task(model(), data(), data(32, seed=1), batch_size=16, optimizer=sgd, step=step, **kw)


def test_a_valid_step_is_run_once_on_a_copy_and_leaves_model_and_rng_as_they_were():
    net, calls = model(), []

    def step(m, batch, optimizer):
        calls.append(m is net)
        torch.rand(3)  # a draw from the global generator (dropout would draw too)
        return plain(m, batch, optimizer)

    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = get_rng_state()
    task = Task(net, data(), data(32, seed=1), batch_size=16, optimizer=sgd, step=step)
    assert calls == [False]  # run once, on a copy
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(get_rng_state()["torch"], rng["torch"])
    assert task.summary()["own_step"] is True


@pytest.mark.parametrize("step, words", [
    (lambda m, b, o: None, "returns its loss"),
    (lambda m, b, o: F.cross_entropy(m(b[0]), b[1], reduction="none"), "returned a tensor of shape (16,)"),
    (lambda m, b, o: F.cross_entropy(m(b[0]), b[1]).detach(), "loss.backward()"),
    (lambda m, b, o: (F.cross_entropy(m(b[0]), b[1]).backward(), torch.tensor(1.0))[1], "optimizer.step()"),
    (lambda m, b, o: m(b[0][:, :4]), "an error on a training batch of 16 items: RuntimeError"),
    ("not callable", "a callable or None"),
])
def test_a_step_that_does_not_do_its_job_is_a_task_error_naming_what_it_missed(step, words):
    with pytest.raises(TaskError, match="Task.step") as error:
        make_task(step)
    assert words in str(error.value)


def test_a_step_that_calls_backward_and_step_but_returns_a_float_is_accepted():
    def step(m, batch, optimizer):
        return plain(m, batch, optimizer).item()  # the nanoGPT habit: loss.item() for logging

    assert make_task(step).step is step
    assert torch.equal(as_loss(2.5), torch.tensor(2.5))


def test_the_plain_step_is_zero_grad_forward_backward_step():
    x, y = data(16).tensors
    a, b = model(), model()
    opt_a, opt_b = sgd(a.parameters()), sgd(b.parameters())
    for p in a.parameters():
        p.grad = torch.ones_like(p)  # stale gradients: the step must zero them first
    loss = plain_step(a, (x, y), opt_a, F.cross_entropy)
    by_hand = F.cross_entropy(b(x), y)
    by_hand.backward()
    opt_b.step()
    assert not loss.requires_grad and loss.item() == by_hand.item()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad)


def test_gradients_seen_counts_gradients_that_the_step_zeroes_afterwards():
    net = model()
    params = list(net.parameters())
    params[0].requires_grad_(True)
    x, y = data(16).tensors

    def zero_after(m, batch, optimizer):
        loss = F.cross_entropy(m(batch[0])[:, :2] * 0 + m[2].bias[:2], batch[1].clamp(max=1))  # only the last bias
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    with gradients_seen(params) as reached:
        zero_after(net, (x, y), sgd(net.parameters()))
    assert reached == {3}  # the last layer's bias alone got a non-zero gradient, read before it was zeroed
    assert all(p.grad is None for p in params)


def test_fit_with_the_plain_step_as_the_tasks_step_trains_like_fit_without_it():
    results = []
    for step in (None, plain):
        task = make_task(step)
        result = fit(task, epochs=2, recipe=Recipe(one_cycle=True), seed=0, progress=False)
        results.append(([p.detach().clone() for p in task.model.parameters()], result))
    (w0, r0), (w1, r1) = results
    assert r0.steps == r1.steps == 8
    for a, b in zip(w0, w1):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert math.isclose(r0.history[-1]["train_loss"], r1.history[-1]["train_loss"], rel_tol=1e-12)


def test_fit_runs_the_tasks_step_once_per_optimizer_step_with_the_batch_on_the_device():
    seen, net = [], model()

    def step(m, batch, optimizer):
        x, y = batch
        if m is net:  # not the Task's check, which runs it on a copy (when built, and again in fit)
            seen.append((len(y), optimizer.param_groups[0]["lr"], x.device))
        return plain(m, batch, optimizer)

    task = Task(net, data(), data(32, seed=1), batch_size=16, optimizer=sgd, step=step)
    result = fit(task, epochs=1, recipe=Recipe(one_cycle=False, lr=0.05), progress=False)
    assert result.steps == len(seen) == 4 and all(n == 16 and lr == 0.05 for n, lr, _ in seen)
    assert all(device == next(task.model.parameters()).device for *_, device in seen)


@pytest.mark.parametrize("recipe, names", [
    (Recipe(accumulate=2), "recipe.accumulate"),
    (Recipe(max_grad_norm=1.0, mixup=0.2), "recipe.mixup, recipe.max_grad_norm"),
    (Recipe(precision="bf16"), "recipe.precision"),
])
def test_fit_refuses_recipe_parts_that_the_tasks_own_step_does_itself(recipe, names):
    with pytest.raises(ParamError, match="cannot be combined with Task.step") as error:
        fit(make_task(plain), epochs=1, recipe=recipe, progress=False)
    assert names in str(error.value)


def test_lr_find_runs_the_given_step_and_matches_the_plain_step():
    loader = DataLoader(data(), batch_size=16, shuffle=False)
    results, calls = [], []

    def counted(m, batch, optimizer):
        calls.append(1)
        return plain(m, batch, optimizer)

    for step in (None, counted):
        net = model()
        results.append(lr_find(net, sgd(net.parameters()), loader, F.cross_entropy, num_steps=20, step=step,
                               diverge=math.inf))
    assert len(calls) == 20
    assert results[0].raw_losses == results[1].raw_losses
    with pytest.raises(ParamError, match="step must be callable"):
        lr_find(model(), sgd(model().parameters()), loader, F.cross_entropy, step="no")


def test_the_doctor_runs_the_tasks_step_and_names_a_missing_zero_grad():
    def no_zero_grad(m, batch, optimizer):  # the classic bug: gradients carried into the next step
        x, y = batch
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        optimizer.step()
        return loss

    checks = ["overfit-tiny", "activation-gradient-stats", "update-ratio", "gradient-accumulation"]
    bugged = dltips.doctor(make_task(no_zero_grad, name="bugged"), budget_s=30, only=checks, progress=False)
    healthy = dltips.doctor(make_task(plain, name="healthy"), budget_s=30, only=checks, progress=False)
    found = [f for f in bugged.findings if f.evidence.get("cause") == "zero-grad-missing"]
    assert found and found[0].status == "fail" and found[0].tip == "gradient-accumulation"
    assert not [f.title for f in healthy.findings if f.status in ("warn", "fail")]


def test_a_report_says_when_the_tasks_own_step_trained_it():
    from dltips.diagnosis.text import task_facts

    assert ("training step", "the Task's own") in task_facts(make_task(plain).summary())
    labels = [label for label, _ in task_facts(make_task(None).summary())]
    assert "training step" not in labels and "own_step" not in labels
