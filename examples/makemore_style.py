"""The doctor on a character-level Transformer written in the style of karpathy/makemore.

    python examples/makemore_style.py

As in makemore, each item is a word: `x` is <start> + the word's characters, `y` is the word's
characters + <stop>, both padded to the longest word, and `y` holds -1 where nothing is to be
predicted (`F.cross_entropy(..., ignore_index=-1)`). The model's `forward(idx, targets=None)`
returns `(logits, loss)`. The words are the distinct lowercase words of the standard library's
docstrings (no download). The three lines below `# dltips` are all the glue: the Task is told
that -1 marks positions not to count, and takes the logits from the model's tuple by itself.
A healthy program: no check warns or fails.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from dltips.demos.charlm import load_corpus


class CharDataset(Dataset):
    def __init__(self, words: list[str], chars: list[str], max_word_length: int):
        self.words = words
        self.stoi = {ch: i + 1 for i, ch in enumerate(chars)}  # 0 is the <start>/<stop> token
        self.max_word_length = max_word_length

    def __len__(self) -> int:
        return len(self.words)

    def __getitem__(self, idx: int):
        ix = torch.tensor([self.stoi[ch] for ch in self.words[idx]], dtype=torch.long)
        x = torch.zeros(self.max_word_length + 1, dtype=torch.long)
        y = torch.zeros(self.max_word_length + 1, dtype=torch.long)
        x[1:1 + len(ix)] = ix
        y[:len(ix)] = ix
        y[len(ix) + 1:] = -1  # positions after <stop>: no loss there
        return x, y


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.n_head = n_head
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf")).softmax(dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 2, n_embd: int = 64, n_head: int = 4):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList([Block(n_embd, n_head, block_size) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.size(1), device=idx.device).unsqueeze(0)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


def create_datasets(max_words: int = 3000) -> tuple[CharDataset, CharDataset, int]:
    words = sorted(set(re.findall(r"\b[a-z]{3,12}\b", load_corpus(400_000))))
    order = torch.randperm(len(words), generator=torch.Generator().manual_seed(3407)).tolist()
    words = [words[i] for i in order[:max_words]]
    chars = sorted(set("".join(words)))
    longest = max(len(w) for w in words)
    n_test = min(500, len(words) // 10)
    return (CharDataset(words[n_test:], chars, longest), CharDataset(words[:n_test], chars, longest),
            len(chars) + 1)


def main() -> None:
    torch.manual_seed(3407)
    train, valid, vocab_size = create_datasets()
    model = Transformer(vocab_size, block_size=train.max_word_length + 1)

    # dltips
    import dltips
    task = dltips.Task(model, train, valid, kind="language-model", ignore_index=-1, batch_size=32, name="makemore-style",
                       optimizer=lambda p: torch.optim.AdamW(p, lr=5e-4, betas=(0.9, 0.99), weight_decay=0.01))
    report = dltips.doctor(task, budget_s=60, progress=False)

    for finding in report.findings:
        print(f"{finding.status.upper():4}  {finding.tip}: {finding.title}")


if __name__ == "__main__":
    main()
