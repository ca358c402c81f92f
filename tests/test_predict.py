import pickle

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dltips.core.deadline import Deadline
from dltips.core.params import ParamError
from dltips.predict import OutOfTime, estimate_needed, predict
from dltips.task import Task
from clock import ExpiresAfter


def linear_task(n=100, batch_size=16):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)
    torch.manual_seed(0)
    data = TensorDataset(x, y)
    return Task(nn.Linear(5, 3), data, data, batch_size=batch_size), x, y


def test_without_a_deadline_predict_is_unchanged():
    task, x, y = linear_task()
    plain = predict(task.model, task, task.train)
    with torch.no_grad():
        expected = task.model(x)
    assert torch.allclose(plain.outputs, expected) and torch.equal(plain.targets, y)
    for other in (predict(task.model, task, task.train, deadline=None),
                  predict(task.model, task, task.train, deadline=3600.0),
                  predict(task.model, task, task.train, deadline=Deadline.after(3600))):
        assert torch.equal(other.outputs, plain.outputs) and torch.equal(other.losses, plain.losses)
        assert torch.equal(other.indices, plain.indices)


def test_a_deadline_that_passes_raises_out_of_time_with_the_items_scored():
    task, _, _ = linear_task(n=100, batch_size=16)  # 7 batches: 6 of 16 items, then 4
    with pytest.raises(OutOfTime) as caught:
        predict(task.model, task, task.train, deadline=ExpiresAfter(3))
    err = caught.value
    assert (err.done, err.total) == (3 * 16, 100) and err.seconds >= 0
    with pytest.raises(OutOfTime) as caught:
        predict(task.model, task, task.train, indices=range(0, 100, 2), deadline=Deadline.after(0.0))
    assert (caught.value.done, caught.value.total) == (16, 50)  # the first batch is always scored


def test_a_plan_that_ends_before_the_clock_is_read_is_returned_whole():
    task, _, _ = linear_task(n=100, batch_size=16)
    deadline = ExpiresAfter(7)  # 6 looks at the clock: after every batch but the last
    assert len(predict(task.model, task, task.train, deadline=deadline)) == 100 and deadline.calls == 6
    one_batch = predict(task.model, task, task.train, indices=range(10), deadline=Deadline.after(0.0))
    assert len(one_batch) == 10


def test_estimate_needed_extrapolates_the_pace():
    assert estimate_needed(OutOfTime(25, 100, 2.0)) == pytest.approx(2.0 * 75 / 25)
    assert estimate_needed(OutOfTime(100, 100, 2.0)) == 0.0
    err = pickle.loads(pickle.dumps(OutOfTime(3, 9, 1.5)))
    assert (err.done, err.total, err.seconds) == (3, 9, 1.5) and "3 of 9 items" in str(err)
    for args in ((0, 10, 1.0), (11, 10, 1.0), (1, 10, -1.0)):
        with pytest.raises(ParamError):
            OutOfTime(*args)


def test_bad_deadline_is_rejected():
    task, _, _ = linear_task()
    with pytest.raises(ParamError, match="deadline"):
        predict(task.model, task, task.train, deadline="soon")
