import importlib.util
import itertools
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from dltips import Finding, Recipe, Task, evaluate, fit
from dltips.monitor.curves import spearman
from dltips.monitor.metrics import COST_Z, DIVERGENCE_Z, MetricTracker
from dltips.monitor.metrics import higher_is_better as direction
from dltips.monitor.scores import (
    KIND_METRICS,
    add_sums,
    metric_sums,
    metrics_from_sums,
    reduce_sums,
    zero_sums,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _synthetic():
    """tests/training/synthetic.py (shared small tasks), loaded by path."""
    if "synthetic" in sys.modules:
        return sys.modules["synthetic"]
    spec = importlib.util.spec_from_file_location("synthetic", Path(__file__).parents[1] / "training" / "synthetic.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["synthetic"] = module
    spec.loader.exec_module(module)
    return module


synthetic = _synthetic()


def streamed(kind, output, target, loss_fn, n_classes=None, cuts=(0, 7, 8, 50, 121)):
    """Metrics from the sums of uneven batches (one of them a single item)."""
    total = zero_sums(kind, n_classes if n_classes is not None else output.shape[1] if output.dim() > 1 else None)
    bounds = [*cuts, len(target)]
    for a, b in itertools.pairwise(bounds):
        add_sums(total, metric_sums(kind, output[a:b], target[a:b], loss_fn(output[a:b], target[a:b]), n_classes))
    return metrics_from_sums(kind, total)


def one_shot(kind, output, target, loss_fn, n_classes=None):
    return metrics_from_sums(kind, metric_sums(kind, output, target, loss_fn(output, target), n_classes))


def _quiet(metric, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(*args)


def assert_close(got, want, names=None):
    """Counts give exact metrics; a float32 batch loss summed in another order agrees to float32 precision."""
    for name in names or want:
        rel_tol = 1e-6 if name == "loss" else 1e-9
        assert math.isclose(got[name], want[name], rel_tol=rel_tol, abs_tol=1e-12), (name, got[name], want[name])


# ----------------------------------------------------------------------------- streaming metrics


def test_classification_metrics_stream_and_match_sklearn():
    g = torch.Generator().manual_seed(0)
    n, c = 300, 6
    logits = torch.randn(n, c, generator=g)
    logits[:, 5] -= 100  # class 5 is never predicted ...
    y = torch.randint(0, 4, (n,), generator=g)  # ... nor a target; class 4 is predicted but never a target
    logits[:10, 4] += 100
    logits[10:, 4] -= 100
    pred = logits.argmax(1).numpy()
    assert 4 in pred and 4 not in y and 5 not in pred
    want = {
        "loss": F.cross_entropy(logits.double(), y).item(),
        "accuracy": sklearn_metrics.accuracy_score(y, pred),
        "balanced_accuracy": _quiet(sklearn_metrics.balanced_accuracy_score, y, pred),  # warns: 4 not in y
        "macro_f1": sklearn_metrics.f1_score(y, pred, average="macro"),
    }
    got = streamed("classification", logits, y, F.cross_entropy, n_classes=c)
    assert list(got) == list(KIND_METRICS["classification"])
    assert_close(got, want, ["accuracy", "balanced_accuracy", "macro_f1"])
    assert math.isclose(got["loss"], want["loss"], rel_tol=1e-6)
    assert_close(got, one_shot("classification", logits, y, F.cross_entropy, c))


def test_classification_metrics_by_hand():
    # targets 0 0 1 2, predictions 0 1 1 1: recalls 1/2, 1, 0; F1 2/3, 1/2, 0
    logits = F.one_hot(torch.tensor([0, 1, 1, 1]), 3).float()
    got = one_shot("classification", logits, torch.tensor([0, 0, 1, 2]), F.cross_entropy)
    assert got["accuracy"] == 0.5
    assert math.isclose(got["balanced_accuracy"], 0.5)
    assert math.isclose(got["macro_f1"], (2 / 3 + 1 / 2 + 0) / 3)


def test_many_classes_keep_per_class_counts_with_the_same_metrics():
    g = torch.Generator().manual_seed(1)
    n, c = 400, 1500  # above MAX_CONFUSION_CLASSES: no 1500 x 1500 matrix
    y = torch.randint(0, 40, (n,), generator=g)
    logits = torch.randn(n, c, generator=g)
    logits[torch.arange(n), y] += 2.5 * torch.rand(n, generator=g)
    sums = metric_sums("classification", logits, y, F.cross_entropy(logits, y))
    assert "confusion" not in sums and sums["hits"].shape == (c,)
    pred = logits.argmax(1).numpy()
    got = streamed("classification", logits, y, F.cross_entropy, n_classes=c)
    assert math.isclose(got["balanced_accuracy"], _quiet(sklearn_metrics.balanced_accuracy_score, y, pred))
    assert math.isclose(got["macro_f1"], sklearn_metrics.f1_score(y, pred, average="macro"))


def test_segmentation_targets_with_the_ignore_index_are_left_out():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 3, 5, 5, generator=g)
    y = torch.randint(0, 3, (4, 5, 5), generator=g)
    y[0, :2] = -100
    got = one_shot("classification", logits, y, F.cross_entropy)
    kept = y != -100
    pred = logits.argmax(1)
    assert math.isclose(got["accuracy"], (pred[kept] == y[kept]).double().mean().item())
    assert math.isclose(got["balanced_accuracy"], sklearn_metrics.balanced_accuracy_score(y[kept], pred[kept]))


def binary_loss(output, target):
    return F.binary_cross_entropy_with_logits(output.reshape(target.shape), target.float())


def test_binary_metrics_stream_and_match_sklearn():
    g = torch.Generator().manual_seed(3)
    y = (torch.rand(250, generator=g) < 0.3).float()
    logits = (torch.randn(250, 1, generator=g) + 1.5 * y[:, None] - 0.7)
    pred = (logits[:, 0] > 0).long().numpy()
    truth = y.long().numpy()
    got = streamed("binary", logits, y, binary_loss)
    assert list(got) == list(KIND_METRICS["binary"])
    assert_close(got, {
        "accuracy": sklearn_metrics.accuracy_score(truth, pred),
        "balanced_accuracy": sklearn_metrics.balanced_accuracy_score(truth, pred),
        "f1": sklearn_metrics.f1_score(truth, pred),
        "precision": sklearn_metrics.precision_score(truth, pred),
        "recall": sklearn_metrics.recall_score(truth, pred),
    })
    assert math.isclose(got["loss"], binary_loss(logits, y).item(), rel_tol=1e-6)


def test_binary_zero_division_gives_zero_like_sklearn():
    y = torch.tensor([0.0, 0.0, 1.0, 1.0])
    never_positive = torch.full((4,), -3.0)
    got = one_shot("binary", never_positive, y, binary_loss)
    assert got["precision"] == 0.0 and got["f1"] == 0.0 and got["recall"] == 0.0
    assert sklearn_metrics.precision_score([0, 0, 1, 1], [0, 0, 0, 0], zero_division=0) == 0.0
    assert got["balanced_accuracy"] == 0.5  # recall 1 on negatives, 0 on positives
    only_negatives = one_shot("binary", never_positive, torch.zeros(4), binary_loss)
    assert only_negatives["balanced_accuracy"] == 1.0  # the one class present in the targets
    assert only_negatives["recall"] == 0.0 and only_negatives["f1"] == 0.0


def test_multilabel_metrics_stream_and_match_sklearn():
    g = torch.Generator().manual_seed(4)
    y = (torch.rand(200, 5, generator=g) < 0.4).float()
    y[:, 4] = 0  # a label never true ...
    logits = torch.randn(200, 5, generator=g) + 2 * y - 1
    logits[:, 4] = -5  # ... and never predicted: F1 0, still averaged, as sklearn does
    pred = (logits > 0).long().numpy()
    got = streamed("multilabel", logits, y, F.binary_cross_entropy_with_logits, n_classes=5)
    assert list(got) == list(KIND_METRICS["multilabel"])
    assert math.isclose(got["macro_f1"], sklearn_metrics.f1_score(y.long(), pred, average="macro", zero_division=0))
    assert math.isclose(got["accuracy"], 1 - sklearn_metrics.hamming_loss(y.long(), pred))


def test_regression_metrics_stream_and_match_sklearn():
    g = torch.Generator().manual_seed(5)
    y = torch.randn(180, generator=g) * 3
    y[17] = 0.0  # MAPE divides by max(|y|, eps) as sklearn does
    out = (y + torch.randn(180, generator=g))[:, None]
    out[17] = 1.0
    got = streamed("regression", out, y, lambda o, t: F.mse_loss(o.reshape(t.shape), t))
    assert list(got) == list(KIND_METRICS["regression"])
    y64, out64 = y.double().numpy(), out[:, 0].double().numpy()
    assert math.isclose(got["rmse"], math.sqrt(sklearn_metrics.mean_squared_error(y64, out64)), rel_tol=1e-9)
    assert math.isclose(got["mae"], sklearn_metrics.mean_absolute_error(y64, out64), rel_tol=1e-9)
    assert math.isclose(got["mape"], sklearn_metrics.mean_absolute_percentage_error(y64, out64), rel_tol=1e-9)
    assert got["mape"] > 1e10  # the zero target counts, divided by eps


def test_language_model_metrics_count_tokens_and_ignore_padding():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(9, 7, 11, generator=g)
    y = torch.randint(0, 11, (9, 7), generator=g)
    y[:3, 4:] = -100
    y[3] = -100  # a batch of its own with no counted token: its NaN mean loss must not count

    def lm_loss(o, t):
        return F.cross_entropy(o.flatten(0, 1), t.flatten(), ignore_index=-100)

    got = streamed("language-model", logits, y, lm_loss, cuts=(0, 2, 3, 4))
    counted = y != -100
    want_loss = F.cross_entropy(logits.flatten(0, 1).double(), y.flatten(), ignore_index=-100).item()
    assert math.isclose(got["loss"], want_loss, rel_tol=1e-6)
    assert math.isclose(got["perplexity"], math.exp(want_loss), rel_tol=1e-6)
    assert got["accuracy"] == ((logits.argmax(-1) == y) & counted).sum().item() / counted.sum().item()


def test_the_sums_of_several_ranks_give_the_metrics_of_the_whole_data():
    g = torch.Generator().manual_seed(7)
    logits, y = torch.randn(103, 4, generator=g), torch.randint(0, 4, (103,), generator=g)
    whole = one_shot("classification", logits, y, F.cross_entropy)
    ranks = [range(0, 103, 3), range(1, 103, 3), range(2, 103, 3), range(0)]  # the last rank has no items
    totals = zero_sums("classification", 4)
    for rank in ranks:
        local = zero_sums("classification", 4)
        idx = torch.tensor(list(rank), dtype=torch.long)
        for chunk in idx.split(16) if len(idx) else []:
            loss = F.cross_entropy(logits[chunk], y[chunk])
            add_sums(local, metric_sums("classification", logits[chunk], y[chunk], loss))
        add_sums(totals, local)  # what all_reduce does
    got = metrics_from_sums("classification", reduce_sums(totals), prefix="valid_")
    assert set(got) == {f"valid_{k}" for k in whole}
    for name, value in whole.items():
        assert math.isclose(got[f"valid_{name}"], value, rel_tol=1e-6), name


def test_evaluate_reports_the_kind_metrics_with_the_valid_prefix():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(90, 3, generator=g)
    y = (x[:, 0] + 0.5 * torch.randn(90, generator=g) > 0.3).float()
    model = torch.nn.Linear(3, 1)
    task = Task(model, TensorDataset(x, y), TensorDataset(x, y), kind="binary", batch_size=16)
    got = evaluate(model, task, task.valid)
    with torch.no_grad():
        pred = (model(x)[:, 0] > 0).long().numpy()
    assert list(got) == [f"valid_{k}" for k in KIND_METRICS["binary"]]
    assert math.isclose(got["valid_recall"], sklearn_metrics.recall_score(y.long(), pred, zero_division=0))
    assert math.isclose(got["valid_balanced_accuracy"], sklearn_metrics.balanced_accuracy_score(y.long(), pred))


def test_bad_inputs_are_reported_clearly():
    with pytest.raises(ValueError, match="kind must be one of"):
        metric_sums("ranking", torch.zeros(2, 2), torch.zeros(2), torch.zeros(()))
    with pytest.raises(ValueError, match="n_classes"):
        zero_sums("classification")
    with pytest.raises(ValueError, match=r"shape \(batch, 3"):
        metric_sums("classification", torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), torch.zeros(()), 3)
    with pytest.raises(ValueError, match="need the names"):
        metrics_from_sums("regression", {"items": 1.0, "loss": 1.0})


def test_higher_is_better_knows_the_names_and_asks_for_others():
    assert direction("valid_accuracy") and direction("balanced_accuracy") and direction("valid_recall")
    assert not direction("valid_loss") and not direction("mape") and not direction("valid_perplexity")
    with pytest.raises(ValueError, match="'valid_auc'.*declare"):
        direction("valid_auc")
    assert direction("valid_auc", {"valid_auc": True})
    assert not direction("valid_accuracy", {"accuracy": False})  # a declaration overrides


def test_spearman_matches_a_hand_computed_example_and_scipy():
    # x ranks 1 2 3 4 5; y = 10 20 20 40 30 has ranks 1 2.5 2.5 5 4
    rx, ry = np.array([1, 2, 3, 4, 5.0]), np.array([1, 2.5, 2.5, 5, 4])
    want = np.corrcoef(rx, ry)[0, 1]
    assert math.isclose(spearman([1, 2, 3, 4, 5], [10, 20, 20, 40, 30]), want)
    assert math.isclose(want, 0.8720816, rel_tol=1e-6)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 6, 40).astype(float), rng.normal(size=40)
    assert math.isclose(spearman(a, b), stats.spearmanr(a, b).statistic, rel_tol=1e-12)


# ----------------------------------------------------------------------------- the tracker on given curves


def fill(tracker, curves, n_items=None, steps=None):
    length = len(next(iter(curves.values())))
    for i in range(length):
        step = steps[i] if steps is not None else 10 * (i + 1)
        tracker.record(step, {name: values[i] for name, values in curves.items()}, n_items)
    return tracker


def test_too_few_evaluations_are_skipped_with_the_reason():
    tracker = fill(MetricTracker(), {"valid_loss": [1.0, 0.8], "valid_accuracy": [0.5, 0.6]})
    divergence, logloss = tracker.findings()
    assert (divergence.tip, divergence.status) == ("metric-divergence", "skip")
    assert (logloss.tip, logloss.status) == ("logloss-downstream", "skip")
    assert "at least 3 evaluations" in divergence.message and "2 evaluation" in divergence.message


def test_accuracy_up_while_balanced_accuracy_falls_is_a_divergence_at_the_parting_step():
    accuracy = [0.50, 0.60, 0.70, 0.75, 0.80, 0.84, 0.87, 0.89, 0.90, 0.91]
    balanced = [0.40, 0.50, 0.60, 0.64, 0.62, 0.58, 0.53, 0.48, 0.45, 0.43]
    loss = [1.00, 0.80, 0.65, 0.55, 0.50, 0.46, 0.43, 0.41, 0.40, 0.39]
    curves = {"valid_loss": loss, "valid_accuracy": accuracy, "valid_balanced_accuracy": balanced}
    tracker = fill(MetricTracker(), curves, n_items=1000)
    divergence, logloss = tracker.findings()
    assert divergence.status == "warn"
    assert "valid_balanced_accuracy" in divergence.title and "step 40" in divergence.title
    main = divergence.evidence["divergences"][0]
    assert main["worsening"] == "valid_balanced_accuracy" and main["step"] == 40
    assert main["worsening_values"] == (0.64, 0.43)
    assert divergence.evidence["objective"] == "valid_balanced_accuracy"
    assert not divergence.evidence["objective_declared"]
    assert "Objective: valid_balanced_accuracy, assumed" in divergence.message
    assert "0.64" in divergence.message and "0.43" in divergence.message
    assert "class frequency" in divergence.fix and "valid_balanced_accuracy" in divergence.fix
    figure = divergence.figures[0]
    assert figure["kind"] == "lines" and figure["x"] == [10 * (i + 1) for i in range(10)]
    assert figure["series"]["valid_balanced_accuracy"] == balanced

    # the lowest loss is at the end, where balanced accuracy is worst: costly, and loss ranks it backwards
    assert logloss.status == "warn"
    assert logloss.evidence["loss_step"] == 100 and logloss.evidence["objective_step"] == 40
    assert logloss.evidence["cost"] == pytest.approx((0.62 + 0.64 + 0.60) / 3 - (0.45 + 0.43) / 2)
    assert logloss.evidence["spearman"]["valid_accuracy"] == pytest.approx(1.0)
    assert logloss.evidence["spearman"]["valid_balanced_accuracy"] == pytest.approx(
        spearman([-v for v in loss], balanced))


def test_loss_rising_while_accuracy_rises_points_to_calibration():
    loss = [1.0, 0.7, 0.55, 0.50, 0.52, 0.58, 0.66, 0.75, 0.85, 0.95]
    accuracy = [0.50, 0.62, 0.70, 0.74, 0.77, 0.80, 0.82, 0.84, 0.85, 0.86]
    tracker = fill(MetricTracker(objective="valid_accuracy"), {"valid_loss": loss, "valid_accuracy": accuracy}, 2000)
    divergence, logloss = tracker.findings()
    assert divergence.status == "warn"
    d = divergence.evidence["divergences"][0]
    assert (d["improving"], d["worsening"]) == ("valid_accuracy", "valid_loss")
    assert "over-confident" in divergence.fix and "temperature" in divergence.fix
    assert "Objective: valid_accuracy (declared)" in divergence.message
    assert logloss.status == "warn" and logloss.evidence["loss_step"] == 40


def test_metrics_that_move_together_pass_and_loss_agreement_is_info():
    rng = np.random.default_rng(0)
    t = np.arange(12)
    accuracy = 0.9 - 0.4 * np.exp(-t / 3) + rng.normal(0, 0.004, 12)
    loss = 0.3 + 0.7 * np.exp(-t / 3) + rng.normal(0, 0.01, 12)
    tracker = fill(MetricTracker(), {"valid_loss": loss, "valid_accuracy": accuracy}, n_items=500)
    divergence, logloss = tracker.findings()
    assert divergence.status == "pass" and divergence.fix is None
    assert "Objective: valid_accuracy" in divergence.message
    assert logloss.status == "info"
    assert logloss.evidence["spearman"]["valid_accuracy"] > 0.8
    assert logloss.evidence["cost_z"] <= COST_Z


def test_a_fall_within_the_noise_of_few_items_is_not_a_divergence():
    # accuracy on 50 items: one item less (0.02) after step 30 is noise, however smooth the loss
    tracker = fill(MetricTracker(), {"valid_loss": [0.9, 0.6, 0.5, 0.45, 0.42, 0.40],
                                     "valid_accuracy": [0.80, 0.88, 0.90, 0.88, 0.88, 0.88]}, n_items=50)
    divergence, _ = tracker.findings()
    assert divergence.status == "pass"
    assert divergence.evidence["max_statistic"] < DIVERGENCE_Z


def test_a_metric_worse_from_the_start_warns_only_when_it_is_the_objective():
    curves = {"valid_loss": [1.0, 0.8, 0.65, 0.55, 0.5, 0.46, 0.43, 0.41],
              "valid_accuracy": [0.80, 0.84, 0.87, 0.89, 0.90, 0.91, 0.92, 0.925],
              "valid_balanced_accuracy": [0.70, 0.66, 0.60, 0.55, 0.52, 0.50, 0.49, 0.48]}
    objective, _ = fill(MetricTracker(), curves, n_items=1000).findings()
    assert objective.status == "warn" and not objective.evidence["main"]["parted"]
    assert "from the first evaluation" in objective.title
    guardrail, _ = fill(MetricTracker(objective="valid_accuracy"), curves, n_items=1000).findings()
    assert guardrail.status == "info" and "for information" in guardrail.message


def test_the_tracker_counts_tokens_for_a_language_model():
    torch.manual_seed(0)
    seqs = torch.randint(0, 7, (24, 6))
    targets = seqs.roll(-1, dims=1)
    targets[:, -1] = -100
    task = Task(torch.nn.Embedding(7, 7), TensorDataset(seqs, targets), TensorDataset(seqs, targets),
                kind="language-model", batch_size=8)
    tracker = MetricTracker()
    fit(task, epochs=3, callbacks=[tracker], progress=False)
    assert [r.n_items for r in tracker.records] == [24 * 5] * 3
    assert set(tracker.records[0].metrics) == {"valid_loss", "valid_perplexity", "valid_accuracy"}
    divergence, logloss = tracker.findings()
    assert divergence.evidence["objective"] == "valid_accuracy"
    assert logloss.evidence["spearman"]["valid_perplexity"] == pytest.approx(1.0)  # perplexity = exp(loss)


def test_record_checks_names_and_keeps_a_bounded_history():
    tracker = MetricTracker(max_records=8)
    with pytest.raises(ValueError, match="valid_auc"):
        tracker.record(1, {"valid_auc": 0.7})
    with pytest.raises(ValueError, match="n_items"):
        tracker.record(1, {"valid_loss": 0.7}, n_items=0)
    for step in range(1, 30):
        tracker.record(step, {"valid_loss": 1 / step})
    steps = [r.step for r in tracker.records]
    assert len(steps) <= 8 and steps[0] == 1 and steps[-1] == 29 and steps == sorted(steps)
    declared = MetricTracker(objective="valid_auc", higher_is_better={"valid_auc": True})
    fill(declared, {"valid_loss": [1.0, 0.8, 0.7, 0.6], "valid_auc": [0.6, 0.7, 0.75, 0.8]})
    assert declared.findings()[1].evidence["objective"] == "valid_auc"
    with pytest.raises(ValueError, match="objective 'valid_f1'"):
        fill(MetricTracker(objective="valid_f1"), {"valid_loss": [1.0, 0.8, 0.7]}).findings()


def test_from_history_reads_fit_rows():
    rows = [{"epoch": e, "step": 5 * e, "train_loss": 1 / e, "valid_loss": 1 / e, "valid_mae": 2 / e}
            for e in range(1, 5)]
    tracker = MetricTracker.from_history(rows)
    assert [r.step for r in tracker.records] == [5, 10, 15, 20]
    assert set(tracker.records[0].metrics) == {"valid_loss", "valid_mae"}
    divergence, logloss = tracker.findings()
    assert divergence.evidence["objective"] == "valid_mae"  # the default objective for a regression
    assert isinstance(divergence, Finding) and logloss.evidence["spearman"] == {"valid_mae": pytest.approx(1.0)}


# ----------------------------------------------------------------------------- calibration: real training runs
# The runs below are a subset of the calibration in docs/calibration.md ("Metric curves").

CONSTANT = Recipe(one_cycle=False)


def overlapping_blobs(n, weights, spread, seed):
    x, y = synthetic.blobs(n=n, d=4, c=len(weights), weights=weights, seed=seed)
    return x + spread * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 100)), y


def label_noise_spirals(n, noise, seed):
    x, y = synthetic.spirals(n=n, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    flip = torch.rand(n, generator=g) < noise
    return x, torch.where(flip, torch.randint(0, 3, (n,), generator=g), y)


def tracked(task, epochs, recipe=None):
    tracker = MetricTracker()
    fit(task, epochs=epochs, recipe=recipe, callbacks=[tracker], progress=False, seed=0)
    return tracker.findings()


def model(seed, *shape):
    torch.manual_seed(seed)
    return synthetic.mlp(*shape)


def healthy_run(name, seed):
    s = synthetic
    if name == "blobs":
        x, y = s.blobs(seed=seed)
        return tracked(s.make_task(model(seed, 16, 10), x, y), 16)
    if name == "spirals":
        x, y = s.spirals(seed=seed)
        return tracked(s.make_task(model(seed, 2, 3), x, y), 30, CONSTANT)
    if name == "binary":
        x, y = s.blobs(n=300, c=2, seed=seed)
        return tracked(s.make_task(model(seed, 16, 1), x, y.float(), kind="binary"), 30, CONSTANT)
    if name == "regression":
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(600, 8, generator=g)
        y = torch.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.5 * x[:, 3] + 0.3 * torch.randn(600, generator=g) + 3
        return tracked(s.make_task(model(seed, 8, 1), x, y, kind="regression"), 20)
    if name == "imbalanced":
        x, y = overlapping_blobs(1000, [0.9, 0.05, 0.05], 1.0, seed)
        return tracked(s.make_task(model(seed, 4, 3), x, y), 30, CONSTANT)
    if name == "overlapping-binary":
        x, y = overlapping_blobs(600, [0.7, 0.3], 1.5, seed)
        return tracked(s.make_task(model(seed, 4, 1), x, y.float(), kind="binary"), 30, CONSTANT)
    raise KeyError(name)


# (task, seed): the imbalanced run with seed 5 has the largest statistic of the 130 healthy runs (1.34); in the
# regression with seed 9, MAPE gets worse from the first evaluation while MSE and MAE improve (reported as info)
HEALTHY = [("blobs", 0), ("spirals", 0), ("binary", 0), ("regression", 9), ("imbalanced", 5),
           ("overlapping-binary", 0)]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name, seed", HEALTHY, ids=[f"{n}-{s}" for n, s in HEALTHY])
def test_healthy_runs_give_no_warning(name, seed):
    divergence, logloss = healthy_run(name, seed)
    assert divergence.status in ("pass", "info"), divergence.message
    assert logloss.status == "info", logloss.message
    assert divergence.evidence["max_statistic"] < DIVERGENCE_Z / 2
    if name == "regression":
        assert divergence.status == "info" and divergence.evidence["main"]["worsening"] == "valid_mape"
        assert "for information" in divergence.message


@pytest.mark.usefixtures("one_thread")
def test_a_model_drifting_to_the_majority_class_is_flagged():
    # fitted on balanced data, then fine-tuned on data where one class has 90% of the items
    seed = 2
    x, y = overlapping_blobs(600, [1, 1, 1], 1.0, seed)
    net = model(seed, 4, 3)
    fit(synthetic.make_task(net, x, y), epochs=10, recipe=CONSTANT, progress=False, seed=seed)
    x, y = overlapping_blobs(1000, [0.9, 0.05, 0.05], 1.0, seed)
    divergence, logloss = tracked(synthetic.make_task(net, x, y), 20, Recipe(one_cycle=False, lr=3e-4))
    assert divergence.status == "warn"
    pairs = {(d["improving"], d["worsening"]) for d in divergence.evidence["divergences"]}
    assert ("valid_accuracy", "valid_balanced_accuracy") in pairs
    assert divergence.evidence["main"]["parted"]
    assert "class frequency" in divergence.fix
    assert logloss.status == "warn" and logloss.evidence["compared_with"] == "valid_balanced_accuracy"


@pytest.mark.usefixtures("one_thread")
def test_an_over_confident_model_is_flagged():
    # clean training labels, 30% of validation labels random: the model fits the training set, grows confident
    # and is confidently wrong on the noisy validation items while still carving the spirals
    seed = 1
    x, y = label_noise_spirals(480, 0.0, seed)
    xv, yv = label_noise_spirals(300, 0.3, seed + 50)
    task = Task(model(seed, 2, 3, 128), TensorDataset(x, y), TensorDataset(xv, yv), batch_size=32)
    divergence, logloss = tracked(task, 40, CONSTANT)
    assert divergence.status == "warn"
    pairs = {(d["improving"], d["worsening"]) for d in divergence.evidence["divergences"]}
    assert ("valid_accuracy", "valid_loss") in pairs
    main = divergence.evidence["main"]
    assert (main["improving"], main["worsening"]) == ("valid_balanced_accuracy", "valid_loss")  # the objective
    assert "over-confident" in divergence.fix
    assert logloss.status == "warn"


def test_choosing_by_an_mse_loss_against_an_assumed_mae_is_info_not_warn():
    # the loss and RMSE fall to step 100; MAE is best at step 40: a choice between two fair objectives
    loss = [1.00, 0.60, 0.40, 0.30, 0.25, 0.22, 0.20, 0.19, 0.18, 0.17]
    mae = [0.90, 0.60, 0.45, 0.30, 0.32, 0.36, 0.40, 0.44, 0.47, 0.50]
    curves = {"valid_loss": loss, "valid_rmse": [v ** 0.5 for v in loss], "valid_mae": mae}
    _, assumed = fill(MetricTracker(), curves, n_items=1000).findings()
    assert assumed.status == "info" and assumed.evidence["loss_twin"] == "valid_rmse"
    assert "valid_mae" in assumed.fix and "objective=" in assumed.fix
    # declared, the same curves are a real cost
    _, declared = fill(MetricTracker(objective="valid_mae"), curves, n_items=1000).findings()
    assert declared.status == "warn" and declared.evidence["cost_z"] > 3
