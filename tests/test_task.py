import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dltips import Task, TaskError
from dltips.task import DEFAULT_LOSSES, count_items
from dltips.training.lr import make_optimizer


def data(n=20, features=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g))


def test_a_valid_task_infers_n_classes_and_summarises():
    task = Task(nn.Linear(4, 3), data(), data(8))
    assert task.n_classes == 3
    assert task.summary() == {"name": "task", "kind": "classification", "n_classes": 3, "n_params": 15,
                              "n_train": 20, "n_valid": 8, "n_test": 0, "own_step": False}


@pytest.mark.parametrize("kwargs, field, words", [
    ({"model": "not a model"}, "model", "torch.nn.Module"),
    ({"train": TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))}, "train", "empty"),
    ({"valid": [(torch.zeros(4),)]}, "valid", "(x, y) pairs"),
    ({"valid": [torch.zeros(4)]}, "valid", "(x, y) pairs"),
    ({"train": [([1.0, 2.0], 0)] * 3}, "train", "x a tensor"),
    ({"n_classes": 2}, "model", "n_classes=2"),
    ({"train": TensorDataset(torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1]))}, "train", "[0, 2]"),
    ({"test": TensorDataset(torch.randn(6, 4), torch.tensor([0, -1, 2, 1, 0, 1]))}, "test", "from -1"),
    ({"train": TensorDataset(torch.randn(6, 4), torch.rand(6))}, "train", "integer class ids"),
    ({"model": nn.Linear(5, 3)}, "model", "shape (2, 4)"),
    ({"loss": "mse"}, "loss", "callable"),
    ({"loss": lambda out, y: F.cross_entropy(out, y, reduction="none")}, "loss", "scalar"),
    ({"loss": lambda out, y: out.view(7, -1).sum()}, "loss", "accepts the model's output"),
    ({"kind": "segmentation"}, "kind", "classification"),
    ({"batch_size": 0}, "batch_size", "positive int"),
    ({"optimizer": 3}, "optimizer", "callable"),
])
def test_bad_tasks_name_the_field_found_and_expected(kwargs, field, words):
    args = {"model": nn.Linear(4, 3), "train": data(), "valid": data(8), **kwargs}
    with pytest.raises(TaskError) as err:
        Task(**args)
    assert err.value.field == field
    assert str(err.value).startswith(f"Task.{field}: found ")
    assert "expected" in str(err.value) and words in str(err.value)


def test_output_shape_is_checked_per_kind():
    x = torch.randn(10, 4)
    binary = TensorDataset(x, torch.randint(0, 2, (10,)).float())
    Task(nn.Linear(4, 1), binary, binary, kind="binary")
    with pytest.raises(TaskError, match=r"\(2,\) or \(2, 1\)"):
        Task(nn.Linear(4, 2), binary, binary, kind="binary")
    multi = TensorDataset(x, torch.randint(0, 2, (10, 5)).float())
    assert Task(nn.Linear(4, 5), multi, multi, kind="multilabel").n_classes == 5
    with pytest.raises(TaskError, match="0/1 labels"):
        bad = TensorDataset(x, torch.full((10, 5), 2.0))
        Task(nn.Linear(4, 5), bad, bad, kind="multilabel")
    reg = TensorDataset(x, torch.randn(10))
    Task(nn.Linear(4, 1), reg, reg, kind="regression")
    with pytest.raises(TaskError, match="one value per target"):
        Task(nn.Linear(4, 3), reg, reg, kind="regression")
    tokens = TensorDataset(torch.randint(0, 9, (10, 6)), torch.randint(0, 9, (10, 6)))
    lm = Task(nn.Embedding(9, 9), tokens, tokens, kind="language-model")
    assert lm.n_classes == 9
    with pytest.raises(TaskError, match=r"\(2, 6, 12\)"):
        Task(nn.Embedding(9, 9), tokens, tokens, kind="language-model", n_classes=12)


def test_dict_inputs_and_plain_datasets_are_accepted():
    class Rows(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return {"a": torch.full((2,), float(i)), "b": torch.ones(2)}, i % 2

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            return self.lin(torch.cat([x["a"], x["b"]], dim=1))

    assert Task(TwoInputs(), Rows(), Rows()).n_classes == 2


def test_validation_leaves_the_model_untouched():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    Task(model, data(), data(8))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_default_losses_are_the_usual_means():
    torch.manual_seed(0)
    out = torch.randn(6, 3)
    y = torch.randint(0, 3, (6,))
    assert torch.allclose(DEFAULT_LOSSES["classification"](out, y), -out.log_softmax(1)[range(6), y].mean())
    logit, target = torch.randn(6, 1), torch.randint(0, 2, (6,)).float()
    p = torch.sigmoid(logit.squeeze(1))
    want = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    assert torch.allclose(DEFAULT_LOSSES["binary"](logit, target), want, atol=1e-6)
    value, t = torch.randn(6, 1), torch.randn(6)
    assert torch.allclose(DEFAULT_LOSSES["regression"](value, t), (value.squeeze(1) - t).pow(2).mean())
    lm_out, lm_y = torch.randn(2, 4, 5), torch.tensor([[1, 2, -100, 0], [4, -100, -100, 3]])
    keep = lm_y != -100
    want = -lm_out.log_softmax(-1)[keep].gather(1, lm_y[keep][:, None]).mean()
    assert torch.allclose(DEFAULT_LOSSES["language-model"](lm_out, lm_y), want)
    assert int(count_items("language-model", lm_y)) == 5
    assert count_items("classification", y) == 6


def test_default_optimizer_is_adamw_at_the_default_lr():
    from dltips import default_lr

    task = Task(nn.Linear(4, 3), data(), data(8))
    opt = make_optimizer(task, task.model)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == default_lr(task.model)
    sgd = Task(nn.Linear(4, 3), data(), data(8), optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    assert isinstance(make_optimizer(sgd, sgd.model), torch.optim.SGD)


def regression_data(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1))  # targets of shape (N,)


@pytest.mark.parametrize("loss", [lambda o, t: F.mse_loss(o, t), lambda o, t: ((o - t) ** 2).mean(), nn.L1Loss(),
                                  nn.HuberLoss()])
def test_a_loss_that_broadcasts_an_n_by_1_output_against_n_targets_is_a_task_error(loss):
    with pytest.raises(TaskError, match=r"pairs every output with every target.*\(2, 1\).*\(2,\).*\(2, 2\)"):
        Task(nn.Linear(4, 1), regression_data(), regression_data(8), kind="regression", loss=loss)


@pytest.mark.parametrize("loss", [lambda o, t: F.mse_loss(o.squeeze(1), t), lambda o, t: F.mse_loss(o, t.view_as(o)),
                                  None])
def test_a_loss_that_reshapes_before_comparing_is_accepted(loss):
    task = Task(nn.Linear(4, 1), regression_data(), regression_data(8), kind="regression", loss=loss)
    assert task.kind == "regression"


def test_a_loss_that_couples_items_only_through_a_shared_weight_is_not_a_broadcast():
    # class weights make the mean's normaliser depend on the other items' targets; output (N, C) against
    # targets (N,) is torch's own convention, not a broadcast
    weights = torch.tensor([1.0, 2.0, 3.0])
    task = Task(nn.Linear(4, 3), data(), data(8), loss=nn.CrossEntropyLoss(weight=weights))
    assert task.n_classes == 3
