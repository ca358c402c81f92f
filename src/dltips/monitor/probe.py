"""Layer probes: why a model cannot fit, read off one training batch at initialisation.

The watch (`dltips.watch`) samples a run; the probe answers one question on the untrained model, when
a fundamental check (initialization, overfit-tiny, capacity, error gaps) has failed and the doctor
looks for the cause. One forward and one backward pass of a copy of the model on up to `MAX_ITEMS`
training items (no optimizer step) give, per layer:

- dead ReLU units: units that output zero for every item (`stats.dead_fraction`); a layer where all of
  them are dead passes no gradient and no information;
- saturated tanh/sigmoid outputs (`stats.saturated_fraction`);
- a softmax whose output feeds further layers: a hidden softmax makes each layer's outputs sum to one,
  so with 64 units each is about 1/64 and every later layer sees a near-constant input;
- gradient flow: each weight's relative gradient |g|/|w|, and the ratio of the first weight layer's
  to the last's (in the order the forward pass reaches them);
- parameters no gradient reaches, and parameters the optimizer does not hold, by name.

Thresholds, from `tests/calibration` (healthy: the calibration set's 20 healthy tasks and the cause
set's look-alikes; broken: causes_model.py), measured at initialisation:

    first/last relative gradient     healthy 0.029 to 1.06 (23 tasks)       12 sigmoid layers 2.3e-10,
                                                                           8 layers 4.9e-07, 6 layers 2.7e-05
    dead units (worst layer)         healthy at most 0.16 (spirals)         biases at -5: 1.0
    saturated outputs (worst layer)  healthy (tanh MLP) 0.0                 (the watch's SATURATED_WARN, 0.2)

with the first/last ratio over dense layers only (Linear, Conv, Bilinear; see `_WEIGHTED`). VANISHING =
1e-3 sits 29 times below the lowest healthy ratio and 37 times above 6 sigmoid layers'; 4 sigmoid
layers give 1.3e-3 and still fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import model_device, model_on_device, resolve_device, to_device
from dltips.core.state import grads_kept, rng_kept, training_copy
from dltips.findings import Finding
from dltips.monitor.stats import BOUNDED_FAMILY, DEAD_FAMILY, dead_fraction, saturated_fraction
from dltips.monitor.verdicts import DEAD_WARN, SATURATED_WARN
from dltips.task import Task
from dltips.training.lr import make_optimizer

__all__ = ["LayerProbe", "check_gradient_flow", "layer_findings", "probe_layers"]

MAX_ITEMS = 256
ALL_DEAD = 0.99  # a layer with this fraction of its units dead passes (almost) nothing: fail
VANISHING = 1e-3  # first/last relative gradient below this: the first layers cannot learn
FROZEN = 0.5  # share of parameter elements with requires_grad=False named as a cause (a warn: freezing can be meant)
# dense weight layers: an embedding's gradient reaches only the rows a batch uses, so its relative gradient is
# small in a healthy model (2.8e-3 and 3.7e-3 against the next layer's, in messy-streets and transformer-lm)
_WEIGHTED = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)


@dataclass
class LayerProbe:
    """What one forward/backward pass at initialisation shows, layer by layer."""

    items: int
    dead: dict[str, float] = field(default_factory=dict)  # ReLU-family layer -> fraction of dead units
    saturated: dict[str, float] = field(default_factory=dict)  # bounded layer -> fraction of flat outputs
    hidden_softmax: list[str] = field(default_factory=list)  # softmax layers whose output feeds another layer
    relative_gradients: dict[str, float] = field(default_factory=dict)  # weight -> |g|/|w|, forward order
    no_gradient: list[str] = field(default_factory=list)  # trainable parameters whose gradient is None or zero
    not_optimized: list[str] = field(default_factory=list)  # trainable parameters the optimizer does not hold
    frozen_share: float = 0.0  # share of the parameters' elements with requires_grad=False
    kinds: dict[str, str] = field(default_factory=dict)  # probed activation layer -> its class name, e.g. "ReLU"
    feeds: dict[str, str] = field(default_factory=dict)  # activation layer -> the weight layer the forward pass ran before it

    @property
    def gradient_ratio(self) -> float | None:
        """The first weight layer's relative gradient over the last's (None with fewer than 2, or a zero)."""
        values = [v for v in self.relative_gradients.values() if v > 0]
        return values[0] / values[-1] if len(values) >= 2 else None

    def evidence(self) -> dict:
        ratio = self.gradient_ratio
        return {"items": self.items, "dead": _rounded(self.dead), "saturated": _rounded(self.saturated),
                "hidden_softmax": self.hidden_softmax, "relative_gradients": _rounded(self.relative_gradients),
                "gradient_ratio": None if ratio is None else float(f"{ratio:.3g}"),
                "no_gradient": self.no_gradient, "not_optimized": self.not_optimized,
                "frozen_share": round(self.frozen_share, 4),
                "thresholds": {"all_dead": ALL_DEAD, "dead_warn": DEAD_WARN, "saturated_warn": SATURATED_WARN,
                               "vanishing": VANISHING}}


def probe_layers(task: Task, model: nn.Module | None = None, max_items: int = MAX_ITEMS, seed: int = 0) -> LayerProbe:
    """One forward and backward pass of a copy of `model` (default `task.model`) on the first training items.

    Train mode, as training runs; the user's model, its gradients and the global RNG are left as they were.
    """
    original = task.model if model is None else model
    with rng_kept(seed), grads_kept(original), training_copy(original) as copy:
        copy.train()
        device = model_device(copy)
        x, y = to_device(task.first_batch(task.train, max_items), device)
        names = {m: n for n, m in copy.named_modules()}
        probe = LayerProbe(items=len(y))
        order: list[nn.Module] = []  # leaf modules in the order the forward pass calls them
        outputs: dict[nn.Module, Any] = {}

        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            order.append(module)
            if isinstance(output, torch.Tensor):
                outputs[module] = output
                if isinstance(module, DEAD_FAMILY):
                    fraction = dead_fraction(module, output.detach(), 1 if output.dim() > 2 else -1)
                    if fraction is not None:
                        probe.dead[names[module]] = float(fraction)
                elif isinstance(module, BOUNDED_FAMILY):
                    probe.saturated[names[module]] = float(saturated_fraction(module, output.detach()))

        leaves = [m for m in copy.modules() if not list(m.children())]
        handles = [m.register_forward_hook(record) for m in leaves]
        try:
            for p in copy.parameters():
                p.grad = None
            output, target = task.outputs(copy, (x, y))
            task.loss_fn(output, target).backward()
        finally:
            for h in handles:
                h.remove()
        probe.hidden_softmax = [names[m] for m in _hidden_softmaxes(order, outputs, output)]
        seen: list[nn.Module] = list(dict.fromkeys(order))
        last_weighted = None
        for module in seen:
            if isinstance(module, _WEIGHTED):
                last_weighted = names[module]
            elif isinstance(module, (DEAD_FAMILY, BOUNDED_FAMILY)):
                probe.kinds[names[module]] = type(module).__name__
                if last_weighted is not None:
                    probe.feeds[names[module]] = last_weighted
        for module in seen:
            weight = getattr(module, "weight", None)
            if isinstance(module, _WEIGHTED) and isinstance(weight, nn.Parameter) and weight.requires_grad:
                grad = 0.0 if weight.grad is None else float(weight.grad.norm())
                probe.relative_gradients[names[module]] = grad / max(float(weight.detach().norm()), 1e-12)
        total = sum(p.numel() for p in copy.parameters())
        probe.frozen_share = sum(p.numel() for p in copy.parameters() if not p.requires_grad) / max(total, 1)
        held = {id(p) for group in make_optimizer(task, copy).param_groups for p in group["params"]}
        for name, p in copy.named_parameters():
            if p.requires_grad:
                if p.grad is None or not bool(p.grad.ne(0).any()):
                    probe.no_gradient.append(name)
                if id(p) not in held:
                    probe.not_optimized.append(name)
    return probe


def check_gradient_flow(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
) -> list[Finding]:
    """The layer probe as a check: its findings (activation-gradient-stats, update-ratio), or one `pass` when
    no layer is dead, saturated or a hidden softmax, gradients reach every layer, and the optimizer holds
    every trainable parameter. `max_items` training items (default MAX_ITEMS) go through one pass."""
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    model = task.model if model is None else model
    model = model_on_device(model, resolve_device(device, model))
    probe = probe_layers(task, model, MAX_ITEMS if max_items is None else max_items, seed)
    return layer_findings(probe) or [Finding(
        "activation-gradient-stats", "pass", "Gradients reach every layer at initialisation",
        f"On {probe.items} training items: no dead or saturated layer, no hidden softmax, the first dense layer's "
        f"relative gradient is {probe.gradient_ratio or 1.0:.2g} times the last's (vanishing below {VANISHING:g}), and "
        "the optimizer holds every trainable parameter.", None, probe.evidence())]


def _hidden_softmaxes(order: list[nn.Module], outputs: dict[nn.Module, Any], final: Any) -> list[nn.Module]:
    """Softmax layers over more than one unit that the forward pass calls before some weight layer."""
    found = []
    for i, module in enumerate(order):
        if isinstance(module, nn.Softmax) and outputs.get(module) is not final:
            out = outputs.get(module)
            units = out.shape[module.dim if module.dim is not None else -1] if isinstance(out, torch.Tensor) else 1
            if units > 1 and any(isinstance(m, _WEIGHTED) for m in order[i + 1:]):
                found.append(module)
    return list(dict.fromkeys(found))


def layer_findings(probe: LayerProbe) -> list[Finding]:
    """The probe's verdicts: activation-gradient-stats (dead, saturated, hidden softmax, vanishing gradient)
    and update-ratio (parameters no gradient reaches or the optimizer does not hold). Only problems: a
    probe that finds nothing returns no finding, since the watch over a training run gives the full verdict.
    """
    found: list[Finding] = []
    evidence = probe.evidence()
    causes, fixes, failing = [], [], False
    all_dead = {k: v for k, v in probe.dead.items() if v >= ALL_DEAD}
    dead = {k: v for k, v in probe.dead.items() if DEAD_WARN <= v < ALL_DEAD}
    if all_dead:
        failing = True
        causes.append(f"every unit of {_layers(probe, all_dead)} outputs zero for all {probe.items} items at "
                      "initialisation: nothing passes through, and no gradient reaches the layers before")
        fixes.append(f"reinitialise {_feeding(probe, all_dead)} (Kaiming init, zero or small positive biases), "
                     "normalise the inputs, or use LeakyReLU/GELU")
    if dead:
        causes.append(f"{_listed(dead, percent=True)} of the units dead at initialisation")
        fixes.append(f"He (Kaiming) init and zero or small positive biases for {_feeding(probe, dead)}")
    if probe.hidden_softmax:
        failing = True
        causes.append(f"a softmax used as a hidden activation ({', '.join(probe.hidden_softmax)}): its outputs "
                      "sum to one, so each is about 1/units and the next layer sees a near-constant input")
        fixes.append("use ReLU or GELU between hidden layers; a softmax belongs only at the output, and not even "
                     "there before CrossEntropyLoss, which applies it")
    ratio = probe.gradient_ratio
    if ratio is not None and ratio < VANISHING:
        failing = True
        first, last = next(iter(probe.relative_gradients)), list(probe.relative_gradients)[-1]
        causes.append(f"vanishing gradients: the first weight layer's relative gradient ({first}, "
                      f"{probe.relative_gradients[first]:.2g}) is {ratio:.2g} times the last's ({last}, "
                      f"{probe.relative_gradients[last]:.2g})")
        fixes.append("fewer saturating layers, ReLU/GELU instead of sigmoid or tanh, residual connections or "
                     "normalisation layers")
    saturated = {k: v for k, v in probe.saturated.items() if v >= SATURATED_WARN}
    if saturated:
        causes.append(f"{_listed(saturated, percent=True)} of the outputs saturated at initialisation")
        fixes.append(f"scale the weights of {_feeding(probe, saturated)} down (Xavier/Glorot) or normalise before "
                     "the activation")
    if causes:
        status = "fail" if failing else "warn"
        found.append(Finding("activation-gradient-stats", status, _title(causes[0]),
                             f"At initialisation, on {probe.items} training items: " + "; ".join(causes) + ".",
                             _capitalised("; ".join(fixes)) + ".", {**evidence, "cause": _cause_name(causes[0])}))
    stuck = [n for n in probe.no_gradient if n not in probe.not_optimized]
    if probe.not_optimized or stuck:
        parts = []
        if probe.not_optimized:
            parts.append(f"the optimizer does not hold {_names(probe.not_optimized)}: they are never updated")
        if stuck:
            parts.append(f"no gradient reaches {_names(stuck)}")
        every = len(set(probe.not_optimized) | set(stuck)) == len(probe.relative_gradients) or not probe.relative_gradients
        found.append(Finding(
            "update-ratio", "fail" if every or stuck else "warn",
            "Parameters that are never updated" if probe.not_optimized else "Parameters no gradient reaches",
            "At initialisation, one backward pass: " + "; ".join(parts) + ".",
            "Build the optimizer over model.parameters() (after any change to the model); for parameters no "
            "gradient reaches, look for a detach(), an .item(), a branch of the model that the output does "
            "not use, or a layer after them that is dead or constant (see activation-gradient-stats and "
            "initialization).", {**evidence, "cause": "not-optimized" if probe.not_optimized else "no-gradient"}))
    if probe.frozen_share >= FROZEN:
        found.append(Finding(
            "update-ratio", "warn", f"{probe.frozen_share:.0%} of the parameters are frozen",
            f"{probe.frozen_share:.1%} of the parameters' elements have requires_grad=False: only the rest can learn. "
            "Frozen on purpose (fine-tuning a head on a pretrained body) that is right; with an untrained body, "
            "the model cannot fit its training data.",
            "Unfreeze the layers that must learn (p.requires_grad_(True)) before building the optimizer.",
            {**evidence, "cause": "frozen"}))
    return found


def _title(cause: str) -> str:
    if cause.startswith("every unit"):
        return "A layer is entirely dead at initialisation"
    if cause.startswith("a softmax"):
        return "A softmax is used as a hidden activation"
    if cause.startswith("vanishing"):
        return "Vanishing gradients: the first layers get almost no gradient"
    if "dead" in cause:
        return "Dead ReLU units at initialisation"
    return "Saturated activations at initialisation"


def _cause_name(cause: str) -> str:
    for prefix, name in (("every unit", "dead-layer"), ("a softmax", "hidden-softmax"), ("vanishing", "vanishing")):
        if cause.startswith(prefix):
            return name
    return "dead-units" if "dead" in cause else "saturated"


def _listed(values: dict[str, float], percent: bool = False) -> str:
    if percent:
        return ", ".join(f"{k}: {v:.0%}" for k, v in values.items())
    return ", ".join(values)


def _capitalised(text: str) -> str:
    """`text` with its first letter upper case, the rest as written (layer and class names keep their case)."""
    return text[:1].upper() + text[1:]


def _layers(probe: LayerProbe, layers: dict[str, float]) -> str:
    """Activation layers by name and class, e.g. "1 (ReLU), 3 (ReLU)"."""
    return ", ".join(f"{k} ({probe.kinds[k]})" if k in probe.kinds else k for k in layers)


def _feeding(probe: LayerProbe, layers: dict[str, float]) -> str:
    """The weight layers that feed `layers`, named, e.g. "layers 0, 2 (before 1, 3)"; the layers themselves
    when the forward pass ran no weight layer before them."""
    before = list(dict.fromkeys(probe.feeds[k] for k in layers if k in probe.feeds))
    if not before:
        return f"the layers before {', '.join(layers)}"
    return f"layer{'s' if len(before) > 1 else ''} {', '.join(before)} (before {', '.join(layers)})"


def _names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: float(f"{v:.3g}") for k, v in values.items()}
