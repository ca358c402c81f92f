"""check_initial_loss: expected values from first principles, the calibrated verdicts, and the output bugs."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import Bigram, blobs, make_task, mlp
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dltips import Task
from dltips.predict import evenly_spaced
from dltips.training.init import check_initial_loss, expected_initial_loss

# ---------------------------------------------------------------- small tasks (PyTorch default initialisation)


def classification(seed=0, weights=None):
    x, y = blobs(weights=weights)
    torch.manual_seed(seed)
    return make_task(mlp(16, 10), x, y)


def binary(seed=0):
    x, y = blobs(c=2, weights=[3, 1])
    torch.manual_seed(seed)
    return make_task(mlp(16, 1), x, y.float(), kind="binary")


def multilabel(seed=0):
    x, _ = blobs(c=4)
    y = (x @ torch.randn(16, 3, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    torch.manual_seed(seed)
    return make_task(mlp(16, 3), x, y, kind="multilabel")


def regression(seed=0, offset=0.0):
    x, _ = blobs(c=4)
    y = torch.sin(x @ torch.randn(16, generator=torch.Generator().manual_seed(6)) / 4)
    y = (y - y.mean()) / y.std() + offset
    torch.manual_seed(seed)
    return make_task(mlp(16, 1), x, y, kind="regression")


def counting_lm(seed=0, vocab=12):
    """Sequences counting up modulo `vocab` from random starts."""
    start = torch.randint(0, vocab, (300, 1), generator=torch.Generator().manual_seed(0))
    seq = (start + torch.arange(17)) % vocab
    torch.manual_seed(seed)
    return make_task(Bigram(vocab), seq[:, :-1], seq[:, 1:], kind="language-model", batch_size=32)


def images(seed=0, batchnorm=False):
    x, y = blobs(d=64)
    torch.manual_seed(seed)
    norm = nn.BatchNorm2d(8) if batchnorm else nn.Identity()
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), norm, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))
    return make_task(model, x.reshape(-1, 1, 8, 8), y)


def scaled(task, factor):
    """The broken copy: the last Linear layer's weights and bias multiplied by `factor`."""
    last = [m for m in task.model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    return task


def with_model(task, model, **changes):
    import dataclasses

    return dataclasses.replace(task, model=model, **changes)


class Table(nn.Module):
    """Returns a fixed row of outputs per item; the input is the item's index."""

    def __init__(self, rows):
        super().__init__()
        self.rows = nn.Parameter(torch.as_tensor(rows, dtype=torch.float32))

    def forward(self, x):
        return self.rows[x.long()]


def table_task(rows, y, **kw):
    idx = torch.arange(len(y))
    return Task(Table(rows), TensorDataset(idx, y), TensorDataset(idx, y), **kw)


def one(task, **kw):
    findings = check_initial_loss(task, **kw)
    assert len(findings) == 1 and findings[0].tip == "initialization"
    return findings[0]


# ---------------------------------------------------------------- the calibration table as cases

HEALTHY = {
    "mlp-10-classes": classification,
    "mlp-imbalanced": lambda: classification(weights=[8, 4, 2, 1, 1, 1, 1, 1, 1, 1]),
    "cnn": images,
    "cnn-batchnorm": lambda: images(batchnorm=True),
    "binary": binary,
    "multilabel": multilabel,
    "regression": regression,
    "counting-lm": counting_lm,
}


@pytest.mark.parametrize("name", list(HEALTHY))
@pytest.mark.parametrize("seed", [0, 1])
def test_healthy_models_pass(name, seed):
    task = HEALTHY[name]() if seed == 0 else _reseeded(name, seed)
    finding = one(task)
    assert finding.status == "pass", finding.message
    assert finding.fix is None
    assert finding.evidence["problem"] is None


def _reseeded(name, seed):
    makers = {"mlp-10-classes": lambda: classification(seed), "cnn": lambda: images(seed),
              "cnn-batchnorm": lambda: images(seed, batchnorm=True), "binary": lambda: binary(seed),
              "multilabel": lambda: multilabel(seed), "regression": lambda: regression(seed),
              "counting-lm": lambda: counting_lm(seed),
              "mlp-imbalanced": lambda: classification(seed, weights=[8, 4, 2, 1, 1, 1, 1, 1, 1, 1])}
    return makers[name]()


def softmax_end(task, dim=1, **changes):
    return with_model(task, nn.Sequential(task.model, nn.Softmax(dim)), **changes)


def log_softmax_end(task, dim, **changes):
    return with_model(task, nn.Sequential(task.model, nn.LogSoftmax(dim)), **changes)


# name -> (task factory, status, problem); measured values are in the module docstring's table
BROKEN = {
    "mlp x10": (lambda: scaled(classification(), 10), "warn", "too-high"),
    "mlp x30": (lambda: scaled(classification(), 30), "fail", "too-high"),
    "imbalanced x10": (lambda: scaled(classification(weights=[8, 4, 2, 1, 1, 1, 1, 1, 1, 1]), 10), "warn",
                       "too-high"),
    "cnn x30": (lambda: scaled(images(), 30), "fail", "too-high"),
    "binary x30": (lambda: scaled(binary(), 30), "fail", "too-high"),
    "multilabel x10": (lambda: scaled(multilabel(), 10), "warn", "too-high"),
    "multilabel x30": (lambda: scaled(multilabel(), 30), "fail", "too-high"),
    "regression x10": (lambda: scaled(regression(), 10), "warn", "too-high"),
    "regression x30": (lambda: scaled(regression(), 30), "fail", "too-high"),
    "lm x10": (lambda: scaled(counting_lm(), 10), "fail", "too-high"),
    "softmax before CE": (lambda: softmax_end(classification()), "fail", "probabilities"),
    "softmax before CE (cnn)": (lambda: softmax_end(images()), "fail", "probabilities"),
    "softmax before CE (lm)": (lambda: softmax_end(counting_lm(), -1), "fail", "probabilities"),
    "softmax, custom CE": (lambda: softmax_end(classification(), loss=lambda o, t: F.cross_entropy(o, t)),
                           "warn", "probabilities"),
    "log_softmax over the batch + nll": (lambda: log_softmax_end(classification(), 0, loss=F.nll_loss), "fail",
                                         "wrong-dimension"),
    "log_softmax over the batch + CE": (lambda: log_softmax_end(classification(), 0), "fail", "wrong-dimension"),
    "softmax over the batch": (lambda: softmax_end(classification(), 0), "fail", "wrong-dimension"),
    "lm log_softmax over the sequence": (lambda: log_softmax_end(counting_lm(), 1), "fail", "wrong-dimension"),
    "softmax + nll_loss": (lambda: softmax_end(classification(), loss=F.nll_loss), "fail", "negative-loss"),
    "targets with mean 50": (lambda: regression(offset=50.0), "fail", "target-offset"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_models_are_flagged_with_the_right_reason(name):
    make, status, problem = BROKEN[name]
    finding = one(make())
    assert (finding.status, finding.evidence["problem"]) == (status, problem), finding.message
    assert finding.fix


def test_messages_name_the_cause_and_the_fix():
    assert "softmax" in one(softmax_end(classification())).fix.lower()
    assert "dim=1" in one(log_softmax_end(classification(), 0, loss=F.nll_loss)).fix
    assert "dim=-1" in one(log_softmax_end(counting_lm(), 1)).fix
    assert "nll_loss" in one(softmax_end(classification(), loss=F.nll_loss)).fix
    offset = one(regression(offset=50.0))
    assert "target mean" in offset.fix and "standardise" in offset.fix
    assert "50" in offset.message
    scaled_up = one(scaled(classification(), 30))
    assert "last layer" in scaled_up.fix and "log of the class frequencies" in scaled_up.fix


# ---------------------------------------------------------------- expected values, computed independently


def entropy(p):
    p = np.asarray(p, dtype=float)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def binary_entropy(p):
    return float(-(p * np.log(p) + (1 - p) * np.log(1 - p)))


def test_classification_expects_the_prior_entropy_with_ln_c_beside():
    task = classification(weights=[8, 4, 2, 1, 1, 1, 1, 1, 1, 1])
    labels = task.train.tensors[1].numpy()
    prior = np.bincount(labels, minlength=10) / len(labels)
    ev = one(task).evidence
    assert ev["expected"] == pytest.approx(entropy(prior), rel=1e-9)
    assert ev["ln_c"] == pytest.approx(math.log(10), rel=1e-12)
    assert ev["range"] == pytest.approx([entropy(prior), math.log(10)])
    assert ev["ratio"] == pytest.approx(ev["measured"] / entropy(prior))
    assert len(ev["mean_probability_per_class"]) == 10
    assert sum(ev["mean_probability_per_class"]) == pytest.approx(1.0)


def test_binary_and_multilabel_expect_label_entropies():
    task = binary()
    rate = float(task.train.tensors[1].double().mean())
    ev = one(task).evidence
    assert ev["expected"] == pytest.approx(binary_entropy(rate), rel=1e-9)
    assert ev["range"][1] == pytest.approx(math.log(2))

    task = multilabel()
    rates = task.train.tensors[1].double().numpy().mean(0)
    ev = one(task).evidence
    assert ev["expected"] == pytest.approx(np.mean([binary_entropy(p) for p in rates]), rel=1e-9)


def test_regression_expects_the_target_variance():
    task = regression(offset=3.0)
    y = task.train.tensors[1].double().numpy()
    ref = expected_initial_loss(task)
    assert ref.expected == pytest.approx(np.var(y), rel=1e-9)  # population variance: a head predicting the mean
    assert ref.extra["target_mean"] == pytest.approx(y.mean(), rel=1e-9)


def test_language_model_expects_ln_v_with_the_unigram_entropy_beside():
    task = counting_lm(vocab=12)
    tokens = task.train.tensors[1].flatten().numpy()
    ev = one(task).evidence
    assert ev["expected"] == pytest.approx(math.log(12))
    assert ev["ln_v"] == pytest.approx(math.log(12))
    assert ev["unigram_entropy"] == pytest.approx(entropy(np.bincount(tokens, minlength=12) / len(tokens)))


def test_ignored_targets_do_not_count_in_the_unigram_entropy():
    x = torch.tensor([[0, 1, 2, 3]] * 4)
    y = torch.tensor([[1, 2, 3, -100], [1, 2, -100, -100], [1, 1, 1, 1], [0, 0, -100, -100]])
    task = make_task(Bigram(4), torch.cat([x, x]), torch.cat([y, y]), kind="language-model")
    train_y = task.train.tensors[1]
    counted = train_y[train_y != -100].numpy()
    assert len(counted) < train_y.numel()
    assert expected_initial_loss(task).extra["unigram_entropy"] == pytest.approx(
        entropy(np.bincount(counted, minlength=4) / len(counted)))


class ItemDataset(Dataset):
    """Not a TensorDataset: labels are read item by item."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_prior_from_a_plain_dataset_matches_the_tensor_one():
    task = classification(weights=[3, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    x, y = task.train.tensors
    plain = with_model(task, task.model, train=ItemDataset(x, y))
    assert expected_initial_loss(plain).expected == pytest.approx(expected_initial_loss(task).expected)


# ---------------------------------------------------------------- the measurement


def test_measured_loss_and_interval_from_per_item_losses():
    task = classification()
    n = len(task.train)
    ev = one(task, max_items=100).evidence
    positions = evenly_spaced(n, 100)
    x, y = task.train.tensors
    with torch.no_grad():
        task.model.eval()
        losses = F.cross_entropy(task.model(x[positions]), y[positions], reduction="none").double().numpy()
    half = 1.96 * losses.std(ddof=1) / math.sqrt(100)
    assert ev["n_items"] == 100
    assert ev["measured"] == pytest.approx(losses.mean(), rel=1e-5)
    assert ev["interval"] == pytest.approx([losses.mean() - half, losses.mean() + half], rel=1e-4)


def test_spread_of_fixed_predictions_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(200, 5, generator=g) * 2.0
    y = torch.randint(0, 5, (200,), generator=g)
    ev = one(table_task(rows, y)).evidence
    q = torch.softmax(rows.double(), 1).numpy()
    expected = entropy(q.mean(0)) - np.mean([entropy(r) for r in q])
    assert ev["prediction_spread"] == pytest.approx(expected, rel=1e-6)
    assert ev["spread_fraction"] == pytest.approx(expected / math.log(5), rel=1e-6)


def test_confident_guesses_are_flagged_even_when_the_mean_loss_looks_right():
    # logits of +-1 that are right 62% of the time: the mean loss is about ln 2, but every prediction is confident
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(1000, generator=g) < 0.5).float()
    right = torch.rand(1000, generator=g) < 0.62
    logits = torch.where(right, 2 * y - 1, 1 - 2 * y)
    finding = one(table_task(logits, y, kind="binary"), max_items=1000)
    ev = finding.evidence
    assert abs(ev["measured"] - math.log(2)) < 0.05
    q = 1 / (1 + np.exp(-logits.double().numpy()))
    spread = binary_entropy(q.mean()) - np.mean([binary_entropy(p) for p in q])
    assert ev["prediction_spread"] == pytest.approx(spread, rel=1e-6)
    assert (finding.status, ev["problem"]) == ("warn", "too-high")  # 0.08 < spread / ln 2 (0.16) < 0.25


def test_a_zero_head_and_a_prior_head_both_pass():
    y = torch.tensor([0] * 120 + [1] * 60 + [2] * 20)
    zeros = one(table_task(torch.zeros(200, 3), y))
    assert zeros.status == "pass" and zeros.evidence["measured"] == pytest.approx(math.log(3), rel=1e-6)
    prior = torch.log(torch.tensor([0.6, 0.3, 0.1])).expand(200, 3)
    head = one(table_task(prior, y))
    assert head.status == "pass" and head.evidence["measured"] == pytest.approx(entropy([0.6, 0.3, 0.1]), rel=1e-5)
    assert head.evidence["prediction_spread"] == pytest.approx(0.0, abs=1e-9)


def test_a_model_that_already_knows_the_labels_is_reported_not_failed():
    y = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(1))
    finding = one(table_task(3.0 * F.one_hot(y, 4).float(), y))
    assert finding.status == "info" and finding.evidence["problem"] == "below"
    assert "pretrained" in finding.message


def test_normalisation_over_the_batch_is_found_with_a_ragged_last_batch():
    task = log_softmax_end(classification(), 0, loss=F.nll_loss, batch_size=50)  # 480 items: last batch of 30
    finding = one(task)
    assert finding.evidence["problem"] == "wrong-dimension" and "the batch" in finding.title


def test_custom_regression_loss_is_measured_without_verdict():
    task = regression()
    finding = one(with_model(task, task.model, loss=lambda o, t: F.l1_loss(o.reshape(t.shape), t)))
    assert finding.status == "info" and finding.fix is None


def test_nn_cross_entropy_counts_as_the_default_loss():
    task = softmax_end(classification(), loss=nn.CrossEntropyLoss())
    assert one(task).status == "fail"


def test_large_vocabulary_limits_the_items_read():
    start = torch.randint(0, 2000, (400, 1), generator=torch.Generator().manual_seed(0))
    seq = (start + torch.arange(33)) % 2000
    torch.manual_seed(0)
    task = make_task(Bigram(2000, 8), seq[:, :-1], seq[:, 1:], kind="language-model")
    ev = one(task).evidence
    assert ev["n_items"] == 2**24 // (32 * 2000)  # logits kept under 2**24 values


# ---------------------------------------------------------------- contract


def test_the_users_model_is_not_modified():
    task = scaled(classification(), 30)
    task.model.train()
    before = copy.deepcopy(task.model.state_dict())
    one(task)
    assert task.model.training
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())
    assert all(p.grad is None for p in task.model.parameters())


def test_finding_is_json_ready_and_the_figure_follows_the_contract():
    finding = one(counting_lm())
    json.dumps(finding.to_dict(), allow_nan=False)
    (figure,) = finding.figures
    assert figure["kind"] == "lines"
    assert all(len(s) == len(figure["x"]) for s in figure["series"].values())
    assert len(figure["band"]) == 2 and figure["band"][0] <= figure["band"][1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_items"):
        check_initial_loss(classification(), max_items=0)


@pytest.mark.parametrize("device", ["cpu", "auto", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_runs_on_the_device_asked_for_and_leaves_the_model_where_it_was(device):
    task = classification()
    finding = one(task, device=device)
    assert finding.status == "pass"
    assert all(p.device.type == "cpu" for p in task.model.parameters())
