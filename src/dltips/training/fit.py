"""The training loop: `dltips.fit(task, epochs)` with the recommended recipe.

One readable loop built from the parts a user can also take alone: AdamW at
`default_lr`, the `OneCycle` schedule, optional `Mixup`, `MixedPrecision`,
exact `GradientAccumulator` windows and gradient clipping. Callbacks plug in
without editing the loop. Checkpoints are written atomically and a resumed run
ends with exactly the weights of an uninterrupted one. Under `torchrun` it
trains with DistributedDataParallel, reduces metrics across ranks, and only
rank 0 writes.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Sampler

from dltips.core.callbacks import Callback, FitState
from dltips.core.device import resolve_device, to_device
from dltips.core.io import atomic_write
from dltips.core.params import ParamError, optional_int, positive, positive_int
from dltips.core.state import eval_mode, get_rng_state, set_rng_state
from dltips.monitor.scores import (
    add_sums,
    metric_sums,
    metrics_from_sums,
    reduce_sums,
    zero_sums,
)
from dltips.task import Task, as_logits, count_items
from dltips.training.accumulate import GradientAccumulator
from dltips.training.callbacks import ProgressBar
from dltips.training.lr import make_optimizer
from dltips.training.mixup import Mixup
from dltips.training.precision import MixedPrecision
from dltips.training.schedule import OneCycle

CHECKPOINT_NAME = "last.pt"


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message gives the step."""


@dataclass
class Recipe:
    """How `fit` trains. The defaults are the recommended recipe.

    lr: peak learning rate; None means `default_lr(model)` for the default
        AdamW, or the learning rate of the Task's own optimizer.
    one_cycle: use the OneCycle schedule (else a constant learning rate).
    mixup: Mixup's alpha; None turns mixup off.
    precision: "off", "bf16" or "fp16".
    accumulate: micro-batches per optimizer step.
    max_grad_norm: clip the gradient norm of each step; None turns clipping off.
    """

    lr: float | None = None
    one_cycle: bool = True
    pct_start: float = 0.25
    moms: tuple[float, float, float] | None | str = "auto"
    mixup: float | None = None
    precision: str = "off"
    accumulate: int = 1
    max_grad_norm: float | None = None


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one row per epoch: epoch, step, train_loss, valid metrics
    steps: int
    duration_s: float
    skipped_steps: int  # fp16 steps skipped for overflowing gradients


class ShardedSampler(Sampler[int]):
    """A fixed order per (seed, epoch), split across ranks, that can start mid-epoch.

    Shards as torch's DistributedSampler does: the order is padded by repeating
    its start to a multiple of `world_size`, and rank r takes every
    `world_size`-th index from r. `set_epoch(epoch, start)` skips the first
    `start` indices of this rank's shard, which is how a resumed run continues
    the epoch it was stopped in.
    """

    def __init__(self, n: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def shard(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        if self.pad and self.n % self.world_size:
            order += order[: self.world_size - self.n % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard()[self.start :])

    def __len__(self) -> int:
        return len(self.shard()) - self.start


def fit(
    task: Task,
    epochs: int = 1,
    recipe: Recipe | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    max_steps: int | None = None,
    device: str | torch.device = "auto",
    seed: int | None = 0,
    progress: bool = True,
    sync_every: int = 16,
) -> FitResult:
    """Train `task.model` in place for `epochs` epochs and return the history.

    With `checkpoint_dir`, a checkpoint is written after every epoch and every
    `checkpoint_every` optimizer steps, and a run started with an existing
    checkpoint there resumes from it. `max_steps` ends training early (the
    schedule then spans `max_steps`). `seed` seeds torch, numpy and random on
    every rank (offset by the rank); None leaves the random state alone. The
    loop reads values from the device only every `sync_every` steps, at the end
    of an epoch and before a checkpoint; a non-finite loss raises
    NonFiniteLossError naming the step where it first appeared.
    """
    recipe = recipe if recipe is not None else Recipe()
    epochs, checkpoint_every, max_steps, sync_every = _check_fit_args(
        task, epochs, recipe, checkpoint_every, max_steps, sync_every)
    task.validate()
    run = _setup(task, epochs, recipe, callbacks=callbacks, checkpoint_dir=checkpoint_dir,
                 checkpoint_every=checkpoint_every, max_steps=max_steps, device=device, seed=seed,
                 progress=progress, sync_every=sync_every)
    state = run.state
    start = time.perf_counter()
    try:
        for cb in run.callbacks:  # inside the try: a callback that fails to start still gets on_exception
            cb.on_fit_start(state)
        while state.epoch < epochs and not state.stop:
            _train_epoch(run)
            if not _end_epoch(run):  # stopped mid-epoch
                break
        for cb in run.callbacks:
            cb.on_fit_end(state)
    except BaseException as error:
        for cb in run.callbacks:
            cb.on_exception(state, error)
        raise
    finally:
        if run.owns_group:
            run.state.model = run.accumulator.model = run.model  # no reference to the DDP wrapper outlives fit
            leave_distributed()
    return FitResult(state.history, state.step, time.perf_counter() - start, run.precision.skipped_steps)


@dataclass
class _Run:
    """What one `fit` call trains with, and the epoch's sums that stay on the device between syncs."""

    state: FitState  # holds the task, the (DDP-wrapped) model, optimizer, scheduler, device and position
    model: nn.Module  # the unwrapped model: what a checkpoint saves and loads
    sampler: ShardedSampler
    drop_last: bool
    batches_per_epoch: int
    precision: MixedPrecision
    accumulator: GradientAccumulator
    mixup: Mixup | None
    callbacks: list[Callback]
    checkpoint: Path | None
    checkpoint_every: int | None
    max_steps: int | None
    sync_every: int
    owns_group: bool  # the process group was created by this call, which destroys it
    schedule_per: str = "step"  # the scheduler steps after every optimizer "step" or at the end of each "epoch"
    loss_sum: torch.Tensor = field(init=False)  # summed over the epoch's items
    item_count: torch.Tensor = field(init=False)
    first_bad_step: torch.Tensor = field(init=False)  # the first step with a non-finite loss, else -1

    def __post_init__(self) -> None:
        device = self.state.device
        self.loss_sum = torch.zeros((), device=device)
        self.item_count = torch.zeros((), device=device)
        self.first_bad_step = torch.full((), -1, device=device, dtype=torch.long)


def _setup(task: Task, epochs: int, recipe: Recipe, *, callbacks: Sequence[Callback],
           checkpoint_dir: str | os.PathLike | None, checkpoint_every: int | None, max_steps: int | None,
           device: str | torch.device, seed: int | None, progress: bool, sync_every: int) -> _Run:
    """Join the process group, place (and under DDP wrap) the model, build the recipe's parts, and resume."""
    rank, world_size, owns_group = init_distributed()
    device = resolve_device(device, rank=rank)
    if seed is not None:
        _seed_everything(seed + rank)
    model = task.model.to(device)
    optimizer = _optimizer(task, model, recipe.lr)
    train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world_size > 1 else model
    sampler = ShardedSampler(len(task.train), shuffle=True, seed=0 if seed is None else seed,
                             rank=rank, world_size=world_size)
    drop_last, batches_per_epoch, total_steps = _plan_steps(len(sampler), task.batch_size, recipe.accumulate,
                                                            epochs, max_steps)
    scheduler, schedule_per = _scheduler(task, recipe, optimizer, total_steps)
    precision = MixedPrecision(recipe.precision, device_type=device.type)
    run = _Run(
        state=FitState(task, train_model, optimizer, scheduler, epochs, total_steps, device, rank, world_size),
        model=model, sampler=sampler, drop_last=drop_last, batches_per_epoch=batches_per_epoch, precision=precision,
        accumulator=GradientAccumulator(train_model, optimizer, recipe.accumulate, precision, recipe.max_grad_norm),
        mixup=_make_mixup(task, recipe.mixup, model, device), schedule_per=schedule_per,
        callbacks=[*callbacks, ProgressBar()] if progress else list(callbacks),
        checkpoint=Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None,
        checkpoint_every=checkpoint_every, max_steps=max_steps, sync_every=sync_every, owns_group=owns_group,
    )
    if run.checkpoint is not None and run.checkpoint.exists():
        _load_checkpoint(run)
    run.state.stop = max_steps is not None and run.state.step >= max_steps  # resumed after its last step
    return run


def _optimizer(task: Task, model: nn.Module, lr: float | None) -> torch.optim.Optimizer:
    """The Task's optimizer (or the default AdamW), with the recipe's `lr` in every group when it sets one."""
    optimizer = make_optimizer(task, model, lr)
    if lr is not None and task.optimizer is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    return optimizer


def _plan_steps(n_items: int, batch_size: int, accumulate: int, epochs: int,
                max_steps: int | None) -> tuple[bool, int, int]:
    """(drop_last, batches per epoch, optimizer steps of the run) for a rank's shard of `n_items` items.

    The last partial batch is dropped (no batch of one for BatchNorm; equal noise every step) unless
    the shard holds less than one batch, which then trains as one.
    """
    drop_last = n_items >= batch_size
    batches_per_epoch = n_items // batch_size if drop_last else 1
    total_steps = epochs * math.ceil(batches_per_epoch / accumulate)
    return drop_last, batches_per_epoch, total_steps if max_steps is None else min(total_steps, max_steps)


def _train_epoch(run: _Run) -> None:
    """The epoch's remaining batches, in accumulation windows, until it ends or training stops."""
    state, task = run.state, run.state.task
    run.sampler.set_epoch(state.epoch, start=state.batch * task.batch_size)
    # A private generator: making the iterator must not draw from the global RNG, or a resumed
    # epoch would draw once more than the uninterrupted one.
    loader = task.loader(task.train, sampler=run.sampler, drop_last=run.drop_last, generator=torch.Generator())
    state.model.train()
    for cb in run.callbacks:
        cb.on_epoch_start(state)
    for x, y in loader:
        if task.step is not None:
            _train_own_step(run, x, y)
        else:
            _train_micro_batch(run, x, y)
            if not run.accumulator.stepped:
                continue
        _end_step(run)
        if state.stop:
            break


def _train_micro_batch(run: _Run, x: Any, y: torch.Tensor) -> None:
    """Forward and backward one micro-batch (the accumulator steps when it closes a window); sum its loss."""
    state, task = run.state, run.state.task
    x, y = to_device(x, state.device, non_blocking=True), y.to(state.device, non_blocking=True)
    if task.augment is not None:
        x = task.augment(x)
    n = count_items(task.kind, y)
    target = y
    if run.mixup is not None:
        x, target = run.mixup(x, y)
    last = state.batch == run.batches_per_epoch - 1
    with run.accumulator.micro_batch(n_items=n, last=last):
        with run.precision.autocast():
            output, counted = task.outputs(state.model, (x, y))
            loss = task.loss_fn(output, target if run.mixup is not None else counted)
        run.accumulator.backward(loss * n)
    _count_loss(run, loss.detach().float(), n)


def _train_own_step(run: _Run, x: Any, y: torch.Tensor) -> None:
    """One optimizer step by the Task's own `step` on the (augmented) batch; sum the loss it returned."""
    state, task = run.state, run.state.task
    x, y = to_device(x, state.device, non_blocking=True), y.to(state.device, non_blocking=True)
    if task.augment is not None:
        x = task.augment(x)
    loss = task.train_step(state.model, (x, y), state.optimizer)
    _count_loss(run, loss.float().to(run.loss_sum.device), count_items(task.kind, y))


def _count_loss(run: _Run, loss: torch.Tensor, n: int | torch.Tensor) -> None:
    """Add a batch's mean loss over its `n` items to the epoch's sums, on the device (read at the next sync)."""
    state = run.state
    run.first_bad_step.masked_fill_((run.first_bad_step < 0) & ~torch.isfinite(loss), state.step + 1)
    run.loss_sum += loss * n
    run.item_count += n
    state.loss = loss
    state.batch += 1


def _end_step(run: _Run) -> None:
    """After an optimizer step: the schedule, callbacks, a sync every `sync_every` steps, a periodic checkpoint."""
    state = run.state
    state.step += 1
    if state.scheduler is not None and run.schedule_per == "step":
        state.scheduler.step()
    for cb in run.callbacks:
        cb.on_step_end(state)
    if state.step % run.sync_every == 0:
        _sync(run)
    if run.max_steps is not None and state.step >= run.max_steps:
        state.stop = True
    periodic = run.checkpoint_every and state.step % run.checkpoint_every == 0
    last = state.batch == run.batches_per_epoch
    if run.checkpoint is not None and periodic and not last and not state.stop:  # else _end_epoch saves
        _sync(run)
        _save_checkpoint(run)


def _sync(run: _Run) -> None:
    """Read the device once: the epoch's mean loss, and whether any loss was non-finite (on any rank)."""
    state = run.state
    totals, bad = torch.stack([run.loss_sum, run.item_count]), run.first_bad_step.clone()
    if state.world_size > 1:
        dist.all_reduce(totals)
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    total_loss, total_items = totals.tolist()
    bad = int(bad)
    if bad >= 0:
        raise NonFiniteLossError(
            f"the training loss became NaN or infinite at step {bad} (epoch {state.epoch + 1}); training "
            "stopped. A loss that explodes usually means a learning rate that is too high or a bad "
            "initialisation: see `dltips tips initialization` and `dltips tips update-ratio`, and check "
            "the inputs for NaN values."
        )
    state.train_loss = total_loss / total_items if total_items > 0 else math.nan
    for cb in run.callbacks:
        cb.on_sync(state)


def _end_epoch(run: _Run) -> bool:
    """Sync, evaluate, add the epoch's history row and checkpoint; False when training stopped mid-epoch."""
    state = run.state
    _sync(run)
    stopped_mid_epoch = state.batch < run.batches_per_epoch
    if run.checkpoint is not None and stopped_mid_epoch:  # a resumed run finishes this epoch
        _save_checkpoint(run)
    metrics = evaluate(state.model, state.task, state.task.valid, device=state.device, precision=run.precision)
    for cb in run.callbacks:
        cb.on_eval_end(state, metrics)
    state.history.append({"epoch": state.epoch + 1, "step": state.step, "train_loss": state.train_loss, **metrics})
    for cb in run.callbacks:
        cb.on_epoch_end(state)
    if stopped_mid_epoch:
        return False
    if state.scheduler is not None and run.schedule_per == "epoch":
        if isinstance(state.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            state.scheduler.step(metrics["valid_loss"])
        else:
            state.scheduler.step()
    state.epoch, state.batch = state.epoch + 1, 0
    run.loss_sum.zero_()
    run.item_count.zero_()
    if run.checkpoint is not None:
        _save_checkpoint(run)
    return True


@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: Task,
    data: Dataset,
    *,
    device: torch.device | str | None = None,
    precision: MixedPrecision | None = None,
) -> dict[str, float]:
    """Loss and the kind's metrics on `data` (names prefixed "valid_"), over all ranks when distributed.

    classification: loss, accuracy, balanced_accuracy, macro_f1; binary: loss,
    accuracy, balanced_accuracy, f1, precision, recall; multilabel: loss,
    accuracy (per label), macro_f1; regression: loss, rmse, mae, mape; language
    model: loss, perplexity, accuracy (next token). The per-batch sums stay on
    the device and are all-reduced once (see `dltips.monitor.scores`).
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module  # ranks may run different numbers of batches: no collectives in forward
    device = resolve_device(device, model)
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    sampler = ShardedSampler(len(data), shuffle=False, rank=rank, world_size=world_size, pad=False)
    loader = task.loader(data, sampler=sampler)
    totals = zero_sums(task.kind, task.n_classes, device)  # a rank without items still joins the reduction
    with eval_mode(model):
        for x, y in loader:
            x, y = to_device(x, device), y.to(device)
            with precision.autocast() if precision is not None else contextlib.nullcontext():
                output, y = task.outputs(model, (x, y))
                loss = task.loss_fn(output, y)
            decisions = as_logits(task, output.float())
            add_sums(totals, metric_sums(task.kind, decisions, y, loss.float(), task.n_classes))
    return metrics_from_sums(task.kind, reduce_sums(totals), prefix="valid_")


def _check_fit_args(task: Task, epochs: int, recipe: Recipe, checkpoint_every: int | None, max_steps: int | None,
                    sync_every: int) -> tuple[int, int | None, int | None, int]:
    """The validated (epochs, checkpoint_every, max_steps, sync_every); the recipe's numbers are checked too."""
    positive_int("recipe.accumulate", recipe.accumulate)
    if isinstance(recipe.moms, str) and recipe.moms != "auto":
        raise ParamError(f"recipe.moms must be 'auto', None or (start, at peak, end), got {recipe.moms!r}")
    if task.step is not None:
        _check_own_step(recipe)
    if recipe.lr is not None:
        positive("recipe.lr", recipe.lr)
    return (positive_int("epochs", epochs), optional_int("checkpoint_every", checkpoint_every),
            optional_int("max_steps", max_steps), positive_int("sync_every", sync_every))


def _check_own_step(recipe: Recipe) -> None:
    """A Task's own step does its own precision, accumulation and clipping: the recipe must not do them too."""
    clashes = [name for name, on in (("mixup", recipe.mixup is not None), ("precision", recipe.precision != "off"),
                                     ("accumulate", recipe.accumulate != 1),
                                     ("max_grad_norm", recipe.max_grad_norm is not None)) if on]
    if clashes:
        raise ParamError(f"recipe.{', recipe.'.join(clashes)} cannot be combined with Task.step, which trains each "
                         "batch itself: do this inside the step, or leave the recipe's defaults (the schedule and "
                         "recipe.lr still apply)")


def _scheduler(task: Task, recipe: Recipe, optimizer: torch.optim.Optimizer,
               total_steps: int) -> tuple[Any, str]:
    """(the scheduler, "step" or "epoch"): the Task's own, else the one-cycle when the recipe asks for it."""
    if task.scheduler is not None:
        scheduler = task.scheduler(optimizer)
        if not callable(getattr(scheduler, "step", None)):
            raise ParamError(f"Task.scheduler must return an LR scheduler (an object with step()), got "
                             f"{type(scheduler).__name__}")
        return scheduler, task.scheduler_interval
    if not recipe.one_cycle:
        return None, "step"
    moms = recipe.moms
    if moms == "auto":
        moms = (0.95, 0.85, 0.95) if _has_momentum(optimizer) else None
    return OneCycle(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(total_steps, 2),
                    pct_start=recipe.pct_start, moms=moms), "step"


def _has_momentum(optimizer: torch.optim.Optimizer) -> bool:
    """Adam-like betas in every group, or an SGD-like momentum above 0 in every group."""
    groups = optimizer.param_groups
    return all("betas" in g for g in groups) or all(float(g.get("momentum", 0.0) or 0.0) > 0 for g in groups)


def _make_mixup(task: Task, alpha: float | None, model: nn.Module, device: torch.device) -> Mixup | None:
    if alpha is None:
        return None
    if task.kind == "language-model":
        raise ParamError("recipe.mixup is not defined for language models (tokens cannot be blended); use None")
    # A model that mixes its own embeddings (e.g. TabularModel) takes its integer ids unmixed, with lam and perm.
    ids = "model" if getattr(task.model, "mixes_embeddings", False) else "error"
    mixup = Mixup(alpha, n_classes=task.n_classes if task.kind == "classification" else None, ids=ids)
    if task.kind == "classification":
        batch = to_device(task.first_batch(task.train, 2), device)
        with torch.no_grad(), eval_mode(model):
            mixup.check_loss(task.loss_fn, task.outputs(model, batch)[0])
    return mixup


def init_distributed() -> tuple[int, int, bool]:
    """Join the process group that torchrun describes; returns (rank, world size, created here)."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    return 0, 1, False


def leave_distributed() -> None:
    """Destroy the process group while Python is fully alive.

    A DistributedDataParallel wrapper holds the group; if the last one is only
    freed at interpreter exit (a reference cycle, a callback that kept it), gloo's
    worker threads can abort the process ("terminate called without an active
    exception"). Collecting first frees every wrapper nobody still uses.
    """
    gc.collect()
    dist.destroy_process_group()


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _save_checkpoint(run: _Run) -> None:
    """Write the whole training state (rank 0 only) so that a resumed run is bit-identical."""
    state = run.state
    rng = get_rng_state()
    rngs = [None] * state.world_size
    if state.world_size > 1:
        dist.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    if state.rank == 0:
        payload = {
            "model": run.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
            "precision": run.precision.state_dict(),
            "rng": rngs,
            "epoch": state.epoch,
            "batch": state.batch,
            "step": state.step,
            "history": state.history,
            "loss_sum": run.loss_sum.cpu(),
            "item_count": run.item_count.cpu(),
            "world_size": state.world_size,
            "total_steps": state.total_steps,
        }
        atomic_write(run.checkpoint, lambda f: torch.save(payload, f))
    if state.world_size > 1:
        dist.barrier()


def _load_checkpoint(run: _Run) -> None:
    """Put the model, optimizer, scheduler, loss scale, RNGs, position and the epoch's sums back."""
    state, path = run.state, run.checkpoint
    payload = torch.load(path, map_location=state.device, weights_only=False)
    if payload["world_size"] != state.world_size:
        raise ValueError(f"checkpoint {path} was written by {payload['world_size']} processes; "
                         f"resume it with the same number (this run has {state.world_size})")
    if payload["total_steps"] != state.total_steps:
        raise ValueError(f"checkpoint {path} belongs to a run of {payload['total_steps']} optimizer steps; this run "
                         f"has {state.total_steps}. Resume with the same epochs, max_steps, batch size and "
                         "accumulation, or start from another checkpoint_dir")
    run.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    if state.scheduler is not None and payload["scheduler"] is not None:
        state.scheduler.load_state_dict(payload["scheduler"])
    run.precision.load_state_dict(payload["precision"])
    set_rng_state(payload["rng"][state.rank])
    state.epoch, state.batch, state.step = payload["epoch"], payload["batch"], payload["step"]
    state.history = payload["history"]
    run.loss_sum, run.item_count = payload["loss_sum"].to(state.device), payload["item_count"].to(state.device)
