"""The doctor on a CNN written as pytorch/examples writes its MNIST example.

    python examples/mnist_style.py

The model ends in `log_softmax` and trains with `F.nll_loss`, Adadelta at LR 1.0 and a StepLR
that multiplies the LR by 0.7 after every epoch: the conventions of pytorch/examples' mnist/main.py.
The data are scikit-learn's 8x8 digits (bundled, no download), scaled to [0, 1] and normalised
with their mean and standard deviation as that script normalises MNIST, so the network's first
layers see 8x8 images instead of 28x28. Everything above `# dltips` is the user's own program;
the three lines below it hand the model, the data, the loss, the optimizer and the scheduler to
the doctor. A healthy program: no check warns or fails.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from sklearn.datasets import load_digits
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1, padding=1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def datasets(seed: int = 1) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, valid, test = order[:1200], order[1200:1500], order[1500:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return TensorDataset(x[train], y[train]), TensorDataset(x[valid], y[valid]), TensorDataset(x[test], y[test])


def main() -> None:
    torch.manual_seed(1)
    model = Net()
    train, valid, test = datasets()

    # dltips
    import dltips
    task = dltips.Task(model, train, valid, test, loss=F.nll_loss, batch_size=64, name="mnist-style",
                       optimizer=lambda p: optim.Adadelta(p, lr=1.0), scheduler=lambda o: StepLR(o, 1, gamma=0.7))
    report = dltips.doctor(task, budget_s=60, progress=False)

    for finding in report.findings:
        print(f"{finding.status.upper():4}  {finding.tip}: {finding.title}")


if __name__ == "__main__":
    main()
