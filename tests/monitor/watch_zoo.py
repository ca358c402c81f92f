"""Healthy and broken training runs for calibrating the monitors' verdicts.

Each run trains a small model in a hand-written loop inside `dltips.watch` and
returns the watch. `python tests/monitor/test_watch_calibration.py` prints what
each run measured (the figures quoted in docs/calibration.md).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dltips import watch
from dltips.demos.digits import DigitsCNN, load_digits_tensors

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from synthetic import blobs, spirals  # noqa: E402

STEPS = 160
EVERY = 10
BATCH = 64


def _mlp(d_in: int, d_out: int, width: int, depth: int, activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), activation()]
    return nn.Sequential(*layers, nn.Linear(width, d_out))


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits_tensors()
    return x, y


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, *,
          steps: int = STEPS, step_optimizer: bool = True, seed: int = 0, scheduler=None):
    """A plain loop over random batches inside `watch(model, optimizer, every=EVERY)`; returns the watch."""
    g = torch.Generator().manual_seed(seed)
    with watch(model, optimizer, every=EVERY) as w:
        for _ in range(steps):
            i = torch.randint(0, len(x), (BATCH,), generator=g)
            loss = F.cross_entropy(model(x[i]), y[i])
            optimizer.zero_grad()
            loss.backward()
            if step_optimizer:
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            w.log(loss=loss)
    return w


# ---------------------------------------------------------------------- healthy


def relu_mlp_adamw(seed=0):
    torch.manual_seed(seed)
    x, y = blobs(seed=seed)
    model = _mlp(16, 10, 64, 2, nn.ReLU)
    return train(model, x, y, torch.optim.AdamW(model.parameters(), lr=1e-3), seed=seed)


def relu_mlp_sgd(seed=0):
    torch.manual_seed(seed)
    x, y = spirals(seed=seed)
    model = _mlp(2, 3, 128, 3, nn.ReLU)
    return train(model, x, y, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), seed=seed)


def tanh_mlp_adamw(seed=0):
    torch.manual_seed(seed)
    x, y = spirals(seed=seed)
    model = _mlp(2, 3, 64, 3, nn.Tanh)
    return train(model, x, y, torch.optim.AdamW(model.parameters(), lr=3e-3), seed=seed)


def sigmoid_mlp_sgd(seed=0):
    torch.manual_seed(seed)
    x, y = blobs(seed=seed)
    model = _mlp(16, 10, 64, 2, nn.Sigmoid)
    return train(model, x, y, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), seed=seed)


def wide_mlp_adamw_onecycle(seed=0):
    from dltips import OneCycle

    torch.manual_seed(seed)
    x, y = blobs(d=32, seed=seed)
    model = _mlp(32, 10, 512, 2, nn.ReLU)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return train(model, x, y, optimizer, seed=seed, scheduler=OneCycle(optimizer, max_lr=3e-3, total_steps=STEPS))


def deep_narrow_mlp_adamw(seed=0):
    torch.manual_seed(seed)
    x, y = blobs(seed=seed)
    model = _mlp(16, 10, 32, 6, nn.ReLU)
    return train(model, x, y, torch.optim.AdamW(model.parameters(), lr=3e-4), seed=seed)


def digits_cnn_adamw(seed=0):
    torch.manual_seed(seed)
    x, y = _digits()
    model = DigitsCNN()
    return train(model, x, y, torch.optim.AdamW(model.parameters(), lr=3e-3), seed=seed)


def digits_cnn_sgd(seed=0):
    torch.manual_seed(seed)
    x, y = _digits()
    model = DigitsCNN(width=32)
    return train(model, x, y, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), seed=seed)


HEALTHY = {f.__name__: f for f in (relu_mlp_adamw, relu_mlp_sgd, tanh_mlp_adamw, sigmoid_mlp_sgd,
                                     wide_mlp_adamw_onecycle, deep_narrow_mlp_adamw, digits_cnn_adamw,
                                     digits_cnn_sgd)}


# ---------------------------------------------------------------------- broken


def dead_relu_init(seed=0):
    """Biases of the hidden layers start at -3: most ReLU units output zero for every input, and stay dead."""
    torch.manual_seed(seed)
    x, y = blobs(seed=seed)
    model = _mlp(16, 10, 64, 3, nn.ReLU)
    with torch.no_grad():
        for layer in model[:-1]:
            if isinstance(layer, nn.Linear):
                layer.bias.fill_(-3.0)
    return train(model, x, y, torch.optim.AdamW(model.parameters(), lr=1e-3), seed=seed)


def saturating_tanh_init(seed=0):
    """Weights 8x too large: the tanh layers sit on their flat ends."""
    torch.manual_seed(seed)
    x, y = blobs(seed=seed)
    model = _mlp(16, 10, 64, 3, nn.Tanh)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(8.0)
    return train(model, x, y, torch.optim.AdamW(model.parameters(), lr=1e-3), seed=seed)


def layer_left_out_of_optimizer(seed=0):
    """The optimizer holds only the last layer: the hidden layers never move."""
    torch.manual_seed(seed)
    x, y = blobs(seed=seed)
    model = _mlp(16, 10, 64, 2, nn.ReLU)
    return train(model, x, y, torch.optim.AdamW(model[-1].parameters(), lr=1e-3), seed=seed)


def frozen_by_zero_lr(seed=0):
    """A learning rate of 0 (a schedule that never warms up): nothing moves."""
    torch.manual_seed(seed)
    x, y = blobs(seed=seed)
    model = _mlp(16, 10, 64, 2, nn.ReLU)
    return train(model, x, y, torch.optim.SGD(model.parameters(), lr=0.0), seed=seed)


def never_stepped(seed=0):
    """The loop computes gradients but never calls optimizer.step()."""
    torch.manual_seed(seed)
    x, y = blobs(seed=seed)
    model = _mlp(16, 10, 64, 2, nn.ReLU)
    return train(model, x, y, torch.optim.AdamW(model.parameters(), lr=1e-3), seed=seed, step_optimizer=False)


def lr_far_too_high_adamw(seed=0):
    """AdamW at lr 1.0 (the default rule says about 3e-3 for this model)."""
    torch.manual_seed(seed)
    x, y = blobs(seed=seed)
    model = _mlp(16, 10, 64, 2, nn.ReLU)
    return train(model, x, y, torch.optim.AdamW(model.parameters(), lr=1.0), seed=seed)


def lr_far_too_high_sgd(seed=0):
    """SGD at lr 20 on a digits CNN: the loss blows up to NaN."""
    torch.manual_seed(seed)
    x, y = _digits()
    model = DigitsCNN()
    return train(model, x, y, torch.optim.SGD(model.parameters(), lr=20.0, momentum=0.9), seed=seed)


# which tips must flag each broken run (at least one of them, with status warn or fail)
BROKEN = {
    dead_relu_init.__name__: (dead_relu_init, {"activation-gradient-stats"}),
    saturating_tanh_init.__name__: (saturating_tanh_init, {"activation-gradient-stats"}),
    layer_left_out_of_optimizer.__name__: (layer_left_out_of_optimizer, {"update-ratio"}),
    frozen_by_zero_lr.__name__: (frozen_by_zero_lr, {"update-ratio"}),
    never_stepped.__name__: (never_stepped, {"update-ratio"}),
    lr_far_too_high_adamw.__name__: (lr_far_too_high_adamw, {"update-ratio"}),
    lr_far_too_high_sgd.__name__: (lr_far_too_high_sgd, {"update-ratio", "activation-gradient-stats"}),
}


def measurements(w) -> dict[str, float]:
    """The numbers the verdicts compare with their thresholds, for the calibration table."""
    from dltips.monitor.verdicts import late_samples, layer_median, layer_names

    late, first = late_samples(w.samples), w.samples[:1]
    dead = [layer_median(late, layer, "dead") for layer in layer_names(w.samples)]
    sat = [layer_median(late, layer, "saturated") for layer in layer_names(w.samples)]
    dead0 = [layer_median(first, layer, "dead") for layer in layer_names(w.samples)]
    sat0 = [layer_median(first, layer, "saturated") for layer in layer_names(w.samples)]
    ratios, peaks = [], []
    for parameter, shape in w.shapes.items():
        values = [s.updates[parameter] for s in w.samples if parameter in s.updates and len(shape) >= 2]
        values = [v for v in values if math.isfinite(v)]
        if values:
            ratios.append(float(np.median(values)))
            peaks.append(max(values))

    def top(values):
        values = [v for v in values if not math.isnan(v)]
        return max(values) if values else math.nan

    return {"dead": top(dead), "dead_init": top(dead0), "saturated": top(sat), "saturated_init": top(sat0),
            "ratio_min": min(ratios) if ratios else math.nan, "ratio_max": max(ratios) if ratios else math.nan,
            "ratio_peak": max(peaks) if peaks else math.nan}
