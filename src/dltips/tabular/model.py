"""A tabular model (embeddings + MLP) and `TabularData`, which turns a table into Task-ready datasets.

    data = TabularData(table, categorical=["street"], continuous=["area", "age"], target="price", split=0.2)
    task = data.task(batch_size=64)            # a dltips.Task with a TabularModel sized by emb_sizes
    dltips.fit(task, epochs=10, recipe=Recipe(mixup=0.4))

The model follows fastai's TabularModel: one embedding per categorical column,
their outputs concatenated with the continuous values, then Linear -> ReLU ->
BatchNorm -> Dropout blocks. Under `Mixup(ids="model")` (what `fit` sets up
for a model with `mixes_embeddings = True`) the model mixes its embedding
outputs row by row, since category ids themselves cannot be blended.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device
from dltips.core.params import ParamError, instance, int_at_least, one_of, probability
from dltips.findings import Finding
from dltips.tabular.embeddings import EmbSizes, emb_sizes
from dltips.task import Task
from dltips.training.mixup import MIXUP_LAM, MIXUP_PERM

CATEGORICAL = "categorical"  # input dict key: LongTensor (N, k) of category ids
CONTINUOUS = "continuous"  # input dict key: FloatTensor (N, m) of continuous values
TABULAR_KINDS = ("regression", "classification", "binary")
SPLIT_NAMES = ("train", "valid", "test")
MISSING_SUFFIX = "_missing"  # indicator column added for a continuous column with missing training values


# The model ----------------------------------------------------------------------------------------------


class TabularModel(nn.Module):
    """Embeddings for categorical columns and an MLP over them and the continuous columns.

    Input: a dict {"categorical": LongTensor (N, k), "continuous": FloatTensor
    (N, m)}; a key may be left out when its k or m is 0. Output: (N,
    out_features), or (N,) when out_features is 1 (one value per row, what
    Task's regression and binary kinds take).

    Args:
        emb_sizes: (n_categories, dim) per categorical column, as a list or as
            the dict {column: (n, dim)} that `emb_sizes` returns (order kept).
        n_continuous: number of continuous columns m.
        out_features: outputs per row (1 for regression or binary, C for C classes).
        hidden: widths of the hidden layers; each is Linear -> ReLU ->
            BatchNorm1d -> Dropout (the Dropout only when dropout > 0).
        dropout: dropout probability after each hidden layer.
        emb_dropout: dropout probability on the concatenated embedding outputs.

    When x also holds `MIXUP_LAM` and `MIXUP_PERM` (from `Mixup(ids="model")`),
    the embedding outputs of row i become lam_i*e_i + (1-lam_i)*e_perm(i)
    before the MLP; the continuous values arrive already mixed.
    """

    mixes_embeddings = True  # `fit` hands it integer ids unmixed, with the mixup weights (see Mixup's `ids`)

    def __init__(
        self,
        emb_sizes: EmbSizes | Sequence[tuple[int, int]],
        n_continuous: int,
        out_features: int,
        hidden: Sequence[int] = (200, 100),
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.columns, pairs = _emb_pairs(emb_sizes)
        self.n_continuous = int_at_least("n_continuous", n_continuous, 0)
        self.out_features = int_at_least("out_features", out_features, 1)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise ParamError(f"hidden must be a sequence of layer widths such as (200, 100), got {hidden!r}")
        self.hidden = tuple(int_at_least(f"hidden[{i}]", width, 1) for i, width in enumerate(hidden))
        self.dropout = probability("dropout", dropout)
        self.emb_dropout_p = probability("emb_dropout", emb_dropout)
        if not pairs and self.n_continuous == 0:
            raise ParamError("TabularModel needs at least one categorical or continuous column; got neither")
        self.emb_sizes = pairs
        self.embeddings = nn.ModuleList(nn.Embedding(n, dim) for n, dim in pairs)
        self.emb_dropout = nn.Dropout(self.emb_dropout_p)
        self.layers = _mlp(sum(dim for _, dim in pairs) + self.n_continuous, self.hidden, self.out_features, self.dropout)
        self.register_buffer("n_categories", torch.tensor([n for n, _ in pairs], dtype=torch.long), persistent=False)

    def extra_repr(self) -> str:
        columns = f"columns={self.columns}, " if self.columns is not None else ""
        return (f"{columns}emb_sizes={self.emb_sizes}, n_continuous={self.n_continuous}, "
                f"out_features={self.out_features}, hidden={self.hidden}, dropout={self.dropout}, "
                f"emb_dropout={self.emb_dropout_p}")

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        categorical, continuous, mix = self._inputs(x)
        parts = []
        if self.embeddings:
            e = torch.cat([emb(categorical[:, j]) for j, emb in enumerate(self.embeddings)], dim=1)
            if mix is not None:
                lam, perm = mix
                w = lam.to(device=e.device, dtype=e.dtype).unsqueeze(1)
                e = w * e + (1 - w) * e[perm.to(e.device)]
            parts.append(self.emb_dropout(e))
        if self.n_continuous:
            parts.append(continuous)
        out = self.layers(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        return out.squeeze(1) if self.out_features == 1 else out

    def _inputs(self, x: Mapping[str, Tensor]) -> tuple[Tensor | None, Tensor | None, tuple[Tensor, Tensor] | None]:
        """(categorical, continuous, (lam, perm) or None) from x, after checking keys, shapes, dtypes and id ranges."""
        if not isinstance(x, Mapping):
            raise ParamError(f"TabularModel takes a dict {{{CATEGORICAL!r}: ids, {CONTINUOUS!r}: values}}, "
                             f"got {type(x).__name__}")
        unknown = [k for k in x if k not in (CATEGORICAL, CONTINUOUS, MIXUP_LAM, MIXUP_PERM)]
        if unknown:
            raise ParamError(f"unexpected input keys {unknown}; expected {CATEGORICAL!r} and {CONTINUOUS!r}")
        categorical = _input_table(x, CATEGORICAL, len(self.embeddings), floating=False)
        continuous = _input_table(x, CONTINUOUS, self.n_continuous, floating=True)
        n = _common_batch_size(categorical, continuous)
        if categorical is not None and categorical.numel() and categorical.device.type == "cpu":
            self._check_ids(categorical)  # on an accelerator the check would wait for the device every step
        return categorical, continuous, _mix_inputs(x, n)

    def _check_ids(self, categorical: Tensor) -> None:
        """Raise if a column holds an id outside [0, n_categories), naming the column (CPU batches only)."""
        low, high = categorical.amin(0), categorical.amax(0)
        limits = self.n_categories.to(categorical.device)
        bad = ((low < 0) | (high >= limits)).nonzero()
        if len(bad):
            j = int(bad[0, 0])
            name = f" ({self.columns[j]!r})" if self.columns is not None else ""
            raise ParamError(f"categorical column {j}{name} holds ids from {int(low[j])} to {int(high[j])}; "
                             f"expected ids in [0, {int(limits[j])}), i.e. max < {int(limits[j])}")


def _mlp(n_in: int, hidden: tuple[int, ...], out_features: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> BatchNorm1d -> Dropout per hidden width, then a final Linear."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.ReLU(), nn.BatchNorm1d(width)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        n_in = width
    layers.append(nn.Linear(n_in, out_features))
    return nn.Sequential(*layers)


def _emb_pairs(sizes: Any) -> tuple[list | None, list[tuple[int, int]]]:
    """(column names or None, [(n, dim), ...]) from a list of pairs or a dict {column: (n, dim)}."""
    if isinstance(sizes, Mapping):
        columns, values = list(sizes), list(sizes.values())
    elif isinstance(sizes, Sequence) and not isinstance(sizes, (str, bytes)):
        columns, values = None, list(sizes)
    else:
        raise ParamError(f"emb_sizes must be a list of (n_categories, dim) or a dict {{column: (n, dim)}}, "
                         f"got {type(sizes).__name__}")
    pairs = []
    for i, pair in enumerate(values):
        where = repr(columns[i]) if columns is not None else str(i)
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise ParamError(f"emb_sizes[{where}] must be a pair (n_categories, dim), got {pair!r}")
        pairs.append((int_at_least(f"emb_sizes[{where}] n_categories", pair[0], 1),
                      int_at_least(f"emb_sizes[{where}] dim", pair[1], 1)))
    return columns, pairs


def _input_table(x: Mapping[str, Tensor], key: str, width: int, floating: bool) -> Tensor | None:
    """x[key] checked to be a 2-D tensor of `width` columns (ids or floats); None when width is 0 and absent."""
    if key not in x:
        if width:
            raise ParamError(f"the model has {width} {key} column(s) but the input has no {key!r} entry")
        return None
    t = x[key]
    if not isinstance(t, Tensor):
        raise ParamError(f"x[{key!r}] must be a Tensor, got {type(t).__name__}")
    if t.ndim != 2 or t.shape[1] != width:
        raise ParamError(f"x[{key!r}] must have shape (N, {width}), got {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise ParamError(f"x[{key!r}] must be floating point, got {t.dtype}")
    if not floating and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise ParamError(f"x[{key!r}] must hold integer category ids (torch.long), got {t.dtype}")
    return t if width else None


def _common_batch_size(categorical: Tensor | None, continuous: Tensor | None) -> int | None:
    if categorical is not None and continuous is not None and len(categorical) != len(continuous):
        raise ParamError(f"x[{CATEGORICAL!r}] has {len(categorical)} rows but x[{CONTINUOUS!r}] has {len(continuous)}")
    present = categorical if categorical is not None else continuous
    return len(present) if present is not None else None


def _mix_inputs(x: Mapping[str, Tensor], n: int | None) -> tuple[Tensor, Tensor] | None:
    """(lam, perm) when x carries both mixup entries, None when it carries neither."""
    has_lam, has_perm = MIXUP_LAM in x, MIXUP_PERM in x
    if has_lam != has_perm:
        raise ParamError(f"x has {MIXUP_LAM if has_lam else MIXUP_PERM!r} without "
                         f"{MIXUP_PERM if has_lam else MIXUP_LAM!r}; Mixup(ids='model') adds both")
    if not has_lam:
        return None
    lam, perm = x[MIXUP_LAM], x[MIXUP_PERM]
    if n is not None and (lam.shape != (n,) or perm.shape != (n,)):
        raise ParamError(f"x[{MIXUP_LAM!r}] and x[{MIXUP_PERM!r}] must have shape ({n},), "
                         f"got {tuple(lam.shape)} and {tuple(perm.shape)}")
    if perm.is_floating_point():
        raise ParamError(f"x[{MIXUP_PERM!r}] must hold integer row indices, got {perm.dtype}")
    return lam, perm


# The data -----------------------------------------------------------------------------------------------


@dataclass
class ContinuousStats:
    """How one continuous column is processed, learnt on the training rows.

    Missing values (NaN, None) become `median`, then every value becomes
    (value - mean) / std; `mean` and `std` (population, ddof=0; 1.0 when the
    column is constant) are taken after the filling. With `has_missing`, a
    0/1 indicator column f"{name}_missing" follows the continuous columns.
    """

    median: float
    mean: float
    std: float
    has_missing: bool


class TabularDataset(Dataset):
    """Processed rows: item i is ({"categorical": ids (k,), "continuous": values (m,)}, target).

    A key is left out when its width is 0. `data` points back to the
    TabularData that made it (encoder, statistics, classes); `raw` holds the
    raw categorical values of the rows ({column: values}), for `describe`.
    """

    def __init__(self, categorical: Tensor, continuous: Tensor, target: Tensor, data: TabularData | None = None,
                 raw: Mapping[str, list] | None = None):
        n = len(target)
        if categorical.ndim != 2 or continuous.ndim != 2 or len(categorical) != n or len(continuous) != n:
            raise ParamError(f"categorical (N, k), continuous (N, m) and target (N,) must share N; got shapes "
                             f"{tuple(categorical.shape)}, {tuple(continuous.shape)} and {tuple(target.shape)}")
        self.categorical = categorical
        self.continuous = continuous
        self.target = target
        self.data = data
        self.raw = dict(raw) if raw is not None else {}

    def describe(self, i: int) -> dict[str, Any]:
        """Row i as a person reads it: each categorical column's raw value (with the category it was encoded
        as, when that differs) and each continuous column's processed value. Used by reports."""
        row: dict[str, Any] = {}
        names = self.data.categorical if self.data is not None else [str(j) for j in range(self.categorical.shape[1])]
        categories = self.data.encoder.categories_ if self.data is not None and self.data.encoder is not None else {}
        for j, column in enumerate(names):
            code = int(self.categorical[i, j])
            name = categories[column][code] if column in categories else str(code)
            raw = self.raw[column][i] if column in self.raw else None
            row[column] = name if raw is None or str(raw) == name else f"{raw!s} -> {name}"
        continuous = self.data.continuous if self.data is not None else [f"x{j}" for j in range(self.continuous.shape[1])]
        for j, column in enumerate(continuous):
            row[column] = round(float(self.continuous[i, j]), 4)
        return row

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        x = {}
        if self.categorical.shape[1]:
            x[CATEGORICAL] = self.categorical[i]
        if self.continuous.shape[1]:
            x[CONTINUOUS] = self.continuous[i]
        return x, self.target[i]


class TabularData:
    """A table turned into Task-ready datasets, with every statistic learnt on the training rows.

    Categorical columns go through a CategoryEncoder fitted on the training
    rows (unless `encoder` is already fitted). Continuous columns become
    float32, missing values filled with the training median (plus a 0/1
    f"{col}_missing" column when the training column has missing values, as
    fastai's FillMissing), then standardised with the training mean and std.
    `transform` processes new rows the same way.

    Args:
        table: a pandas DataFrame, or a dict {column: list or numpy array}
            (pandas is not needed for a dict).
        categorical, continuous: the feature columns; either may be empty.
        target: the target column.
        split: (train_rows, valid_rows) or (train_rows, valid_rows, test_rows)
            as row positions, or the fraction of rows drawn (with `seed`) for
            validation; the rest is training.
        encoder: a CategoryEncoder, fitted or not; None builds a default one.
        kind: "regression" (float32 targets), "classification" (int64 ids;
            string labels become indices into the sorted `classes`) or
            "binary" (float32 0/1; two string labels map to 0 and 1 in sorted
            order).

    Attributes: `train`, `valid`, `test` (TabularDataset or None), `encoder`,
    `categorical`, `continuous` (final names, indicators included),
    `continuous_stats`, `classes`, `splits` (row positions per split) and
    `raw` ({split: {column: raw categorical values}}, to compare spellings
    across splits).
    """

    def __init__(
        self,
        table: Any,
        categorical: Sequence[str],
        continuous: Sequence[str],
        target: str,
        split: float | Sequence[Any] = 0.2,
        *,
        seed: int = 0,
        encoder: Any = None,
        kind: str = "regression",
    ) -> None:
        self.kind = one_of("kind", kind, TABULAR_KINDS)
        self.categorical = _column_names("categorical", categorical)
        self.continuous_columns = _column_names("continuous", continuous)
        self.target = target
        _check_roles(self.categorical, self.continuous_columns, target)
        columns, n_rows = _read_columns(table, [*self.categorical, *self.continuous_columns, target])
        self.splits = _split_rows(split, n_rows, seed)
        cat, cont, labels = self._by_role(columns)
        self.raw = {name: {c: _take(cat[c], rows) for c in self.categorical} for name, rows in self.splits.items()}
        train = self.splits["train"]
        self.encoder = self._fitted_encoder(encoder, self.raw["train"])
        self.continuous_stats = {c: _fit_stats(c, cont[c][train]) for c in self.continuous_columns}
        self.continuous = [*self.continuous_columns,
                           *(c + MISSING_SUFFIX for c, s in self.continuous_stats.items() if s.has_missing)]
        _check_indicator_names(self.continuous)
        self.classes = _fit_classes(kind, [_take(labels, rows) for rows in self.splits.values()], target)
        datasets = {name: self._process({c: _take(v, rows) for c, v in cat.items()},
                                        {c: v[rows] for c, v in cont.items()}, _take(labels, rows))
                    for name, rows in self.splits.items()}
        self.train, self.valid, self.test = datasets["train"], datasets["valid"], datasets.get("test")

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(rows)}" for name, rows in self.splits.items())
        return (f"TabularData(kind={self.kind!r}, categorical={self.categorical}, continuous={self.continuous}, "
                f"target={self.target!r}, {sizes})")

    def transform(self, table: Any) -> TabularDataset:
        """Process new rows (a DataFrame or dict with the same columns, target included) as the training rows were."""
        columns, _ = _read_columns(table, [*self.categorical, *self.continuous_columns, self.target])
        return self._process(*self._by_role(columns))

    def emb_sizes(self, overrides: Mapping[str, int] | None = None) -> dict[str, tuple[int, int]]:
        """{column: (n_categories, dim)} for the categorical columns, by `emb_sizes`'s rule unless overridden."""
        if not self.categorical:
            return {}
        counts = self.encoder.n_categories_
        return emb_sizes({c: counts[c] for c in self.categorical}, overrides)

    @property
    def out_features(self) -> int:
        """Model outputs per row: one value (regression, binary) or one logit per class."""
        return len(self.classes) if self.kind == "classification" else 1

    def model(self, hidden: Sequence[int] = (200, 100), dropout: float = 0.0, emb_dropout: float = 0.0,
              emb_overrides: Mapping[str, int] | None = None) -> TabularModel:
        """A TabularModel for this data: embeddings by `emb_sizes`, fastai's default (200, 100) hidden layers."""
        return TabularModel(self.emb_sizes(emb_overrides), len(self.continuous), self.out_features,
                            hidden=hidden, dropout=dropout, emb_dropout=emb_dropout)

    def task(self, model: nn.Module | None = None, **task_kwargs: Any) -> Task:
        """A dltips Task on these datasets (kind and n_classes set), with `self.model()` unless `model` is given."""
        fixed = [k for k in ("model", "train", "valid", "test", "kind", "n_classes") if k in task_kwargs]
        if fixed:
            raise ParamError(f"task() sets {fixed} from the TabularData; pass only other Task fields "
                             "(batch_size, loss, optimizer, augment, name)")
        task_kwargs.setdefault("name", "tabular")
        n_classes = len(self.classes) if self.kind == "classification" else 2 if self.kind == "binary" else None
        return Task(model=model if model is not None else self.model(), train=self.train, valid=self.valid,
                    test=self.test, kind=self.kind, n_classes=n_classes, **task_kwargs)

    def _by_role(self, columns: dict[str, Any]) -> tuple[dict[str, list], dict[str, np.ndarray], list]:
        """(categorical lists, continuous float64 arrays with NaN for missing, target list) from raw columns."""
        cat = {c: _as_list(columns[c]) for c in self.categorical}
        cont = {c: _as_float(columns[c], f"continuous column {c!r}") for c in self.continuous_columns}
        return cat, cont, _as_list(columns[self.target])

    def _fitted_encoder(self, encoder: Any, train_columns: dict[str, list]) -> Any:
        """`encoder` fitted on the training rows, or as given when already fitted; None without categorical columns."""
        if not self.categorical:
            return encoder
        if encoder is None:
            from dltips.tabular.encoder import CategoryEncoder

            encoder = CategoryEncoder()
        if not _is_fitted(encoder):
            encoder.fit(train_columns)
        missing = [c for c in self.categorical if c not in encoder.n_categories_]
        if missing:
            raise ParamError(f"the encoder was fitted on columns {list(encoder.n_categories_)}, "
                             f"without the categorical column(s) {missing}")
        return encoder

    def _process(self, cat: dict[str, list], cont: dict[str, np.ndarray], labels: list) -> TabularDataset:
        """Encoded ids, filled and standardised continuous values (+ indicators) and targets, as tensors."""
        n = len(labels)
        ids = self._encode(cat, n)
        values, indicators = [], []
        for c in self.continuous_columns:
            standardised, missing = _standardise(cont[c], self.continuous_stats[c])
            values.append(standardised)
            if self.continuous_stats[c].has_missing:
                indicators.append(missing.astype(np.float32))
        continuous = np.stack(values + indicators, axis=1) if values else np.zeros((n, 0), dtype=np.float32)
        target = _encode_targets(self.kind, labels, self.classes, self.target)
        return TabularDataset(torch.from_numpy(ids), torch.from_numpy(continuous), target, data=self, raw=cat)

    def _encode(self, cat: dict[str, list], n: int) -> np.ndarray:
        if not self.categorical:
            return np.zeros((n, 0), dtype=np.int64)
        ids = np.asarray(self.encoder.transform(cat), dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[:, None]
        if ids.shape != (n, len(self.categorical)):
            raise ParamError(f"the encoder returned ids of shape {ids.shape}; expected ({n}, {len(self.categorical)})")
        return ids


# Helpers for TabularData ---------------------------------------------------------------------------------


def _column_names(role: str, names: Any) -> list[str]:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ParamError(f"{role} must be a list of column names, got {names!r}")
    names = list(names)
    repeated = sorted({c for c in names if names.count(c) > 1}, key=str)
    if repeated:
        raise ParamError(f"{role} lists {repeated} more than once")
    return names


def _check_roles(categorical: list[str], continuous: list[str], target: str) -> None:
    both = [c for c in categorical if c in continuous]
    if both:
        raise ParamError(f"columns {both} are listed as both categorical and continuous; pick one")
    if target in categorical or target in continuous:
        raise ParamError(f"the target {target!r} is also listed as a feature column")
    if not categorical and not continuous:
        raise ParamError("no feature columns: give at least one categorical or continuous column")


def _read_columns(table: Any, names: list[str]) -> tuple[dict[str, Any], int]:
    """{name: the table's column} for `names`, after checking that they exist and have one length."""
    if isinstance(table, Mapping):
        available = list(table)
    elif type(table).__module__.split(".")[0] == "pandas":
        if not isinstance(table, _pandas().DataFrame):
            raise ParamError(f"table must be a pandas DataFrame or a dict of columns, got a {type(table).__name__}")
        available = list(table.columns)
    else:
        raise ParamError(f"table must be a pandas DataFrame or a dict {{column: list or numpy array}}, "
                         f"got {type(table).__name__}")
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(str(name), [str(c) for c in available], n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise KeyError(f"column {name!r} is not in the table (its columns: {available}){hint}")
    columns = {name: table[name] for name in names}
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ParamError(f"the table's columns must have one length, got {lengths}")
    n_rows = next(iter(lengths.values()))
    if n_rows == 0:
        raise ParamError("the table has no rows")
    return columns, n_rows


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as error:
        raise ImportError('reading a DataFrame needs pandas: pip install "dltips[tabular]"') from error
    return pandas


def _as_list(values: Any) -> list:
    """Python values of a column (list, numpy array or pandas Series)."""
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _as_float(values: Any, what: str) -> np.ndarray:
    """Numbers as float64 with NaN for missing (None, NaN, pandas NA); raises on text or infinities."""
    try:
        if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
            array = values.astype(np.float64)
        elif hasattr(values, "to_numpy"):  # a pandas Series: pd.NA needs na_value
            array = values.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            array = np.array([np.nan if _is_missing_label(v) else v for v in _as_list(values)], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ParamError(f"{what} holds values that are not numbers ({error}); "
                         "list it as categorical or convert it first") from error
    n_inf = int(np.isinf(array).sum())
    if n_inf:
        raise ParamError(f"{what} holds {n_inf} infinite value(s); expected finite numbers or missing values (NaN/None)")
    return array


def _take(values: list, rows: np.ndarray) -> list:
    return [values[i] for i in rows.tolist()]


def _split_rows(split: Any, n_rows: int, seed: int) -> dict[str, np.ndarray]:
    """{"train", "valid"[, "test"]: row positions} from explicit rows or a validation fraction."""
    if isinstance(split, float):
        if not 0.0 < split < 1.0:
            raise ParamError(f"split as a fraction must be in (0, 1), got {split!r}")
        if n_rows < 2:
            raise ParamError(f"the table has {n_rows} row; a split needs at least 2")
        order = np.random.default_rng(seed).permutation(n_rows)
        n_valid = min(max(1, round(split * n_rows)), n_rows - 1)
        return {"train": np.sort(order[n_valid:]), "valid": np.sort(order[:n_valid])}
    if isinstance(split, (str, bytes)) or not isinstance(split, Sequence) or len(split) not in (2, 3):
        raise ParamError("split must be a validation fraction in (0, 1) or (train_rows, valid_rows[, test_rows]), "
                         f"got {split!r}")
    splits = {name: _row_positions(name, rows, n_rows) for name, rows in zip(SPLIT_NAMES, split)}
    seen: dict[int, str] = {}
    for name, rows in splits.items():
        for i in rows.tolist():
            if i in seen:
                raise ParamError(f"row {i} is in both the {seen[i]} and the {name} rows; the splits must not overlap")
            seen[i] = name
    return splits


def _row_positions(name: str, rows: Any, n_rows: int) -> np.ndarray:
    array = np.asarray(rows)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise ParamError(f"the {name} rows must be a 1-D list or array of row positions (ints), got {rows!r:.80}")
    if array.size == 0:
        raise ParamError(f"the {name} rows are empty; each split needs at least one row")
    if array.min() < -n_rows or array.max() >= n_rows:
        raise ParamError(f"the {name} rows must be positions in [0, {n_rows}), got values from "
                         f"{array.min()} to {array.max()}")
    array = array % n_rows  # negative positions count from the end, as in Python
    if len(np.unique(array)) != len(array):
        raise ParamError(f"the {name} rows list some rows more than once")
    return array.astype(np.int64)


def _fit_stats(name: str, values: np.ndarray) -> ContinuousStats:
    """Median, mean and std of a continuous column's training values (see ContinuousStats)."""
    missing = np.isnan(values)
    if missing.all():
        raise ParamError(f"continuous column {name!r} has no values in the training rows; drop it or fill it first")
    median = float(np.median(values[~missing]))
    filled = np.where(missing, median, values)
    std = float(filled.std())
    return ContinuousStats(median, float(filled.mean()), std if std > 0 else 1.0, bool(missing.any()))


def _standardise(values: np.ndarray, stats: ContinuousStats) -> tuple[np.ndarray, np.ndarray]:
    """((filled - mean) / std as float32, the missing mask)."""
    missing = np.isnan(values)
    filled = np.where(missing, stats.median, values)
    return ((filled - stats.mean) / stats.std).astype(np.float32), missing


def _check_indicator_names(names: list[str]) -> None:
    repeated = sorted({c for c in names if names.count(c) > 1}, key=str)
    if repeated:
        raise ParamError(f"the missing-value indicator column(s) {repeated} clash with continuous columns of the "
                         "same name; rename those columns")


def _is_fitted(encoder: Any) -> bool:
    """Whether `encoder` has `n_categories_` (a fitted CategoryEncoder raises RuntimeError before fit)."""
    try:
        return getattr(encoder, "n_categories_", None) is not None
    except (AttributeError, RuntimeError, ValueError):
        return False


def _is_missing_label(value: Any) -> bool:
    """None, NaN, or pandas' NA / NaT (which a Series' tolist() yields for missing entries)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return type(value).__name__ in ("NAType", "NaTType")


def _fit_classes(kind: str, labels_per_split: list[list], target: str) -> list | None:
    """The class list: None for regression; sorted labels, or range(max + 1) for integer ids."""
    if kind == "regression":
        return None
    labels = [v for split in labels_per_split for v in split]
    n_missing = sum(_is_missing_label(v) for v in labels)
    if n_missing:
        raise ParamError(f"the target {target!r} has {n_missing} missing label(s) (None/NaN); drop those rows first")
    if all(isinstance(v, str) for v in labels):
        classes = sorted(set(labels))
        if kind == "binary" and len(classes) != 2:
            raise ParamError(f"a binary target needs exactly two labels, found {len(classes)}: {classes[:10]}")
        if kind == "classification" and len(classes) < 2:
            raise ParamError(f"a classification target needs at least two classes, found {classes}")
        return classes
    if all(isinstance(v, Integral) for v in labels):  # bools are Integral too: False/True are 0/1
        ids = [int(v) for v in labels]
        if kind == "binary":
            if not set(ids) <= {0, 1}:
                raise ParamError(f"a binary target must hold 0/1 (or two strings), found {sorted(set(ids))[:10]}")
            return [0, 1]
        if min(ids) < 0:
            raise ParamError(f"integer class labels must be >= 0, found {min(ids)} in {target!r}")
        if max(ids) < 1:
            raise ParamError(f"a classification target needs at least two classes, found only {sorted(set(ids))}")
        return list(range(max(ids) + 1))
    if kind == "binary" and all(isinstance(v, float) and v in (0.0, 1.0) for v in labels):
        return [0, 1]
    kinds = sorted({type(v).__name__ for v in labels})
    raise ParamError(f"{kind} labels in {target!r} must be all strings or all integers, found types {kinds}; "
                     "convert them (floats holding class ids: .astype(int))")


def _encode_targets(kind: str, labels: list, classes: list | None, target: str) -> Tensor:
    """float32 targets for regression and binary, int64 class ids for classification."""
    if kind == "regression":
        values = _as_float(labels, f"the target {target!r}")
        if np.isnan(values).any():
            raise ParamError(f"the target {target!r} has {int(np.isnan(values).sum())} missing value(s); "
                             "drop those rows first")
        return torch.from_numpy(values.astype(np.float32))
    index = {label: i for i, label in enumerate(classes)}
    ids = []
    for v in labels:
        key = _label_key(v)
        if key not in index:
            raise ParamError(f"label {v!r} of {target!r} is not one of the classes {classes[:20]}")
        ids.append(index[key])
    dtype = torch.float32 if kind == "binary" else torch.long
    return torch.tensor(ids, dtype=dtype)


def _label_key(value: Any) -> Any:
    """A label as the classes list holds it: integers (and integral floats such as 1.0) as int, others unchanged."""
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_tabular_mixup(task: Task, *, model: nn.Module | None = None, device: str | torch.device | None = None,
                        seed: int = 0, max_items: int | None = None, deadline: Deadline | float | None = None,
                        ) -> list[Finding]:
    """What mixup means for a Task built by `TabularData` (an `info` finding); [] for other Tasks.

    Measured on the tabular demo (bench/tabular_mixup.py, 3 seeds, alpha 0.4):
    validation RMSE with mixup / without was 1.018 at 5 epochs, 0.997 at 10,
    0.991 at 20 and 0.993 at 40: mixup costs at first and pays only with
    longer training, as the tip says.

    It asks `model` (None: `task.model`) whether it mixes its embedding
    outputs, and reads no row and draws nothing: `device`, `seed`, `max_items`
    and `deadline` are validated for the common check signature and otherwise unused.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    model = task.model if model is None else instance("model", model, nn.Module, "an nn.Module or None")
    resolve_device(device, model)
    if not isinstance(task.train, TabularDataset) or task.train.data is None:
        return []
    mixes = bool(getattr(model, "mixes_embeddings", False))
    how = ("dltips.fit(task, recipe=Recipe(mixup=0.4)) mixes the continuous values and, inside the model, the "
           "embedding outputs (category ids cannot be blended)" if mixes else
           "this model takes category ids and does not mix its embedding outputs, so Mixup must not blend the "
           "ids: build it with Mixup(ids='model') and mix the embeddings in forward (see TabularModel)")
    return [Finding("mixup", "info", "Mixup on tabular rows needs longer training",
                    f"{how}. On the tabular demo mixup (alpha 0.4) gave a 1.8% worse validation RMSE after 5 "
                    "epochs, and a level or about 1% better one from 10 epochs on.",
                    fix="if you train with mixup, train for at least twice as many epochs as without",
                    evidence={"mixes_embeddings": mixes, "demo_rmse_ratio_by_epochs": {5: 1.018, 10: 0.997,
                                                                                     20: 0.991, 40: 0.993}})]
