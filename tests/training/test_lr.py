import copy
import io
import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dltips.core.params import ParamError
from dltips.core.state import get_rng_state, set_rng_state
from dltips.training.lr import LRFinderResult, default_lr, lr_find, scale_lr

# ---------------------------------------------------------------- default_lr


def rule(n: int) -> float:
    """The documented Adam rule, 3e-4 * (1e8 / n) ** 0.5 clipped to [3e-4, 1e-2], as 3 / sqrt(n)."""
    return min(1e-2, max(3e-4, 3.0 / math.sqrt(n)))


@pytest.mark.parametrize("n", [1, 500, 20_000, 90_000, 123_456, 10**6, 3 * 10**6, 5 * 10**7, 10**8, 10**10])
def test_default_lr_follows_documented_rule(n):
    assert math.isclose(default_lr(n), rule(n), rel_tol=1e-12)
    assert default_lr(n, "adam") == default_lr(n, "adamw")


def test_default_lr_anchor_points():
    assert default_lr(100_000_000) == pytest.approx(3e-4, rel=1e-12)
    assert default_lr(10**6) == pytest.approx(3e-3, rel=1e-12)
    assert default_lr(1000) == 1e-2


def test_default_lr_is_non_increasing_in_size():
    values = [default_lr(int(n)) for n in np.logspace(0, 11, 200)]
    assert all(b <= a for a, b in zip(values, values[1:]))
    assert values[0] > values[-1]


def test_default_lr_counts_only_trainable_parameters():
    model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 200))
    model[0].requires_grad_(False)
    trainable = 1000 * 200 + 200
    assert default_lr(model) == default_lr(trainable)
    assert default_lr(model) != default_lr(sum(p.numel() for p in model.parameters()))


def test_default_lr_sgd():
    assert default_lr(10**6, "sgd") == 0.1
    assert default_lr(nn.Linear(3, 3), "SGD") == 0.1


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((1000, "rmsprop"), ValueError, r"unknown optimizer 'rmsprop'.*adam.*adamw.*sgd"),
        ((0,), ValueError, "parameter count must be > 0"),
        ((True,), TypeError, "got bool"),
        (("big",), TypeError, "nn.Module or a parameter count"),
        ((nn.Linear(2, 2).requires_grad_(False),), ValueError, "no trainable parameters"),
    ],
)
def test_default_lr_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        default_lr(*args)


# ---------------------------------------------------------------- scale_lr


def test_scale_lr_examples():
    assert scale_lr(3e-4, 32, 128) == pytest.approx(1.2e-3, rel=1e-12)
    assert scale_lr(3e-4, 32, 128, rule="sqrt") == pytest.approx(6e-4, rel=1e-12)
    assert scale_lr(0.1, 256, 64) == pytest.approx(0.025, rel=1e-12)


def test_scale_lr_uses_effective_batch():
    # 32 per device * 4 accumulation steps * 2 devices = 256, the reference batch.
    assert scale_lr(0.1, 256, 32, accumulation=4, world_size=2) == pytest.approx(0.1, rel=1e-12)
    assert scale_lr(1e-3, 64, 64, "sqrt", world_size=4) == pytest.approx(2e-3, rel=1e-12)
    assert scale_lr(1e-3, 64, 16, "linear", accumulation=8) == pytest.approx(2e-3, rel=1e-12)


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((0.1, 0, 32), {}, ParamError, "from_batch must be an int >= 1"),
        ((0.1, "5", 32), {}, ParamError, "from_batch must be an int >= 1, got str"),
        ((0.1, 32, -1), {}, ParamError, "to_batch must be an int >= 1"),
        ((0.1, 32, 64.0), {}, TypeError, "to_batch must be an int"),
        ((0.1, 32, 64), {"accumulation": 0}, ParamError, "accumulation must be an int >= 1"),
        ((0.1, 32, 64), {"world_size": 0}, ParamError, "world_size must be an int >= 1"),
        ((0.1, 32, 64, "cubic"), {}, ValueError, "unknown rule 'cubic'.*'linear' or 'sqrt'"),
        ((0.0, 32, 64), {}, ValueError, "lr must be"),
    ],
)
def test_scale_lr_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        scale_lr(*args, **kwargs)


# ---------------------------------------------------------------- RNG state


def draws():
    return torch.rand(3), torch.randn(2), np.random.rand(3), np.random.randn(), random.random(), random.gauss(0, 1)


def assert_draws_equal(a, b):
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert np.array_equal(a[2], b[2]) and a[3] == b[3]
    assert a[4] == b[4] and a[5] == b[5]


def test_rng_state_roundtrip_through_torch_save():
    np.random.randn()  # leave a cached gaussian in numpy's state
    random.gauss(0, 1)
    state = get_rng_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    first = draws()
    set_rng_state(loaded)
    assert_draws_equal(first, draws())


def test_set_rng_state_rejects_other_dicts():
    with pytest.raises(ValueError, match="get_rng_state"):
        set_rng_state({"torch": torch.get_rng_state()})


# ---------------------------------------------------------------- lr_find


def bn_dropout_model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))


def regression_data(n: int = 64, batch: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def train_steps(model, opt, data, steps):
    model.train()
    for i in range(steps):
        x, y = data[i % len(data)]
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


class Snapshot:
    """Independent copy of everything lr_find must leave untouched."""

    def __init__(self, model, opt):
        self.params = [p.detach().clone() for p in model.parameters()]
        self.buffers = [b.detach().clone() for b in model.buffers()]
        self.grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        self.modes = [m.training for m in model.modules()]
        self.opt = copy.deepcopy(opt.state_dict())
        self.torch_rng = torch.get_rng_state()
        self.np_rng = np.random.get_state()
        self.py_rng = random.getstate()

    def assert_same(self, model, opt):
        for a, b in zip(self.params, model.parameters(), strict=True):
            assert torch.equal(a, b)
        for a, b in zip(self.buffers, model.buffers(), strict=True):
            assert torch.equal(a, b)
        for a, p in zip(self.grads, model.parameters(), strict=True):
            assert (a is None and p.grad is None) or torch.equal(a, p.grad)
        assert self.modes == [m.training for m in model.modules()]
        now = opt.state_dict()
        assert now["param_groups"] == self.opt["param_groups"]
        assert now["state"].keys() == self.opt["state"].keys()
        for pid, saved in self.opt["state"].items():
            assert now["state"][pid].keys() == saved.keys()
            for key, value in saved.items():
                assert torch.equal(now["state"][pid][key], value), (pid, key)
        assert torch.equal(torch.get_rng_state(), self.torch_rng)
        np_now = np.random.get_state()
        assert np_now[0] == self.np_rng[0] and np.array_equal(np_now[1], self.np_rng[1])
        assert np_now[2:] == self.np_rng[2:]
        assert random.getstate() == self.py_rng


def adamw_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = bn_dropout_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    data = regression_data()
    train_steps(model, opt, data, 3)  # so the optimizer has moments and step counts
    return model, opt, data


def noisy_mse(pred, y):
    # Consumes numpy and python RNGs too, as augmentation code would.
    return nn.functional.mse_loss(pred, y) * (1.0 + 1e-3 * np.random.rand() + 1e-3 * random.random())


def test_lr_find_restores_everything():
    model, opt, data = adamw_setup()
    model.train()
    model[3].eval()  # mixed modes must come back per module
    np.random.randn()
    snap = Snapshot(model, opt)
    seen_means = []

    def loss_fn(pred, y):
        seen_means.append(model[1].running_mean.clone())
        return noisy_mse(pred, y)

    result = lr_find(model, opt, data, loss_fn, start_lr=1e-5, end_lr=1.0, num_steps=12)
    assert isinstance(result, LRFinderResult)
    assert not torch.equal(seen_means[-1], snap.buffers[0])  # BN stats did move during the test
    snap.assert_same(model, opt)
    assert opt.param_groups[0]["lr"] == 1e-3
    assert opt.state[model[0].weight]["step"] == 3


def test_lr_find_restores_after_exception():
    model, opt, data = adamw_setup()
    model.eval()
    snap = Snapshot(model, opt)
    calls = []

    def loss_fn(pred, y):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return noisy_mse(pred, y)

    with pytest.raises(RuntimeError, match="boom"):
        lr_find(model, opt, data, loss_fn, num_steps=20)
    snap.assert_same(model, opt)


def test_lr_find_restores_when_data_is_empty():
    model, opt, _ = adamw_setup()
    snap = Snapshot(model, opt)
    with pytest.raises(ValueError, match="no batches"):
        lr_find(model, opt, [], nn.functional.mse_loss)
    snap.assert_same(model, opt)


def _twin_run(use_lr_find: bool) -> list[torch.Tensor]:
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    model = bn_dropout_model()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    ds = TensorDataset(torch.randn(48, 8, generator=g), torch.randn(48, 1, generator=g))
    loader = DataLoader(ds, batch_size=16, shuffle=True)  # shuffling draws from the torch RNG

    def epoch():
        for x, y in loader:
            opt.zero_grad()
            noisy_mse(model(x), y).backward()
            opt.step()

    model.train()
    epoch()
    if use_lr_find:
        lr_find(model, opt, loader, noisy_mse, start_lr=1e-4, end_lr=10.0, num_steps=15)
    epoch()
    epoch()
    return [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]


def test_training_after_lr_find_matches_twin_bit_for_bit():
    with_find = _twin_run(True)
    without = _twin_run(False)
    assert len(with_find) == len(without)
    for a, b in zip(with_find, without):
        assert torch.equal(a, b)


def test_lr_find_curve_bookkeeping():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    start, end, n, beta = 1e-5, 1e-2, 20, 0.9
    result = lr_find(model, opt, regression_data(), nn.functional.mse_loss, start, end, n, smooth=beta)
    assert not result.stopped_early
    assert len(result.lrs) == len(result.losses) == len(result.raw_losses) == n
    for i, lr in enumerate(result.lrs):
        log_lr = math.log(start) + i / (n - 1) * (math.log(end) - math.log(start))
        assert math.isclose(lr, math.exp(log_lr), rel_tol=1e-12)
    # Bias-corrected EMA: weights beta**(i-j) * (1-beta), normalised.
    for i, s in enumerate(result.losses):
        w = [(1 - beta) * beta ** (i - j) for j in range(i + 1)]
        ref = sum(wj * lj for wj, lj in zip(w, result.raw_losses)) / sum(w)
        assert math.isclose(s, ref, rel_tol=1e-9)
    i_min = int(np.argmin(result.losses))
    assert result.min_loss_lr == result.lrs[i_min]
    assert result.suggestion == pytest.approx(result.min_loss_lr / 10, rel=1e-12)
    assert result.steepest in result.lrs


def test_lr_find_suggestion_on_quadratic_with_known_curvature():
    # Full-batch least squares: loss(w) = mean((Xw - y)^2) has Hessian H = 2 X^T X / m, and
    # plain gradient descent diverges exactly for lr > 2 / lambda_max(H).
    g = torch.Generator().manual_seed(0)
    m, d = 256, 10
    x = torch.randn(m, d, generator=g) * torch.linspace(0.3, 3.0, d)
    y = x @ torch.randn(d, 1, generator=g)
    h = torch.linalg.eigvalsh(2 * x.double().T @ x.double() / m).max().item()
    limit = 2.0 / h

    torch.manual_seed(0)
    model = nn.Linear(d, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0)
    result = lr_find(model, opt, [(x, y)], nn.functional.mse_loss)

    assert result.stopped_early
    assert limit < result.lrs[-1] < 10 * limit  # stops soon after crossing the stability limit
    assert limit / 100 < result.suggestion < limit


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"start_lr": 1.0, "end_lr": 0.1}, ValueError, "end_lr must be > start_lr"),
        ({"start_lr": 0.0}, ValueError, "start_lr must be"),
        ({"num_steps": 1}, ParamError, "num_steps must be an int >= 2"),
        ({"num_steps": 10.5}, TypeError, "num_steps must be an int"),
        ({"smooth": 1.0}, ParamError, r"smooth must be a probability in \[0, 1\)"),
        ({"diverge": 1.0}, ParamError, "diverge must be a finite number > 1"),
    ],
)
def test_lr_find_bad_arguments(kwargs, exc, match):
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(exc, match=match):
        lr_find(model, opt, regression_data(), nn.functional.mse_loss, **kwargs)


def test_lr_find_type_errors():
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        lr_find(lambda x: x, opt, regression_data(), nn.functional.mse_loss)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        lr_find(model, "adam", regression_data(), nn.functional.mse_loss)
