"""A categorical encoder that survives real-world strings.

Category columns typed by people carry the same category under many spellings:
"Main Street", "main street ", "Main St.", "Mian Street". Plain ordinal or
one-hot encoding gives each spelling its own id, so the model sees several
rare categories instead of one frequent one, and a spelling first met at
inference has no id at all. `CategoryEncoder` fixes this in three steps:

1. normalise (`dltips.tabular.similarity.normalize`): Unicode NFKC, accents
   stripped, case folded, dots and apostrophes dropped ("N.Y." -> "ny"),
   other punctuation turned into spaces, whitespace collapsed;
2. merge: each spelling joins the most similar more frequent one at or
   above `threshold`, so the most frequent spelling of a group names it. The
   similarity compares word by word and knows typos and abbreviations ("st"
   for "street"); character 2- and 3-gram vectors find the candidates to
   compare, so fitting stays fast for thousands of spellings. The merges are
   a table the user can read, edit and apply back (`merges`, `apply_merges`);
3. encode: ids 0, 1 and 2 are reserved for missing values, values unknown at
   inference and rare categories (fewer than `min_count` training rows);
   fastai's Categorify folds missing and unknown into one `#na#`, which hides
   how much of the validation data the model has never seen.

`transform` never raises on a new value: it joins the most similar known
spelling when one is above the threshold, and becomes "unknown" otherwise.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dltips.core.io import atomic_write_text
from dltips.core.params import ParamError, instance, int_at_least, number
from dltips.tabular.similarity import NgramIndex, compact, first_by_compact, normalize, similarity

MISSING, UNKNOWN, RARE = 0, 1, 2
RESERVED = ("#missing", "#unknown", "#rare")
THRESHOLD = 0.8  # calibrated in bench/categoricals.py and docs/calibration.md
REVIEW_MARGIN = 0.15  # unmerged pairs this close below the threshold are shown for review
_FORMAT_VERSION = 1


def is_missing(value: Any) -> bool:
    """None, NaN, pandas' NA/NaT, and strings that are empty once normalised."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return False
    try:  # pandas.NA, numpy NaN scalars, NaT
        return bool(value != value)
    except (TypeError, ValueError):
        return False


@dataclass
class _Column:
    """What the encoder learned about one column."""

    raw_counts: dict[str, int]  # raw spelling -> training rows
    keys: dict[str, str]  # raw spelling -> normalised spelling (after synonyms)
    synonyms: dict[str, str]  # normalised spelling -> normalised canonical spelling
    counts: dict[str, int]  # normalised spelling -> training rows
    target: dict[str, str]  # normalised spelling -> the normalised spelling it was merged into (itself for a group's head)
    score: dict[str, float]  # normalised spelling -> similarity to what it was merged with (1 for heads)
    reason: dict[str, str]  # normalised spelling -> "head" | "similar" | "synonym" | "edited"
    ids: dict[str, int] = field(default_factory=dict)  # head -> id
    names: list[str] = field(default_factory=list)  # id -> display name
    missing: int = 0  # training rows with a missing value
    _index: NgramIndex | None = None  # built on the first unseen spelling, not saved
    _compact: dict[str, int] = field(default_factory=dict)

    def head(self, normalized: str) -> str:
        while self.target[normalized] != normalized:
            normalized = self.target[normalized]
        return normalized


class CategoryEncoder:
    """Encode string categories as integer ids, merging spellings of the same category (scikit-learn style).

        encoder = CategoryEncoder().fit(train_df[["city", "street"]])
        ids = encoder.transform(valid_df[["city", "street"]])   # (N, 2) int64; 0 missing, 1 unknown, 2 rare
        encoder.merges                                            # review: raw spelling -> canonical, similarity, rows

    Args:
        threshold: least similarity (see `similarity`) for a spelling to join
            another; 1.0 turns merging off (normalisation still applies).
        min_count: categories with fewer training rows share the "rare" id.
        synonyms: {spelling: canonical spelling} applied before merging, for
            what no string similarity finds ("NYC" -> "New York"). Keys and
            values are normalised; a dict of such dicts gives per-column synonyms.
        normalize_text: False keeps spellings as they are (then only exact
            repeats share an id, and merging compares raw strings).
        missing_values: extra spellings that mean "missing" (e.g. "n/a", "?"),
            compared after normalisation.

    Input: a pandas DataFrame or Series, a dict {column: values}, a list or 1-D
    array (one column) or a 2-D array / list of rows. A one-column input
    given as a Series, list or 1-D array transforms to shape (N,), anything
    else to (N, columns). Values are taken as text (`str(value)`); None, NaN
    and empty strings are missing.

    Fitted attributes: `columns_`, `categories_` ({column: display names by
    id}), `n_categories_` ({column: count including the three reserved ids},
    which is what `emb_size` takes), `last_counts_` (per column, from the last
    `transform`: rows, missing, unknown, rare, and new spellings matched to a
    known category).
    """

    def __init__(self, threshold: float = THRESHOLD, min_count: int = 1, synonyms: Mapping | None = None,
                 normalize_text: bool = True, missing_values: Iterable[str] = ()):
        self.threshold = number("threshold", threshold, 0.0, 1.0, open_low=True)
        self.min_count = int_at_least("min_count", min_count, 1)
        instance("synonyms", synonyms, (Mapping, type(None)), "a dict {spelling: canonical} or None")
        if isinstance(missing_values, str):
            raise ParamError("missing_values must be a list of strings, got one string; wrap it in a list")
        self.synonyms = dict(synonyms) if synonyms else {}
        self.normalize_text = bool(normalize_text)
        self.missing_values = tuple(str(v) for v in missing_values)

    def __repr__(self) -> str:
        synonyms = f", synonyms={self.synonyms!r}" if self.synonyms else ""
        return (f"CategoryEncoder(threshold={self.threshold}, min_count={self.min_count}{synonyms}, "
                f"normalize_text={self.normalize_text})")

    # -- scikit-learn API -------------------------------------------------------------------------------

    def fit(self, X: Any) -> CategoryEncoder:
        """Learn each column's spellings, merges and ids from training data."""
        columns, self._one_column = as_columns(X)
        self.columns_ = list(columns)
        self._state = {name: self._fit_column(name, values) for name, values in columns.items()}
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Ids (int64): 0 missing, 1 unknown, 2 rare, 3+ categories. Never raises on a new spelling."""
        columns = self._columns_like_fit(X)
        self.last_counts_ = {}
        out = [self._transform_column(name, values) for name, values in columns.items()]
        codes = np.stack(out, axis=1) if out else np.zeros((0, 0), dtype=np.int64)
        return codes[:, 0] if self._one_column and codes.shape[1] == 1 else codes

    def fit_transform(self, X: Any) -> np.ndarray:
        return self.fit(X).transform(X)

    def inverse_transform(self, codes: Any) -> list:
        """Canonical spelling per id: the display name of its category, None for missing, '#unknown' / '#rare'.

        Shape follows `transform`: a list for one column, a list of rows otherwise.
        """
        self._check_fitted()
        array = np.asarray(codes)
        if array.ndim == 1 and len(self.columns_) == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[1] != len(self.columns_):
            raise ValueError(f"codes must have shape (N, {len(self.columns_)}) (one column per fitted column), "
                             f"got {array.shape}")
        names = [self._state[c].names for c in self.columns_]
        rows = []
        for row in array.tolist():
            decoded = []
            for value, table, column in zip(row, names, self.columns_):
                if not 0 <= value < len(table):
                    raise ValueError(f"id {value} of column {column!r} is not in [0, {len(table)})")
                decoded.append(None if value == MISSING else table[value])
            rows.append(decoded)
        return [r[0] for r in rows] if len(self.columns_) == 1 and self._one_column else rows

    @property
    def categories_(self) -> dict[Any, list[str]]:
        self._check_fitted()
        return {c: list(self._state[c].names) for c in self.columns_}

    @property
    def n_categories_(self) -> dict[Any, int]:
        self._check_fitted()
        return {c: len(self._state[c].names) for c in self.columns_}

    # -- the merge table --------------------------------------------------------------------------------

    def merge_records(self) -> list[dict]:
        """One record per raw training spelling that does not stand as it is: column, raw, canonical, similarity,
        rows (of this spelling), canonical_rows (of its whole category) and reason."""
        self._check_fitted()
        records = []
        for column in self.columns_:
            state = self._state[column]
            totals = self._group_totals(state)
            for raw, rows in sorted(state.raw_counts.items(), key=lambda kv: (-kv[1], kv[0])):
                key = state.keys[raw]
                head = state.head(key)
                canonical = state.names[state.ids[head]] if head in state.ids else RESERVED[RARE]
                if canonical == raw:
                    continue
                if head not in state.ids:
                    reason = "rare"
                elif key != head:
                    reason = state.reason[key]
                elif key != self._plain_key(raw):
                    reason = "synonym"
                else:
                    reason = "normalized"
                records.append({"column": column, "raw": raw, "canonical": canonical,
                                "similarity": round(state.score[key], 4), "rows": rows,
                                "canonical_rows": totals[head], "reason": reason})
        return records

    @property
    def merges(self):
        """The merge table as a pandas DataFrame (see `merge_records`); edit `canonical` and pass it to `apply_merges`."""
        pd = _pandas()
        return pd.DataFrame(self.merge_records(), columns=["column", "raw", "canonical", "similarity", "rows",
                                                          "canonical_rows", "reason"])

    def apply_merges(self, table: Any) -> CategoryEncoder:
        """Apply an edited merge table: each row's `raw` spelling now maps to its `canonical` spelling.

        `table` is a DataFrame or a list of records with `column`, `raw` and
        `canonical` (as given by `merges`). Set `canonical` to the raw spelling
        itself to undo a merge; to another spelling to merge by hand. Ids are
        rebuilt, so fit the model after editing, not before.
        """
        self._check_fitted()
        records = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
        for record in records:
            for name in ("column", "raw", "canonical"):
                if name not in record:
                    raise ValueError(f"each merge record needs 'column', 'raw' and 'canonical'; {record!r} has no {name!r}")
            column = record["column"]
            if column not in self._state:
                raise ValueError(f"merge record for unknown column {column!r}; the encoder has {self.columns_}")
            state = self._state[column]
            key = state.keys.get(str(record["raw"]), self._key(str(record["raw"]), state.synonyms))
            goal = state.keys.get(str(record["canonical"]), self._key(str(record["canonical"]), state.synonyms))
            if key not in state.counts:
                raise ValueError(f"column {column!r} has no training spelling {record['raw']!r} (normalised {key!r})")
            if goal == key:
                if state.target[key] != key:
                    state.target[key], state.score[key], state.reason[key] = key, 1.0, "edited"
                continue
            goal = self._known_key(state, goal, record["canonical"], column)
            if state.head(goal) == key:  # merging a head into its own member: the member becomes the head
                state.target[goal] = goal
            state.target[key], state.score[key], state.reason[key] = goal, similarity(key, goal), "edited"
        for state in self._state.values():
            self._assign_ids(state)
        return self

    # -- what the check reads ----------------------------------------------------------------------------

    def spelling_counts(self) -> dict[Any, dict[str, int]]:
        """Per fitted column: distinct raw spellings, distinct normalised ones, categories with an id after
        merging (reserved ids left out), training rows missing and all training rows."""
        self._check_fitted()
        counts = {}
        for column in self.columns_:
            state = self._state[column]
            counts[column] = {"raw": len(state.raw_counts), "normalized": len(state.counts),
                              "merged": len(state.names) - len(RESERVED), "missing": state.missing,
                              "rows": state.missing + sum(state.raw_counts.values())}
        return counts

    def describe(self, X: Any) -> dict[Any, dict]:
        """Per column: rows, missing, unknown, rare and matched (new spellings joined to a known category)."""
        self.transform(X)
        return {c: dict(v) for c, v in self.last_counts_.items()}

    def near_duplicates(self, margin: float = REVIEW_MARGIN) -> list[dict]:
        """Pairs of categories kept apart whose names are close: relaxed similarity (see `similarity`) within
        `margin` below the threshold or above it ("South Park Drive" / "North Park Drive")."""
        self._check_fitted()
        pairs = []
        for column in self.columns_:
            state = self._state[column]
            heads = [h for h in state.ids]
            index = NgramIndex(heads)
            for i, found in enumerate(index.candidates(heads)):
                for j, _ in found:
                    if j <= i:
                        continue
                    score = similarity(heads[i], heads[j], relaxed=True)
                    if self.threshold - margin <= score and similarity(heads[i], heads[j]) < self.threshold:
                        pairs.append({"column": column, "a": state.names[state.ids[heads[i]]],
                                      "b": state.names[state.ids[heads[j]]], "similarity": round(score, 4)})
        return sorted(pairs, key=lambda p: -p["similarity"])

    # -- persistence -------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted encoder as JSON (atomically): settings, counts, merges and ids."""
        self._check_fitted()
        columns = []
        for name in self.columns_:
            s = self._state[name]
            columns.append({"name": name, "raw_counts": s.raw_counts, "keys": s.keys, "synonyms": s.synonyms,
                            "counts": s.counts, "target": s.target,
                            "score": s.score, "reason": s.reason, "names": s.names, "missing": s.missing})
        doc = {"format": "dltips.CategoryEncoder", "version": _FORMAT_VERSION, "threshold": self.threshold,
               "min_count": self.min_count, "synonyms": self.synonyms, "normalize_text": self.normalize_text,
               "missing_values": list(self.missing_values), "one_column": self._one_column, "columns": columns}
        atomic_write_text(path, json.dumps(doc, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CategoryEncoder:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("format") != "dltips.CategoryEncoder" or doc.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{os.fspath(path)!r} is not a saved CategoryEncoder (version {_FORMAT_VERSION})")
        encoder = cls(doc["threshold"], doc["min_count"], doc["synonyms"], doc["normalize_text"], doc["missing_values"])
        encoder._one_column = doc["one_column"]
        encoder.columns_, encoder._state = [], {}
        for c in doc["columns"]:
            state = _Column(c["raw_counts"], c["keys"], c["synonyms"], c["counts"], c["target"], c["score"],
                            c["reason"], missing=c["missing"])
            encoder._assign_ids(state)
            if state.names != c["names"]:
                raise ValueError(f"{os.fspath(path)!r}: the ids of column {c['name']!r} do not rebuild as saved")
            encoder.columns_.append(c["name"])
            encoder._state[c["name"]] = state
        return encoder

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if "_state" in state:
            state["_state"] = {k: _Column(**{**v.__dict__, "_index": None, "_compact": {}})
                               for k, v in state["_state"].items()}
        return state

    # -- internals ---------------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "_state"):
            raise RuntimeError("this CategoryEncoder is not fitted yet; call fit(X) first")

    def _plain_key(self, raw: str) -> str:
        return normalize(raw) if self.normalize_text else raw

    def _key(self, raw: str, synonyms: Mapping[str, str]) -> str:
        key = self._plain_key(raw)
        return synonyms.get(key, key)

    def _synonyms_for(self, column: Any) -> dict[str, str]:
        """{normalised spelling: normalised canonical} for one column (per-column synonyms when given so)."""
        table = self.synonyms
        if table and all(isinstance(v, Mapping) for v in table.values()):
            table = table.get(column, {})
        return {self._plain_key(str(k)): self._plain_key(str(v)) for k, v in table.items()}

    @functools.cached_property
    def _missing_keys(self) -> frozenset[str]:
        return frozenset(normalize(v) for v in self.missing_values)

    def _is_missing_text(self, raw: str) -> bool:
        key = normalize(raw)
        return key == "" or key in self._missing_keys

    def _known_key(self, state: _Column, goal: str, spelling: Any, column: Any) -> str:
        if goal in state.counts:
            return goal
        raise ValueError(f"column {column!r}: canonical {spelling!r} (normalised {goal!r}) is not a training spelling; "
                         "merge into one of the spellings listed in `merges` or `categories_`")

    def _fit_column(self, column: Any, values: list) -> _Column:
        raw_counts = Counter(str(value) for value in values if not is_missing(value))
        for raw in [raw for raw in raw_counts if self._is_missing_text(raw)]:  # each distinct spelling once
            del raw_counts[raw]
        missing = len(values) - sum(raw_counts.values())
        synonyms = self._synonyms_for(column)
        keys = {raw: self._key(raw, synonyms) for raw in raw_counts}
        counts: Counter = Counter()
        for raw, n in raw_counts.items():
            counts[keys[raw]] += n
        order = sorted(counts, key=lambda k: (-counts[k], k))  # frequent spellings first: they become the heads
        state = _Column(dict(raw_counts), keys, synonyms, dict(counts), {}, {}, {}, missing=missing)
        merging = self.threshold < 1.0
        # each spelling may join a more frequent one (earlier in `order`), never a rarer one
        found = NgramIndex(order).candidates(order, before=range(len(order))) if merging else [[] for _ in order]
        first = first_by_compact(order)
        for i, key in enumerate(order):
            state.target[key], state.score[key], state.reason[key] = key, 1.0, "head"
            same = first[compact(key)] if merging else i
            if same != i:  # equal but for spaces: n-grams across the spaces may hide it
                state.target[key], state.score[key], state.reason[key] = order[same], 1.0, "similar"
                continue
            best, best_score = _best_match(key, found[i], order, self.threshold)
            if best is not None:
                state.target[key], state.score[key], state.reason[key] = order[best], best_score, "similar"
        self._assign_ids(state)
        return state

    def _group_totals(self, state: _Column) -> Counter:
        totals: Counter = Counter()
        for key, n in state.counts.items():
            totals[state.head(key)] += n
        return totals

    def _assign_ids(self, state: _Column) -> None:
        """Ids by decreasing group size; the display name of a group is its most frequent raw spelling."""
        totals = self._group_totals(state)
        spelling: dict[str, tuple[int, str]] = {}
        for raw, n in state.raw_counts.items():
            head = state.head(state.keys[raw])
            best = spelling.get(head)
            if best is None or n > best[0] or (n == best[0] and raw < best[1]):
                spelling[head] = (n, raw)
        heads = sorted((h for h, n in totals.items() if n >= self.min_count), key=lambda h: (-totals[h], h))
        state.ids = {h: i + len(RESERVED) for i, h in enumerate(heads)}
        state.names = list(RESERVED) + [spelling[h][1] for h in heads]
        state._index = None

    def _columns_like_fit(self, X: Any) -> dict:
        self._check_fitted()
        columns, _ = as_columns(X)
        names = list(columns)
        if names != self.columns_:
            if len(names) == len(self.columns_) and all(isinstance(n, int) for n in names):
                return dict(zip(self.columns_, columns.values()))  # positional input for named columns
            raise ValueError(f"X has columns {names}; this encoder was fitted on {self.columns_}")
        return columns

    def _transform_column(self, column: Any, values: list) -> np.ndarray:
        state = self._state[column]
        raws = [None if is_missing(value) else str(value) for value in values]
        code_of: dict[str | None, int] = {None: MISSING}
        new: list[str] = []
        for raw in dict.fromkeys(raws):  # each distinct spelling once
            if raw in code_of:
                continue
            key = state.keys.get(raw)  # a training spelling: never missing
            if key is None:
                if self._is_missing_text(raw):
                    code_of[raw] = MISSING
                    continue
                key = self._key(raw, state.synonyms)
            if key in state.target:
                code_of[raw] = self._known_code(state, key)
            else:
                new.append(raw)
        for raw, code in zip(new, self._match_new(state, [self._key(r, state.synonyms) for r in new])):
            code_of[raw] = code
        codes = np.fromiter((code_of[raw] for raw in raws), dtype=np.int64, count=len(raws))
        matched = {raw for raw in new if code_of[raw] != UNKNOWN}
        self.last_counts_[column] = {"rows": len(values), "missing": int((codes == MISSING).sum()),
                                     "unknown": int((codes == UNKNOWN).sum()), "rare": int((codes == RARE).sum()),
                                     "matched": sum(raw in matched for raw in raws)}
        return codes

    def _known_code(self, state: _Column, key: str) -> int:
        return state.ids.get(state.head(key), RARE)

    def _match_new(self, state: _Column, keys: list[str]) -> list[int]:
        """Ids for spellings not seen in training: the most similar known spelling's, or UNKNOWN."""
        if self.threshold >= 1.0:
            return [UNKNOWN] * len(keys)
        if state._index is None:
            state._index = NgramIndex(sorted(state.counts, key=lambda k: (-state.counts[k], k)))
            state._compact = first_by_compact(state._index.values)
        index = state._index
        codes = []
        for key, found in zip(keys, index.candidates(keys)):
            if compact(key) in state._compact:
                codes.append(self._known_code(state, index.values[state._compact[compact(key)]]))
                continue
            best, _ = _best_match(key, found, index.values, self.threshold)
            codes.append(UNKNOWN if best is None else self._known_code(state, index.values[best]))
        return codes


def _pandas():
    try:
        import pandas
    except ImportError as error:
        raise ImportError('the merge table is a pandas DataFrame: pip install "dltips[tabular]" '
                          "(or use encoder.merge_records() for plain records)") from error
    return pandas


def _best_match(key: str, candidates: Iterable[tuple[int, Any]], values: Sequence[str],
                threshold: float) -> tuple[int | None, float]:
    """The candidate most similar to `key` at or above `threshold`, and its score; ties go to the
    lowest position, the most frequent spelling (values are sorted by count), in fit and transform alike."""
    best, best_score = None, threshold
    for j, _ in candidates:
        score = similarity(key, values[j])
        if score >= best_score and (best is None or score > best_score or j < best):
            best, best_score = j, score
    return best, best_score


def as_columns(X: Any) -> tuple[dict, bool]:
    """({column name: list of values}, whether the input was a single column given as a 1-D thing)."""
    if hasattr(X, "columns") and hasattr(X, "to_dict"):  # a pandas DataFrame
        return {name: X[name].tolist() for name in X.columns}, False
    if hasattr(X, "to_list") and hasattr(X, "name"):  # a pandas Series
        return {X.name if X.name is not None else 0: X.to_list()}, True
    if isinstance(X, Mapping):
        if not X:
            raise ValueError("X is an empty dict; expected {column: values}")
        columns = {name: list(values) for name, values in X.items()}
        lengths = {name: len(v) for name, v in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"all columns must have the same length, got {lengths}")
        return columns, False
    if isinstance(X, str):
        raise TypeError("X is one string; expected a column of values (a list, array, Series or DataFrame)")
    if isinstance(X, np.ndarray):
        if X.ndim == 1:
            return {0: X.tolist()}, True
        if X.ndim == 2:
            return {j: X[:, j].tolist() for j in range(X.shape[1])}, False
        raise ValueError(f"X must be 1-D (one column) or 2-D (rows x columns), got an array of shape {X.shape}")
    if isinstance(X, Sequence) or isinstance(X, Iterable):
        values = list(X)
        if values and all(isinstance(v, (list, tuple)) for v in values):
            widths = {len(v) for v in values}
            if len(widths) != 1:
                raise ValueError(f"rows of X have different lengths {sorted(widths)}; expected a rectangular table")
            return {j: [row[j] for row in values] for j in range(widths.pop())}, False
        return {0: values}, True
    raise TypeError(f"X must be a DataFrame, Series, dict of columns, list or array, got {type(X).__name__}")
