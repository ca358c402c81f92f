"""A dataset whose index does not always give the same item, and splits that share items."""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from dltips import Task
from dltips.core.deadline import Deadline
from dltips.data.integrity import (RATIO_WARN, check_split_overlap, check_stable_pairing, compare_reads, item_hash,
                                   random_split_rate, Hashed)
from dltips.task import IGNORE_INDEX

sys.path.insert(0, str(Path(__file__).parents[1] / "calibration"))
import causes_data  # noqa: E402
from zoo import HEALTHY, digits_mlp  # noqa: E402


def test_a_label_drawn_on_every_read_fails_and_names_the_indices():
    task = causes_data.random_label_reads_task()
    before = torch.get_rng_state()
    (finding,) = check_stable_pairing(task)
    assert torch.equal(torch.get_rng_state(), before), "the global generator is left as it was"
    assert finding.status == "fail" and finding.evidence["cause"] == "unstable-pairing"
    assert finding.evidence["labels_changed"] >= 20  # 32 reads, a label kept by chance 1 time in 10
    assert str(finding.evidence["examples"][0]) in finding.message


def test_an_image_of_another_index_warns_with_a_read_ratio_near_one():
    (finding,) = check_stable_pairing(causes_data.shuffled_pairing_task())
    assert finding.status == "warn" and finding.evidence["read_ratio"] >= 0.8
    assert finding.evidence["labels_changed"] == 0


@pytest.mark.parametrize("noise, shift, flip", [(0.1, 1, 0.0), (0.5, 2, 0.5), (1.0, 1, 0.0)])
def test_augmentation_inside_the_dataset_is_info(noise, shift, flip):
    (finding,) = check_stable_pairing(causes_data.augmented_dataset_task(noise, shift, flip))
    assert finding.status == "info" and finding.evidence["read_ratio"] < RATIO_WARN


@pytest.mark.parametrize("name", list(HEALTHY))
def test_the_healthy_calibration_tasks_give_the_same_item_on_every_read(name):
    (finding,) = check_stable_pairing(HEALTHY[name]())
    assert finding.status == "pass"


def test_the_read_ratio_counts_the_other_items_closer_than_the_second_read():
    first = [(torch.tensor([0.0]), 0), (torch.tensor([10.0]), 0), (torch.tensor([20.0]), 0), (torch.tensor([30.0]), 0)]
    # index 0 comes back at 16: the second reads of indices 1 (10) lies closer, 2 (20) and 3 (30) farther
    second = [(torch.tensor([16.0]), 0)] + first[1:]
    reads = compare_reads([0, 1, 2, 3], first, second)
    assert reads.inputs_changed == [0] and reads.labels_changed == []
    assert reads.view_ratios["values"] == pytest.approx(2 * 1 / 3)
    assert reads.distance_ratio == pytest.approx(16 / 20)  # |0-16| over the median of |0-10|, |0-20|, |0-30|


class MaskedTokens(Dataset):
    """Random masking of tokens, as masked-language-model datasets do: the targets are IGNORE_INDEX except where
    a token was masked."""

    def __init__(self, n=40, length=12):
        self.tokens = torch.randint(5, 30, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        x = self.tokens[i].clone()
        masked = torch.rand(len(x)) < 0.3
        y = torch.where(masked, x, torch.full_like(x, IGNORE_INDEX))
        x[masked] = 1
        return x, y


def test_masked_targets_that_change_only_where_masked_are_not_a_broken_pairing():
    reads = compare_reads(list(range(8)), [MaskedTokens()[i] for i in range(8)], [MaskedTokens()[i] for i in range(8)])
    assert reads.labels_changed and reads.masked_labels


def test_a_deadline_already_passed_gives_a_skip_with_the_time_needed():
    (finding,) = check_stable_pairing(digits_mlp(), deadline=Deadline(0.0))
    assert finding.status == "skip" and finding.evidence.get("needs_s") is not None


def _hashed(split, inputs):
    keys = [item_hash(torch.tensor(v)) for v in inputs]
    return Hashed(split, list(range(len(inputs))), keys, keys, len(inputs))


def test_copies_of_training_items_in_validation_warn_with_their_count_and_indices():
    (finding,) = check_split_overlap(causes_data.leaked_validation_task(0.3))
    assert finding.status == "warn" and finding.evidence["cause"] == "split-overlap"
    valid = next(p for p in finding.evidence["pairs"] if p["split"] == "validation" and p["reference"] == "train")
    assert valid["shared"] == valid["same_label"] == 90  # 30% of 300, copied with their labels
    task = causes_data.leaked_validation_task(0.3)
    for v, t in valid["examples"]:
        assert torch.equal(task.valid[v][0], task.train[t][0])


def test_a_few_copies_warn_and_none_pass():
    assert check_split_overlap(causes_data.leaked_validation_task(0.05))[0].status == "warn"
    assert check_split_overlap(digits_mlp())[0].status == "pass"


def test_data_that_repeats_its_own_inputs_is_info_not_a_leak():
    x = torch.randint(0, 3, (600, 2), generator=torch.Generator().manual_seed(0)).float()  # 9 distinct inputs
    y = (x.sum(1) > 2).long()
    data = [TensorDataset(x[i::3], y[i::3]) for i in range(3)]
    task = Task(torch.nn.Linear(2, 2), *data, kind="classification", n_classes=2)
    (finding,) = check_split_overlap(task)
    assert finding.status == "info"


def test_the_random_split_rate_is_the_share_of_items_found_among_the_others():
    train = _hashed("train", [0, 0, 1, 2])  # two of four inputs appear elsewhere in training
    assert random_split_rate(train, reference_size=3) == pytest.approx(2 / 4)


def test_the_item_hash_tells_dtype_and_shape_apart_and_reads_dicts_by_key():
    a = torch.arange(4)
    assert item_hash(a) == item_hash(a.clone())
    assert item_hash(a) != item_hash(a.float()) and item_hash(a) != item_hash(a.view(2, 2))
    assert item_hash({"a": a, "b": a + 1}) == item_hash({"b": a + 1, "a": a})
    assert item_hash({"a": a, "b": a + 1}) != item_hash({"a": a + 1, "b": a})
