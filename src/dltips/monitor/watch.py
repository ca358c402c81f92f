"""`dltips.watch`: activation, gradient and update statistics, cheap enough to leave on.

    with dltips.watch(model, optimizer) as w:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            w.log(loss=loss)
    findings = w.findings()

On every `every`-th optimizer step (a "sampled" step) forward hooks measure each
layer's output (mean, std, range, an adaptive histogram, dead ReLU units,
saturated tanh/sigmoid outputs), an optimizer pre-step hook measures each
parameter's gradient (norm, near-zero fraction, histogram) and copies the
weights, and a post-step hook measures norm(update) / norm(weights). All of it
stays on the device; it is read back in one transfer on the next sampled step,
so the host waits for no kernel. Other steps cost a few Python calls. The
history is bounded (every other sample is dropped when it is full), so a long
run does not grow memory. Hooks are removed on exit, also when the body raises.

Under torch.distributed, activation statistics are gathered from all ranks and
merged (gradients and weights are the same on every rank after DDP's
all-reduce), and only rank 0 writes to the sinks.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dltips.core.callbacks import Callback
from dltips.core.params import ParamError, instance, int_at_least
from dltips.findings import Finding
from dltips.monitor import stats
from dltips.monitor.loop import MODE_DEPENDENT, LoopRecord
from dltips.monitor.samples import Sample, rebin
from dltips.monitor.sinks import resolve_sinks
from dltips.monitor.verdicts import watch_findings

DEFAULT_EVERY = 25
DEFAULT_BINS = 32
MAX_VALUES = 1 << 14
MAX_SAMPLES = 256
MAX_LOGGED = 256  # logged values per name kept before they are folded into a sum
PROBE_PARAMETERS = 4  # parameters whose gradients the loop checks read

_UNITS_LAST = (nn.Linear, nn.Embedding, nn.Bilinear, nn.LayerNorm, nn.MultiheadAttention)


@dataclass
class _Pending:
    """A sampled step's statistics, still on the device."""

    step: int
    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]
    updates: dict[str, torch.Tensor]  # parameter -> [norm(update), norm(weights)]
    scalars: dict[str, torch.Tensor]
    checks: dict[str, torch.Tensor]  # the loop's checks (dltips.monitor.loop): name -> 0 or 1


class Watch(Callback):
    """Watches a model and its optimizer; see the module docstring and `dltips.watch`.

    Also a `dltips.fit` callback: `fit(task, callbacks=[Watch()])` attaches it to
    the loop's model and optimizer for the run and detaches it at the end.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        every: int = DEFAULT_EVERY,
        sinks: Any = None,
        bins: int = DEFAULT_BINS,
        layers: Iterable[str] | Callable[[str, nn.Module], bool] | None = None,
        max_samples: int = MAX_SAMPLES,
        max_values: int = MAX_VALUES,
    ):
        if model is not None:
            instance("model", model, nn.Module, "a torch.nn.Module")
        if optimizer is not None:
            instance("optimizer", optimizer, torch.optim.Optimizer, "a torch.optim.Optimizer or None")
        self.model, self.optimizer = model, optimizer
        self.every = int_at_least("every", every, 1)
        self.bins = int_at_least("bins", bins, 2)
        self.max_samples = int_at_least("max_samples", max_samples, 2)
        self.max_values = int_at_least("max_values", max_values, 1)
        self.layers = layers
        self.sinks = resolve_sinks(sinks)
        self.samples: list[Sample] = []  # bounded: thinned to every other sample when full
        self.last: Sample | None = None
        self.evaluations: list[tuple[int, dict[str, float]]] = []
        self.step = 0
        self._rank, self._world = 0, 1
        self._device = torch.device("cpu")
        self._reset_run_state()

    # ------------------------------------------------------------------ attach / detach

    def _reset_run_state(self) -> None:
        self._handles: list[Any] = []
        self._armed = False
        self._pending: list[_Pending] = []
        self._acts: dict[str, torch.Tensor] = {}
        self._act_storage: dict[str, int] = {}  # storage address of each activation layer's output this step
        # activations whose output is the model's output (a final sigmoid before BCELoss): saturating is their job
        self.output_layers: set[str] = set()
        self._grads: dict[str, torch.Tensor] = {}
        self._before: list[torch.Tensor] | None = None
        self._logged: dict[str, list[Any]] = {}  # values of `log` since the last sample, tensors or floats
        self._folded: dict[str, tuple[Any, int]] = {}  # (sum, count) of values already folded
        self._loss_steps: list[int] = []  # the step of each logged loss not yet checked
        self._loss_checks: list[tuple[torch.Tensor, list[int]]] = []  # (first non-finite index or -1, steps)
        self._first_bad_loss: int | None = None
        self._units_last = False
        self._forwards = 0  # training forwards since the last optimizer step
        self._forward_step = 0
        self._stride = 1  # samples kept in `self.samples`: every `_stride`-th
        self._index = 0
        self.training_forwards = 0
        self.optimizer_steps = 0
        self.no_gradient: set[str] = set()
        self.not_in_optimizer: list[str] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.layer_types: dict[str, str] = {}  # watched layer -> its class name, for the reports
        self.loop = LoopRecord()
        self._probed: set[int] = set()  # probe parameters whose first backward of this step was checked
        self._backward_seen = False
        self._carried: torch.Tensor | None = None
        self._checks: dict[str, torch.Tensor] = {}
        self._probe_params: list[torch.Tensor] = []

    def __enter__(self) -> Watch:
        self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
               start_step: int = 0) -> Watch:
        """Register the hooks (a `with` block calls this); `start_step` numbers steps of a resumed run."""
        if self.attached:
            raise RuntimeError("this watch is already attached; use one watch per model")
        self.model = model if model is not None else self.model
        self.optimizer = optimizer if optimizer is not None else self.optimizer
        if self.model is None:
            raise ValueError("watch needs a model: watch(model, optimizer)")
        module = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        self._module = module
        self._device = next(module.parameters(), torch.zeros(0)).device
        self._rank, self._world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.step = self._forward_step = start_step
        self._armed = start_step % self.every == 0
        self._names = {p: name for name, p in module.named_parameters() if p.requires_grad}
        self.shapes = {name: tuple(p.shape) for p, name in self._names.items()}
        if self.optimizer is not None:
            in_optimizer = {p for group in self.optimizer.param_groups for p in group["params"]}
            self.not_in_optimizer = [name for p, name in self._names.items() if p not in in_optimizer]
            self._params = [p for group in self.optimizer.param_groups for p in group["params"] if p in self._names]
            self._handles.append(self.optimizer.register_step_pre_hook(self._before_step))
            self._handles.append(self.optimizer.register_step_post_hook(self._after_step))
            self._probe_params = _probe_parameters(self._params)
            for i, p in enumerate(self._probe_params):
                self._handles.append(p.register_hook(functools.partial(self._on_probe_gradient, i)))
        self.loop.mode_matters = any(isinstance(m, MODE_DEPENDENT) and getattr(m, "p", 1.0) != 0
                                     for m in module.modules())
        self._handles.append(module.register_forward_pre_hook(self._on_model_forward))
        self._handles.append(module.register_forward_hook(self._on_model_output))
        layers = self._watched_layers(module)
        self.layer_types = {name: type(layer).__name__ for name, layer in layers}
        for name, layer in layers:
            self._handles.append(layer.register_forward_hook(functools.partial(self._on_layer_forward, name)))
        return self

    def detach(self) -> None:
        """Remove every hook and write what is still pending; the statistics stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._before = None
        self.flush()
        for sink in self.sinks:
            sink.close()
        if isinstance(self.model, DistributedDataParallel):
            self.model = self.model.module  # the wrapper holds the process group: do not keep it alive past training

    def _watched_layers(self, module: nn.Module) -> list[tuple[str, nn.Module]]:
        chosen = []
        named = None if self.layers is None or callable(self.layers) else set(self.layers)
        for name, layer in module.named_modules():
            if next(layer.children(), None) is not None and not isinstance(layer, nn.MultiheadAttention):
                continue
            if not (isinstance(layer, stats.ACTIVATIONS) or any(True for _ in layer.parameters(recurse=False))):
                continue
            if callable(self.layers) and not self.layers(name, layer):
                continue
            if named is not None and name not in named:
                continue
            chosen.append((name or type(layer).__name__, layer))
        return chosen

    # ------------------------------------------------------------------ hooks

    def _on_model_forward(self, module: nn.Module, args: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        if self.optimizer is None and self._forwards:
            self._end_step()  # without an optimizer, each training forward is a step
        self._forwards += 1
        self.training_forwards += 1
        self._forward_step = self.step
        self._units_last = False

    def _on_model_output(self, module: nn.Module, args: Any, output: Any) -> None:
        """Drop the statistics of activations that produced the model's output: an output sigmoid or tanh
        that saturates is a confident prediction, not a layer whose gradient vanishes."""
        if not self._act_storage:
            return
        outputs = output if isinstance(output, (tuple, list)) else [output]
        final = {o.untyped_storage().data_ptr() for o in outputs if isinstance(o, torch.Tensor) and o.numel()}
        for name, address in self._act_storage.items():
            if address in final:
                self.output_layers.add(name)
                self._acts.pop(name, None)
        self._act_storage = {}

    def _on_layer_forward(self, name: str, layer: nn.Module, args: Any, output: Any) -> None:
        if not (self._armed and layer.training and torch.is_grad_enabled()):
            return
        if name in self.output_layers:
            return
        if isinstance(layer, stats.BOUNDED_FAMILY) and isinstance(output, torch.Tensor) and output.numel():
            self._act_storage[name] = output.untyped_storage().data_ptr()
        if name not in self._acts:
            if isinstance(output, (tuple, list)):
                output = next((o for o in output if isinstance(o, torch.Tensor)), None)
            if isinstance(output, torch.Tensor) and output.numel() and output.is_floating_point():
                unit_dim = -1 if self._units_last or output.dim() == 2 else 1
                with torch.no_grad():
                    self._acts[name] = stats.activation_row(layer, output, unit_dim, self.bins,
                                                            self.max_values)
        if isinstance(layer, _UNITS_LAST):
            self._units_last = True
        elif isinstance(layer, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)):
            self._units_last = False

    def _on_probe_gradient(self, index: int, grad: torch.Tensor) -> None:
        """A probe parameter's gradient arrives, before it is added to `.grad`: on the first backward of a
        sampled step, whatever `.grad` still holds was left there by the previous step."""
        self._backward_seen = True
        if not self._armed or index in self._probed or self.optimizer is None:
            return
        self._probed.add(index)
        held = self._probe_params[index].grad
        if held is not None:
            with torch.no_grad():
                left = (held != 0).any()
            self._carried = left if self._carried is None else self._carried | left

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> tuple | None:
        """Read the loop's state (train mode, LR); on a sampled step copy the weights (a subsample) and
        measure the gradients, once they exist.

        `optimizer.step(closure)` (Lightning, LBFGS) runs the forward and backward
        inside `step`, after this hook: the closure is then wrapped so that the
        gradients are measured right after its first call, not the stale ones now.
        """
        self.loop.on_step(self.step, self._module.training, optimizer.param_groups[0]["lr"])
        if not self._armed:
            return None
        with torch.no_grad():
            # norm(update) is measured on a strided subsample of each large tensor: no full copy of the weights
            self._before = [stats.subsample(p.detach(), self.max_values).clone() for p in self._params]
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0] is the optimizer
        if not callable(closure):
            self._measure_gradients()
            self._check_step_gradients()
            return None
        measured = False

        def closure_then_measure() -> Any:
            nonlocal measured
            loss = closure()
            if not measured:
                measured = True
                self._measure_gradients()
                self._check_step_gradients()
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_measure}
        return (args[0], closure_then_measure, *args[2:]), kwargs

    @torch.no_grad()
    def _measure_gradients(self) -> None:
        for p in self._params:
            if p.grad is None:
                self.no_gradient.add(self._names[p])
            elif not p.grad.is_sparse:
                self._grads[self._names[p]] = stats.gradient_row(p.grad, self.bins, self.max_values)

    @torch.no_grad()
    def _check_step_gradients(self) -> None:
        """After a backward, the gradients the step is about to use: all None or zero means they were zeroed
        between `backward` and `step`."""
        if not self._backward_seen:
            return
        held = [(p.grad != 0).any() for p in self._probe_params if p.grad is not None]
        self._checks["zeroed"] = ~torch.stack(held).any() if held else torch.tensor(True, device=self._device)
        if self._probed:
            self._checks["carried"] = (self._carried if self._carried is not None
                                       else torch.tensor(False, device=self._device))

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.optimizer_steps += 1
        self._end_step()

    def _end_step(self) -> None:
        """Close the step: queue a sampled step's statistics, then arm the next one."""
        if self._armed:
            updates = {}
            if self._before is not None:
                with torch.no_grad():
                    for p, before in zip(self._params, self._before):
                        after = stats.subsample(p.detach(), self.max_values)
                        change = torch.linalg.vector_norm((after - before).float())
                        updates[self._names[p]] = torch.stack([change, torch.linalg.vector_norm(before.float())])
            self._pending.append(_Pending(self._forward_step, self._acts, self._grads, updates, self._take_scalars(),
                                          self._checks))
            self._acts, self._grads, self._before, self._checks = {}, {}, None, {}
        self._probed, self._backward_seen, self._carried = set(), False, None
        self.step += 1
        self._forwards = 0
        self._armed = self.step % self.every == 0
        if self._armed:
            self.flush()  # the queued statistics are `every` steps old: reading them waits for nothing

    # ------------------------------------------------------------------ logging

    def log(self, step: int | None = None, **scalars: Any) -> None:
        """Record scalars of the current step (e.g. `loss=loss`); tensors stay on the device.

        The mean since the previous sampled step goes to the sinks with the next
        sample. A logged `loss` is also checked for NaN and infinity, in one
        device operation per sample, so the first bad step is known exactly: the
        step of the last training forward of the watched model, or `step` when
        given (a loop whose training code does not call the model itself).
        """
        for name, value in scalars.items():
            if isinstance(value, torch.Tensor):
                value = value.detach()
                if value.dim():
                    value = value.float().mean()
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                value = float(value)
            else:
                raise ParamError(f"watch.log({name}=...) expects a number or a tensor, got {type(value).__name__}")
            values = self._logged.setdefault(name, [])
            values.append(value)
            if name == "loss":
                self._loss_steps.append(self._forward_step if step is None else int(step))
            if len(values) >= MAX_LOGGED:
                self._fold(name)

    def _fold(self, name: str) -> None:
        """Replace the values logged for `name` by their sum (device operations, no sync)."""
        values, self._logged[name] = self._logged[name], []
        if not values:
            return
        stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self._device) for v in values])
        total, count = self._folded.get(name, (0.0, 0))
        self._folded[name] = (total + stacked.sum(), count + len(values))
        if name == "loss":
            bad = ~torch.isfinite(stacked)
            first = torch.where(bad.any(), bad.int().argmax(), torch.full_like(bad.int().argmax(), -1))
            self._loss_checks.append((first, self._loss_steps))
            self._loss_steps = []

    def _take_scalars(self) -> dict[str, torch.Tensor]:
        means = {}
        for name in list(self._logged):
            self._fold(name)
            if name in self._folded:
                total, count = self._folded.pop(name)
                means[name] = (total / count).reshape(())
        self._logged = {}
        return means

    def log_eval(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record one evaluation's metrics (written to the sinks at once)."""
        step = self.step if step is None else step
        values = {str(k): float(v) for k, v in metrics.items()}
        self.evaluations.append((step, values))
        self._write({"step": step, "scalars": values})

    # ------------------------------------------------------------------ read back

    def flush(self) -> None:
        """Read the queued statistics back to the host (one transfer), keep them and write them to the sinks."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        parts = [t.reshape(-1).float().to(self._device) for item in pending for group in _groups(item)
                 for t in group.values()]
        flat = torch.cat(parts) if parts else torch.zeros(0, device=self._device)
        ranks = self._gather(flat)

        def take(n: int) -> list[np.ndarray]:
            return [np.fromiter(rank, dtype=np.float64, count=n) for rank in ranks]

        for item in pending:
            sample = Sample(item.step)
            for name, row in item.activations.items():
                sample.activations[name] = _merge_activation_rows(take(row.numel()), self.bins)
            for name, row in item.gradients.items():
                sample.gradients[name] = take(row.numel())[0]  # the same on every rank after DDP's all-reduce
            for name in item.updates:
                change, norm = take(2)[0]
                sample.updates[name] = float(change / norm) if norm > 0 else math.nan
                sample.weight_norms[name] = float(norm)
            for name in item.scalars:
                sample.scalars[name] = float(np.mean(take(1)))
            for name in item.checks:
                self.loop.add_check(name, item.step, bool(take(1)[0][0]))
            self._keep(sample)
        self._check_losses()

    def _gather(self, flat: torch.Tensor) -> list[Any]:
        """One iterator over the flat statistics per rank (all ranks under torch.distributed)."""
        if self._world == 1:
            return [iter(flat.cpu().numpy())]
        size = torch.tensor([flat.numel()], device=flat.device)
        sizes = [torch.zeros_like(size) for _ in range(self._world)]
        dist.all_gather(sizes, size)
        if len({int(s) for s in sizes}) != 1:
            raise RuntimeError("watch: ranks measured different layers on the same step; "
                               "every rank must run the same modules on sampled steps")
        gathered = [torch.zeros_like(flat) for _ in range(self._world)]
        dist.all_gather(gathered, flat)
        return [iter(t.cpu().numpy()) for t in gathered]

    def _keep(self, sample: Sample) -> None:
        self.last = sample
        if self._index % self._stride == 0:
            self.samples.append(sample)
            if len(self.samples) > self.max_samples:
                self.samples = self.samples[::2]
                self._stride *= 2
        self._index += 1
        if self.sinks and self._rank == 0:
            self._write(sample_record(sample, self.bins))

    def _write(self, record: dict) -> None:
        if self._rank != 0:
            return
        for sink in self.sinks:
            sink.write(record)

    @property
    def first_nonfinite_loss_step(self) -> int | None:
        """The first step whose logged loss was NaN or infinite (None when all were finite)."""
        if "loss" in self._logged:
            self._fold("loss")
        self._check_losses()
        return self._first_bad_loss

    def _check_losses(self) -> None:
        checks, self._loss_checks = self._loss_checks, []
        for first, steps in checks:
            index = int(first)  # computed a sample ago: reading it waits for nothing
            if index >= 0 and self._first_bad_loss is None:
                self._first_bad_loss = steps[index]

    # ------------------------------------------------------------------ callbacks for dltips.fit

    def on_fit_start(self, state: Any) -> None:
        self.attach(state.model, state.optimizer, start_step=state.step)

    def on_step_end(self, state: Any) -> None:
        if state.loss is not None:
            self.log(loss=state.loss)

    def on_eval_end(self, state: Any, metrics: dict[str, float]) -> None:
        self.log_eval(metrics, step=state.step)

    def on_fit_end(self, state: Any) -> None:
        if self.attached:
            self.detach()

    def on_exception(self, state: Any, error: BaseException) -> None:
        if self.attached:
            self.detach()

    # ------------------------------------------------------------------ verdicts

    def findings(self) -> list[Finding]:
        """Verdicts on `activation-gradient-stats` and `update-ratio` (and non-finite values).

        It first reads back pending statistics: under torch.distributed, call it on
        every rank (or after the `with` block, when nothing is pending).
        """
        self.flush()
        return watch_findings(self)


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    every: int = DEFAULT_EVERY,
    sinks: Any = None,
    **options: Any,
) -> Watch:
    """Watch a model (and its optimizer) in any training loop: `with dltips.watch(model, optimizer) as w:`.

    every: statistics are measured on every `every`-th optimizer step (and read
      back once per `every` steps). sinks: where records go besides the watch's
      own bounded history: "memory", a path ending in ".jsonl", "tensorboard" or
      "tensorboard:DIR", a Sink, or a list of these. Other options: `bins`
      (histogram bins), `layers` (names, or a predicate `(name, module) -> bool`),
      `max_samples` (history kept for the verdicts), `max_values` (histograms,
      fractions and update ratios of a larger tensor are estimated on an evenly
      strided subsample of this many values).
    """
    return Watch(model, optimizer, every=every, sinks=sinks, **options)


# ---------------------------------------------------------------------- helpers


def _groups(item: _Pending) -> tuple[dict[str, torch.Tensor], ...]:
    return item.activations, item.gradients, item.updates, item.scalars, item.checks


def _probe_parameters(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Up to PROBE_PARAMETERS of the optimizer's parameters (the first and the last ones) whose gradients the
    loop checks watch: a forgotten `zero_grad` leaves every parameter's gradient in place, so a few suffice."""
    if len(params) <= PROBE_PARAMETERS:
        return list(params)
    half = PROBE_PARAMETERS // 2
    return list(params[:half]) + list(params[-(PROBE_PARAMETERS - half):])


def _merge_activation_rows(rows: list[np.ndarray], bins: int) -> np.ndarray:
    """One activation row from each rank's row: exact moments, range and fractions; histograms re-binned."""
    fields = stats.ACTIVATION_FIELDS
    if len(rows) == 1:
        return rows[0]
    rows = [np.asarray(r, dtype=np.float64) for r in rows]
    n = np.array([r[fields.index("n")] for r in rows])
    mean = np.array([r[fields.index("mean")] for r in rows])
    var = np.array([r[fields.index("var")] for r in rows])
    total = n.sum()
    merged_mean = float((n * mean).sum() / total)
    merged_var = float((n * (var + (mean - merged_mean) ** 2)).sum() / total)
    low = min(r[fields.index("min")] for r in rows)
    high = max(r[fields.index("max")] for r in rows)
    dead = float(np.mean([r[fields.index("dead")] for r in rows]))
    saturated = float((n * np.array([r[fields.index("saturated")] for r in rows])).sum() / total)
    counts = sum(rebin(r[len(fields):], r[fields.index("min")], r[fields.index("max")], low, high, bins) for r in rows)
    return np.concatenate([[total, merged_mean, merged_var, low, high, dead, saturated], counts])


def sample_record(sample: Sample, bins: int) -> dict:
    """A Sample as a sink record (see `dltips.monitor.sinks`)."""
    scalars: dict[str, float] = dict(sample.scalars)
    histograms: dict[str, dict] = {}
    for layer, row in sample.activations.items():
        for name in ("mean", "dead", "saturated"):
            value = sample.activation(layer, name)
            if not (name != "mean" and math.isnan(value)):
                scalars[f"act/{layer}/{name}"] = value
        scalars[f"act/{layer}/std"] = math.sqrt(max(sample.activation(layer, "var"), 0.0))
        histograms[f"act/{layer}"] = _histogram_record(row, stats.ACTIVATION_FIELDS)
    for parameter, row in sample.gradients.items():
        scalars[f"grad/{parameter}/norm"] = sample.gradient(parameter, "norm")
        scalars[f"grad/{parameter}/near_zero"] = sample.gradient(parameter, "near_zero")
        histograms[f"grad/{parameter}"] = _histogram_record(row, stats.GRADIENT_FIELDS)
    for parameter, ratio in sample.updates.items():
        scalars[f"update_ratio/{parameter}"] = ratio
    record: dict = {"step": sample.step, "scalars": scalars}
    if histograms:
        record["histograms"] = histograms
    return record


def _histogram_record(row: np.ndarray, fields: tuple[str, ...]) -> dict:
    low, high = float(row[fields.index("min")]), float(row[fields.index("max")])
    return {"range": [low, high], "counts": [int(round(c)) for c in row[len(fields):]]}
