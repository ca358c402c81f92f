import json
import math

import pytest
import torch
from flat_model import Flat
from torch import nn
from torch.utils.data import TensorDataset

from dltips.core.deadline import Deadline
from dltips.core.params import ParamError
from dltips.data.shift import (
    ALPHA,
    FIT_S_PER_UNIT,
    PCA_S_PER_VALUE,
    READ_CHUNK,
    _aucs,
    check_val_test_match,
    chi2_homogeneity,
    chi2_sf,
    input_test,
    ks_2samp,
    label_test,
)
from dltips.diagnosis.report import Report
from dltips.task import Task
from clock import ExpiresAfter


def gaussian(n, d=10, n_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(n_classes, (n,), generator=g)
    x = torch.randn(n, d, generator=g) + 1.5 * nn.functional.one_hot(y, d).float()  # classes are clusters
    return x, y


def make_task(x_valid, y_valid, x_test, y_test, kind="classification", n_out=3):
    n_in = sum(v[0].numel() for v in x_valid.values()) if isinstance(x_valid, dict) else x_valid[0].numel()
    model = Flat(n_in, n_out)
    if isinstance(x_valid, dict):
        valid = [({k: v[i] for k, v in x_valid.items()}, y_valid[i]) for i in range(len(y_valid))]
        test = [({k: v[i] for k, v in x_test.items()}, y_test[i]) for i in range(len(y_test))]
    else:
        valid, test = TensorDataset(x_valid, y_valid), TensorDataset(x_test, y_test)
    return Task(model, valid, valid, test, kind=kind)


def run(task, **kwargs):
    kwargs.setdefault("permutations", 100)
    findings = check_val_test_match(task, **kwargs)
    assert len(findings) == 1 and findings[0].tip == "val-test-match"
    return findings[0]


def test_random_splits_of_one_set_do_not_fail(one_thread):
    x, y = gaussian(400, seed=1)
    p_inputs, p_labels = [], []
    for s in range(30):
        perm = torch.randperm(400, generator=torch.Generator().manual_seed(100 + s))
        a, b = perm[:200], perm[200:]
        f = run(make_task(x[a], y[a], x[b], y[b]), seed=s)
        assert f.status == "pass", f.message
        p_inputs.append(f.evidence["inputs"]["p_value"])
        p_labels.append(f.evidence["labels"]["p_value"])
    for p in (torch.tensor(p_inputs), torch.tensor(p_labels)):
        assert 0.3 < float(p.mean()) < 0.7  # uniform p-values have mean 0.5
        assert float((p < 0.05).double().mean()) <= 0.2
        assert float((p > 0.5).double().mean()) >= 0.25
        assert float(p.min()) >= ALPHA


def test_permutation_null_is_near_normal(one_thread):
    x, _ = gaussian(400, d=20, seed=2)
    r = input_test(x[:200], x[200:], permutations=400, seed=3)
    assert abs(r.null_mean - 0.5) < 0.1 and 0.005 < r.null_std < 0.1
    # the normal tail agrees with the permutation p-value where both resolve it
    ps = []
    for s in range(8):
        shifted = x[200:].clone()
        shifted[:, 0] += 0.05 * s
        r = input_test(x[:200], shifted, permutations=400, seed=s)
        ps.append((r.p_permutation, r.p_normal))
    resolved = [(a, b) for a, b in ps if a > 0.01]
    assert len(resolved) >= 3
    for a, b in resolved:
        assert abs(a - b) < 0.06 + 0.3 * a


def test_covariate_shift_in_a_few_features_fails(one_thread):
    x, y = gaussian(600, d=20, seed=4)
    shifted = x[300:].clone()
    shifted[:, [4, 9, 14]] += 0.5
    f = run(make_task(x[:300], y[:300], shifted, y[300:]))
    assert f.status == "fail" and "inputs" in f.title and "labels" not in f.title
    inputs = f.evidence["inputs"]
    assert inputs["p_value"] < 1e-4 and inputs["auc"] > 0.6 and inputs["p_permutation"] == 1 / 101
    named = {t["feature"] for t in inputs["top_features"][:3]}
    assert named == {"x[4]", "x[9]", "x[14]"}
    assert "validation and test must match" in f.message and f.fix
    assert f.evidence["labels"]["p_value"] > ALPHA


def test_test_drawn_from_another_cluster_fails(one_thread):
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(4, 8, generator=g) * 2
    x_valid = centres[torch.randint(4, (250,), generator=g)] + torch.randn(250, 8, generator=g)
    x_test = centres[torch.randint(3, (250,), generator=g)] + torch.randn(250, 8, generator=g)  # no 4th cluster
    y = torch.randint(2, (250,), generator=g).float()
    f = run(make_task(x_valid, y, x_test, y, kind="binary", n_out=1))
    assert f.status == "fail" and f.evidence["inputs"]["p_value"] < ALPHA


def test_label_shift_fails_on_labels(one_thread):
    g = torch.Generator().manual_seed(6)
    y_valid = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), 800, replacement=True, generator=g)
    y_test = torch.multinomial(torch.tensor([1 / 3] * 3), 800, replacement=True, generator=g)
    x = torch.randn(1600, 6, generator=g)  # inputs carry no label information
    f = run(make_task(x[:800], y_valid, x[800:], y_test))
    assert f.status == "fail" and "labels" in f.title and "inputs" not in f.title
    labels = f.evidence["labels"]
    assert labels["p_value"] < 1e-4 and labels["dof"] == 2
    table = next(fig for fig in f.figures if fig["kind"] == "table" and "Labels" in fig["title"])
    assert [row[0] for row in table["rows"]] == ["0", "1", "2"]
    assert sum(row[1] for row in table["rows"]) == 800 and sum(row[2] for row in table["rows"]) == 800


def test_regression_targets_compared_by_ks(one_thread):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(600, 4, generator=g)
    t_valid, t_test = torch.randn(300, generator=g), torch.randn(300, generator=g) + 0.5
    f = run(make_task(x[:300], t_valid, x[300:], t_test, kind="regression", n_out=1))
    assert f.status == "fail" and f.evidence["labels"]["method"] == "Kolmogorov-Smirnov"
    same = run(make_task(x[:300], t_valid, x[300:], t_valid.flip(0), kind="regression", n_out=1))
    assert same.status == "pass" and same.evidence["labels"]["p_value"] == pytest.approx(1.0)


def test_multilabel_per_label_with_bonferroni():
    g = torch.Generator().manual_seed(8)
    y_valid = (torch.rand(300, 4, generator=g) < 0.3).float()
    y_test = (torch.rand(300, 4, generator=g) < 0.3).float()
    y_test[:, 2] = (torch.rand(300, generator=g) < 0.6).float()
    r = label_test("multilabel", y_valid, y_test)
    assert r.p_value < 1e-6 and "Bonferroni over 4" in r.method and len(r.table) == 4
    assert label_test("multilabel", y_valid, y_valid.flip(0)).p_value == pytest.approx(1.0)


def test_token_and_dict_inputs(one_thread):
    g = torch.Generator().manual_seed(9)
    tokens_valid = torch.randint(100, (300, 40), generator=g)
    tokens_test = torch.randint(100, (300, 40), generator=g)
    tokens_test[:, :5] = 7  # token 7 is far more frequent in test
    cats = torch.randint(4, (600, 3), generator=g)
    y = torch.randint(3, (300,), generator=g)
    f = run(make_task({"tokens": tokens_valid, "cats": cats[:300]}, y, {"tokens": tokens_test, "cats": cats[300:]}, y))
    assert f.status == "fail"
    inputs = f.evidence["inputs"]
    assert "bag of counts" in inputs["representation"] and "category codes" in inputs["representation"]
    assert inputs["top_features"][0]["feature"] == "count of tokens token 7"
    same = run(make_task({"tokens": tokens_valid, "cats": cats[:300]}, y, {"tokens": tokens_valid.flip(0),
                                                                      "cats": cats[300:]}, y))
    assert same.status == "pass"


def test_large_inputs_are_projected(one_thread):
    g = torch.Generator().manual_seed(10)
    x_valid = torch.rand(150, 3, 16, 16, generator=g)
    x_test = torch.rand(150, 3, 16, 16, generator=g)
    assert run(make_task(x_valid, torch.zeros(150).long(), x_test, torch.zeros(150).long())).status == "pass"
    f = run(make_task(x_valid, torch.zeros(150).long(), x_test * 0.8 + 0.1, torch.zeros(150).long()))
    assert f.status == "pass"  # contrast halved around the same mean: a linear classifier cannot see it
    f = run(make_task(x_valid, torch.zeros(150).long(), x_test + 0.1, torch.zeros(150).long()))
    assert f.status == "fail" and "principal components" in f.evidence["inputs"]["representation"]
    assert f.evidence["inputs"]["top_features"] == []


def test_deterministic_and_serialisable(one_thread):
    x, y = gaussian(200, seed=11)
    task = make_task(x[:100], y[:100], x[100:], y[100:])
    a, b = run(task, seed=3), run(task, seed=3)
    assert a.evidence == b.evidence
    report = Report(task=task.summary(), findings=[a])
    assert json.loads(report.to_json())["findings"][0]["evidence"]["inputs"]["n_each"] == 100
    assert run(task, max_items=60).evidence["inputs"]["n_each"] == 30


def test_skips_without_test_set_or_with_too_few_items():
    x, y = gaussian(100, seed=12)
    f = run(Task(Flat(10, 3), TensorDataset(x, y), TensorDataset(x, y)))
    assert f.status == "skip" and "no test set" in f.message
    f = run(make_task(x[:50], y[:50], x[50:60], y[50:60]))
    assert f.status == "skip" and "10" in f.message and f.evidence["n_test"] == 10


@pytest.mark.parametrize("kwargs, name", [
    ({"max_items": 10}, "max_items"), ({"folds": 1}, "folds"), ({"permutations": 5}, "permutations"),
    ({"seed": -1}, "seed"), ({"folds": 2.5}, "folds"),
])
def test_bad_arguments_are_rejected(kwargs, name):
    x, y = gaussian(100, seed=13)
    with pytest.raises(ValueError, match=name):
        check_val_test_match(make_task(x[:50], y[:50], x[50:], y[50:]), **kwargs)


def test_common_arguments_are_taken_and_the_old_keywords_still_work():
    x, y = gaussian(100, seed=13)
    task = make_task(x[:50], y[:50], x[50:], y[50:])
    plain = run(task, seed=2)
    same = run(task, model=task.model, device="auto", seed=2, deadline=60.0)
    assert same.evidence == plain.evidence
    old = run(task, max_items=2000, folds=5, seed=2, device="cpu")  # the keywords of the old signature
    assert old.evidence == plain.evidence
    for bad in ({"max_items": "5"}, {"seed": "1"}, {"deadline": "soon"}, {"device": "no-such-device"}):
        with pytest.raises(ParamError, match=next(iter(bad))):
            check_val_test_match(task, **bad)


def test_bad_inputs_to_input_test():
    x = torch.randn(40, 3)
    with pytest.raises(ValueError, match="same number of items"):
        input_test(x[:20], x[20:30])
    with pytest.raises(ValueError, match="same item shape"):
        input_test(x[:20], torch.randn(20, 4))
    with pytest.raises(ValueError, match="NaN"):
        input_test(x[:20], torch.full((20, 3), math.nan))
    with pytest.raises(TypeError, match="tensor"):
        input_test([1, 2], [3, 4])
    with pytest.raises(ValueError, match="kind"):
        label_test("language-model", torch.zeros(3), torch.zeros(3))


def test_p_values_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for x, dof in [(0.5, 1), (3.84, 1), (10.0, 3), (40.0, 9), (120.0, 50), (80.0, 2)]:
        assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9, abs=1e-300)
    assert chi2_sf(0.0, 3) == 1.0 and chi2_sf(5.0, 0) == 1.0
    table = torch.tensor([[30, 20, 50, 3], [25, 40, 35, 6]])
    statistic, dof = chi2_homogeneity(table)
    ref = stats.chi2_contingency(table.numpy(), correction=False)
    assert statistic == pytest.approx(ref.statistic) and dof == ref.dof
    g = torch.Generator().manual_seed(14)
    for shift, n, m in [(0.0, 200, 300), (0.2, 300, 300), (0.5, 150, 400), (0.05, 500, 500)]:
        a, b = torch.randn(n, generator=g), torch.randn(m, generator=g) + shift
        d, p = ks_2samp(a, b)
        ref = stats.ks_2samp(a.numpy(), b.numpy(), method="asymp")
        assert d == pytest.approx(ref.statistic)
        assert p == pytest.approx(ref.pvalue, rel=0.05, abs=1e-3)


def test_auc_matches_sklearn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(15)
    scores = torch.randint(5, (3, 60), generator=g).double()  # many ties
    y = torch.stack([torch.randperm(60, generator=g) < 30 for _ in range(3)])
    got = _aucs(scores, y)
    for i in range(3):
        assert float(got[i]) == pytest.approx(metrics.roc_auc_score(y[i].numpy(), scores[i].numpy()))


# ---------------------------------------------------------------- the time plan


def one_skip(findings):
    assert len(findings) == 1
    (f,) = findings
    assert f.status == "skip" and f.evidence["skip_reason"] == "time" and f.evidence["needs_s"] > 0
    return f


def test_without_a_deadline_the_verdict_is_unchanged(one_thread):
    x, y = gaussian(300, seed=21)
    task = make_task(x[:150], y[:150], x[150:] + 0.5, y[150:])
    plain = check_val_test_match(task, seed=4, permutations=50)
    for deadline in (None, 3600.0, ExpiresAfter(10 ** 6)):
        same = check_val_test_match(task, seed=4, permutations=50, deadline=deadline)
        assert [f.to_dict() for f in same] == [f.to_dict() for f in plain]
    assert plain[0].status == "fail"


def test_items_read_one_by_one_in_chunks_give_the_same_verdict(one_thread):
    x, y = gaussian(1200, seed=22)
    as_list = Task(Flat(10, 3), list(zip(x[:600], y[:600])), list(zip(x[:600], y[:600])), list(zip(x[600:], y[600:])))
    as_tensors = make_task(x[:600], y[:600], x[600:], y[600:])
    a = check_val_test_match(as_list, seed=1, permutations=50, deadline=3600.0)
    b = check_val_test_match(as_tensors, seed=1, permutations=50)
    assert a[0].evidence["inputs"] == b[0].evidence["inputs"]


def test_a_spent_deadline_gives_one_skip_before_any_work():
    x, y = gaussian(200, seed=23)
    f = one_skip(check_val_test_match(make_task(x[:100], y[:100], x[100:], y[100:]), deadline=Deadline.after(0.0)))
    assert "featurising and the 5 folds not begun" in f.message
    assert f.evidence["n_each"] == 100 and f.evidence["permutations"] == 200


def test_the_allowance_for_steps_not_begun_follows_the_documented_rule():
    g = torch.Generator().manual_seed(24)
    x = torch.rand(2000, 3, 32, 32, generator=g)
    y = torch.zeros(2000).long()
    f = one_skip(check_val_test_match(make_task(x[:1000], y[:1000], x[1000:], y[1000:]), deadline=ExpiresAfter(1)))
    expected = PCA_S_PER_VALUE * 2000 * 3072 + FIT_S_PER_UNIT * 2000 * 201 * 5
    assert f.evidence["needs_s"] == pytest.approx(max(expected, 1.0), abs=0.06)


def test_running_out_between_folds_skips(one_thread):
    x, y = gaussian(200, seed=25)
    task = make_task(x[:100], y[:100], x[100:], y[100:])
    f = one_skip(check_val_test_match(task, deadline=ExpiresAfter(4)))  # entry, featurised, folds 1 and 2
    assert "fitted 2 of 5 folds" in f.message


def test_running_out_while_reading_items_skips():
    x, y = gaussian(1200, seed=26)
    task = Task(Flat(10, 3), list(zip(x[:600], y[:600])), list(zip(x[:600], y[:600])), list(zip(x[600:], y[600:])))
    f = one_skip(check_val_test_match(task, deadline=ExpiresAfter(2)))
    assert f"read {2 * READ_CHUNK} of the 1200 validation and test items" in f.message


def test_every_label_of_a_tensor_dataset_or_its_subset_is_read_without_items():
    from torch.utils.data import Subset

    from dltips.data.shift import _all_labels

    y = torch.arange(10) % 3
    pairs = TensorDataset(torch.randn(10, 2), y)
    sampled = torch.tensor([0, 1])
    assert torch.equal(_all_labels(pairs, sampled), y)
    assert torch.equal(_all_labels(Subset(pairs, [7, 2, 5]), sampled), y[[7, 2, 5]])
    assert _all_labels([(torch.zeros(2), 1)] * 4, sampled) is sampled  # a list of items: the labels sampled
