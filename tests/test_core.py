"""The plumbing under every theme: validators, the device rule, kept state, deadlines and the call-form shims."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dltips.core import deadline as deadline_module
from dltips.core.checks import check_args, positional_options, renamed_kwargs, task_first
from dltips.core.deadline import Deadline, as_deadline
from dltips.core import device as device_module
from dltips.core.device import model_device, model_on_device, resolve_device, threads_at_most, usable_cpus
from dltips.core.params import ParamError, flag, fraction, int_at_least, ints, number, one_of, optional_int, positive, probability
from dltips.core.state import eval_mode, grads_kept, modes_kept, rng_kept


def test_param_error_is_caught_as_value_error_and_type_error():
    assert issubclass(ParamError, ValueError) and issubclass(ParamError, TypeError)


@pytest.mark.parametrize("call, words", [
    (lambda: int_at_least("steps", "5"), "steps must be an int >= 1, got str '5'"),
    (lambda: int_at_least("steps", True), "steps must be an int"),
    (lambda: int_at_least("steps", 0), "steps must be an int >= 1, got 0"),
    (lambda: int_at_least("k", 13, 2, 12), "k must be an int >= 2 and <= 12, got 13"),
    (lambda: optional_int("max_items", 0), "max_items must be an int >= 1"),
    (lambda: number("lr", math.nan), "lr must be a finite number"),
    (lambda: number("lr", "0.1"), "lr must be a number, got str"),
    (lambda: positive("lr", 0.0), "lr must be a finite number > 0"),
    (lambda: fraction("p", 1.5), "p must be a finite number >= 0 and <= 1"),
    (lambda: probability("dropout", 1.0), r"dropout must be a probability in \[0, 1\)"),
    (lambda: one_of("kind", "tabular", ("binary", "regression")), "kind must be one of 'binary', 'regression'"),
    (lambda: one_of("kind", ["unhashable"], {"binary"}), "kind must be one of"),
    (lambda: ints("sizes", ()), "sizes must be a non-empty sequence of ints"),
    (lambda: ints("sizes", (1, 0)), r"sizes\[1\] must be an int >= 1"),
    (lambda: flag("checks", 1), "checks must be True or False, got 1"),
])
def test_validators_name_the_argument_and_what_is_expected(call, words):
    with pytest.raises(ParamError, match=words):
        call()


def test_validators_return_the_value_in_its_plain_type():
    assert int_at_least("n", np.int64(3)) == 3 and type(int_at_least("n", np.int64(3))) is int
    assert number("x", np.float32(0.5)) == 0.5 and optional_int("m", None) is None
    assert ints("sizes", [1, 2]) == [1, 2] and probability("p", 0.0) == 0.0 and flag("f", False) is False


class BufferOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(3, dtype=torch.float64))


def test_the_device_rule():
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU, no StopIteration
    assert model_device(BufferOnly()) == torch.device("cpu")
    assert resolve_device(None, nn.ReLU()) == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto", rank=0) == expected
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ParamError, match="'gpu'"):
        resolve_device("gpu")
    with pytest.raises(ParamError, match="device must be None"):
        resolve_device(3)
    if not torch.cuda.is_available():
        with pytest.raises(ParamError, match="no CUDA device"):
            resolve_device("cuda")


def test_model_on_device_copies_only_a_model_that_is_elsewhere():
    model = nn.Linear(2, 2)
    assert model_on_device(model, torch.device("cpu")) is model


def test_usable_cpus_reads_the_affinity_and_a_cgroup_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(device_module.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(device_module, "Path", lambda root: tmp_path)
    assert usable_cpus() == 8  # no cgroup files: the affinity mask
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert usable_cpus() == 2  # 1.5 CPUs of quota round up
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus() == 8
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus() == 3  # cgroup v1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert usable_cpus() == 8


def test_threads_at_most_lowers_and_restores_torchs_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with threads_at_most(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with threads_at_most(4):  # never raised
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), threads_at_most(1):
            raise RuntimeError("restored on an error too")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_modes_kept_restores_each_modules_own_flag():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2))
    model.train()
    model[2].eval()  # a user who froze BatchNorm's statistics
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, True, False]
    with pytest.raises(RuntimeError), modes_kept(model):
        model.train()
        raise RuntimeError("the block fails")
    assert model[2].training is False


def test_grads_kept_puts_back_the_grad_objects():
    model = nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    grads = [p.grad for p in model.parameters()]
    with grads_kept(model):
        for p in model.parameters():
            p.grad = None
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))


def test_rng_kept_restores_every_generator_and_seeds_torch():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    expected = (torch.rand(3), np.random.rand(), random.random())
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    with rng_kept(seed=7):
        inside = torch.rand(3)
        np.random.rand(), random.random()
    torch.manual_seed(7)
    assert torch.equal(inside, torch.rand(3))
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    with rng_kept(seed=7):
        torch.rand(3), np.random.rand(), random.random()
    assert torch.equal(torch.rand(3), expected[0])
    assert np.random.rand() == expected[1] and random.random() == expected[2]


class Clock:
    def __init__(self):
        self.now = 100.0

    def monotonic(self):
        return self.now


def test_deadlines(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(deadline_module, "time", clock)
    whole = Deadline.after(10)
    assert whole.left() == 10 and not whole.expired()
    assert whole.within(4).at == 104 and whole.within(40).at == 110  # a share never outlasts the whole
    clock.now = 110
    assert whole.expired()
    assert as_deadline(None) is None and as_deadline(whole) is whole and as_deadline(5).at == 115
    for bad in (0, -1, "soon", True, math.inf):
        with pytest.raises(ParamError, match="deadline"):
            as_deadline(bad)


def test_check_args_validates_the_common_arguments():
    seed, max_items, deadline = check_args(3, 10, 5.0)
    assert (seed, max_items) == (3, 10) and isinstance(deadline, Deadline)
    assert check_args() == (0, None, None)
    with pytest.raises(ParamError, match="seed"):
        check_args(seed=-1)


def test_the_shims_accept_the_old_forms_with_a_warning():
    @task_first
    @positional_options("transforms")
    @renamed_kwargs(n_items="max_items")
    def check(task, *, model=None, transforms=None, max_items=None):
        return task, model, transforms, max_items

    model = nn.Linear(1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check("task", model=model, transforms="t", max_items=4) == ("task", model, "t", 4)
    with pytest.warns(DeprecationWarning, match=r"check\(model, task, \.\.\.\)"):
        assert check(model, "task") == ("task", model, None, None)
    with pytest.warns(DeprecationWarning, match=r"check\(task, transforms\)"):
        assert check("task", "t") == ("task", None, "t", None)
    with pytest.warns(DeprecationWarning, match=r"n_items=\.\.\.\) is deprecated; use max_items"):
        assert check("task", n_items=4) == ("task", None, None, 4)
    with pytest.raises(TypeError, match="both 'n_items'"):
        check("task", n_items=4, max_items=5)
    with pytest.raises(TypeError, match="keyword options only"):
        check("task", "t", transforms="u")
