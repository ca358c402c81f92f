"""What a deep copy shares with its model, the exact model snapshot, and `training_copy`."""

from __future__ import annotations

import copy
import functools
import threading
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltips.core.params import ParamError
from dltips.core.state import ModelSnapshot, shared_with, training_copy


class MLP(nn.Module):
    def __init__(self, n: int = 4):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(n, 8), nn.Linear(8, n)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class SelfClosure(nn.Module):
    """Its forward goes through a lambda closing over `self`: the copy's lambda runs the original."""

    def __init__(self):
        super().__init__()
        self.mlp = MLP()
        self.ff = lambda x: self.mlp(x)

    def forward(self, x):
        return self.ff(x)


class LocalClosure(nn.Module):
    """A lambda closing over a local module, registered (`register`) or not."""

    def __init__(self, register: bool):
        super().__init__()
        mlp = MLP()
        if register:
            self.mlp = mlp
        self.ff = lambda x: mlp(x)

    def forward(self, x):
        return self.ff(x)


def _apply(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer(x)


class PartialOver(nn.Module):
    """A partial over a module that is not one of the model's (unregistered)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.head = functools.partial(_apply, MLP())

    def forward(self, x):
        return self.head(self.lin(x))


class PartialOverOwnLayer(nn.Module):
    """A partial over a registered layer: deepcopy copies a partial's arguments, so the copy uses its own."""

    def __init__(self):
        super().__init__()
        self.head_layer = nn.Linear(4, 4)
        self.head = functools.partial(_apply, self.head_layer)
        self.own = self.head_layer.forward

    def forward(self, x):
        return self.head(x) + self.own(x)


class PlainCallables(nn.Module):
    """Callables that refer only to numbers, functions and python modules: nothing to share."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        scale = 2.0
        self.act = lambda x: F.relu(x) * scale
        self.leaky = functools.partial(F.leaky_relu, negative_slope=0.1)
        self.squash = torch.tanh
        self.table = {"relu": F.relu, "n": 3}

    def forward(self, x):
        return self.squash(self.leaky(self.act(self.lin(x))))


class SharesEverything(MLP):
    """A `__deepcopy__` that hands back the model itself."""

    def __deepcopy__(self, memo):
        return self


_OUTSIDE = nn.Linear(4, 4)


def _through_global(x: torch.Tensor) -> torch.Tensor:
    return _OUTSIDE(x)


class GlobalFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.ff = _through_global

    def forward(self, x):
        return self.ff(self.lin(x))


class GlobalInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return _OUTSIDE(self.lin(x))


class Unreadable(dict):
    """A container whose entries cannot be read."""

    def items(self):
        raise RuntimeError("no entries")


def _copy_and_share(model: nn.Module) -> list[str]:
    return shared_with(copy.deepcopy(model), model)


def test_shared_with_finds_a_lambda_closing_over_self():
    found = _copy_and_share(SelfClosure())
    assert len(found) == 1
    assert "'ff'" in found[0] and "closure variable 'self'" in found[0] and "original's root module" in found[0]


@pytest.mark.parametrize("register", [True, False])
def test_shared_with_finds_a_lambda_closing_over_a_local_module(register):
    found = _copy_and_share(LocalClosure(register))
    assert len(found) == 1 and "closure variable 'mlp'" in found[0]
    assert ("original's module 'mlp'" in found[0]) == register


def test_shared_with_finds_nothing_in_plain_models():
    models = [nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 2)),
              nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2, enable_nested_tensor=False),
              nn.LSTM(3, 4, 2), nn.utils.parametrizations.weight_norm(nn.Linear(3, 3)), PlainCallables(),
              PartialOverOwnLayer()]
    for model in models:
        assert _copy_and_share(model) == [], type(model).__name__


def test_shared_with_finds_a_partial_over_another_module():
    found = _copy_and_share(PartialOver())
    assert len(found) == 1 and "'head'" in found[0] and "partial argument 0" in found[0] and "MLP" in found[0]


def test_shared_with_finds_a_forward_hook_closing_over_an_outside_module():
    model, probe = nn.Sequential(nn.Linear(4, 4)), nn.Linear(4, 4)
    model[0].register_forward_hook(lambda module, args, out: out + probe(out))
    found = _copy_and_share(model)
    assert len(found) == 1
    assert "module '0'" in found[0] and "_forward_hooks" in found[0] and "closure variable 'probe'" in found[0]
    model_pre = nn.Sequential(nn.Linear(4, 4))
    model_pre.register_forward_pre_hook(lambda module, args: None)
    assert _copy_and_share(model_pre) == []


def test_shared_with_finds_modules_named_by_globals():
    assert len(found := _copy_and_share(GlobalFunction())) == 1 and "global '_OUTSIDE'" in found[0]
    assert len(found := _copy_and_share(GlobalInForward())) == 1 and "GlobalInForward.forward" in found[0]


def test_shared_with_finds_a_tensor_held_by_a_closure():
    model, weight = nn.Linear(4, 4), torch.ones(4)
    model.scale = lambda x: x * weight
    assert len(found := _copy_and_share(model)) == 1 and "closure variable 'weight'" in found[0]


def test_shared_with_finds_tensors_shared_by_a_custom_deepcopy():
    model = SharesEverything()
    model.fc1.weight.grad = torch.ones_like(model.fc1.weight)
    found = shared_with(copy.deepcopy(model), model)
    assert len(found) == len(list(model.parameters())) + 1
    assert any("gradient of parameter 'fc1.weight'" in line for line in found)
    assert shared_with(copy.deepcopy(MLP()), MLP()) == []


def _empty_cell():
    """A function whose closure cell is empty (as after its variable is deleted)."""
    gone = None

    def inner():
        return gone

    return types.FunctionType(inner.__code__, inner.__globals__, closure=(types.CellType(),))


def test_shared_with_skips_what_it_cannot_read():
    model = SelfClosure()
    copied = copy.deepcopy(model)
    copied.odd = Unreadable(a=1)
    copied.empty_cell = _empty_cell()
    with pytest.raises(ValueError):
        _ = copied.empty_cell.__closure__[0].cell_contents
    assert len(shared_with(copied, model)) == 1
    with pytest.raises(ParamError):
        shared_with(model, "not a module")


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
        self.extra = nn.Linear(3, 3)

    def forward(self, x):
        return self.extra(self.body(x))


def _record(model: nn.Module) -> dict:
    """Every object and value the snapshot must put back, recorded independently of it."""
    params = {}
    for name, p in model.named_parameters():
        grad = p.grad
        params[name] = (p, p.untyped_storage().data_ptr(), p.dtype, p.detach().clone(), p.requires_grad, grad,
                        None if grad is None else grad.untyped_storage().data_ptr(),
                        None if grad is None else grad.clone())
    buffers = {name: (b, b.untyped_storage().data_ptr(), b.clone()) for name, b in model.named_buffers()}
    modules = {name: (m, m.training) for name, m in model.named_modules()}
    scalars = {name: dict(vars(m)) for name, m in model.named_modules()}
    return {"params": params, "buffers": buffers, "modules": modules,
            "scalars": {name: {k: v for k, v in d.items() if isinstance(v, (int, float))} for name, d in scalars.items()}}


def _assert_as_recorded(model: nn.Module, record: dict) -> None:
    params = dict(model.named_parameters())
    assert params.keys() == record["params"].keys()
    for name, (p, pointer, dtype, values, requires_grad, grad, grad_pointer, grad_values) in record["params"].items():
        now = params[name]
        assert now is p and now.dtype == dtype and now.untyped_storage().data_ptr() == pointer, name
        assert torch.equal(now, values) and now.requires_grad == requires_grad, name
        assert now.grad is grad, name
        if grad is not None:
            assert torch.equal(now.grad, grad_values) and now.grad.untyped_storage().data_ptr() == grad_pointer, name
    buffers = dict(model.named_buffers())
    assert buffers.keys() == record["buffers"].keys()
    for name, (b, pointer, values) in record["buffers"].items():
        assert buffers[name] is b and b.untyped_storage().data_ptr() == pointer and torch.equal(b, values), name
    for name, (module, training) in record["modules"].items():
        assert dict(model.named_modules())[name] is module and module.training == training, name
        assert {k: v for k, v in vars(module).items() if isinstance(v, (int, float))} == record["scalars"][name], name


def _train(model: nn.Module, steps: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def _prepared_blocks() -> Blocks:
    torch.manual_seed(0)
    model = Blocks()
    _train(model, 2)
    model.body[4].weight.grad = None
    model.extra.bias.requires_grad_(False)
    model.extra.bias.grad = None
    model.body[1].eval()
    return model


def test_snapshot_restores_every_tensor_object_value_and_flag():
    model = _prepared_blocks()
    record = _record(model)
    snapshot = ModelSnapshot.take(model)

    _train(model, 3, seed=1)
    body, extra = model.body, model.extra
    body[3].p = 0.0
    body[1].momentum = 0.5
    extra.bias.requires_grad_(True)
    body[0].weight.requires_grad_(False)
    body[1]._buffers["running_mean"] = torch.zeros(8)
    body[0].bias.data = body[0].bias.data.clone() * 2
    body[0].weight.grad = torch.full_like(body[0].weight, 7.0)
    body[4].weight.grad = torch.ones_like(body[4].weight)
    extra.weight = nn.Parameter(torch.zeros(3, 3))
    body[1].register_buffer("added", torch.ones(1))
    model.eval()
    with pytest.raises(AssertionError):
        _assert_as_recorded(model, record)

    snapshot.restore()
    _assert_as_recorded(model, record)


@pytest.mark.parametrize("move", [lambda m: m.double(), lambda m: m.to("meta")])
def test_snapshot_restores_a_model_moved_to_another_dtype_or_device(move):
    model = _prepared_blocks()
    record = _record(model)
    snapshot = ModelSnapshot.take(model)
    move(model)
    assert next(model.parameters()).dtype == torch.float64 or next(model.parameters()).device.type == "meta"
    snapshot.restore()
    _assert_as_recorded(model, record)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _sgd_steps(model: nn.Module, steps: int = 5) -> None:
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        x = torch.randn(8, 4, generator=gen)
        F.mse_loss(model(x), x.flip(1)).backward()
        optimizer.step()


def test_training_copy_trains_a_closure_model_in_place_and_restores_it():
    torch.manual_seed(0)
    model = SelfClosure()
    before = _state(model)
    with training_copy(model) as trained:
        assert trained is model
        _sgd_steps(trained)
        assert not _equal_states(_state(model), before)
        assert any(p.grad is not None for p in model.parameters())
    assert _equal_states(_state(model), before)
    assert all(p.grad is None for p in model.parameters())


def test_training_copy_trains_a_deep_copy_of_a_plain_model():
    torch.manual_seed(0)
    model = MLP()
    before, parameters = _state(model), list(model.parameters())
    with training_copy(model) as trained:
        assert trained is not model
        _sgd_steps(trained)
        trained_state = _state(trained)
    assert not _equal_states(trained_state, before)
    assert _equal_states(_state(model), before)
    assert list(model.parameters()) == parameters and all(p.grad is None for p in model.parameters())


def test_training_copy_restores_when_the_block_raises():
    torch.manual_seed(0)
    model = SelfClosure()
    record = _record(model)
    with pytest.raises(RuntimeError, match="inside"):
        with training_copy(model) as trained:
            _sgd_steps(trained, 2)
            trained.mlp.fc1.weight.data = torch.zeros(8, 4)
            trained.eval()
            raise RuntimeError("inside")
    _assert_as_recorded(model, record)


def test_training_copy_trains_in_place_a_model_that_cannot_be_copied():
    torch.manual_seed(0)
    model = MLP()
    model.lock = threading.Lock()
    with pytest.raises(TypeError):
        copy.deepcopy(model)
    before = _state(model)
    with training_copy(model) as trained:
        assert trained is model
        _sgd_steps(trained)
    assert _equal_states(_state(model), before)
    with pytest.raises(ParamError):
        with training_copy("not a module"):
            pass
