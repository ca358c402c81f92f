"""DltipsCallback in a real Lightning Trainer: checks, monitors, logging, reports, and clean hooks."""

from __future__ import annotations

import csv
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")

from dltips.integrations.lightning import (  # noqa: E402
    DltipsCallback,
    LightningLoggerSink,
    split_batch_default,
)
from dltips.integrations.session import validation_metrics, validation_name  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests" / "training"))
from synthetic import blobs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class Classifier(L.LightningModule):
    """A small ReLU MLP on the blobs; `dead` starts the hidden biases at -3 (most units never fire)."""

    def __init__(self, width: int = 32, depth: int = 2, lr: float = 3e-3, dead: bool = False,
                 fail_at: int | None = None, nan_at: int | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(16 if i == 0 else width, width), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, 10))
        if dead:
            with torch.no_grad():
                for layer in self.net[:-1]:
                    if isinstance(layer, nn.Linear):
                        layer.bias.fill_(-3.0)
        self.lr, self.fail_at, self.nan_at = lr, fail_at, nan_at
        self.losses: list[float] = []
        self.optimizer: torch.optim.Optimizer | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.fail_at is not None and self.trainer.fit_loop.total_batch_idx == self.fail_at:
            raise RuntimeError("training_step failed on purpose")
        if self.nan_at is not None and self.trainer.fit_loop.total_batch_idx == self.nan_at:
            loss = loss * float("nan")
        self.losses.append(float(loss.detach()))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr)
        return self.optimizer


def loaders(n: int = 400, batch_size: int = 32) -> tuple[DataLoader, DataLoader]:
    x, y = blobs(n=n)
    cut = int(0.8 * n)
    train = DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    return train, DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=64)


def trainer(tmp_path: Path, callback, **options) -> L.Trainer:
    settings = dict(max_steps=60, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                    num_sanity_val_steps=0)
    settings.update(options)
    return L.Trainer(callbacks=[callback], **settings)


def run(tmp_path: Path, model: L.LightningModule | None = None, callback_options: dict | None = None,
        **trainer_options):
    torch.manual_seed(0)
    model = model or Classifier()
    callback = DltipsCallback(**{"every": 5, "print_report": False, **(callback_options or {})})
    fitter = trainer(tmp_path, callback, **trainer_options)
    fitter.fit(model, *loaders())
    return callback, fitter, model


def statuses(report) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for finding in report.findings:
        found.setdefault(finding.tip, set()).add(finding.status)
    return found


def hooks_left(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    on_modules = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return on_modules + len(optimizer._optimizer_step_pre_hooks) + len(optimizer._optimizer_step_post_hooks)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """One healthy fit shared by several tests: a CSV logger, and HTML and JSON reports."""
    tmp_path = tmp_path_factory.mktemp("healthy")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    callback_options = {"html": str(tmp_path / "report.html"), "json": str(tmp_path / "report.json")}
    logger = L.loggers.CSVLogger(tmp_path, name="csv")
    try:
        callback, fitter, model = run(tmp_path, callback_options=callback_options, logger=logger)
    finally:
        torch.set_num_threads(threads)
    return callback, fitter, model, tmp_path


# ---------------------------------------------------------------------- a healthy fit


def test_a_healthy_fit_passes_the_first_batch_checks_and_the_watch(healthy):
    callback, fitter, model, _ = healthy
    found = statuses(callback.report)
    bad = [(f.tip, f.status, f.title) for f in callback.report.findings if f.status in ("warn", "fail")]
    assert not bad
    assert found["initialization"] == {"pass"} and found["verify-transforms"] == {"pass"}
    assert found["activation-gradient-stats"] == {"pass"} and found["update-ratio"] == {"pass"}
    watch = callback.session.watch
    assert watch.step == fitter.global_step == 60 and watch.optimizer_steps == 60
    assert not watch.no_gradient  # gradients measured after Lightning's closure ran the backward
    first = watch.samples[0]
    assert first.step == 0 and first.gradient("net.0.weight", "norm") > 0
    assert len(callback.session.tracker.records) == fitter.current_epoch  # one evaluation per epoch
    assert callback.report.task["name"] == "Classifier"
    assert callback.report.task["n_train"] == 320 and callback.report.task["n_valid"] == 80


def test_hooks_are_removed_after_fit(healthy):
    callback, _, model, _ = healthy
    assert not callback.session.watch.attached
    assert hooks_left(model, model.optimizer) == 0


def test_lightning_loggers_receive_the_dltips_scalars(healthy):
    callback, fitter, _, _ = healthy
    with open(Path(fitter.logger.log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"dltips/loss", "dltips/act/net.1/dead", "dltips/grad/net.0.weight/norm",
            "dltips/update_ratio/net.0.weight"} <= columns
    assert "val_loss" in columns and "dltips/valid_loss" not in columns  # Lightning logs validation itself
    steps = sorted({int(r["step"]) for r in rows if r["dltips/act/net.1/dead"]})
    assert steps == list(range(0, 60, 5))


def test_the_report_is_written_as_html_and_json(healthy):
    callback, _, _, tmp_path = healthy
    assert (tmp_path / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    data = json.loads((tmp_path / "report.json").read_text())
    assert {f["tip"] for f in data["findings"]} >= {"initialization", "activation-gradient-stats", "update-ratio"}


# ---------------------------------------------------------------------- broken runs and edge cases


def test_a_dead_relu_model_is_flagged_through_the_adapter(tmp_path):
    model = Classifier(width=64, depth=3, dead=True, lr=1e-3)
    callback, _, _ = run(tmp_path, model, max_steps=80)
    assert statuses(callback.report)["activation-gradient-stats"] & {"warn", "fail"}


def test_hooks_are_removed_when_training_step_raises(tmp_path):
    model = Classifier(fail_at=13)
    with pytest.raises(RuntimeError, match="on purpose"):
        run(tmp_path, model)
    assert hooks_left(model, model.optimizer) == 0
    callbacks = [c for c in model.trainer.callbacks if isinstance(c, DltipsCallback)]
    assert callbacks[0].report is not None and callbacks[0].session.watch.step == 13


def test_accumulated_batches_count_as_one_step_and_keep_their_losses(tmp_path):
    model = Classifier()
    callback, fitter, _ = run(tmp_path, model, max_steps=20, accumulate_grad_batches=2)
    watch = callback.session.watch
    assert fitter.global_step == watch.step == watch.optimizer_steps == 20
    assert watch.training_forwards == 40 == len(model.losses)
    assert [s.step for s in watch.samples] == [0, 5, 10, 15]
    # the loss training_step returned (Lightning hands on loss / 2), averaged since the previous sample
    assert watch.samples[0].scalars["loss"] == pytest.approx(model.losses[0], rel=1e-5)
    assert watch.samples[1].scalars["loss"] == pytest.approx(sum(model.losses[1:11]) / 10, rel=1e-5)


def test_a_nan_loss_is_attributed_to_its_optimizer_step(tmp_path):
    model = Classifier(nan_at=7)  # batch 7 belongs to optimizer step 3 when two batches make a step
    callback, _, _ = run(tmp_path, model, max_steps=10, accumulate_grad_batches=2)
    assert callback.session.watch.first_nonfinite_loss_step == 3


def test_manual_optimization_with_two_optimizers_watches_the_first(tmp_path):
    class TwoOptimizers(Classifier):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            first, second = self.optimizers()
            loss = F.cross_entropy(self(batch[0]), batch[1])
            first.zero_grad()
            second.zero_grad()
            self.manual_backward(loss)
            first.step()
            second.step()
            return loss

        def configure_optimizers(self):
            self.optimizer = torch.optim.AdamW(self.net[0].parameters(), lr=3e-3)
            return self.optimizer, torch.optim.AdamW(self.net[1:].parameters(), lr=3e-3)

    model = TwoOptimizers()
    callback, fitter, _ = run(tmp_path, model, max_steps=40)  # Lightning counts the steps of both optimizers
    watch = callback.session.watch
    assert watch.step == watch.optimizer_steps == 20 and not watch.not_in_optimizer and not watch.no_gradient
    assert statuses(callback.report)["update-ratio"] == {"pass"}
    assert set(watch.samples[-1].updates) == {"net.0.weight", "net.0.bias"}
    assert hooks_left(model, model.optimizer) == 0


def test_bf16_mixed_precision_on_cpu(tmp_path):
    callback, fitter, _ = run(tmp_path, max_steps=30, precision="bf16-mixed")
    found = statuses(callback.report)
    assert found["initialization"] == {"pass"}
    assert "activation-gradient-stats" in found and "update-ratio" in found
    assert callback.session.watch.step == fitter.global_step == 30


def test_a_batch_it_cannot_read_gives_one_skip_and_split_batch_reads_it(tmp_path):
    callback = DltipsCallback(print_report=False)
    found = callback.check_first_batch(None, Classifier(), {"x": torch.zeros(4, 16), "y": torch.zeros(4)})
    assert [(f.tip, f.status) for f in found] == [("initialization", "skip")] and "split_batch" in found[0].fix

    class DictBatches(Classifier):
        def training_step(self, batch, batch_idx):
            return super().training_step((batch["x"], batch["y"]), batch_idx)

    x, y = blobs(n=128)
    data = DataLoader([{"x": a, "y": b} for a, b in zip(x, y)], batch_size=32)
    callback = DltipsCallback(every=5, print_report=False, split_batch=lambda b: (b["x"], b["y"]))
    trainer(tmp_path, callback, max_steps=4).fit(DictBatches(), data)
    assert statuses(callback.report)["initialization"] == {"pass"}


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="checks"):
        DltipsCallback(checks="yes")
    with pytest.raises(ValueError, match="kind"):
        DltipsCallback(kind="ranking")
    with pytest.raises(TypeError, match="split_batch"):
        DltipsCallback(split_batch=3)
    with pytest.raises(TypeError, match="log_to_lightning"):
        DltipsCallback(log_to_lightning=1)
    with pytest.raises(ValueError, match="every"):
        DltipsCallback(every=0)
    with pytest.raises(ValueError, match="objective"):
        DltipsCallback(objective="val_custom")  # never recorded: its curve could not be read at the end


def test_it_is_a_lightning_callback_and_reads_lightning_names():
    callback = DltipsCallback(objective="val_acc")
    assert isinstance(callback, L.Callback) and type(callback).__name__ == "DltipsCallback"
    assert callback.session.tracker.objective == "valid_accuracy"
    assert any(isinstance(s, LightningLoggerSink) for s in callback.session.watch.sinks)
    assert not any(isinstance(s, LightningLoggerSink) for s in DltipsCallback(log_to_lightning=False).session.watch.sinks)
    assert validation_name("val/acc") == "valid_accuracy"
    assert validation_name("val_loss_epoch") == "valid_loss"
    assert validation_name("train_loss") is None and validation_name("val_custom") is None
    assert validation_metrics({"val_loss": torch.tensor(0.5), "train_loss": 1.0, "val_f1": 0.25}) == {
        "valid_loss": 0.5, "valid_f1": 0.25}
    assert split_batch_default([1, 2]) == (1, 2) and split_batch_default((1, 2, 3)) is None
    assert split_batch_default({"input_ids": 1, "labels": 2}) == ({"input_ids": 1}, 2)


def test_without_lightning_the_module_imports_and_the_callback_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "lightning" or m.startswith("lightning.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.delitem(sys.modules, "dltips.integrations.lightning")
    module = importlib.import_module("dltips.integrations.lightning")
    with pytest.raises(ImportError, match=r'pip install "dltips\[lightning\]"'):
        module.DltipsCallback()
    with pytest.raises(ImportError, match=r"dltips\[lightning\]"):
        exec("from dltips.integrations.lightning import DltipsCallback", {})


# ---------------------------------------------------------------------- subprocesses


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


@pytest.mark.slow
def test_ddp_on_cpu_two_processes_only_rank_0_writes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(HERE / "lightning_ddp_script.py"), str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["rank0.json", "rank1.json", "report.json", "watch.jsonl"]
    from dltips.monitor.sinks import read_jsonl

    records = [r for r in read_jsonl(out / "watch.jsonl") if "histograms" in r]
    assert [r["step"] for r in records] == [0, 4, 8, 12, 16]
    report = json.loads((out / "report.json").read_text())
    tips = {f["tip"]: f["status"] for f in report["findings"]}
    assert tips["activation-gradient-stats"] == "pass" and tips["update-ratio"] == "pass"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 and r["hooks_left"] == 0 for r in ranks)
    assert ranks[0]["samples"] == ranks[1]["samples"]  # statistics gathered from both ranks, the same on each


@pytest.mark.slow
def test_the_example_runs_and_writes_its_report(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "lightning_example.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "lightning_report.html").stat().st_size > 1000
