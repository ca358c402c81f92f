"""The calibration set: healthy tasks and deliberately broken ones.

Healthy tasks come from data that ships with scikit-learn or is generated
here; broken ones each carry one known fault and the tips that must name it.
The doctor must give no `warn` or `fail` on a healthy task, and must flag
each broken task with one of its expected tips.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dltips import CategoryEncoder, Task, tie_weights
from dltips.demos.digits import DigitsCNN, digits_task, load_digits_tensors, split
from dltips.demos.tabular import tabular_data, tabular_task


def _standardise(x: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-8)
    return (x - mean) / std


def _splits(x, y, n_valid, n_test, seed=0):
    train, valid, test = split(len(x), n_valid, n_test, seed)
    return [TensorDataset(x[i], y[i]) for i in (train, valid, test)], train


def mlp(n_in: int, n_out: int, width: int = 64, depth: int = 2) -> nn.Sequential:
    layers, d = [], n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, n_out))


def sklearn_xy(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    import sklearn.datasets as ds

    if name == "friedman1":  # generated: y = 10 sin(pi x0 x1) + 20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + noise
        x, y = ds.make_friedman1(n_samples=1200, noise=0.5, random_state=0)
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    data = getattr(ds, f"load_{name}")()
    return torch.tensor(data.data, dtype=torch.float32), torch.tensor(data.target)


def digits_mlp(seed=0) -> Task:
    x, y = load_digits_tensors()
    x = x.flatten(1)
    train, _, _ = split(len(x), 300, 300)
    x = (x - x[train].mean()) / x[train].std()  # one scale for all pixels: constant corner pixels stay constant
    (tr, va, te), _ = _splits(x, y, 300, 300)
    torch.manual_seed(seed)
    return Task(mlp(64, 10), tr, va, te, name="digits-mlp")


def tabular(name: str, kind: str, seed=0, model=None, standardise=True) -> Task:
    x, y = sklearn_xy(name)
    n = len(x)
    n_valid = n_test = max(n // 6, 20)
    train, _, _ = split(n, n_valid, n_test)
    if standardise:
        x = _standardise(x, train)
    if kind == "regression":
        y = y.float()
        y = (y - y[train].mean()) / y[train].std() if standardise else y
    elif kind == "binary":
        y = y.float()
    (tr, va, te), _ = _splits(x, y, n_valid, n_test)
    torch.manual_seed(seed)
    n_out = int(y.max()) + 1 if kind == "classification" else 1
    return Task(model if model is not None else mlp(x.shape[1], n_out), tr, va, te, kind=kind,
                batch_size=32, name=f"{name}-{kind}")


def spirals(n=900, arms=3, seed=0, noise=0.15) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % arms
    r = torch.rand(n, generator=g) * 0.9 + 0.1
    angle = 2 * math.pi * (y / arms + 1.5 * r) + noise * torch.randn(n, generator=g)
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], 1) * 2
    return x, y


def spirals_task(make_model: Callable[[], nn.Module] | None = None, seed=0, name="spirals") -> Task:
    x, y = spirals()
    (tr, va, te), _ = _splits(x, y, 150, 150)
    torch.manual_seed(seed)
    model = make_model() if make_model is not None else mlp(2, 3, 64, 3)
    return Task(model, tr, va, te, batch_size=32, name=name)


class Bigram(nn.Module):
    """Embedding -> linear -> tanh -> output layer, the output layer tied to the embedding (the weight-tying tip)."""

    def __init__(self, vocab: int, width: int = 32, tie: bool = True):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)
        if tie:  # the shared matrix serves as the output layer too, so initialise it at the output layer's scale
            nn.init.normal_(self.emb.weight, std=width ** -0.5)
            tie_weights(self.emb, self.head)

    def forward(self, tokens):
        return self.head(torch.tanh(self.hidden(self.emb(tokens))))


class ContextBlind(nn.Module):
    """Next-token logits that ignore the input: a language model that can learn only the tokens' frequencies."""

    def __init__(self, vocab: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(vocab))

    def forward(self, tokens):
        return self.logits.expand(*tokens.shape, -1)


def bigram_lm(seed=0, tie=True) -> Task:
    """Sequences that count up modulo 12 with random starts: each next token is predictable."""
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, 12, (600, 1), generator=g)
    seq = (start + torch.arange(17)) % 12
    x, y = seq[:, :-1], seq[:, 1:]
    (tr, va, te), _ = _splits(x, y, 100, 100)
    torch.manual_seed(seed)
    return Task(Bigram(12, tie=tie), tr, va, te, kind="language-model", batch_size=32,
                name="count-lm" if tie else "untied-lm")


def unseen_street_task() -> Task:
    """The messy-streets table with every "Oak Avenue" row kept out of training: validation and test hold a
    street the encoder and the model never saw."""
    from dltips.data.toys import messy_categories
    from dltips.demos.tabular import NUMERIC
    from dltips.tabular.model import TabularData

    toy = messy_categories(2000, messy=0.4)
    train = [i for i in toy.train if toy.clean[i] != "Oak Avenue"]
    table = {"street": toy.raw, **{n: toy.numeric[:, j] for j, n in enumerate(NUMERIC)}, "y": toy.target}
    torch.manual_seed(0)
    return TabularData(table, ["street"], list(NUMERIC), "y", split=(train, toy.valid, toy.test)).task(name="unseen-street")


HEALTHY: dict[str, Callable[[], Task]] = {
    "digits-cnn": digits_task,
    "digits-mlp": digits_mlp,
    "wine": lambda: tabular("wine", "classification"),
    "breast-cancer": lambda: tabular("breast_cancer", "binary"),
    "friedman1": lambda: tabular("friedman1", "regression"),
    "spirals": spirals_task,
    "count-lm": bigram_lm,
    "digits-shifts": lambda: augmented_digits("digits-shifts"),
    "messy-streets": tabular_task,
    "digits-sgd": lambda: _with(digits_task(), optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                                name="digits-sgd"),
}


def _with(task: Task, **changes) -> Task:
    import dataclasses

    return dataclasses.replace(task, **changes)


def scaled_last_layer(task: Task, factor: float) -> Task:
    last = [m for m in task.model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    return task


class DetachedLoss:
    """A loss whose gradient never reaches the model (a classic bug)."""

    def __init__(self, model: nn.Module):
        self.params = list(model.parameters())

    def __call__(self, output, target):
        return F.cross_entropy(output.detach(), target) + 0.0 * sum(p.sum() for p in self.params)


def detached_loss_task() -> Task:
    task = digits_mlp()
    return _with(task, loss=DetachedLoss(task.model), name="detached-loss")


def frozen_task() -> Task:
    task = digits_mlp()
    for p in task.model.parameters():
        p.requires_grad_(False)
    task.model[-1].bias.requires_grad_(True)  # something to optimise, but nothing that can learn the task
    return _with(task, name="frozen")


def raw_pixels_task() -> Task:
    x, y = load_digits_tensors()
    x = x * 255.0
    (tr, va, te), _ = _splits(x, y, 300, 300)
    torch.manual_seed(0)
    return Task(DigitsCNN(), tr, va, te, name="raw-pixels")


def random_labels_task() -> Task:
    x, y = load_digits_tensors()
    x = (x - x.mean()) / x.std()
    y = torch.randint(0, 10, (len(y),), generator=torch.Generator().manual_seed(1))
    (tr, va, te), _ = _splits(x, y, 300, 300)
    torch.manual_seed(0)
    return Task(DigitsCNN(), tr, va, te, name="random-labels")


# name -> (task factory, tips of which at least one must warn or fail)
def augmented_digits(name: str, **options) -> Task:
    """The digits CNN trained with a composed warp (AffineAugment) with the options given."""
    from dltips import AffineAugment

    settings = {"size": (8, 8), "flip": 0.0, "max_rotate": 0.0, "zoom": (1.0, 1.0), "max_translate": 0.1,
                "max_warp": 0.0} | options
    return _with(digits_task(), augment=AffineAugment(**settings), name=name)


def shifted_test_task() -> Task:
    """The test images are brighter than the validation images: validation no longer stands in for test."""
    task = digits_mlp()
    x, y = task.test.tensors
    return _with(task, test=TensorDataset(x + 0.5, y), name="shifted-test")


def label_shifted_test_task() -> Task:
    """The test set holds only the digits 0-4: its label distribution differs from validation's."""
    task = digits_mlp()
    x, y = task.test.tensors
    keep = y < 5
    return _with(task, test=TensorDataset(x[keep], y[keep]), name="label-shifted-test")


# Healthy tasks in conventions of public training scripts (pytorch/examples, nanoGPT, makemore).


class MnistNet(nn.Module):
    """pytorch/examples' MNIST network at the digits' 8x8 scale: conv, conv, dropout, two linear layers, log_softmax."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 16, 3, 1, padding=1), nn.Conv2d(16, 32, 3, 1, padding=1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(32 * 4 * 4, 64), nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = self.dropout1(torch.flatten(x, 1))
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def mnist_style_task() -> Task:
    """log_softmax outputs, F.nll_loss and Adadelta at lr 1.0, as pytorch/examples trains MNIST."""
    task = digits_task()
    torch.manual_seed(0)
    return _with(task, model=MnistNet(), loss=F.nll_loss, optimizer=lambda p: torch.optim.Adadelta(p, lr=1.0),
                 name="mnist-style")


def batchnorm_regression_task() -> Task:
    """A tabular regression MLP with BatchNorm after each hidden layer (friedman1, standardised targets)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.BatchNorm1d(64),
                          nn.ReLU(), nn.Linear(64, 1))
    return _with(tabular("friedman1", "regression", model=model), name="batchnorm-regression")


class ClosureNet(nn.Module):
    """Its parts are reached through closures and a partial, as some scripts write a forward pass."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, n_out)
        self.features = lambda x: self.body(x)
        self.classify = functools.partial(self._head, self.head)

    @staticmethod
    def _head(layer, h):
        return layer(h)

    def forward(self, x):
        return self.classify(self.features(x))


def closure_task() -> Task:
    task = digits_mlp()
    torch.manual_seed(0)
    return _with(task, model=ClosureNet(64, 10), name="closures")


def big_mlp_task() -> Task:
    """1.1M parameters: digits through two hidden layers of 1,024 units."""
    task = digits_mlp()
    torch.manual_seed(0)
    return _with(task, model=mlp(64, 10, width=1024), name="big-mlp")


class TinyTransformerLM(nn.Module):
    """A causal Transformer language model from torch's own layers (pre-norm, batch first, untied head)."""

    def __init__(self, vocab: int, context: int, width: int = 64, heads: int = 4, layers: int = 2):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, width), nn.Embedding(context, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, ids):
        t = ids.shape[1]
        h = self.tokens(ids) + self.positions(torch.arange(t, device=ids.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=ids.device)
        return self.head(self.norm(self.blocks(h, mask=mask, is_causal=True)))


def transformer_lm_task() -> Task:
    """Character windows of the standard library's prose (the charlm demo's corpus, 60,000 characters)."""
    from dltips.demos.charlm import charlm_data

    vocab, train, valid, test = charlm_data(seq_len=32, max_chars=60_000)
    torch.manual_seed(0)
    return Task(TinyTransformerLM(len(vocab), 32), train, valid, test, kind="language-model", batch_size=32,
                optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), name="transformer-lm")


def sum_loss(output, target):
    return F.cross_entropy(output, target, reduction="sum")


HEALTHY.update({
    "mnist-style": mnist_style_task,
    "wine-plain-sgd": lambda: _with(tabular("wine", "classification"),
                                    optimizer=lambda p: torch.optim.SGD(p, lr=0.1), name="wine-plain-sgd"),
    "batchnorm-regression": batchnorm_regression_task,
    "label-smoothing": lambda: _with(digits_mlp(), loss=nn.CrossEntropyLoss(label_smoothing=0.1),
                                     name="label-smoothing"),
    # a sum over the batch of 64 with the LR divided by 64: the same steps as a mean at lr 0.05
    "sum-reduced-loss": lambda: _with(digits_mlp(), loss=sum_loss,
                                      optimizer=lambda p: torch.optim.SGD(p, lr=0.05 / 64, momentum=0.9),
                                      name="sum-reduced-loss"),
    "closures": closure_task,
    "big-mlp": big_mlp_task,
    "transformer-lm": transformer_lm_task,
    "bce-probabilities": lambda: _with(tabular("breast_cancer", "binary"),
                                       model=nn.Sequential(mlp(30, 1), nn.Sigmoid(), nn.Flatten(0)),
                                       loss=nn.BCELoss(), name="bce-probabilities"),
    "class-weights": lambda: _with(tabular("wine", "classification"),
                                   loss=nn.CrossEntropyLoss(weight=torch.tensor([1.0, 0.8, 1.3])),
                                   name="class-weights"),
})


BROKEN: dict[str, tuple[Callable[[], Task], set[str]]] = {
    "init-x30": (lambda: _with(scaled_last_layer(digits_mlp(), 30.0), name="init-x30"), {"initialization"}),
    "softmax-before-ce": (lambda: _with(digits_mlp(), model=nn.Sequential(digits_mlp().model, nn.Softmax(1)),
                                        name="softmax-before-ce"), {"initialization"}),
    "log-softmax-dim0": (lambda: _with(digits_mlp(), model=nn.Sequential(digits_mlp().model, nn.LogSoftmax(0)),
                                       loss=F.nll_loss, name="log-softmax-dim0"), {"initialization"}),
    "regression-raw-targets": (lambda: _with(tabular("diabetes", "regression", standardise=False),
                                             name="raw-targets"), {"initialization", "verify-transforms"}),
    "lr-far-too-high": (lambda: _with(digits_mlp(), optimizer=lambda p: torch.optim.AdamW(p, lr=3.0),
                                      name="lr-too-high"), {"default-lr", "overfit-tiny"}),
    "lr-far-too-low": (lambda: _with(digits_mlp(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-7),
                                     name="lr-too-low"), {"default-lr", "overfit-tiny"}),
    "adam-lr-1": (lambda: _with(digits_mlp(), optimizer=lambda p: torch.optim.Adam(p, lr=1.0), name="adam-lr-1"),
                  {"default-lr", "overfit-tiny", "overfit-then-regularize"}),
    "detached-loss": (detached_loss_task, {"overfit-tiny"}),
    "frozen": (frozen_task, {"overfit-tiny"}),
    "linear-on-spirals": (lambda: spirals_task(lambda: nn.Linear(2, 3), name="linear-spirals"),
                          {"overfit-then-regularize", "overfit-tiny", "error-gaps"}),
    "raw-pixels": (raw_pixels_task, {"verify-transforms"}),
    "random-labels": (random_labels_task, {"error-gaps", "overfit-then-regularize"}),
    "shifted-test": (shifted_test_task, {"val-test-match"}),
    "upside-down-digits": (lambda: augmented_digits("upside-down-digits", max_rotate=180.0, p_affine=1.0),
                           {"label-preserving-augmentation"}),
    "label-shifted-test": (label_shifted_test_task, {"val-test-match"}),
    "raw-street-ids": (lambda: tabular_data(encoder=CategoryEncoder(threshold=1.0, normalize_text=False)).task(
        name="raw-street-ids"), {"encode-categoricals"}),
    "unseen-street": (unseen_street_task, {"encode-categoricals"}),
    "untied-lm": (lambda: bigram_lm(tie=False), {"weight-tying"}),
    "blind-lm": (lambda: _with(bigram_lm(), model=ContextBlind(12), name="blind-lm"),
                 {"overfit-tiny", "overfit-then-regularize", "error-gaps"}),
}


def task_named(name: str) -> Task:
    """The calibration task `name`, healthy or broken."""
    return HEALTHY[name]() if name in HEALTHY else BROKEN[name][0]()


def __getattr__(attribute: str):
    """`task_<name>` (dashes as underscores): a function building that task, a target for `dltips doctor`."""
    if attribute.startswith("task_"):
        name = attribute[len("task_"):].replace("_", "-")
        if name in HEALTHY or name in BROKEN:
            return lambda: task_named(name)
    raise AttributeError(attribute)


# Broken tasks whose model learns nothing under the Task's own optimizer: the doctor must fail them (exit 1),
# not only warn.
LEARNS_NOTHING = ("adam-lr-1", "lr-far-too-high", "lr-far-too-low", "detached-loss", "frozen", "blind-lm")
