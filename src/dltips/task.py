"""Task: what a user hands to dltips (model, data, loss, kind), validated when built.

Validation runs the model once, in eval mode and without gradients, on two
training items, so a shape or dtype mistake is reported here with the expected
shape instead of as a deep traceback in the middle of training.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import math
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from dltips.core.device import model_device, to_device
from dltips.core.state import eval_mode, rng_kept, training_copy

KINDS = ("classification", "binary", "multilabel", "regression", "language-model")
SCHEDULER_INTERVALS = ("epoch", "step")
DEFAULT_BATCH_SIZE = 64
IGNORE_INDEX = -100  # targets equal to this are not counted (torch's cross_entropy default)
_SCAN_ITEMS = 256  # items per dataset whose labels are checked when labels are not one tensor


class TaskError(ValueError):
    """A Task field is wrong: the message names the field, what was found and what was expected."""

    def __init__(self, field: str, found: str, expected: str):
        self.field, self.found, self.expected = field, found, expected
        super().__init__(f"Task.{field}: found {found}; expected {expected}.")


@dataclass
class Task:
    """A model and its data: everything dltips needs to check or train it.

    Items of `train`, `valid` and `test` are `(x, y)` pairs, with `x` a tensor
    or a dict of tensors and `y` a tensor or a number. A dict whose every key
    names an argument of the model's `forward` is passed as `model(**x)`, as
    Hugging Face models take their input_ids and attention_mask; any other dict
    is handed to the model as one argument. `n_classes` is the number of classes (the vocabulary size for a
    language model); left as None it is read from the model's output.

    The splits may be DataLoaders: their datasets are used, with the train
    loader's `collate_fn` and batch size unless `collate_fn` and `batch_size` are
    given (`batch_size` defaults to 64). `collate_fn` batches items of different
    lengths (padding), everywhere dltips draws items.

    The model's output may be a tensor, a tuple or list (makemore's `(logits,
    loss)`: dltips takes its first tensor that is not a scalar), or a dict or
    Hugging Face ModelOutput (its `logits`); `output` overrides that rule with an
    index, a key or attribute name, or a function of the output. For anything
    else, `forward(model, batch) -> (output, target)` says how a batch `(x, y)`
    is run (nanoGPT's model returns every position's logits only when given the
    targets: `forward=lambda m, b: (m(b[0], b[1])[0], b[1])`). `ignore_index` is
    the target value that marks positions not to count (torch's -100 by
    default; makemore uses -1); dltips counts and scores without them, and the
    Task's own loss, step and forward see the targets as the data holds them.

    `step`, optional, is the user's own training step, `step(model, batch, optimizer) -> loss`: the
    forward pass, `loss.backward()` and `optimizer.step()` (with the user's zero_grad, regularisers,
    clipping and accumulation over micro-batches of `batch`), for one optimizer step. When given,
    every training dltips does on the Task runs it (`train_step`); `loss` stays what
    dltips evaluates with. `validate` (when the Task is built, and in `fit`) runs it once on a copy.

    `scheduler`, optional, builds the user's LR scheduler from the optimizer (`optimizer ->
    LRScheduler`, e.g. `lambda o: StepLR(o, 1, gamma=0.7)`); `fit` and the doctor's short run step
    it once per epoch (`scheduler_interval="epoch"`, as Lightning does by default, with the
    validation loss for ReduceLROnPlateau) or after every optimizer step ("step"), in place of the
    one-cycle schedule.
    """

    model: nn.Module
    train: Dataset
    valid: Dataset
    test: Dataset | None = None
    kind: str = "classification"
    n_classes: int | None = None
    loss: Callable | None = None
    batch_size: int | None = None
    optimizer: Callable | None = None
    augment: Callable | None = None
    name: str = "task"
    step: Callable | None = None
    scheduler: Callable | None = None
    scheduler_interval: str = "epoch"
    collate_fn: Callable | None = None
    output: int | str | Callable | None = None
    forward: Callable | None = None
    ignore_index: int = IGNORE_INDEX

    # set by validate(): the convention of the model's outputs (see `output_form`)
    output_form: str = field(default="logits", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._take_loaders()
        self.validate()

    def _take_loaders(self) -> None:
        """DataLoader splits become their datasets; the train loader lends its collate_fn and batch size."""
        for split in ("train", "valid", "test"):
            loader = getattr(self, split)
            if not isinstance(loader, DataLoader):
                continue
            if split == "train":
                if self.collate_fn is None and loader.collate_fn is not default_collate:
                    self.collate_fn = loader.collate_fn
                if self.batch_size is None and loader.batch_size is not None:
                    self.batch_size = loader.batch_size
            setattr(self, split, loader.dataset)
        if self.batch_size is None:
            self.batch_size = DEFAULT_BATCH_SIZE

    # ------------------------------------------------------------------ how dltips drives the user's objects

    def optimizer_for(self, model: nn.Module) -> Any:
        """The Task's optimizer over `model`'s parameters: `optimizer(model.parameters())`, or built from the
        model itself by a `ModelOptimizer`; None when the Task has no optimizer."""
        if isinstance(self.optimizer, ModelOptimizer):
            return self.optimizer.for_model(model)
        return self.optimizer(model.parameters()) if self.optimizer is not None else None

    @classmethod
    def from_lightning(cls, module: nn.Module, datamodule: Any = None, target: str | None = None,
                       **fields: Any) -> Task:
        """A Task from a LightningModule (and its LightningDataModule), the module unchanged.

        The data are the datamodule's loaders (after its `prepare_data()` and `setup("fit")`), else the
        module's: `train_dataloader()`, `val_dataloader()` (required: the doctor needs held-out data) and
        `test_dataloader()` when there is one. Each copy dltips trains gets the optimizer and scheduler that
        its own `configure_optimizers()` returns (the first optimizer; the scheduler with its "interval"),
        and is trained by its own `training_step(batch, batch_idx)` (automatic optimization: zero_grad, the
        step's loss, backward, optimizer.step()). `fields` are the other Task fields: `kind`, `n_classes`,
        `loss` (what dltips evaluates `module(x)` with), `name`, ...

        Batches are `(x, y)` pairs, or dicts (`{"image": ..., "label": ...}`): the entry named `target`
        (default: the first of TARGET_KEYS the items have) is the target, the others are the inputs,
        called as `module(**inputs)` when they name `forward`'s arguments, else `module(inputs)`; the
        loader's `collate_fn` batches the dicts and `training_step` gets them as the loader gives them.

        Without `loss=`, a `validation_step` that returns or logs a loss (a name holding "loss") decides
        it: run once on a copy of the module, on the first validation batch, its value is matched against
        the kind's default loss and the loss objects the module holds (`self.criterion =
        nn.CrossEntropyLoss(label_smoothing=0.1)`, `self.loss_fn = F.nll_loss`); the first that gives the
        same value is the Task's loss. When none does, a warning gives both values and asks for `loss=`,
        and the kind's default is used. Lightning itself is not imported: any object with these methods
        works.
        """
        if not getattr(module, "automatic_optimization", True):
            raise TaskError("model", "a LightningModule with automatic_optimization=False",
                            "automatic optimization: a manual training_step needs Lightning's Trainer "
                            "(self.optimizers(), self.manual_backward())")
        train, valid, test = _lightning_loaders(module, datamodule)
        _, scheduler, interval = lightning_optimizers(module.configure_optimizers())  # the form, read once
        optimizer = ModelOptimizer(lambda model: lightning_optimizers(model.configure_optimizers())[:2])
        fields.setdefault("name", type(module).__name__)
        key = _dict_target(train, target)
        if fields.get("loss") is None and fields.get("forward") is None:
            fields["loss"] = validation_loss(module, valid, fields.get("kind", "classification"),
                                             fields.get("output"), fields.get("ignore_index", IGNORE_INDEX), key)
        step = lightning_step
        if key is not None:
            collate = None if train.collate_fn is default_collate else train.collate_fn
            fields.setdefault("collate_fn", functools.partial(dict_collate, collate, key))
            fields.setdefault("batch_size", train.batch_size)
            train, valid, test = (None if loader is None else HFItems(loader.dataset, False, (key,))
                                  for loader in (train, valid, test))
            step = functools.partial(lightning_step, target=key)
        return cls(module, train, valid, test, optimizer=optimizer, step=step,
                   scheduler=optimizer.scheduler_for if scheduler is not None else None, scheduler_interval=interval,
                   **fields)

    @classmethod
    def from_transformers(cls, model: nn.Module, train_dataset: Any, eval_dataset: Any,
                          data_collator: Callable | None = None, **fields: Any) -> Task:
        """A Task from a Hugging Face model and the datasets a `Trainer` would take.

        Items are dicts (`input_ids`, `attention_mask`, ..., and `labels` or `label`), as lists or tensors,
        of any length. `data_collator` batches them as the Trainer would (it may set the labels); without
        one, sequences are padded (the config's pad_token_id, else 0; attention_mask 0; labels -100). The
        inputs go to the model as `model(**inputs)` and its `logits` are the prediction. The kind is read
        from the head: a causal LM ("...ForCausalLM", "...LMHeadModel") is a "language-model" whose targets
        are the labels (or the input_ids) shifted by one, as the model shifts them for its own loss; a
        "...ForSequenceClassification" head is "classification", "regression" (one label or
        problem_type "regression") or "multilabel"; pass `kind=` otherwise. dltips's loss for these kinds
        is the loss the model computes itself (mean cross-entropy over counted tokens, or MSE).
        """
        kind = fields.pop("kind", None) or _hf_kind(model)
        causal = kind == "language-model"
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
        collate = functools.partial(_hf_collate, data_collator, causal, 0 if pad is None else int(pad))
        fields.setdefault("name", type(model).__name__)
        return cls(model, HFItems(train_dataset, causal), HFItems(eval_dataset, causal), kind=kind,
                   collate_fn=collate, **fields)

    def collate(self, items: list) -> tuple[Any, torch.Tensor]:
        """A batch `(x, y)` of `items`, by the Task's `collate_fn` (default_collate), its targets with
        `ignore_index` as dltips counts it (IGNORE_INDEX)."""
        batch = (self.collate_fn or default_collate)(items)
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            found = f"a {len(batch)}-tuple" if isinstance(batch, (tuple, list)) else type(batch).__name__
            raise TaskError("collate_fn", f"batches of the form {found}", "(x, y) pairs, as the items are")
        x, y = batch
        return x, self.counted_targets(y)

    def first_batch(self, data: Dataset, n: int) -> tuple[Any, torch.Tensor]:
        """The first `n` items of `data` (all when fewer) as one collated batch."""
        return self.collate([data[i] for i in range(min(n, len(data)))])

    def loader(self, data: Dataset, **kwargs: Any) -> DataLoader:
        """`DataLoader(data, **kwargs)` that batches with `collate` (batch_size defaults to the Task's)."""
        kwargs.setdefault("batch_size", self.batch_size)
        return DataLoader(data, collate_fn=self.collate, **kwargs)

    def outputs(self, model: nn.Module, batch: tuple[Any, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the model's prediction on a collated batch, its targets): `forward` when the Task has one,
        else `model(x)`, the prediction picked from the output by `select_output`."""
        if self.forward is None:
            x, y = batch
            return select_output(call_model(model, x), self.output), y
        x, y = batch
        output, target = self.forward(model, (x, self._to_users(y)))
        return select_output(output, self.output), self.counted_targets(torch.as_tensor(target))

    def train_step(self, model: nn.Module, batch: tuple[Any, torch.Tensor], optimizer: Any) -> torch.Tensor:
        """One optimizer step on a collated batch: the Task's own `step`, else zero_grad, forward, loss,
        backward, step. The loss, detached."""
        if self.step is not None:
            x, y = batch
            return as_loss(self.step(model, (x, self._to_users(y)), optimizer))
        return plain_step(model, batch, optimizer, self.loss_fn, self.outputs)

    def _remaps(self, y: Any) -> bool:
        return (self.ignore_index != IGNORE_INDEX and self.kind in ("classification", "language-model")
                and isinstance(y, torch.Tensor) and not y.is_floating_point())

    def counted_targets(self, y: Any) -> Any:
        return torch.where(y == self.ignore_index, IGNORE_INDEX, y) if self._remaps(y) else y

    def _to_users(self, y: Any) -> Any:
        return torch.where(y == IGNORE_INDEX, self.ignore_index, y) if self._remaps(y) else y

    def validate(self) -> None:
        """Check every field; raise TaskError on the first that is wrong."""
        if not isinstance(self.model, nn.Module):
            raise TaskError("model", type(self.model).__name__, "a torch.nn.Module")
        if self.kind not in KINDS:
            raise TaskError("kind", repr(self.kind), f"one of {', '.join(KINDS)}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise TaskError("batch_size", repr(self.batch_size), "a positive int")
        if not isinstance(self.name, str) or not self.name:
            raise TaskError("name", repr(self.name), "a non-empty string")
        for name in ("loss", "optimizer", "augment", "step", "scheduler"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TaskError(name, type(value).__name__, "a callable or None")
        if self.scheduler_interval not in SCHEDULER_INTERVALS:
            raise TaskError("scheduler_interval", repr(self.scheduler_interval), "'epoch' or 'step'")
        if self.n_classes is not None and (not isinstance(self.n_classes, int) or self.n_classes < 1):
            raise TaskError("n_classes", repr(self.n_classes), "a positive int or None")
        for split in ("train", "valid", "test"):
            if split != "test" or self.test is not None:
                _check_items(split, getattr(self, split))
        if self.collate_fn is not None and not callable(self.collate_fn):
            raise TaskError("collate_fn", type(self.collate_fn).__name__, "a callable or None")
        if self.forward is not None and not callable(self.forward):
            raise TaskError("forward", type(self.forward).__name__, "a callable (model, batch) -> (output, target)")
        if not (self.output is None or callable(self.output) or isinstance(self.output, (int, str))) \
                or isinstance(self.output, bool):
            raise TaskError("output", repr(self.output), "None, an index, a key or attribute name, or a function")
        if not isinstance(self.ignore_index, int) or isinstance(self.ignore_index, bool):
            raise TaskError("ignore_index", repr(self.ignore_index), "an int (torch's default is -100)")
        x, y = self.first_batch(self.train, 2)
        raw, output, y = _run_model(self, x, y)
        if self.n_classes is None:
            self.n_classes = _infer_n_classes(self.kind, output)
        try:
            check_output(self.kind, self.n_classes, output, y)
        except TaskError as e:
            raise TaskError("model", *_with_hint(e, raw, output, y, self)) from None
        for split in ("train", "valid", "test"):
            if split != "test" or self.test is not None:
                _check_labels(split, getattr(self, split), self.kind, self.n_classes, self.ignore_index)
        _check_loss(self.loss_fn, output, y)
        self.output_form = output_form(self.kind, output, y, self.loss_fn)
        if self.step is not None:
            _check_step(self)

    @property
    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The Task's loss, or the default for its kind (a mean over items), on targets as dltips counts them."""
        if self.loss is None:
            return DEFAULT_LOSSES[self.kind]
        if self.ignore_index == IGNORE_INDEX:
            return self.loss
        return functools.partial(_users_loss, self)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "n_classes": self.n_classes,
            "n_params": sum(p.numel() for p in self.model.parameters()),
            "n_train": len(self.train),
            "n_valid": len(self.valid),
            "n_test": len(self.test) if self.test is not None else 0,
            "own_step": self.step is not None,
        }


# Default losses per kind: each returns the mean over items (tokens for a language model).


def classification_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, target)


def binary_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(output.reshape(target.shape), target.float())


def multilabel_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(output, target.float())


def regression_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output.reshape(target.shape), target.float())


def language_model_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output.flatten(0, -2), target.flatten(), ignore_index=IGNORE_INDEX)


DEFAULT_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "classification": classification_loss,
    "binary": binary_loss,
    "multilabel": multilabel_loss,
    "regression": regression_loss,
    "language-model": language_model_loss,
}


DEFAULT_LOSS_NAMES = {
    "classification": "cross_entropy",
    "binary": "binary_cross_entropy_with_logits",
    "multilabel": "binary_cross_entropy_with_logits",
    "regression": "mse_loss",
    "language-model": "cross_entropy",
}


def count_items(kind: str, target: torch.Tensor) -> int | torch.Tensor:
    """How many items a batch's mean loss averages over: tokens for a language model, else rows.

    For a language model the count is a 0-d tensor (kept on the device, no host sync).
    """
    if kind == "language-model":
        return (target != IGNORE_INDEX).sum()
    return len(target)


OUTPUT_FORMS = ("logits", "log-probabilities", "probabilities", "values")
_NORM_TOL = 1e-3  # |sum - 1| accepted as normalised


def output_form(kind: str, output: torch.Tensor, target: torch.Tensor | None = None,
                loss_fn: Callable | None = None) -> str:
    """The convention of the model's outputs, one of OUTPUT_FORMS: what its loss and its decisions expect.

    "values" for regression. For classes: "probabilities" when they lie in [0, 1] and sum to 1 over the
    class dimension, "log-probabilities" when they are at most 0 and their exponentials sum to 1 (a
    `log_softmax` for `nll_loss`), else "logits". For binary and multilabel outputs in [0, 1] the loss
    decides: one that refuses a value outside [0, 1] (BCELoss) wants probabilities; else they are logits.
    """
    if kind == "regression":
        return "values"
    out = output.detach().double()
    if out.numel() == 0:
        return "logits"
    in_unit = bool((out >= 0).all() and (out <= 1).all())
    if kind in ("binary", "multilabel"):
        return "probabilities" if in_unit and _refuses_logits(output, target, loss_fn) else "logits"
    return normalised_form(out, class_dim(kind, out)) or "logits"


def class_dim(kind: str, output: torch.Tensor) -> int:
    """The dimension holding the classes: 1 for classification, the last one for a language model."""
    return 1 if kind == "classification" else output.dim() - 1


def normalised_form(out: torch.Tensor, dim: int) -> str | None:
    """'probabilities' or 'log-probabilities' when `out` sums (or exp-sums) to 1 along `dim`, else None."""
    if out.numel() == 0:
        return None
    if bool((out >= 0).all() and (out <= 1).all()) and bool(((out.sum(dim) - 1).abs() < _NORM_TOL).all()):
        return "probabilities"
    if bool((out <= 1e-6).all()) and bool(((out.exp().sum(dim) - 1).abs() < _NORM_TOL).all()):
        return "log-probabilities"
    return None


def as_logits(task: Task, output: torch.Tensor) -> torch.Tensor:
    """`output` as logits for decisions (thresholds at 0, argmax): probabilities of a binary or multilabel
    model (`Task.output_form` "probabilities", a sigmoid before BCELoss) become their log-odds."""
    if task.output_form == "probabilities" and task.kind in ("binary", "multilabel"):
        return torch.logit(output.clamp(1e-7, 1 - 1e-7))
    return output


def _refuses_logits(output: torch.Tensor, target: torch.Tensor | None, loss_fn: Callable | None) -> bool:
    """Whether `loss_fn` raises on outputs outside [0, 1] (as BCELoss does); True when it cannot be asked."""
    if loss_fn is None or target is None:
        return True
    try:
        with torch.no_grad():
            loss_fn(torch.full_like(output, 3.0), target.to(output.device))
    except Exception:  # noqa: BLE001 -- any refusal means the loss wants probabilities
        return True
    return False


def check_output(kind: str, n_classes: int | None, output: Any, target: torch.Tensor) -> None:
    """Raise TaskError unless the model's `output` on a batch fits `target` for this kind."""
    if not isinstance(output, torch.Tensor):
        raise TaskError("model", f"an output of type {type(output).__name__}", "a tensor of logits or values")
    n = len(target)
    shape, tshape = tuple(output.shape), tuple(target.shape)
    if output.dim() == 0 or output.shape[0] != n:
        raise TaskError("model", f"output shape {shape} for a batch of {n}", f"a first dimension of {n}")
    if not output.is_floating_point():
        raise TaskError("model", f"output dtype {output.dtype}", "a floating-point output")
    if kind == "classification":
        expected = (n, n_classes, *tshape[1:])
        if shape != expected:
            raise TaskError("model", f"output shape {shape} for targets of shape {tshape}",
                            f"{expected}: one logit per class (n_classes={n_classes})")
    elif kind == "binary":
        if shape not in ((n,), (n, 1)):
            raise TaskError("model", f"output shape {shape}", f"({n},) or ({n}, 1): one logit per item")
    elif kind == "multilabel":
        if shape != tshape:
            raise TaskError("model", f"output shape {shape} for targets of shape {tshape}",
                            f"{tshape}: one logit per label")
    elif kind == "regression":
        if output[0].numel() != target[0].numel():
            raise TaskError("model", f"output shape {shape} for targets of shape {tshape}",
                            f"{tshape}: one value per target")
    elif kind == "language-model":
        expected = (*tshape, n_classes)
        if shape != expected:
            raise TaskError("model", f"output shape {shape} for targets of shape {tshape}",
                            f"{expected}: (batch, tokens, vocabulary) logits with n_classes={n_classes}")


def _check_items(split: str, data: Any) -> None:
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise TaskError(split, type(data).__name__, "a map-style Dataset with __len__ and __getitem__")
    if len(data) == 0:
        raise TaskError(split, "an empty dataset", "at least one (x, y) item")
    item = data[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        found = f"a {len(item)}-tuple" if isinstance(item, (tuple, list)) else type(item).__name__
        raise TaskError(split, f"items of the form {found}", "(x, y) pairs")
    x, y = item
    if isinstance(x, dict):
        if not all(isinstance(v, torch.Tensor) for v in x.values()):
            raise TaskError(split, "an input dict with non-tensor values", "x a tensor or a dict of tensors")
    elif not isinstance(x, torch.Tensor):
        raise TaskError(split, f"inputs of type {type(x).__name__}", "x a tensor or a dict of tensors")
    if not isinstance(y, (torch.Tensor, int, float)):
        raise TaskError(split, f"targets of type {type(y).__name__}", "y a tensor, an int or a float")


def call_model(model: nn.Module, x: Any) -> Any:
    """`model(**x)` for a dict of inputs whose every key names an argument of `model.forward` (a Hugging Face
    model's input_ids, attention_mask, ...), else `model(x)` (a dict handed whole, as TabularModel takes it)."""
    if isinstance(x, Mapping) and x and all(isinstance(k, str) for k in x) and set(x) <= _named_arguments(model):
        return model(**x)
    return model(x)


def _named_arguments(model: nn.Module) -> set[str]:
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def select_output(output: Any, selector: int | str | Callable | None = None) -> Any:
    """The prediction in a model's output. `selector`: an index, a key or attribute name, or a function of the
    output. None: a tensor as it is; the `logits` of a dict or ModelOutput; the first tensor of a tuple or list
    that is not a scalar (makemore's and nanoGPT's `(logits, loss)`, whose loss is None without targets)."""
    if selector is not None:
        if callable(selector):
            return selector(output)
        if isinstance(selector, int) or isinstance(output, Mapping):
            return output[selector]
        return getattr(output, selector)
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if logits is not None:
        return logits
    if isinstance(output, (tuple, list)):
        return next((part for part in output if isinstance(part, torch.Tensor) and part.dim() > 0), output)
    return output


def _run_model(task: Task, x: Any, y: torch.Tensor) -> tuple[Any, Any, torch.Tensor]:
    """(the model's raw output, the prediction taken from it, the targets) on a training batch, in eval mode."""
    model = task.model
    x, y = to_device(x, model_device(model)), y.to(model_device(model))
    raw: list[Any] = []
    try:
        with torch.no_grad(), eval_mode(model):  # no BatchNorm statistics updated, no dropout randomness drawn
            handle = model.register_forward_hook(lambda m, args, out: raw.append(out))
            try:
                output, target = task.outputs(model, (x, y))
            finally:
                handle.remove()
    except Exception as e:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else {k: tuple(v.shape) for k, v in x.items()}
        where = "Task.forward" if task.forward is not None else "the model"
        raise TaskError("forward" if task.forward is not None else "model",
                        f"an error from {where} on a training batch of shape {shape}: {type(e).__name__}: {e}",
                        "a model that accepts the training inputs") from e
    return (raw[0] if raw else output), output, target


def _with_hint(error: TaskError, raw: Any, output: Any, target: torch.Tensor, task: Task) -> tuple[str, str]:
    """(found, expected) of a wrong output, with the fix for the usual mismatches."""
    found, expected = error.found, error.expected
    if isinstance(raw, (tuple, list)) and task.output is None and task.forward is None:
        shapes = ", ".join(tuple(p.shape).__repr__() if isinstance(p, torch.Tensor) else type(p).__name__ for p in raw)
        taken = next((i for i, p in enumerate(raw) if p is output), None)
        found += (f" (the model returns a {type(raw).__name__} of {len(raw)}: {shapes}"
                  + (f"; dltips took element {taken}" if taken is not None else "") + ")")
        expected += "; pass output=<index> (e.g. output=0) to take the logits from the tuple, or return the logits"
    if (task.kind == "language-model" and isinstance(output, torch.Tensor) and output.dim() == 3
            and output.shape[1] == 1 and target.dim() == 2 and target.shape[1] > 1):
        found += f" (logits for the last position only, for targets of {target.shape[1]} positions)"
        expected += ("; a model that gives every position's logits, as nanoGPT's does only when given the "
                     "targets: pass forward=lambda model, batch: (model(batch[0], batch[1])[0], batch[1])")
    return found, expected


def _users_loss(task: Task, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Task's own loss on targets whose ignored positions are the Task's `ignore_index` again."""
    return task.loss(output, task._to_users(target))


def _infer_n_classes(kind: str, output: Any) -> int | None:
    if not isinstance(output, torch.Tensor) or output.dim() < 2:
        return 2 if kind == "binary" else None
    if kind == "classification":
        return output.shape[1]
    if kind == "language-model":
        return output.shape[-1]
    if kind == "multilabel":
        return output.shape[1]
    if kind == "binary":
        return 2
    return None


def _labels_to_check(data: Dataset) -> torch.Tensor:
    whole = target_tensor(data)
    if whole is not None:
        return whole
    return read_targets(data, range(min(len(data), _SCAN_ITEMS))).reshape(-1)


def target_tensor(data: Dataset) -> torch.Tensor | None:
    """All targets of a two-tensor TensorDataset, or of a Subset of one, as one tensor, without reading
    items; None for any other dataset."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[1]
    if isinstance(data, Subset) and isinstance(data.dataset, TensorDataset) and len(data.dataset.tensors) == 2:
        return data.dataset.tensors[1][torch.as_tensor(data.indices, dtype=torch.long)]
    return None


def read_targets(data: Dataset, positions: Any = None) -> torch.Tensor:
    """The targets of `data` (all, or at `positions`): `target_tensor` when it has one, else read item by
    item, stacked when they share one shape, else flattened and joined (sequences of different lengths)."""
    whole = target_tensor(data)
    if whole is not None:
        return whole if positions is None else whole[torch.as_tensor(list(positions), dtype=torch.long)]
    targets = [torch.as_tensor(data[i][1]) for i in (range(len(data)) if positions is None else positions)]
    if all(t.shape == targets[0].shape for t in targets):
        return torch.stack(targets)
    return torch.cat([t.reshape(-1) for t in targets])


def _check_labels(split: str, data: Dataset, kind: str, n_classes: int | None, ignore_index: int = IGNORE_INDEX) -> None:
    y = _labels_to_check(data)
    if kind in ("classification", "language-model"):
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TaskError(split, f"labels of dtype {y.dtype}", "integer class ids (torch.long)")
        valid = y[y != ignore_index] if kind == "language-model" else y
        if valid.numel() and (valid.min() < 0 or valid.max() >= n_classes):
            hint = ""
            if kind == "language-model" and int(valid.min()) < 0 and ignore_index == IGNORE_INDEX:
                hint = (f"; labels contain {int(valid.min())}: if it marks positions not to count (makemore "
                        f"uses -1), pass ignore_index={int(valid.min())}")
            raise TaskError(split, f"labels from {int(valid.min())} to {int(valid.max())}",
                            f"class ids in [0, {n_classes - 1}] for n_classes={n_classes}{hint}")
    elif kind in ("binary", "multilabel"):
        if not bool(((y == 0) | (y == 1)).all()):
            raise TaskError(split, "labels other than 0 and 1", f"0/1 labels for kind={kind!r}")
    elif kind == "regression":
        if not bool(torch.isfinite(y.double()).all()):
            raise TaskError(split, "non-finite regression targets", "finite numbers")


def _check_loss(loss_fn: Callable, output: torch.Tensor, target: torch.Tensor) -> None:
    try:
        value = loss_fn(output, target.to(output.device))
    except Exception as e:
        raise TaskError("loss", f"an error on the model's output of shape {tuple(output.shape)}: {e}",
                        "a loss(output, target) that accepts the model's output") from e
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        found = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise TaskError("loss", f"a loss value of {found}", "a scalar tensor (reduce with a mean)")
    target = target.to(output.device)
    if _pairs_every_output_with_every_target(loss_fn, output, target):
        joint = tuple(torch.broadcast_shapes(output.shape, target.shape))
        raise TaskError("loss", f"a loss that pairs every output with every target: the model's output of shape "
                                f"{tuple(output.shape)} against targets of shape {tuple(target.shape)} broadcasts to "
                                f"{joint}, so item i's output is compared with the targets of all items",
                        "outputs and targets of one shape inside the loss: `output.view_as(target)` (or "
                        "`output.squeeze(-1)`) before it, or targets of the output's shape")


def _pairs_every_output_with_every_target(loss_fn: Callable, output: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether broadcasting inside the loss mixes items: output and target shapes that broadcast to more
    elements than either has (such as (N, 1) against (N,), giving N x N), and a gradient for item 0's output
    that changes when only the other items' targets change."""
    if len(output) < 2 or output.shape == target.shape:
        return False
    try:
        joint = torch.broadcast_shapes(output.shape, target.shape)
    except RuntimeError:
        return False
    if math.prod(joint) <= max(output.numel(), target.numel()):
        return False
    other = target.clone()
    other[1:] = 1 - other[1:]  # 0/1 labels stay labels
    other[1:][other[1:] == target[1:]] = 0  # a float target of 0.5
    grads = []
    for t in (target, other):
        out = output.detach().clone().requires_grad_(True)
        with warnings.catch_warnings():  # torch warns about the size mismatch; the TaskError says it instead
            warnings.simplefilter("ignore")
            try:
                (grad,) = torch.autograd.grad(loss_fn(out, t), out)
            except Exception:  # noqa: BLE001 -- no gradient path, or targets it refuses: no verdict
                return False
        grads.append(grad[0])
    return not torch.allclose(grads[0], grads[1])


# ---------------------------------------------------------------------- training steps


def plain_step(model: nn.Module, batch: Any, optimizer: Any, loss_fn: Callable,
               outputs: Callable | None = None) -> torch.Tensor:
    """dltips's own step: zero the gradients, the loss of `outputs(model, batch) -> (output, target)` (default
    `(model(x), y)`), backward, step. Returns the loss, detached."""
    optimizer.zero_grad(set_to_none=True)
    output, target = outputs(model, batch) if outputs is not None else (model(batch[0]), batch[1])
    loss = loss_fn(output, target)
    loss.backward()
    optimizer.step()
    return loss.detach()


def as_loss(value: Any) -> torch.Tensor:
    """A step's returned loss (a one-element tensor or a number) as a detached scalar tensor."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.detach().reshape(())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    found = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
    raise TypeError(f"the training step returned {found}; expected the loss, a scalar tensor or a float")


@contextlib.contextmanager
def gradients_seen(params: list[nn.Parameter]) -> Iterator[set[int]]:
    """The indices of `params` that a backward inside the block sent a non-zero gradient to.

    Read by tensor hooks as the gradient is computed, so it holds also when the step zeroes `.grad`
    after `optimizer.step()`.
    """
    reached: set[int] = set()

    def hook(i: int) -> Callable[[torch.Tensor], None]:
        def record(grad: torch.Tensor) -> None:
            if bool(grad.ne(0).any()):
                reached.add(i)
        return record

    handles = [p.register_hook(hook(i)) for i, p in enumerate(params)]
    try:
        yield reached
    finally:
        for handle in handles:
            handle.remove()


def _check_step(task: Task, batch_items: int = 32) -> None:
    """Run `task.step` once on a training copy; raise TaskError naming what it did not do.

    The step must return a scalar loss, send a gradient to the model's parameters (call
    `loss.backward()`) and call `optimizer.step()` on the optimizer it is given: the Task's, or
    AdamW at torch's default LR. It runs on the first `min(batch_size, batch_items)` training items;
    the model, its gradients and the random generators are left as they were.
    """
    n = min(task.batch_size, batch_items, len(task.train))
    x, y = task.collate([task.train[i] for i in range(n)])
    with rng_kept(), training_copy(task.model) as model:
        batch = to_device((x, task._to_users(y)), model_device(model))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = task.optimizer_for(model) or torch.optim.AdamW(model.parameters())
        stepped: list[int] = []
        handle = optimizer.register_step_post_hook(lambda *_: stepped.append(1))
        model.train()
        try:
            with gradients_seen(params) as reached:
                value = task.step(model, batch, optimizer)
        except Exception as e:
            raise TaskError("step", f"an error on a training batch of {n} items: {type(e).__name__}: {e}",
                            "a step(model, batch, optimizer) that trains on a batch (x, y) of the Task's "
                            "training data") from e
        finally:
            handle.remove()
    try:
        as_loss(value)
    except TypeError:
        found = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) \
            else f"a value of type {type(value).__name__}"
        raise TaskError("step", f"a step that returned {found}",
                        "a step that returns its loss (a scalar tensor or a float)") from None
    if params and not reached:
        raise TaskError("step", "a step that sent no gradient to the model's parameters",
                        "a step that calls loss.backward() on a loss computed from model(x)")
    if not stepped:
        raise TaskError("step", "a step that did not call optimizer.step() on the optimizer it was given",
                        "a step that updates the model with the optimizer it receives (built from "
                        "Task.optimizer, or AdamW when the Task has none)")


# ---------------------------------------------------------------------- optimizers built from the model, Lightning


class ModelOptimizer:
    """An optimizer factory that builds from the model itself: `build(model) -> (optimizer, scheduler or None)`.

    A Task's `optimizer` may be one (`Task.from_lightning` makes one from `configure_optimizers`): each
    copy dltips trains then gets the optimizer its own parameters need, and `scheduler_for(optimizer)`
    (the Task's `scheduler`) the scheduler built with that optimizer.
    """

    def __init__(self, build: Callable[[nn.Module], tuple[Any, Any]]):
        self.build = build
        self._schedulers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __call__(self, params: Any) -> Any:
        raise TypeError("this optimizer is built from the model, not from its parameters: use "
                        "task.optimizer_for(model)")

    def for_model(self, model: nn.Module) -> Any:
        optimizer, scheduler = self.build(model)
        if scheduler is not None:
            self._schedulers[optimizer] = scheduler
        return optimizer

    def scheduler_for(self, optimizer: Any) -> Any:
        scheduler = self._schedulers.get(optimizer)
        if scheduler is None:
            raise TaskError("scheduler", "an optimizer that this Task's ModelOptimizer did not build",
                            "the optimizer of task.optimizer_for(model)")
        return scheduler


def lightning_optimizers(configured: Any) -> tuple[Any, Any, str]:
    """(optimizer, scheduler or None, "epoch" or "step") from what a LightningModule's `configure_optimizers`
    returns: an optimizer; a dict with "optimizer" and "lr_scheduler" (a scheduler, or a dict with
    "scheduler" and "interval"); a list of either (the first is used); or ([optimizers], [schedulers])."""
    def scheduler_of(entry: Any) -> tuple[Any, str]:
        if isinstance(entry, Mapping):
            return entry.get("scheduler"), entry.get("interval", "epoch")
        return entry, "epoch"

    if isinstance(configured, torch.optim.Optimizer):
        return configured, None, "epoch"
    if isinstance(configured, Mapping) and "optimizer" in configured:
        return (configured["optimizer"], *scheduler_of(configured.get("lr_scheduler")))
    if isinstance(configured, (list, tuple)) and configured:
        if len(configured) == 2 and isinstance(configured[0], (list, tuple)) and isinstance(configured[1], (list, tuple)):
            schedulers = configured[1]
            return (configured[0][0], *scheduler_of(schedulers[0] if schedulers else None))
        return lightning_optimizers(configured[0])
    raise TaskError("optimizer", f"configure_optimizers() returning {type(configured).__name__}",
                    "an optimizer, a dict with 'optimizer' (and 'lr_scheduler'), or a list of them")


def lightning_step(model: nn.Module, batch: Any, optimizer: Any, target: str | None = None) -> torch.Tensor:
    """One automatic-optimization step of a LightningModule: zero_grad, `training_step`, backward, step.

    With `target`, the batch `(inputs, y)` goes to `training_step` as the dict its loader gave:
    `{**inputs, target: y}`."""
    if target is not None:
        inputs, y = batch
        batch = {**inputs, target: y}
    optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # self.log() without a Trainer warns that it logs nothing: nothing to log here
        warnings.filterwarnings("ignore", message=".*self.log.*")
        out = model.training_step(batch, 0)
    loss = out.get("loss") if isinstance(out, Mapping) else out
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"training_step returned {type(out).__name__}; expected the loss (a tensor, or a dict "
                        "with 'loss')")
    loss.backward()
    optimizer.step()
    return loss.detach()


_SAME_LOSS_RTOL = 1e-4  # float32 evaluations of one loss on one batch agree to about 1e-6


def validation_loss(module: nn.Module, valid: Any, kind: str, output: Any = None,
                    ignore_index: int = IGNORE_INDEX, target: str | None = None) -> Callable | None:
    """The loss object of `module` that its `validation_step` reports, or None for the kind's default loss.

    `validation_step(batch, 0)` runs once, on a deep copy of the module in eval mode without gradients
    (its logs and appends land on the copy), on the first batch of the `valid` loader; the loss it
    returns or logs (`self.log("val_loss", ...)`, the first name holding "loss") is compared with the
    kind's default loss, then with each loss the module holds (`_held_losses`), on `module(x)` for the
    same batch (a dict batch's inputs are its entries other than `target`). None also when the step
    reports no loss, cannot run without a Trainer, or the module cannot be copied: the default stands,
    unchecked. When no candidate gives the reported value a warning names both values.
    """
    if not _user_defined(module, "validation_step") or not isinstance(valid, DataLoader):
        return None
    with rng_kept():
        batch = next(iter(valid), None)
    if target is not None and isinstance(batch, Mapping) and target in batch:
        x, y = {k: v for k, v in batch.items() if k != target}, batch[target]
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
    else:
        return None
    try:
        replica = copy.deepcopy(module)
    except Exception:  # noqa: BLE001 -- an object that cannot be copied: nothing is run on the user's module
        return None
    device = model_device(replica)
    batch, x, y = to_device(batch, device), to_device(x, device), to_device(y, device)
    logged: dict[str, Any] = {}
    replica.__dict__["log"] = lambda name, value, *args, **kwargs: logged.setdefault(name, value)
    replica.__dict__["log_dict"] = lambda values, *args, **kwargs: [logged.setdefault(k, v) for k, v in values.items()]
    with rng_kept(), eval_mode(replica), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            returned = replica.validation_step(batch, 0)
            reported = _reported_loss(returned, logged)
            if reported is None:
                return None
            prediction = select_output(call_model(replica, x), output)
            counted = torch.where(y == ignore_index, IGNORE_INDEX, y) if ignore_index != IGNORE_INDEX else y
            default = float(DEFAULT_LOSSES[kind](prediction, counted))
            if math.isclose(default, reported, rel_tol=_SAME_LOSS_RTOL, abs_tol=1e-7):
                return None
            tried = [f"the default {DEFAULT_LOSS_NAMES[kind]} gives {default:.6g}"]
            for name, loss in _held_losses(replica):
                try:
                    value = float(loss(prediction, y))
                except Exception:  # noqa: BLE001 -- a loss for other outputs (an auxiliary head): not this one
                    continue
                if math.isclose(value, reported, rel_tol=_SAME_LOSS_RTOL, abs_tol=1e-7):
                    return getattr(module, name)
                tried.append(f"self.{name} gives {value:.6g}")
        except Exception:  # noqa: BLE001 -- a step that needs a Trainer (self.trainer, self.optimizers()): no check
            return None
    warnings.warn(f"Task.from_lightning: validation_step reports a loss of {reported:.6g} on the first validation "
                  f"batch, but {'; '.join(tried)}. The doctor evaluates with the default; pass loss= the loss "
                  "validation_step computes (e.g. loss=lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1)).",
                  stacklevel=3)
    return None


def _reported_loss(returned: Any, logged: dict[str, Any]) -> float | None:
    """The loss a validation_step returned (a scalar, or a dict's "loss"/"val_loss"/first "...loss..." entry)
    or logged (the first name holding "loss"), as a float; None when there is none."""
    candidates: list[Any] = []
    if isinstance(returned, torch.Tensor):
        candidates.append(returned)
    elif isinstance(returned, Mapping):
        candidates += [v for k, v in returned.items() if isinstance(k, str) and "loss" in k.lower()]
    candidates += [v for k, v in logged.items() if isinstance(k, str) and "loss" in k.lower()]
    for value in candidates:
        if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
            return float(value)
        if isinstance(value, float):
            return value
    return None


def _held_losses(module: nn.Module) -> list[tuple[str, Callable]]:
    """(attribute name, loss) for each loss `module` holds: its torch loss modules (`nn.CrossEntropyLoss`
    children), then callables stored under a name holding "loss" or "criterion" (`self.loss_fn = F.nll_loss`)."""
    held = [(name, child) for name, child in module.named_children() if isinstance(child, nn.modules.loss._Loss)]
    held += [(name, value) for name, value in vars(module).items()
             if callable(value) and not isinstance(value, nn.Module) and name not in ("log", "log_dict")
             and ("loss" in name.lower() or "criterion" in name.lower())]
    return held


TARGET_KEYS = ("labels", "label", "targets", "target", "y")  # where a dict batch keeps its target, by custom


def _dict_target(train: Any, target: str | None) -> str | None:
    """The key of the target in the train loader's dict items; None when its items are not dicts."""
    if not isinstance(train, DataLoader) or not hasattr(train.dataset, "__getitem__"):
        if target is not None:
            raise TaskError("train", f"a {type(train).__name__}, not a DataLoader over dict items",
                            "target= only with a train_dataloader() whose items are dicts")
        return None
    item = train.dataset[0]
    if not isinstance(item, Mapping):
        if target is not None:
            raise TaskError("train", f"items of type {type(item).__name__} with target={target!r}",
                            "dict items, or no target= for (x, y) pairs")
        return None
    key = target if target is not None else next((k for k in TARGET_KEYS if k in item), None)
    if key is None or key not in item:
        missing = repr(target) if target is not None else "none of " + ", ".join(TARGET_KEYS)
        raise TaskError("train", f"dict items with keys {sorted(item)}, without {missing}",
                        "target= the key that holds each item's target")
    return key


def _lightning_loaders(module: Any, datamodule: Any) -> tuple[Any, Any, Any]:
    """(train, valid, test) loaders of the datamodule, else of the module; test None when there is none."""
    source = module if datamodule is None else datamodule
    if datamodule is not None:
        for hook, args in (("prepare_data", ()), ("setup", ("fit",))):
            if callable(getattr(datamodule, hook, None)):
                getattr(datamodule, hook)(*args)

    def loader(name: str) -> Any:
        if not _user_defined(source, name):  # Lightning's own hooks raise MisconfigurationException
            return None
        found = getattr(source, name)()
        return found[0] if isinstance(found, (list, tuple)) and found else found

    train, valid = loader("train_dataloader"), loader("val_dataloader")
    for split, found, name in (("train", train, "train_dataloader"), ("valid", valid, "val_dataloader")):
        if found is None:
            raise TaskError(split, f"no {name}() on the {'datamodule' if datamodule is not None else 'module'}",
                            f"a {name}() that returns a DataLoader (the doctor needs training and held-out data)")
    if not _user_defined(source, "test_dataloader"):
        return train, valid, None
    if datamodule is not None and callable(getattr(datamodule, "setup", None)):
        datamodule.setup("test")
    return train, valid, loader("test_dataloader")


def _user_defined(obj: Any, name: str) -> bool:
    """Whether `obj.name` is a method written outside Lightning (its base classes define every hook)."""
    owner = next((klass for klass in type(obj).__mro__ if name in vars(klass)), None)
    if owner is None or not callable(getattr(obj, name, None)):
        return False
    return not owner.__module__.startswith(("lightning.", "pytorch_lightning.", "lightning_fabric."))


# ---------------------------------------------------------------------- Hugging Face datasets


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """Causal-LM labels aligned with the logits: labels[:, 1:], then IGNORE_INDEX in the last position."""
    if labels.dim() < 2:
        raise ValueError(f"causal-LM labels must be (batch, tokens), got shape {tuple(labels.shape)}")
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)


class HFItems(Dataset):
    """Dict items as `(inputs, labels)` pairs of tensors: the labels are the first of `keys` an item has
    (`labels`, else `label`, for a Hugging Face dataset), or for a causal LM without them its `input_ids`;
    unshifted, unpadded. The inputs are the item's other entries."""

    def __init__(self, dataset: Any, causal: bool, keys: tuple[str, ...] = ("labels", "label")):
        self.dataset, self.causal, self.keys = dataset, causal, keys

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        item = self.dataset[i]
        if not isinstance(item, Mapping):
            raise TaskError("train", f"items of type {type(item).__name__}", "dicts of input_ids, ... and labels")
        inputs = {k: torch.as_tensor(v) for k, v in item.items() if k not in self.keys}
        label = next((item[k] for k in self.keys if k in item), None)
        if label is None:
            if not self.causal:
                raise TaskError("train", f"items without {' or '.join(map(repr, self.keys))}",
                                "a label per item for this head")
            label = inputs["input_ids"]
        return inputs, torch.as_tensor(label)


def dict_collate(collate: Callable | None, key: str, items: list) -> tuple[dict, Any]:
    """(inputs, targets) of `(inputs, target)` items batched as the dicts they came from: each item's inputs
    and target under `key` go to `collate` (default_collate), and the target is taken back out of the batch."""
    batch = dict((collate or default_collate)([{**inputs, key: target} for inputs, target in items]))
    return batch, batch.pop(key)


def _hf_collate(collator: Callable | None, causal: bool, pad_id: int, items: list) -> tuple[dict, torch.Tensor]:
    """(inputs, targets) of `items`: by the data collator when given, else padded; causal targets shifted."""
    if collator is not None:
        batch, labels = dict_collate(collator, "labels", items)
    else:
        keys = items[0][0].keys()
        values = {"input_ids": pad_id, "attention_mask": 0}
        batch = {k: _padded([inputs[k] for inputs, _ in items], values.get(k, 0)) for k in keys}
        labels = _padded([label for _, label in items], IGNORE_INDEX)
        if "attention_mask" not in batch and "input_ids" in batch and batch["input_ids"].dim() == 2:
            lengths = torch.tensor([len(inputs["input_ids"]) for inputs, _ in items])
            batch["attention_mask"] = (torch.arange(batch["input_ids"].shape[1]) < lengths[:, None]).long()
    return batch, shifted_labels(labels) if causal else labels


def _padded(values: list[torch.Tensor], pad: int) -> torch.Tensor:
    if values[0].dim() == 0 or all(v.shape == values[0].shape for v in values):
        return torch.stack(values)
    return torch.nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=pad)


def _hf_kind(model: nn.Module) -> str:
    name, config = type(model).__name__, getattr(model, "config", None)
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "language-model"
    if name.endswith("ForSequenceClassification"):
        problem = getattr(config, "problem_type", None)
        if problem == "regression" or (problem is None and getattr(config, "num_labels", 2) == 1):
            return "regression"
        return "multilabel" if problem == "multi_label_classification" else "classification"
    raise TaskError("kind", f"a {name}, whose head dltips cannot name", "kind= given with the model")
