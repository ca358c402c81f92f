"""dltips: the practical heuristics of training deep networks, as code.

Three layers: `dltips` on the command line; `dltips.doctor(task)` and
`dltips.fit(task)` as single calls; and the parts (`watch`, `OneCycle`,
`Mixup`, the `check_*` functions, ...), each usable alone in a hand-written
PyTorch loop. Helpers live in their theme's module (`dltips.nlp.scaling.parse_count`,
`dltips.monitor.sinks.JsonlSink`, ...).

The public names are imported on first use, so that `dltips tips` answers
without paying for `import torch`.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__version__ = "0.1.0"

# The one export list: each public name and the module that defines it, grouped by layer.
_EXPORTS = {
    # One call, and what it takes and gives.
    "doctor": "dltips.diagnosis.recipe",
    "fit": "dltips.training.fit",
    "evaluate": "dltips.training.fit",
    "Recipe": "dltips.training.fit",
    "NonFiniteLossError": "dltips.training.fit",
    "Callback": "dltips.core.callbacks",
    "Task": "dltips.task",
    "TaskError": "dltips.task",
    "ParamError": "dltips.core.params",
    "Finding": "dltips.findings",
    "Report": "dltips.diagnosis.report",
    # Monitors.
    "watch": "dltips.monitor.watch",
    "Watch": "dltips.monitor.watch",
    "MetricTracker": "dltips.monitor.metrics",
    # Tricks: parts that change training.
    "default_lr": "dltips.training.lr",
    "lr_find": "dltips.training.lr",
    "scale_lr": "dltips.training.lr",
    "OneCycle": "dltips.training.schedule",
    "Mixup": "dltips.training.mixup",
    "MixedPrecision": "dltips.training.precision",
    "amp_plan": "dltips.training.precision",
    "GradientAccumulator": "dltips.training.accumulate",
    "AffineAugment": "dltips.data.augment",
    "Lighting": "dltips.data.augment",
    "presize": "dltips.data.augment",
    "preview": "dltips.data.preview",
    "CategoryEncoder": "dltips.tabular.encoder",
    "emb_size": "dltips.tabular.embeddings",
    "emb_sizes": "dltips.tabular.embeddings",
    "TabularData": "dltips.tabular.model",
    "TabularModel": "dltips.tabular.model",
    "tie_weights": "dltips.nlp.tying",
    "compute_budget": "dltips.nlp.scaling",
    "flops_per_token": "dltips.nlp.scaling",
    "mfu": "dltips.nlp.scaling",
    "scaling_study": "dltips.nlp.emergent",
    # Checks: each answers "is this healthy?" with Findings.
    "check_initial_loss": "dltips.training.init",
    "check_output_layer": "dltips.training.output",
    "check_gradient_flow": "dltips.monitor.probe",
    "check_overfit_tiny": "dltips.training.overfit",
    "check_capacity": "dltips.training.capacity",
    "check_lr": "dltips.training.lr_check",
    "check_inputs": "dltips.data.inputs",
    "check_image_resolution": "dltips.data.resolution",
    "check_worst_predictions": "dltips.data.worst",
    "check_label_preserving": "dltips.data.invariance",
    "describe_invariances": "dltips.data.invariance",
    "check_val_test_match": "dltips.data.shift",
    "check_target_leak": "dltips.data.leakage",
    "check_loss_reduction": "dltips.training.reduction",
    "check_stable_pairing": "dltips.data.integrity",
    "check_split_overlap": "dltips.data.integrity",
    "check_error_gaps": "dltips.monitor.gaps",
    "check_unseen_tokens": "dltips.nlp.unseen",
    "check_causal_leak": "dltips.nlp.causal",
    "check_weight_tying": "dltips.nlp.tying",
    "check_emergent_scaling": "dltips.nlp.emergent",
    "check_categoricals": "dltips.tabular.categoricals",
    "check_embedding_sizes": "dltips.tabular.embeddings",
}

# Names that were at the top level in 0.1 and now live only in their module: they still resolve,
# with a DeprecationWarning, until the next release.
_MOVED = {
    "TIPS": "dltips.catalog", "Tip": "dltips.catalog", "get_tip": "dltips.catalog", "tips_by_theme": "dltips.catalog",
    "Doctor": "dltips.diagnosis.recipe",
    "Predictions": "dltips.predict",
    "Preview": "dltips.data.preview",
    "Probe": "dltips.nlp.emergent", "ScalingPoint": "dltips.nlp.emergent", "char_probes": "dltips.nlp.emergent",
    "measure_point": "dltips.nlp.emergent",
    "Budget": "dltips.nlp.scaling", "FlopCount": "dltips.nlp.scaling", "parse_count": "dltips.nlp.scaling",
    "UnseenMass": "dltips.nlp.unseen", "measure_unseen_mass": "dltips.nlp.unseen", "token_counts": "dltips.nlp.unseen",
    "TyingCandidate": "dltips.nlp.tying", "count_parameters": "dltips.nlp.tying", "find_tied": "dltips.nlp.tying",
    "find_untied": "dltips.nlp.tying", "untie_weights": "dltips.nlp.tying",
    "TabularDataset": "dltips.tabular.model",
    "measure_error_gaps": "dltips.monitor.gaps",
    "JsonlSink": "dltips.monitor.sinks", "MemorySink": "dltips.monitor.sinks", "TensorBoardSink": "dltips.monitor.sinks",
    "read_jsonl": "dltips.monitor.sinks",
    "ProgressBar": "dltips.training.callbacks", "TimeLimit": "dltips.training.callbacks",
    "FitResult": "dltips.training.fit", "FitState": "dltips.core.callbacks",
    "LRFinderResult": "dltips.training.lr", "AmpPlan": "dltips.training.precision",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None and name in _MOVED:
        module = _MOVED[name]
        warnings.warn(f"dltips.{name} is deprecated: import it from {module}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), name)
    if module is None:
        raise AttributeError(f"module 'dltips' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
