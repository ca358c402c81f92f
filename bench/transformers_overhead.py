"""Cost of `DltipsCallback` in the Hugging Face Trainer: step time with the callback on and off.

A tiny GPT-2 built from a config (the model of examples/transformers_example.py)
and a small one (4 layers, 128 wide), trained on synthetic counting sequences
at batch 16 on the CPU (or the GPU with --device cuda): the Trainer without the
callback, with it at its default settings, and with every monitor on every step
(`every=1`). Runs are interleaved in one process. Printed: the median time per
optimizer step after the first 10 steps (the first-batch checks happen before
them) and the median over repeats of its ratio to the run without the callback
in the same repeat; also the ratio of whole `train()` calls, first-batch checks
and the Trainer's setup included.

    python bench/transformers_overhead.py [--repeats 5] [--steps 100] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging as hf_logging

from dltips.integrations.transformers import DltipsCallback
from dltips.monitor.watch import DEFAULT_EVERY

VOCAB, LENGTH, BATCH, SKIPPED = 64, 32, 16, 10
MODELS = {"tiny GPT-2 (2 x 32)": {"n_layer": 2, "n_embd": 32}, "small GPT-2 (4 x 128)": {"n_layer": 4, "n_embd": 128}}
MODES = ("off", "default", "every-step")


class Counting(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.starts = torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = (self.starts[i] + torch.arange(LENGTH)) % VOCAB
        return {"input_ids": ids, "labels": ids.clone()}


class StepClock(TrainerCallback):
    """perf_counter at the end of every optimizer step (synchronised on CUDA)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available() and not args.use_cpu:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def run(shape: dict, mode: str, steps: int, device: str) -> tuple[float, float]:
    """(seconds per step after the first SKIPPED, seconds of the whole train() call) of one run."""
    torch.manual_seed(0)
    config = GPT2Config(n_head=2, vocab_size=VOCAB, n_positions=LENGTH, bos_token_id=0, eos_token_id=0, **shape)
    model = GPT2LMHeadModel(config)
    clock = StepClock()
    callbacks: list[TrainerCallback] = [clock]
    if mode != "off":
        callbacks.insert(0, DltipsCallback(every=1 if mode == "every-step" else DEFAULT_EVERY, print_report=False))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=BATCH,
                                 learning_rate=1e-3, logging_strategy="no", save_strategy="no", report_to=[],
                                 use_cpu=device == "cpu", disable_tqdm=True, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=Counting(steps * BATCH), callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)  # the final metrics, printed after each run
        start = time.perf_counter()
        trainer.train()
        whole = time.perf_counter() - start
    per_step = (clock.times[-1] - clock.times[SKIPPED - 1]) / (len(clock.times) - SKIPPED)
    return per_step, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.steps <= SKIPPED + 1:
        parser.error(f"--steps must be more than {SKIPPED + 1}")
    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    print(f"device {args.device}, {torch.get_num_threads()} threads, batch {BATCH} x {LENGTH} tokens, "
          f"{args.steps} steps, {args.repeats} interleaved repeats; DltipsCallback default every={DEFAULT_EVERY}")
    for name, shape in MODELS.items():
        for mode in MODES:  # warm-up
            run(shape, mode, SKIPPED + 5, args.device)
        steps = {m: [] for m in MODES}
        wholes = {m: [] for m in MODES}
        for _ in range(args.repeats):
            for mode in MODES:
                per_step, whole = run(shape, mode, args.steps, args.device)
                steps[mode].append(per_step)
                wholes[mode].append(whole)
        base = statistics.median(steps["off"])
        print(f"\n{name}: without the callback {base * 1e3:.2f} ms/step, "
              f"train() {statistics.median(wholes['off']):.2f} s")
        for mode in MODES[1:]:
            ratio = statistics.median(s / b for s, b in zip(steps[mode], steps["off"]))
            whole = statistics.median(w / b for w, b in zip(wholes[mode], wholes["off"]))
            print(f"  {mode:<10} step time x{ratio:.3f} (median {statistics.median(steps[mode]) * 1e3:.2f} ms), "
                  f"whole train() x{whole:.3f}")


if __name__ == "__main__":
    main()
