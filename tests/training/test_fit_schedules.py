"""fit with the Task's own scheduler (per epoch or per step), Recipe.moms, and Mixup against the loss it is paired with."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dltips import Callback, Recipe, Task, fit
from dltips.core.params import ParamError
from dltips.training.mixup import Mixup


def blobs(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(centers[y] + torch.randn(n, 4, generator=g), y)


def make_task(seed=0, head=None, **kw):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3), *([head] if head is not None else []))
    return Task(model, blobs(96, 1), blobs(48, 2), batch_size=16, **kw)


class Record(Callback):
    """The LR and the optimizer's momentum-like settings after every optimizer step."""

    def __init__(self):
        self.lrs, self.groups = [], []

    def on_step_end(self, state):
        group = state.optimizer.param_groups[0]
        self.lrs.append(group["lr"])
        self.groups.append({k: group[k] for k in ("momentum", "betas", "rho") if k in group})


def test_a_tasks_steplr_is_stepped_once_per_epoch_in_place_of_the_one_cycle():
    record = Record()
    task = make_task(optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                     scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5))
    fit(task, epochs=3, callbacks=[record], progress=False)  # Recipe() asks for one-cycle: the Task's schedule wins
    steps = 96 // 16
    assert record.lrs == [0.1] * steps + [0.05] * steps + [0.025] * steps  # the LR of the step just taken's epoch


def test_a_per_step_scheduler_is_stepped_after_every_optimizer_step():
    record = Record()
    task = make_task(optimizer=lambda p: torch.optim.SGD(p, lr=0.1), scheduler_interval="step",
                     scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1.0 / (k + 1)))
    fit(task, epochs=1, callbacks=[record], progress=False)
    assert record.lrs == pytest.approx([0.1 / (k + 2) for k in range(6)], rel=1e-12)


def test_reduce_on_plateau_reads_the_validation_loss():
    seen = []

    class Plateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
        def step(self, metrics):
            seen.append(metrics)
            super().step(metrics)

    task = make_task(scheduler=lambda o: Plateau(o, patience=0))
    result = fit(task, epochs=2, progress=False)
    assert seen == [row["valid_loss"] for row in result.history]


def test_a_scheduler_resumes_from_the_checkpoint_exactly(tmp_path):
    def task(seed):
        return make_task(seed, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                         scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5))

    class Interrupt(Callback):
        def on_step_end(self, state):
            if state.step == 14:  # in the third epoch, after the epoch-end schedule steps and a periodic checkpoint
                raise KeyboardInterrupt

    whole = task(0)
    fit(whole, epochs=3, progress=False, seed=0)
    with pytest.raises(KeyboardInterrupt):
        fit(task(0), epochs=3, progress=False, seed=0, checkpoint_dir=tmp_path, checkpoint_every=4,
            callbacks=[Interrupt()])
    resumed = task(7)  # other weights: all comes from the checkpoint
    fit(resumed, epochs=3, progress=False, seed=0, checkpoint_dir=tmp_path, checkpoint_every=4)
    assert resumed.model is not whole.model
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_bad_schedulers_are_refused_with_their_field():
    with pytest.raises(ValueError, match="Task.scheduler_interval"):
        make_task(scheduler_interval="batch")
    with pytest.raises(ParamError, match="Task.scheduler must return an LR scheduler"):
        fit(make_task(scheduler=lambda o: 3), epochs=1, progress=False)


@pytest.mark.parametrize("optimizer, key, untouched", [
    (lambda p: torch.optim.Adadelta(p, lr=1.0), "rho", 0.9),
    (lambda p: torch.optim.SGD(p, lr=0.05), "momentum", 0),
])
def test_optimizers_without_momentum_train_with_the_default_recipe_and_keep_their_settings(optimizer, key, untouched):
    record = Record()
    result = fit(make_task(optimizer=optimizer), epochs=2, callbacks=[record], progress=False)
    assert result.steps == 12 and all(g[key] == untouched for g in record.groups)
    assert record.lrs[0] < record.lrs[3] > record.lrs[-1]  # the one-cycle still schedules the LR


def test_auto_moms_cycles_adams_beta1_and_none_leaves_it():
    cycled, kept = Record(), Record()
    fit(make_task(), epochs=2, callbacks=[cycled], progress=False)
    fit(make_task(), epochs=2, recipe=Recipe(moms=None), callbacks=[kept], progress=False)
    betas = [g["betas"][0] for g in cycled.groups]
    assert min(betas) == pytest.approx(0.85, abs=0.01) and betas[-1] == pytest.approx(0.95, abs=1e-3)
    assert all(g["betas"] == (0.9, 0.999) for g in kept.groups)
    with pytest.raises(ParamError, match="recipe.moms"):
        fit(make_task(), epochs=1, recipe=Recipe(moms="on"), progress=False)


def test_mixup_refuses_a_loss_that_cannot_take_mixed_labels_and_names_the_fix():
    task = make_task(head=nn.LogSoftmax(dim=1), loss=F.nll_loss)
    with pytest.raises(ParamError, match="log-probabilities") as error:
        fit(task, epochs=1, recipe=Recipe(mixup=0.4), progress=False)
    assert "nll_loss" in str(error.value) and "turn mixup off" in str(error.value)
    soft_nll = make_task(head=nn.LogSoftmax(dim=1), loss=lambda out, t: F.nll_loss(out, t) if t.dim() == 1
                         else -(t * out).sum(1).mean())
    assert math.isfinite(fit(soft_nll, epochs=1, recipe=Recipe(mixup=0.4), progress=False).history[-1]["train_loss"])
    Mixup(0.4, n_classes=3).check_loss(F.cross_entropy, torch.randn(2, 3))  # logits + cross_entropy: fine
