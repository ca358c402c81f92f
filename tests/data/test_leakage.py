"""An input feature that gives the label away fails; the healthy calibration tasks pass."""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from dltips import Task
from dltips.data.leakage import CORRELATION, PURITY, _purity, check_target_leak

sys.path.insert(0, str(Path(__file__).parents[1] / "calibration"))
import causes_model  # noqa: E402
from zoo import HEALTHY  # noqa: E402


@pytest.mark.parametrize("make, feature", [(causes_model.label_column_task, 13), (causes_model.label_pixel_task, 0),
                                           (causes_model.target_column_task, 10)])
def test_a_feature_made_from_the_label_fails_and_is_named(make, feature):
    (finding,) = check_target_leak(make())
    assert finding.status == "fail" and finding.evidence["feature"] == feature
    assert f"Remove feature {feature}" in finding.fix


@pytest.mark.parametrize("name", list(HEALTHY))
def test_healthy_tasks_pass_or_skip(name):
    (finding,) = check_target_leak(HEALTHY[name]())
    assert finding.status in ("pass", "skip")
    assert (finding.evidence.get("purity") or 0.0) < PURITY and (finding.evidence.get("correlation") or 0.0) < CORRELATION


def test_purity_is_the_share_of_items_with_their_values_majority_label():
    values = torch.tensor([0, 0, 0, 1, 1, 2])
    labels = torch.tensor([1, 1, 0, 2, 2, 0])
    # value 0: two of three are label 1; value 1: both label 2; value 2: its one item
    assert _purity(values, labels, 3) == pytest.approx(5 / 6)


def test_a_feature_with_a_distinct_value_per_item_is_not_read_as_levels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)  # every value distinct: it "determines" any label trivially
    y = torch.randint(0, 2, (200,), generator=g)
    task = Task(torch.nn.Linear(3, 2), TensorDataset(x, y), TensorDataset(x[:20], y[:20]))
    (finding,) = check_target_leak(task)
    assert finding.status == "pass" and finding.evidence["feature"] is None
