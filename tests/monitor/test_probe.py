"""The layer probe: dead layers, hidden softmaxes, vanishing gradients and parameters that never learn, read
off one forward/backward pass; the user's model, its gradients and the RNG untouched."""

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dltips import Task
from dltips.monitor.probe import VANISHING, layer_findings, probe_layers

sys.path.insert(0, str(Path(__file__).parents[1] / "calibration"))
import causes_model  # noqa: E402


def _task(model, n=128, d=8, classes=3, **options):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)
    return Task(model, TensorDataset(x, y), TensorDataset(x[:32], y[:32]), **options)


def test_a_layer_with_every_unit_dead_fails_and_the_layers_before_get_no_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every pre-activation negative for these inputs
    probe = probe_layers(_task(model))
    assert probe.dead == {"1": 1.0}
    # the layer before the dead ReLU, and the weight after it, whose input is all zeros; its bias still learns
    assert probe.no_gradient == ["0.weight", "0.bias", "2.weight"]
    found = {f.tip: f for f in layer_findings(probe)}
    assert found["activation-gradient-stats"].status == "fail"
    assert found["activation-gradient-stats"].evidence["cause"] == "dead-layer"
    assert found["update-ratio"].status == "fail" and "0.weight" in found["update-ratio"].message


def test_relative_gradients_are_the_gradient_norms_over_the_weight_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    task = _task(model)
    probe = probe_layers(task)
    x, y = task.train.tensors
    reference = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    reference.load_state_dict(model.state_dict())
    nn.functional.cross_entropy(reference(x), y).backward()
    for name in ("0", "2"):
        layer = getattr(reference, name)
        expected = float(layer.weight.grad.norm() / layer.weight.detach().norm())
        assert abs(probe.relative_gradients[name] - expected) < 1e-5 * expected
    assert probe.gradient_ratio == probe.relative_gradients["0"] / probe.relative_gradients["2"]
    assert layer_findings(probe) == []  # a healthy shallow tanh network: nothing to report


def test_a_deep_sigmoid_stack_has_vanishing_gradients_and_a_shallow_one_does_not():
    deep = probe_layers(causes_model.deep_sigmoid_task(8))
    assert deep.gradient_ratio < VANISHING
    assert [f.evidence["cause"] for f in layer_findings(deep)] == ["vanishing"]
    assert probe_layers(causes_model.shallow_tanh_task()).gradient_ratio > 30 * VANISHING


def test_a_hidden_softmax_is_named_and_an_output_softmax_is_not():
    probe = probe_layers(causes_model.softmax_hidden_task())
    assert probe.hidden_softmax == ["1", "3"]
    torch.manual_seed(0)
    at_the_end = _task(nn.Sequential(nn.Linear(8, 3), nn.Softmax(dim=1)), loss=lambda p, y: nn.functional.nll_loss(
        p.clamp_min(1e-9).log(), y))
    assert probe_layers(at_the_end).hidden_softmax == []


def test_parameters_the_optimizer_does_not_hold_are_named():
    probe = probe_layers(causes_model.half_optimized_task())
    assert probe.not_optimized == ["0.weight", "0.bias", "2.weight", "2.bias"]
    (finding,) = layer_findings(probe)
    assert finding.tip == "update-ratio" and finding.status == "warn" and "2.bias" in finding.message


def test_the_model_its_grads_and_the_rng_are_untouched():
    task = causes_model.dead_biases_task()
    for p in task.model.parameters():
        p.grad = torch.ones_like(p)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    grads = [p.grad for p in task.model.parameters()]
    rng = torch.get_rng_state()
    task.model.eval()
    probe_layers(task)
    assert all(torch.equal(v, before[k]) for k, v in task.model.state_dict().items())
    assert all(p.grad is g and torch.equal(g, torch.ones_like(g)) for p, g in zip(task.model.parameters(), grads))
    assert not task.model.training
    assert torch.equal(torch.get_rng_state(), rng)
