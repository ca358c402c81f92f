"""Argument validation with one vocabulary; every failure raises `ParamError`.

`ParamError` subclasses both ValueError and TypeError, so code that caught either before keeps
working. Messages name the argument, what was given and what is expected.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Collection, Sequence


class ParamError(ValueError, TypeError):
    """An argument has the wrong type or value; the message names it and says what is expected."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bounds(low: float | None, high: float | None, open_low: bool = False) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if open_low else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    return " and ".join(parts)


def int_at_least(name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    """`value` as an int in [low, high]; bools are refused (True is not a count)."""
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise ParamError(f"{name} must be an int {_bounds(low, high)}, got {type(value).__name__} {_shown(value)}")
    if value < low or (high is not None and value > high):
        raise ParamError(f"{name} must be an int {_bounds(low, high)}, got {value}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    return int_at_least(name, value, 1)


def optional_int(name: str, value: Any, low: int = 1) -> int | None:
    """None, or an int >= low."""
    return None if value is None else int_at_least(name, value, low)


def number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
           open_low: bool = False) -> float:
    """`value` as a finite float in [low, high] (or (low, high] with `open_low`)."""
    if not isinstance(value, Real) or isinstance(value, bool):
        raise ParamError(f"{name} must be a number, got {type(value).__name__} {_shown(value)}")
    value = float(value)
    too_low = low is not None and (value <= low if open_low else value < low)
    if not math.isfinite(value) or too_low or (high is not None and value > high):
        bounds = _bounds(low, high, open_low)
        raise ParamError(f"{name} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}")
    return value


def positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    return number(name, value, 0.0, open_low=True)


def fraction(name: str, value: Any, *, open_low: bool = False) -> float:
    """A number in [0, 1] (or (0, 1] with `open_low`)."""
    return number(name, value, 0.0, 1.0, open_low=open_low)


def probability(name: str, value: Any) -> float:
    """A number in [0, 1): a dropout, smoothing or momentum probability, where 1 would leave nothing."""
    if not isinstance(value, Real) or isinstance(value, bool):
        raise ParamError(f"{name} must be a probability in [0, 1), got {type(value).__name__} {_shown(value)}")
    if not 0.0 <= value < 1.0:
        raise ParamError(f"{name} must be a probability in [0, 1), got {float(value)!r}")
    return float(value)


def one_of(name: str, value: Any, choices: Collection[Any]) -> Any:
    """`value` if it is one of `choices`."""
    try:
        ok = value in choices
    except TypeError:  # an unhashable value given for a set of choices
        ok = False
    if not ok:
        raise ParamError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {_shown(value)}")
    return value


def ints(name: str, values: Any, low: int = 1) -> list[int]:
    """A non-empty sequence of ints >= low, as a list."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ParamError(f"{name} must be a non-empty sequence of ints >= {low}, got {_shown(values)}")
    return [int_at_least(f"{name}[{i}]", v, low) for i, v in enumerate(values)]


def instance(name: str, value: Any, types: type | tuple[type, ...], expected: str | None = None) -> Any:
    """`value` if it is an instance of `types`."""
    if not isinstance(value, types):
        if expected is None:
            names = types if isinstance(types, tuple) else (types,)
            expected = " or ".join(t.__name__ for t in names)
        raise ParamError(f"{name} must be {expected}, got {type(value).__name__}")
    return value


def flag(name: str, value: Any) -> bool:
    """`value` if it is True or False (not a truthy stand-in such as 1 or "yes")."""
    if not isinstance(value, bool):
        raise ParamError(f"{name} must be True or False, got {_shown(value)}")
    return value


def callable_or_none(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise ParamError(f"{name} must be a callable or None, got {type(value).__name__}")
    return value
