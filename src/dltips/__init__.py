"""dltips: the practical heuristics of training deep networks, as code.

Three layers: `dltips` on the command line; `dltips.fit(task)` (and, to come,
`dltips.doctor(task)`) as single calls; and the parts below, each usable alone
in a hand-written PyTorch loop.

The public names are imported on first use, so that `dltips tips` answers
without paying for `import torch`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "dltips.catalog": ["TIPS", "Tip", "get_tip", "tips_by_theme"],
    "dltips.findings": ["Finding", "Report"],
    "dltips.task": ["Task", "TaskError"],
    "dltips.training.accumulate": ["GradientAccumulator"],
    "dltips.training.callbacks": ["Callback", "ProgressBar"],
    "dltips.training.fit": ["FitResult", "FitState", "NonFiniteLossError", "Recipe", "evaluate", "fit"],
    "dltips.training.lr": ["LRFinderResult", "default_lr", "lr_find", "scale_lr"],
    "dltips.training.mixup": ["Mixup"],
    "dltips.training.precision": ["AmpPlan", "MixedPrecision", "amp_plan"],
    "dltips.training.schedule": ["OneCycle"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'dltips' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:
    from dltips.catalog import TIPS, Tip, get_tip, tips_by_theme
    from dltips.findings import Finding, Report
    from dltips.task import Task, TaskError
    from dltips.training.accumulate import GradientAccumulator
    from dltips.training.callbacks import Callback, ProgressBar
    from dltips.training.fit import FitResult, FitState, NonFiniteLossError, Recipe, evaluate, fit
    from dltips.training.lr import LRFinderResult, default_lr, lr_find, scale_lr
    from dltips.training.mixup import Mixup
    from dltips.training.precision import AmpPlan, MixedPrecision, amp_plan
    from dltips.training.schedule import OneCycle
