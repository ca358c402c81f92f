"""DltipsCallback inside the real Hugging Face Trainer: tiny models built from configs, synthetic tokens, on the CPU."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import pickle
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from dltips.integrations import transformers as adapter  # noqa: E402
from dltips.integrations.session import plain_optimizer, validation_metrics  # noqa: E402
from dltips.integrations.transformers import DltipsCallback  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
VOCAB, LENGTH = 64, 16


class Counting(torch.utils.data.Dataset):
    """Sequences counting up mod VOCAB from random starts (learnable).

    pad: labels -100 at the ends of rows (rows of different token counts).
    noisy: every other row is random tokens (unlearnable, a high loss).
    """

    def __init__(self, n: int, seed: int = 0, pad: bool = False, noisy: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.starts = torch.randint(0, VOCAB, (n,), generator=g)
        self.padded = torch.randint(0, LENGTH - 2, (n,), generator=g) if pad else torch.zeros(n, dtype=torch.long)
        self.random = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
        self.noisy = noisy

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = (self.starts[i] + torch.arange(LENGTH)) % VOCAB
        if self.noisy and i % 2:
            ids = self.random[i]
        labels = ids.clone()
        if self.padded[i]:
            labels[LENGTH - int(self.padded[i]):] = -100
        return {"input_ids": ids, "labels": labels}


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=32, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def tiny_llama(seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=0))


def counting_model(build=tiny_gpt2, steps: int = 60) -> nn.Module:
    """A tiny causal LM that has learnt to count, in a plain loop."""
    model = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = Counting(256)
    for step in range(steps):
        ids = torch.stack([data[i]["input_ids"] for i in range(step % 8 * 32, step % 8 * 32 + 32)])
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def training_args(out: Path, **overrides) -> TrainingArguments:
    options = dict(output_dir=str(out), report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                   per_device_train_batch_size=16, learning_rate=3e-3, max_steps=40, logging_steps=10, seed=0)
    return TrainingArguments(**(options | overrides))


def hooks_on(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def step_hooks_on(optimizer: torch.optim.Optimizer) -> int:
    return len(optimizer._optimizer_step_pre_hooks) + len(optimizer._optimizer_step_post_hooks)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """One healthy run of a tiny GPT-2 on counting sequences, evaluated every 10 steps, report written."""
    out = tmp_path_factory.mktemp("healthy")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = tiny_gpt2()
    callback = DltipsCallback(every=5, html=str(out / "report.html"), json=str(out / "report.json"),
                              print_report=False)
    args = training_args(out, eval_strategy="steps", eval_steps=10)
    trainer = Trainer(model=model, args=args, train_dataset=Counting(640), eval_dataset=Counting(64, seed=1),
                      callbacks=[callback])
    trainer.train()
    torch.set_num_threads(threads)
    return {"callback": callback, "model": model, "trainer": trainer, "out": out}


def test_a_healthy_language_model_passes_every_check(healthy):
    report = healthy["callback"].report
    status = {f.tip: f.status for f in report.findings}
    assert not [f.tip for f in report.findings if f.status in ("warn", "fail")], status
    for tip in ("initialization", "verify-transforms", "activation-gradient-stats", "update-ratio"):
        assert status[tip] == "pass", (tip, status)
    initial = next(f for f in report.findings if f.tip == "initialization")
    assert initial.evidence["measured"] == pytest.approx(math.log(VOCAB), rel=0.05)
    assert initial.evidence["measured_on"] == "the first training batch"
    assert report.task["kind"] == "language-model" and report.task["n_classes"] == VOCAB
    assert report.task["n_train"] == 640 and report.task["n_valid"] == 64


def test_the_watch_sees_every_optimizer_step_and_each_evaluation_as_valid_metrics(healthy):
    watch = healthy["callback"].session.watch
    assert watch.optimizer_steps == 40 and watch.training_forwards == 40
    assert [s.step for s in watch.samples] == list(range(0, 40, 5))
    assert [step for step, _ in watch.evaluations] == [10, 20, 30, 40]
    trainer_evals = [row["eval_loss"] for row in healthy["trainer"].state.log_history if "eval_loss" in row]
    assert [m["valid_loss"] for _, m in watch.evaluations] == pytest.approx(trainer_evals)
    assert set(watch.evaluations[0][1]) == {"valid_loss"}  # runtime, throughput and epoch left out
    assert "loss" in watch.last.scalars and math.isfinite(watch.last.scalars["loss"])
    healthy["trainer"].evaluate()  # after training: not recorded, nothing written to the closed sinks
    assert len(watch.evaluations) == 4


def test_hooks_are_removed_after_training(healthy):
    model, trainer = healthy["model"], healthy["trainer"]
    optimizer = plain_optimizer(trainer.optimizer)
    assert optimizer is not trainer.optimizer and isinstance(optimizer, torch.optim.AdamW)
    assert hooks_on(model) == 0 and step_hooks_on(optimizer) == 0
    assert not healthy["callback"].session.watch.attached


def test_the_report_is_written_when_paths_are_given(healthy):
    out = healthy["out"]
    assert "activation-gradient-stats" in (out / "report.html").read_text()
    written = json.loads((out / "report.json").read_text())
    assert "initialization" in json.dumps(written)


def test_the_callback_leaves_the_training_run_unchanged(healthy, tmp_path):
    """The first-batch checks run inside the first forward; the random number generators are put back after them."""
    model = tiny_gpt2()
    trainer = Trainer(model=model, args=training_args(tmp_path, eval_strategy="steps", eval_steps=10),
                      train_dataset=Counting(640), eval_dataset=Counting(64, seed=1))
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    monitored = [row["loss"] for row in healthy["trainer"].state.log_history if "loss" in row]
    assert losses == monitored


class DeadReluClassifier(nn.Module):
    """An MLP whose first layer's bias is so negative that every ReLU unit is dead; Trainer-style (x, labels)."""

    def __init__(self, d: int = 16, width: int = 64, n_classes: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, n_classes))
        with torch.no_grad():
            self.net[0].bias.fill_(-20.0)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        logits = self.net(x)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


class Blobs(torch.utils.data.Dataset):
    def __init__(self, n: int = 512, d: int = 16, n_classes: int = 4):
        g = torch.Generator().manual_seed(0)
        self.y = torch.randint(0, n_classes, (n,), generator=g)
        self.x = torch.randn(n, d, generator=g) + 3 * F.one_hot(self.y, d).float()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def test_dead_relu_units_are_reported_through_the_trainer(tmp_path):
    torch.manual_seed(0)
    model = DeadReluClassifier()
    callback = DltipsCallback(every=5, print_report=False)
    trainer = Trainer(model=model, args=training_args(tmp_path, max_steps=30, per_device_train_batch_size=32),
                      train_dataset=Blobs(), callbacks=[callback])
    trainer.train()
    status = {f.tip: f.status for f in callback.report.findings}
    assert status["activation-gradient-stats"] in ("warn", "fail"), status
    assert callback.report.task["kind"] == "classification" and callback.report.task["n_classes"] == 4
    assert hooks_on(model) == 0


class NeedsLabels(nn.Module):
    """A model whose forward fails without labels: the first-batch checks (which pass none) cannot run it."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels.long()), "logits": logits}


def test_a_first_batch_the_checks_cannot_read_gives_a_skip_and_training_goes_on(tmp_path):
    torch.manual_seed(0)
    callback = DltipsCallback(every=2, print_report=False)
    trainer = Trainer(model=NeedsLabels(), args=training_args(tmp_path, max_steps=6), train_dataset=Blobs(),
                      callbacks=[callback])
    trainer.train()
    assert callback.session.watch.optimizer_steps == 6
    initial = next(f for f in callback.report.findings if f.tip == "initialization")
    assert initial.status == "skip" and "AttributeError" in initial.message


class Window(TrainerCallback):
    """Records each training micro-batch's logits and labels, and the callback's loss at each step's end."""

    def __init__(self, dltips_callback: DltipsCallback):
        self.dltips = dltips_callback
        self.batches: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
        self.windows: list[list[tuple[torch.Tensor, torch.Tensor, bool]]] = []
        self.logged: list[float] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs, output):
        if module.training:
            self.batches.append((output.logits.detach().clone(), kwargs["labels"].clone(),
                                 "num_items_in_batch" in kwargs))

    def on_step_end(self, args, state, control, **kwargs):
        self.windows.append(self.batches)
        self.batches = []
        self.logged.append(float(self.dltips.last_loss))


def token_weighted_loss(window: list[tuple[torch.Tensor, torch.Tensor, bool]]) -> tuple[float, float]:
    """(cross-entropy per counted token over the window, plain mean of the micro-batch means), by hand."""
    total, tokens, means = 0.0, 0, []
    for logits, labels, _ in window:
        logits, targets = logits[:, :-1].double(), labels[:, 1:]
        summed = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-100, reduction="sum")
        counted = int((targets != -100).sum())
        total, tokens = total + float(summed), tokens + counted
        means.append(float(summed) / counted)
    return total / tokens, sum(means) / len(means)


@pytest.mark.parametrize("build, num_items_in_batch", [(tiny_gpt2, True), (tiny_llama, True), (tiny_gpt2, False)],
                         ids=["gpt2-num_items_in_batch", "llama-num_items_in_batch", "gpt2-mean-per-batch"])
def test_the_logged_loss_is_token_weighted_over_the_accumulation_window(tmp_path, build, num_items_in_batch):
    """GPT-2 has no `loss_type`: transformers counts its labels unshifted for num_items_in_batch; Llama's are shifted."""
    model = counting_model(build)  # low loss on counting rows, high on random ones: micro-batch means differ
    if not num_items_in_batch:
        model.accepts_loss_kwargs = False  # the Trainer then passes no num_items_in_batch: each loss is a batch mean
    callback = DltipsCallback(every=1, checks=False, print_report=False)
    window = Window(callback)
    args = training_args(tmp_path, max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    trainer = Trainer(model=model, args=args, train_dataset=Counting(64, pad=True, noisy=True), callbacks=[callback, window])
    if num_items_in_batch and not trainer.model_accepts_loss_kwargs:
        pytest.skip(f"transformers {transformers.__version__} passes {type(model).__name__} no num_items_in_batch")
    trainer.train()
    assert len(window.windows) == 4 and all(len(w) == 2 for w in window.windows)
    assert all(passed == num_items_in_batch for w in window.windows for _, _, passed in w)
    differs = 0
    for logged, micro_batches in zip(window.logged, window.windows):
        counts = [int((labels[:, 1:] != -100).sum()) for _, labels, _ in micro_batches]
        assert counts[0] != counts[1]  # micro-batches of different token counts
        weighted, plain = token_weighted_loss(micro_batches)
        assert logged == pytest.approx(weighted, rel=1e-5)
        differs += abs(plain - weighted) > 1e-2 * weighted
    assert differs >= 2  # the plain mean of micro-batch means is another number


def test_close_removes_every_hook_when_training_raises(tmp_path):
    class Fails(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("boom")

    model = tiny_gpt2()
    callback = DltipsCallback(every=1, print_report=False)
    trainer = Trainer(model=model, args=training_args(tmp_path, max_steps=10), train_dataset=Counting(320),
                      callbacks=[callback, Fails()])
    with pytest.raises(RuntimeError, match="boom"), callback:
        trainer.train()
    assert callback.report is None and not callback.session.watch.attached
    assert hooks_on(model) == 0 and step_hooks_on(plain_optimizer(trainer.optimizer)) == 0
    assert callback.session.watch.optimizer_steps == 3
    callback.close()  # a second close does nothing


def test_the_callback_is_a_trainer_callback_and_survives_copy_and_pickle():
    callback = DltipsCallback(every=3, kind="language-model")
    assert isinstance(callback, TrainerCallback) and isinstance(callback, DltipsCallback)
    assert type(callback).__name__ == "DltipsCallback"
    for other in (copy.deepcopy(callback), pickle.loads(pickle.dumps(callback))):
        assert type(other) is type(callback) and other.session.watch.every == 3


def test_bad_options_are_reported_when_the_callback_is_built():
    with pytest.raises(ValueError, match="kind must be one of"):
        DltipsCallback(kind="images")
    with pytest.raises(ValueError, match="every"):
        DltipsCallback(every=0)


def test_without_transformers_the_module_imports_and_building_the_callback_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    spec = importlib.util.spec_from_file_location("dltips_transformers_alone", adapter.__file__)
    alone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(alone)  # the module itself needs no transformers
    for cls in (alone.DltipsCallback, DltipsCallback):
        with pytest.raises(ImportError, match=r'pip install "dltips\[transformers\]"'):
            cls()


def test_evaluation_metrics_are_renamed_and_unknown_ones_left_out():
    metrics = {"eval_loss": 2.5, "eval_accuracy": 0.4, "eval_runtime": 0.1, "eval_samples_per_second": 9.0,
               "epoch": 1.0, "eval_bleu": 3.0, "eval_perplexity": torch.tensor(12.0)}
    assert validation_metrics(metrics) == {"valid_loss": 2.5, "valid_accuracy": 0.4, "valid_perplexity": 12.0}


def test_first_batch_targets_are_aligned_with_a_causal_lms_logits():
    labels = torch.tensor([[1, 2, 3, -100], [4, 5, 6, 7]])
    kwargs = {"input_ids": labels.clamp(min=0), "attention_mask": torch.ones(2, 4), "labels": labels,
              "num_items_in_batch": torch.tensor(5)}
    x, y = adapter.first_batch(kwargs, shifts=True)
    assert set(x) == {"input_ids", "attention_mask"}
    assert y.tolist() == [[2, 3, -100, -100], [5, 6, 7, -100]]
    assert int(adapter.counted_labels(kwargs, shifts=True)) == 5
    assert int(adapter.counted_labels(kwargs, shifts=False)) == 7
    assert adapter.loss_shifts_labels(tiny_gpt2()) and adapter.loss_shifts_labels(tiny_llama())
    assert not adapter.loss_shifts_labels(DeadReluClassifier())


@pytest.mark.slow
def test_the_example_runs_and_writes_its_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "examples" / "transformers_example.py"), run_name="__main__")
    assert "dltips" in (tmp_path / "transformers_report.html").read_text()
