import io
import math

import pytest
import torch
from torch import nn

from dltips.core.params import ParamError
from dltips.training.schedule import OneCycle, one_cycle_value


def reference(p: int, total: int, pct: float, lo: float, hi: float, end: float) -> float:
    """Two cosine half-waves written out directly: lo -> hi -> end."""
    p = min(p, total - 1)
    u = pct * (total - 1)
    if p <= u:
        return hi - (hi - lo) * 0.5 * (1.0 + math.cos(math.pi * p / u))
    return end + (hi - end) * 0.5 * (1.0 + math.cos(math.pi * (p - u) / (total - 1 - u)))


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def make_sgd(momentum: float = 0.9, lr: float = 0.1) -> torch.optim.SGD:
    return torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=lr, momentum=momentum)


@pytest.mark.parametrize("total,pct", [(2, 0.25), (10, 0.3), (101, 0.25), (37, 0.9)])
def test_lr_and_momentum_match_reference_at_every_position(total, pct):
    opt = make_sgd()
    max_lr, div, div_final, moms = 0.4, 20.0, 1e4, (0.95, 0.8, 0.9)
    sched = OneCycle(opt, max_lr, total, pct_start=pct, div=div, div_final=div_final, moms=moms)
    for p in range(total + 1):
        if p > 0:
            opt.step()
            sched.step()
        want_lr = reference(p, total, pct, max_lr / div, max_lr, max_lr / div_final)
        want_m = reference(p, total, pct, *moms)
        assert sched.last_epoch == p
        assert close(opt.param_groups[0]["lr"], want_lr), p
        assert close(opt.param_groups[0]["momentum"], want_m), p
        assert close(sched.lr_at(p)[0], want_lr)
        assert close(sched.momentum_at(p), want_m)
        assert close(one_cycle_value(p, total, pct, max_lr / div, max_lr, max_lr / div_final), want_lr)
        assert sched.get_last_lr() == [opt.param_groups[0]["lr"]]


def test_endpoints_are_exact():
    total, max_lr = 9, 0.3  # warm-up ends at 0.5 * 8 = 4, an integer position
    opt = make_sgd()
    sched = OneCycle(opt, max_lr, total, pct_start=0.5, div=25.0, div_final=1e5)
    seen = {0: (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"])}
    for p in range(1, total + 1):
        opt.step()
        sched.step()
        seen[p] = (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"])
    assert seen[0] == (max_lr / 25.0, 0.95)
    assert seen[4] == (max_lr, 0.85)
    assert seen[8] == (max_lr / 1e5, 0.95)
    assert seen[9] == seen[8]  # the conventional call after the last step keeps the final value


@pytest.mark.parametrize("kind", ["sgd", "adamw", "adam"])
def test_momentum_moves_opposite_to_lr(kind):
    params = nn.Linear(3, 2).parameters()
    if kind == "sgd":
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    elif kind == "adamw":
        opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.98))
    else:
        opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.98))

    def momentum() -> float:
        g = opt.param_groups[0]
        return g["momentum"] if kind == "sgd" else g["betas"][0]

    total, max_lr = 30, 1e-2
    sched = OneCycle(opt, max_lr, total)
    lo, end, u = max_lr / 25.0, max_lr / 1e5, 0.25 * (total - 1)
    lrs, ms = [opt.param_groups[0]["lr"]], [momentum()]
    for _ in range(total - 1):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        ms.append(momentum())
        if kind != "sgd":
            assert opt.param_groups[0]["betas"][1] == 0.98
    for p, (lr, m) in enumerate(zip(lrs, ms)):
        # Within a phase, momentum has covered the same fraction of its way as the LR.
        if p <= u:
            assert math.isclose((lr - lo) / (max_lr - lo), (0.95 - m) / (0.95 - 0.85), abs_tol=1e-9)
        else:
            assert math.isclose((max_lr - lr) / (max_lr - end), (m - 0.85) / (0.95 - 0.85), abs_tol=1e-9)
    for p in range(total - 1):
        same_phase = (p + 1 <= u) or (p >= u)
        if same_phase:
            d_lr, d_m = lrs[p + 1] - lrs[p], ms[p + 1] - ms[p]
            assert (d_lr > 0 > d_m) or (d_lr < 0 < d_m), p


def test_per_group_max_lr():
    a, b = nn.Linear(3, 3), nn.Linear(3, 1)
    opt = torch.optim.SGD([{"params": a.parameters()}, {"params": b.parameters()}], lr=0.1, momentum=0.9)
    total, pct, maxes = 20, 0.25, [1e-2, 3e-4]
    sched = OneCycle(opt, maxes, total, pct_start=pct)
    for p in range(total + 1):
        if p:
            opt.step()
            sched.step()
        for group, m in zip(opt.param_groups, maxes):
            assert close(group["lr"], reference(p, total, pct, m / 25.0, m, m / 1e5))
        assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups]


def test_max_lr_length_must_match_groups():
    a, b = nn.Linear(3, 3), nn.Linear(3, 1)
    opt = torch.optim.SGD([{"params": a.parameters()}, {"params": b.parameters()}], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="3 values.*2 param groups"):
        OneCycle(opt, [1e-2, 1e-3, 1e-4], 10)


def test_stepping_past_the_end_raises():
    opt = make_sgd()
    sched = OneCycle(opt, 0.1, 5)
    for _ in range(5):  # positions 1..5; 5 == total_steps is allowed
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match=r"total_steps=5.*raise total_steps"):
        sched.step()


def test_moms_none_leaves_momentum_alone():
    opt = make_sgd(momentum=0.7)
    sched = OneCycle(opt, 0.1, 10, moms=None)
    for _ in range(10):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["momentum"] == 0.7
    assert sched.momentum_at(3) is None


def test_optimizer_without_momentum_needs_moms_none():
    opt = torch.optim.Adagrad(nn.Linear(3, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="moms=None"):
        OneCycle(opt, 0.1, 10)
    sched = OneCycle(opt, 0.1, 10, moms=None)
    assert close(sched.get_last_lr()[0], 0.1 / 25.0)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"total_steps": 1}, ParamError, "total_steps must be an int >= 2"),
        ({"total_steps": 10.0}, TypeError, "total_steps must be an int"),
        ({"total_steps": True}, TypeError, "total_steps must be an int"),
        ({"pct_start": 0.0}, ValueError, r"pct_start must be in \(0, 1\)"),
        ({"pct_start": 1.0}, ValueError, r"pct_start must be in \(0, 1\)"),
        ({"div": 0.0}, ValueError, "div must be"),
        ({"div_final": -1.0}, ValueError, "div_final must be"),
        ({"max_lr": -0.1}, ValueError, "max_lr must be"),
        ({"max_lr": float("nan")}, ValueError, "max_lr must be"),
        ({"max_lr": "0.1"}, TypeError, "max_lr must be a number"),
        ({"moms": (0.9, 0.8)}, ValueError, "moms must be a sequence of 3"),
        ({"moms": (0.9, 0.8, 1.0)}, ParamError, r"moms\[2\] must be a probability in \[0, 1\)"),
        ({"last_epoch": 10}, ValueError, "last_epoch"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = {"max_lr": 0.1, "total_steps": 10} | kwargs
    with pytest.raises(exc, match=match):
        OneCycle(make_sgd(), **args)


def test_not_an_optimizer():
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        OneCycle(object(), 0.1, 10)


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _setup(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = OneCycle(opt, 0.5, TOTAL, pct_start=0.3)
    return model, opt, sched


def _train(model, opt, sched, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()


TOTAL = 24


@pytest.mark.parametrize("order", ["optimizer_first", "scheduler_first"])
def test_resume_mid_cycle_is_bit_exact(order):
    g = torch.Generator().manual_seed(123)
    batches = [(torch.randn(8, 6, generator=g), torch.randn(8, 1, generator=g)) for _ in range(TOTAL)]
    k = 9

    model, opt, sched = _setup(0)
    _train(model, opt, sched, batches)

    model_a, opt_a, sched_a = _setup(0)
    _train(model_a, opt_a, sched_a, batches[:k])
    saved = _roundtrip({"model": model_a.state_dict(), "opt": opt_a.state_dict(), "sched": sched_a.state_dict()})
    lr_at_k = opt_a.param_groups[0]["lr"]
    del model_a, opt_a, sched_a

    model_b, opt_b, sched_b = _setup(1)  # different init and a fresh scheduler at position 0
    model_b.load_state_dict(saved["model"])
    if order == "optimizer_first":
        opt_b.load_state_dict(saved["opt"])
        sched_b.load_state_dict(saved["sched"])
    else:
        sched_b.load_state_dict(saved["sched"])
        opt_b.load_state_dict(saved["opt"])
    assert sched_b.last_epoch == k
    assert opt_b.param_groups[0]["lr"] == lr_at_k
    assert sched_b.get_last_lr() == [lr_at_k]
    _train(model_b, opt_b, sched_b, batches[k:])

    for p, q in zip(model.parameters(), model_b.parameters()):
        assert torch.equal(p, q)
    assert sched_b.get_last_lr() == sched.get_last_lr()
    assert opt_b.param_groups[0]["momentum"] == opt.param_groups[0]["momentum"]


def test_load_state_dict_rejects_other_group_count():
    opt = make_sgd()
    state = OneCycle(opt, [0.1], 10).state_dict()
    a, b = nn.Linear(3, 3), nn.Linear(3, 1)
    opt2 = torch.optim.SGD([{"params": a.parameters()}, {"params": b.parameters()}], lr=0.1, momentum=0.9)
    sched2 = OneCycle(opt2, 0.1, 10)
    with pytest.raises(ValueError, match="1 param groups"):
        sched2.load_state_dict(state)


def test_load_state_dict_writes_position_values_into_optimizer():
    opt = make_sgd()
    sched = OneCycle(opt, 0.2, 12, moms=(0.9, 0.8, 0.9))
    for _ in range(5):
        opt.step()
        sched.step()
    state = _roundtrip(sched.state_dict())

    fresh_opt = make_sgd(momentum=0.5, lr=3.0)
    fresh = OneCycle(fresh_opt, 0.2, 12, moms=(0.9, 0.8, 0.9))
    fresh.load_state_dict(state)
    assert close(fresh_opt.param_groups[0]["lr"], reference(5, 12, 0.25, 0.2 / 25.0, 0.2, 0.2 / 1e5))
    assert close(fresh_opt.param_groups[0]["momentum"], reference(5, 12, 0.25, 0.9, 0.8, 0.9))
    assert fresh.get_last_lr() == [fresh_opt.param_groups[0]["lr"]]
