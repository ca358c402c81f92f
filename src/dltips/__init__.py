"""dltips: the practical heuristics of training deep networks, as code.

Three layers: `dltips` on the command line; `dltips.fit(task)` and
`dltips.doctor(task)` as single calls; and the parts below (`watch`, `OneCycle`,
`Mixup`, ...), each usable alone in a hand-written PyTorch loop.

The public names are imported on first use, so that `dltips tips` answers
without paying for `import torch`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "dltips.catalog": ["TIPS", "Tip", "get_tip", "tips_by_theme"],
    "dltips.diagnosis.recipe": ["Doctor", "doctor"],
    "dltips.predict": ["Predictions", "predict"],
    "dltips.data.augment": ["AffineAugment", "Lighting", "presize"],
    "dltips.data.inputs": ["check_inputs"],
    "dltips.data.invariance": ["check_label_preserving", "describe_invariances"],
    "dltips.data.preview": ["Preview", "preview"],
    "dltips.data.resolution": ["check_image_resolution"],
    "dltips.data.shift": ["check_val_test_match"],
    "dltips.data.worst": ["check_worst_predictions"],
    "dltips.findings": ["Finding", "Report"],
    "dltips.nlp.emergent": ["Probe", "ScalingPoint", "char_probes", "check_emergent_scaling", "measure_point",
                            "scaling_study"],
    "dltips.nlp.scaling": ["Budget", "FlopCount", "compute_budget", "flops_per_token", "mfu", "parse_count"],
    "dltips.nlp.unseen": ["UnseenMass", "check_unseen_tokens", "measure_unseen_mass", "token_counts"],
    "dltips.nlp.tying": ["TyingCandidate", "check_weight_tying", "count_parameters", "find_tied", "find_untied",
                         "tie_weights", "untie_weights"],
    "dltips.tabular.categoricals": ["CategoryEncoder", "check_categoricals"],
    "dltips.tabular.embeddings": ["check_embedding_sizes", "emb_size", "emb_sizes"],
    "dltips.tabular.model": ["TabularData", "TabularDataset", "TabularModel"],
    "dltips.monitor.gaps": ["check_error_gaps", "measure_error_gaps"],
    "dltips.monitor.metrics": ["MetricTracker"],
    "dltips.monitor.sinks": ["JsonlSink", "MemorySink", "TensorBoardSink", "read_jsonl"],
    "dltips.monitor.watch": ["Watch", "watch"],
    "dltips.task": ["Task", "TaskError"],
    "dltips.training.accumulate": ["GradientAccumulator"],
    "dltips.training.callbacks": ["Callback", "ProgressBar", "TimeLimit"],
    "dltips.training.fit": ["FitResult", "FitState", "NonFiniteLossError", "Recipe", "evaluate", "fit"],
    "dltips.training.init": ["check_initial_loss"],
    "dltips.training.lr": ["LRFinderResult", "default_lr", "lr_find", "scale_lr"],
    "dltips.training.lr_check": ["check_lr"],
    "dltips.training.mixup": ["Mixup"],
    "dltips.training.overfit": ["check_capacity", "check_overfit_tiny"],
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
    from dltips.data.augment import AffineAugment, Lighting, presize
    from dltips.data.inputs import check_inputs
    from dltips.data.invariance import check_label_preserving, describe_invariances
    from dltips.data.preview import Preview, preview
    from dltips.data.resolution import check_image_resolution
    from dltips.data.shift import check_val_test_match
    from dltips.data.worst import check_worst_predictions
    from dltips.diagnosis.recipe import Doctor, doctor
    from dltips.findings import Finding, Report
    from dltips.monitor.gaps import check_error_gaps, measure_error_gaps
    from dltips.monitor.metrics import MetricTracker
    from dltips.monitor.sinks import JsonlSink, MemorySink, TensorBoardSink, read_jsonl
    from dltips.monitor.watch import Watch, watch
    from dltips.nlp.emergent import Probe, ScalingPoint, char_probes, check_emergent_scaling, measure_point, scaling_study
    from dltips.nlp.scaling import Budget, FlopCount, compute_budget, flops_per_token, mfu, parse_count
    from dltips.nlp.tying import (
        TyingCandidate,
        check_weight_tying,
        count_parameters,
        find_tied,
        find_untied,
        tie_weights,
        untie_weights,
    )
    from dltips.nlp.unseen import UnseenMass, check_unseen_tokens, measure_unseen_mass, token_counts
    from dltips.predict import Predictions, predict
    from dltips.tabular.categoricals import CategoryEncoder, check_categoricals
    from dltips.tabular.embeddings import check_embedding_sizes, emb_size, emb_sizes
    from dltips.tabular.model import TabularData, TabularDataset, TabularModel
    from dltips.task import Task, TaskError
    from dltips.training.accumulate import GradientAccumulator
    from dltips.training.callbacks import Callback, ProgressBar, TimeLimit
    from dltips.training.fit import FitResult, FitState, NonFiniteLossError, Recipe, evaluate, fit
    from dltips.training.init import check_initial_loss
    from dltips.training.lr import LRFinderResult, default_lr, lr_find, scale_lr
    from dltips.training.lr_check import check_lr
    from dltips.training.mixup import Mixup
    from dltips.training.overfit import check_capacity, check_overfit_tiny
    from dltips.training.precision import AmpPlan, MixedPrecision, amp_plan
    from dltips.training.schedule import OneCycle
