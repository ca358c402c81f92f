"""The doctor on a LightningModule and its LightningDataModule, with no rewrite.

    pip install "dltips[lightning]"
    python examples/lightning_doctor.py

The module is the usual Lightning classifier: `training_step` returns the loss (and logs it),
`validation_step` logs the accuracy, `configure_optimizers` returns AdamW with a cosine schedule
stepped per epoch. The datamodule holds scikit-learn's 8x8 digits (bundled, no download), split
and standardised in `setup`. `Task.from_lightning(module, datamodule)` takes the loaders, the
optimizer and scheduler, and the module's own `training_step` for every training the doctor
does; the three lines below `# dltips` are all the glue. A healthy program: no check warns or
fails. (`examples/lightning_example.py` watches a Trainer's run instead, with a callback.)
"""

from __future__ import annotations

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Digits(L.LightningDataModule):
    def __init__(self, batch_size: int = 64):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32)
        y = torch.tensor(digits.target)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        train, valid = order[300:], order[:300]
        x = (x - x[train].mean(0)) / x[train].std(0).clamp_min(1e-3)
        self.train_set, self.valid_set = TensorDataset(x[train], y[train]), TensorDataset(x[valid], y[valid])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.valid_set, batch_size=256)


class Classifier(L.LightningModule):
    def __init__(self, lr: float = 1e-3, epochs: int = 10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.hparams.epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def main() -> None:
    torch.manual_seed(0)
    module, datamodule = Classifier(), Digits()

    # dltips
    import dltips
    task = dltips.Task.from_lightning(module, datamodule, name="lightning-digits")
    report = dltips.doctor(task, budget_s=60, progress=False)

    for finding in report.findings:
        print(f"{finding.status.upper():4}  {finding.tip}: {finding.title}")


if __name__ == "__main__":
    main()
