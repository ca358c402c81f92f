"""The tabular demo and the doctor's two tabular checks on it."""

import dataclasses

import pytest
import torch

from dltips import CategoryEncoder, TabularModel, check_embedding_sizes, emb_size
from dltips.data.toys import CATEGORIES
from dltips.demos.digits import digits_task
from dltips.demos.tabular import tabular_data, tabular_task
from dltips.tabular.categoricals import check_categoricals
from dltips.tabular.categoricals import tabular_data as data_of


def test_demo_task_is_a_regression_on_encoded_streets():
    task = tabular_task()
    data = data_of(task)
    assert task.kind == "regression" and task.name == "tabular"
    assert (len(task.train), len(task.valid), len(task.test)) == (1200, 400, 400)
    assert data.encoder.n_categories_["street"] <= 3 + 10  # 8 streets (and a stray typo or two), not hundreds
    x, y = task.train[0]
    assert x["categorical"].dtype == torch.long and x["continuous"].shape == (3,)
    assert data_of(digits_task()) is None and check_categoricals(digits_task()) == []


def test_demo_categoricals_pass_and_show_the_merges():
    task = tabular_task()
    finding, = check_categoricals(task)
    assert finding.status == "pass"
    column = finding.evidence["columns"]["street"]
    assert column["raw"] > 100 and column["kept"] == column["merged"] <= 10
    merges = next(f for f in finding.figures if f["title"].startswith("Largest merges"))
    similar = [row for row in merges["rows"] if row[5] == "similar"]
    assert similar and all(row[2] in CATEGORIES for row in similar)  # spellings merged into clean names only


def test_demo_with_raw_string_ids_warns():
    broken = tabular_data(encoder=CategoryEncoder(threshold=1.0, normalize_text=False))  # ordinal ids of raw strings
    finding, = check_categoricals(broken.task())
    assert finding.status == "warn"
    assert "inflate" in finding.message and "unknown" in finding.message  # raw spellings: many unseen in valid
    assert finding.evidence["columns"]["street"]["valid_unknown"] > 0.05


def test_embedding_sizes_pass_by_the_rule_and_fail_when_a_table_is_too_small():
    task = tabular_task()
    n = data_of(task).encoder.n_categories_["street"]
    finding, = check_embedding_sizes(task)
    assert finding.status == "pass"
    assert finding.evidence["columns"]["street"] == {"ids": n, "rule_dim": emb_size(n), "rows": n, "dim": emb_size(n)}
    small = dataclasses.replace(task, model=TabularModel([(n - 1, emb_size(n))], 3, 1))
    assert check_embedding_sizes(small)[0].status == "fail"
    wide = dataclasses.replace(task, model=TabularModel([(n, 8 * emb_size(n))], 3, 1))
    assert check_embedding_sizes(wide)[0].status == "info"
    assert check_embedding_sizes(digits_task()) == []


@pytest.mark.slow
def test_cli_demo_tabular_trains(capsys):
    from dltips.cli import main

    assert main(["demo", "tabular", "--epochs", "3"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("tabular: ") and "valid_rmse" in line
    rmse = float(line.split("valid_rmse ")[1].split(",")[0])
    assert rmse < 0.6  # numerics alone give about 1.3 (messy_categories' docstring)


def test_tabular_mixup_note():
    from dltips.tabular.model import check_tabular_mixup

    finding, = check_tabular_mixup(tabular_task())
    assert finding.tip == "mixup" and finding.status == "info" and finding.evidence["mixes_embeddings"] is True
    task = tabular_task()
    plain = dataclasses.replace(task, model=torch.nn.Sequential(task.model))  # a wrapper that does not say it mixes
    assert check_tabular_mixup(plain)[0].evidence["mixes_embeddings"] is False
    assert check_tabular_mixup(digits_task()) == []


def test_worst_predictions_show_rows_as_read():
    from dltips import check_worst_predictions

    task = tabular_task()
    data = data_of(task)
    finding, = check_worst_predictions(task, model=task.model, device="cpu")
    table = finding.figures[0]
    assert table["columns"][:4] == ["index", "target", "prediction", "loss"]
    assert table["columns"][4:] == ["street", "x1", "x2", "x3"]
    names = data.encoder.categories_["street"]
    for row in table["rows"]:
        i, street = row[0], row[4]
        raw, name = data.raw["train"]["street"][i], names[int(task.train.categorical[i, 0])]
        assert street == (name if raw == name else f"{raw} -> {name}")
        assert row[5] == f"{float(task.train.continuous[i, 0]):.3g}"
