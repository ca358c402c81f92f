"""String similarity for category spellings: normalisation, a word-by-word similarity, an n-gram index.

`normalize` maps the spellings people type for one category onto one form
(Unicode NFKC, accents stripped, case folded, dots and apostrophes dropped,
other punctuation as spaces, whitespace collapsed). `similarity` scores two
normalised spellings word by word, knowing typos and abbreviations ("st" for
"street"). `NgramIndex` finds, among thousands of known spellings, the few
worth scoring in full (character 2- and 3-gram cosine), so that fitting and
transforming stay fast.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Sequence

import torch

CANDIDATES = 20  # most similar known spellings (by n-gram cosine) compared in full
BLOCK = 0.25  # n-gram cosine below which two spellings are never compared in full
_ABBREVIATION = 0.8  # similarity of a word and its abbreviation ("st" / "street")
_MAX_ABBREVIATION = 4  # longest word taken as an abbreviation
_DROPPED = {".", "'", "\u2019", "`"}  # removed outright, so "N.Y." and "NY" meet
_DIGIT = re.compile(r"\d")


def normalize(value: str) -> str:
    """The normalised form of one spelling: NFKC, no accents, case folded, punctuation as spaces, single spaces."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", str(value)))
    out = []
    for c in text:
        if unicodedata.combining(c) or c in _DROPPED:
            continue
        out.append(" " if unicodedata.category(c)[0] in "PZC" else c)
    return " ".join("".join(out).casefold().split())


def _ngrams(text: str) -> Counter:
    padded = f" {text} "
    grams = Counter(padded[i:i + 2] for i in range(len(padded) - 1))
    grams.update(padded[i:i + 3] for i in range(len(padded) - 2))
    return grams


def edit_distance(a: str, b: str, limit: int | None = None) -> int:
    """Damerau-Levenshtein distance (optimal string alignment): swaps count as one edit.

    With `limit`, stops as soon as the distance must exceed it and returns limit + 1.
    """
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        if limit is not None and min(row) > limit and (not prev or min(prev) > limit):
            return limit + 1  # a swap reaches back two rows, so both must be past the limit
        prev2, prev = prev, row
    return prev[-1] if limit is None else min(prev[-1], limit + 1)


def _is_abbreviation(short: str, long: str) -> bool:
    """`short` abbreviates `long`: same first letter, a subsequence of it ("blvd" / "boulevard", "st" / "saint")."""
    if not short or len(short) > _MAX_ABBREVIATION or len(short) >= len(long) or short[0] != long[0]:
        return False
    rest = iter(long)
    return all(c in rest for c in short)


@functools.lru_cache(maxsize=1 << 16)  # a pure function of two words; the same pairs recur across spellings
def _word_similarity(a: str, b: str, relaxed: bool = False) -> float:
    """1 for equal words, 0.8 for a word and its abbreviation, 1 - edits/length for a typo, 0 for different words.

    A typo is at most one edit per 8 letters, plus one: "mian" / "main" is a
    typo, "south" / "north" (two edits in five letters) are different words.
    `relaxed` drops that limit (1 - edits/length, at least 0), to find pairs worth a review.
    """
    if a == b:
        return 1.0
    if _is_abbreviation(a, b) or _is_abbreviation(b, a):
        return _ABBREVIATION
    longest, allowed = max(len(a), len(b)), 1 + max(len(a), len(b)) // 8
    if not relaxed and abs(len(a) - len(b)) > allowed:  # at least that many edits: skip the table
        return 0.0
    edits = edit_distance(a, b, None if relaxed else allowed)
    return max(1.0 - edits / longest, 0.0) if relaxed or edits <= allowed else 0.0


def _numbers(words: list[str]) -> list[str]:
    return sorted(w for w in words if any(c.isdigit() for c in w))


def compact(text: str) -> str:
    """A spelling without its spaces, so that "main street" and "mainstreet" meet."""
    return text.replace(" ", "")


def first_by_compact(values: Sequence[str]) -> dict[str, int]:
    """{spelling without spaces: index of its first spelling in `values`}."""
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        first.setdefault(compact(value), i)
    return first


def similarity(a: str, b: str, relaxed: bool = False) -> float:
    """How likely two normalised spellings name the same category, in [0, 1].

    Spellings equal but for spaces score 1. Otherwise both must have the same
    number of words, every aligned pair of words must be equal, an
    abbreviation (same first letter, at most 4 letters, a subsequence: "st" /
    "street", "blvd" / "boulevard") or a typo (at most one edit per 8 letters,
    plus one; swaps count as one edit), and the score is the mean over words
    of 1, 0.8 and 1 - edits / length. A different or extra word scores 0
    ("south park drive" / "north park drive", "main street" / "north main
    street"), and so do spellings whose numbers differ ("route 1" / "route 2"),
    since a number often tells categories apart. `relaxed=True` scores a
    different word by its edit similarity instead of rejecting the pair, to
    list close pairs for a review (`CategoryEncoder.near_duplicates`).
    """
    if a == b or compact(a) == compact(b):
        return 1.0
    words_a, words_b = a.split(), b.split()
    if len(words_a) != len(words_b) or not words_a:
        return 0.0
    if (_DIGIT.search(a) or _DIGIT.search(b)) and _numbers(words_a) != _numbers(words_b):
        return 0.0
    total = 0.0
    for x, y in zip(words_a, words_b):
        score = _word_similarity(x, y, relaxed)
        if score == 0.0 and not relaxed:
            return 0.0
        total += score
    return total / len(words_a)


class NgramIndex:
    """Unit-norm n-gram vectors of known spellings, to find each query's most similar ones fast (a sparse product)."""

    def __init__(self, values: Sequence[str]):
        self.values = list(values)
        self.vocab: dict[str, int] = {}
        with warnings.catch_warnings():  # CSR is "beta" in torch; its product is 5x faster than COO's here
            warnings.simplefilter("ignore", UserWarning)
            self.matrix = self._vectors(self.values, grow=True).to_sparse_csr()

    def _vectors(self, values: Sequence[str], grow: bool = False) -> torch.Tensor:
        rows, cols, weights = [], [], []
        for i, text in enumerate(values):
            grams = _ngrams(text)
            norm = math.sqrt(sum(n * n for n in grams.values()))
            for gram, n in grams.items():
                j = self.vocab.get(gram)
                if j is None and grow:
                    j = self.vocab[gram] = len(self.vocab)
                if j is not None:
                    rows.append(i)
                    cols.append(j)
                    weights.append(n / norm)
        index = torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1)
        return torch.sparse_coo_tensor(index, torch.tensor(weights, dtype=torch.float32),
                                       (len(values), max(len(self.vocab), 1)), check_invariants=False).coalesce()

    def candidates(self, queries: Sequence[str], top: int = CANDIDATES, chunk: int = 512,
                   before: Sequence[int] | None = None) -> list[list[tuple[int, float]]]:
        """For each query, up to `top` (index, cosine) pairs of known spellings with cosine >= the blocking bound.

        With `before`, query q only gets known spellings of index < before[q]
        (the more frequent ones, when the known values are sorted by count).
        """
        out: list[list[tuple[int, float]]] = []
        if not self.values:
            return [[] for _ in queries]
        for start in range(0, len(queries), chunk):
            block = self._vectors(queries[start:start + chunk]).to_dense()
            scores = torch.sparse.mm(self.matrix, block.T).T  # (queries, known)
            if before is not None:
                limit = torch.tensor(before[start:start + chunk]).unsqueeze(1)
                scores.masked_fill_(torch.arange(scores.shape[1]).unsqueeze(0) >= limit, -1.0)
            k = min(top, scores.shape[1])
            best, where = scores.topk(k, dim=1)
            for row_best, row_where in zip(best.tolist(), where.tolist()):
                out.append([(j, s) for j, s in zip(row_where, row_best) if s >= BLOCK])
        return out
