"""The tabular checks share the common check signature; bad arguments raise ParamError."""

import warnings

import pytest
import torch

from dltips.core.deadline import Deadline
from dltips.core.params import ParamError
from dltips.data.toys import messy_categories
from dltips.demos.digits import digits_task
from dltips.demos.tabular import tabular_task
from dltips.tabular.categoricals import check_categoricals, check_task_categoricals
from dltips.tabular.embeddings import check_embedding_sizes, emb_size
from dltips.tabular.encoder import CategoryEncoder
from dltips.tabular.model import TabularData, TabularModel, check_tabular_mixup

CHECKS = [check_categoricals, check_embedding_sizes, check_tabular_mixup]


@pytest.fixture(scope="module")
def task():
    return tabular_task()


@pytest.fixture(scope="module")
def digits():
    return digits_task()


def _same(a, b):
    return [(f.tip, f.status, f.message, f.evidence) for f in a] == [(f.tip, f.status, f.message, f.evidence) for f in b]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_common_arguments_are_accepted_and_change_nothing(check, task):
    plain = check(task)
    assert plain
    assert _same(check(task, device="auto", seed=7, deadline=60.0), plain)
    assert _same(check(task, model=task.model, device="cpu", seed=0, deadline=Deadline.after(60)), plain)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [{"max_items": "5"}, {"max_items": 0}, {"seed": -1}, {"seed": True},
                                 {"deadline": "soon"}, {"model": "net"}, {"device": 3}])
def test_bad_common_arguments_raise_param_error(check, bad, task, digits):
    with pytest.raises(ParamError):
        check(task, **bad)
    with pytest.raises(ParamError):  # validated even where the Task is not tabular
        check(digits, **bad)


@pytest.mark.parametrize("check", [check_embedding_sizes, check_tabular_mixup], ids=lambda c: c.__name__)
def test_max_items_is_validated_but_unused_where_no_row_is_read(check, task):
    assert _same(check(task, max_items=1), check(task))


def test_the_model_argument_replaces_the_tasks(task):
    n = task.train.data.encoder.n_categories_["street"]
    assert check_embedding_sizes(task, model=TabularModel([(n - 1, emb_size(n))], 3, 1))[0].status == "fail"
    assert check_tabular_mixup(task, model=torch.nn.Sequential(task.model))[0].evidence["mixes_embeddings"] is False


def test_max_items_caps_the_rows_of_each_split(task):
    finding, = check_categoricals(task, max_items=50)
    column = finding.evidence["columns"]["street"]
    assert column["train_rows"] == 50
    whole, = check_categoricals(task)
    assert whole.evidence["columns"]["street"]["train_rows"] == len(task.train)
    messy = messy_categories(600, messy=0.4)
    train = [messy.raw[i] for i in messy.train]
    capped, = check_categoricals(train, train, max_items=40)
    assert capped.evidence["columns"]["0"]["train_rows"] == 40
    head, = check_categoricals(train[:40], train[:40])
    assert capped.evidence == head.evidence


def test_frame_form_and_task_form_keep_their_own_arguments(task):
    with pytest.raises(ParamError, match="frame form"):
        check_categoricals(task, ["a", "b"])
    with pytest.raises(ParamError, match="frame form"):
        check_categoricals(task, encoder=CategoryEncoder())
    with pytest.raises(ParamError, match="encoder must be a CategoryEncoder"):
        check_categoricals(["a", "b"], encoder="ordinal")
    assert check_categoricals(["a", "b"] * 10, device="auto", seed=3)[0].status == "pass"


def test_check_task_categoricals_is_a_deprecated_alias(task):
    with pytest.warns(DeprecationWarning, match="use check_categoricals"):
        old = check_task_categoricals(task)
    assert _same(old, check_categoricals(task))
    with pytest.warns(DeprecationWarning), pytest.raises(ParamError, match="task must be a dltips Task"):
        check_task_categoricals(["a", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_categoricals(task)  # the new name does not warn


def test_constructor_errors_are_param_errors():
    with pytest.raises(ParamError, match="dropout must be a probability"):
        TabularModel([(5, 2)], 1, 1, dropout="0.1")
    with pytest.raises(ParamError, match="emb_dropout must be a probability"):
        TabularModel([(5, 2)], 1, 1, emb_dropout=-0.1)
    assert TabularModel([(5, 2)], 1, 1, dropout=0.999).dropout == 0.999
    with pytest.raises(ParamError, match="threshold"):
        CategoryEncoder(threshold=float("nan"))
    with pytest.raises(ParamError, match="synonyms must be a dict"):
        CategoryEncoder(synonyms=["NYC"])
    with pytest.raises(ParamError, match="kind must be one of"):
        TabularData({"a": [1.0, 2.0], "y": [0.0, 1.0]}, [], ["a"], "y", kind="ranking")
    with pytest.raises(ParamError, match="n_categories must be an int >= 1"):
        emb_size(0)


def test_the_task_form_without_a_tabular_task_finds_nothing(digits):
    assert check_categoricals(digits, device="auto", seed=1, max_items=5) == []
