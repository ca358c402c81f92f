"""Small synthetic tasks shared by the check tests (PyTorch default initialisation)."""

import math

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dltips import Task


def blobs(n=600, d=16, c=10, weights=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * 2
    p = torch.tensor(weights if weights is not None else [1.0] * c)
    y = torch.multinomial(p / p.sum(), n, replacement=True, generator=g)
    x = centers[y] + torch.randn(n, d, generator=g)
    return (x - x.mean(0)) / x.std(0), y


def spirals(n=600, arms=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % arms
    r = torch.rand(n, generator=g) * 0.9 + 0.1
    angle = 2 * math.pi * (y / arms + 1.5 * r) + 0.15 * torch.randn(n, generator=g)
    return torch.stack([r * torch.cos(angle), r * torch.sin(angle)], 1) * 2, y


def mlp(d_in, d_out, width=64):
    return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, d_out))


def make_task(model, x, y, **kw):
    cut = int(len(x) * 0.8)
    return Task(model, TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:]), **kw)


class Bigram(nn.Module):
    """A language model that sees one token: embedding -> tanh -> output layer (untied)."""

    def __init__(self, vocab, width=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens):
        return self.head(torch.tanh(self.emb(tokens)))
