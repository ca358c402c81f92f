import math

import numpy as np
import pytest
import torch
from torch import nn

import dltips.training.fit as fit_module
from dltips import Recipe, Task, evaluate, fit
from dltips.data.toys import messy_categories
from dltips.tabular.encoder import CategoryEncoder
from dltips.tabular.model import ContinuousStats, TabularData, TabularDataset, TabularModel
from dltips.training.mixup import MIXUP_LAM, MIXUP_PERM, Mixup

# The model -------------------------------------------------------------------------------------------------


def make_model(out_features=3, hidden=(8, 5), seed=0, **kw):
    """A model with random BatchNorm statistics and affine weights, so that eval-mode BatchNorm is not the identity."""
    torch.manual_seed(seed)
    model = TabularModel({"city": (6, 3), "colour": (4, 2)}, 2, out_features, hidden=hidden, **kw)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def make_batch(n=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, 6, (n,), generator=g), torch.randint(0, 4, (n,), generator=g)], dim=1)
    return {"categorical": ids, "continuous": torch.randn(n, 2, generator=g)}


def embed_by_hand(model, ids):
    """Row i: the concatenated rows of each embedding table picked by hand."""
    return torch.stack([torch.cat([model.embeddings[j].weight[int(ids[i, j])] for j in range(ids.shape[1])])
                        for i in range(ids.shape[0])])


def mlp_by_hand(model, h):
    """Linear, ReLU, eval-mode BatchNorm per hidden layer, then the last Linear, written out."""
    layers = list(model.layers)
    for j in range(len(model.hidden)):
        linear, bn = layers[3 * j], layers[3 * j + 2]
        h = torch.clamp(h @ linear.weight.T + linear.bias, min=0.0)
        h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    return h @ layers[-1].weight.T + layers[-1].bias


def test_layers_follow_linear_relu_batchnorm_dropout():
    model = TabularModel([(6, 3), (4, 2)], 2, 1, hidden=(8, 5), dropout=0.1)
    kinds = [type(m) for m in model.layers]
    assert kinds == [nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout] * 2 + [nn.Linear]
    assert model.layers[0].in_features == 3 + 2 + 2 and model.layers[-1].out_features == 1
    assert [(e.num_embeddings, e.embedding_dim) for e in model.embeddings] == [(6, 3), (4, 2)]
    assert TabularModel.mixes_embeddings is True
    assert [type(m) for m in TabularModel([(3, 2)], 0, 2, hidden=()).layers] == [nn.Linear]


@torch.no_grad()
def test_output_matches_embeddings_and_mlp_by_hand():
    model, x = make_model(), make_batch()
    expected = mlp_by_hand(model, torch.cat([embed_by_hand(model, x["categorical"]), x["continuous"]], dim=1))
    torch.testing.assert_close(model(x), expected)
    assert model(x).shape == (7, 3)


@torch.no_grad()
def test_single_output_is_one_value_per_row():
    model, x = make_model(out_features=1), make_batch()
    out = model(x)
    assert out.shape == (7,)
    expected = mlp_by_hand(model, torch.cat([embed_by_hand(model, x["categorical"]), x["continuous"]], dim=1))
    torch.testing.assert_close(out, expected[:, 0])


@torch.no_grad()
def test_mixup_mixes_embedding_outputs_and_continuous_values():
    model, x = make_model(), make_batch()
    mixup = Mixup(alpha=1.0, generator=torch.Generator().manual_seed(3), ids="model")
    x_mix, _ = mixup(x, torch.rand(7))
    lam, perm = mixup.last_lam, mixup.last_perm
    assert torch.equal(x_mix["categorical"], x["categorical"])

    emb = embed_by_hand(model, x["categorical"])
    rows = []
    for i in range(7):
        mixed_emb = lam[i] * emb[i] + (1 - lam[i]) * emb[perm[i]]
        mixed_cont = lam[i] * x["continuous"][i] + (1 - lam[i]) * x["continuous"][perm[i]]
        rows.append(torch.cat([mixed_emb, mixed_cont]))
    expected = mlp_by_hand(model, torch.stack(rows))
    torch.testing.assert_close(model(x_mix), expected)

    # Without the mixup entries the embeddings are not mixed, and the output differs: the check has teeth.
    unmixed = model({"categorical": x_mix["categorical"], "continuous": x_mix["continuous"]})
    assert (unmixed - expected).abs().max() > 1e-3


@torch.no_grad()
def test_one_kind_of_column_only():
    torch.manual_seed(0)
    only_cat = TabularModel([(5, 2)], 0, 2, hidden=(4,)).eval()
    ids = torch.tensor([[0], [4], [2]])
    torch.testing.assert_close(only_cat({"categorical": ids}), mlp_by_hand(only_cat, only_cat.embeddings[0].weight[ids[:, 0]]))
    only_cont = TabularModel([], 3, 2, hidden=(4,)).eval()
    values = torch.randn(3, 3)
    torch.testing.assert_close(only_cont({"continuous": values}), mlp_by_hand(only_cont, values))
    # Mixup entries with no embeddings: nothing to mix in the model, the continuous values came mixed.
    mixed = only_cont({"continuous": values, MIXUP_LAM: torch.full((3,), 0.7), MIXUP_PERM: torch.tensor([2, 0, 1])})
    torch.testing.assert_close(mixed, mlp_by_hand(only_cont, values))


def test_extra_repr_names_columns_and_sizes():
    text = repr(TabularModel({"city": (6, 3)}, 2, 1, hidden=(8,), dropout=0.25))
    assert "columns=['city'], emb_sizes=[(6, 3)], n_continuous=2, out_features=1, hidden=(8,), dropout=0.25" in text


def test_input_errors():
    model, x = make_model(), make_batch()
    too_big = {**x, "categorical": x["categorical"].clone()}
    too_big["categorical"][2, 1] = 4
    with pytest.raises(ValueError, match=r"categorical column 1 \('colour'\) holds ids from 0 to 4; .*max < 4"):
        model(too_big)
    negative = {**x, "categorical": x["categorical"].clone()}
    negative["categorical"][0, 0] = -1
    with pytest.raises(ValueError, match=r"column 0 \('city'\) holds ids from -1"):
        model(negative)
    with pytest.raises(TypeError, match="integer category ids"):
        model({**x, "categorical": x["categorical"].float()})
    with pytest.raises(ValueError, match=r"shape \(N, 2\), got \(7, 3\)"):
        model({**x, "continuous": torch.randn(7, 3)})
    with pytest.raises(ValueError, match="no 'continuous' entry"):
        model({"categorical": x["categorical"]})
    with pytest.raises(ValueError, match="unexpected input keys"):
        model({**x, "cont": x["continuous"]})
    with pytest.raises(ValueError, match="without 'mixup_perm'"):
        model({**x, MIXUP_LAM: torch.ones(7)})
    with pytest.raises(ValueError, match="has 7 rows but"):
        model({**x, "continuous": torch.randn(6, 2)})
    with pytest.raises(TypeError, match="takes a dict"):
        model(torch.randn(7, 4))


def test_constructor_errors():
    with pytest.raises(ValueError, match="at least one categorical or continuous"):
        TabularModel([], 0, 1)
    with pytest.raises(ValueError, match=r"emb_sizes\['city'\] dim must be an int >= 1, got 0"):
        TabularModel({"city": (5, 0)}, 1, 1)
    with pytest.raises(ValueError, match="must be a pair"):
        TabularModel([5], 1, 1)
    with pytest.raises(ValueError, match="out_features must be an int >= 1"):
        TabularModel([(5, 2)], 1, 0)
    with pytest.raises(ValueError, match="dropout must be a probability"):
        TabularModel([(5, 2)], 1, 1, dropout=1.0)
    with pytest.raises(TypeError, match="hidden must be a sequence"):
        TabularModel([(5, 2)], 1, 1, hidden=200)


def synthetic_regression(n, seed):
    """y = effect of two categories + linear continuous + noise 0.1: a model can do far better than the mean."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, 5, (n,), generator=g), torch.randint(0, 4, (n,), generator=g)], dim=1)
    values = torch.randn(n, 2, generator=g)
    effect_a, effect_b = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]), torch.tensor([1.0, -1.0, 0.5, -0.5])
    y = effect_a[ids[:, 0]] + effect_b[ids[:, 1]] + values @ torch.tensor([1.0, -0.5]) + 0.1 * torch.randn(n, generator=g)
    return TabularDataset(ids, values, y)


def test_make_mixup_hands_ids_to_a_model_that_mixes_embeddings():
    task = Task(TabularModel([(5, 2), (4, 2)], 2, 1, hidden=(8,)), synthetic_regression(32, 0),
                synthetic_regression(16, 1), kind="regression")
    assert fit_module._make_mixup(task, 0.4, task.model, torch.device("cpu")).ids == "model"
    task.model = nn.Sequential(nn.Linear(2, 1))
    assert fit_module._make_mixup(task, 0.4, task.model, torch.device("cpu")).ids == "error"


def test_fit_with_mixup_trains_a_tabular_regression(one_thread):
    torch.manual_seed(0)
    model = TabularModel([(5, 3), (4, 3)], 2, 1, hidden=(32,))
    task = Task(model, synthetic_regression(512, 0), synthetic_regression(256, 1), kind="regression", batch_size=32)
    before = evaluate(model, task, task.valid)["valid_loss"]
    result = fit(task, epochs=4, recipe=Recipe(mixup=0.4), progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["valid_loss"] < 0.3 * before
    assert all(math.isfinite(row["valid_loss"]) for row in result.history)


# The data --------------------------------------------------------------------------------------------------


def small_table():
    """Ten rows: a string category, a column with a missing training value, a clean one, a constant one."""
    return {
        "colour": ["red", "blue", "red", "green", "blue", "red", None, "blue", "green", "red"],
        "size": [1.0, np.nan, 3.0, 4.0, 10.0, 6.0, None, 8.0, np.nan, 2.0],
        "weight": np.array([5.0, 1.0, 2.0, 8.0, 3.0, 3.0, 7.0, 1.0, np.nan, 4.0]),
        "flat": [2.0] * 10,
        "label": ["cat", "dog", "cat", "bird", "dog", "cat", "bird", "dog", "cat", "cat"],
        "price": np.linspace(0.0, 9.0, 10),
    }


TRAIN, VALID, TEST = [0, 1, 2, 3, 4, 5, 6], [7, 8], [9]


def small_data(**kw):
    kw.setdefault("split", (TRAIN, VALID, TEST))
    return TabularData(small_table(), ["colour"], ["size", "weight", "flat"], "price", **kw)


def test_standardisation_and_missing_values_match_numpy():
    data = small_data()
    size = np.array(small_table()["size"], dtype=float)
    train = size[TRAIN]  # 1, nan, 3, 4, 10, 6, nan
    median = np.median(train[~np.isnan(train)])  # of 1, 3, 4, 6, 10
    assert median == 4.0
    filled = np.where(np.isnan(size), median, size)
    mean, std = filled[TRAIN].mean(), filled[TRAIN].std()
    assert data.continuous_stats["size"] == ContinuousStats(median, pytest.approx(mean), pytest.approx(std), True)
    # weight has no missing training value, so no indicator; its valid NaN (row 8) still becomes the median
    weight = np.array(small_table()["weight"])
    w_mean, w_std = weight[TRAIN].mean(), weight[TRAIN].std()
    assert data.continuous_stats["weight"].has_missing is False
    assert data.continuous == ["size", "weight", "flat", "size_missing"]

    for split, rows in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        cont = getattr(data, split).continuous
        assert cont.dtype == torch.float32 and cont.shape == (len(rows), 4)
        np.testing.assert_allclose(cont[:, 0].numpy(), (filled[rows] - mean) / std, rtol=1e-6)
        w_filled = np.where(np.isnan(weight[rows]), np.median(weight[TRAIN]), weight[rows])
        np.testing.assert_allclose(cont[:, 1].numpy(), (w_filled - w_mean) / w_std, rtol=1e-6)
        np.testing.assert_array_equal(cont[:, 2].numpy(), 0.0)  # constant column: std 0 taken as 1
        np.testing.assert_array_equal(cont[:, 3].numpy(), np.isnan(size[rows]).astype(np.float32))
    assert data.valid.continuous[1, 3] == 1.0  # row 8's size is missing


def test_items_targets_and_the_encoder():
    data = small_data()
    x, y = data.train[3]
    assert set(x) == {"categorical", "continuous"} and x["categorical"].dtype == torch.long
    assert y.dtype == torch.float32 and float(y) == 3.0
    assert data.train.data is data and len(data.valid) == 2 and len(data.test) == 1
    raw_train = [small_table()["colour"][i] for i in TRAIN]
    assert data.raw["train"]["colour"] == raw_train
    assert data.raw["valid"]["colour"] == ["blue", "green"]
    expected_ids = CategoryEncoder().fit({"colour": raw_train}).transform({"colour": raw_train})
    np.testing.assert_array_equal(data.train.categorical.numpy(), expected_ids)
    n = data.encoder.n_categories_["colour"]
    assert data.emb_sizes() == {"colour": (n, round(1.6 * n**0.56))}
    model = data.model(hidden=(4,))
    assert isinstance(model, TabularModel) and model.columns == ["colour"] and model.out_features == 1
    task = data.task(batch_size=2)
    assert task.kind == "regression" and task.name == "tabular" and task.model.n_continuous == 4


def test_a_fitted_encoder_is_used_as_it_is():
    encoder = CategoryEncoder().fit({"colour": ["red", "red", "purple"]})
    before = dict(encoder.n_categories_)
    data = small_data(encoder=encoder)
    assert data.encoder is encoder and encoder.n_categories_ == before
    blue = data.train.categorical[1, 0]  # unknown to an encoder that never saw "blue"
    assert blue == encoder.transform({"colour": ["blue"]})[0, 0]


def test_transform_repeats_the_processing_of_fit_time():
    data = small_data()
    rows = VALID + TEST
    new = {k: [v[i] for i in rows] for k, v in small_table().items()}
    again = data.transform(new)
    for name in ("categorical", "continuous", "target"):
        expected = torch.cat([getattr(data.valid, name), getattr(data.test, name)])
        assert torch.equal(getattr(again, name), expected), name
    assert again.data is data


def test_a_dataframe_gives_the_same_data_as_a_dict():
    pd = pytest.importorskip("pandas")
    table = small_table()
    frame = pd.DataFrame(table, index=np.arange(100, 110))  # positions, not index labels, select rows
    from_dict, from_frame = small_data(), TabularData(frame, ["colour"], ["size", "weight", "flat"], "price",
                                                      split=(TRAIN, VALID, TEST))
    for split in ("train", "valid", "test"):
        for name in ("categorical", "continuous", "target"):
            assert torch.equal(getattr(getattr(from_dict, split), name), getattr(getattr(from_frame, split), name))
    assert torch.equal(from_frame.transform(frame.iloc[7:9]).continuous, from_dict.valid.continuous)


def test_classification_labels_from_strings_and_ints():
    table = small_table()
    data = TabularData(table, ["colour"], ["size"], "label", split=(TRAIN, VALID), kind="classification")
    assert data.classes == ["bird", "cat", "dog"]
    expected = [["bird", "cat", "dog"].index(table["label"][i]) for i in TRAIN]
    assert data.train.target.dtype == torch.long and data.train.target.tolist() == expected
    task = data.task(batch_size=2)
    assert task.n_classes == 3 and task.model.out_features == 3

    table["label"] = np.array([2, 0, 2, 1, 0, 2, 1, 0, 2, 2])
    ints = TabularData(table, ["colour"], ["size"], "label", split=(TRAIN, VALID), kind="classification")
    assert ints.classes == [0, 1, 2] and ints.valid.target.tolist() == [0, 2]

    table["label"] = ["no", "yes", "no", "no", "yes", "yes", "no", "no", "yes", "no"]
    binary = TabularData(table, ["colour"], ["size"], "label", split=(TRAIN, VALID), kind="binary")
    assert binary.classes == ["no", "yes"] and binary.train.target.dtype == torch.float32
    assert binary.train.target.tolist() == [0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert binary.task(batch_size=2).n_classes == 2 and binary.model().out_features == 1


def test_a_fraction_split_is_seeded_disjoint_and_complete():
    a, b, c = small_data(split=0.3, seed=1), small_data(split=0.3, seed=1), small_data(split=0.3, seed=2)
    assert len(a.splits["valid"]) == 3 and len(a.splits["train"]) == 7 and a.test is None
    assert sorted([*a.splits["train"], *a.splits["valid"]]) == list(range(10))
    assert a.splits["valid"].tolist() == b.splits["valid"].tolist()
    assert a.splits["valid"].tolist() != c.splits["valid"].tolist()


def test_data_errors():
    with pytest.raises(KeyError, match=r"column 'colour_' is not in the table .*did you mean \['colour'\]"):
        TabularData(small_table(), ["colour_"], ["size"], "price")
    with pytest.raises(KeyError, match="column 'cost' is not in the table"):
        TabularData(small_table(), ["colour"], ["size"], "cost")
    with pytest.raises(ValueError, match="row 1 is in both the train and the valid rows"):
        small_data(split=([0, 1, 2], [1, 3]))
    with pytest.raises(ValueError, match=r"positions in \[0, 10\)"):
        small_data(split=([0, 1, 2], [10]))
    with pytest.raises(ValueError, match="kind must be one of"):
        small_data(kind="multilabel")
    with pytest.raises(ValueError, match="listed as both categorical and continuous"):
        TabularData(small_table(), ["colour", "size"], ["size"], "price")
    with pytest.raises(ValueError, match="target 'price' is also listed"):
        TabularData(small_table(), ["colour"], ["price"], "price")
    with pytest.raises(ValueError, match="continuous column 'colour' holds values that are not numbers"):
        TabularData(small_table(), [], ["colour"], "price")
    table = small_table()
    table["weight"][0] = np.inf
    with pytest.raises(ValueError, match="1 infinite value"):
        TabularData(table, [], ["weight"], "price")
    table = small_table()
    table["size"] = [None] * 10
    with pytest.raises(ValueError, match="no values in the training rows"):
        TabularData(table, [], ["size"], "price")
    with pytest.raises(ValueError, match="one length"):
        TabularData({**small_table(), "size": [1.0, 2.0]}, [], ["size"], "price")
    with pytest.raises(TypeError, match="table must be a pandas DataFrame or a dict"):
        TabularData([[1, 2]], [], ["size"], "price")
    classifier = TabularData(small_table(), ["colour"], [], "label", split=(TRAIN, VALID), kind="classification")
    with pytest.raises(ValueError, match="label 'fish' of 'label' is not one of the classes"):
        classifier.transform({"colour": ["red"], "label": ["fish"]})
    with pytest.raises(TypeError, match=r"task\(\) sets \['kind'\]"):
        classifier.task(kind="binary")


def test_messy_categories_beat_the_numerics_only_baseline(one_thread):
    toy = messy_categories()
    table = {"street": toy.raw, "a": toy.numeric[:, 0], "b": toy.numeric[:, 1], "c": toy.numeric[:, 2], "y": toy.target}
    data = TabularData(table, ["street"], ["a", "b", "c"], "y", split=(toy.train, toy.valid, toy.test))
    assert data.raw["valid"]["street"] == [toy.raw[i] for i in toy.valid]

    # Least squares on the numerics alone, on the same split (the toy's docstring: about 1.3).
    design = np.c_[np.ones(len(toy.numeric)), toy.numeric]
    coef = np.linalg.lstsq(design[toy.train], toy.target[toy.train], rcond=None)[0]
    baseline = float(np.sqrt(np.mean((design[toy.valid] @ coef - toy.target[toy.valid]) ** 2)))
    assert 1.1 < baseline < 1.5

    torch.manual_seed(0)
    result = fit(data.task(batch_size=64), epochs=6, progress=False)
    assert result.history[-1]["valid_rmse"] < 0.6 * baseline
