"""The doctor on your own training step: a nanoGPT-style loop handed over as `Task.step`.

    dltips doctor examples/own_step.py:make_task --budget 60     # the step below, as written
    dltips doctor examples/own_step.py:make_buggy_task           # the same step without zero_grad()
    python examples/own_step.py                                  # both, through dltips.doctor

`train_step` is the inner loop of a nanoGPT-style script: the batch is split into micro-batches
whose gradients accumulate, the gradient norm is clipped at 1.0, the optimizer steps and the
gradients are zeroed with `set_to_none=True`. Given as `Task(step=train_step)`, it is what the
doctor's overfit ladder, LR range test and short run train with, so the watch on those runs sees
this loop, and names its bugs: `make_buggy_task` forgets `optimizer.zero_grad()`, and the doctor
fails `gradient-accumulation` ("optimizer.zero_grad() is missing: gradients carry over between
steps") where its own step would have hidden it.

The model is the character GPT of `dltips demo charlm` (one block, 48 channels) on the standard
library's docstrings.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

import dltips
from dltips.demos.charlm import SIZES, CharGPT, charlm_data

GRAD_ACCUM = 2  # micro-batches per optimizer step
GRAD_CLIP = 1.0
SEQ_LEN = 64
BATCH_SIZE = 16  # windows per optimizer step, split into GRAD_ACCUM micro-batches


def train_step(model: torch.nn.Module, batch, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One optimizer step as nanoGPT takes it; returns the mean loss over the micro-batches."""
    x, y = batch
    total = 0.0
    for micro_x, micro_y in zip(x.chunk(GRAD_ACCUM), y.chunk(GRAD_ACCUM)):
        logits = model(micro_x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), micro_y.view(-1)) / GRAD_ACCUM
        loss.backward()
        total += loss.detach()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def train_step_without_zero_grad(model: torch.nn.Module, batch, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """The same step with the last line forgotten: every step adds its gradient to all the previous ones."""
    x, y = batch
    total = 0.0
    for micro_x, micro_y in zip(x.chunk(GRAD_ACCUM), y.chunk(GRAD_ACCUM)):
        logits = model(micro_x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), micro_y.view(-1)) / GRAD_ACCUM
        loss.backward()
        total += loss.detach()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    return total


def make_task(step=train_step, name: str = "own-step") -> dltips.Task:
    vocab, train, valid, test = charlm_data(seq_len=SEQ_LEN, max_chars=200_000)
    n_layer, n_head, n_embd = SIZES["tiny"]
    torch.manual_seed(0)
    model = CharGPT(len(vocab), n_layer, n_head, n_embd, SEQ_LEN)
    return dltips.Task(model, train, valid, test, kind="language-model", n_classes=len(vocab), batch_size=BATCH_SIZE,
                       optimizer=functools.partial(torch.optim.AdamW, lr=3e-3), step=step, name=name)


def make_buggy_task() -> dltips.Task:
    return make_task(train_step_without_zero_grad, name="own-step-without-zero-grad")


if __name__ == "__main__":
    for task in (make_task(), make_buggy_task()):
        report = dltips.doctor(task, budget_s=60, progress=False)
        print(f"{task.name}:")
        for finding in report.findings:
            if finding.status in ("warn", "fail"):
                print(f"  {finding.status.upper():4}  {finding.tip}: {finding.title}")
        if not any(f.status in ("warn", "fail") for f in report.findings):
            print("  no warning, no failure")
