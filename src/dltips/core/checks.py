"""What every check shares: the validation of its common arguments and the shims for old call forms.

Every check that answers "is this healthy?" has one shape::

    check_x(task, *, model=None, device=None, seed=0, max_items=None, deadline=None, ...) -> list[Finding]

- `model`: the model judged; None means `task.model` (checks of a trained model take the trained one);
- `device`: the device rule of `dltips.core.device` (None: where the model is; "auto": this rank's GPU);
- `seed`: seeds every random draw the check makes (the global generators are left as they were);
- `max_items`: how many items the check reads at most; None means the check's own default;
- `deadline`: a `Deadline` or a number of seconds; a check with a time plan stops or skips by it.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, TypeVar

from torch import nn

from dltips.core.deadline import Deadline, as_deadline
from dltips.core.params import int_at_least, optional_int

F = TypeVar("F", bound=Callable[..., Any])


def check_args(seed: Any = 0, max_items: Any = None, deadline: Any = None) -> tuple[int, int | None, Deadline | None]:
    """The validated (seed, max_items, deadline) of a check; `ParamError` names a wrong one."""
    return int_at_least("seed", seed, 0), optional_int("max_items", max_items), as_deadline(deadline)


def renamed_kwargs(**renames: str) -> Callable[[F], F]:
    """Accept old keyword names (`old="new"`) for one release, with a DeprecationWarning."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{function.__name__}() got both {old!r} (its old name) and {new!r}")
                    warnings.warn(f"{function.__name__}({old}=...) is deprecated; use {new}=...",
                                  DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def task_first(function: F) -> F:
    """Accept the old `check(model, task, ...)` call for one release, as `check(task, model=model, ...)`."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if len(args) >= 2 and isinstance(args[0], nn.Module):
            warnings.warn(f"{function.__name__}(model, task, ...) is deprecated; use "
                          f"{function.__name__}(task, model=model, ...)", DeprecationWarning, stacklevel=2)
            if "model" in kwargs:
                raise TypeError(f"{function.__name__}() got the model twice")
            model, task, *rest = args
            return function(task, *rest, model=model, **kwargs)
        return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def positional_options(*names: str) -> Callable[[F], F]:
    """Accept the options `names` by position after the task (the old form) for one release, with a
    DeprecationWarning. Put it under `task_first`, which hands on what follows the task."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(task: Any, *args: Any, **kwargs: Any) -> Any:
            if len(args) > len(names) or any(name in kwargs for name in names[:len(args)]):
                raise TypeError(f"{function.__name__}() takes the task, then keyword options only")
            if args:
                shown = ", ".join(names[:len(args)])
                warnings.warn(f"{function.__name__}(task, {shown}) is deprecated; use "
                              f"{function.__name__}(task, {shown.replace(', ', '=..., ')}=...)",
                              DeprecationWarning, stacklevel=3)
                kwargs.update(zip(names, args))
            return function(task, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
