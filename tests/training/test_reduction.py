"""The loss's reduction over items, read from a batch fed twice over, and the summed-loss cause."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dltips import Task
from dltips.training.reduction import check_loss_reduction, loss_reduction, sum_reduction_cause


def classes(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g))


def task_with(loss, optimizer=None, batch_size=16):
    torch.manual_seed(0)
    return Task(nn.Linear(5, 3), classes(), classes(8, 1), loss=loss, optimizer=optimizer, batch_size=batch_size)


@pytest.mark.parametrize("loss, name", [
    (None, "mean"),
    (nn.CrossEntropyLoss(weight=torch.tensor([1.0, 5.0, 0.2])), "mean"),  # a weighted mean stays a mean
    (nn.CrossEntropyLoss(label_smoothing=0.1), "mean"),
    (nn.CrossEntropyLoss(reduction="sum"), "sum"),
    (lambda o, t: F.cross_entropy(o, t, reduction="sum") / len(t) ** 0.5, "other"),  # scales as sqrt(batch)
])
def test_the_reduction_is_read_from_the_batch_fed_twice(loss, name):
    r = loss_reduction(task_with(loss))
    assert r.name == name
    expected = {"mean": 1.0, "sum": 2.0, "other": 2 ** 0.5}[name]
    assert r.ratio == pytest.approx(expected, rel=1e-5)


def test_a_language_model_loss_summed_over_tokens_is_a_sum():
    tokens = torch.randint(0, 7, (16, 9), generator=torch.Generator().manual_seed(0))
    data = TensorDataset(tokens[:, :-1], tokens[:, 1:])
    model = nn.Sequential(nn.Embedding(7, 7))
    summed = Task(model, data, data, kind="language-model",
                  loss=lambda o, t: F.cross_entropy(o.flatten(0, 1), t.flatten(), reduction="sum"))
    assert loss_reduction(summed).name == "sum"
    assert loss_reduction(Task(model, data, data, kind="language-model")).name == "mean"


def test_the_check_passes_a_mean_and_tells_a_sum_with_the_batch_size():
    assert check_loss_reduction(task_with(None))[0].status == "pass"
    (finding,) = check_loss_reduction(task_with(nn.CrossEntropyLoss(reduction="sum"), batch_size=48))
    assert finding.status == "info" and "(48)" in finding.message and finding.evidence["reduction"] == "sum"


def test_a_summed_loss_with_sgd_is_a_cause_with_the_lr_it_amounts_to():
    sgd = lambda p: torch.optim.SGD(p, lr=0.08, momentum=0.9)  # noqa: E731
    cause = sum_reduction_cause(task_with(nn.CrossEntropyLoss(reduction="sum"), sgd, batch_size=32))
    assert cause is not None and cause.evidence["cause"] == "sum-reduction"
    assert "as LR 2.56 would on a mean" in cause.message and "about 0.0025" in cause.fix


@pytest.mark.parametrize("loss, optimizer", [
    (nn.CrossEntropyLoss(reduction="sum"), lambda p: torch.optim.Adam(p, lr=1e-3)),  # Adam divides by the scale
    (nn.CrossEntropyLoss(reduction="sum"), None),  # the default AdamW
    (None, lambda p: torch.optim.SGD(p, lr=0.1)),  # a mean
])
def test_no_cause_when_the_optimizer_ignores_the_scale_or_the_loss_is_a_mean(loss, optimizer):
    assert sum_reduction_cause(task_with(loss, optimizer)) is None


def test_measuring_leaves_the_model_and_its_modes_as_they_were():
    task = task_with(nn.CrossEntropyLoss(reduction="sum"))
    task.model.train()
    before = [p.detach().clone() for p in task.model.parameters()]
    loss_reduction(task)
    assert task.model.training and all(torch.equal(a, b) for a, b in zip(before, task.model.parameters()))
    assert all(p.grad is None for p in task.model.parameters())
