"""The loss floor for torch's conventions, and the ladder on models that use them."""

import math

import pytest
import torch
import torch.nn.functional as F
from synthetic import blobs, make_task, mlp
from torch import nn

from dltips.task import output_form
from dltips.training import overfit
from dltips.training.floor import loss_floor
from dltips.training.overfit import overfit_ladder

torch.manual_seed(0)
LOGITS = torch.randn(8, 5)
TARGETS = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])


def smoothed_floor(eps: float, k: int) -> float:
    """Cross-entropy of the smoothed target distribution with itself: its entropy."""
    hit, miss = 1 - eps + eps / k, eps / k
    return -(hit * math.log(hit) + (k - 1) * miss * math.log(miss))


@pytest.mark.parametrize("name, loss, output, expected", [
    ("logits + cross_entropy", F.cross_entropy, LOGITS, 0.0),
    ("log-probabilities + nll_loss", F.nll_loss, F.log_softmax(LOGITS, 1), 0.0),
    ("label smoothing 0.1", nn.CrossEntropyLoss(label_smoothing=0.1), LOGITS, smoothed_floor(0.1, 5)),
    ("label smoothing 0.3", nn.CrossEntropyLoss(label_smoothing=0.3), LOGITS, smoothed_floor(0.3, 5)),
    ("class weights", nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])), LOGITS, 0.0),
    ("sum reduction", nn.CrossEntropyLoss(reduction="sum"), LOGITS, 0.0),
])
def test_the_floor_of_each_classification_convention(name, loss, output, expected):
    floor = loss_floor("classification", loss, output, TARGETS)
    assert floor.bounded
    assert floor.value == pytest.approx(expected, abs=0.01 if expected == 0 else 1e-3)
    assert floor.value >= expected - 1e-4  # a floor is never below the true minimum


def test_ignored_targets_do_not_count():
    targets = TARGETS.clone()
    targets[:3] = -100
    floor = loss_floor("classification", nn.CrossEntropyLoss(label_smoothing=0.2), LOGITS, targets)
    alone = loss_floor("classification", nn.CrossEntropyLoss(label_smoothing=0.2), LOGITS[3:], TARGETS[3:])
    assert floor.value == pytest.approx(alone.value, abs=1e-3)
    assert floor.value == pytest.approx(smoothed_floor(0.2, 5), abs=1e-3)


@pytest.mark.parametrize("loss, output, form", [
    (nn.BCELoss(), torch.sigmoid(torch.randn(8)), "probabilities"),
    (nn.BCEWithLogitsLoss(), torch.randn(8), "logits"),
])
def test_the_floor_of_binary_conventions(loss, output, form):
    target = (torch.arange(8) % 2).float()
    assert output_form("binary", output, target, loss) == form
    floor = loss_floor("binary", loss, output, target, form)
    assert floor.bounded and 0.0 <= floor.value < 0.01


@pytest.mark.parametrize("loss", [F.mse_loss, F.l1_loss, F.huber_loss, F.smooth_l1_loss])
def test_a_regression_loss_has_the_floor_of_exact_predictions(loss):
    target = torch.randn(8)
    floor = loss_floor("regression", loss, torch.randn(8), target)
    assert floor.form == "values" and floor.value == 0.0


def test_nll_loss_on_raw_logits_has_no_floor():
    floor = loss_floor("classification", F.nll_loss, LOGITS, TARGETS)
    assert floor.form == "logits" and not floor.bounded


def test_output_forms_are_read_from_the_outputs():
    assert output_form("classification", LOGITS) == "logits"
    assert output_form("classification", F.log_softmax(LOGITS, 1)) == "log-probabilities"
    assert output_form("classification", F.softmax(LOGITS, 1)) == "probabilities"
    lm = torch.randn(2, 3, 7)
    assert output_form("language-model", F.log_softmax(lm, -1)) == "log-probabilities"
    assert output_form("language-model", F.log_softmax(lm, 1)) == "logits"  # normalised over the wrong dimension
    small = torch.rand(8) * 0.5  # logits that happen to lie in [0, 1]: the loss accepts other values
    assert output_form("binary", small, torch.ones(8), nn.BCEWithLogitsLoss()) == "logits"


class LogSoftmaxNet(nn.Sequential):
    def __init__(self):
        super().__init__(mlp(16, 10), nn.LogSoftmax(1))


def test_the_ladder_fits_log_probability_and_probability_models():
    x, y = blobs()
    torch.manual_seed(0)
    nll = make_task(LogSoftmaxNet(), x, y, loss=F.nll_loss)
    (finding,) = overfit_ladder(nll).findings
    assert nll.output_form == "log-probabilities"
    assert finding.status == "pass", finding.message
    rungs = finding.evidence["rungs"]
    assert all(r["loss_floor"] >= 0 and r["target_loss"] > 0 for r in rungs if r["status"] == "passed")

    xb, yb = blobs(c=2)
    torch.manual_seed(0)
    bce = make_task(nn.Sequential(mlp(16, 1), nn.Sigmoid(), nn.Flatten(0)), xb, yb.float(), kind="binary",
                    loss=nn.BCELoss())
    assert bce.output_form == "probabilities"
    (finding,) = overfit_ladder(bce).findings
    assert finding.status == "pass", finding.message


def test_nll_loss_on_raw_logits_fails_with_the_cause():
    x, y = blobs()
    torch.manual_seed(0)
    task = make_task(mlp(16, 10), x, y, loss=F.nll_loss)
    (finding,) = overfit_ladder(task).findings
    assert finding.status == "fail" and "no lower bound" in finding.message and "log_softmax" in finding.message


# A rung whose loss falls exponentially: a linear model w -> 2 on x = +-1 under SGD. The gap to the
# target shrinks by (1 - 2 lr)^2 a step, so reaching 1% of the start takes ln(100) / (-2 ln(1 - 2 lr)) steps.
def slow_regression(lr: float):
    x = torch.tensor([[1.0], [-1.0]] * 32)
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    return make_task(model, x, 2 * x[:, 0], kind="regression",
                     optimizer=lambda p: torch.optim.SGD(p, lr=lr))


def steps_to_target(lr: float) -> float:
    return math.log(1 / overfit.REGRESSION_FRACTION) / (-2 * math.log(1 - 2 * lr))


def test_a_rung_still_falling_at_its_step_limit_is_extended_and_passes():
    lr = 0.0025
    assert 300 < steps_to_target(lr) < 600  # past the plan of 300 steps, within the extension
    result = overfit_ladder(slow_regression(lr), sizes=[8], max_steps=300)
    (rung,) = result.rungs
    assert rung.status == "passed" and 300 < rung.steps <= 300 * overfit.EXTEND
    assert rung.steps >= steps_to_target(lr) - overfit.CHECK_EVERY
    assert result.findings[0].status == "pass"


def test_a_rung_still_falling_after_the_extension_is_undecided_with_the_steps_it_needs():
    lr = 0.000625
    needed = steps_to_target(lr)
    assert needed > 300 * overfit.EXTEND
    result = overfit_ladder(slow_regression(lr), sizes=[8, 32], max_steps=300)
    first, second = result.rungs
    assert first.status == "undecided" and first.steps == 300 * overfit.EXTEND
    assert second.status == "not run"
    (finding,) = result.findings
    assert finding.status == "skip" and finding.evidence["skip_reason"] == "undecided"
    # the projection from the exponential decay: the steps left after 900
    assert first.needed_steps == pytest.approx(needed - first.steps, rel=0.1)
    assert str(first.needed_steps) in finding.message and "max_steps=" in finding.fix


def test_a_rung_that_stopped_falling_fails():
    x = torch.tensor([[1.0], [-1.0]] * 32)
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    task = make_task(model, x, x[:, 0] ** 2 + 1, kind="regression")  # a linear model cannot fit y = x^2 + 1
    (finding,) = overfit_ladder(task, sizes=[8]).findings
    assert finding.status == "fail"
