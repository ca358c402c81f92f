"""The consistency checker on hand-made findings, and the fixed checks' words against their own numbers."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).parent / "calibration"))

from consistency import contradictions  # noqa: E402
from zoo import digits_mlp, tabular  # noqa: E402

from dltips import MetricTracker, Task  # noqa: E402
from dltips.data.worst import check_worst_predictions  # noqa: E402
from dltips.findings import Finding, skipped_for_time  # noqa: E402
from dltips.monitor import stats  # noqa: E402
from dltips.monitor.samples import Sample  # noqa: E402
from dltips.monitor.verdicts import activation_finding, update_ratio_finding  # noqa: E402
from dltips.training import lr_check  # noqa: E402
from dltips.training.init import WARN_EXCESS, check_initial_loss  # noqa: E402
from dltips.training.lr import LRFinderResult  # noqa: E402
from dltips.training.lr_check import check_lr  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def finding(tip="initialization", status="pass", title="t", message="m", fix=None, **evidence):
    return Finding(tip, status, title, message, fix, evidence)


def rules(f):
    """The names of the rules that caught `f`."""
    return {line.split(":")[0] for line in contradictions(f)}


# ---------------------------------------------------------------------------------------------- the rules


def test_a_measured_value_said_within_the_expected_range_must_be_inside_it():
    text = "The untrained model's mean loss {m}, within the expected range 2.936 (prior entropy) to 3.296 (ln C)."
    ok = finding(message=text.format(m=3.1), measured=3.1, range=[2.936, 3.296])
    caught = finding(message=text.format(m=3.54), measured=3.54, range=[2.936, 3.296])
    assert contradictions(ok) == []
    assert rules(caught) == {"range_claims"}


def test_printed_numbers_said_to_be_in_a_band_must_be_in_it():
    ok = finding("update-ratio", message="ratios from 1.3e-03 to 9.9e-02; inside the healthy band [1e-04, 1e-01].")
    caught = finding("update-ratio", message="ratios from 3.0e-05 to 2.0e-02; inside the healthy band [1e-04, 1e-01].")
    assert contradictions(ok) == []
    assert rules(caught) == {"range_claims"}
    assert contradictions(finding(message="The ratio 0.5 is within [0.2, 0.8].")) == []
    assert rules(finding(message="The ratio 0.95 is within [0.2, 0.8].")) == {"range_claims"}
    assert rules(finding(message="The ratio 0.95 is between 0.2 and 0.8.")) == {"range_claims"}


def test_rounding_is_not_a_contradiction():
    assert contradictions(finding(message="The ratio 1e-04 is within [1.04e-04, 2e-01].")) == []


def test_a_pass_or_info_tells_nobody_to_change_the_learning_rate():
    fix = "Lower the learning rate to about 0.01 (a decade below the minimum)."
    assert contradictions(finding("default-lr", "warn", fix=fix)) == []
    assert rules(finding("default-lr", "pass", fix=fix)) == {"fix_changes_lr_on_pass"}
    assert rules(finding("default-lr", "info", fix="Multiply the learning rate of the layers named by 2.")) == {
        "fix_changes_lr_on_pass"}
    assert contradictions(finding("default-lr", "info", fix="Check that the model can learn at all.")) == []


def test_a_rung_said_not_run_has_no_steps():
    rungs = [{"size": 1, "status": "passed", "steps": 40}, {"size": 4, "status": "not run", "steps": 0}]
    ok = finding("overfit-tiny", message="1: fitted in 40 steps (loss 2.3 to 0.01); 4: not run (time).", rungs=rungs)
    assert contradictions(ok) == []
    said = finding("overfit-tiny", message="1: not run (the time budget was spent).", rungs=rungs)
    assert rules(said) == {"not_run_rungs"}
    ran = [{"size": 1, "status": "not run", "steps": 12}]
    assert rules(finding("overfit-tiny", message="1: not run (time).", rungs=ran)) == {"not_run_rungs"}


def test_relabelling_advice_needs_suspected_label_errors():
    fix = "Look at these items: relabel or drop wrong labels."
    counts = {"wrong": 4, "confident_mistakes": 2}
    assert contradictions(finding("worst-predictions", "info", fix=fix, counts=counts)) == []
    none = {"wrong": 0, "confident_mistakes": 0}
    assert rules(finding("worst-predictions", "info", fix=fix, counts=none)) == {"relabel_without_mistakes"}
    assert rules(finding("worst-predictions", "info", fix="Fix the labels.", confident_mistakes=[])) == {
        "relabel_without_mistakes"}
    assert contradictions(finding("worst-predictions", "info", fix=None, counts=none)) == []


def test_default_lr_is_quoted_only_for_a_known_family():
    known = finding("default-lr", message="default_lr for this model is 0.01.", optimizer_family="adamw",
                    default_lr=0.01)
    assert contradictions(known) == []
    unknown = finding("default-lr", message="The optimizer family (Adadelta) has no default_lr reference.",
                      optimizer_family=None, default_lr=None)
    assert contradictions(unknown) == []
    quoted = finding("default-lr", "warn", message="default_lr for this model is 0.01.", optimizer_family=None,
                     default_lr=None)
    assert rules(quoted) == {"default_lr_without_family"}
    advised = finding("default-lr", "warn", fix="Raise it, or start from default_lr (0.01).", optimizer_family=None)
    assert rules(advised) == {"default_lr_without_family"}


def test_a_skip_for_time_says_how_much_time_it_needs():
    assert contradictions(skipped_for_time("default-lr", 12.0, "5 of 100 steps")) == []
    bare = finding("default-lr", "skip", skip_reason="time")
    assert rules(bare) == {"time_skip_without_needs"}


def test_a_percentage_in_the_title_matches_the_evidence_it_names():
    ok = finding("augmentation-invariances", "warn", title="Transform 'flip' seems to change labels: accuracy "
                 "drops by 12%", drop=0.12)
    assert contradictions(ok) == []
    wrong = dataclasses.replace(ok, evidence={"drop": 0.30})
    assert rules(wrong) == {"title_percentages"}
    unmapped = finding(title="Something at 40% of the budget")
    assert contradictions(unmapped) == []


def test_not_enough_evaluations_means_fewer_than_needed():
    title = "Not enough evaluations to read metric curves ({n})"
    assert contradictions(finding("metric-divergence", "skip", title.format(n=2), evaluations=2,
                                  min_evaluations=3)) == []
    assert rules(finding("metric-divergence", "skip", title.format(n=30), evaluations=30, min_evaluations=3)) == {
        "not_enough_claims"}


def test_an_lr_in_the_sane_range_is_below_the_suggestion_it_quotes():
    ok = finding("default-lr", title="LR 0.001 is in the sane range of the range test (suggestion 0.01)",
                 task_lr=0.001)
    assert contradictions(ok) == []
    caught = finding("default-lr", title="LR 1 is in the sane range of the range test (suggestion 1)", task_lr=1.0)
    assert rules(caught) == {"suggestion_claims"}


# ---------------------------------------------------------------------------------------------- initialization


class Table(nn.Module):
    """Returns a fixed row of outputs per item; the input is the item's index."""

    def __init__(self, rows):
        super().__init__()
        self.rows = nn.Parameter(torch.as_tensor(rows, dtype=torch.float32))

    def forward(self, x):
        return self.rows[x.long()]


def constant_prediction_task(n_classes=27, n=2700, top_logit=2.0):
    """Balanced labels, the same logits for every item: class 0 favoured by `top_logit` (no spread)."""
    y = torch.arange(n) % n_classes
    row = torch.zeros(n_classes)
    row[0] = top_logit
    idx = torch.arange(n)
    return Task(Table(row.repeat(n, 1)), TensorDataset(idx, y), TensorDataset(idx, y), n_classes=n_classes)


def test_a_loss_just_above_the_range_passes_without_being_called_within_it():
    task = constant_prediction_task()
    (f,) = check_initial_loss(task, max_items=2700)
    ln_c = math.log(27)
    p = torch.softmax(torch.tensor([2.0] + [0.0] * 26, dtype=torch.float64), 0)
    expected = float(-(p.log()).mean())  # balanced labels: the mean of -log p over the classes
    assert f.evidence["measured"] == pytest.approx(expected, rel=1e-5)
    assert expected > ln_c and (f.evidence["interval"][0] - ln_c) / ln_c <= WARN_EXCESS
    assert f.status == "pass"
    assert "within the expected range" not in f.message
    assert f"{(expected - ln_c) / ln_c:.1%} above the top of the expected range" in f.message
    assert "within the 10% tolerance" in f.message
    assert contradictions(f) == []


def test_a_loss_inside_the_range_is_said_to_be_within_it():
    (f,) = check_initial_loss(constant_prediction_task(top_logit=0.0), max_items=2700)
    assert f.status == "pass" and "within the expected range" in f.message
    assert contradictions(f) == []


def test_a_regression_loss_above_the_accepted_ratios_is_not_said_to_match():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(512, generator=g)
    y = (y - y.mean()) / y.std(unbiased=False)
    offset = math.sqrt(0.35)  # loss = variance + offset^2: ratio 1.35, above 1.3, its interval reaching below
    idx = torch.arange(len(y))
    task = Task(Table(torch.full((len(y), 1), offset)), TensorDataset(idx, y), TensorDataset(idx, y),
                kind="regression")
    (f,) = check_initial_loss(task)
    ratio = float(((y - offset) ** 2).mean() / y.var(unbiased=False))
    assert f.evidence["measured"] / f.evidence["expected"] == pytest.approx(ratio, rel=1e-5)
    assert f.status == "pass" and "matches" not in f.title
    assert f"ratio {ratio:.2f}, above the accepted ratios" in f.message
    assert contradictions(f) == []


def test_the_zoo_tasks_have_consistent_initialization_findings():
    for task in (digits_mlp(), tabular("wine", "classification"), tabular("diabetes", "regression")):
        for f in check_initial_loss(task):
            assert contradictions(f) == [], (task.name, f.message)


# ---------------------------------------------------------------------------------------------- default-lr


def wine(optimizer):
    return dataclasses.replace(tabular("wine", "classification"), optimizer=optimizer)


def test_adadelta_gets_numbers_without_default_lr_or_a_verdict():
    (f,) = check_lr(wine(lambda p: torch.optim.Adadelta(p)), num_steps=30)
    assert f.status == "info" and f.fix is None
    assert f.evidence["optimizer_family"] is None and f.evidence["default_lr"] is None
    assert f.evidence["torch_default_lr"] == 1.0 and f.evidence["comparable"] is False
    assert "does not apply to Adadelta's lr" in f.message and "default_lr for" not in f.message
    assert contradictions(f) == []


@pytest.mark.parametrize("make", [lambda p: torch.optim.Adagrad(p, lr=1e-7), lambda p: torch.optim.RMSprop(p, lr=1e-7),
                                  lambda p: torch.optim.Adamax(p, lr=1e-7)])
def test_optimizers_default_lr_does_not_know_are_judged_without_quoting_it(make):
    (f,) = check_lr(wine(make), num_steps=40)
    assert f.evidence["optimizer_family"] is None and "has no default_lr reference" in f.message
    if f.status == "warn":
        assert "default_lr" not in f.fix
    assert contradictions(f) == []


def test_rprop_and_lbfgs_are_not_judged_on_the_range_tests_scale():
    (rprop,) = check_lr(wine(lambda p: torch.optim.Rprop(p)), num_steps=20)
    (lbfgs,) = check_lr(wine(lambda p: torch.optim.LBFGS(p)), num_steps=20)
    assert rprop.status == "info" and "Rprop's lr" in rprop.message
    assert lbfgs.status == "info" and "not run" in lbfgs.title and "curve" not in lbfgs.evidence
    assert contradictions(rprop) == [] and contradictions(lbfgs) == []


def curve(min_lr):
    """A range-test result whose loss bottoms out at `min_lr`."""
    lrs = list(np.geomspace(1e-7, 10, 100))
    i = int(np.argmin(np.abs(np.log(lrs) - math.log(min_lr))))
    losses = [2.0 - 1.5 * k / i if k <= i else 0.5 + (k - i) for k in range(100)]
    return LRFinderResult(lrs, losses, losses, lrs[i] / 10, lrs[i // 2], lrs[i], False)


@pytest.mark.parametrize("task_lr, words", [(0.08, "between the range test's suggestion"),
                                            (0.005, "below its suggestion"), (1e-4, "below its suggestion")])
def test_a_pass_says_where_the_lr_lies_without_contradicting_itself(monkeypatch, task_lr, words):
    result = curve(0.1)
    monkeypatch.setattr(lr_check, "lr_find", lambda *args, **kwargs: result)
    (f,) = check_lr(wine(lambda p: torch.optim.AdamW(p, lr=task_lr)))
    assert f.status == "pass" and f.fix is None and words in f.title
    assert contradictions(f) == []


def test_every_verdict_of_the_range_test_is_consistent(monkeypatch):
    result = curve(0.1)
    monkeypatch.setattr(lr_check, "lr_find", lambda *args, **kwargs: result)
    for lr in (1e-7, 1e-5, 1e-3, 0.01, 0.0099, 0.1, 1.0, 10.0):
        for make in (lambda p, lr=lr: torch.optim.AdamW(p, lr=lr), lambda p, lr=lr: torch.optim.RMSprop(p, lr=lr),
                     lambda p, lr=lr: torch.optim.Adadelta(p, lr=lr)):
            (f,) = check_lr(wine(make))
            assert contradictions(f) == [], (lr, f.title, f.message, f.fix)


# ---------------------------------------------------------------------------------------------- worst-predictions


def lookup_task(logits, y):
    idx = torch.arange(len(y))
    return Task(Table(logits), TensorDataset(idx, y), TensorDataset(idx, y))


def test_no_relabelling_advice_without_mistakes():
    y = torch.arange(100) % 4
    right = torch.nn.functional.one_hot(y, 4).float() * 5
    (f,) = check_worst_predictions(lookup_task(right, y))
    assert f.evidence["counts"] == {"wrong": 0, "confident_mistakes": 0}
    assert f.fix is None and "relabel" not in f.message and "wrong labels" not in f.message
    assert contradictions(f) == []


def test_mistakes_that_are_not_confident_get_no_relabelling_advice():
    y = torch.arange(100) % 4
    logits = torch.nn.functional.one_hot(y, 4).float() * 5
    logits[:10] = torch.nn.functional.one_hot((y[:10] + 1) % 4, 4).float() * 0.5  # wrong, label p ~ 0.22
    (f,) = check_worst_predictions(lookup_task(logits, y))
    assert f.evidence["counts"] == {"wrong": 10, "confident_mistakes": 0}
    assert f.fix is not None and "relabel" not in f.fix
    assert contradictions(f) == []


def test_confident_mistakes_get_relabelling_advice():
    y = torch.arange(100) % 4
    logits = torch.nn.functional.one_hot(y, 4).float() * 5
    logits[:7] = torch.nn.functional.one_hot((y[:7] + 1) % 4, 4).float() * 8
    (f,) = check_worst_predictions(lookup_task(logits, y))
    assert f.evidence["counts"]["confident_mistakes"] == 7 and "relabel" in f.fix and "7" in f.fix
    assert contradictions(f) == []


# ---------------------------------------------------------------------------------------------- metric-divergence


def test_a_single_metric_is_named_as_the_reason():
    tracker = MetricTracker()
    for i in range(30):
        tracker.record(10 * i, {"valid_loss": 1 / (i + 1)})
    divergence, logloss = tracker.findings()
    assert divergence.status == logloss.status == "skip"
    assert "valid_loss" in divergence.title and "evaluations" not in divergence.title
    assert "valid_accuracy" in divergence.message
    assert divergence.evidence["metrics"] == ["valid_loss"] and divergence.evidence["evaluations"] == 30
    assert "Only the loss" in logloss.title and "No validation loss" not in logloss.title
    assert contradictions(divergence) == [] and contradictions(logloss) == []


def test_too_few_evaluations_say_how_many_were_needed_and_seen():
    tracker = MetricTracker()
    for i in range(2):
        tracker.record(i, {"valid_loss": 1.0, "valid_accuracy": 0.5})
    for f in tracker.findings():
        assert "2 of the 3 needed" in f.title and contradictions(f) == []


def test_a_metric_left_out_is_named_with_why():
    tracker = MetricTracker()
    for i in range(10):
        tracker.record(i, {"valid_accuracy": 0.5 + 0.01 * i, **({"valid_loss": 1.0} if i % 2 else {})})
    divergence, logloss = tracker.findings()
    assert "Only one usable metric (valid_accuracy)" in divergence.title
    assert "valid_loss (missing from some evaluations)" in divergence.message
    assert "valid_loss: missing from some evaluations" in logloss.title
    assert contradictions(divergence) == [] and contradictions(logloss) == []


# ---------------------------------------------------------------------------------------------- the watch's verdicts


BINS = 4


@dataclass
class Run:
    """A hand-made watched run: what the verdicts read."""

    samples: list
    every: int = 1
    bins: int = BINS
    last: Sample | None = None
    optimizer: object = "opt"
    training_forwards: int = 4
    optimizer_steps: int = 4
    not_in_optimizer: list = field(default_factory=list)
    no_gradient: set = field(default_factory=set)
    shapes: dict = field(default_factory=dict)
    layer_types: dict = field(default_factory=dict)
    first_nonfinite_loss_step: int | None = None


def activation_row(dead):
    values = {"n": 64, "mean": 0.5, "var": 0.25, "min": 0.0, "max": 2.0, "dead": dead, "saturated": math.nan}
    return np.array([values[k] for k in stats.ACTIVATION_FIELDS] + [16.0] * BINS)


def dead_run(dead_per_step):
    """Samples whose ReLU layers have the given dead fractions, one dict {layer: dead} per step."""
    samples = [Sample(step, activations={k: activation_row(v) for k, v in dead.items()})
               for step, dead in enumerate(dead_per_step)]
    return Run(samples, layer_types={k: "ReLU" for k in dead_per_step[0]})


def test_layers_dead_at_init_and_later_are_told_apart():
    run = dead_run([{"a": 0.9, "b": 0.1}] + [{"a": 0.9, "b": 0.8}] * 3)
    f = activation_finding(run)
    assert f.status == "warn"
    assert "a (ReLU) from initialization" in f.message and "b (ReLU) only during training" in f.message
    assert "not at initialization" not in f.message
    assert "He (Kaiming)" in f.fix and "learning rate" in f.fix
    assert contradictions(f) == []


def test_a_layer_that_recovered_is_not_said_never_to_recover():
    f = activation_finding(dead_run([{"a": 0.9}] + [{"a": 0.1}] * 3))
    assert f.status == "warn" and "never recovers" not in f.message and "a (ReLU) recovered later" in f.message
    assert contradictions(f) == []


def ratio_run(ratios, losses, shapes=None, **changes):
    samples = [Sample(i, updates=dict(ratios), scalars={"loss": loss}) for i, loss in enumerate(losses)]
    return Run(samples, shapes=shapes or {k: (4, 4) for k in ratios}, **changes)


def test_small_ratios_after_convergence_pass_without_being_called_in_band():
    f = update_ratio_finding(ratio_run({"w": 3e-5, "v": 1e-2}, [1.0, 0.1, 1e-4, 1e-5]))
    assert f.status == "pass" and "1 of 2 below the healthy band" in f.message
    assert contradictions(f) == []


def test_no_weight_matrix_is_information_not_a_pass():
    f = update_ratio_finding(ratio_run({"bias": 1e-2}, [1.0, 0.9], shapes={"bias": (4,)}))
    assert f.status == "info" and contradictions(f) == []


def test_a_parameter_left_out_gets_a_fix_about_it_only():
    f = update_ratio_finding(ratio_run({"w": 1e-2}, [1.0, 0.9], not_in_optimizer=["extra.weight"]))
    assert f.status == "warn" and f.title == "Parameters that are never updated"
    assert "model.parameters()" in f.fix and "Multiply" not in f.fix
    assert contradictions(f) == []
