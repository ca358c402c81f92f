import itertools
import json
import math
import time

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import dltips.monitor.gaps as gaps_module
from dltips.core.deadline import Deadline
from dltips.diagnosis.report import Report
from dltips.monitor.gaps import check_error_gaps, judge_error_gaps, measure_error_gaps
from dltips.predict import LM_BASELINE_FRACTION, OutOfTime, evenly_spaced
from dltips.task import Task
from clock import ExpiresAfter

# (train, valid, test, baseline) -> (status, dominant gap); the runs of the module docstring,
# plus the brief's reference cases.
CALIBRATION = [
    ("digits CNN 10 epochs", (0.000, 0.017, 0.017, 0.905), "pass", None),
    ("digits CNN 3 epochs", (0.032, 0.064, 0.031, 0.905), "pass", None),
    ("short healthy run", (0.01, 0.03, 0.03, 0.9), "pass", None),
    ("linear on pooled digits", (0.535, 0.529, 0.533, 0.905), "warn", "bias"),
    ("MLP on 60 items", (0.000, 0.203, 0.169, 0.905), "warn", "variance"),
    ("memorised shuffled labels", (0.000, 0.877, 0.908, 0.914), "warn", "variance"),
    ("best of 100 seeds", (0.667, 0.600, 0.747, 0.8), "warn", "bias"),
    ("underfitting", (0.5, 0.52, 0.5, 0.9), "warn", "bias"),
    ("overfitting", (0.0, 0.3, None, 0.9), "warn", "variance"),
    ("validation overfitting", (0.02, 0.05, 0.2, 0.9), "warn", "valid_overfit"),
]


@pytest.mark.parametrize("name, errors, status, dominant", CALIBRATION, ids=[c[0] for c in CALIBRATION])
def test_calibration(name, errors, status, dominant):
    (f,) = judge_error_gaps(*errors)
    assert f.tip == "error-gaps"
    assert f.status == status
    assert f.evidence["dominant"] == dominant
    assert (f.fix is None) == (status == "pass")


def test_titles_name_the_dominant_problem_and_messages_carry_the_numbers():
    (bias,) = judge_error_gaps(0.5, 0.52, 0.5, 0.9)
    assert "bias" in bias.title.lower() and "50.0%" in bias.title
    assert "bigger model" in bias.fix
    (var,) = judge_error_gaps(0.0, 0.3, None, 0.9)
    assert "variance" in var.title.lower() and "30.0%" in var.message and "no test set" in var.message
    assert "more training data" in var.fix
    (val,) = judge_error_gaps(0.02, 0.05, 0.2, 0.9)
    assert "validation set" in val.title and "20.0%" in val.message and "5.0%" in val.message
    assert "fresh validation set" in val.fix


def test_thresholds_follow_the_documented_rule():
    # baseline 0.9: bias limit max(0.05, 0.2 * 0.9) = 0.18, gap limits max(0.05, 0.15 * 0.9) = 0.135
    assert judge_error_gaps(0.17, 0.17, baseline_error=0.9)[0].status == "info"  # above the mild 0.09
    assert judge_error_gaps(0.19, 0.19, baseline_error=0.9)[0].status == "warn"
    assert judge_error_gaps(0.08, 0.08, baseline_error=0.9)[0].status == "pass"
    assert judge_error_gaps(0.0, 0.13, baseline_error=0.9)[0].status == "info"
    assert judge_error_gaps(0.0, 0.14, baseline_error=0.9)[0].status == "warn"
    assert judge_error_gaps(0.0, 0.06, baseline_error=0.9)[0].status == "pass"  # below the mild 0.0675
    # baseline 0.1 (a rare positive class): the floor of 0.05 rules, not 0.15 * 0.1 = 0.015
    assert judge_error_gaps(0.0, 0.04, baseline_error=0.1)[0].status == "info"
    assert judge_error_gaps(0.0, 0.06, baseline_error=0.1)[0].status == "warn"
    (f,) = judge_error_gaps(0.0, 0.06, 0.06, baseline_error=0.1)
    gaps = f.evidence["gaps"]
    assert gaps["bias"]["large"] == pytest.approx(0.05) and gaps["variance"]["large"] == pytest.approx(0.05)
    assert gaps["variance"]["mild"] == pytest.approx(0.025)
    assert gaps["variance"]["value"] == pytest.approx(0.06) and gaps["valid_overfit"]["value"] == pytest.approx(0.0)


def test_without_a_baseline_error_rates_use_a_scale_of_one_half():
    (f,) = judge_error_gaps(0.09, 0.09)
    assert f.evidence["scale"] == 0.5 and f.evidence["gaps"]["bias"]["large"] == pytest.approx(0.1)
    assert f.status == "info"
    assert judge_error_gaps(0.11, 0.11)[0].status == "warn"


def test_a_model_worse_than_the_baseline_is_called_so():
    (f,) = judge_error_gaps(0.95, 0.95, 0.95, 0.9)
    assert f.status == "warn" and "no better than the baseline" in f.message


@pytest.mark.parametrize(
    "errors, status, dominant",
    [
        ((0.1, 0.12, 0.11, 1.0), "pass", None),  # training R^2 0.9
        ((0.3, 0.32, 0.31, 1.0), "warn", "bias"),  # training R^2 0.7
        ((0.15, 0.16, 0.16, 1.0), "info", "bias"),  # between 0.1 and 0.2 of the baseline MSE
        ((0.02, 0.4, 0.4, 1.0), "warn", "variance"),
        ((50.0, 52.0, 51.0, 1000.0), "pass", None),  # scale-free: only fractions of the baseline
    ],
)
def test_regression_uses_fractions_of_the_baseline_mse(errors, status, dominant):
    (f,) = judge_error_gaps(*errors, kind="regression")
    assert (f.status, f.evidence["dominant"]) == (status, dominant)


def test_regression_without_baseline_judges_gaps_by_ratio_and_not_bias():
    (f,) = judge_error_gaps(3.0, 3.3, kind="regression")
    assert f.status == "pass" and "not judged" in f.message
    assert f.evidence["gaps"]["bias"]["level"] == "none"
    assert judge_error_gaps(3.0, 6.3, kind="regression")[0].status == "warn"  # valid > 2 x train
    assert judge_error_gaps(3.0, 4.5, kind="regression")[0].status == "info"  # valid > 4/3 x train
    assert judge_error_gaps(3.0, 3.2, 7.0, kind="regression")[0].evidence["dominant"] == "valid_overfit"


# (train, valid, test, baseline) of language models on the charlm corpus after 300 AdamW steps
# (the measurements behind dltips.predict.LM_BASELINE_FRACTION).
LM_CALIBRATION = [
    ("CharGPT", (0.712, 0.718, 0.718, 0.839), "pass"),
    ("bigram model", (0.753, 0.756, 0.754, 0.839), "pass"),
    ("model blind to its input", (0.853, 0.839, 0.838, 0.839), "warn"),
    ("CharGPT at LR 1e-7", (0.958, 0.965, 0.967, 0.839), "warn"),
]


@pytest.mark.parametrize("name, errors, status", LM_CALIBRATION, ids=[c[0] for c in LM_CALIBRATION])
def test_language_model_bias_is_read_against_the_baseline_not_zero(name, errors, status):
    (f,) = judge_error_gaps(*errors, kind="language-model")
    assert f.status == status, f.message
    assert "not against zero" in f.message
    assert f.evidence["gaps"]["bias"]["large"] == pytest.approx(LM_BASELINE_FRACTION * errors[3])
    if status == "warn":
        assert f.evidence["dominant"] == "bias" and "beyond the tokens' frequencies" in f.message
    # the same errors for a classifier are judged against zero
    assert judge_error_gaps(*errors, kind="classification")[0].evidence["dominant"] == "bias"


def test_language_model_bias_is_never_mild_and_other_gaps_are_judged_as_usual():
    limit = LM_BASELINE_FRACTION * 0.8
    assert judge_error_gaps(limit - 0.001, limit, 0.76, 0.8, kind="language-model")[0].status == "pass"
    assert judge_error_gaps(limit + 0.001, limit, 0.76, 0.8, kind="language-model")[0].status == "warn"
    (overfit,) = judge_error_gaps(0.3, 0.6, 0.6, 0.8, kind="language-model")
    assert overfit.evidence["dominant"] == "variance" and overfit.status == "warn"
    (no_baseline,) = judge_error_gaps(0.7, 0.71, kind="language-model")
    assert no_baseline.evidence["gaps"]["bias"]["large"] is None and "most frequent token" in no_baseline.message


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((-0.1, 0.2), {}, "train_error"),
        ((0.1, 1.2), {}, "valid_error"),
        ((0.1, 0.2, math.nan), {}, "test_error"),
        ((0.1, 0.2, None, "0.9"), {}, "baseline_error"),
        ((0.1, 0.2), {"kind": "ranking"}, "kind"),
    ],
)
def test_bad_inputs_raise_clear_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        judge_error_gaps(*args, **kwargs)


def test_regression_errors_may_exceed_one():
    assert judge_error_gaps(8.0, 9.0, 9.0, 100.0, kind="regression")[0].status == "pass"


def test_evidence_is_json_and_holds_errors_gaps_and_thresholds():
    (f,) = judge_error_gaps(0.0, 0.3, 0.31, 0.9)
    report = Report(task={"name": "t"}, findings=[f])
    data = json.loads(report.to_json())["findings"][0]["evidence"]
    assert data["errors"] == {"train": 0.0, "valid": 0.3, "test": 0.31, "baseline": 0.9}
    assert set(data["gaps"]) == {"bias", "variance", "valid_overfit"}
    assert data["gaps"]["variance"]["level"] == "large"
    assert data["limits"]["bias"] == [0.05, 0.2]


def test_evenly_spaced():
    assert evenly_spaced(5, None) == [0, 1, 2, 3, 4]
    assert evenly_spaced(5, 10) == [0, 1, 2, 3, 4]
    picked = evenly_spaced(10_000, 2000)
    assert len(picked) == 2000 and picked[0] == 0 and picked[-1] == 9999
    steps = {b - a for a, b in itertools.pairwise(picked)}
    assert steps <= {5, 6}
    assert evenly_spaced(7, 1) == [0]


# ---------------------------------------------------------------- measure_error_gaps


class Lookup(nn.Module):
    """A 'model' that returns a fixed row of logits per item; x is the item's id."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x):
        return self.logits[x.long().squeeze(-1)]


def lookup_task(n_train=3000, n_valid=200, n_test=100, wrong_train=lambda i: False, wrong_eval=lambda i: False):
    n = n_train + n_valid + n_test
    labels = torch.arange(n) % 3
    logits = torch.full((n, 3), -4.0)
    for i in range(n):
        wrong = wrong_train(i) if i < n_train else wrong_eval(i - n_train)
        logits[i, (labels[i] + int(wrong)) % 3] = 4.0
    ids = torch.arange(n, dtype=torch.float32).unsqueeze(1)

    def split(a, b):
        return TensorDataset(ids[a:b], labels[a:b])

    model = Lookup(logits)
    return Task(model, split(0, n_train), split(n_train, n_train + n_valid),
                split(n_train + n_valid, n), batch_size=256)


def test_measure_error_gaps_measures_each_split():
    # wrong on the first half of the training set, on a quarter of valid and test (every 4th item)
    task = lookup_task(wrong_train=lambda i: i < 1500, wrong_eval=lambda i: i % 4 == 0)
    (f,) = check_error_gaps(task, model=task.model)
    errors = f.evidence["errors"]
    assert errors["train"] == pytest.approx(0.5, abs=1e-3)  # 2000 evenly spaced of 3000 items
    assert errors["valid"] == pytest.approx(50 / 200) and errors["test"] == pytest.approx(25 / 100)
    # validation labels 0, 1, 2 occur 67, 67 and 66 times: the majority class is right on 66 or 67 items
    assert 1 - 67 / 200 - 1e-12 <= errors["baseline"] <= 1 - 66 / 200 + 1e-12
    assert f.evidence["n_items"] == {"train": 2000, "train_total": 3000, "valid": 200, "valid_total": 200,
                                     "test": 100, "test_total": 100}
    assert f.status == "warn" and f.evidence["dominant"] == "bias"


def test_measure_error_gaps_healthy_model_passes_and_model_is_untouched():
    task = lookup_task(n_train=500, wrong_eval=lambda i: i % 50 == 0)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    task.model.train()
    (f,) = check_error_gaps(task, model=task.model)
    assert f.status == "pass"
    assert f.evidence["errors"]["train"] == 0.0 and f.evidence["errors"]["valid"] == pytest.approx(4 / 200)
    assert task.model.training
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())


def test_measure_error_gaps_without_test_set():
    task = lookup_task(n_train=300)
    task.test = None
    (f,) = check_error_gaps(task, model=task.model)
    assert f.evidence["errors"]["test"] is None and f.evidence["n_items"]["test"] == 0
    assert f.evidence["gaps"]["valid_overfit"]["value"] is None


def test_a_gap_within_sampling_noise_is_not_called_large():
    # valid - train = 0.20 > the fixed limit 0.15 * 1.0, but the validation estimate is noisy (SE 0.12)
    noisy = judge_error_gaps(0.10, 0.30, None, 1.0, kind="regression", standard_errors={"train": 0.02, "valid": 0.12})
    gap = noisy[0].evidence["gaps"]["variance"]
    assert gap["large"] == pytest.approx(2 * math.hypot(0.02, 0.12))
    assert gap["level"] == "mild" and noisy[0].status == "info"
    precise = judge_error_gaps(0.10, 0.30, None, 1.0, kind="regression", standard_errors={"train": 0.01, "valid": 0.02})
    assert precise[0].evidence["gaps"]["variance"]["level"] == "large" and precise[0].status == "warn"


def test_measure_error_gaps_returns_the_errors_that_check_error_gaps_judges():
    task = lookup_task(n_train=300, wrong_eval=lambda i: i % 4 == 0)
    gaps = measure_error_gaps(task, max_items=50)
    assert gaps.n_items["train"] == 50 and gaps.n_items["valid"] == len(task.valid)
    (f,) = check_error_gaps(task, max_items=50)
    assert f.evidence["errors"] == {"train": gaps.train_error, "valid": gaps.valid_error, "test": gaps.test_error,
                                    "baseline": gaps.baseline_error}


def test_the_old_call_forms_still_work_and_warn():
    task = lookup_task(n_train=300, wrong_eval=lambda i: i % 4 == 0)
    with pytest.warns(DeprecationWarning, match="judge_error_gaps"):
        (old,) = check_error_gaps(0.5, 0.52, 0.5, 0.9)
    assert old.to_dict() == judge_error_gaps(0.5, 0.52, 0.5, 0.9)[0].to_dict()
    with pytest.warns(DeprecationWarning, match="check_error_gaps"):
        (f,) = measure_error_gaps(task.model, task)
    assert f.evidence["errors"] == check_error_gaps(task)[0].evidence["errors"]


# ---------------------------------------------------------------- the time plan


class Slow(Lookup):
    def forward(self, x):
        time.sleep(0.1)
        return super().forward(x)


def test_without_a_deadline_or_with_a_generous_one_the_verdict_is_unchanged():
    task = lookup_task(n_train=3000, wrong_eval=lambda i: i % 4 == 0)
    plain = check_error_gaps(task, seed=1)
    assert [f.to_dict() for f in check_error_gaps(task, seed=1, deadline=None)] == [f.to_dict() for f in plain]
    assert [f.to_dict() for f in check_error_gaps(task, seed=1, deadline=3600.0)] == [f.to_dict() for f in plain]
    assert plain[0].status == "warn"


def test_a_spent_deadline_gives_one_skip_with_the_time_needed():
    task = lookup_task(n_train=3000)
    findings = check_error_gaps(task, deadline=Deadline.after(0.0))
    assert len(findings) == 1
    (f,) = findings
    assert f.status == "skip" and f.evidence["skip_reason"] == "time" and f.evidence["needs_s"] > 0
    assert f.evidence["n_items"] == {"train": 2000, "valid": 200, "test": 100}
    assert f"scored {task.batch_size} of the 2300 planned items" in f.message  # one batch, timed


def test_running_out_during_validation_counts_the_whole_plan():
    task = lookup_task(n_train=3000)
    task.batch_size = 100  # 20 training batches (19 looks at the clock), then 2 validation batches
    with pytest.raises(OutOfTime) as caught:
        measure_error_gaps(task, deadline=ExpiresAfter(20))
    assert (caught.value.done, caught.value.total) == (2000 + 100, 2000 + 200 + 100)
    (f,) = check_error_gaps(task, deadline=ExpiresAfter(20))
    assert f.status == "skip" and "scored 2100 of the 2300 planned items" in f.message


def test_the_time_needed_is_extrapolated_from_the_pace_measured():
    base = lookup_task(n_train=1000, n_valid=100, n_test=100)
    task = Task(Slow(base.model.logits.detach()), base.train, base.valid, base.test, batch_size=100)
    (f,) = check_error_gaps(task, deadline=ExpiresAfter(1))  # after the first of 12 batches of 0.1 s
    assert f.status == "skip"
    assert 11 * 0.1 * 0.9 <= f.evidence["needs_s"] <= 11 * 0.1 * 8


def test_validation_and_test_are_capped_at_evenly_spaced_items(monkeypatch):
    monkeypatch.setattr(gaps_module, "MAX_EVAL_ITEMS", 50)
    task = lookup_task(n_train=300, wrong_eval=lambda i: i % 3 == 0)
    (f,) = check_error_gaps(task)
    assert f.evidence["n_items"] == {"train": 300, "train_total": 300, "valid": 50, "valid_total": 200,
                                     "test": 50, "test_total": 100}
    picked = evenly_spaced(200, 50)
    assert f.evidence["errors"]["valid"] == pytest.approx(sum(i % 3 == 0 for i in picked) / 50)
    picked = evenly_spaced(100, 50)  # the test items follow the 200 validation items in `wrong_eval`'s count
    assert f.evidence["errors"]["test"] == pytest.approx(sum((200 + i) % 3 == 0 for i in picked) / 50)
