"""Run by test_lightning.py: a 2-process DDP fit on the CPU (gloo) with DltipsCallback.

Lightning starts rank 1 by running this script again. Rank 0 writes report.json
and watch.jsonl; each rank writes rank<r>.json with what the test compares.
"""

import json
import os
import sys

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dltips.integrations.lightning import DltipsCallback

STEPS, EVERY, BATCH = 20, 4, 16


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


if __name__ == "__main__":
    out = sys.argv[1]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Classifier()
    callback = DltipsCallback(every=EVERY, sinks=[os.path.join(out, "watch.jsonl")], json=os.path.join(out, "report.json"),
                              print_report=False)
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=out + "_root", callbacks=[callback])
    trainer.fit(model, DataLoader(data(320, 0), batch_size=BATCH), DataLoader(data(64, 1), batch_size=BATCH))
    hooks_left = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    optimizer = callback.optimizer
    hooks_left += len(optimizer._optimizer_step_pre_hooks) + len(optimizer._optimizer_step_post_hooks)
    samples = [[s.step, s.activations["net.0"].tolist()] for s in callback.session.watch.samples]
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump({"rank": trainer.global_rank, "world": trainer.world_size, "hooks_left": hooks_left,
                   "samples": samples, "tips": sorted({x.tip for x in callback.report.findings})}, f)
