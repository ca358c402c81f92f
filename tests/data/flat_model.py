"""A linear model over flattened inputs (dicts concatenated), shared by the data-check tests."""

import torch
from torch import nn


class Flat(nn.Module):
    def __init__(self, n_in, n_out=3):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, x):
        if isinstance(x, dict):
            x = torch.cat([v.flatten(1).float() for v in x.values()], dim=1)
        return self.linear(x.flatten(1).float())
