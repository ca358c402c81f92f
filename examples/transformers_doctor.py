"""The doctor on a Hugging Face causal LM, its datasets and its data collator, as a Trainer would take them.

    pip install "dltips[transformers]"
    python examples/transformers_doctor.py

A GPT-2 built from a small config (nothing downloaded) learns the sentences of the standard
library's docstrings, one character per token. The datasets are lists of `{"input_ids": [...]}`
items of different lengths, and the collator pads each batch to its longest sentence and sets the
labels, as `DataCollatorForLanguageModeling(mlm=False)` does (the model shifts them for its loss).
`Task.from_transformers(model, train, valid, data_collator=...)` takes exactly what
`Trainer(model, train_dataset=..., eval_dataset=..., data_collator=...)` would; the three lines
below `# dltips` are all the glue. A healthy program: no check warns or fails.
"""

from __future__ import annotations

import re

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from dltips.demos.charlm import load_corpus

PAD = 0


def sentences(max_chars: int = 1_000_000, shortest: int = 16, longest: int = 48) -> list[str]:
    text = re.sub(r"\s+", " ", load_corpus(max_chars))
    return [s.strip() for s in re.split(r"(?<=[.!?]) ", text) if shortest <= len(s.strip()) <= longest]


def datasets(n_valid: int = 200) -> tuple[list[dict], list[dict], int]:
    texts = sentences()
    chars = sorted(set("".join(texts)))
    stoi = {c: i + 1 for i, c in enumerate(chars)}  # 0 pads
    items = [{"input_ids": [stoi[c] for c in t]} for t in texts]
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0)).tolist()
    items = [items[i] for i in order]
    return items[n_valid:], items[:n_valid], len(chars) + 1


def collate(features: list[dict]) -> dict[str, torch.Tensor]:
    """Pad to the longest item of the batch; labels are the input ids, -100 on the padding."""
    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), longest), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n], mask[i, :n] = torch.as_tensor(f["input_ids"]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def main() -> None:
    train, valid, vocab_size = datasets()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=48, n_layer=1, n_head=4,
                        bos_token_id=PAD, eos_token_id=PAD, pad_token_id=PAD)
    model = GPT2LMHeadModel(config)

    # dltips
    import dltips
    task = dltips.Task.from_transformers(model, train, valid, data_collator=collate, batch_size=32,
                                         optimizer=lambda p: torch.optim.AdamW(p, lr=2e-3))
    # a Transformer's steps cost more than an MLP's on a CPU: 120 s lets the short training run fit
    report = dltips.doctor(task, budget_s=120, progress=False)

    for finding in report.findings:
        print(f"{finding.status.upper():4}  {finding.tip}: {finding.title}")


if __name__ == "__main__":
    main()
