"""Quality of `dltips.tabular.encoder.CategoryEncoder` on dirty categories with a known clean truth.

Run:
    python bench/categoricals.py              # full run: K=100 names, N=20000 rows, p=0.05 (about 2 minutes)
    python bench/categoricals.py --quick      # smaller data, fewer epochs (about 20 s)
    python bench/categoricals.py --self-check # asserts on the metric functions, then exits

Targets at p=0.05 (the default data): merge precision >= 0.95 and merge recall >= 0.8.

Data. K clean names (street-, company- and city-like, 1-3 words, sharing words, with a few close but
distinct pairs such as "Main Street" / "Mill Street" or "Route 1" / "Route 2" so that false merges are
possible), Zipf-like frequencies, N rows. Each row's raw string is its clean name with, independently:
common words abbreviated (Street -> St., Avenue -> Ave, Saint -> St., Company -> Co., ...), typos at a
per-letter rate p (each letter: swap with the next, drop, double or replace), a case variant, a whitespace
variant and a punctuation variant. The clean name is the truth of the row.

Metrics, over distinct raw spellings (a spelling's truth and code are those of most of its rows):
  merge precision  among spellings that share a code with another spelling, the fraction whose code's
                   majority truth (row-weighted) is their own truth;
  merge recall     among spellings whose truth has other spellings, leaving out the truth's most frequent
                   spelling, the fraction given the code of that most frequent spelling;
  pairwise P/R/F1  over pairs of distinct spellings: same code against same truth;
  rows P / rows R  the two merge metrics with each spelling weighted by its number of rows;
  cardinality      distinct raw spellings, distinct codes, true K.
Plain ordinal encoding (one code per raw spelling) has recall 0 and no shared code (precision "-").

Sections:
  1. the encoder (min_count=1, so that rare grouping stays out of merge quality) against ordinal encoding
     on the default data, with fit times (median of 3; one call when it takes over 5 s), examples of false
     and missed merges, and a sweep over p in (0, 0.02, 0.05, 0.1);
  2. side by side with `skrub.deduplicate` on the first --skrub-rows rows (its default picks the number
     of clusters by silhouette over every cut, cubic in the distinct spellings, hence the subset), also
     given the true number of categories;
  3. downstream: a binary target from the clean category and 3 numeric features, rows split 60/20/20,
     encoders fitted on the training rows only (the validation rows hold spellings never seen in training);
     `dltips.TabularModel` trained by the same small AdamW loop on (a) the encoder's codes, (b) ordinal
     codes of the raw strings (unseen -> one unknown id), (c) the clean truth (upper bound); validation
     accuracy, median over 3 seeds. Also how the validation rows with unseen spellings were coded, and how
     often `inverse_transform` gives exactly the clean name.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dltips.tabular.embeddings import emb_sizes
from dltips.tabular.encoder import CategoryEncoder
from dltips.tabular.model import TabularModel

SLOW = 5.0  # seconds: a method slower than this is timed once

# ----------------------------------------------------------------------------- data

DIRECTIONS = ["North", "South", "East", "West"]
STREET_WORDS = ["Park", "Hill", "Mill", "Main", "Oak", "Elm", "Church", "Station", "Bridge", "Lake", "River", "Market",
                "King", "Queen", "High", "Green", "Victoria", "Cedar", "Maple", "Forest", "Meadow", "Spring", "Union",
                "Garden", "Willow", "Chestnut", "Harbor", "Mountain", "Valley", "Washington", "Lincoln", "Jefferson"]
STREET_TYPES = ["Street", "Avenue", "Road", "Drive", "Lane", "Way", "Place", "Court", "Boulevard"]
COMPANY_WORDS = ["Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Tyrell", "Cyberdyne", "Soylent", "Hooli",
                 "Vandelay", "Wonka", "Oscorp", "Gringotts", "Monarch", "Dunder", "Pied Piper", "Blue Sun"]
COMPANY_TYPES = ["Company", "Incorporated", "Holdings", "Group", "Labs", "Systems", "Trading Company"]
CITY_WORDS = ["Springfield", "Riverside", "Fairview", "Georgetown", "Franklin", "Clinton", "Greenville", "Bristol",
              "Salem", "Madison", "Arlington", "Ashland", "Dover", "Milton", "Oxford", "Winchester"]
SAINTS = ["Louis", "Paul", "Peter", "Mary", "Albans", "Helens", "Ives", "Andrews"]
CLOSE_NAMES = ["Main Street", "Mill Street", "Route 1", "Route 2", "Route 12", "Park Road", "Park Lane",
               "North Park Drive", "South Park Drive", "North Hill Road", "Park Street", "Saint Paul", "Saint Peter",
               "Oak Avenue", "Oak Street", "Acme Company", "Acme Incorporated", "Lake View", "Lake Drive"]
ABBREVIATIONS = {"Street": "St.", "Avenue": "Ave", "Road": "Rd", "North": "N.", "South": "S.", "Saint": "St.",
                 "Company": "Co.", "Incorporated": "Inc.", "Drive": "Dr.", "Boulevard": "Blvd"}


def _pick(rng: np.random.Generator, words: Sequence[str]) -> str:
    return words[int(rng.integers(len(words)))]


def make_name(rng: np.random.Generator) -> str:
    """One clean name: street-, company-, city- or route-like, 1-3 words."""
    kind = rng.choice(["street", "directed street", "company", "city", "saint", "route"], p=[0.35, 0.2, 0.15, 0.12, 0.1, 0.08])
    if kind == "street":
        return f"{_pick(rng, STREET_WORDS)} {_pick(rng, STREET_TYPES)}"
    if kind == "directed street":
        return f"{_pick(rng, DIRECTIONS)} {_pick(rng, STREET_WORDS)} {_pick(rng, STREET_TYPES)}"
    if kind == "company":
        return f"{_pick(rng, COMPANY_WORDS)} {_pick(rng, COMPANY_TYPES)}"
    if kind == "city":
        return _pick(rng, CITY_WORDS)
    if kind == "saint":
        return f"Saint {_pick(rng, SAINTS)}"
    return f"Route {int(rng.integers(1, 100))}"


def make_names(k: int, rng: np.random.Generator) -> list[str]:
    """K distinct clean names: the close pairs first, then random ones."""
    names = list(dict.fromkeys(CLOSE_NAMES[: max(k // 5, 2)]))
    seen = set(names)
    while len(names) < k:
        name = make_name(rng)
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def typos(text: str, p: float, rng: np.random.Generator) -> str:
    """Each letter independently, with probability p: swap with the next, drop, double or replace."""
    chars = list(text)
    out: list[str] = []
    i = 0
    while i < len(chars):
        c = chars[i]
        if not c.isalpha() or rng.random() >= p:
            out.append(c)
            i += 1
            continue
        op = int(rng.integers(4))
        if op == 0 and i + 1 < len(chars):  # swap with the next
            out.extend([chars[i + 1], c])
            i += 2
            continue
        if op == 1:  # drop
            pass
        elif op == 2:  # double
            out.extend([c, c])
        else:  # replace, keeping the case
            r = chr(ord("a") + int(rng.integers(26)))
            out.append(r.upper() if c.isupper() else r)
        i += 1
    return "".join(out)


def abbreviate(text: str, rng: np.random.Generator) -> str:
    """Each word with an abbreviation in ABBREVIATIONS abbreviated with probability 0.7."""
    return " ".join(ABBREVIATIONS[w] if w in ABBREVIATIONS and rng.random() < 0.7 else w for w in text.split(" "))


def case_variant(text: str, rng: np.random.Generator) -> str:
    op = int(rng.integers(3))
    if op == 0:
        return text.upper()
    if op == 1:
        return text.lower()
    return " ".join(w[:1].lower() + w[1:] if rng.random() < 0.5 else w for w in text.split(" "))


def whitespace_variant(text: str, rng: np.random.Generator) -> str:
    op = int(rng.integers(4))
    if op == 0:
        return " " + text + " "
    if op == 1:
        return text.replace(" ", "  ", 1)
    if op == 2:
        return text + "  "
    return text.replace(" ", "\t", 1) if " " in text else " " + text


def punctuation_variant(text: str, rng: np.random.Generator) -> str:
    op = int(rng.integers(4))
    if op == 0 and "." in text:
        return text.replace(".", "")
    if op == 1:
        return text + "."
    if op == 2 and " " in text:
        return text.replace(" ", ", ", 1)
    return text.replace(" ", "-", 1) if " " in text else text + ","


@dataclass
class Noise:
    p: float = 0.05  # per-letter typo rate
    case: float = 0.1
    whitespace: float = 0.1
    punctuation: float = 0.1
    abbreviation: float = 0.1


def corrupt(name: str, noise: Noise, rng: np.random.Generator) -> str:
    text = name
    if rng.random() < noise.abbreviation:
        text = abbreviate(text, rng)
    text = typos(text, noise.p, rng)
    if rng.random() < noise.case:
        text = case_variant(text, rng)
    if rng.random() < noise.whitespace:
        text = whitespace_variant(text, rng)
    if rng.random() < noise.punctuation:
        text = punctuation_variant(text, rng)
    return text


@dataclass
class Dataset:
    raw: list[str]  # (N,) dirty strings
    truth: np.ndarray  # (N,) int64 index into names
    names: list[str]  # (K,) clean names
    numeric: np.ndarray  # (N, 3) float32 features
    target: np.ndarray  # (N,) int64 binary label


def make_dataset(k: int, n: int, noise: Noise, seed: int, zipf: float = 1.0) -> Dataset:
    """K names, Zipf-like frequencies (ranks shuffled), N rows, and a binary target from the name and 3 numbers."""
    rng = np.random.default_rng(seed)
    names = make_names(k, rng)
    weights = 1.0 / np.arange(1, k + 1) ** zipf
    weights = weights[rng.permutation(k)]
    truth = rng.choice(k, size=n, p=weights / weights.sum())
    raw = [corrupt(names[t], noise, rng) for t in truth]
    numeric = rng.standard_normal((n, 3)).astype(np.float32)
    effect = 1.5 * rng.standard_normal(k)
    score = effect[truth] + numeric[:, 0] - 0.5 * numeric[:, 1] + 0.5 * numeric[:, 0] * numeric[:, 2]
    target = (score + 0.3 * rng.standard_normal(n) > 0).astype(np.int64)
    return Dataset(raw, truth.astype(np.int64), names, numeric, target)


# ----------------------------------------------------------------------------- metrics


def _majority(keys: Sequence, values: Sequence) -> dict:
    """For each key, its most frequent value (ties: the smallest)."""
    counts: dict = {}
    for key, value in zip(keys, values):
        counts.setdefault(key, Counter())[value] += 1
    return {key: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for key, c in counts.items()}


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def _pairs(sizes: Sequence[int] | np.ndarray) -> int:
    return int(sum(s * (s - 1) // 2 for s in sizes))


def merge_metrics(raw: Sequence[str], truth: Sequence[int], codes: Sequence[int]) -> dict[str, float]:
    """Merge precision/recall (per spelling and row-weighted), pairwise P/R/F1 and cardinalities; nan when undefined."""
    rows = Counter(raw)
    spelling_truth = _majority(raw, truth)
    spelling_code = _majority(raw, codes)
    code_truth = _majority(codes, truth)  # row-weighted majority truth of each code
    spellings = list(rows)
    per_code = Counter(spelling_code[s] for s in spellings)
    per_truth = Counter(spelling_truth[s] for s in spellings)
    head: dict = {}  # truth -> its most frequent spelling
    for s in spellings:
        t = spelling_truth[s]
        if t not in head or (rows[s], s) > (rows[head[t]], head[t]):
            head[t] = s

    merged = [s for s in spellings if per_code[spelling_code[s]] > 1]
    right = [s for s in merged if code_truth[spelling_code[s]] == spelling_truth[s]]
    variants = [s for s in spellings if per_truth[spelling_truth[s]] > 1 and head[spelling_truth[s]] != s]
    found = [s for s in variants if spelling_code[s] == spelling_code[head[spelling_truth[s]]]]

    both = Counter((spelling_code[s], spelling_truth[s]) for s in spellings)
    tp, same_code, same_truth = _pairs(list(both.values())), _pairs(list(per_code.values())), _pairs(list(per_truth.values()))
    pair_p, pair_r = _ratio(tp, same_code), _ratio(tp, same_truth)
    return {
        "precision": _ratio(len(right), len(merged)),
        "recall": _ratio(len(found), len(variants)),
        "pair_p": pair_p,
        "pair_r": pair_r,
        "pair_f1": _ratio(2 * pair_p * pair_r, pair_p + pair_r) if tp > 0 else (0.0 if same_truth > 0 else float("nan")),
        "rows_p": _ratio(sum(rows[s] for s in right), sum(rows[s] for s in merged)),
        "rows_r": _ratio(sum(rows[s] for s in found), sum(rows[s] for s in variants)),
        "spellings": len(spellings),
        "codes": len(set(spelling_code.values())),
        "k": len(set(spelling_truth.values())),
    }


def self_check() -> None:
    """The metric functions on mappings whose answer is known."""
    data = make_dataset(40, 4000, Noise(p=0.05), seed=1)
    perfect = merge_metrics(data.raw, data.truth, data.truth)
    assert perfect["precision"] == perfect["recall"] == perfect["pair_p"] == perfect["pair_r"] == 1.0, perfect
    assert perfect["rows_p"] == perfect["rows_r"] == 1.0 and perfect["codes"] == perfect["k"] == 40, perfect
    everything = merge_metrics(data.raw, data.truth, [0] * len(data.raw))
    assert everything["recall"] == 1.0 and everything["precision"] < 0.2 and everything["pair_p"] < 0.2, everything
    ordinal = merge_metrics(data.raw, data.truth, ordinal_codes(data.raw))
    assert ordinal["recall"] == 0.0 and np.isnan(ordinal["precision"]) and np.isnan(ordinal["pair_p"]), ordinal
    assert ordinal["codes"] == ordinal["spellings"] > 40, ordinal
    # Two names merged into one code: the spellings of the one with fewer rows are the only wrong ones.
    a, b = 0, 1
    two = merge_metrics(data.raw, data.truth, np.where(data.truth == b, a, data.truth))
    spellings_of = [{s for s, t in zip(data.raw, data.truth) if t == name} for name in range(40)]
    minority = b if (data.truth == b).sum() < (data.truth == a).sum() else a
    shared = sum(len(group) for name, group in enumerate(spellings_of) if len(group) > 1 or name in (a, b))
    assert two["recall"] == 1.0 and two["codes"] == 39, two
    assert abs(two["precision"] - (1 - len(spellings_of[minority]) / shared)) < 1e-12, (two, shared)
    print("self-check passed: perfect mapping P=R=1, one code for everything "
          f"P={everything['precision']:.3f} pairwise P={everything['pair_p']:.3f}, ordinal R=0 and P undefined, "
          f"two names merged P={two['precision']:.3f}")


# ----------------------------------------------------------------------------- encoders


def ordinal_codes(raw: Sequence[str]) -> np.ndarray:
    """One code per distinct raw string, no normalisation."""
    index: dict[str, int] = {}
    return np.array([index.setdefault(s, len(index)) for s in raw], dtype=np.int64)


ENCODER_OPTIONS: dict[str, float] = {}  # extra CategoryEncoder arguments (--threshold)


def make_encoder() -> CategoryEncoder:
    return CategoryEncoder(min_count=1, **ENCODER_OPTIONS)


def encoder_codes(raw: Sequence[str]) -> np.ndarray:
    return np.asarray(make_encoder().fit_transform(list(raw)), dtype=np.int64)


def skrub_codes(raw: Sequence[str], n_clusters: int | None = None) -> np.ndarray:
    import skrub

    return ordinal_codes(skrub.deduplicate(list(raw), n_clusters=n_clusters))


def skrub_available() -> bool:
    try:
        import skrub  # noqa: F401
    except ImportError:
        print('skrub is not installed: pip install "dltips[bench]" to compare with skrub.deduplicate; skipped')
        return False
    return True


def timed(method: Callable[[Sequence[str]], np.ndarray], raw: Sequence[str], repeats: int) -> tuple[np.ndarray, float]:
    """The codes of method(raw) and its median time over `repeats` calls (one call when it takes over SLOW s)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = method(raw)
        times.append(time.perf_counter() - start)
        if times[-1] > SLOW:
            break
    return result, statistics.median(times)


# ----------------------------------------------------------------------------- tables


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


HEADER = (f"{'':<26} {'merge P':>8} {'merge R':>8} {'rows P':>7} {'rows R':>7} {'pair P':>7} {'pair R':>7} {'pair F1':>7} "
          f"{'spellings':>9} {'codes':>6} {'K':>4} {'fit s':>7}")


def row(label: str, m: dict[str, float], seconds: float) -> str:
    return (f"{label:<26} {_fmt(m['precision']):>8} {_fmt(m['recall']):>8} {_fmt(m['rows_p']):>7} {_fmt(m['rows_r']):>7} "
            f"{_fmt(m['pair_p']):>7} {_fmt(m['pair_r']):>7} {_fmt(m['pair_f1']):>7} {m['spellings']:>9} {m['codes']:>6} "
            f"{m['k']:>4} {seconds:>7.3f}")


def quality_table(data: Dataset, methods: dict[str, Callable[[Sequence[str]], np.ndarray]], repeats: int,
                  prefix: str = "", header: bool = True) -> dict[str, tuple[np.ndarray, float]]:
    """Prints one row of metrics per method; returns {label: (codes, seconds)}."""
    if header:
        print(prefix + HEADER)
    results = {}
    for label, method in methods.items():
        codes, seconds = timed(method, data.raw, repeats)
        results[label] = codes, seconds
        print(prefix + row(label, merge_metrics(data.raw, data.truth, codes), seconds))
    return results


def show_errors(data: Dataset, codes: np.ndarray, limit: int) -> None:
    """Examples of false merges (spellings of two names in one code) and missed merges (a name split in several codes)."""
    rows = Counter(data.raw)
    spelling_truth = _majority(data.raw, data.truth)
    spelling_code = _majority(data.raw, codes)
    code_truth = _majority(codes, data.truth)
    false = sorted(((rows[s], s, data.names[t], data.names[code_truth[spelling_code[s]]]) for s, t in spelling_truth.items()
                    if code_truth[spelling_code[s]] != t), reverse=True)
    print(f"  false merges: {len(false)} spellings in a code whose majority is another name; the most frequent:")
    for count, s, name, other in false[:limit]:
        print(f"    {s!r:<28} ({count} rows) truth {name!r:<24} merged into {other!r}")
    codes_of: dict[int, Counter] = {}
    for s, t in spelling_truth.items():
        codes_of.setdefault(t, Counter())[spelling_code[s]] += rows[s]
    split = sorted(((sum(c.values()) - max(c.values()), t, c) for t, c in codes_of.items() if len(c) > 1), reverse=True)
    print(f"  missed merges: {len(split)} names split across several codes; the most rows outside the main code:")
    for outside, t, c in split[:limit]:
        main = max(c, key=c.get)
        stray = sorted(((rows[s], s) for s, u in spelling_truth.items() if u == t and spelling_code[s] != main), reverse=True)
        examples = ", ".join(f"{s!r} ({n})" for n, s in stray[:4])
        print(f"    {data.names[t]!r:<24} {outside:>4} of {sum(c.values())} rows outside its main code: {examples}")


# ----------------------------------------------------------------------------- downstream


def train_and_score(codes: np.ndarray, n_codes: int, data: Dataset, split: dict[str, np.ndarray], seed: int,
                    epochs: int) -> float:
    """Validation accuracy of a TabularModel trained on one categorical column of codes and the numeric features."""
    torch.manual_seed(seed)
    tr, va = split["train"], split["valid"]
    mean, std = data.numeric[tr].mean(0), data.numeric[tr].std(0)
    cont = torch.from_numpy((data.numeric - mean) / std).float()
    cat = torch.from_numpy(codes).long()[:, None]
    y = torch.from_numpy(data.target)
    model = TabularModel(emb_sizes({"category": n_codes}), 3, 2, hidden=(200, 100), dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    g = torch.Generator().manual_seed(seed)
    batch = 256
    train_idx = torch.from_numpy(tr)
    for _ in range(epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        for start in range(0, len(order), batch):
            i = order[start:start + batch]
            if len(i) < 2:
                continue
            loss = F.cross_entropy(model({"categorical": cat[i], "continuous": cont[i]}), y[i])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        v = torch.from_numpy(va)
        pred = model({"categorical": cat[v], "continuous": cont[v]}).argmax(1)
    return float((pred == y[v]).float().mean())


def split_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    a, b = int(0.6 * n), int(0.8 * n)
    return {"train": np.sort(order[:a]), "valid": np.sort(order[a:b]), "test": np.sort(order[b:])}


def ordinal_fit_apply(raw: Sequence[str], train: np.ndarray) -> tuple[np.ndarray, int]:
    """Codes 1.. for the spellings of the training rows, 0 for any other spelling."""
    index: dict[str, int] = {}
    for i in train:
        index.setdefault(raw[i], len(index) + 1)
    return np.array([index.get(s, 0) for s in raw], dtype=np.int64), len(index) + 1


def encoder_fit_apply(raw: Sequence[str], train: np.ndarray) -> tuple[np.ndarray, int, CategoryEncoder]:
    """CategoryEncoder fitted on the training rows, applied to all rows; its number of ids; the encoder."""
    enc = make_encoder()
    enc.fit([raw[i] for i in train])
    codes = np.asarray(enc.transform(list(raw)), dtype=np.int64)
    (n_codes,) = enc.n_categories_.values()  # one column; the count includes the three reserved ids
    return codes, int(n_codes), enc


def canonical_report(data: Dataset, rows: np.ndarray, codes: np.ndarray, enc: CategoryEncoder) -> None:
    """How often the encoder's canonical spelling (`inverse_transform`) is exactly the clean name."""
    canonical = enc.inverse_transform(codes[rows])
    exact = sum(1 for c, t in zip(canonical, data.truth[rows]) if c == data.names[t])
    print(f"  CategoryEncoder: inverse_transform gives exactly the clean name for {exact / len(rows):.1%} of the "
          "validation rows")


def unseen_report(data: Dataset, split: dict[str, np.ndarray], codes: np.ndarray, label: str) -> None:
    """How the validation rows whose spelling never occurs in training were coded."""
    train_spellings = {data.raw[i] for i in split["train"]}
    valid = split["valid"]
    unseen = np.array([data.raw[i] not in train_spellings for i in valid])
    code_truth = _majority(codes[split["train"]], data.truth[split["train"]])
    rows = valid[unseen]
    right = sum(1 for i in rows if code_truth.get(int(codes[i])) == data.truth[i])
    unknown = sum(1 for i in rows if int(codes[i]) not in code_truth)
    print(f"  {label}: {unseen.sum()} of {len(valid)} validation rows ({unseen.mean():.1%}) have a spelling unseen in "
          f"training; coded as their name {right / max(len(rows), 1):.1%}, as a code absent from training (unknown) "
          f"{unknown / max(len(rows), 1):.1%}, as another name {(len(rows) - right - unknown) / max(len(rows), 1):.1%}")


def downstream(data: Dataset, seeds: Sequence[int], epochs: int) -> None:
    split = split_rows(len(data.raw), seed=0)
    variants: dict[str, tuple[np.ndarray, int]] = {}
    codes, n_codes, enc = encoder_fit_apply(data.raw, split["train"])
    variants["(a) CategoryEncoder"] = codes, n_codes
    unseen_report(data, split, codes, "CategoryEncoder")
    canonical_report(data, split["valid"], codes, enc)
    variants["(b) ordinal of raw strings"] = ordinal_fit_apply(data.raw, split["train"])
    unseen_report(data, split, variants["(b) ordinal of raw strings"][0], "ordinal")
    variants["(c) clean truth"] = (data.truth, len(data.names))
    print(f"  dltips.TabularModel (hidden 200, 100), AdamW lr 3e-3, batch 256, {epochs} epochs; validation accuracy, "
          f"median (min-max) over seeds {tuple(seeds)}")
    print(f"  {'codes':<28} {'n codes':>8} {'accuracy':>9} {'range':>15}")
    for label, (codes, n_codes) in variants.items():
        scores = [train_and_score(codes, n_codes, data, split, seed, epochs) for seed in seeds]
        print(f"  {label:<28} {n_codes:>8} {statistics.median(scores):>9.4f} {min(scores):>7.4f}-{max(scores):.4f}")


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (about 20 s)")
    parser.add_argument("--self-check", action="store_true", help="check the metric functions and exit")
    parser.add_argument("-k", type=int, default=100, help="number of clean categories")
    parser.add_argument("-n", type=int, default=20000, help="number of rows")
    parser.add_argument("-p", type=float, default=0.05, help="per-letter typo rate")
    parser.add_argument("--case", type=float, default=0.1, help="rate of case variants")
    parser.add_argument("--whitespace", type=float, default=0.1, help="rate of whitespace variants")
    parser.add_argument("--punctuation", type=float, default=0.1, help="rate of punctuation variants")
    parser.add_argument("--abbreviation", type=float, default=0.1, help="rate of abbreviated rows")
    parser.add_argument("--threshold", type=float, help="CategoryEncoder's threshold (default: the encoder's own)")
    parser.add_argument("--sweep", type=float, nargs="*", default=[0.0, 0.02, 0.05, 0.1], help="typo rates to sweep")
    parser.add_argument("--skrub-rows", type=int, default=2000, help="rows given to skrub.deduplicate")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--examples", type=int, default=8, help="false and missed merges shown")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.self_check:
        return self_check()
    torch.set_num_threads(1)
    if args.threshold is not None:
        ENCODER_OPTIONS["threshold"] = args.threshold
    if args.quick:
        args.k, args.n, args.skrub_rows, args.epochs, args.repeats = min(args.k, 50), min(args.n, 4000), 500, 3, 1
        args.sweep = [0.0, args.p, 0.1]
    seeds = (0, 1, 2)

    def noise_at(p: float) -> Noise:
        return Noise(p=p, case=args.case, whitespace=args.whitespace, punctuation=args.punctuation,
                     abbreviation=args.abbreviation)

    methods: dict[str, Callable[[Sequence[str]], np.ndarray]] = {
        "CategoryEncoder": encoder_codes, "ordinal (no normalisation)": ordinal_codes}

    data = make_dataset(args.k, args.n, noise_at(args.p), seed=args.seed)
    print(f"1. K={args.k} names, N={args.n} rows, typo rate p={args.p}, case/whitespace/punctuation/abbreviation rates "
          f"{args.case}/{args.whitespace}/{args.punctuation}/{args.abbreviation}; {make_encoder()!r}; "
          "targets: merge P >= 0.95, R >= 0.8")
    results = quality_table(data, methods, args.repeats)
    show_errors(data, results["CategoryEncoder"][0], args.examples)

    print(f"\n   sweep over the typo rate p (other rates as above; fit seconds of one call, at p={args.p} those above)")
    print(f"   {'p':>5} " + HEADER)
    for p in args.sweep:
        if p == args.p:
            for label, (codes, seconds) in results.items():
                print(f"   {p:>5.2f} " + row(label, merge_metrics(data.raw, data.truth, codes), seconds))
            continue
        quality_table(make_dataset(args.k, args.n, noise_at(p), seed=args.seed), methods, 1, f"   {p:>5.2f} ", header=False)

    subset = Dataset(data.raw[: args.skrub_rows], data.truth[: args.skrub_rows], data.names,
                     data.numeric[: args.skrub_rows], data.target[: args.skrub_rows])
    print(f"\n2. side by side on the first {args.skrub_rows} rows (skrub's silhouette search is cubic in the spellings); "
          f"fit seconds, median of {args.repeats} (one call when it takes over {SLOW:.0f} s)")
    side: dict[str, Callable[[Sequence[str]], np.ndarray]] = dict(methods)
    if skrub_available():
        k_subset = len(set(subset.truth.tolist()))
        side["skrub.deduplicate"] = skrub_codes
        side[f"skrub, n_clusters={k_subset} (true)"] = lambda raw: skrub_codes(raw, n_clusters=k_subset)
    quality_table(subset, side, args.repeats)

    print("\n3. downstream: binary target from the clean name and 3 numeric features; rows split 60/20/20, encoders "
          "fitted on the training rows")
    downstream(data, seeds, args.epochs)


if __name__ == "__main__":
    main()
