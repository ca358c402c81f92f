"""The `encode-categoricals` check: what messy spellings do to each categorical column.

The encoder it measures against is `dltips.tabular.encoder.CategoryEncoder`
(its string similarity is `dltips.tabular.similarity`). `tabular_data` finds
the `TabularData` a Task was built from, for every tabular check.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device
from dltips.core.params import ParamError, instance
from dltips.findings import Finding
from dltips.tabular.encoder import RESERVED, CategoryEncoder, as_columns
from dltips.task import Task

INFLATION_WARN = 1.3  # categories kept per category the default encoder finds, above which spellings inflate the count
INFLATION_MIN_EXTRA = 5  # ... and at least this many extra categories (one stray variant in a 3-category column is no news)
UNKNOWN_WARN = 0.05  # share of validation/test rows unknown to the encoder


def tabular_data(task: Any) -> Any:
    """The `TabularData` a Task's training set came from (its datasets point back to it), or None."""
    data = getattr(task.train, "data", None)
    return data if getattr(data, "encoder", None) is not None and getattr(data, "raw", None) else None


def check_categoricals(task: Any, valid: Any = None, test: Any = None, *, model: nn.Module | None = None,
                       device: str | torch.device | None = None, seed: int = 0, max_items: int | None = None,
                       deadline: Deadline | float | None = None, encoder: CategoryEncoder | None = None,
                       ) -> list[Finding]:
    """The `encode-categoricals` check: what messy spellings do to each categorical column.

    Two call forms, told apart by the first argument:

    - `check_categoricals(task, ...)`, a dltips Task (the doctor's call): the
      raw columns of a Task built by `TabularData` and its encoder; [] for other Tasks;
    - `check_categoricals(train, valid=None, test=None, *, encoder=None, ...)`:
      the frames themselves (anything `CategoryEncoder.fit` takes), `encoder`
      being the one the model's ids come from (None: the raw strings).

    Per column: distinct raw spellings, distinct after normalisation and after
    merging by a default `CategoryEncoder` fitted on the training rows, the
    largest merges, categories whose names are close but were kept apart (for
    review), and the share of missing, rare, unknown and new-but-matched values
    in the validation and test rows. The categories the model sees are the raw
    spellings when there is no encoder, else the encoder's. Warns when those are
    inflated by spelling variants (at least 1.3 times, and 5 more than, what the
    default encoder finds) and when 5 % or more of validation or test rows are
    unknown to the encoder.

    `max_items` caps the rows read from each split (its first rows; None: all).
    `model` and `device` are validated but never used (no model runs), and so
    are `seed` and `deadline`: the check draws nothing and reads each row once.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    instance("model", model, (nn.Module, type(None)), "an nn.Module or None")
    if not isinstance(task, Task):
        instance("encoder", encoder, (CategoryEncoder, type(None)), "a CategoryEncoder or None")
        resolve_device(device, model)
        return _check_splits(_head(task, max_items), _head(valid, max_items), _head(test, max_items), encoder)
    if valid is not None or test is not None or encoder is not None:
        raise ParamError("valid, test and encoder belong to the frame form check_categoricals(train, valid, test, "
                         "encoder=...); a Task brings its own splits and encoder")
    resolve_device(device, task.model if model is None else model)
    data = tabular_data(task)
    if data is None or not data.raw.get("train"):
        return []
    raw = {split: _head(data.raw.get(split), max_items) for split in ("train", "valid", "test")}
    return _check_splits(raw["train"], raw["valid"], raw["test"], data.encoder)


def check_task_categoricals(task: Task, **options: Any) -> list[Finding]:
    """Deprecated alias of `check_categoricals(task, ...)`, kept for one release."""
    warnings.warn("check_task_categoricals(task) is deprecated; use check_categoricals(task)",
                  DeprecationWarning, stacklevel=2)
    return check_categoricals(instance("task", task, Task, "a dltips Task"), **options)


def _head(X: Any, max_items: int | None) -> Any:
    """The first `max_items` rows of a split, as {column: values}; the split as given when there is no cap."""
    if X is None or max_items is None:
        return X
    columns, _ = as_columns(X)
    return {name: values[:max_items] for name, values in columns.items()}


def _check_splits(train: Any, valid: Any, test: Any, encoder: CategoryEncoder | None) -> list[Finding]:
    """The check on the rows of each split (`encoder` None: the model sees the raw spellings)."""
    reference = CategoryEncoder().fit(train)
    used = encoder if encoder is not None else reference
    ids = used.n_categories_  # raises before fit
    evidence: dict[str, dict] = {}
    for column, counts in reference.spelling_counts().items():
        kept = counts["raw"] if encoder is None else ids[column] - len(RESERVED)
        evidence[str(column)] = {"raw": counts["raw"], "normalized": counts["normalized"], "merged": counts["merged"],
                                 "kept": kept, "train_missing": counts["missing"], "train_rows": counts["rows"]}
    for split, data in (("valid", valid), ("test", test)):
        if data is not None:
            for column, counts in used.describe(data).items():
                rows = max(counts["rows"], 1)
                for name in ("unknown", "rare", "matched", "missing"):
                    evidence[str(column)][f"{split}_{name}"] = counts[name] / rows
    records, near = used.merge_records(), used.near_duplicates()
    inflated = [c for c, e in evidence.items()
                if e["kept"] >= INFLATION_WARN * max(e["merged"], 1) and e["kept"] - e["merged"] >= INFLATION_MIN_EXTRA]
    unknown = [(c, split, e[f"{split}_unknown"]) for c, e in evidence.items() for split in ("valid", "test")
               if e.get(f"{split}_unknown", 0.0) >= UNKNOWN_WARN]
    figures = _figures(evidence, records, near)
    summary = "; ".join(f"{_name(c)}: {e['raw']} spellings, {e['normalized']} after normalising, {e['merged']} after "
                        f"merging" + (f", {e['kept']} kept by the given encoder" if encoder is not None else "")
                        for c, e in evidence.items())
    notes = [summary]
    if near:
        shown = ", ".join(f"{p['a']!r} / {p['b']!r} ({p['similarity']:.2f})" for p in near[:3])
        notes.append(f"{len(near)} pairs of categories have close names but stay apart (review them), e.g. {shown}")
    evidence_all = {"columns": evidence, "merged_spellings": len(records), "near_duplicates": near[:25],
                    "encoder_given": encoder is not None, "threshold": used.threshold,
                    "inflation_warn": INFLATION_WARN, "unknown_warn": UNKNOWN_WARN}
    problems, fixes = [], []
    if inflated:
        problems.append("spelling variants inflate the number of categories of " + ", ".join(map(_name, inflated)))
        fixes.append("encode these columns with dltips.CategoryEncoder (default settings) and review encoder.merges")
    if unknown:
        problems.append("values unknown to the encoder: " + ", ".join(f"{_name(c)} in {s}: {v:.1%}" for c, s, v in unknown))
        fixes.append("the model never trained on these categories: check that the splits come from the same source, "
                     "and add synonyms for recurring new spellings")
    if problems:
        return [Finding("encode-categoricals", "warn", "Categorical columns need attention",
                        "; ".join(problems + notes) + ".", fix="; ".join(fixes) + ".",
                        evidence=evidence_all, figures=figures)]
    if records:
        notes.append(f"{len(records)} training spellings were normalised or merged (see the table)")
    return [Finding("encode-categoricals", "pass", "Categorical spellings are consistent", "; ".join(notes) + ".",
                    evidence=evidence_all, figures=figures)]


def _name(column: Any) -> str:
    return f"column {column}" if isinstance(column, int) or str(column).isdigit() else repr(column)


def _figures(evidence: dict, records: list[dict], near: list[dict]) -> list[dict]:
    rows = [[c, e["raw"], e["normalized"], e["merged"], e["kept"]]
            + [f"{e[k]:.1%}" if k in e else "-" for k in ("valid_unknown", "valid_matched", "test_unknown")]
            for c, e in evidence.items()]
    figures = [{"kind": "table", "title": "Categories per column: raw spellings, after normalising, after merging, kept",
                "columns": ["column", "raw", "normalized", "merged", "kept", "valid unknown", "valid matched",
                            "test unknown"], "rows": rows}]
    if records:
        top = sorted(records, key=lambda r: -r["rows"])[:25]
        figures.append({"kind": "table", "title": f"Largest merges ({len(records)} spellings changed; encoder.merges has all)",
                        "columns": ["column", "raw", "canonical", "similarity", "rows", "reason"],
                        "rows": [[r["column"], r["raw"], r["canonical"], r["similarity"], r["rows"], r["reason"]]
                                 for r in top]})
    if near:
        figures.append({"kind": "table", "title": "Kept apart, but close: review these pairs",
                        "columns": ["column", "a", "b", "similarity"],
                        "rows": [[p["column"], p["a"], p["b"], p["similarity"]] for p in near[:25]]})
    return figures
