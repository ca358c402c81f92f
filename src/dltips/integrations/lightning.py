"""dltips inside a Lightning `Trainer`: `DltipsCallback`, a `lightning.pytorch.Callback`.

    from dltips.integrations.lightning import DltipsCallback

    callback = DltipsCallback(html="report.html")
    Trainer(callbacks=[callback]).fit(module, train_loader, val_loader)
    callback.report                           # the dltips Report of the run

The callback drives a `Session` (see `dltips.integrations.session`): it attaches
`dltips.watch` to the LightningModule and its (first) optimizer when training
starts, checks the first training batch (`initialization`, `verify-transforms`),
logs each training step's loss and each validation's metrics, and writes the
report when training ends (or raises). The watch's scalars also go to the
Trainer's loggers, as `dltips/<name>`.

Lightning is imported when `DltipsCallback` is first looked up, not when this
module is imported: without Lightning, `import dltips.integrations.lightning`
works and looking up `DltipsCallback` raises ImportError with the command that
installs it. `DltipsCallback` is then a real subclass of
`lightning.pytorch.Callback`, created once.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from dltips.core.params import ParamError, callable_or_none, flag
from dltips.diagnosis.report import Report
from dltips.findings import Finding
from dltips.integrations.session import (
    Forward,
    Session,
    call_model,
    items_in,
    plain_optimizer,
    validation_metrics,
    validation_name,
)
from dltips.monitor.sinks import Sink, resolve_sinks
from dltips.monitor.watch import DEFAULT_EVERY, Watch

LIGHTNING_HINT = 'pip install "dltips[lightning]"'
LOGGER_PREFIX = "dltips/"

SplitBatch = Callable[[Any], "tuple[Any, torch.Tensor] | None"]  # batch -> (inputs, targets), or None: not readable


def lightning_pytorch() -> Any:
    """The `lightning.pytorch` module, or ImportError naming the extra to install."""
    try:
        import lightning.pytorch as pl
    except ImportError as error:
        raise ImportError(f"DltipsCallback needs Lightning: {LIGHTNING_HINT} ({error})") from error
    return pl


@functools.cache
def callback_class() -> type:
    """`DltipsCallback`: the hooks of `_Hooks` on Lightning's `Callback`, built on first use."""
    pl = lightning_pytorch()
    cls = type("DltipsCallback", (_Hooks, pl.Callback), {"__doc__": _Hooks.__doc__, "__module__": __name__})
    cls.__qualname__ = "DltipsCallback"  # pickle and Lightning's callback state key find it under this name
    return cls


def __getattr__(name: str) -> Any:
    if name == "DltipsCallback":
        return callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------- helpers


def split_batch_default(batch: Any) -> tuple[Any, torch.Tensor] | None:
    """(inputs, targets) of a batch: a pair, or a dict with "labels"; None for anything else."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping) and "labels" in batch:
        return {k: v for k, v in batch.items() if k != "labels"}, batch["labels"]
    return None


def exclude_other_optimizers(watch: Watch, model: nn.Module, others: list[torch.optim.Optimizer]) -> None:
    """Parameters that another optimizer updates are not "left out of the optimizer" for the watch of the first."""
    held = {id(p) for optimizer in others for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    watch.not_in_optimizer = [name for name in watch.not_in_optimizer if id(named[name]) not in held]


def _loss_of(outputs: Any) -> torch.Tensor | None:
    """The loss in what training_step returned: a tensor, or a dict's "loss"."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return loss if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


class LightningLoggerSink(Sink):
    """Forwards each record's scalars to every logger of a Trainer, as `dltips/<name>` at the record's step.

    The watch writes to its sinks on rank 0 only, so under DDP only rank 0 logs.
    Names in `skip` are left out (the validation metrics, which Lightning logs itself).
    """

    def __init__(self, prefix: str = LOGGER_PREFIX) -> None:
        self.prefix = prefix
        self.trainer: Any = None
        self.skip: set[str] = set()
        self._wrote = False

    def write(self, record: dict) -> None:
        if self.trainer is None:
            return
        scalars = {self.prefix + name: float(value) for name, value in (record.get("scalars") or {}).items()
                   if name not in self.skip and value is not None}
        if not scalars:
            return
        for logger in self.trainer.loggers:
            logger.log_metrics(scalars, step=int(record["step"]))
        self._wrote = True

    def close(self) -> None:
        """Save the loggers once more: the watch's last records come after Lightning's own last save."""
        if self.trainer is not None and self._wrote:
            for logger in self.trainer.loggers:
                logger.save()
        self.trainer = None

    def __repr__(self) -> str:
        return f"LightningLoggerSink(prefix={self.prefix!r})"


def _in_precision(trainer: Any, forward: Forward) -> Forward:
    """`forward` under the Trainer's precision (autocast, inputs converted), returning float32 outputs."""
    plugin = trainer.precision_plugin

    def run(model: nn.Module, x: Any) -> torch.Tensor:
        with plugin.forward_context():
            output = forward(model, plugin.convert_input(x))
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            output = output.float()
        return output

    return run


# ---------------------------------------------------------------------- the callback


class _Hooks:
    """dltips's checks and monitors in a Lightning `Trainer.fit`: `Trainer(callbacks=[DltipsCallback()])`.

    every, sinks: as for `dltips.watch` (statistics on every `every`-th optimizer
    step; "memory", "run.jsonl", "tensorboard", a Sink, or a list). checks: check
    the first training batch (`initialization`, `verify-transforms`). html, json:
    where the report is written when training ends (rank 0 only). kind, n_classes:
    what the model predicts, inferred from the first batch when left out.
    objective: the validation metric you care about, e.g. "val_acc".
    split_batch(batch) -> (inputs, targets): how to read a batch (default: a pair,
    or a dict whose "labels" are the targets). forward(model, inputs) -> logits:
    how the checks call the model (default: `model(inputs)`, `model(**inputs)` for
    a dict). log_to_lightning: also send the watch's scalars to the Trainer's
    loggers as `dltips/<name>`. print_report: print the summary at the end.

    The watch follows the first optimizer of `trainer.optimizers` (with several,
    only the first one's parameters get update ratios and gradient statistics).
    Validation metrics are read from `trainer.callback_metrics` when logged as
    val_<metric> (see `dltips.integrations.session.validation_name`); others are left out.
    One callback watches one `fit`; `callback.report` holds its Report.
    """

    def __init__(
        self,
        every: int = DEFAULT_EVERY,
        sinks: Any = None,
        checks: bool = True,
        html: str | None = None,
        json: str | None = None,
        kind: str | None = None,
        n_classes: int | None = None,
        objective: str | None = None,
        split_batch: SplitBatch | None = None,
        forward: Forward | None = None,
        log_to_lightning: bool = True,
        print_report: bool = True,
    ):
        flag("DltipsCallback(log_to_lightning=...)", log_to_lightning)
        flag("DltipsCallback(print_report=...)", print_report)
        callable_or_none("DltipsCallback(split_batch=...)", split_batch)
        callable_or_none("DltipsCallback(forward=...)", forward)
        if objective is not None and (not isinstance(objective, str) or validation_name(objective) is None):
            raise ParamError(f"DltipsCallback(objective=...) must name a validation metric dltips reads "
                             f"(e.g. 'val_acc', 'val_f1', 'val_mae'; see validation_name), got {objective!r}")
        self.logger_sink = LightningLoggerSink() if log_to_lightning else None
        all_sinks = resolve_sinks(sinks) + ([self.logger_sink] if self.logger_sink is not None else [])
        objective = validation_name(objective) if objective is not None else None
        self.session = Session(every=every, sinks=all_sinks, checks=checks, html=html, json=json, kind=kind,
                               n_classes=n_classes, objective=objective, print_report=print_report)
        self.split_batch = split_batch or split_batch_default
        self.forward = forward or call_model
        self.report: Report | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._started = False
        self._checked = False
        self._batch_step = 0
        self._n_train: int | None = None
        self._n_valid: int | None = None

    # ------------------------------------------------------------------ start

    def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
        """Attach the watch: the optimizers are set up and a resumed run's global_step restored by now."""
        if self._started:
            raise RuntimeError("a DltipsCallback watches one Trainer.fit; build a new one for each fit")
        optimizers = [plain_optimizer(o) for o in trainer.optimizers]
        self.optimizer = optimizers[0] if optimizers else None
        if self.logger_sink is not None:
            self.logger_sink.trainer = trainer
        self.session.name = type(pl_module).__name__
        self.session.start(pl_module, self.optimizer, start_step=trainer.global_step)
        self._started = True
        if len(optimizers) > 1:
            exclude_other_optimizers(self.session.watch, pl_module, optimizers[1:])
        self._n_train = items_in(trainer.train_dataloader)

    def on_train_batch_start(self, trainer: Any, pl_module: nn.Module, batch: Any, batch_idx: int) -> None:
        self._batch_step = self.session.watch.step  # the optimizer step this batch's loss belongs to
        if not self._checked:
            self._checked = True
            self.check_first_batch(trainer, pl_module, batch)

    def check_first_batch(self, trainer: Any, pl_module: nn.Module, batch: Any) -> list[Finding]:
        """Run the first-batch checks on `batch`, in the Trainer's precision; a batch not understood gives one skip."""
        if not self.session.checks:
            return []
        parts = self.split_batch(batch)
        if parts is None:
            self.session.early = [Finding(
                "initialization", "skip", "The first batch could not be checked",
                f"The first training batch is a {type(batch).__name__}: the callback reads a pair (inputs, targets) "
                "or a dict whose 'labels' are the targets.",
                "Pass split_batch=lambda batch: (inputs, targets) to DltipsCallback.")]
            return self.session.early
        x, y = parts
        return self.session.check_first_batch(pl_module, x, y, forward=_in_precision(trainer, self.forward))

    # ------------------------------------------------------------------ each step

    def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log the loss training_step returned (Lightning divides it by accumulate_grad_batches: undone here)."""
        loss = _loss_of(outputs)
        if loss is None or not self.session.watch.attached:
            return
        if getattr(pl_module, "automatic_optimization", False) and trainer.accumulate_grad_batches != 1:
            loss = loss * trainer.accumulate_grad_batches
        self.session.log(step=self._batch_step, loss=loss)

    def on_validation_end(self, trainer: Any, pl_module: nn.Module) -> None:
        """Read the validation metrics Lightning gathered (see `validation_metrics`); not during the sanity check."""
        if trainer.sanity_checking or not self.session.watch.attached:
            return
        metrics = validation_metrics(trainer.callback_metrics)
        if not metrics:
            return
        if self._n_valid is None:
            self._n_valid = items_in(trainer.val_dataloaders)
        if self.logger_sink is not None:
            self.logger_sink.skip.update(metrics)  # Lightning logs them already
        self.session.log_eval(metrics, step=trainer.global_step, n_items=self._n_valid)

    # ------------------------------------------------------------------ the end

    def on_train_end(self, trainer: Any, pl_module: nn.Module) -> None:
        """Finish while Lightning's loggers are still open (they are finalized before on_fit_end)."""
        self.finish()

    def on_fit_end(self, trainer: Any, pl_module: nn.Module) -> None:
        self.finish()

    def on_exception(self, trainer: Any, pl_module: nn.Module, exception: BaseException) -> None:
        """Remove the hooks and report what was measured; the training error itself is left to propagate.

        Under torch.distributed the other ranks may not be here: the report holds this
        rank's own statistics, without gathering (which would wait for them forever).
        """
        if not self._started or self.report is not None:
            return
        watch = self.session.watch
        try:
            self.report = self.session.finish(n_train=self._n_train, n_valid=self._n_valid, gather=False)
        except Exception as error:  # the training error matters more than a report that could not be made
            warnings.warn(f"dltips could not finish its report after the training error: {type(error).__name__}: "
                          f"{error}", RuntimeWarning, stacklevel=2)
        finally:
            if watch.attached:
                watch.detach()

    def finish(self) -> Report | None:
        """Remove every hook and make the report (on every rank; printed and written on rank 0). Idempotent."""
        if self._started and self.report is None:
            self.report = self.session.finish(n_train=self._n_train, n_valid=self._n_valid)
        return self.report
