"""Embedding sizes for categorical columns: a rule of thumb and a helper that applies it per column.

The rule `min(600, round(1.6 * n ** 0.56))` is fastai's `emb_sz_rule`
(fastai.tabular.model), an empirical rule of thumb for tabular models. It
grows slowly with the number of categories: 2 dims for 2 categories, 6 for 10,
21 for 100, 77 for 1000, capped at 600 (reached near 39,000 categories).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device
from dltips.core.params import ParamError, instance, int_at_least
from dltips.findings import Finding

MAX_EMB_SIZE = 600

EmbSizes = dict[str, tuple[int, int]] | list[tuple[int, int]]


def emb_size(n_categories: int) -> int:
    """Embedding dimension for a column of `n_categories` ids: min(600, round(1.6 * n ** 0.56)).

    Count every id the embedding table must hold, including reserved ids for
    missing, unknown or rare values. The rule is fastai's `emb_sz_rule`.
    """
    n = int_at_least("n_categories", n_categories)
    return min(MAX_EMB_SIZE, round(1.6 * n**0.56))


def emb_sizes(source: Any, overrides: Mapping[str | int, int] | None = None) -> EmbSizes:
    """(n_categories, dim) per categorical column, with `emb_size`'s rule unless overridden.

    `source` is a fitted CategoryEncoder (its `n_categories_`), a dict
    {column: n_categories}, or a list/tuple of counts. Returns a dict
    {column: (n, dim)} for the first two and a list [(n, dim), ...] for the
    last, in the source's order. `overrides` maps a column name (or a list
    index) to the dim to use instead of the rule's.
    """
    counts = _counts_of(source)
    keys = list(counts) if isinstance(counts, dict) else list(range(len(counts)))
    dims = _checked_overrides(overrides, keys)
    if isinstance(counts, dict):
        return {col: (n, dims.get(col, emb_size(n))) for col, n in counts.items()}
    return [(n, dims.get(i, emb_size(n))) for i, n in enumerate(counts)]


def _counts_of(source: Any) -> dict[str, int] | list[int]:
    """The category counts in `source`, validated, as a dict (named columns) or a list."""
    if isinstance(source, Mapping):
        return {col: int_at_least(f"n_categories of column {col!r}", n) for col, n in source.items()}
    if isinstance(source, (list, tuple)):
        return [int_at_least(f"n_categories at index {i}", n) for i, n in enumerate(source)]
    if hasattr(source, "fit") and hasattr(source, "transform"):
        try:
            counts = source.n_categories_
        except (AttributeError, RuntimeError, ValueError) as error:  # CategoryEncoder raises RuntimeError before fit
            raise ParamError(
                f"the {type(source).__name__} has no n_categories_ yet; fit it before asking for embedding sizes"
            ) from error
        return _counts_of(dict(counts))
    if hasattr(source, "n_categories_"):
        return _counts_of(dict(source.n_categories_))
    raise ParamError(
        "source must be a fitted CategoryEncoder, a dict {column: n_categories} or a list of n_categories, "
        f"got {type(source).__name__}"
    )


def _checked_overrides(overrides: Mapping[str | int, int] | None, keys: Sequence[str | int]) -> dict[str | int, int]:
    """`overrides` after checking that each key is a known column and each dim an int >= 1."""
    if overrides is None:
        return {}
    instance("overrides", overrides, Mapping, "a dict {column or index: dim} or None")
    dims = {}
    for key, dim in overrides.items():
        if isinstance(key, (bool, float)) or key not in keys:
            raise ParamError(f"overrides names {key!r}, which is not a key of the source; known keys: {list(keys)}")
        dims[key] = int_at_least(f"overrides[{key!r}]", dim)
    return dims


def check_embedding_sizes(task: Any, *, model: nn.Module | None = None, device: str | torch.device | None = None,
                          seed: int = 0, max_items: int | None = None, deadline: Deadline | float | None = None,
                          ) -> list[Finding]:
    """The `categorical-embedding-size` verdict for a Task built by `TabularData`; [] for other Tasks.

    Compares each categorical column's embedding table in `model` (None:
    `task.model`) with the column's ids (every id needs a row: fewer rows fail)
    and with the size rule (a width more than twice or less than half the
    rule's is mentioned, not warned about: the rule is a starting point, not a
    law). It reads the model's tables and the encoder, never a row and never a
    random draw: `device`, `seed`, `max_items` and `deadline` are validated for
    the common check signature and otherwise unused.
    """
    from dltips.tabular.categoricals import tabular_data

    seed, max_items, deadline = check_args(seed, max_items, deadline)
    model = task.model if model is None else instance("model", model, nn.Module, "an nn.Module or None")
    resolve_device(device, model)
    data = tabular_data(task)
    if data is None or not data.categorical:
        return []
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    rule = data.emb_sizes()
    if len(tables) != len(rule):
        return [Finding("categorical-embedding-size", "info", "Embedding tables not matched to columns",
                        f"The model has {len(tables)} nn.Embedding tables for {len(rule)} categorical columns, so "
                        "they cannot be paired with the columns; sizes by the rule: "
                        + ", ".join(f"{c}: {n} ids -> {d}" for c, (n, d) in rule.items()) + ".",
                        evidence={"rule": {c: list(v) for c, v in rule.items()}})]
    rows, short, off = [], [], []
    for (column, (n, dim)), table in zip(rule.items(), tables):
        rows.append([column, n, dim, table.num_embeddings, table.embedding_dim])
        if table.num_embeddings < n:
            short.append(f"{column} ({table.num_embeddings} rows for {n} ids)")
        elif not dim / 2 <= table.embedding_dim <= 2 * dim:
            off.append(f"{column} (width {table.embedding_dim}, rule {dim})")
    evidence = {"columns": {r[0]: {"ids": r[1], "rule_dim": r[2], "rows": r[3], "dim": r[4]} for r in rows}}
    figures = [{"kind": "table", "title": "Embedding per categorical column (ids include missing, unknown and rare)",
                "columns": ["column", "ids", "rule width", "model rows", "model width"], "rows": rows}]
    sizes = ", ".join(f"{r[0]}: {r[1]} ids, width {r[4]} (rule {r[2]})" for r in rows)
    if short:
        return [Finding("categorical-embedding-size", "fail", "Embedding tables too small for their columns",
                        f"Ids beyond the table's rows crash or, on a GPU, fail with a device-side assert: {', '.join(short)}.",
                        fix="size each table by the encoder's n_categories_ (dltips.emb_sizes(encoder) gives "
                            "(rows, width) per column)", evidence=evidence, figures=figures)]
    if off:
        return [Finding("categorical-embedding-size", "info", "Embedding widths differ from the size rule",
                        f"{sizes}. Far from min(600, round(1.6 * n ** 0.56)): {', '.join(off)}; fine if chosen on "
                        "purpose, else start from the rule.", evidence=evidence, figures=figures)]
    return [Finding("categorical-embedding-size", "pass", "Embedding tables sized by the rule",
                    f"{sizes}.", evidence=evidence, figures=figures)]
