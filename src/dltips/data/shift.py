"""Do the validation and test sets come from the same distribution?

Training data may differ from the data met in use; validation and test must
not differ from each other, because the validation score is only worth
anything as a stand-in for the test score. Two tests compare them:

Inputs: a classifier two-sample test. Equal numbers of validation (label 0)
and test (label 1) items are drawn, their inputs turned into features, and a
linear classifier is fitted with k-fold cross-validation to tell them apart.
The statistic is the AUC of its out-of-fold scores (0.5: it cannot tell them
apart). Its null distribution comes from refitting on shuffled val/test labels.

    float tensors     flattened, standardised with the pooled sample's mean and std
                      (constant features dropped); above MAX_FEATURES features the
                      standardised inputs are projected on their MAX_FEATURES leading
                      principal components (fitted on the pooled sample), then whitened
    integer tensors   read as tokens: a bag of counts of the MAX_FEATURES most frequent
                      tokens of the pooled sample, plus the count of the rest, then
                      log1p and standardised; an item of at most SHORT_CODES integers is
                      read as category codes, each (position, code) pair one token
    dict inputs       each value by the rules above, features concatenated

The classifier is a ridge-regularised least-squares classifier (Fisher's linear
discriminant with shrinkage) rather than a logistic regression: it has an exact
solution, so every fold of every permutation is one batched linear solve and
200 permutations of 2000 items take a fraction of a second, and there is no
optimiser tolerance to tune. It sees whatever a linear boundary sees: shifted
means, a cluster that is over-represented in one set; not a change of spread alone.

p-value of the inputs test: the permutation p-value (1 + #{permuted AUC >= AUC}) /
(1 + permutations). Its resolution is 1 / (1 + permutations), coarser than ALPHA,
so when the observed AUC beats every permutation the p-value is the normal tail
fitted to the permutation distribution (mean and std of the permuted AUCs). A
cross-validated AUC is an average over many weakly dependent pairs and its
permutation distribution is close to normal: measured over 40 null splits
(synthetic Gaussian and mixture inputs, 400 items, 20 features, 200
permutations), its skewness lies between -0.5 and +0.1 (a lighter upper tail
than the normal's, so the normal tail errs towards larger p-values), and over
1000 null splits the normal tail fell below 0.01 and 0.001 in 1.0% and 0.1% of
them. tests/data/test_shift.py checks the agreement with the permutation p-value.

Labels: classification and binary labels, a chi-square test of homogeneity on
the validation/test count table (classes expected fewer than 5 times in either
set merged into one "rare" row); multilabel, one 2x2 test per label with a
Bonferroni correction; regression, a two-sample Kolmogorov-Smirnov test on the
targets (per target column, Bonferroni); language models, not tested (their
labels are their inputs shifted by one token, covered by the inputs test).
Labels are read from every item of a TensorDataset, else from the sampled items.

Verdict: fail when a p-value is below ALPHA = 0.001 (two tests, a family-wise
false-alarm rate of at most 0.002 by Bonferroni); pass otherwise; skip without
a test set or with fewer than MIN_ITEMS items in either set.

Calibration (validation and test drawn from one synthetic set: 400 items,
20 features, 3 classes, Gaussian or a mixture of class clusters; 200 permutations):

    split                                            inputs p              labels p    verdict
    300 random splits                                4.3% below 0.05,      4.3% below  pass in 299,
                                                     1.0% below 0.01,      0.05, none  fail in 1 (inputs
                                                     1 below 0.001         below 0.001 p < 0.001)
    test: 3 of 20 features shifted by 0.5 std        6.7e-9                -           fail
    (400 items each)
    test: class proportions 33/33/33 against         -                     3.1e-4      fail
    validation's 50/30/20 (400 items each)

Time plan: the items compared (`max_items`, half from each set), the folds and the permutations
are fixed before the test starts; the clock never shrinks them. The deadline is read after every
READ_CHUNK items read (datasets other than a two-tensor TensorDataset), after reading, after
featurising and after every fold; once it has passed, the check returns a `skip` with the time
the rest would take, never a verdict. Reading and the folds left are extrapolated from their
own measured pace; the steps not yet begun get an allowance of about twice their time measured
on one CPU thread: projecting 2000 items of 3072 values on 128 principal components took 1.26 s
(PCA_S_PER_VALUE), and the 5 folds of 2000 items with 200 permutations 0.14 s (FIT_S_PER_UNIT,
per item, label row and fold).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device
from dltips.core.params import ParamError, int_at_least, one_of
from dltips.findings import Finding, skipped_for_time
from dltips.task import Task, target_tensor

TIP = "val-test-match"
ALPHA = 0.001  # per test; two tests, so at most 0.002 family-wise (Bonferroni)
MIN_ITEMS = 20  # items needed in each of validation and test
MAX_ITEMS = 2000  # validation and test items read in all, by default
MAX_FEATURES = 128  # features kept; beyond, principal components (floats) or the most frequent tokens (integers)
SHORT_CODES = 32  # an integer item with at most this many elements is read as category codes
RIDGE = 1.0  # ridge penalty on standardised features (times d / n when features outnumber items)
MIN_EXPECTED = 5.0  # chi-square: classes expected fewer times than this in a set are merged
TOP_FEATURES = 5  # most discriminating features named in the message
LABEL_KINDS = ("classification", "binary", "multilabel", "regression")  # kinds whose labels are compared
READ_CHUNK = 256  # items read between two looks at the deadline
PCA_S_PER_VALUE = 4e-7  # allowance for the principal components, per item and input value
FIT_S_PER_UNIT = 1.5e-7  # allowance for the cross-validated fits, per item, label row and fold

_FIX = ("Validation and test must come from the same distribution, or the validation score says little about "
        "the test score (training data may differ from both). Build both from the same source with one random "
        "split (stratified by class), or, when the test set is the data met in use, draw the validation set "
        "from that same source; then compare again.")


@dataclass
class InputTest:
    """The classifier two-sample test on inputs."""

    auc: float
    p_value: float
    p_permutation: float
    p_normal: float
    null_mean: float
    null_std: float
    n_each: int
    n_features: int
    representation: str
    folds: int
    permutations: int
    top_features: list[dict] = field(default_factory=list)


class _OutOfTime(Exception):
    """The deadline passed: the rest of the plan needs about `needs_s` seconds; `done` says what was done."""

    def __init__(self, needs_s: float, done: str):
        super().__init__(needs_s, done)
        self.needs_s, self.done = needs_s, done


@dataclass
class LabelTest:
    """The test on label distributions: chi-square (classes) or Kolmogorov-Smirnov (regression)."""

    method: str
    statistic: float
    p_value: float
    dof: int | None
    n_valid: int
    n_test: int
    table: list[list[Any]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)


def check_val_test_match(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
    folds: int = 5,
    permutations: int = 200,
) -> list[Finding]:
    """Test whether the validation set stands in for the test set (inputs and labels); one Finding.

    `max_items` validation and test items in all (half from each; default MAX_ITEMS, at least
    2 * MIN_ITEMS) go into the inputs test; `folds` and `permutations` set its cross-validation and
    null distribution, `seed` its draws. The model is not run: `model` (default `task.model`) only
    sets the default device. When `deadline` passes before the plan is done, the one Finding is a
    `skip` saying how much more time it needs (see "Time plan" above).
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    max_items = MAX_ITEMS if max_items is None else int_at_least("max_items", max_items, 2 * MIN_ITEMS)
    folds = int_at_least("folds", folds, 2)
    permutations = int_at_least("permutations", permutations, 19)
    device = resolve_device(device, task.model if model is None else model)
    if task.test is None:
        return [Finding(TIP, "skip", "No test set: validation and test cannot be compared",
                        "The task has no test set, so there is nothing to compare the validation set with.",
                        "Give the Task a test set (Task(test=...)) drawn from the data the model will meet in use.")]
    n_valid, n_test = len(task.valid), len(task.test)
    if min(n_valid, n_test) < MIN_ITEMS:
        return [Finding(TIP, "skip", "Too few items to compare validation and test",
                        f"Validation has {n_valid} items and test {n_test}; at least {MIN_ITEMS} each are needed "
                        "for a two-sample test.", None, {"n_valid": n_valid, "n_test": n_test,
                                                         "min_items": MIN_ITEMS})]
    generator = torch.Generator().manual_seed(seed)
    n_each = min(n_valid, n_test, max_items // 2)
    valid_idx = torch.randperm(n_valid, generator=generator)[:n_each].sort().values
    test_idx = torch.randperm(n_test, generator=generator)[:n_each].sort().values
    allowance = _Allowance(2 * n_each, folds, permutations)
    try:
        (x_valid, y_valid), (x_test, y_test) = _read(task, [(task.valid, valid_idx), (task.test, test_idx)], deadline,
                                                     allowance)
        inputs = _input_test(x_valid, x_test, folds, permutations, seed, device, deadline, allowance)
    except _OutOfTime as late:
        return [skipped_for_time(TIP, late.needs_s, done=late.done,
                                 evidence={"n_each": n_each, "folds": folds, "permutations": permutations})]
    labels = None
    if task.kind != "language-model":
        labels = label_test(task.kind, _all_labels(task.valid, y_valid), _all_labels(task.test, y_test))
    return [_finding(inputs, labels, task.kind)]


# ---------------------------------------------------------------- inputs


def input_test(
    x_valid: Any,
    x_test: Any,
    *,
    folds: int = 5,
    permutations: int = 200,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> InputTest:
    """Classifier two-sample test between two batches of inputs (tensors, or dicts of tensors, of equal length)."""
    return _input_test(x_valid, x_test, folds, permutations, seed, device)


def _input_test(x_valid: Any, x_test: Any, folds: int, permutations: int, seed: int, device: torch.device | str,
                deadline: Deadline | None = None, allowance: _Allowance | None = None) -> InputTest:
    """`input_test`, looking at `deadline` after featurising and after every fold (`_OutOfTime` once it passed)."""
    n0, n1 = _length(x_valid, "x_valid"), _length(x_test, "x_test")
    if n0 != n1:
        raise ParamError(f"x_valid and x_test must hold the same number of items, got {n0} and {n1}")
    pooled = _concat(x_valid, x_test)
    allowance = allowance or _Allowance(n0 + n1, folds, permutations)
    if deadline is not None and deadline.expired():
        raise _OutOfTime(allowance.features(_values(pooled)) + allowance.folds(folds),
                         f"read all {n0 + n1} items; featurising and the {folds} folds not begun")
    features, names, representation = featurise(pooled, seed=seed)
    features = features.to(device)
    labels = torch.cat([torch.zeros(n0), torch.ones(n1)]).bool()
    generator = torch.Generator().manual_seed(seed + 1)
    rows = [labels] + [labels[torch.randperm(2 * n0, generator=generator)] for _ in range(permutations)]
    y = torch.stack(rows).to(device)  # (1 + permutations, n): row 0 observed
    fold = torch.randperm(2 * n0, generator=generator) % folds
    if deadline is not None and deadline.expired():
        raise _OutOfTime(allowance.folds(folds), f"featurised {n0 + n1} items; the {folds} folds not begun")
    aucs = _cross_validated_aucs(features, y, fold.to(device), folds, deadline).cpu()
    auc, null = float(aucs[0]), aucs[1:].double()
    mean, std = float(null.mean()), float(null.std())
    p_perm = (1 + int((null >= auc).sum())) / (1 + permutations)
    p_norm = _normal_tail((auc - mean) / std) if std > 0 else (1.0 if auc <= mean else 0.0)
    p_value = p_norm if p_perm == 1 / (1 + permutations) else p_perm
    top = _top_features(features.cpu(), labels, names) if names is not None else []
    return InputTest(auc, p_value, p_perm, p_norm, mean, std, n0, features.shape[1], representation,
                     folds, permutations, top)


@dataclass
class _Allowance:
    """Seconds allowed for the steps of the inputs test not yet begun (see "Time plan" above)."""

    n: int
    n_folds: int
    permutations: int

    def features(self, values: int) -> float:
        return PCA_S_PER_VALUE * self.n * values if values > MAX_FEATURES else 0.0

    def folds(self, left: int) -> float:
        return FIT_S_PER_UNIT * self.n * (1 + self.permutations) * left


def _values(x: Any) -> int:
    """Input values per item of a batch (a tensor or a dict of tensors)."""
    tensors = x.values() if isinstance(x, dict) else [x]
    return sum(v[0].numel() for v in tensors if isinstance(v, torch.Tensor) and len(v))


def featurise(x: Any, *, seed: int = 0) -> tuple[torch.Tensor, list[str] | None, str]:
    """(features (n, d) float32 standardised, feature names or None after projection, description)."""
    named = x if isinstance(x, dict) else {"x": x}
    blocks, names, kinds = [], [], []
    for key, value in named.items():
        if not isinstance(value, torch.Tensor):
            raise ParamError(f"inputs must be tensors or dicts of tensors; {key!r} is a {type(value).__name__}")
        prefix = f"{key}" if isinstance(x, dict) else "x"
        if value.is_floating_point() or value.dtype == torch.bool:
            block, block_names, kind = _float_features(value.reshape(len(value), -1).double(), prefix, seed)
        else:
            block, block_names, kind = _token_features(value.reshape(len(value), -1).long(), prefix)
        blocks.append(block)
        names.append(block_names)
        kinds.append(f"{key}: {kind}" if isinstance(x, dict) else kind)
    features = torch.cat(blocks, dim=1)
    if features.shape[1] == 0:
        features = torch.zeros(len(features), 1, dtype=torch.float64)  # every feature constant
    flat_names = None if any(n is None for n in names) else [name for block in names for name in block]
    return features.float(), flat_names, "; ".join(kinds)


def _float_features(v: torch.Tensor, prefix: str, seed: int) -> tuple[torch.Tensor, list[str] | None, str]:
    if not bool(torch.isfinite(v).all()):
        raise ParamError(f"inputs {prefix!r} contain NaN or infinite values; clean them before comparing sets")
    z, kept = _standardise(v)
    names = [f"{prefix}[{i}]" for i in kept.tolist()]
    if z.shape[1] <= MAX_FEATURES:
        return z, names, f"{v.shape[1]} input values, standardised"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        k = min(MAX_FEATURES, len(z) - 1)
        u, s, _ = torch.pca_lowrank(z, q=k, center=True, niter=3)
    components, _ = _standardise(u[:, :k] * s[:k])
    return components, None, f"{v.shape[1]} input values, projected on {components.shape[1]} principal components"


def _token_features(v: torch.Tensor, prefix: str) -> tuple[torch.Tensor, list[str] | None, str]:
    short = v.shape[1] <= SHORT_CODES
    if short:  # category codes: one token per (position, code)
        span = int(v.max() - v.min()) + 1
        tokens = (v - v.min()) + span * torch.arange(v.shape[1])
    else:
        tokens = v
    values, inverse = torch.unique(tokens, return_inverse=True)
    counts = torch.zeros(len(v), len(values), dtype=torch.float64)
    counts.scatter_add_(1, inverse, torch.ones_like(inverse, dtype=torch.float64))
    order = counts.sum(0).argsort(descending=True)
    kept, rest = order[:MAX_FEATURES], order[MAX_FEATURES:]
    features = counts[:, kept]
    if len(rest):
        features = torch.cat([features, counts[:, rest].sum(1, keepdim=True)], dim=1)
    z, columns = _standardise(features.log1p())
    if short:
        span = int(v.max() - v.min()) + 1
        labels = [f"{prefix}[{int(t) // span}]=={int(t) % span + int(v.min())}" for t in values[kept]]
    else:
        labels = [f"count of {prefix} token {int(t)}" for t in values[kept]]
    labels.append(f"count of other {prefix} tokens")
    names = [labels[i] for i in columns.tolist()]
    what = "category codes (one-hot per position)" if short else "tokens (bag of counts)"
    return z, names, f"{v.shape[1]} integer {what}, {z.shape[1]} features"


def _standardise(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns standardised with their own mean and std; constant columns dropped (their indices kept)."""
    std = v.std(0) if len(v) > 1 else torch.zeros(v.shape[1], dtype=v.dtype)
    kept = (std > 1e-12 * v.abs().amax(0).clamp(min=1)).nonzero().flatten()
    return (v[:, kept] - v[:, kept].mean(0)) / std[kept], kept


def _cross_validated_aucs(x: torch.Tensor, y: torch.Tensor, fold: torch.Tensor, folds: int,
                          deadline: Deadline | None = None) -> torch.Tensor:
    """AUC of out-of-fold ridge-classifier scores for every row of labels `y` (rows, n) at once.

    With a `deadline`, it is read after every fold but the last (`_OutOfTime` once it passed)."""
    started = time.monotonic()
    x = x.double()
    targets = (y.double() * 2 - 1).T.contiguous()  # (n, rows), +-1
    scores = torch.zeros_like(targets)
    d = x.shape[1]
    for k in range(folds):
        train = (fold != k).double()[:, None]
        n_train = float(train.sum())
        mean = (x * train).sum(0) / n_train
        xc = (x - mean) * train  # zero outside the training folds, centred within them
        ridge = RIDGE * max(1.0, d / n_train)  # more shrinkage when features are many for the items
        gram = xc.T @ xc / n_train + ridge * torch.eye(d, dtype=x.dtype, device=x.device)
        w = torch.linalg.solve(gram, xc.T @ targets / n_train)  # (d, rows); xc sums to 0, so targets need no centring
        held = (fold == k).nonzero().flatten()
        scores[held] = (x[held] - mean) @ w  # no intercept: it would depend on the shuffled labels
        if deadline is not None and k + 1 < folds and deadline.expired():
            spent = time.monotonic() - started
            raise _OutOfTime(spent * (folds - k - 1) / (k + 1), f"fitted {k + 1} of {folds} folds")
    return _aucs(scores.T.contiguous(), y)


def _aucs(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise AUC (Mann-Whitney U / n1 n0) of `scores` for boolean labels `y`, ties counted as half."""
    ordered = scores.sort(dim=1).values
    below = torch.searchsorted(ordered, scores, right=False)
    upto = torch.searchsorted(ordered, scores, right=True)
    ranks = (below + upto + 1).double() / 2  # 1-based average ranks
    n1 = y.sum(1).double()
    n0 = y.shape[1] - n1
    return ((ranks * y).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _top_features(x: torch.Tensor, labels: torch.Tensor, names: list[str]) -> list[dict]:
    """The features whose means differ most between the sets, in units of their pooled std."""
    diff = (x[labels].double().mean(0) - x[~labels].double().mean(0))
    order = diff.abs().argsort(descending=True)[:TOP_FEATURES]
    return [{"feature": names[i], "test_minus_valid_std": round(float(diff[i]), 4)} for i in order.tolist()]


# ---------------------------------------------------------------- labels


def label_test(kind: str, y_valid: torch.Tensor, y_test: torch.Tensor) -> LabelTest:
    """Compare the label distributions of two sets, by the rule for the task's `kind`."""
    one_of("kind", kind, LABEL_KINDS)
    y_valid, y_test = torch.as_tensor(y_valid), torch.as_tensor(y_test)
    if kind in ("classification", "binary"):
        return _class_test(y_valid.reshape(-1).long(), y_test.reshape(-1).long())
    if kind == "multilabel":
        return _multilabel_test(y_valid.reshape(len(y_valid), -1), y_test.reshape(len(y_test), -1))
    return _regression_test(y_valid.reshape(len(y_valid), -1).double(), y_test.reshape(len(y_test), -1).double())


def _class_test(y_valid: torch.Tensor, y_test: torch.Tensor) -> LabelTest:
    n_classes = int(max(y_valid.max(), y_test.max())) + 1
    counts = torch.stack([torch.bincount(y_valid, minlength=n_classes), torch.bincount(y_test, minlength=n_classes)])
    classes = [str(c) for c in range(n_classes)]
    table = [[c, int(counts[0, i]), int(counts[1, i]), _share(counts[0, i], counts[0].sum()),
              _share(counts[1, i], counts[1].sum())] for i, c in enumerate(classes) if counts[:, i].sum() > 0]
    merged = _merge_rare(counts[:, counts.sum(0) > 0].double())
    statistic, dof = chi2_homogeneity(merged)
    columns = ["class", "validation", "test", "validation %", "test %"]
    return LabelTest("chi-square homogeneity", statistic, chi2_sf(statistic, dof), dof,
                     len(y_valid), len(y_test), table, columns)


def _merge_rare(counts: torch.Tensor) -> torch.Tensor:
    """Merge the columns of a 2 x C table whose expected count is below MIN_EXPECTED in either row."""
    expected = counts.sum(0, keepdim=True) * counts.sum(1, keepdim=True) / counts.sum()
    rare = (expected < MIN_EXPECTED).any(0)
    if int(rare.sum()) < 1 or int((~rare).sum()) < 1:
        return counts
    return torch.cat([counts[:, ~rare], counts[:, rare].sum(1, keepdim=True)], dim=1)


def _multilabel_test(y_valid: torch.Tensor, y_test: torch.Tensor) -> LabelTest:
    table, p_values, stats = [], [], []
    pos = torch.stack([(y_valid > 0.5).sum(0), (y_test > 0.5).sum(0)]).double()
    n = torch.tensor([[len(y_valid)], [len(y_test)]], dtype=torch.float64)
    for j in range(pos.shape[1]):
        two_by_two = torch.cat([pos[:, j:j + 1], n - pos[:, j:j + 1]], dim=1)
        statistic, dof = chi2_homogeneity(two_by_two)
        stats.append(statistic)
        p_values.append(chi2_sf(statistic, dof) if dof > 0 else 1.0)
        table.append([f"label {j}", int(pos[0, j]), int(pos[1, j]), _share(pos[0, j], n[0, 0]),
                      _share(pos[1, j], n[1, 0])])
    worst = min(range(len(p_values)), key=p_values.__getitem__)
    columns = ["label", "validation positives", "test positives", "validation %", "test %"]
    return LabelTest(f"chi-square per label (Bonferroni over {len(p_values)})", stats[worst],
                     min(1.0, p_values[worst] * len(p_values)), 1, len(y_valid), len(y_test), table, columns)


def _regression_test(y_valid: torch.Tensor, y_test: torch.Tensor) -> LabelTest:
    results = [ks_2samp(y_valid[:, j], y_test[:, j]) for j in range(y_valid.shape[1])]
    worst = min(range(len(results)), key=lambda j: results[j][1])
    quantiles = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    qv, qt = torch.quantile(y_valid[:, worst], quantiles), torch.quantile(y_test[:, worst], quantiles)
    names = ["min", "10%", "median", "90%", "max"]
    table = [[name, round(float(a), 6), round(float(b), 6)] for name, a, b in zip(names, qv, qt)]
    method = "Kolmogorov-Smirnov" + (f" per target (Bonferroni over {len(results)})" if len(results) > 1 else "")
    statistic, p = results[worst]
    return LabelTest(method, statistic, min(1.0, p * len(results)), None, len(y_valid), len(y_test),
                     table, [f"target {worst}", "validation", "test"])


def chi2_homogeneity(counts: torch.Tensor) -> tuple[float, int]:
    """Pearson's chi-square statistic and degrees of freedom of a contingency table (rows: sets, columns: classes)."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.dim() != 2 or bool((counts < 0).any()):
        raise ParamError(f"counts must be a 2-d table of non-negative counts, got shape {tuple(counts.shape)}")
    counts = counts[counts.sum(1) > 0][:, counts.sum(0) > 0]
    if counts.shape[0] < 2 or counts.shape[1] < 2:
        return 0.0, 0
    expected = counts.sum(1, keepdim=True) * counts.sum(0, keepdim=True) / counts.sum()
    return float(((counts - expected) ** 2 / expected).sum()), (counts.shape[0] - 1) * (counts.shape[1] - 1)


def chi2_sf(statistic: float, dof: int) -> float:
    """P(chi-square with `dof` degrees of freedom >= statistic): the regularised upper incomplete gamma Q(dof/2, x/2)."""
    dof = int_at_least("dof", dof, 0)
    if dof == 0:
        return 1.0
    if not statistic > 0:
        return 1.0
    a = torch.tensor(dof / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(a, torch.tensor(statistic / 2, dtype=torch.float64)))


def ks_2samp(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic D and its asymptotic p-value (with Stephens' small-sample correction)."""
    a, b = torch.as_tensor(a, dtype=torch.float64).flatten(), torch.as_tensor(b, dtype=torch.float64).flatten()
    if len(a) == 0 or len(b) == 0:
        raise ParamError(f"both samples must be non-empty, got {len(a)} and {len(b)} values")
    a, b = a.sort().values, b.sort().values
    points = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, points, right=True).double() / len(a)
    cdf_b = torch.searchsorted(b, points, right=True).double() / len(b)
    d = float((cdf_a - cdf_b).abs().max())
    en = math.sqrt(len(a) * len(b) / (len(a) + len(b)))
    return d, kolmogorov_sf((en + 0.12 + 0.11 / en) * d)


def kolmogorov_sf(z: float) -> float:
    """P(K > z) for the Kolmogorov distribution: 2 sum_k (-1)^(k-1) exp(-2 k^2 z^2)."""
    if z < 0.27:  # the series converges slowly here and the value is 1 to 1e-6
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * z * z) for k in range(1, 101))
    return min(1.0, max(0.0, 2 * total))


# ---------------------------------------------------------------- the verdict


def _finding(inputs: InputTest, labels: LabelTest | None, kind: str) -> Finding:
    inputs_differ = inputs.p_value < ALPHA
    labels_differ = labels is not None and labels.p_value < ALPHA
    status = "fail" if inputs_differ or labels_differ else "pass"
    parts = ["Validation and test should come from the same distribution (training may differ from both): "
             "the validation score only predicts the test score when they match."]
    parts.append(f"A linear classifier trained to tell {inputs.n_each} validation from {inputs.n_each} test inputs "
                 f"({inputs.representation}) reaches a cross-validated AUC of {inputs.auc:.3f} (0.5 when it cannot "
                 f"tell them apart; shuffled sets give {inputs.null_mean:.3f} +- {inputs.null_std:.3f}), "
                 f"p = {_p(inputs.p_value)}.")
    if inputs.top_features and inputs_differ:
        listed = ", ".join(f"{f['feature']} ({f['test_minus_valid_std']:+.2f} std)" for f in inputs.top_features)
        parts.append(f"Features whose means differ most (test minus validation): {listed}.")
    if labels is None:
        parts.append("Labels are not compared separately for a language model (they are its inputs).")
    else:
        parts.append(f"Labels ({labels.n_valid} validation, {labels.n_test} test): {labels.method}, "
                     f"statistic {labels.statistic:.3g}, p = {_p(labels.p_value)}.")
    if status == "fail":
        what = " and ".join(w for w, bad in (("inputs", inputs_differ), ("labels", labels_differ)) if bad)
        parts.append(f"The {what} of validation and test differ (p < {ALPHA:g}): validation and test must match.")
        title = f"Validation and test differ in their {what}"
        fix = _FIX
    else:
        parts.append(f"No difference found at p < {ALPHA:g}.")
        title = "Validation and test look alike (inputs and labels)" if labels is not None else \
            "Validation and test inputs look alike"
        fix = None
    evidence = {"alpha": ALPHA, "inputs": asdict(inputs), "labels": asdict(labels) if labels is not None else None,
                "kind": kind}
    figures = []
    if labels is not None and labels.table:
        figures.append({"kind": "table", "title": f"Labels in validation and test ({labels.method})",
                        "columns": labels.columns, "rows": labels.table})
    if inputs.top_features:
        figures.append({"kind": "table", "title": "Input features whose means differ most (test minus validation)",
                        "columns": ["feature", "difference (std)"],
                        "rows": [[f["feature"], f["test_minus_valid_std"]] for f in inputs.top_features]})
    return Finding(TIP, status, title, " ".join(parts), fix, evidence, figures)


# ---------------------------------------------------------------- helpers


def _read(task: Task, parts: list[tuple[Dataset, torch.Tensor]], deadline: Deadline | None,
          allowance: _Allowance) -> list[tuple[Any, torch.Tensor]]:
    """The items of each (dataset, indices) part, batched; with a `deadline`, read after every
    READ_CHUNK items (`_OutOfTime` with the reading left, extrapolated, and the allowance for the rest)."""
    total = sum(len(idx) for data, idx in parts if not _is_pair(data))
    started, done, batches = time.monotonic(), 0, []
    for data, idx in parts:
        if _is_pair(data):
            batches.append((data.tensors[0][idx], data.tensors[1][idx]))
            continue
        items = []
        for position in idx.tolist():
            items.append(data[position])
            done += 1
            if deadline is not None and done % READ_CHUNK == 0 and done < total and deadline.expired():
                reading = (time.monotonic() - started) * (total - done) / done
                values = _values(task.collate(items[:1])[0])
                raise _OutOfTime(reading + allowance.features(values) + allowance.folds(allowance.n_folds),
                                 f"read {done} of the {total} validation and test items")
        x, y = task.collate(items)
        batches.append((x, torch.as_tensor(y)))
    return batches


def _is_pair(data: Dataset) -> bool:
    return isinstance(data, TensorDataset) and len(data.tensors) == 2


def _all_labels(data: Dataset, sampled: torch.Tensor) -> torch.Tensor:
    """Every label of `data` when they can be had without reading items (`target_tensor`), else the sampled."""
    whole = target_tensor(data)
    return sampled if whole is None else whole


def _length(x: Any, name: str) -> int:
    if isinstance(x, torch.Tensor):
        return len(x)
    if isinstance(x, dict) and x and all(isinstance(v, torch.Tensor) for v in x.values()):
        lengths = {len(v) for v in x.values()}
        if len(lengths) != 1:
            raise ParamError(f"{name}: the tensors of a dict input must have equal lengths, got {sorted(lengths)}")
        return lengths.pop()
    raise ParamError(f"{name} must be a tensor or a non-empty dict of tensors, got {type(x).__name__}")


def _concat(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            raise ParamError("x_valid and x_test must both be tensors or dicts with the same keys")
        return {k: torch.cat([a[k], b[k]]) for k in a}
    if not isinstance(b, torch.Tensor) or a.shape[1:] != b.shape[1:]:
        raise ParamError(f"x_valid and x_test must have the same item shape, got {tuple(a.shape[1:])} and "
                         f"{tuple(getattr(b, 'shape', ())[1:])}")
    return torch.cat([a, b])


def _normal_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def _share(count: Any, total: Any) -> float:
    return round(100 * float(count) / max(float(total), 1.0), 2)


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"

