"""unseen-tokens: training counts, the unseen probability mass against hand computations, and the verdicts."""

import copy
import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset, TensorDataset

from dltips import Task
from dltips.core.params import ParamError
from dltips.nlp import unseen
from dltips.nlp.unseen import FAIL_MASS, FAIL_RATIO, RARE_COUNT, check_unseen_tokens, measure_unseen_mass, token_counts
from dltips.training.fit import Recipe, fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from synthetic import Bigram  # noqa: E402


class ListDataset:
    """A plain map-style dataset (no TensorDataset fast path): items are read one by one."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class TableLM(nn.Module):
    """Logits set directly: the logits at a position are row `x` of `table` (x the input token there)."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(torch.as_tensor(table, dtype=torch.float32))

    def forward(self, tokens):
        return self.table[tokens]


def lm_task(model, train_seq, valid_seq, **kw):
    return Task(model, TensorDataset(train_seq[:, :-1], train_seq[:, 1:]),
                TensorDataset(valid_seq[:, :-1], valid_seq[:, 1:]), kind="language-model", **kw)


def counting_task(seed=0, vocab=16, used=12):
    """Sequences counting up modulo `used` from random starts; ids used..vocab-1 never occur."""
    start = torch.randint(0, used, (500, 1), generator=torch.Generator().manual_seed(0))
    seq = (start + torch.arange(33)) % used
    torch.manual_seed(seed)
    return lm_task(Bigram(vocab), seq[:400], seq[400:], batch_size=32)


def trained(task, steps, loss=None):
    """A copy of the Task's model after a short constant-LR run, as the doctor's short run trains it."""
    run = dataclasses.replace(task, model=copy.deepcopy(task.model), loss=loss)
    fit(run, epochs=math.ceil(steps / (len(run.train) // run.batch_size)), recipe=Recipe(one_cycle=False),
        max_steps=steps, device="cpu", seed=0, progress=False)
    return run.model


def softmax_row(logits):
    exps = [math.exp(v) for v in logits]
    return [e / sum(exps) for e in exps]


# ---------------------------------------------------------------- token_counts


def test_counts_match_a_hand_count_and_skip_ignored_targets():
    y = torch.tensor([[1, 1, 3, -100], [0, 3, 3, -100]])
    counts = token_counts(TensorDataset(torch.zeros_like(y), y), 5)
    assert counts.dtype == torch.int64
    assert counts.tolist() == [1, 2, 0, 3, 0]


def test_item_by_item_and_subset_paths_agree_with_the_tensor_path():
    y = torch.randint(0, 7, (30, 5), generator=torch.Generator().manual_seed(0))
    y[3, 2] = -100
    tensor_data = TensorDataset(torch.zeros_like(y), y)
    listed = ListDataset([(torch.zeros(5, dtype=torch.long), y[i]) for i in range(30)])
    expected = [sum(int((y[i] == t).sum()) for i in range(30)) for t in range(9)]
    assert token_counts(tensor_data, 9).tolist() == expected
    assert token_counts(listed, 9).tolist() == expected
    rows = [2, 5, 11]
    subset_expected = [sum(int((y[i] == t).sum()) for i in rows) for t in range(9)]
    assert token_counts(Subset(tensor_data, rows), 9).tolist() == subset_expected


def test_max_items_reads_evenly_spaced_items_on_both_paths():
    y = torch.arange(10).reshape(10, 1)  # item i has the single target i
    tensor_data = TensorDataset(torch.zeros_like(y), y)
    listed = ListDataset([(torch.zeros(1, dtype=torch.long), y[i]) for i in range(10)])
    expected = [1 if i in (0, 3, 6, 9) else 0 for i in range(10)]  # 4 of 10, evenly spaced
    assert token_counts(tensor_data, 10, max_items=4).tolist() == expected
    assert token_counts(listed, 10, max_items=4).tolist() == expected


def test_bad_counts_inputs_are_refused_with_a_clear_message():
    y = torch.tensor([[0, 5]])
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        token_counts(TensorDataset(y, y), 4)
    with pytest.raises(ValueError, match="integer token ids"):
        token_counts(TensorDataset(y, y.float()), 8)
    with pytest.raises(ValueError, match="vocab_size"):
        token_counts(TensorDataset(y, y), 0)
    with pytest.raises(ValueError, match="max_items"):
        token_counts(TensorDataset(y, y), 8, max_items=0)


# ---------------------------------------------------------------- the measured mass, by hand


def table_task():
    """V = 5; training targets use ids 0, 1, 2 only, so 3 and 4 are unseen. Validation has one ignored target."""
    table = [[2.0, 0.0, 1.0, 0.5, -1.0],
             [0.0, 1.0, 0.0, 1.5, 0.0],
             [1.0, 1.0, 1.0, -2.0, 3.0],
             [0.0, 0.0, 0.0, 0.0, 0.0],
             [0.0, 0.0, 0.0, 0.0, 0.0]]
    train = torch.tensor([[0, 1, 2, 0], [2, 1, 0, 1]])
    valid_x = torch.tensor([[0, 1, 2], [2, 2, 1]])
    valid_y = torch.tensor([[1, 2, 3], [0, -100, 2]])
    return Task(TableLM(table), TensorDataset(train[:, :-1], train[:, 1:]), TensorDataset(valid_x, valid_y),
                kind="language-model", batch_size=1), table, valid_x, valid_y


def test_unseen_mass_equals_the_softmax_sum_computed_by_hand():
    task, table, valid_x, valid_y = table_task()
    counts = token_counts(task.train, 5)
    assert counts.tolist() == [2, 3, 1, 0, 0]  # targets 1 2 0 | 1 0 1
    rows = [softmax_row(table[int(x)]) for x, y in zip(valid_x.flatten(), valid_y.flatten()) if int(y) != -100]
    hand_mass = sum(p[3] + p[4] for p in rows) / len(rows)
    m = measure_unseen_mass(task, model=task.model, counts=counts)
    assert m.n_positions == 5 and m.n_items == 2
    assert m.mass == pytest.approx(hand_mass, rel=1e-6)
    assert m.uniform_mass == pytest.approx(2 / 5)
    assert m.ratio == pytest.approx(hand_mass / 0.4, rel=1e-6)
    for token in range(5):
        assert float(m.mean_probability[token]) == pytest.approx(sum(p[token] for p in rows) / len(rows), rel=1e-6)
    assert m.valid_counts.tolist() == [1, 1, 2, 1, 0]


def test_positions_split_into_blocks_give_the_same_mass(monkeypatch):
    task, *_ = table_task()
    counts = token_counts(task.train, 5)
    whole = measure_unseen_mass(task, model=task.model, counts=counts)
    monkeypatch.setattr(unseen, "_SOFTMAX_VALUES", 5)  # one position per block
    blocks = measure_unseen_mass(task, model=task.model, counts=counts)
    assert blocks.mass == pytest.approx(whole.mass, rel=1e-12)
    assert torch.allclose(blocks.mean_probability, whole.mean_probability, rtol=1e-12, atol=0)


def test_finding_reports_the_same_mass_the_worst_unseen_tokens_and_the_validation_targets():
    task, table, valid_x, valid_y = table_task()
    rows = [softmax_row(table[int(x)]) for x, y in zip(valid_x.flatten(), valid_y.flatten()) if int(y) != -100]
    mean_p = [sum(p[t] for p in rows) / len(rows) for t in range(5)]
    (finding,) = check_unseen_tokens(task, model=task.model, decode=lambda i: "abcde"[i])
    ev = finding.evidence
    assert ev["unseen_mass"] == pytest.approx(mean_p[3] + mean_p[4], rel=1e-6)
    worst_first = 3 if mean_p[3] > mean_p[4] else 4
    assert [w["id"] for w in ev["worst_unseen"]] == [worst_first, 7 - worst_first]
    assert ev["worst_unseen"][0]["mean_probability"] == pytest.approx(mean_p[worst_first], rel=1e-6)
    assert ev["worst_unseen"][0]["token"] == f"{'abcde'[worst_first]!r} (id {worst_first})"
    assert ev["valid_unseen_targets"] == 1 and ev["valid_unseen_share"] == pytest.approx(1 / 5)
    assert "1 of the 5 validation targets" in finding.message
    assert finding.fix.startswith("Validation targets include these ids")
    assert finding.status == "fail"  # about 0.3 of the probability, near the uniform 0.4


def constant_task(vocab, n_unseen, mass):
    """Ids vocab - n_unseen .. vocab - 1 never occur; seen logits 0, unseen logits b, so the unseen mass at
    every position is n e^b / (seen + n e^b): b is solved for the `mass` asked for."""
    seen = vocab - n_unseen
    train = torch.arange(4 * (seen + 1)).reshape(4, seen + 1) % seen
    b = math.log(seen * mass / (n_unseen * (1 - mass)))
    table = torch.zeros(vocab, vocab)
    table[:, seen:] = b
    return lm_task(TableLM(table), train, train, batch_size=4)


@pytest.mark.parametrize("factor, status", [(0.9, "pass"), (1.1, "fail")])
def test_the_ratio_threshold_separates_masses_just_below_and_just_above_it(factor, status):
    """V = 10 with 5 unseen ids: the uniform mass is 0.5, far above the absolute floor."""
    task = constant_task(10, 5, factor * FAIL_RATIO * 0.5)
    (finding,) = check_unseen_tokens(task, model=task.model)
    assert finding.evidence["unseen_mass"] > FAIL_MASS
    assert finding.evidence["ratio_to_uniform"] == pytest.approx(factor * FAIL_RATIO, rel=1e-5)
    assert finding.status == status


@pytest.mark.parametrize("factor, status", [(0.9, "pass"), (1.1, "fail")])
def test_the_absolute_floor_separates_masses_just_below_and_just_above_it(factor, status):
    """V = 400 with 1 unseen id: the uniform mass is 0.0025, so both masses are many times the uniform level."""
    task = constant_task(400, 1, factor * FAIL_MASS)
    (finding,) = check_unseen_tokens(task, model=task.model)
    assert finding.evidence["ratio_to_uniform"] > FAIL_RATIO
    assert finding.evidence["unseen_mass"] == pytest.approx(factor * FAIL_MASS, rel=1e-5)
    assert finding.status == status


# ---------------------------------------------------------------- rare tokens, no unseen tokens, other kinds


def test_rare_tokens_are_listed_with_their_counts_and_shares():
    rows = [[0, 1, 2, 3, 0, 1, 2, 3, 0]] * 6 + [[4, 4, 4, 4, 5, 5, 5, 5, 5]]
    seq = torch.tensor(rows)
    task = lm_task(TableLM(torch.zeros(6, 6)), seq, seq, batch_size=2)
    assert token_counts(task.train, 6).tolist() == [12, 12, 12, 12, 3, 5]  # 56 targets
    assert 5 < RARE_COUNT <= 12  # ids 4 and 5 are rare, ids 0-3 are not
    (finding,) = check_unseen_tokens(task, model=task.model)
    ev = finding.evidence
    assert finding.status == "pass" and "Every one of the 6 token ids" in finding.message
    assert ev["n_rare"] == 2
    assert [(r["id"], r["count"]) for r in ev["rare"]] == [(4, 3), (5, 5)]  # rarest first
    assert [r["share"] for r in ev["rare"]] == pytest.approx([3 / 56, 5 / 56])
    assert "id 4 x3" in finding.message
    (table,) = finding.figures
    assert table["rows"][0][:2] == ["id 4", 3]


def test_no_unseen_token_passes_without_running_the_model():
    seq = torch.arange(40).reshape(4, 10) % 6
    task = lm_task(TableLM(torch.zeros(6, 6)), seq, seq, batch_size=2)
    calls = []
    task.model.register_forward_hook(lambda *args: calls.append(1))
    (finding,) = check_unseen_tokens(task, model=task.model)
    assert finding.status == "pass" and finding.evidence["n_unseen"] == 0 and not calls


def test_other_kinds_get_no_finding():
    x = torch.randn(20, 3)
    task = Task(nn.Linear(3, 2), TensorDataset(x, torch.arange(20) % 2), TensorDataset(x, torch.arange(20) % 2))
    assert check_unseen_tokens(task, model=task.model) == []


# ---------------------------------------------------------------- calibrated verdicts on trained models


def test_a_short_run_passes_and_the_broken_variants_fail(one_thread):
    task = counting_task()
    healthy = check_unseen_tokens(task, model=trained(task, 200))[0]
    assert healthy.status == "pass", healthy.message
    assert healthy.evidence["n_unseen"] == 4 and healthy.evidence["uniform_mass"] == pytest.approx(0.25)
    untrained = check_unseen_tokens(task, model=task.model)[0]
    assert untrained.status == "fail" and untrained.evidence["ratio_to_uniform"] > 0.5

    def smoothed(o, y):
        return F.cross_entropy(o.flatten(0, -2), y.flatten(), ignore_index=-100, label_smoothing=0.1)

    smoothing = check_unseen_tokens(task, model=trained(task, 200, loss=smoothed))[0]
    assert smoothing.status == "fail"
    assert smoothing.evidence["ratio_to_uniform"] == pytest.approx(0.1, abs=0.02)  # epsilon / V on each id


def test_a_head_bias_that_favours_unseen_tokens_fails(one_thread):
    task = counting_task()
    model = trained(task, 200)
    with torch.no_grad():
        model.head.bias[12:] += 5.0
    (finding,) = check_unseen_tokens(task, model=model)
    assert finding.status == "fail" and finding.fix.startswith("Train longer")  # no unseen id in validation
    assert finding.evidence["valid_unseen_targets"] == 0
    assert {w["id"] for w in finding.evidence["worst_unseen"]} == {12, 13, 14, 15}


# ---------------------------------------------------------------- contract


def test_the_model_keeps_its_mode_weights_and_device_and_the_finding_is_json_ready():
    task, *_ = table_task()
    task.model.train()
    before = copy.deepcopy(task.model.state_dict())
    (finding,) = check_unseen_tokens(task, model=task.model, device="cpu")
    assert task.model.training
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())
    json.dumps(finding.to_dict(), allow_nan=False)
    assert finding.tip == "unseen-tokens"
    for figure in finding.figures:
        assert figure["kind"] == "table"
        assert all(len(row) == len(figure["columns"]) for row in figure["rows"])


def test_bad_arguments():
    task, *_ = table_task()
    with pytest.raises(ValueError, match="counts has 3 entries"):
        check_unseen_tokens(task, model=task.model, counts=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=">= 0"):
        check_unseen_tokens(task, model=task.model, counts=torch.tensor([1, -2, 3, 0, 0]))
    with pytest.raises(ValueError, match="max_items"):
        check_unseen_tokens(task, model=task.model, max_items=0)
    with pytest.raises(ValueError, match="decode"):
        check_unseen_tokens(task, model=task.model, decode="abc")


def test_the_old_model_first_forms_still_work_and_warn():
    task, *_ = table_task()
    counts = token_counts(task.train, 5)
    new = measure_unseen_mass(task, model=task.model, counts=counts)
    with pytest.warns(DeprecationWarning, match="measure_unseen_mass"):
        old = measure_unseen_mass(task.model, task, counts)
    assert old.mass == new.mass and old.n_positions == new.n_positions
    assert measure_unseen_mass(task).mass == new.mass  # model and counts default to the task's
    (finding,) = check_unseen_tokens(task, model=task.model, counts=counts)
    with pytest.warns(DeprecationWarning, match="check_unseen_tokens"):
        (before,) = check_unseen_tokens(task.model, task, counts)
    assert (before.status, before.message, before.evidence) == (finding.status, finding.message, finding.evidence)


def test_common_arguments_are_taken():
    task, *_ = table_task()
    (plain,) = check_unseen_tokens(task)
    (same,) = check_unseen_tokens(task, model=task.model, device="auto", seed=4, deadline=60.0)
    assert same.evidence["unseen_mass"] == pytest.approx(plain.evidence["unseen_mass"], rel=1e-6)
    for bad in ({"max_items": "5"}, {"seed": -1}, {"deadline": "soon"}, {"device": "no-such-device"},
                {"model": "net"}):
        with pytest.raises(ParamError, match=next(iter(bad))):
            check_unseen_tokens(task, **bad)
    with pytest.raises(ParamError, match="max_items"):
        measure_unseen_mass(task, max_items="5")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_and_leaves_the_model_on_the_cpu():
    task, *_ = table_task()
    (finding,) = check_unseen_tokens(task, model=task.model, device="cuda")
    (reference,) = check_unseen_tokens(task, model=task.model)
    assert finding.evidence["unseen_mass"] == pytest.approx(reference.evidence["unseen_mass"], rel=1e-6)
    assert all(p.device.type == "cpu" for p in task.model.parameters())
