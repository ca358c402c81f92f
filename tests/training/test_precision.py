import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltips.core.params import ParamError
from dltips.training.precision import AmpPlan, MixedPrecision, amp_plan, plan_from_memory

MB = 2**20


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def _true_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    ref = copy.deepcopy(model)
    return list(torch.autograd.grad(F.mse_loss(ref(x), y), list(ref.parameters())))


@pytest.mark.parametrize("mode, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("off", torch.float32)])
def test_autocast_sets_matmul_dtype(mode, dtype):
    amp = MixedPrecision(mode, device_type="cpu")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with amp.autocast():
        out = a @ b
    assert out.dtype == dtype
    assert amp.dtype == dtype and amp.mode == mode and amp.enabled == (mode != "off")
    assert (amp.scaler is not None) == (mode == "fp16")


def test_fp16_skips_step_with_inf_grad_then_updates():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = MixedPrecision("fp16", device_type="cpu")
    x, y = _data(16)
    scale0 = amp.scaler.get_scale()

    amp.backward(F.mse_loss(model(x), y))
    model.weight.grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    assert amp.step(opt) is False
    assert amp.skipped_steps == 1
    assert amp.scaler.get_scale() == scale0 * 0.5
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)

    opt.zero_grad(set_to_none=True)
    grads = _true_grads(model, x, y)
    amp.backward(F.mse_loss(model(x), y))
    assert amp.step(opt) is True
    assert amp.skipped_steps == 1
    for p, b, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), b - 0.1 * g)


def test_fp16_clip_uses_unscaled_gradient():
    torch.manual_seed(1)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = MixedPrecision("fp16", device_type="cpu")
    x, y = _data(16, seed=1)
    grads = _true_grads(model, x, y)
    true_norm = torch.sqrt(sum((g**2).sum() for g in grads))
    max_norm = 0.5 * true_norm.item()
    before = [p.detach().clone() for p in model.parameters()]

    amp.backward(F.mse_loss(model(x), y))
    # the raw grads are scaled: far above the true norm
    assert model.weight.grad.norm() > 1000 * true_norm
    total = amp.clip_grad_norm_(model.parameters(), max_norm, opt)
    torch.testing.assert_close(total, true_norm, rtol=1e-5, atol=0)
    clipped_norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    torch.testing.assert_close(clipped_norm, torch.tensor(max_norm), rtol=1e-4, atol=0)

    amp.unscale_(opt)  # a second unscale in the same step must be a no-op
    assert amp.step(opt) is True
    for p, b, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), b - 0.1 * g * (max_norm / true_norm), rtol=1e-4, atol=1e-6)


def test_off_clip_is_plain_clip():
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data(16)
    grads = _true_grads(model, x, y)
    amp = MixedPrecision("off", device_type="cpu")
    amp.backward(F.mse_loss(model(x), y))
    total = amp.clip_grad_norm_(model.parameters(), 1e-3, opt)
    torch.testing.assert_close(total, torch.sqrt(sum((g**2).sum() for g in grads)))


@pytest.mark.parametrize("mode", ["bf16", "off", "fp16"])
def test_training_reduces_loss(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    amp = MixedPrecision(mode, device_type="cpu")
    x, y = _data(128)
    losses = []
    for _ in range(40):
        with amp.autocast():
            out = model(x)
            loss = F.mse_loss(out.float(), y)
        amp.backward(loss)
        amp.clip_grad_norm_(model.parameters(), 10.0, opt)
        amp.step(opt)
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert out.dtype == (torch.float32 if mode == "off" else amp.dtype)
    assert losses[-1] < 0.2 * losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_state_dict_round_trip():
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = MixedPrecision("fp16", device_type="cpu")
    x, y = _data(8)
    amp.backward(F.mse_loss(model(x), y))
    model.bias.grad.fill_(float("nan"))
    amp.step(opt)
    state = amp.state_dict()
    assert state["skipped_steps"] == 1

    restored = MixedPrecision("fp16", device_type="cpu")
    restored.load_state_dict(state)
    assert restored.skipped_steps == 1
    assert restored.scaler.get_scale() == amp.scaler.get_scale() == 65536.0 * 0.5
    assert restored.state_dict() == state

    bf16 = MixedPrecision("bf16", device_type="cpu")
    bf16.load_state_dict(state)  # switching precision on resume is allowed
    assert bf16.skipped_steps == 1 and bf16.scaler is None
    with pytest.raises(ValueError, match="skipped_steps"):
        restored.load_state_dict({"mode": "fp16", "scaler": {}})


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        MixedPrecision("fp8", device_type="cpu")
    with pytest.raises(ValueError, match="scalar"):
        MixedPrecision("off", device_type="cpu").backward(torch.ones(3, requires_grad=True))
    with pytest.raises(ValueError, match="max_norm"):
        MixedPrecision("off", device_type="cpu").clip_grad_norm_([], 0.0, None)
    with pytest.raises(ParamError, match="max_norm must be a number, got str"):
        MixedPrecision("off", device_type="cpu").clip_grad_norm_([], "1", None)
    with pytest.raises(ParamError, match="device_type must be a str"):
        MixedPrecision("off", device_type=0)
    with pytest.raises(ParamError, match="model has no parameters"):
        amp_plan(nn.Identity(), torch.randn(4, 3), 64, 1e-3, 10)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            MixedPrecision("bf16", device_type="cuda")
        assert MixedPrecision("bf16").device_type == "cpu"


def test_plan_from_memory_arithmetic():
    plan = plan_from_memory(4 * MB, 2 * MB, 64, 1e-3, 10)
    assert (plan.batch_size, plan.epochs, plan.ratio) == (128, 20, 2.0)
    assert plan.lr == pytest.approx(2e-3, rel=1e-12)
    assert plan.memory_per_sample_full == 4 * MB and plan.memory_per_sample_amp == 2 * MB

    plan = plan_from_memory(4 * MB, 2 * MB, 64, 1e-3, 10, rule="sqrt")
    assert (plan.batch_size, plan.epochs) == (128, 20)
    assert plan.lr == pytest.approx(1e-3 * 1.4142135623730951, rel=1e-12)

    # 50 * 1.5 = 75 -> 72 (multiple of 8); epochs ceil(10 * 72 / 50) = ceil(14.4) = 15
    plan = plan_from_memory(3.0, 2.0, 50, 1e-3, 10)
    assert (plan.batch_size, plan.epochs) == (72, 15)
    assert plan.lr == pytest.approx(1e-3 * 72 / 50, rel=1e-12)

    # too small a gain (64 * 1.1 = 70.4 -> 64) or a loss: unchanged
    for full, amp in ((1.1, 1.0), (1.0, 1.2)):
        plan = plan_from_memory(full, amp, 64, 1e-3, 10)
        assert (plan.batch_size, plan.lr, plan.epochs) == (64, pytest.approx(1e-3), 10)

    for bad in (dict(full_per_sample=0.0), dict(amp_per_sample=-1.0), dict(batch_size=0), dict(lr=0.0), dict(epochs=1.5)):
        kwargs = dict(full_per_sample=4.0, amp_per_sample=2.0, batch_size=64, lr=1e-3, epochs=10) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            plan_from_memory(**kwargs)


def test_amp_plan_on_cpu_returns_inputs_and_leaves_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 1))
    model[0].weight.grad = torch.full_like(model[0].weight, 0.25)
    grad_obj = model[0].weight.grad
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = _data(32)

    plan = amp_plan(model, (x, y), batch_size=64, lr=3e-4, epochs=7, loss_fn=F.mse_loss)
    assert isinstance(plan, AmpPlan)
    assert (plan.batch_size, plan.lr, plan.epochs) == (64, 3e-4, 7)
    assert plan.memory_per_sample_full is None and plan.memory_per_sample_amp is None and plan.ratio is None
    assert plan.device == "cpu" and "GPU" in plan.note

    assert model[0].weight.grad is grad_obj and torch.all(grad_obj == 0.25)
    assert all(p.grad is None for name, p in model.named_parameters() if name != "0.weight")
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]), k

    with pytest.raises(ValueError, match="mode"):
        amp_plan(model, x, 64, 1e-3, 10, mode="off")
    with pytest.raises(ValueError, match="batch_size"):
        amp_plan(model, x, 0, 1e-3, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak-memory measurement needs CUDA")
def test_amp_plan_on_cuda_measures_and_restores():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(512, 2048), nn.GELU(), nn.BatchNorm1d(2048), nn.Linear(2048, 2048), nn.GELU(), nn.Linear(2048, 10)
    ).cuda()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.randn(512, 512, device="cuda")
    y = torch.randint(0, 10, (512,), device="cuda")

    plan = amp_plan(model, (x, y), batch_size=64, lr=1e-3, epochs=10, loss_fn=F.cross_entropy)
    assert plan.device.startswith("cuda")
    assert plan.memory_per_sample_full > plan.memory_per_sample_amp > 0
    assert plan.ratio == pytest.approx(plan.memory_per_sample_full / plan.memory_per_sample_amp)
    assert plan.batch_size >= 64 and plan.batch_size % 8 == 0
    assert plan.epochs == math.ceil(10 * plan.batch_size / 64)
    assert torch.all(model[0].weight.grad == 1) and model[3].weight.grad is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
