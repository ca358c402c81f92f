import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dltips.core.params import ParamError
from dltips.data.inputs import check_inputs
from dltips.diagnosis.report import Report
from dltips.task import Task


def standardise(x):
    std = x.std(0)
    return (x - x.mean(0)) / np.where(std > 0, std, 1)


class Flat(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.linear(torch.nan_to_num(x.flatten(1)))


def make_task(x, y, augment=None, **kwargs):
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(y))
    model = Flat(x[0].numel(), int(y.max()) + 1)
    return Task(model, TensorDataset(x, y), TensorDataset(x[:10], y[:10]), augment=augment, **kwargs)


def sklearn_data():
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine

    return load_digits(), load_wine(), load_breast_cancer()


DIGITS, WINE, CANCER = sklearn_data()
IMAGES = DIGITS.images[:, None]  # (N, 1, 8, 8), values 0..16


def with_column(x, value):
    return np.c_[x, np.full(len(x), value)]


def with_nan(x):
    x = x.copy()
    x[5, 2] = np.nan
    return x


RNG = np.random.default_rng(0)
CALIBRATION = [  # name, inputs, labels, status, flags expected
    ("digits images / 16", IMAGES / 16, DIGITS.target, "pass", set()),
    ("digits images standardised", (IMAGES - IMAGES.mean()) / IMAGES.std(), DIGITS.target, "pass", set()),
    ("wine standardised", standardise(WINE.data), WINE.target, "pass", set()),
    ("breast_cancer standardised", standardise(CANCER.data), CANCER.target, "pass", set()),
    ("rgb images in [0, 1]", RNG.random((600, 3, 16, 16)), RNG.integers(0, 10, 600), "pass", set()),
    ("digits images raw 0-255", IMAGES * 255 / 16, DIGITS.target, "warn", {"unnormalised"}),
    ("wine raw", WINE.data, WINE.target, "warn", {"unnormalised"}),
    ("breast_cancer raw", CANCER.data, CANCER.target, "warn", {"unnormalised", "few-tiny"}),
    ("wine in [0, 1] divided by 255", (WINE.data - WINE.data.min(0)) / np.ptp(WINE.data, 0) / 255, WINE.target, "warn",
     {"tiny"}),
    ("digits images standardised twice", 0.05 * (IMAGES - IMAGES.mean()) / IMAGES.std(), DIGITS.target, "warn",
     {"tiny"}),
    ("wine standardised + constant column", with_column(standardise(WINE.data), 3.0), WINE.target, "info",
     {"constant"}),
    ("wine standardised with a NaN", with_nan(standardise(WINE.data)), WINE.target, "fail", {"nonfinite"}),
    ("digits standardised as columns", standardise(DIGITS.data), DIGITS.target, "info", {"constant"}),
    ("digits / 16 as columns", DIGITS.data / 16, DIGITS.target, "info", {"constant", "few-tiny"}),
]


@pytest.mark.parametrize("name, x, y, status, flags", CALIBRATION, ids=[c[0] for c in CALIBRATION])
def test_calibration(name, x, y, status, flags):
    (f,) = check_inputs(make_task(x, y))
    assert f.tip == "verify-transforms"
    assert f.status == status
    assert set(f.evidence["flags"]) == flags
    assert (f.fix is None) == (status == "pass")


def test_statistics_per_feature_match_numpy_when_every_item_is_sampled():
    x = standardise(WINE.data) * np.linspace(0.5, 3, 13) + np.arange(13)  # 178 items < n_items
    (f,) = check_inputs(make_task(x, WINE.target))
    stats = f.evidence["inputs"]["x"]["channels"]
    assert f.evidence["n_items"] == len(x)
    x32 = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose([s["mean"] for s in stats], x32.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose([s["std"] for s in stats], x32.std(0), rtol=1e-6)
    np.testing.assert_allclose([s["min"] for s in stats], x32.min(0))
    np.testing.assert_allclose([s["max"] for s in stats], x32.max(0))
    np.testing.assert_allclose([s["abs_q99"] for s in stats], np.quantile(np.abs(x32), 0.99, axis=0), rtol=1e-6)


def test_image_statistics_are_per_channel_and_constant_channels_are_fine():
    x = np.zeros((100, 3, 4, 4))
    x[:, 0] = RNG.random((100, 4, 4))
    x[:, 1] = RNG.normal(5, 2, (100, 4, 4))
    (f,) = check_inputs(make_task(x, RNG.integers(0, 2, 100)))
    stats = f.evidence["inputs"]["x"]["channels"]
    assert [s["name"] for s in stats] == ["channel 0", "channel 1", "channel 2"]
    x32 = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose([s["mean"] for s in stats], x32.mean((0, 2, 3)), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose([s["std"] for s in stats], x32.std((0, 2, 3)), rtol=1e-5, atol=1e-12)
    assert f.status == "pass" and stats[2]["flags"] == []


def test_samples_about_n_items_from_a_large_training_set():
    x = RNG.random((5000, 4))
    (f,) = check_inputs(make_task(x, RNG.integers(0, 2, 5000), batch_size=64), max_items=100)
    assert 100 <= f.evidence["n_items"] < 100 + 64


def test_augmentation_is_applied_as_in_training_without_touching_the_global_rng():
    x = IMAGES / 16
    calls = []

    def augment(batch):  # a buggy pipeline: rescales 0-1 images back to 0-255, with random noise
        calls.append(batch.shape)
        return batch * 255 + torch.rand(batch.shape)

    task = make_task(x, DIGITS.target, augment=augment)
    state = torch.get_rng_state()
    (f,) = check_inputs(task)
    assert torch.equal(state, torch.get_rng_state())
    assert calls and all(len(shape) == 4 for shape in calls)
    assert f.status == "warn" and "unnormalised" in f.evidence["flags"]
    assert f.evidence["augmented"] and "after augmentation" in f.message
    assert check_inputs(make_task(x, DIGITS.target))[0].status == "pass"


def test_infinite_values_fail():
    x = standardise(WINE.data)
    x[3, 0] = np.inf
    (f,) = check_inputs(make_task(x, WINE.target))
    assert f.status == "fail" and f.evidence["flags"]["nonfinite"] == ["feature 0"]
    assert f.evidence["inputs"]["x"]["channels"][0]["nonfinite"] == 1


class TokenModel(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.out = nn.Linear(8, vocab)

    def forward(self, x):
        return self.out(self.emb(x))


def test_token_ids_report_their_range_only():
    x = torch.randint(3, 50, (64, 12), generator=torch.Generator().manual_seed(0))
    task = Task(TokenModel(60), TensorDataset(x, x), TensorDataset(x[:4], x[:4]), kind="language-model")
    (f,) = check_inputs(task)
    r = f.evidence["inputs"]["x"]
    assert f.status == "pass"
    assert r["layout"] == "integer" and (r["min"], r["max"]) == (int(x.min()), int(x.max()))
    assert r["n_unique"] == len(torch.unique(x)) and r["channels"] == []
    assert f"from {int(x.min())} to {int(x.max())}" in f.message


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8 + 2, 2)

    def forward(self, x):
        return self.linear(torch.cat([x["image"].flatten(1), x["meta"]], 1))


def test_dict_inputs_are_summarised_per_key():
    n = 80
    image = torch.rand(n, 2, 2, 2)
    meta = torch.tensor(np.c_[RNG.normal(0, 1, n), RNG.normal(3000, 500, n)], dtype=torch.float32)

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return {"image": image[i], "meta": meta[i]}, int(i % 2)

    task = Task(DictModel(), Items(), Items())
    (f,) = check_inputs(task)
    assert set(f.evidence["inputs"]) == {"image", "meta"}
    assert f.evidence["flags"] == {"unnormalised": ["meta[feature 1]"]}
    assert f.status == "warn" and "'meta'" in f.message


def test_many_features_keep_a_summary_and_the_worst_offenders():
    x = RNG.normal(0, 1, (300, 200))
    x[:, [17, 90, 150]] *= 1000
    (f,) = check_inputs(make_task(x, RNG.integers(0, 2, 300)))
    r = f.evidence["inputs"]["x"]
    assert "channels" not in r and r["summary"]["n"] == 200 and r["summary"]["n_flagged"] == 3
    assert sorted(s["name"] for s in r["worst"]) == ["feature 150", "feature 17", "feature 90"]
    assert len(f.figures[0]["rows"]) <= 64
    data = json.loads(Report(task={}, findings=[f]).to_json())
    assert data["findings"][0]["evidence"]["flags"]["unnormalised"] == ["feature 17", "feature 90", "feature 150"]


def test_bad_max_items():
    with pytest.raises(ParamError, match="max_items"):
        check_inputs(make_task(RNG.random((10, 2)), RNG.integers(0, 2, 10)), max_items=0)
    with pytest.raises(ParamError, match="max_items"):
        check_inputs(make_task(RNG.random((10, 2)), RNG.integers(0, 2, 10)), max_items="5")


def test_the_old_n_items_keyword_still_works_and_warns():
    task = make_task(RNG.random((300, 3)), RNG.integers(0, 2, 300), batch_size=32)
    with pytest.warns(DeprecationWarning, match="n_items"):
        (old,) = check_inputs(task, n_items=64)
    (new,) = check_inputs(task, max_items=64)
    assert old.evidence == new.evidence and old.message == new.message
    with pytest.warns(DeprecationWarning), pytest.raises(ParamError, match="max_items"):
        check_inputs(task, n_items=0)


def test_common_arguments_are_taken():
    task = make_task(RNG.random((100, 3)), RNG.integers(0, 2, 100))
    (plain,) = check_inputs(task)
    (same,) = check_inputs(task, model=task.model, device="auto", seed=0, deadline=60.0)
    assert same.evidence == plain.evidence
    with pytest.raises(ParamError, match="seed"):
        check_inputs(task, seed=-1)
    with pytest.raises(ParamError, match="deadline"):
        check_inputs(task, deadline="soon")


def test_the_augmentation_is_previewed_on_training_items():
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from dltips import Task, check_inputs

    x = torch.rand(40, 1, 8, 8)
    y = torch.randint(0, 2, (40,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    task = Task(model, TensorDataset(x, y), TensorDataset(x, y), augment=lambda b: b.flip(-1))
    rng = torch.get_rng_state()
    [finding] = check_inputs(task)
    assert torch.equal(torch.get_rng_state(), rng)
    figure = finding.figures[-1]
    assert figure["kind"] == "images" and len(figure["images"]) == 2 * 6
    before, after = figure["images"][0], figure["images"][1]
    assert figure["captions"][:2] == ["sample 0: input", "sample 0: augment"]
    assert (before[:, ::-1] == after).all()  # the flip, as the model will see it
    [plain] = check_inputs(Task(model, TensorDataset(x, y), TensorDataset(x, y)))
    assert all(f["kind"] != "images" for f in plain.figures)
