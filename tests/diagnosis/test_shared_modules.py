"""A model whose parts survive deepcopy shared with it: the doctor trains it in place and puts it back exactly."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dltips import Task, doctor
from dltips.core.state import shared_with


class ClosureModel(nn.Module):
    """Its MLP is reached through a lambda: a deep copy's forward runs the original's MLP."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 3)
        self.features = lambda x: self.mlp(x)

    def forward(self, x):
        return self.head(self.features(x))


def closure_task() -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = (x[:, :3].argmax(1)).long()
    torch.manual_seed(0)
    return Task(ClosureModel(), TensorDataset(x[:300], y[:300]), TensorDataset(x[300:], y[300:]), batch_size=32)


def state(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "ids": {k: id(v) for k, v in model.state_dict(keep_vars=True).items()},
        "storages": {k: v.untyped_storage().data_ptr() for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {k: p.grad for k, p in model.named_parameters()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
    }


def test_the_closure_is_detected_as_shared():
    import copy

    model = ClosureModel()
    assert shared_with(copy.deepcopy(model), model)


def test_the_doctor_leaves_a_closure_model_bit_identical_and_without_grads():
    task = closure_task()
    before = state(task.model)
    rng = torch.get_rng_state()
    report = doctor(task, budget_s=20, device="cpu", progress=False,
                    only={"overfit-tiny", "default-lr", "error-gaps", "activation-gradient-stats",
                          "overfit-then-regularize"})
    after = state(task.model)
    assert after["ids"] == before["ids"] and after["storages"] == before["storages"]
    assert all(torch.equal(before["tensors"][k], v) for k, v in after["tensors"].items())
    assert all(g is None for g in after["grads"].values())
    assert after["requires_grad"] == before["requires_grad"] and after["training"] == before["training"]
    assert torch.equal(torch.get_rng_state(), rng)
    tiny = next(f for f in report.findings if f.tip == "overfit-tiny")
    # trained in place, the MLP the forward pass uses is the one the optimizer holds: no false "no gradient"
    assert tiny.status == "pass", tiny.message
    assert all(r.get("trained_in_place") for r in tiny.evidence["rungs"] if r["steps"])
    assert not any("no gradient" in f.message for f in report.findings)
