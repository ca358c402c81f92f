"""What a Task accepts beyond (x, y) tensors and a plain logits output: DataLoaders, a collate_fn for sequences
of different lengths, tuple/dict outputs, a forward hook, and an ignore_index other than -100."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, TensorDataset

import dltips
from dltips import Recipe, Task, TaskError, fit
from dltips.predict import cat_batches, predict
from dltips.task import IGNORE_INDEX, select_output

VOCAB = 7


class Sequences(Dataset):
    """Token sequences of lengths 3 to 8: x is the sequence, y the same sequence shifted by one (next tokens)."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            length = int(torch.randint(4, 10, (1,), generator=g))
            tokens = torch.randint(0, VOCAB, (length,), generator=g)
            self.items.append((tokens[:-1], tokens[1:]))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def pad(items):
    xs, ys = zip(*items)
    return pad_sequence(xs, batch_first=True), pad_sequence(ys, batch_first=True, padding_value=-100)


class TinyLM(nn.Module):
    """Embedding -> GRU -> logits; `returns` picks what forward gives back."""

    def __init__(self, returns="tensor"):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.rnn, self.head = nn.Embedding(VOCAB, 16), nn.GRU(16, 16, batch_first=True), nn.Linear(16, VOCAB)
        self.returns = returns

    def forward(self, idx, targets=None):
        logits = self.head(self.rnn(self.emb(idx))[0])
        if self.returns == "tuple":
            return logits, None
        if self.returns == "loss-first":
            return torch.tensor(0.0), logits
        if self.returns == "dict":
            return {"logits": logits, "hidden": None}
        if self.returns == "last-position" and targets is None:
            return logits[:, [-1], :], None
        return logits if self.returns == "tensor" else (logits, None)


def test_dataloaders_lend_their_dataset_collate_fn_and_batch_size():
    train, valid = Sequences(40, 0), Sequences(12, 1)
    task = Task(TinyLM(), DataLoader(train, batch_size=8, collate_fn=pad), DataLoader(valid, batch_size=4),
                kind="language-model")
    assert task.train is train and task.valid is valid
    assert task.batch_size == 8 and task.collate_fn is pad
    assert Task(TinyLM(), DataLoader(train, batch_size=8, collate_fn=pad), valid, kind="language-model",
                batch_size=5).batch_size == 5  # an explicit batch size wins
    assert make_lm().batch_size == 64  # the default without a loader


def make_lm(**kw):
    return Task(TinyLM(kw.pop("returns", "tensor")), Sequences(40, 0), Sequences(12, 1), kind="language-model",
                collate_fn=pad, **kw)


def test_sequences_of_different_lengths_train_and_score_through_the_collate_fn():
    task = make_lm(batch_size=8)
    result = fit(task, epochs=2, recipe=Recipe(one_cycle=False), progress=False)
    assert result.steps == 10 and result.history[-1]["valid_loss"] < result.history[0]["valid_loss"] + 0.5
    scored = predict(task.model, task, task.valid)
    assert scored.outputs.shape[:2] == scored.targets.shape == (12, 8)  # padded to the longest validation item


def test_cat_batches_pads_shorter_sequences_with_ignored_targets():
    outputs = [torch.ones(2, 3, 5), torch.full((1, 5, 5), 2.0)]
    targets = [torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[1, 1, 1, 1, 1]])]
    out, target = cat_batches(outputs, targets)
    assert out.shape == (3, 5, 5) and torch.equal(out[:2, 3:], torch.zeros(2, 2, 5)) and torch.equal(out[2], outputs[1][0])
    assert target[:2, 3:].eq(IGNORE_INDEX).all() and target[:2, :3].tolist() == targets[0].tolist()


@pytest.mark.parametrize("returns", ["tuple", "dict", "loss-first"])
def test_tuple_and_dict_outputs_give_their_logits(returns):
    task = make_lm(returns=returns)
    x, y = task.first_batch(task.train, 4)
    output, target = task.outputs(task.model, (x, y))
    assert torch.equal(output, TinyLM("tensor")(x)) and target is y


def test_output_selects_by_index_key_or_function():
    logits = torch.randn(2, 3)
    assert select_output((logits, torch.zeros(2)), 1).shape == (2,)
    assert select_output({"scores": logits}, "scores") is logits
    assert select_output((None, logits), lambda out: out[1] * 2).equal(logits * 2)
    with pytest.raises(TaskError, match="Task.output"):
        make_lm(output=True)


def test_a_tuple_whose_first_tensor_is_not_the_logits_names_output_as_the_fix():
    class Features(nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 2), torch.zeros(len(x), 3)  # (features, logits)

    data = TensorDataset(torch.randn(6, 4), torch.randint(0, 3, (6,)))
    with pytest.raises(TaskError) as error:
        Task(Features(), data, data, n_classes=3)
    assert "returns a tuple of 2: (2, 2), (2, 3); dltips took element 0" in str(error.value)
    assert "pass output=<index>" in str(error.value)
    assert Task(Features(), data, data, n_classes=3, output=1).n_classes == 3


def test_last_position_logits_name_the_forward_hook_and_the_hook_fixes_them():
    with pytest.raises(TaskError) as error:
        make_lm(returns="last-position")
    assert "logits for the last position only" in str(error.value) and "forward=lambda" in str(error.value)
    task = make_lm(returns="last-position", forward=lambda model, batch: (model(batch[0], batch[1])[0], batch[1]))
    x, y = task.first_batch(task.train, 4)
    assert task.outputs(task.model, (x, y))[0].shape == (*y.shape, VOCAB)
    assert fit(task, epochs=1, progress=False).steps == 1


def makemore_like(n=24, seed=0):
    """x: 0 then the tokens; y: the tokens then 0; -1 after the end, as makemore pads its targets."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.zeros(n, 6, dtype=torch.long), torch.full((n, 6), -1)
    for i in range(n):
        length = int(torch.randint(2, 5, (1,), generator=g))
        tokens = torch.randint(1, VOCAB, (length,), generator=g)
        x[i, 1:1 + length], y[i, :length], y[i, length] = tokens, tokens, 0
    return TensorDataset(x, y)


def test_labels_of_minus_one_name_ignore_index_and_it_is_honoured_everywhere():
    with pytest.raises(TaskError, match="pass ignore_index=-1"):
        Task(TinyLM(), makemore_like(), makemore_like(8, 1), kind="language-model")
    seen = []

    def users_loss(logits, targets):  # the user's own loss, in the user's convention
        seen.append(int(targets.min()))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)

    task = Task(TinyLM(), makemore_like(), makemore_like(8, 1), kind="language-model", ignore_index=-1, loss=users_loss)
    x, y = task.first_batch(task.train, 24)
    assert y.min() == IGNORE_INDEX and (y == -1).sum() == 0  # dltips counts with -100 ...
    assert seen and min(seen) == -1  # ... and the Task's loss saw -1
    by_hand = F.cross_entropy(task.model(x).flatten(0, 1), makemore_like().tensors[1].flatten(), ignore_index=-1)
    assert torch.allclose(task.loss_fn(task.model(x), y), by_hand)
    default = Task(TinyLM(), makemore_like(), makemore_like(8, 1), kind="language-model", ignore_index=-1)
    assert torch.allclose(default.loss_fn(default.model(x), y), by_hand)  # the default loss ignores them too
    report = dltips.doctor(default, budget_s=20, only=["initialization", "unseen-tokens"], progress=False)
    found = {f.tip: f for f in report.findings}
    assert found["initialization"].status == "pass" and found["unseen-tokens"].status == "pass"
    counted = int((makemore_like().tensors[1] != -1).sum())  # the -1 targets are not counted as tokens
    assert f"among the {counted} training targets" in found["unseen-tokens"].message


def test_a_dict_of_the_forwards_named_inputs_is_passed_as_keywords():
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, VOCAB)

        def forward(self, input_ids, attention_mask=None):
            return {"logits": self.emb(input_ids) * attention_mask.unsqueeze(-1), "past": None}

    class Whole(nn.Module):  # takes the dict as one argument, as TabularModel does
        def forward(self, x):
            return x["cat"].float() @ torch.ones(3, 2)

    ids = torch.randint(0, VOCAB, (6, 5))
    named = [({"input_ids": ids[i], "attention_mask": torch.ones(5, dtype=torch.long)}, ids[i]) for i in range(6)]
    task = Task(Named(), named, named, kind="language-model")
    x, y = task.first_batch(task.train, 6)
    assert torch.equal(task.outputs(task.model, (x, y))[0], task.model.emb(ids))
    whole = [({"cat": torch.ones(3)}, 1) for _ in range(4)]
    assert Task(Whole(), whole, whole, n_classes=2).n_classes == 2


def test_a_hugging_face_causal_lm_built_from_a_config_is_a_task():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                                     eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (24, 9), generator=g)
    items = [({"input_ids": t[:-1], "attention_mask": torch.ones(8, dtype=torch.long)}, t[1:]) for t in tokens]
    task = Task(model, items[:16], items[16:], kind="language-model", batch_size=8)
    assert task.n_classes == VOCAB  # read from the ModelOutput's logits
    report = dltips.doctor(task, budget_s=30, only=["initialization", "error-gaps"], progress=False)
    statuses = {f.title: f.status for f in report.findings}
    assert statuses["The model does not see future tokens"] == "pass"  # GPT-2's causal mask, seen through **x
    assert any(f.tip == "initialization" and f.status == "pass" for f in report.findings)
