import json
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dltips.core.params import ParamError
from dltips.data.worst import check_worst_predictions
from dltips.diagnosis.report import Report
from dltips.task import IGNORE_INDEX, Task

pytestmark = pytest.mark.usefixtures("one_thread")


class Lookup(nn.Module):
    """Returns a fixed output per item: x[..., 0] holds the item's id."""

    def __init__(self, outputs: torch.Tensor):
        super().__init__()
        self.outputs = nn.Parameter(outputs.clone())

    def forward(self, x):
        ids = x.reshape(len(x), -1)[:, 0].long()
        return self.outputs[ids]


class Counting(Dataset):
    """A dataset that counts how often items are fetched."""

    def __init__(self, x, y):
        self.x, self.y, self.calls = x, y, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.calls += 1
        return self.x[i], self.y[i]


def id_inputs(n, shape=(1,)):
    """Inputs whose first value is the item's id."""
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(0))
    x.reshape(n, -1)[:, 0] = torch.arange(n, dtype=torch.float32)
    return x


def np_log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def classification_task(n=200, c=5, seed=0):
    g = np.random.default_rng(seed)
    logits = g.normal(0, 3, (n, c))
    y = g.integers(0, c, n)
    x = id_inputs(n)
    model = Lookup(torch.tensor(logits, dtype=torch.float32))
    task = Task(model, TensorDataset(x, torch.tensor(y)), TensorDataset(x[:10], torch.tensor(y[:10])))
    return task, logits.astype(np.float32).astype(np.float64), y


def test_classification_ranking_matches_an_independent_computation():
    task, logits, y = classification_task()
    (f,) = check_worst_predictions(task, model=task.model, top=30)
    assert f.tip == "worst-predictions" and f.status == "info"
    e = f.evidence
    logp = np_log_softmax(logits)
    loss = -logp[np.arange(len(y)), y]
    order = np.argsort(-loss, kind="stable")
    assert e["split"] == "train"
    assert e["indices"] == order[:30].tolist()
    np.testing.assert_allclose(e["losses"], loss[order[:30]], rtol=1e-5)
    assert e["predictions"] == logits.argmax(1)[order[:30]].tolist()
    assert e["targets"] == y[order[:30]].tolist()

    p = np.exp(logp)
    p_true = p[np.arange(len(y)), y]
    confident = np.nonzero((p_true <= 0.1) & (p.argmax(1) != y))[0]
    confident = confident[np.argsort(-loss[confident], kind="stable")]
    assert e["confident_mistakes"] == confident[:30].tolist()
    assert e["counts"]["confident_mistakes"] == len(confident)
    assert e["counts"]["wrong"] == int((p.argmax(1) != y).sum())
    top2 = np.sort(p, 1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    assert e["least_confident"][:10] == np.argsort(margin, kind="stable")[:10].tolist()
    assert f"{len(confident)} of 200" in f.title
    assert f"#{order[0]}" in f.message


def test_binary_lists_false_negatives_and_positives_separately():
    n = 120
    g = np.random.default_rng(1)
    z = g.normal(0, 4, n)
    y = g.integers(0, 2, n).astype(np.float32)
    x = id_inputs(n)
    task = Task(Lookup(torch.tensor(z, dtype=torch.float32).unsqueeze(1)), TensorDataset(x, torch.tensor(y)),
                TensorDataset(x[:8], torch.tensor(y[:8])), kind="binary")
    (f,) = check_worst_predictions(task, model=task.model, top=n)
    e = f.evidence
    p = 1 / (1 + np.exp(-z.astype(np.float32).astype(np.float64)))
    fn = np.nonzero((y == 1) & (p <= 0.1))[0]
    fp = np.nonzero((y == 0) & (p >= 0.9))[0]
    assert len(fn) > 0 and len(fp) > 0
    assert e["false_negatives"] == fn[np.argsort(p[fn], kind="stable")].tolist()
    assert e["false_positives"] == fp[np.argsort(-p[fp], kind="stable")].tolist()
    assert sorted(e["confident_mistakes"]) == sorted(fn.tolist() + fp.tolist())
    assert e["least_confident"][:5] == np.argsort(np.abs(p - 0.5), kind="stable")[:5].tolist()
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert e["indices"][:10] == np.argsort(-loss, kind="stable")[:10].tolist()
    np.testing.assert_allclose(e["predictions"][:10], p[e["indices"][:10]], rtol=1e-5)
    assert f"{len(fp)} false positives, {len(fn)} false negatives" in f.title


def test_regression_ranks_by_squared_error_and_shows_a_feature_table():
    n = 60
    x = id_inputs(n, (4,))
    pred = torch.linspace(-1, 1, n)
    y = torch.zeros(n)
    y[7], y[33] = 10.0, -8.0
    task = Task(Lookup(pred.unsqueeze(1)), TensorDataset(x, y), TensorDataset(x[:5], y[:5]), kind="regression")
    (f,) = check_worst_predictions(task, model=task.model, top=5)
    e = f.evidence
    err = (pred.double() - y.double()).pow(2).numpy()
    assert e["indices"] == np.argsort(-err, kind="stable")[:5].tolist()
    assert e["indices"][:2] == [7, 33]
    assert e["targets"][:2] == [10.0, -8.0]
    table = f.figures[0]
    assert table["kind"] == "table"
    assert table["columns"][:4] == ["index", "target", "prediction", "loss"] and "x[3]" in table["columns"]
    assert table["rows"][0][0] == 7 and table["rows"][0][4] == 7.0  # x[0] of item 7 is its id


def test_language_model_ranks_sequences_by_mean_token_loss():
    n, t, v = 40, 6, 7
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(n, t, v, generator=g) * 3
    y = torch.randint(0, v, (n, t), generator=g)
    y[3, 4:] = IGNORE_INDEX  # padding does not count
    x = torch.randint(1, v, (n, t), generator=g)
    x[:, 0] = torch.arange(n)  # the 'model' reads the id from the first token
    task = Task(Lookup(logits), TensorDataset(x, y), TensorDataset(x[:4], y[:4]), kind="language-model",
                n_classes=v)
    (f,) = check_worst_predictions(task, model=task.model, top=10)
    logp = torch.log_softmax(logits.double(), -1)
    mask = y != IGNORE_INDEX
    tok = -logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    mean = (tok.sum(1) / mask.sum(1)).numpy()
    e = f.evidence
    assert e["indices"] == np.argsort(-mean, kind="stable")[:10].tolist()
    np.testing.assert_allclose(e["losses"], np.sort(mean)[::-1][:10], rtol=1e-5)
    worst = e["indices"][0]
    assert e["targets"][0] == y[worst].tolist()
    assert e["predictions"][0] == logits[worst].argmax(-1).tolist()
    assert f.figures[0]["kind"] == "table"


def test_multilabel_lists_items_with_a_confidently_wrong_label():
    n, k = 50, 4
    g = np.random.default_rng(4)
    z = g.normal(0, 3, (n, k)).astype(np.float32)
    y = g.integers(0, 2, (n, k)).astype(np.float32)
    x = id_inputs(n)
    task = Task(Lookup(torch.tensor(z)), TensorDataset(x, torch.tensor(y)), TensorDataset(x[:5], torch.tensor(y[:5])),
                kind="multilabel")
    (f,) = check_worst_predictions(task, model=task.model, top=n)
    e = f.evidence
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(1)
    assert e["indices"][:10] == np.argsort(-loss, kind="stable")[:10].tolist()
    confident = np.nonzero(np.abs(y - p).max(1) >= 0.9)[0]
    assert sorted(e["confident_mistakes"]) == confident.tolist()
    worst = e["indices"][0]
    assert e["predictions"][0] == np.nonzero(p[worst] > 0.5)[0].tolist()
    assert e["targets"][0] == np.nonzero(y[worst])[0].tolist()


def test_dense_classification_ranks_by_mean_pixel_loss():
    n = 20
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(n, 3, 4, 4, generator=g)
    y = torch.randint(0, 3, (n, 4, 4), generator=g)
    x = id_inputs(n)
    task = Task(Lookup(logits), TensorDataset(x, y), TensorDataset(x[:3], y[:3]))
    (f,) = check_worst_predictions(task, model=task.model, top=5)
    loss = torch.nn.functional.cross_entropy(logits.double(), y, reduction="none").mean((1, 2)).numpy()
    assert f.evidence["indices"] == np.argsort(-loss, kind="stable")[:5].tolist()
    acc = (logits.argmax(1) == y).double().mean((1, 2)).numpy()
    np.testing.assert_allclose(f.evidence["accuracies"], acc[f.evidence["indices"]])


def test_max_items_ranks_an_evenly_spaced_subset_with_positions_in_train():
    task, logits, y = classification_task(n=200)
    (f,) = check_worst_predictions(task, model=task.model, top=10, max_items=20)
    e = f.evidence
    subset = np.round(np.linspace(0, 199, 20)).astype(int)
    loss = -np_log_softmax(logits)[np.arange(200), y]
    assert e["n_ranked"] == 20 and e["n_train"] == 200
    assert e["indices"] == subset[np.argsort(-loss[subset], kind="stable")][:10].tolist()


def test_images_figure_fetches_only_the_shown_items():
    n = 300
    x = id_inputs(n, (1, 8, 8))
    g = np.random.default_rng(3)
    y = torch.tensor(g.integers(0, 4, n))
    logits = torch.tensor(g.normal(0, 2, (n, 4)), dtype=torch.float32)
    train = Counting(x, y)
    task = Task(Lookup(logits), train, TensorDataset(x[:5], y[:5]), batch_size=32)
    train.calls = 0
    (f,) = check_worst_predictions(task, model=task.model, top=20)
    assert train.calls == n + 16  # one pass to rank, then the 16 shown items
    fig = f.figures[0]
    assert fig["kind"] == "images" and len(fig["images"]) == 16 and len(fig["captions"]) == 16
    first = f.evidence["indices"][0]
    assert fig["captions"][0].startswith(f"#{first} y={int(y[first])} p={int(logits[first].argmax())}")
    image = np.asarray(fig["images"][0])
    assert image.shape == (8, 8) and image.min() == 0.0 and image.max() == 1.0


def test_model_is_left_as_it_was_and_evidence_is_json():
    task, _, _ = classification_task()
    task.model.train()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    (f,) = check_worst_predictions(task, model=task.model)
    assert task.model.training
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())
    data = json.loads(Report(task={}, findings=[f]).to_json())["findings"][0]["evidence"]
    assert len(data["indices"]) == 50 and data["split"] == "train"


@pytest.mark.parametrize("kwargs", [{"top": 0}, {"top": 2.5}, {"max_items": 0}])
def test_bad_arguments(kwargs):
    task, _, _ = classification_task(n=20)
    with pytest.raises(ValueError):
        check_worst_predictions(task, model=task.model, **kwargs)


@pytest.mark.parametrize("kwargs", [{"max_items": "5"}, {"seed": -1}, {"deadline": "soon"}, {"device": "no-such-device"},
                                    {"model": "net"}, {"top": True}])
def test_bad_arguments_raise_param_error_naming_them(kwargs):
    task, _, _ = classification_task(n=20)
    with pytest.raises(ParamError, match=next(iter(kwargs))):
        check_worst_predictions(task, **kwargs)


def test_the_old_model_first_form_still_works_and_warns():
    task, _, _ = classification_task(n=40)
    (new,) = check_worst_predictions(task, model=task.model, top=5)
    with pytest.warns(DeprecationWarning, match="check_worst_predictions"):
        (old,) = check_worst_predictions(task.model, task, top=5)
    assert (old.message, old.evidence) == (new.message, new.evidence)
    (same,) = check_worst_predictions(task, top=5, device="auto", seed=3, deadline=60.0)
    assert same.evidence == new.evidence


# ---------------------------------------------------------------- calibration: flipped labels on digits


@pytest.mark.parametrize("flip", [0.0, 0.1])
def test_calibration_flipped_digits_labels_come_first(flip):
    from sklearn.datasets import load_digits

    from dltips.training.fit import fit

    d = load_digits()
    g = torch.Generator().manual_seed(0)
    x = torch.tensor(d.images[:600] / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target[:600])
    n_flip = int(flip * len(y))
    flipped = torch.randperm(len(y), generator=g)[:n_flip]
    y_noisy = y.clone()
    y_noisy[flipped] = (y[flipped] + torch.randint(1, 10, (n_flip,), generator=g)) % 10
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    task = Task(model, TensorDataset(x, y_noisy), TensorDataset(x[:50], y[:50]), batch_size=32)
    fit(task, 15, progress=False, device="cpu")
    (f,) = check_worst_predictions(task, model=task.model, top=n_flip or 10)
    e = f.evidence
    if flip == 0:
        assert e["counts"]["confident_mistakes"] <= 2
    else:
        flipped = set(flipped.tolist())
        assert sum(i in flipped for i in e["indices"][:n_flip]) >= 0.85 * n_flip
        assert sum(i in flipped for i in e["confident_mistakes"]) >= 0.95 * len(e["confident_mistakes"])
        assert len(e["confident_mistakes"]) >= 0.6 * n_flip


# ---------------------------------------------------------------- the fix follows the counts; the deadline


@pytest.mark.parametrize("wrong, confident", [(0, 0), (6, 0), (6, 6)])
def test_the_fix_follows_the_mistake_counts(wrong, confident):
    n, c = 60, 3
    y = torch.arange(n) % c
    logits = torch.nn.functional.one_hot(y, c).float() * 6
    scale = 8.0 if confident else 0.5  # a wrong class at 8 gives the label p < 0.1; at 0.5 it stays above
    logits[:wrong] = torch.nn.functional.one_hot((y[:wrong] + 1) % c, c).float() * scale
    task = Task(Lookup(logits), TensorDataset(id_inputs(n), y), TensorDataset(id_inputs(n)[:5], y[:5]))
    (f,) = check_worst_predictions(task)
    assert f.evidence["counts"] == {"wrong": wrong, "confident_mistakes": confident}
    if confident:
        assert "relabel" in f.fix and "wrong labels" in f.message
    elif wrong:
        assert "relabel" not in f.fix and "none points at a wrong label" in f.message
    else:
        assert f.fix is None and "every ranked item right" in f.message


def test_multilabel_counts_every_mistake_beside_the_confident_ones():
    n = 40
    logits = torch.full((n, 2), 4.0)
    y = torch.ones(n, 2)
    y[:3, 0] = 0  # label 0 of items 0-2 gets p = sigmoid(4) = 0.98: confidently wrong
    y[3:5, 1] = 0
    logits[3:5, 1] = 0.5  # p = sigmoid(0.5) = 0.62: wrong side of 0.5, not confident
    task = Task(Lookup(logits), TensorDataset(id_inputs(n), y), TensorDataset(id_inputs(n)[:5], y[:5]),
                kind="multilabel")
    (f,) = check_worst_predictions(task)
    assert f.evidence["counts"] == {"wrong": 5, "confident_mistakes": 3}
    assert "relabel" in f.fix


class Slow(Dataset):
    """Items that take `delay` seconds each to fetch."""

    def __init__(self, x, y, delay):
        self.x, self.y, self.delay = x, y, delay

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.x[i], self.y[i]


def test_a_deadline_that_cannot_be_met_gives_a_skip_with_the_time_still_needed():
    task, _, _ = classification_task(n=400)
    x, y = task.train.tensors
    slow = Task(task.model, Slow(x, y, 0.002), task.valid, batch_size=8)  # chunks of 128 items, 0.26 s each
    start = time.perf_counter()
    (f,) = check_worst_predictions(slow, deadline=0.3)
    elapsed = time.perf_counter() - start
    e = f.evidence
    assert f.status == "skip" and e["skip_reason"] == "time"
    assert e["n_planned"] == 400 and 0 < e["n_scored"] < 400 and e["n_scored"] % 128 == 0
    # the items left need at least their sleeps; the budget had at most 0.3 s of them
    assert e["needs_s"] >= max(1.0, round((400 - e["n_scored"]) * 0.002 - 0.3, 1))
    assert elapsed < 400 * 0.002  # it stopped before scoring everything
    assert "indices" not in e


def test_a_deadline_that_is_met_changes_nothing():
    task, _, _ = classification_task(n=200)
    (timed,) = check_worst_predictions(task, deadline=60.0)
    (untimed,) = check_worst_predictions(task)
    assert timed.evidence == untimed.evidence and timed.status == "info"
