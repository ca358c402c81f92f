"""Task: what a user hands to dltips (model, data, loss, kind), validated when built.

Validation runs the model once, in eval mode and without gradients, on two
training items, so a shape or dtype mistake is reported here with the expected
shape instead of as a deep traceback in the middle of training.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from dltips.core.device import model_device, to_device
from dltips.core.state import eval_mode, rng_kept, training_copy

KINDS = ("classification", "binary", "multilabel", "regression", "language-model")
SCHEDULER_INTERVALS = ("epoch", "step")
IGNORE_INDEX = -100  # targets equal to this are not counted (torch's cross_entropy default)
_SCAN_ITEMS = 256  # items per dataset whose labels are checked when labels are not one tensor


class TaskError(ValueError):
    """A Task field is wrong: the message names the field, what was found and what was expected."""

    def __init__(self, field: str, found: str, expected: str):
        self.field = field
        super().__init__(f"Task.{field}: found {found}; expected {expected}.")


@dataclass
class Task:
    """A model and its data: everything dltips needs to check or train it.

    Items of `train`, `valid` and `test` are `(x, y)` pairs, with `x` a tensor
    (or a dict of tensors, handed to the model as one argument) and `y` a tensor
    or a number. `n_classes` is the number of classes (the vocabulary size for a
    language model); left as None it is read from the model's output.

    `step`, optional, is the user's own training step, `step(model, batch, optimizer) -> loss`: the
    forward pass, `loss.backward()` and `optimizer.step()` (with the user's zero_grad, regularisers,
    clipping and accumulation over micro-batches of `batch`), for one optimizer step. When given,
    every training dltips does on the Task runs it (see dltips.training.step); `loss` stays what
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
    batch_size: int = 64
    optimizer: Callable | None = None
    augment: Callable | None = None
    name: str = "task"
    step: Callable | None = None
    scheduler: Callable | None = None
    scheduler_interval: str = "epoch"

    # set by validate(): the convention of the model's outputs (see `output_form`)
    output_form: str = field(default="logits", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

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
        x, y = _first_batch(self.train)
        output = _run_model(self.model, x)
        if self.n_classes is None:
            self.n_classes = _infer_n_classes(self.kind, output)
        check_output(self.kind, self.n_classes, output, y)
        for split in ("train", "valid", "test"):
            if split != "test" or self.test is not None:
                _check_labels(split, getattr(self, split), self.kind, self.n_classes)
        _check_loss(self.loss_fn, output, y)
        self.output_form = output_form(self.kind, output, y, self.loss_fn)
        if self.step is not None:
            _check_step(self)

    @property
    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The Task's loss, or the default for its kind (a mean over items)."""
        return self.loss if self.loss is not None else DEFAULT_LOSSES[self.kind]

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


def _first_batch(data: Dataset) -> tuple[Any, torch.Tensor]:
    items = [data[i] for i in range(min(2, len(data)))]
    x, y = default_collate(items)
    return x, y


def _run_model(model: nn.Module, x: Any) -> Any:
    x = to_device(x, model_device(model))
    try:
        with torch.no_grad(), eval_mode(model):  # no BatchNorm statistics updated, no dropout randomness drawn
            return model(x)
    except Exception as e:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else {k: tuple(v.shape) for k, v in x.items()}
        raise TaskError("model", f"an error on a training batch of shape {shape}: {e}",
                        "a model that accepts the training inputs") from e


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
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[1]
    n = min(len(data), _SCAN_ITEMS)
    return torch.stack([torch.as_tensor(data[i][1]) for i in range(n)])


def _check_labels(split: str, data: Dataset, kind: str, n_classes: int | None) -> None:
    y = _labels_to_check(data)
    if kind in ("classification", "language-model"):
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TaskError(split, f"labels of dtype {y.dtype}", "integer class ids (torch.long)")
        valid = y[y != IGNORE_INDEX] if kind == "language-model" else y
        if valid.numel() and (valid.min() < 0 or valid.max() >= n_classes):
            raise TaskError(split, f"labels from {int(valid.min())} to {int(valid.max())}",
                            f"class ids in [0, {n_classes - 1}] for n_classes={n_classes}")
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


# ---------------------------------------------------------------------- the Task's own training step


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
    batch = default_collate([task.train[i] for i in range(n)])
    with rng_kept(), training_copy(task.model) as model:
        batch = to_device(batch, model_device(model))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = task.optimizer(model.parameters()) if task.optimizer is not None \
            else torch.optim.AdamW(model.parameters())
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
