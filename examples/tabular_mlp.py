"""The doctor on a tabular MLP with BatchNorm, as a plain PyTorch script writes one.

    python examples/tabular_mlp.py

scikit-learn's breast-cancer table (569 tumours, 30 measurements, bundled: no download) is split
into training, validation and test rows, standardised with the training rows' statistics, and
classified malignant or benign by Linear-BatchNorm-ReLU twice and a linear head, trained with
Adam at its usual 1e-3 and `nn.CrossEntropyLoss`. The three lines below `# dltips` hand it to the
doctor. A healthy program: no check warns or fails.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from sklearn.datasets import load_breast_cancer
from torch.utils.data import TensorDataset


def datasets(seed: int = 0) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    x, y = load_breast_cancer(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, valid, test = order[:400], order[400:485], order[485:]
    x = (x - x[train].mean(0)) / x[train].std(0)
    return TensorDataset(x[train], y[train]), TensorDataset(x[valid], y[valid]), TensorDataset(x[test], y[test])


def make_model(n_features: int = 30, hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(n_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, 2))


def main() -> None:
    torch.manual_seed(0)
    model = make_model()
    train, valid, test = datasets()

    # dltips
    import dltips
    task = dltips.Task(model, train, valid, test, loss=nn.CrossEntropyLoss(), batch_size=32, name="breast-cancer-mlp",
                       optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    report = dltips.doctor(task, budget_s=60, progress=False)

    for finding in report.findings:
        print(f"{finding.status.upper():4}  {finding.tip}: {finding.title}")


if __name__ == "__main__":
    main()
