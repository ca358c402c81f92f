"""State kept across a block: module modes, gradients, the random generators and a whole model.

Each context manager puts back exactly what it saved, also when the block raises. `training_copy`
gives a model to train without touching the caller's: a deep copy when the copy shares nothing with
the original (`shared_with`), else the original itself under a `ModelSnapshot` restored afterwards.
"""

from __future__ import annotations

import contextlib
import copy as copy_module
import dis
import functools
import random
import types
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from dltips.core.params import ParamError, instance


@contextlib.contextmanager
def modes_kept(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module's train/eval flag back as it was, whatever the block does."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode for the block (no BatchNorm statistics updated, no dropout), modes restored after."""
    with modes_kept(model):
        model.eval()
        yield model


@contextlib.contextmanager
def grads_kept(model: nn.Module) -> Iterator[nn.Module]:
    """Put back each parameter's `.grad` object (None included) as it was before the block."""
    saved = [(p, p.grad) for p in model.parameters()]
    try:
        yield model
    finally:
        for p, grad in saved:
            p.grad = grad


@contextlib.contextmanager
def rng_kept(seed: int | None = None) -> Iterator[None]:
    """Save the torch, CUDA, numpy and python generators, optionally seed torch, and restore them after."""
    state = get_rng_state()
    try:
        if seed is not None:
            torch.manual_seed(seed)
        yield
    finally:
        set_rng_state(state)


def get_rng_state() -> dict[str, Any]:
    """Snapshot the torch (CPU and CUDA), numpy-global and python ``random`` generators.

    The result holds only CPU tensors and plain python values, so it can go
    through ``torch.save`` (also with ``weights_only=True`` loading).
    """
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators from a dict made by `get_rng_state`."""
    if not isinstance(state, dict) or not {"torch", "numpy", "python"} <= state.keys():
        raise ParamError("state must be a dict from get_rng_state() with keys 'torch', 'numpy', 'python'")
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) != torch.cuda.device_count():
            raise ParamError(
                f"state holds {len(cuda_states)} CUDA generators but {torch.cuda.device_count()} devices are visible"
            )
        torch.cuda.set_rng_state_all(cuda_states)
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["bit_generator"],
            np.asarray(np_state["key"], dtype=np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


_Key = tuple[str, int]
_LINKS = (types.FunctionType, types.MethodType, functools.partial)
_MAX_DEPTH = 4
_TREE = ("_modules", "_parameters", "_buffers")


def shared_with(copy: nn.Module, original: nn.Module) -> list[str]:
    """What `copy` (a deep copy of `original`) shares with it, one description each; empty when nothing.

    Two ways a copy stays tied to its original: a parameter, buffer or gradient on the memory of one
    of the original's (a `__deepcopy__` handing back shared tensors), and a callable held by one of the
    copy's modules (an attribute, a hook, a class's `forward`) whose closure, defaults, globals,
    partial arguments or bound object reach a module or tensor outside the copy: deepcopy keeps
    functions as they are, so training the copy would train those. Cheap (no forward pass); an
    attribute that cannot be inspected is skipped.
    """
    instance("copy", copy, nn.Module, "an nn.Module")
    instance("original", original, nn.Module, "an nn.Module")
    scope = _Scope.of(copy, original)
    return _shared_storages(scope) + _outside_references(scope)


@dataclass(eq=False)
class _Scope:
    """What belongs to the copy (ids and storages) and how to name what belongs to the original."""

    modules: list[tuple[str, nn.Module]]
    tensors: list[tuple[str, torch.Tensor]]
    inside: set[int]
    storages: set[_Key]
    original_objects: dict[int, str]
    original_storages: dict[_Key, str]
    walked: dict[int, list[tuple[list[str], Any]]] = field(default_factory=dict)

    @classmethod
    def of(cls, copy: nn.Module, original: nn.Module) -> _Scope:
        modules = _named_modules(copy)
        tensors = _named_tensors(modules)
        original_modules = _named_modules(original)
        original_tensors = _named_tensors(original_modules)
        named = {id(m): f"{_module_label(name)} ({type(m).__name__})" for name, m in reversed(original_modules)}
        named.update({id(t): label for label, t in reversed(original_tensors)})
        original_storages: dict[_Key, str] = {}
        for label, tensor in original_tensors:
            key = _storage_key(tensor)
            if key is not None:
                original_storages.setdefault(key, label)
        return cls(
            modules=modules,
            tensors=tensors,
            inside={id(m) for _, m in modules} | {id(t) for _, t in tensors},
            storages={key for _, t in tensors if (key := _storage_key(t)) is not None},
            original_objects=named,
            original_storages=original_storages,
        )

    def outside(self, value: Any) -> bool:
        """True for a module or tensor that is not part of the copy (a tensor on the copy's memory is)."""
        if isinstance(value, nn.Module):
            return id(value) not in self.inside
        if isinstance(value, torch.Tensor):
            return id(value) not in self.inside and _storage_key(value) not in self.storages
        return False

    def of_original(self, value: Any) -> bool:
        """True for one of the original's modules or tensors (by identity, or a tensor on its memory)."""
        if not self.outside(value):
            return False
        return id(value) in self.original_objects or (
            isinstance(value, torch.Tensor) and _storage_key(value) in self.original_storages
        )

    def describe(self, value: Any) -> str:
        if id(value) in self.original_objects:
            return f"the original's {self.original_objects[id(value)]}"
        key = _storage_key(value) if isinstance(value, torch.Tensor) else None
        if key in self.original_storages:
            return f"a tensor on the memory of the original's {self.original_storages[key]}"
        kind = "module" if isinstance(value, nn.Module) else "tensor"
        return f"a {kind} outside the copy ({type(value).__name__})"


def _named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    try:
        return list(model.named_modules())
    except Exception:
        return [("", model)]


def _module_label(name: str) -> str:
    return f"module '{name}'" if name else "root module"


def _slots(module: nn.Module, name: str) -> dict:
    """One of the dicts of a module's tree (`_parameters`, `_buffers`, `_modules`), {} when missing."""
    try:
        value = vars(module).get(name)
    except Exception:
        return {}
    return value if isinstance(value, dict) else {}


def _grad_of(tensor: torch.Tensor) -> torch.Tensor | None:
    try:
        return tensor.grad if tensor.is_leaf else None
    except Exception:
        return None


def _named_tensors(modules: list[tuple[str, nn.Module]]) -> list[tuple[str, torch.Tensor]]:
    """(description, tensor) for each parameter, buffer and gradient; a tied one once per owner."""
    found = []
    for prefix, module in modules:
        for kind, slot in (("parameter", "_parameters"), ("buffer", "_buffers")):
            for key, tensor in _slots(module, slot).items():
                if not isinstance(tensor, torch.Tensor):
                    continue
                label = f"{kind} '{prefix + '.' if prefix else ''}{key}'"
                found.append((label, tensor))
                grad = _grad_of(tensor)
                if grad is not None:
                    found.append((f"gradient of {label}", grad))
    return found


def _storage_key(tensor: torch.Tensor) -> _Key | None:
    """The device and base address of the tensor's storage; None for an empty or unreadable one."""
    try:
        pointer = tensor.untyped_storage().data_ptr()
        return (str(tensor.device), pointer) if pointer else None
    except Exception:
        return None


def _shared_storages(scope: _Scope) -> list[str]:
    found, seen = [], set()
    for label, tensor in scope.tensors:
        key = _storage_key(tensor)
        if id(tensor) in seen or key not in scope.original_storages:
            continue
        seen.add(id(tensor))
        found.append(f"the copy's {label} is on the memory of the original's {scope.original_storages[key]}")
    return found


def _outside_references(scope: _Scope) -> list[str]:
    found, classes = [], set()
    for prefix, module in scope.modules:
        where = f"the copy's {_module_label(prefix)} ({type(module).__name__})"
        for name, value in _attributes(module):
            if scope.of_original(value):
                found.append(f"{where}, attribute '{name}' is {scope.describe(value)}")
            elif isinstance(value, _LINKS):
                found += [f"{where}, attribute '{name}': {' -> '.join(path)} is {scope.describe(target)}"
                          for path, target in _walk(value, scope, 0)]
        forward = _own_forward(module)
        if forward is not None and type(module) not in classes:
            classes.add(type(module))
            found += [f"{type(module).__name__}.forward: {' -> '.join(path)} is {scope.describe(target)}"
                      for path, target in _walk(forward, scope, 0)]
    return found


def _attributes(module: nn.Module) -> Iterator[tuple[str, Any]]:
    """A module's plain attributes, and one level inside those that are dicts, lists or tuples (hooks)."""
    try:
        items = list(vars(module).items())
    except Exception:
        return
    for name, value in items:
        if name in _TREE:
            continue
        yield name, value
        for key, item in _items(value):
            yield f"{name}[{key!r}]", item


def _items(value: Any) -> list[tuple[Any, Any]]:
    try:
        if isinstance(value, dict):
            return list(value.items())
        if isinstance(value, (list, tuple)):
            return list(enumerate(value))
    except Exception:
        pass
    return []


def _own_forward(module: nn.Module) -> types.FunctionType | None:
    """The `forward` of a module class written outside torch (torch's own do not reach user objects)."""
    forward = getattr(type(module), "forward", None)
    if isinstance(forward, types.FunctionType) and not str(getattr(forward, "__module__", "")).startswith("torch."):
        return forward
    return None


def _walk(link: Any, scope: _Scope, depth: int) -> list[tuple[list[str], Any]]:
    """(how it is reached, object) for each module or tensor outside the copy that `link` refers to.

    Follows functions, bound methods and partials found along the way, `_MAX_DEPTH` deep; each
    callable is walked once per scope (a cycle ends at the callable being walked).
    """
    if id(link) in scope.walked:
        return scope.walked[id(link)]
    scope.walked[id(link)] = []
    found: list[tuple[list[str], Any]] = []
    for how, value in _referents(link):
        for label, item in [(how, value), *((f"{how}[{key!r}]", v) for key, v in _items(value))]:
            if scope.outside(item):
                found.append(([label], item))
            elif isinstance(item, _LINKS) and depth < _MAX_DEPTH:
                found += [([label, *path], target) for path, target in _walk(item, scope, depth + 1)]
    scope.walked[id(link)] = found
    return found


def _referents(link: Any) -> list[tuple[str, Any]]:
    """What a function, bound method or partial holds on to, each with where it was found."""
    try:
        if isinstance(link, functools.partial):
            return [
                ("the partial's function", link.func),
                *((f"partial argument {i}", arg) for i, arg in enumerate(link.args)),
                *((f"partial keyword '{key}'", arg) for key, arg in (link.keywords or {}).items()),
            ]
        if isinstance(link, types.MethodType):
            return [("the method's object", link.__self__), ("the method's function", link.__func__)]
        if isinstance(link, types.FunctionType):
            return _function_referents(link)
    except Exception:
        pass
    return []


def _function_referents(function: types.FunctionType) -> list[tuple[str, Any]]:
    code = function.__code__
    found: list[tuple[str, Any]] = []
    for name, cell in zip(code.co_freevars, function.__closure__ or ()):
        try:
            found.append((f"closure variable '{name}'", cell.cell_contents))
        except ValueError:
            continue
    found += [(f"default {i}", value) for i, value in enumerate(function.__defaults__ or ())]
    found += [(f"default '{key}'", value) for key, value in (function.__kwdefaults__ or {}).items()]
    names = function.__globals__
    found += [(f"global '{name}'", names[name]) for name in _global_names(code) if name in names]
    return found


@functools.lru_cache(maxsize=4096)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """The global names a code object (and the code nested in it) loads; its `co_names` if unreadable."""
    try:
        names = [ins.argval for ins in dis.get_instructions(code)
                 if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS") and isinstance(ins.argval, str)]
    except Exception:
        names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += _global_names(const)
    return tuple(dict.fromkeys(names))


def _is_scalar(value: Any) -> bool:
    """None, a number, a string, or a tuple of those (immutable, so keeping the object keeps the value)."""
    if value is None or isinstance(value, (int, float, complex, str)):
        return True
    return isinstance(value, tuple) and all(_is_scalar(item) for item in value)


def _clone(tensor: torch.Tensor) -> torch.Tensor | None:
    try:
        with torch.no_grad():
            return tensor.detach().clone()
    except Exception:
        return None


def _same_memory(tensor: torch.Tensor, alias: torch.Tensor) -> bool:
    """True when `tensor` still shows the memory `alias` was taken from, with the same layout."""
    try:
        return (
            tensor.device == alias.device
            and tensor.dtype == alias.dtype
            and tensor.shape == alias.shape
            and tensor.stride() == alias.stride()
            and tensor.storage_offset() == alias.storage_offset()
            and tensor.untyped_storage().data_ptr() == alias.untyped_storage().data_ptr()
        )
    except Exception:
        return False


def _put_back(tensor: torch.Tensor, alias: torch.Tensor, values: torch.Tensor | None) -> None:
    """Point `tensor` at its old memory again (after `.data = ...` or `.to(...)`) and write the old values."""
    with torch.no_grad():
        if not _same_memory(tensor, alias):
            tensor.data = alias
        if values is not None:
            alias.copy_(values)


@dataclass(eq=False)
class _TensorState:
    """One parameter or buffer: the object, an alias of its memory, its values, its flag and its gradient."""

    tensor: torch.Tensor
    alias: torch.Tensor
    values: torch.Tensor | None
    requires_grad: bool
    grad: torch.Tensor | None
    grad_alias: torch.Tensor | None
    grad_values: torch.Tensor | None

    @classmethod
    def take(cls, tensor: torch.Tensor) -> _TensorState:
        grad = _grad_of(tensor)
        return cls(
            tensor, tensor.detach(), _clone(tensor), tensor.requires_grad,
            grad, None if grad is None else grad.detach(), None if grad is None else _clone(grad),
        )

    def restore(self) -> None:
        _put_back(self.tensor, self.alias, self.values)
        if not self.tensor.is_leaf:
            return
        if self.tensor.requires_grad != self.requires_grad:
            self.tensor.requires_grad_(self.requires_grad)
        if self.grad is not None:
            _put_back(self.grad, self.grad_alias, self.grad_values)
        if self.tensor.grad is not self.grad:
            self.tensor.grad = self.grad


@dataclass(eq=False)
class _SlotState:
    """One dict of a module's tree (`_modules`, `_parameters`, `_buffers`): the dict object and its entries."""

    module: nn.Module
    name: str
    slots: dict
    entries: list[tuple[str, Any]]

    def restore(self) -> None:
        attributes = vars(self.module)
        if attributes.get(self.name) is not self.slots:
            attributes[self.name] = self.slots
        self.slots.clear()
        self.slots.update(self.entries)


@dataclass(eq=False)
class ModelSnapshot:
    """Everything training can change in a model, put back exactly (values and objects) by `restore`.

    Kept: each module's `_modules`, `_parameters` and `_buffers` entries (a layer or buffer replaced by
    a new object comes back, one added goes away); for each parameter and buffer the object, its
    memory (undoing `.data = ...` and `.to(device)`), a clone of its values, `requires_grad`, and its
    `.grad` object (or None) with a clone of its values; each module's plain attributes that are None,
    numbers, strings or tuples of those (the train/eval flag, dropout `p`, BatchNorm `momentum`).
    Attributes added in between are left. Clones live on the tensors' devices.
    """

    model: nn.Module
    tensors: list[_TensorState] = field(default_factory=list, repr=False)
    slots: list[_SlotState] = field(default_factory=list, repr=False)
    attributes: list[tuple[nn.Module, dict[str, Any]]] = field(default_factory=list, repr=False)

    @classmethod
    def take(cls, model: nn.Module) -> ModelSnapshot:
        """Snapshot `model` and every module under it."""
        instance("model", model, nn.Module, "an nn.Module")
        snapshot, seen = cls(model), set()
        for _, module in _named_modules(model):
            for name in _TREE:
                slots = _slots(module, name)
                snapshot.slots.append(_SlotState(module, name, slots, list(slots.items())))
            snapshot.attributes.append((module, {k: v for k, v in vars(module).items() if _is_scalar(v)}))
            for tensor in (*_slots(module, "_parameters").values(), *_slots(module, "_buffers").values()):
                if isinstance(tensor, torch.Tensor) and id(tensor) not in seen:
                    seen.add(id(tensor))
                    snapshot.tensors.append(_TensorState.take(tensor))
        return snapshot

    def restore(self) -> None:
        """Put the model back as it was when taken; raises RuntimeError (after the rest) if a tensor cannot be."""
        for slot in self.slots:
            slot.restore()
        errors = []
        for state in self.tensors:
            try:
                state.restore()
            except Exception as error:
                errors.append(error)
        for module, values in self.attributes:
            vars(module).update(values)
        if errors:
            raise RuntimeError(f"{len(errors)} tensor(s) of the model could not be put back: {errors[0]}") from errors[0]


def _deep_copy(model: nn.Module) -> nn.Module | None:
    try:
        copied = copy_module.deepcopy(model)
    except Exception:
        return None
    return copied if isinstance(copied, nn.Module) else None


@contextlib.contextmanager
def training_copy(model: nn.Module) -> Iterator[nn.Module]:
    """A model the block may train freely; `model` is bit-for-bit as it was afterwards.

    Yields `copy.deepcopy(model)` when the copy shares nothing with `model` (`shared_with`); otherwise
    (a closure, hook, partial or global reaching the original's modules, a `__deepcopy__` sharing
    tensors, a model that cannot be deep-copied) `model` itself, put back from a `ModelSnapshot` when
    the block ends, also when it raises. `yielded is model` tells which. After an in-place block the
    caller must keep no reference to the yielded model or to optimizers over its parameters: they are
    the user's again. The random generators are `rng_kept`'s business.
    """
    instance("model", model, nn.Module, "an nn.Module")
    copied = _deep_copy(model)
    if copied is not None and not shared_with(copied, model):
        yield copied
        return
    del copied
    snapshot = ModelSnapshot.take(model)
    try:
        yield model
    finally:
        snapshot.restore()
