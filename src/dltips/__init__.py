"""dltips: the practical heuristics of training deep networks, as code.

Three layers: `dltips doctor` on the command line; `dltips.fit(task)` and (soon)
`dltips.doctor(task)` as single calls; and the parts below, each usable alone
in a hand-written PyTorch loop.
"""

__version__ = "0.1.0"

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

__all__ = [
    "TIPS", "Tip", "get_tip", "tips_by_theme",
    "Finding", "Report",
    "Task", "TaskError",
    "GradientAccumulator",
    "Callback", "ProgressBar",
    "FitResult", "FitState", "NonFiniteLossError", "Recipe", "evaluate", "fit",
    "LRFinderResult", "default_lr", "lr_find", "scale_lr",
    "Mixup",
    "AmpPlan", "MixedPrecision", "amp_plan",
    "OneCycle",
]
