"""Every public check takes the common arguments: device="auto" works, a wrong-typed size raises ParamError, seed is taken."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import dltips
from dltips import Finding, ParamError, Task
from dltips.nlp.emergent import ScalingPoint


def classification_task() -> Task:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 8, generator=gen), torch.randint(0, 3, (96,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return Task(model, TensorDataset(x[:64], y[:64]), TensorDataset(x[64:80], y[64:80]),
                test=TensorDataset(x[80:], y[80:]), batch_size=16)


def image_task() -> Task:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(48, 1, 8, 8, generator=gen), torch.randint(0, 2, (48,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 2))
    return Task(model, TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:]), batch_size=16,
                augment=lambda batch: batch.flip(-1))


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 12, width: int = 8):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(tokens))


def language_model_task() -> Task:
    tokens = torch.arange(48 * 9).remainder(10).reshape(48, 9)  # ids 10 and 11 never appear
    torch.manual_seed(0)
    data = TensorDataset(tokens[:, :-1], tokens[:, 1:])
    return Task(TinyLM(), data, data, kind="language-model", n_classes=12, batch_size=16)


def tabular_task() -> Task:
    pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    table = {"street": rng.choice(["Main St.", "main street", "Elm Road", "elm rd"], 60).tolist(),
             "size": rng.normal(size=60), "price": rng.normal(size=60)}
    data = dltips.TabularData(table, ["street"], ["size"], "price", split=(list(range(40)), list(range(40, 60))))
    torch.manual_seed(0)
    return data.task(batch_size=16)


TASKS = {"classification": classification_task, "image": image_task, "lm": language_model_task,
         "tabular": tabular_task}
# check -> (task maker, extra options); checks of a trained model are given the Task's model.
CHECKS = {
    "check_initial_loss": ("classification", {}),
    "check_output_layer": ("classification", {}),
    "check_gradient_flow": ("classification", {}),
    "check_overfit_tiny": ("classification", {"sizes": (1, 2), "max_steps": 20}),
    "check_capacity": ("classification", {"max_steps": 20}),
    "check_lr": ("classification", {"num_steps": 10}),
    "check_inputs": ("image", {}),
    "check_image_resolution": ("image", {}),
    "check_worst_predictions": ("classification", {}),
    "check_label_preserving": ("image", {}),
    "check_val_test_match": ("classification", {}),
    "check_target_leak": ("classification", {}),
    "check_loss_reduction": ("classification", {}),
    "check_stable_pairing": ("classification", {}),
    "check_split_overlap": ("classification", {}),
    "check_error_gaps": ("classification", {}),
    "check_unseen_tokens": ("lm", {}),
    "check_causal_leak": ("lm", {}),
    "check_weight_tying": ("lm", {}),
    "check_categoricals": ("tabular", {}),
    "check_embedding_sizes": ("tabular", {}),
}


def test_every_public_check_is_covered():
    public = {name for name in dltips.__all__ if name.startswith("check_")}
    assert public - set(CHECKS) == {"check_emergent_scaling"}  # judges ScalingPoints; tested below


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_a_check_runs_on_device_auto_with_a_seed(name):
    make, options = CHECKS[name]
    task = TASKS[make]()
    before = [p.detach().clone() for p in task.model.parameters()]
    found = getattr(dltips, name)(task, device="auto", seed=1, **options)
    assert found and all(isinstance(f, Finding) for f in found), name
    assert all(torch.equal(a, b) for a, b in zip(before, task.model.parameters())), f"{name} changed the model"


@pytest.mark.parametrize("name", sorted(CHECKS))
@pytest.mark.parametrize("bad", [{"max_items": "5"}, {"max_items": 0}, {"seed": "1"}, {"device": "no-such-device"},
                                 {"deadline": "soon"}])
def test_a_check_names_a_wrong_common_argument(name, bad):
    make, options = CHECKS[name]
    with pytest.raises(ParamError, match=next(iter(bad))):
        getattr(dltips, name)(TASKS[make](), **options, **bad)


def test_param_error_is_both_a_value_error_and_a_type_error():
    with pytest.raises(ValueError):
        dltips.check_initial_loss(classification_task(), max_items="5")
    with pytest.raises(TypeError):
        dltips.check_initial_loss(classification_task(), max_items="5")


def test_the_structural_study_check_validates_its_points():
    points = [ScalingPoint(size=s, params=p, tokens=1000, flops=6 * p * 1000, valid_loss=loss, scores={"copy": a},
                           totals={"copy": 500})
              for s, p, loss, a in (("tiny", 100, 2.0, 0.2), ("small", 400, 1.5, 0.5), ("medium", 1600, 1.2, 0.8))]
    assert dltips.check_emergent_scaling(points)
    with pytest.raises(ValueError):
        dltips.check_emergent_scaling("not points")
