"""Task.from_lightning: a LightningModule and its datamodule through the doctor and fit, unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import dltips
from dltips import Task, TaskError, fit
from dltips.task import lightning_optimizers

L = pytest.importorskip("lightning.pytorch")


def blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(4)[:3] * 3
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(centers[y] + torch.randn(n, 4, generator=g), y)


class Blobs(L.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.stages = []

    def setup(self, stage):
        self.stages.append(stage)
        self.train, self.valid = blobs(192, 0), blobs(64, 1)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=32, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.valid, batch_size=64)


class TrainOnly(L.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(blobs(64, 0), batch_size=32)


class WithTest(Blobs):
    def test_dataloader(self):
        return DataLoader(blobs(32, 2), batch_size=32)


class Classifier(L.LightningModule):
    def __init__(self, interval="epoch"):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
        self.interval, self.steps = interval, 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.steps += 1
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return {"loss": loss}

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.interval}}


def test_the_datamodules_loaders_the_modules_optimizer_scheduler_and_step_make_the_task():
    data, module = Blobs(), Classifier()
    task = Task.from_lightning(module, data)
    assert data.stages == ["fit"] and task.test is None  # no test_dataloader: no test stage, no test split
    assert task.train is data.train and task.valid is data.valid and task.batch_size == 32
    with_test = Task.from_lightning(Classifier(), WithTest())
    assert len(with_test.test) == 32 and with_test.train is not None
    assert task.name == "Classifier" and task.scheduler_interval == "epoch"
    copy = Classifier()
    optimizer = task.optimizer_for(copy)  # built by the copy's own configure_optimizers, over its parameters
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["params"][0] is copy.net[0].weight
    assert isinstance(task.scheduler(optimizer), torch.optim.lr_scheduler.StepLR)


def test_fit_trains_with_training_step_and_the_scheduler_per_epoch():
    data, module = Blobs(), Classifier()
    task = Task.from_lightning(module, data)
    lrs = []

    class Record(dltips.Callback):
        def on_epoch_end(self, state):
            lrs.append(state.optimizer.param_groups[0]["lr"])

    module.steps = 0
    result = fit(task, epochs=3, recipe=dltips.Recipe(), callbacks=[Record()], progress=False)
    assert module.steps == result.steps == 18  # 192 rows / 32, three epochs, each by the module's training_step
    assert lrs == pytest.approx([0.1, 0.09, 0.081])  # each epoch's LR: StepLR per epoch, in place of the one-cycle
    assert result.history[-1]["valid_accuracy"] > 0.9


def test_the_doctor_passes_a_healthy_module_and_leaves_it_unchanged():
    data, module = Blobs(), Classifier()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    report = dltips.doctor(Task.from_lightning(module, data), budget_s=30, progress=False)
    assert not [(f.tip, f.title) for f in report.findings if f.status in ("warn", "fail")]
    assert any(f.tip == "overfit-tiny" and f.status == "pass" for f in report.findings)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert all(p.grad is None for p in module.parameters())


def test_configure_optimizers_forms_and_refusals():
    p = [nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(p, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    assert lightning_optimizers(opt) == (opt, None, "epoch")
    assert lightning_optimizers([opt]) == (opt, None, "epoch")
    assert lightning_optimizers(([opt], [sched])) == (opt, sched, "epoch")
    assert lightning_optimizers(([opt], [{"scheduler": sched, "interval": "step"}])) == (opt, sched, "step")
    assert lightning_optimizers({"optimizer": opt, "lr_scheduler": sched}) == (opt, sched, "epoch")
    with pytest.raises(TaskError, match="configure_optimizers"):
        lightning_optimizers("adam")

    class Manual(Classifier):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(TaskError, match="automatic_optimization=False"):
        Task.from_lightning(Manual(), Blobs())
    with pytest.raises(TaskError, match="val_dataloader"):
        Task.from_lightning(Classifier(), TrainOnly())


class Smoothed(Classifier):
    """Trained and validated with a label-smoothed cross-entropy it holds; validation_step logs the loss."""

    def __init__(self, held=True):
        super().__init__()
        if held:
            self.criterion = nn.CrossEntropyLoss(label_smoothing=0.2)
        self.validated = []

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=0.2)
        self.validated.append(len(y))
        self.log("val_loss", loss)


class ReturnsPlainLoss(Classifier):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        return {"val_loss": F.nll_loss(F.log_softmax(self(x), 1), y)}


def test_validation_step_decides_the_loss_the_doctor_evaluates_with():
    data, module = Blobs(), Smoothed()
    data.setup("fit")
    task = Task.from_lightning(module, data)
    assert task.loss is module.criterion  # the held loss that gives validation_step's value
    x, y = next(iter(data.val_dataloader()))
    with torch.no_grad():
        expected = F.cross_entropy(module(x), y, label_smoothing=0.2)
        assert torch.allclose(task.loss_fn(module(x), y), expected)
        assert not torch.allclose(F.cross_entropy(module(x), y), expected)
    assert module.validated == []  # validation_step ran on a copy: the module's list is untouched
    assert all(p.grad is None for p in module.parameters())
    assert Task.from_lightning(ReturnsPlainLoss(), Blobs()).loss is None  # nll of log-softmax: the default


def test_a_validation_loss_no_candidate_gives_is_warned_with_both_values():
    with pytest.warns(UserWarning, match=r"validation_step reports a loss of [\d.]+.*default cross_entropy gives"
                                         r" [\d.]+.*pass loss="):
        task = Task.from_lightning(Smoothed(held=False), Blobs())
    assert task.loss is None
    given = Task.from_lightning(Smoothed(held=False), Blobs(), loss=lambda out, y: F.cross_entropy(out, y, label_smoothing=0.2))
    assert given.loss is not None  # loss= given: validation_step is not consulted


class DictBlobs(Dataset):
    """Blobs as dict items, the way many datasets hand them to a LightningModule."""

    def __init__(self, n, seed):
        self.x, self.y = blobs(n, seed).tensors

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"features": self.x[i], "label": self.y[i]}


class DictData(L.LightningDataModule):
    def setup(self, stage):
        self.train, self.valid = DictBlobs(192, 0), DictBlobs(64, 1)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=32, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.valid, batch_size=64)


class DictClassifier(Classifier):
    def __init__(self, broken=False):
        super().__init__()
        self.criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        self.broken = broken

    def forward(self, features):
        return self.net(features)

    def training_step(self, batch, batch_idx):
        assert set(batch) == {"features", "label"}  # the loader's dict, as Lightning hands it
        self.steps += 1
        label = batch["label"][torch.randperm(len(batch["label"]))] if self.broken else batch["label"]
        return self.criterion(self(batch["features"]), label)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.criterion(self(batch["features"]), batch["label"]))


def test_dict_batches_are_split_at_their_target_and_handed_whole_to_training_step():
    module, data = DictClassifier(), DictData()
    task = Task.from_lightning(module, data)
    x, y = task.first_batch(task.train, 4)
    assert set(x) == {"features"} and torch.equal(y, data.train.y[:4]) and task.batch_size == 32
    assert task.loss is module.criterion  # read from validation_step on the dict batch
    module.steps = 0
    result = fit(task, epochs=2, recipe=dltips.Recipe(), progress=False)
    assert module.steps == result.steps == 12 and result.history[-1]["valid_accuracy"] > 0.9
    report = dltips.doctor(Task.from_lightning(DictClassifier(), DictData()), budget_s=30, progress=False)
    assert not [(f.tip, f.title) for f in report.findings if f.status in ("warn", "fail")]
    broken = dltips.doctor(Task.from_lightning(DictClassifier(broken=True), DictData()), budget_s=30, progress=False)
    assert any(f.tip == "overfit-tiny" and f.status == "fail" for f in broken.findings)


def test_dict_items_without_a_known_target_key_ask_for_target():
    class Renamed(DictData):
        def train_dataloader(self):
            return DataLoader([{"features": x, "class_id": y} for x, y in blobs(64, 0)], batch_size=32)

    with pytest.raises(TaskError, match=r"keys \['class_id', 'features'\].*target="):
        Task.from_lightning(DictClassifier(), Renamed())
    with pytest.raises(TaskError, match="dict items, or no target="):
        Task.from_lightning(Classifier(), Blobs(), target="label")
