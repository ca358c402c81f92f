"""What every adapter shares: one monitored training run inside another library's loop.

The adapter (a Lightning callback, a Hugging Face `TrainerCallback`, a hand-written
torchrun script) owns the loop; a `Session` owns dltips's side of it:

    session = Session(every=25, html="run.html")
    session.start(model, optimizer)          # attaches dltips.watch
    session.check_first_batch(model, x, y)   # the cheap checks, before the first step
    ... session.log(loss=loss) each step, session.log_eval(metrics, step) after each evaluation ...
    report = session.finish()                # removes every hook; the Report, printed and written on rank 0

The checks on the first batch are the doctor's own (`initialization` and
`verify-transforms`), run on a Task made of that one batch: the same calibrated
verdicts, at the cost of one forward pass in eval mode. The model is lent to them,
never copied (a LightningModule holds its Trainer), and every module's train/eval
mode is put back afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from dltips.core.device import model_device, to_device
from dltips.core.params import ParamError, flag
from dltips.core.state import modes_kept
from dltips.diagnosis.report import Report
from dltips.findings import Finding
from dltips.monitor.metrics import MIN_EVALUATIONS, MetricTracker, higher_is_better
from dltips.monitor.watch import DEFAULT_EVERY, Watch
from dltips.task import KINDS, Task, select_output
from dltips.task import call_model as task_call_model

Forward = Callable[[nn.Module, Any], torch.Tensor]  # (model, inputs) -> outputs (logits, or predictions)


def call_model(model: nn.Module, x: Any) -> torch.Tensor:
    """The default forward: as a Task calls its model (`model(**x)` for a dict of the forward's named
    inputs, else `model(x)`), the prediction taken from the output as a Task takes it (a Hugging Face
    ModelOutput's or a dict's "logits", a tuple's first non-scalar tensor)."""
    return select_output(task_call_model(model, x))


def output_field(output: Any, name: str) -> Any:
    """`output[name]` of a dict or ModelOutput, else `output.name`; None when absent."""
    if isinstance(output, Mapping):
        return output.get(name)
    return getattr(output, name, None)


def plain_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer behind the wrappers libraries put around it: Lightning's LightningOptimizer
    (`._optimizer`) and accelerate's AcceleratedOptimizer (`.optimizer`; itself an Optimizer whose step
    hooks never fire). The watch's hooks must go on the plain one."""
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        inner = next((getattr(optimizer, name) for name in ("_optimizer", "optimizer")
                      if isinstance(getattr(optimizer, name, None), torch.optim.Optimizer)), None)
        if inner is None:
            break
        optimizer = inner
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ParamError(f"dltips watches a torch.optim.Optimizer (or a wrapper around one), got {type(optimizer).__name__}")
    return optimizer


def items_in(loaders: Any) -> int | None:
    """Items in a DataLoader's dataset, summed over a list or dict of loaders; None when unknown."""
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        counts = [items_in(loader) for loader in loaders]
        return None if not counts or None in counts else sum(c for c in counts if c is not None)
    dataset = getattr(loaders, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:  # an IterableDataset without __len__
        return None


class Session:
    """dltips's side of one training run: the watch, the first-batch checks, evaluations and the report.

    every, sinks: as for `dltips.watch`. checks: run the first-batch checks. html, json:
    paths the report is written to at `finish` (rank 0 only). kind, n_classes: what the
    model predicts (see `Task`); inferred from the first batch's outputs and targets when
    left out. objective, higher_is_better: for `MetricTracker`, the metric the validation
    loss is read against and the direction of metrics dltips does not know.
    print_report: print the terminal summary at `finish` (rank 0 only).
    """

    def __init__(
        self,
        *,
        every: int = DEFAULT_EVERY,
        sinks: Any = None,
        checks: bool = True,
        html: str | None = None,
        json: str | None = None,
        name: str = "run",
        kind: str | None = None,
        n_classes: int | None = None,
        objective: str | None = None,
        higher_is_better: Mapping[str, bool] | None = None,
        print_report: bool = True,
    ):
        if kind is not None and kind not in KINDS:
            raise ParamError(f"kind must be one of {', '.join(KINDS)} or None (inferred), got {kind!r}")
        flag("checks", checks)
        self.watch = Watch(every=every, sinks=sinks)
        self.tracker = MetricTracker(objective=objective, higher_is_better=dict(higher_is_better or {}))
        self.checks, self.html, self.json, self.name = checks, html, json, name
        self.kind, self.n_classes = kind, n_classes
        self.print_report = print_report
        self.early: list[Finding] = []  # the first-batch checks' findings
        self.report: Report | None = None
        self._model: nn.Module | None = None
        self._started = 0.0

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, start_step: int = 0) -> None:
        """Attach the watch to `model` and `optimizer` (the plain torch optimizer, not a wrapper)."""
        self._model, self._started = model, time.perf_counter()
        self.report = None
        self.watch.attach(model, optimizer, start_step=start_step)

    def check_first_batch(self, model: nn.Module, x: Any, y: torch.Tensor, forward: Forward = call_model) -> list[Finding]:
        """The loss at initialisation and the input statistics, on one batch, before the first optimizer step.

        `forward(model, x)` must return the outputs the Task's loss expects (logits of shape
        (B, C), (B, T, V) for a language model, or predictions). A batch the checks cannot
        read (or a model that raises on it) gives one `skip` finding that says why, instead of
        stopping training. The random number generators are restored afterwards.
        """
        if not self.checks:
            return []
        from dltips.data.inputs import check_inputs
        from dltips.training.init import check_initial_loss

        device = model_device(model)
        try:  # the checks leave the run's random draws and every module's mode as they were
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), \
                    torch.no_grad(), modes_kept(model):
                task = batch_task(model, x, y, forward, self.kind, self.n_classes)
                found = check_initial_loss(task) + check_inputs(task, max_items=len(task.train))
        except Exception as error:  # a check never stops training: it says why it could not run
            found = [Finding("initialization", "skip", "The first batch could not be checked",
                             f"{type(error).__name__}: {error}",
                             "Pass kind= and n_classes= to the callback, and a forward(model, inputs) that returns "
                             "the model's logits (or predictions) for the batch's inputs.")]
        else:
            self.kind, self.n_classes = task.kind, task.n_classes
        for finding in found:
            finding.evidence["measured_on"] = "the first training batch"
        self.early = found
        return found

    def log(self, step: int | None = None, **scalars: Any) -> None:
        """Scalars of the current step (e.g. `loss=loss`): to the sinks, and a logged loss is checked for NaN.

        `step`: the optimizer step the values belong to, when the loop's training code does not
        call the watched model itself (the watch numbers them by the model's forward otherwise).
        """
        self.watch.log(step=step, **scalars)

    def log_eval(self, metrics: Mapping[str, Any], step: int | None = None, n_items: int | None = None) -> None:
        """One evaluation's metrics: all to the sinks; the validation metrics to the `MetricTracker`.

        The tracker (metric-divergence, logloss-downstream) reads validation metrics under
        dltips's names: "val_acc", "val/loss", "eval_accuracy" ... are recorded as
        "valid_accuracy", "valid_loss"; names whose direction is unknown (neither a
        known metric nor declared in `higher_is_better`) go to the sinks only.
        """
        step = self.watch.step if step is None else step
        numbers = scalars(metrics)
        self.watch.log_eval(numbers, step)
        tracked = validation_metrics(numbers, self.tracker.declared)
        if tracked:
            self.tracker.record(step, tracked, n_items)

    def finish(self, *, n_train: int | None = None, n_valid: int | None = None, gather: bool = True) -> Report:
        """Remove every hook and return the Report; on rank 0 also print it and write HTML/JSON.

        Under torch.distributed call it on every rank: the watch's last statistics are
        gathered from all of them. `gather=False` reads back this rank's own statistics
        with no collective: for a rank that stops on an error, which the others never join.
        """
        if self.report is not None:
            return self.report
        if not gather:
            self.watch._world = 1
        findings = list(self.early)
        try:
            findings += self.watch.findings()
        finally:
            if self.watch.attached:
                self.watch.detach()
        if len(self.tracker.records) >= MIN_EVALUATIONS:
            try:
                findings += self.tracker.findings()
            except ValueError as error:  # e.g. a declared objective that was never logged: say so, keep the report
                findings.append(Finding("metric-divergence", "skip", "The validation metrics could not be read",
                                        str(error), "Log the objective metric at each validation, or declare another."))
        model = self._model
        summary = {"name": self.name, "kind": self.kind, "n_classes": self.n_classes,
                   "n_params": sum(p.numel() for p in model.parameters()) if model is not None else 0,
                   "n_train": n_train or 0, "n_valid": n_valid or 0, "n_test": 0}
        self.report = Report(summary, findings, time.perf_counter() - self._started)
        if self.rank == 0:
            if self.print_report:
                self.report.print()
            if self.html:
                self.report.to_html(self.html)
            if self.json:
                self.report.to_json(self.json)
        return self.report


# ---------------------------------------------------------------------- metric names

VALID_PREFIXES = ("validation_", "validation/", "valid_", "valid/", "val_", "val/", "eval_", "eval/")
ALIASES = {"acc": "accuracy", "ppl": "perplexity", "f1_macro": "macro_f1", "bal_acc": "balanced_accuracy",
           "balanced_acc": "balanced_accuracy"}


def validation_name(name: str, declared: Mapping[str, bool] | None = None) -> str | None:
    """dltips's name for a validation metric ("val_acc" -> "valid_accuracy"), or None when it is not
    one or its direction is unknown.

    A validation metric starts with validation_, valid_, val_ or eval_ (or the same with "/"),
    as Lightning and the Hugging Face Trainer users log them; an "_epoch" suffix (Lightning's
    `on_epoch=True`) is dropped, and acc, bal_acc, f1_macro and ppl are read as accuracy,
    balanced_accuracy, macro_f1 and perplexity.
    """
    lowered = name.lower()
    for prefix in VALID_PREFIXES:
        if lowered.startswith(prefix):
            base = lowered[len(prefix):].removesuffix("_epoch")
            renamed = "valid_" + ALIASES.get(base, base)
            try:
                higher_is_better(renamed, declared)
            except ValueError:
                return None
            return renamed
    return None


def validation_metrics(metrics: Mapping[str, Any], declared: Mapping[str, bool] | None = None) -> dict[str, float]:
    """The validation metrics among `metrics` (single numbers), under dltips's names (see `validation_name`)."""
    found = {}
    for name, value in scalars(metrics).items():
        renamed = validation_name(name, declared)
        if renamed is not None:
            found[renamed] = value
    return found


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The single numbers among `metrics` (numbers, one-element tensors) as floats; booleans and the rest left out."""
    numbers = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[str(name)] = float(value)
    return numbers


# ---------------------------------------------------------------------- the first batch as a Task


class _Lent(nn.Module):
    """The user's model behind `forward`, lent to a check: deep copies return it, so it is never copied."""

    def __init__(self, model: nn.Module, forward: Forward):
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, x: Any) -> torch.Tensor:
        return self._forward(self.model, x)

    def __deepcopy__(self, memo: dict) -> _Lent:
        return self


class _Batch(Dataset):
    """One batch as a dataset of its items; inputs may be a tensor or a dict of tensors."""

    def __init__(self, x: Any, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        x = {k: v[i] for k, v in self.x.items()} if isinstance(self.x, Mapping) else self.x[i]
        return x, self.y[i]


def batch_task(model: nn.Module, x: Any, y: torch.Tensor, forward: Forward = call_model,
               kind: str | None = None, n_classes: int | None = None) -> Task:
    """A Task whose training and validation sets are this one batch, the model lent (not copied)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"the batch's targets must be a tensor, got {type(y).__name__}")
    tensors = list(x.values()) if isinstance(x, Mapping) else [x]
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("the batch's inputs must be a tensor or a dict of tensors, got "
                        f"{type(x).__name__}; tell the adapter which part of the batch holds the inputs")
    y = y.detach().cpu()
    x = {k: v.detach().cpu() for k, v in x.items()} if isinstance(x, Mapping) else x.detach().cpu()
    if kind is None or (n_classes is None and kind in ("classification", "language-model")):
        model.eval()
        first = {k: v[:2] for k, v in x.items()} if isinstance(x, Mapping) else x[:2]
        output = forward(model, to_device(first, model_device(model)))
        kind, n_classes = infer_kind(output, y[:2], kind, n_classes)
    data = _Batch(x, y)
    return Task(_Lent(model, forward), data, data, kind=kind, n_classes=n_classes, batch_size=len(y), name="first-batch")


def infer_kind(output: torch.Tensor, y: torch.Tensor, kind: str | None = None,
               n_classes: int | None = None) -> tuple[str, int | None]:
    """(kind, n_classes) from a model's outputs and the targets: what `Task` needs.

    Integer targets: "classification" for (B, C) outputs, "language-model" for (B, T, V).
    Float targets: "binary" or "multilabel" when they are all 0 or 1, else "regression".
    """
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"the model's output must be a tensor (logits or predictions), got {type(output).__name__}")
    if kind is None:
        if not y.is_floating_point():
            kind = "language-model" if output.dim() == 3 and y.dim() == 2 else "classification"
        elif bool(((y == 0) | (y == 1)).all()):
            kind = "binary" if output.dim() == 1 or output.shape[-1] == 1 else "multilabel"
        else:
            kind = "regression"
    if n_classes is None and kind in ("classification", "language-model"):
        n_classes = int(output.shape[-1])
    return kind, n_classes
