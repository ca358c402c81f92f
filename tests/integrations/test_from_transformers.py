"""Task.from_transformers: tiny GPT-2 and BERT models built from configs (nothing downloaded) through the doctor."""

from __future__ import annotations

import pytest
import torch

import dltips
from dltips import Task, TaskError
from dltips.task import IGNORE_INDEX

transformers = pytest.importorskip("transformers")
VOCAB = 11


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                                     eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def texts(n, seed):
    """Token lists of 4 to 12 ids, a counting pattern so that a model can learn them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        start, length = int(torch.randint(1, VOCAB, (1,), generator=g)), int(torch.randint(4, 13, (1,), generator=g))
        out.append({"input_ids": [1 + (start + k) % (VOCAB - 1) for k in range(length)]})
    return out


def test_a_causal_lm_with_variable_length_text_is_a_task_whose_targets_are_the_next_tokens():
    model = gpt2().eval()  # no dropout: the two losses below see the same logits
    task = Task.from_transformers(model, texts(48, 0), texts(16, 1))
    assert task.kind == "language-model" and task.n_classes == VOCAB and task.name == "GPT2LMHeadModel"
    x, y = task.first_batch(task.train, 4)
    lengths = x["attention_mask"].sum(1)
    assert x["input_ids"].shape[1] == int(lengths.max())  # padded to the longest of the batch
    for row, n in enumerate(lengths.tolist()):
        assert y[row, :n - 1].tolist() == x["input_ids"][row, 1:n].tolist()  # the next token
        assert (y[row, n - 1:] == IGNORE_INDEX).all()  # nothing after the last token, nor in the padding
    logits = task.outputs(model, (x, y))[0]
    own = model(**x, labels=torch.where(x["attention_mask"].bool(), x["input_ids"], IGNORE_INDEX)).loss
    assert torch.allclose(task.loss_fn(logits, y), own, rtol=1e-5)  # dltips's loss is the one the model computes


def test_the_doctor_runs_on_the_causal_lm_and_its_mask_is_seen():
    task = Task.from_transformers(gpt2(), texts(48, 0), texts(16, 1))
    report = dltips.doctor(task, budget_s=40, only=["initialization", "overfit-tiny", "error-gaps", "unseen-tokens"],
                           progress=False)
    by_title = {f.title: f.status for f in report.findings}
    assert by_title["The model does not see future tokens"] == "pass"
    assert [f.status for f in report.findings if f.tip == "initialization"] == ["pass"]
    assert not [(f.tip, f.title) for f in report.findings if f.status == "fail"]


def test_a_data_collator_batches_the_items_as_the_trainer_would():
    seen = []

    def collator(features):  # pads to a multiple of 8 and sets the labels, as DataCollatorForLanguageModeling does
        seen.append(len(features))
        longest = -(-max(len(f["input_ids"]) for f in features) // 8) * 8
        ids = torch.zeros(len(features), longest, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, f in enumerate(features):
            ids[i, :len(f["input_ids"])], mask[i, :len(f["input_ids"])] = f["input_ids"], 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.where(mask.bool(), ids, IGNORE_INDEX)}

    task = Task.from_transformers(gpt2(), texts(24, 0), texts(8, 1), data_collator=collator, batch_size=8)
    x, y = task.first_batch(task.train, 8)
    assert seen and x["input_ids"].shape[1] % 8 == 0 and y.shape == x["input_ids"].shape
    assert dltips.fit(task, epochs=1, recipe=dltips.Recipe(one_cycle=False), progress=False).steps == 3


def test_a_sequence_classifier_reads_its_label_and_its_kind():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=3)
    model = transformers.BertForSequenceClassification(config).eval()
    items = [{"input_ids": row["input_ids"], "label": i % 3} for i, row in enumerate(texts(30, 0))]
    task = Task.from_transformers(model, items[:24], items[24:])
    assert task.kind == "classification" and task.n_classes == 3
    x, y = task.first_batch(task.train, 6)
    assert y.tolist() == [0, 1, 2, 0, 1, 2] and "attention_mask" in x
    assert torch.allclose(task.loss_fn(task.outputs(model, (x, y))[0], y), model(**x, labels=y).loss, rtol=1e-5)
    report = dltips.doctor(task, budget_s=30, only=["initialization"], progress=False)
    assert [f.status for f in report.findings] == ["pass"]
    regression = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=1))
    assert Task.from_transformers(regression, [{**i, "label": float(i["label"])} for i in items[:8]],
                                  [{**i, "label": 1.0} for i in items[:4]]).kind == "regression"
    with pytest.raises(TaskError, match="Task.kind"):
        Task.from_transformers(torch.nn.Linear(2, 2), items, items)
