import difflib
import re
import unicodedata

import numpy as np
import pytest
import torch
from torch import nn

import dltips
from dltips.data import toys
from dltips.task import IGNORE_INDEX, Task

pytestmark = pytest.mark.usefixtures("one_thread")

TRAINABLE = ["spirals", "moons", "shapes", "copy_sequence", "reverse_sequence"]


def labels(dataset):
    return dataset.tensors[1]


def majority_accuracy(y):
    y = y[y != IGNORE_INDEX]
    return torch.bincount(y).max().item() / y.numel()


# Known answers: the documented accuracy is reached, and a constant predictor is far below it.


@pytest.mark.parametrize("name", TRAINABLE)
def test_documented_accuracy_is_reached_and_far_above_a_constant(name):
    toy = getattr(toys, name)()
    result = dltips.fit(toy.task(), toy.epochs, recipe=dltips.Recipe(lr=toy.lr), progress=False)
    accuracy = result.history[-1][toy.metric]
    assert accuracy >= toy.expected, f"{name}: {accuracy:.3f} < documented {toy.expected}"
    constant = majority_accuracy(labels(toy.valid))
    assert toy.baseline == pytest.approx(constant)
    assert constant < toy.expected - 0.35


def test_spirals_are_not_linearly_separable():
    toy = toys.spirals(n=600)
    task = toy.task(model=nn.Linear(2, 3))
    result = dltips.fit(task, toy.epochs, recipe=dltips.Recipe(lr=toy.lr), progress=False)
    assert result.history[-1]["valid_accuracy"] < 0.7


# Determinism, shapes, dtypes, splits.


@pytest.mark.parametrize("name", TRAINABLE)
def test_same_seed_same_data_and_model_other_seed_differs(name):
    build = getattr(toys, name)
    kwargs = {"n": 200}
    a, b, c = build(**kwargs), build(**kwargs), build(seed=1, **kwargs)
    for split in ("train", "valid", "test"):
        for ta, tb in zip(getattr(a, split).tensors, getattr(b, split).tensors):
            assert torch.equal(ta, tb)
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    state = torch.random.get_rng_state()
    first, second = a.model().state_dict(), a.model().state_dict()
    assert torch.equal(state, torch.random.get_rng_state()), "building a model must not draw from the global RNG"
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("name", TRAINABLE)
def test_splits_are_60_20_20_and_task_accepts_them(name):
    toy = getattr(toys, name)(n=500)
    assert (len(toy.train), len(toy.valid), len(toy.test)) == (300, 100, 100)
    task = toy.task(batch_size=32)
    assert isinstance(task, Task)
    assert (task.kind, task.n_classes, task.batch_size) == (toy.kind, toy.n_classes, 32)
    assert task.test is toy.test


def test_spirals_and_moons_layout():
    for toy, k in ((toys.spirals(n=600, arms=4), 4), (toys.moons(n=600), 2)):
        x, y = toy.train.tensors
        assert x.shape == (360, 2) and x.dtype == torch.float32
        assert y.dtype == torch.long and set(y.tolist()) == set(range(k))
        everything = torch.cat([labels(toy.train), labels(toy.valid), labels(toy.test)])
        assert torch.bincount(everything).tolist() == [600 // k] * k
        assert x.abs().max() < 2.5
        assert toy.n_classes == k and toy.kind == "classification"


def test_spirals_noise_blurs_the_arms():
    def spread(noise):
        x = toys.spirals(noise=noise).train.tensors[0]
        return (x.norm(dim=1) - x.norm(dim=1).clamp(0.1, 1)).abs().mean()

    assert spread(0.0) == 0
    assert spread(0.2) > spread(0.05) > 0


def test_shapes_layout_and_masks():
    toy = toys.shapes(n=300, size=48)
    for split in ("train", "valid", "test"):
        x, y = getattr(toy, split).tensors
        masks = toy.extras["masks"][split]
        assert x.shape == (len(y), 1, 48, 48) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1
        assert masks.shape == (len(y), 48, 48) and masks.dtype == torch.bool
        area = masks.flatten(1).float().mean(1)
        assert (area > 0.03).all() and (area < 0.7).all()
        inside = (x[:, 0] * masks).flatten(1).sum(1) / masks.flatten(1).sum(1)
        outside = (x[:, 0] * ~masks).flatten(1).sum(1) / (~masks).flatten(1).sum(1)
        assert (inside > outside + 0.15).all(), "each mask must cover the bright shape of its image"
    assert toy.extras["shapes"] == toys.SHAPES
    assert set(labels(toy.train).tolist()) == {0, 1, 2}


def test_shapes_masks_have_the_labelled_shape():
    toy = toys.shapes(n=600, noise=0.0)
    masks, y = toy.extras["masks"]["train"], labels(toy.train)
    # Fill of the mask's bounding circle: a circle of radius 0.8 R fills 0.64, a square 2/pi, a triangle ~0.41.
    fill = []
    for mask in masks:
        rows, cols = torch.nonzero(mask, as_tuple=True)
        centre_r, centre_c = rows.float().mean(), cols.float().mean()
        radius = ((rows - centre_r) ** 2 + (cols - centre_c) ** 2).sqrt().max() + 0.5
        fill.append(len(rows) / (torch.pi * radius**2))
    fill = torch.stack(fill)
    circle, square, triangle = (fill[y == k].mean() for k in range(3))
    assert circle > square > triangle
    assert 0.75 < circle < 1.05 and 0.3 < triangle < 0.5


def test_shapes_positions_scales_and_rotations_vary():
    masks = toys.shapes(n=300, noise=0.0).extras["masks"]["train"]
    rows = torch.arange(32.0)[None, :, None]
    centres = (masks * rows).flatten(1).sum(1) / masks.flatten(1).sum(1)
    assert centres.std() > 2 and centres.max() - centres.min() > 10
    assert masks.flatten(1).sum(1).float().std() > 20
    assert len({tuple(m.flatten().tolist()) for m in masks}) == len(masks)


def test_shapes_subset_and_sizes():
    toy = toys.shapes(n=60, size=128, shapes=("triangle", "circle"))
    assert toy.n_classes == 2 and toy.extras["shapes"] == ("triangle", "circle")
    assert toy.train.tensors[0].shape[-2:] == (128, 128)
    task = toy.task()  # the CNN pools globally: any size works
    assert task.n_classes == 2
    assert toys.shapes(n=30, size=16).train.tensors[0].shape[-1] == 16


@pytest.mark.parametrize("name", ["copy_sequence", "reverse_sequence"])
def test_sequence_layout(name):
    length, vocab = 5, 7
    toy = getattr(toys, name)(n=100, length=length, vocab=vocab)
    assert toy.kind == "language-model" and toy.n_classes == vocab
    for split in ("train", "valid", "test"):
        x, y = getattr(toy, split).tensors
        assert x.shape == y.shape == (len(x), 2 * length) and x.dtype == y.dtype == torch.long
        prefix = x[:, :length]
        assert (prefix >= 1).all() and (prefix < vocab).all()
        assert (x[:, length] == toys.SEPARATOR).all()
        assert (y[:, :length] == IGNORE_INDEX).all()
        assert (y[:, length:] != IGNORE_INDEX).all()
        answer = prefix.flip(1) if name == "reverse_sequence" else prefix
        assert torch.equal(y[:, length:], answer)
        assert torch.equal(y[:, length:-1], x[:, length + 1:]), "y must be x shifted by one token"


def test_copy_and_reverse_differ():
    copy, reverse = toys.copy_sequence(n=50), toys.reverse_sequence(n=50)
    assert torch.equal(copy.train.tensors[0][:, :8], reverse.train.tensors[0][:, :8])
    assert not torch.equal(copy.train.tensors[1], reverse.train.tensors[1])


def test_tiny_transformer_is_causal():
    model = toys.TinyTransformer(vocab=10, max_len=16).eval()
    tokens = torch.randint(1, 10, (3, 16), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] % 9) + 1
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert before.shape == (3, 16, 10)
    assert torch.allclose(before[:, :9], after[:, :9], atol=1e-5)
    assert not torch.allclose(before[:, 9:], after[:, 9:], atol=1e-5)
    with pytest.raises(ValueError, match="max_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


# Messy categories.

_EXPAND = {"st": "street", "ave": "avenue", "rd": "road", "blvd": "boulevard", "ln": "lane", "ct": "court",
           "pl": "place", "dr": "drive", "n": "north"}


def normalise(text):
    """Casefold, strip accents and punctuation, collapse spaces, expand abbreviations ("St" first word = Saint)."""
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()
    words = re.sub(r"[^a-z]+", " ", text).split()
    expanded = [("saint" if i == 0 and w == "st" else _EXPAND.get(w, w)) for i, w in enumerate(words)]
    return " ".join(expanded)


def test_messy_categories_structure_and_splits():
    table = toys.messy_categories(n=1000)
    assert table.numeric.shape == (1000, 3) and table.numeric.dtype == np.float32
    assert table.target.shape == (1000,) and np.isfinite(table.target).all()
    assert len(table.raw) == len(table.clean) == len(table.messiness) == 1000
    assert all(isinstance(r, str) for r in table.raw)
    assert set(table.clean) == set(table.categories)
    counts = [table.clean.count(c) for c in table.categories]
    assert max(counts) > 2 * min(counts), "category frequencies are skewed, as in real data"
    parts = np.concatenate([table.train, table.valid, table.test])
    assert sorted(parts.tolist()) == list(range(1000))
    assert (len(table.train), len(table.valid), len(table.test)) == (600, 200, 200)


def test_messy_rows_map_back_to_their_clean_category():
    table = toys.messy_categories(n=2000, messy=0.4)
    messy = np.array([r != c for r, c in zip(table.raw, table.clean)])
    assert 0.35 < messy.mean() < 0.45
    assert all(bool(m) == bool(changes) for m, changes in zip(messy, table.messiness))
    seen = {kind for changes in table.messiness for kind in changes}
    assert seen == set(toys.MESSINESS)
    assert len(set(table.raw)) > 5 * len(table.categories)
    clean_forms = {normalise(c): c for c in table.categories}
    assert len(clean_forms) == len(table.categories)
    for raw, clean, changes in zip(table.raw, table.clean, table.messiness):
        if "typo" in changes:  # one letter off: still closest to its own category
            closest = max(table.categories, key=lambda c: difflib.SequenceMatcher(None, normalise(raw), normalise(c)).ratio())
            assert closest == clean, (raw, clean)
        else:
            assert clean_forms.get(normalise(raw)) == clean, (raw, clean, changes)


def test_messy_fraction_zero_and_one():
    tidy = toys.messy_categories(n=300, messy=0.0)
    assert tidy.raw == tidy.clean and not any(tidy.messiness)
    all_messy = toys.messy_categories(n=300, messy=1.0)
    assert all(r != c for r, c in zip(all_messy.raw, all_messy.clean))


def test_messy_categories_is_deterministic():
    a, b, c = (toys.messy_categories(n=300, seed=s) for s in (0, 0, 1))
    assert a.raw == b.raw and np.array_equal(a.target, b.target) and np.array_equal(a.valid, b.valid)
    assert a.raw != c.raw


def _rmse(table, features):
    """Validation RMSE of least squares fitted on train (torch: one thread under the fixture)."""
    x = torch.tensor(np.c_[features, np.ones(len(features))], dtype=torch.float64)
    y = torch.tensor(table.target, dtype=torch.float64)
    train, valid = torch.as_tensor(table.train), torch.as_tensor(table.valid)
    w = torch.linalg.lstsq(x[train], y[train, None], driver="gelsd").solution
    return float(((x[valid] @ w)[:, 0] - y[valid]).pow(2).mean().sqrt())


def _one_hot(values, vocabulary):
    index = {v: i for i, v in enumerate(vocabulary)}
    out = np.zeros((len(values), len(vocabulary)))
    for row, v in enumerate(values):
        if v in index:
            out[row, index[v]] = 1
    return out


def test_messy_categories_known_answers():
    table = toys.messy_categories()
    clean = _rmse(table, np.c_[table.numeric, _one_hot(table.clean, table.categories)])
    train_raw = sorted({table.raw[i] for i in table.train})
    raw = _rmse(table, np.c_[table.numeric, _one_hot(table.raw, train_raw)])
    numeric = _rmse(table, table.numeric)
    assert clean == pytest.approx(table.noise_std, rel=0.15)
    assert raw > 1.5 * clean, "messy strings must hurt a naive one-hot encoding"
    assert numeric > 3 * clean, "the category must matter"
    assert _rmse(table, np.zeros((len(table.target), 0))) > 1.2 * numeric, "the numerics must matter"


# Bad arguments.


@pytest.mark.parametrize("call, match", [
    (lambda: toys.spirals(n=5), r"n must be an int >= 10, got 5"),
    (lambda: toys.spirals(arms=1), r"arms must be an int >= 2 and <= 12"),
    (lambda: toys.spirals(noise=-0.1), r"noise must be a finite number >= 0 and <= 1"),
    (lambda: toys.moons(n=100.0), r"n must be an int"),
    (lambda: toys.moons(noise="0.2"), r"noise must be a number"),
    (lambda: toys.shapes(size=15), r"size must be an int >= 16 and <= 128, got 15"),
    (lambda: toys.shapes(size=129), r"size must be an int >= 16 and <= 128"),
    (lambda: toys.shapes(shapes=("circle", "hexagon")), r"shapes must be .*'hexagon'"),
    (lambda: toys.shapes(shapes=("circle",)), r"shapes must be at least two distinct"),
    (lambda: toys.shapes(shapes=("circle", "circle")), r"shapes must be at least two distinct"),
    (lambda: toys.copy_sequence(vocab=2), r"vocab must be an int >= 3 and"),
    (lambda: toys.reverse_sequence(length=0), r"length must be an int >= 1 and <= 256"),
    (lambda: toys.copy_sequence(n=True), r"n must be an int"),
    (lambda: toys.messy_categories(messy=1.5), r"messy must be a finite number >= 0 and <= 1"),
    (lambda: toys.messy_categories(n=3), r"n must be an int >= 10"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
