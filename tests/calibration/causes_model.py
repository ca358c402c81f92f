"""Calibration tasks for the cause probes: one model-level fault each, and healthy tasks that use the same
constructions legitimately.

The faults follow the published fault taxonomies of deep-learning programs: TheDeepChecker (Braiek &
Khomh, TOSEM 2022), AUTOTRAINER (Zhang et al., ICSE 2021: vanishing gradients, dying ReLU), DeepDiagnosis
(Wardat et al., ICSE 2022) and the bug studies of Islam et al. (FSE 2019) and Humbatova et al. (ICSE 2020:
wrong activation of the last layer, missing or wrong parameters in the optimizer).
"""

from __future__ import annotations

import torch
from torch import nn

from dltips import Task
from zoo import _with, digits_mlp, mlp, tabular


def dead_biases_task() -> Task:
    """Every hidden ReLU starts dead: the hidden layers' biases set to -5 (Humbatova: wrong initialisation)."""
    task = digits_mlp()
    with torch.no_grad():
        for layer in [m for m in task.model if isinstance(m, nn.Linear)][:-1]:
            layer.bias.fill_(-5.0)
    return _with(task, name="dead-biases")


def relu_on_logits_task() -> Task:
    """A ReLU after the output layer: the logits cannot go negative (Islam: wrong activation of the last layer)."""
    torch.manual_seed(0)
    return _with(digits_mlp(), model=nn.Sequential(mlp(64, 10), nn.ReLU()), name="relu-on-logits")


class SingleSoftmax(nn.Module):
    """A regression head ending in a softmax over its one output: it always outputs 1."""

    def __init__(self, n_in: int):
        super().__init__()
        self.body = mlp(n_in, 1)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        return self.softmax(self.body(x))


def softmax_regression_task() -> Task:
    """A softmax over a single regression output (Humbatova: wrong activation of the last layer)."""
    task = tabular("diabetes", "regression")
    torch.manual_seed(0)
    return _with(task, model=SingleSoftmax(10), name="softmax-regression")


def sigmoid_signed_targets_task() -> Task:
    """A sigmoid output against standardised regression targets, half of them negative."""
    task = tabular("friedman1", "regression")
    torch.manual_seed(0)
    return _with(task, model=nn.Sequential(mlp(10, 1), nn.Sigmoid()), name="sigmoid-signed-targets")


def tanh_wide_targets_task() -> Task:
    """A tanh output against raw regression targets far beyond +-1."""
    task = tabular("diabetes", "regression", standardise=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(10), mlp(10, 1), nn.Tanh())
    return _with(task, model=model, name="tanh-wide-targets")


def softmax_hidden_task() -> Task:
    """Softmax as the hidden activation: each layer's outputs sum to one, 1/64 each (Humbatova: wrong activation)."""
    task = digits_mlp()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Softmax(dim=1), nn.Linear(64, 64), nn.Softmax(dim=1), nn.Linear(64, 10))
    return _with(task, model=model, name="softmax-hidden")


def deep_sigmoid_task(depth: int = 12) -> Task:
    """A deep stack of sigmoid layers: the gradient shrinks about 4 times a layer (AUTOTRAINER: vanishing gradient)."""
    task = digits_mlp()
    torch.manual_seed(0)
    layers, d = [], 64
    for _ in range(depth):
        layers += [nn.Linear(d, 32), nn.Sigmoid()]
        d = 32
    return _with(task, model=nn.Sequential(*layers, nn.Linear(d, 10)), name=f"deep-sigmoid-{depth}")


def half_optimized_task() -> Task:
    """The optimizer holds only the output layer (Humbatova: missing parameters in the optimizer)."""
    task = digits_mlp()
    return _with(task, optimizer=lambda params: torch.optim.AdamW(list(params)[-2:], lr=1e-3),
                 name="half-optimized")


# Healthy tasks with the same constructions, used legitimately
def sigmoid_unit_targets_task() -> Task:
    """A sigmoid output on regression targets scaled into [0, 1]."""
    task = tabular("friedman1", "regression")
    ys = torch.stack([y for _, y in task.train])
    low, high = float(ys.min()), float(ys.max())

    def rescale(ds):
        x, y = ds.tensors
        return torch.utils.data.TensorDataset(x, ((y - low) / (high - low)).clamp(0, 1))

    torch.manual_seed(0)
    return _with(task, model=nn.Sequential(mlp(10, 1), nn.Sigmoid()), train=rescale(task.train),
                 valid=rescale(task.valid), test=rescale(task.test), name="sigmoid-unit-targets")


class BiasPath(nn.Module):
    """An MLP plus a learned per-class bias that does not depend on the input (a prior), as some heads have."""

    def __init__(self):
        super().__init__()
        self.body = mlp(64, 10)
        self.prior = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        return self.body(x) + self.prior


def bias_path_task() -> Task:
    torch.manual_seed(0)
    return _with(digits_mlp(), model=BiasPath(), name="bias-path")


def shallow_tanh_task() -> Task:
    """Two tanh hidden layers: a bounded activation that a healthy network uses without saturating."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    return _with(digits_mlp(), model=model, name="shallow-tanh")


def heavy_dropout_task() -> Task:
    """Dropout 0.9 after each hidden layer: the model underfits (Humbatova: wrong dropout rate)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.9), nn.Linear(64, 64), nn.ReLU(),
                          nn.Dropout(0.9), nn.Linear(64, 10))
    return _with(digits_mlp(), model=model, name="heavy-dropout")


def huge_weight_decay_task() -> Task:
    """AdamW with weight decay 10: the weights shrink faster than the gradient grows them."""
    return _with(digits_mlp(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=10.0),
                 name="huge-weight-decay")


def usual_dropout_task() -> Task:
    """Dropout 0.5 between the hidden layers of the digits MLP, as many scripts have: healthy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 64), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(64, 10))
    return _with(digits_mlp(), model=model, name="usual-dropout")
