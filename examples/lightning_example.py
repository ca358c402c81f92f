"""dltips in a Lightning Trainer: one callback checks the first batch, watches training and writes a report.

    pip install "dltips[lightning]"
    python examples/lightning_example.py        # a few seconds on a CPU; writes lightning_report.html

The data are synthetic (three Gaussian blobs in 20 dimensions), so nothing is downloaded.
"""

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dltips.integrations.lightning import DltipsCallback


class Classifier(L.LightningModule):
    def __init__(self, n_features: int = 20, n_classes: int = 3, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def blobs(n: int, seed: int) -> TensorDataset:
    """Three Gaussian blobs in 20 dimensions, standardised."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 20, generator=torch.Generator().manual_seed(0)) * 1.5
    y = torch.randint(0, 3, (n,), generator=g)
    x = centres[y] + torch.randn(n, 20, generator=g)
    return TensorDataset((x - x.mean(0)) / x.std(0), y)


def main() -> None:
    torch.manual_seed(0)
    train = DataLoader(blobs(1024, seed=1), batch_size=64, shuffle=True)
    valid = DataLoader(blobs(256, seed=2), batch_size=256)
    callback = DltipsCallback(every=10, html="lightning_report.html")
    trainer = L.Trainer(max_epochs=8, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(Classifier(), train, valid)  # the report is printed when training ends
    print(f"findings: {callback.report.summary}; report written to lightning_report.html")


if __name__ == "__main__":
    main()
