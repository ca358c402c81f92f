"""Calibration tasks for the cause probes: one model-level fault each, and healthy tasks that use the same
constructions legitimately.

The faults follow the published fault taxonomies of deep-learning programs: TheDeepChecker (Braiek &
Khomh, TOSEM 2022), AUTOTRAINER (Zhang et al., ICSE 2021: vanishing gradients, dying ReLU), DeepDiagnosis
(Wardat et al., ICSE 2022) and the bug studies of Islam et al. (FSE 2019) and Humbatova et al. (ICSE 2020:
wrong activation of the last layer, missing or wrong parameters in the optimizer).
"""

from __future__ import annotations

import torch
from torch import nn

from dltips import Task
from zoo import TinyTransformerLM, _with, digits_mlp, mlp, sum_loss, tabular


def dead_biases_task() -> Task:
    """Every hidden ReLU starts dead: the hidden layers' biases set to -5 (Humbatova: wrong initialisation)."""
    task = digits_mlp()
    with torch.no_grad():
        for layer in [m for m in task.model if isinstance(m, nn.Linear)][:-1]:
            layer.bias.fill_(-5.0)
    return _with(task, name="dead-biases")


def relu_on_logits_task() -> Task:
    """A ReLU after the output layer: the logits cannot go negative (Islam: wrong activation of the last layer)."""
    torch.manual_seed(0)
    return _with(digits_mlp(), model=nn.Sequential(mlp(64, 10), nn.ReLU()), name="relu-on-logits")


class SingleSoftmax(nn.Module):
    """A regression head ending in a softmax over its one output: it always outputs 1."""

    def __init__(self, n_in: int):
        super().__init__()
        self.body = mlp(n_in, 1)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        return self.softmax(self.body(x))


def softmax_regression_task() -> Task:
    """A softmax over a single regression output (Humbatova: wrong activation of the last layer)."""
    task = tabular("diabetes", "regression")
    torch.manual_seed(0)
    return _with(task, model=SingleSoftmax(10), name="softmax-regression")


def sigmoid_signed_targets_task() -> Task:
    """A sigmoid output against standardised regression targets, half of them negative."""
    task = tabular("friedman1", "regression")
    torch.manual_seed(0)
    return _with(task, model=nn.Sequential(mlp(10, 1), nn.Sigmoid()), name="sigmoid-signed-targets")


def tanh_wide_targets_task() -> Task:
    """A tanh output against raw regression targets far beyond +-1."""
    task = tabular("diabetes", "regression", standardise=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(10), mlp(10, 1), nn.Tanh())
    return _with(task, model=model, name="tanh-wide-targets")


def softmax_hidden_task() -> Task:
    """Softmax as the hidden activation: each layer's outputs sum to one, 1/64 each (Humbatova: wrong activation)."""
    task = digits_mlp()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Softmax(dim=1), nn.Linear(64, 64), nn.Softmax(dim=1), nn.Linear(64, 10))
    return _with(task, model=model, name="softmax-hidden")


def deep_sigmoid_task(depth: int = 12) -> Task:
    """A deep stack of sigmoid layers: the gradient shrinks about 4 times a layer (AUTOTRAINER: vanishing gradient)."""
    task = digits_mlp()
    torch.manual_seed(0)
    layers, d = [], 64
    for _ in range(depth):
        layers += [nn.Linear(d, 32), nn.Sigmoid()]
        d = 32
    return _with(task, model=nn.Sequential(*layers, nn.Linear(d, 10)), name=f"deep-sigmoid-{depth}")


def half_optimized_task() -> Task:
    """The optimizer holds only the output layer (Humbatova: missing parameters in the optimizer)."""
    task = digits_mlp()
    return _with(task, optimizer=lambda params: torch.optim.AdamW(list(params)[-2:], lr=1e-3),
                 name="half-optimized")


# Healthy tasks with the same constructions, used legitimately
def sigmoid_unit_targets_task() -> Task:
    """A sigmoid output on regression targets scaled into [0, 1]."""
    task = tabular("friedman1", "regression")
    ys = torch.stack([y for _, y in task.train])
    low, high = float(ys.min()), float(ys.max())

    def rescale(ds):
        x, y = ds.tensors
        return torch.utils.data.TensorDataset(x, ((y - low) / (high - low)).clamp(0, 1))

    torch.manual_seed(0)
    return _with(task, model=nn.Sequential(mlp(10, 1), nn.Sigmoid()), train=rescale(task.train),
                 valid=rescale(task.valid), test=rescale(task.test), name="sigmoid-unit-targets")


class BiasPath(nn.Module):
    """An MLP plus a learned per-class bias that does not depend on the input (a prior), as some heads have."""

    def __init__(self):
        super().__init__()
        self.body = mlp(64, 10)
        self.prior = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        return self.body(x) + self.prior


def bias_path_task() -> Task:
    torch.manual_seed(0)
    return _with(digits_mlp(), model=BiasPath(), name="bias-path")


def shallow_tanh_task() -> Task:
    """Two tanh hidden layers: a bounded activation that a healthy network uses without saturating."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    return _with(digits_mlp(), model=model, name="shallow-tanh")


def heavy_dropout_task() -> Task:
    """Dropout 0.9 after each hidden layer: the model underfits (Humbatova: wrong dropout rate)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.9), nn.Linear(64, 64), nn.ReLU(),
                          nn.Dropout(0.9), nn.Linear(64, 10))
    return _with(digits_mlp(), model=model, name="heavy-dropout")


def huge_weight_decay_task() -> Task:
    """AdamW with weight decay 10: the weights shrink faster than the gradient grows them."""
    return _with(digits_mlp(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=10.0),
                 name="huge-weight-decay")


def usual_dropout_task() -> Task:
    """Dropout 0.5 between the hidden layers of the digits MLP, as many scripts have: healthy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 64), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(64, 10))
    return _with(digits_mlp(), model=model, name="usual-dropout")


def label_column_task() -> Task:
    """wine with one more input column: the class itself, standardised (a feature computed from the label)."""
    task = tabular("wine", "classification")

    def with_label(ds):
        x, y = ds.tensors
        return torch.utils.data.TensorDataset(torch.cat([x, (y.float().unsqueeze(1) - 1.0)], 1), y)

    torch.manual_seed(0)
    return _with(task, model=mlp(14, 3), train=with_label(task.train), valid=with_label(task.valid),
                 test=with_label(task.test), name="label-column")


def label_pixel_task() -> Task:
    """digits whose first pixel (always blank) holds the digit: the label leaks into the image."""
    task = digits_mlp()

    def marked(ds):
        x, y = ds.tensors
        x = x.clone()
        x[:, 0] = y.float() / 9.0
        return torch.utils.data.TensorDataset(x, y)

    return _with(task, train=marked(task.train), valid=marked(task.valid), test=marked(task.test), name="label-pixel")


def target_column_task() -> Task:
    """friedman1 with the (standardised) target appended to the inputs, plus noise of 1e-4."""
    task = tabular("friedman1", "regression")

    def with_target(ds):
        x, y = ds.tensors
        noise = 1e-4 * torch.randn(len(y), generator=torch.Generator().manual_seed(0))
        return torch.utils.data.TensorDataset(torch.cat([x, (y + noise).unsqueeze(1)], 1), y)

    torch.manual_seed(0)
    return _with(task, model=mlp(11, 1), train=with_target(task.train), valid=with_target(task.valid),
                 test=with_target(task.test), name="target-column")


def sum_loss_mean_lr_task() -> Task:
    """A loss summed over the batch stepped by SGD at the LR a mean takes (0.05): batch-size times too high
    (Humbatova: wrong loss reduction; AUTOTRAINER: exploding steps)."""
    return _with(digits_mlp(), loss=sum_loss, optimizer=lambda p: torch.optim.SGD(p, lr=0.05), name="sum-loss-mean-lr")


def sum_loss_adam_task() -> Task:
    """Healthy: a summed loss with Adam at 1e-3, whose steps do not depend on the gradient's scale."""
    return _with(digits_mlp(), loss=sum_loss, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), name="sum-loss-adam")


class UnmaskedTransformerLM(TinyTransformerLM):
    """The zoo's Transformer LM with its causal mask dropped: every position attends to the whole window."""

    def forward(self, ids):
        h = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        return self.head(self.norm(self.blocks(h)))


class LSTMLM(nn.Module):
    """A character LSTM language model; `bidirectional=True` reads each window from both ends (a leak)."""

    def __init__(self, vocab: int, width: int = 64, bidirectional: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = nn.LSTM(width, width, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(width * (2 if bidirectional else 1), vocab)

    def forward(self, ids):
        return self.head(self.rnn(self.embed(ids))[0])


def _char_lm(model_of_vocab, name: str) -> Task:
    from dltips.demos.charlm import charlm_data

    vocab, train, valid, test = charlm_data(seq_len=32, max_chars=60_000)
    torch.manual_seed(0)
    return Task(model_of_vocab(len(vocab)), train, valid, test, kind="language-model", batch_size=32,
                optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), name=name)


def unmasked_transformer_task() -> Task:
    """A character Transformer without its causal mask (the bug of a forgotten `mask=`/`is_causal=`)."""
    return _char_lm(lambda v: UnmaskedTransformerLM(v, 32), "unmasked-transformer")


def bidirectional_lstm_task() -> Task:
    """A bidirectional LSTM used as a next-token model: its backward half reads the tokens to predict."""
    return _char_lm(lambda v: LSTMLM(v, bidirectional=True), "bidirectional-lstm")


def lstm_lm_task() -> Task:
    """Healthy: a unidirectional LSTM language model."""
    return _char_lm(LSTMLM, "lstm-lm")
