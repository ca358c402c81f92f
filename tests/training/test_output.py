"""The output layer against the targets and the loss: ranges that cannot reach what the loss needs fail,
the same constructions used legitimately pass."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dltips import Task
from dltips.training.output import check_output_layer, final_module

sys.path.insert(0, str(Path(__file__).parents[1] / "calibration"))
import causes_model  # noqa: E402
from zoo import BROKEN, HEALTHY  # noqa: E402


def _regression(model, targets):
    x = torch.randn(len(targets), 4, generator=torch.Generator().manual_seed(0))
    ds = TensorDataset(x, targets)
    return Task(model, ds, ds, kind="regression")


@pytest.mark.parametrize("make, words", [
    (causes_model.relu_on_logits_task, "bounds the logits to [0, inf)"),
    (causes_model.softmax_regression_task, "always outputs 1"),
    (causes_model.sigmoid_signed_targets_task, "only output values in [0, 1]"),
    (causes_model.tanh_wide_targets_task, "only output values in [-1, 1]"),
    (BROKEN["softmax-before-ce"][0], "softmax applied twice"),
    (BROKEN["log-softmax-dim0"][0], "dimension 0, the batch"),
])
def test_an_output_that_cannot_give_the_loss_what_it_needs_fails(make, words):
    (finding,) = check_output_layer(make())
    assert finding.status == "fail" and words in finding.message and finding.fix


def test_the_share_of_targets_out_of_reach_is_counted():
    targets = torch.tensor([-0.5] * 10 + [0.5] * 90).unsqueeze(1)
    torch.manual_seed(0)
    (finding,) = check_output_layer(_regression(nn.Sequential(nn.Linear(4, 1), nn.Sigmoid()), targets))
    assert finding.status == "fail" and finding.evidence["out_of_reach"] == pytest.approx(0.10)
    (finding,) = check_output_layer(_regression(nn.Sequential(nn.Linear(4, 1), nn.ReLU()), targets.abs()))
    assert finding.status == "pass" and finding.evidence["out_of_reach"] == 0.0


@pytest.mark.parametrize("make", [causes_model.sigmoid_unit_targets_task, causes_model.bias_path_task,
                                  *HEALTHY.values()])
def test_healthy_outputs_are_not_failed(make):
    (finding,) = check_output_layer(make())
    assert finding.status in ("pass", "skip")


def test_the_final_module_is_the_one_whose_output_is_the_models():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2), nn.Tanh())
    name, module, output = final_module(model, torch.randn(3, 4))
    assert name == "3" and module is model[3] and output.shape == (3, 2)

    class Functional(nn.Module):  # ends in a function call: no module to judge, so no verdict
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 1)

        def forward(self, x):
            return torch.sigmoid(self.linear(x))

    assert final_module(Functional(), torch.randn(3, 4))[1] is None
