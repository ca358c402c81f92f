"""The charlm demo: the stdlib corpus, the vocabulary, the split, the GPT model and its checks."""

import __future__

import inspect
import math

import pytest
import torch

import dltips
from dltips.demos.charlm import (
    EXCLUDED_DIRS,
    SIZES,
    UNKNOWN,
    CharGPT,
    CharVocab,
    _corpus,
    charlm_data,
    charlm_task,
    file_prose,
    load_corpus,
    stdlib_files,
    unigram_entropy,
    windows,
)
from dltips.nlp.tying import WARN_SHARE, count_parameters

SMALL = 20_000  # characters: enough for the split tests, quick to build


# ---------------------------------------------------------------------- corpus


def test_corpus_is_the_stdlib_prose_and_deterministic():
    text = load_corpus(SMALL)
    assert len(text) == SMALL
    assert text.startswith(inspect.cleandoc(__future__.__doc__))  # the first file in sorted order is __future__.py
    assert _corpus.__wrapped__(SMALL) == text  # built again, bypassing the cache
    assert load_corpus(1_000) == text[:1_000]
    words = text.split()
    assert "return" in words and "the" in words and len(set(words)) > 1_000


def test_stdlib_files_are_sorted_and_leave_out_tests_and_gui():
    files = stdlib_files()
    assert files == sorted(files) and "argparse.py" in files and "json/__init__.py" in files
    assert not any(set(path.split("/")[:-1]) & EXCLUDED_DIRS for path in files)
    assert not any(path.startswith(("test/", "idlelib/", "tkinter/")) for path in files)


def test_file_prose_keeps_docstrings_and_comments_in_line_order(tmp_path):
    good = tmp_path / "good.py"
    good.write_text('"""Module doc."""\n# first comment\ndef f():\n    """Function\n    doc."""\n'
                    '    return 1  # trailing\n#\nclass C:\n    """Class doc."""\n')
    assert file_prose(good) == ["Module doc.", "first comment", "Function\ndoc.", "trailing", "Class doc."]
    bad = tmp_path / "bad.py"
    bad.write_text('"""Doc."""\ndef f(:\n')
    assert file_prose(bad) == []


def test_load_corpus_rejects_bad_sizes():
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="max_chars"):
            load_corpus(bad)


# ---------------------------------------------------------------------- vocabulary


def test_vocab_round_trip_and_unknown_characters():
    text = "abracadabra" * 3 + "zq"  # z and q once each: below min_count=2
    vocab = CharVocab(text, min_count=2)
    assert vocab.chars == [UNKNOWN, "a", "b", "c", "d", "r"] and len(vocab) == 6
    ids = vocab.encode(text)
    assert ids.dtype == torch.long
    assert ids.tolist() == [vocab.chars.index(c) if c in vocab.chars else 0 for c in text]
    assert vocab.decode(ids) == text[:-2] + UNKNOWN * 2
    assert vocab.decode([1, 2, 5]) == "abr"
    with pytest.raises(ValueError, match="ids must lie"):
        vocab.decode([6])


def test_vocab_of_the_corpus_is_about_a_hundred_characters():
    text = load_corpus(SMALL)
    vocab = CharVocab(text)
    assert 60 <= len(vocab) <= 110 and vocab.chars[1:] == sorted(vocab.chars[1:])
    assert vocab.decode(vocab.encode("return x  # ok\n")) == "return x  # ok\n"
    assert 0 < unigram_entropy(vocab.encode(text), len(vocab)) < math.log(len(vocab))


def test_unigram_entropy_matches_the_formula():
    ids = torch.tensor([0, 0, 1, 2])  # p = 1/2, 1/4, 1/4
    assert unigram_entropy(ids, 5) == pytest.approx(1.5 * math.log(2))


# ---------------------------------------------------------------------- split


def test_split_is_90_by_position_and_no_two_windows_share_a_character():
    T = 16
    vocab, train, valid, test = charlm_data(seq_len=T, max_chars=SMALL, seed=3)
    ids = vocab.encode(load_corpus(SMALL))
    held_out = 18_000  # 90 % of 20,000 characters
    offset = next(o for o in range(T) if torch.equal(train.tensors[0][0], ids[o:o + T]))
    n_train = (held_out - offset - 1) // T
    starts = {"train": [offset + i * T for i in range(n_train)]}
    n_held = (SMALL - held_out) // (T + 1)  # 117 windows, a character apart
    starts["valid"] = [held_out + k * (T + 1) for k in range(0, n_held, 2)]
    starts["test"] = [held_out + k * (T + 1) for k in range(1, n_held, 2)]
    assert (len(train), len(valid), len(test)) == (n_train, 59, 58)
    covered = {}
    for name, data in (("train", train), ("valid", valid), ("test", test)):
        x, y = data.tensors
        assert torch.equal(x, torch.stack([ids[s:s + T] for s in starts[name]]))
        assert torch.equal(y, torch.stack([ids[s + 1:s + T + 1] for s in starts[name]]))  # next characters
        covered[name] = [p for s in starts[name] for p in range(s, s + T + 1)]  # inputs and targets
    assert max(covered["train"]) < held_out
    assert not set(covered["valid"]) & set(covered["test"])
    assert len(set(covered["valid"])) == len(covered["valid"])  # held-out windows do not overlap each other


def test_windows_need_one_more_id_for_the_last_target():
    x, y = windows(torch.arange(33), 16).tensors
    assert torch.equal(x, torch.arange(32).view(2, 16)) and torch.equal(y, torch.arange(1, 33).view(2, 16))
    x, y = windows(torch.arange(32), 16).tensors  # 32 ids: the second window would lack its last target
    assert torch.equal(x, torch.arange(16).view(1, 16)) and torch.equal(y, torch.arange(1, 17).view(1, 16))
    x, _ = windows(torch.arange(40), 16, offset=5).tensors
    assert torch.equal(x, torch.arange(5, 37).view(2, 16))
    with pytest.raises(ValueError, match="one window"):
        windows(torch.arange(16), 16)


def test_seed_moves_the_training_windows_only():
    _, train_a, valid_a, test_a = charlm_data(seq_len=16, max_chars=SMALL, seed=0)
    _, train_b, valid_b, test_b = charlm_data(seq_len=16, max_chars=SMALL, seed=1)
    assert torch.equal(valid_a.tensors[0], valid_b.tensors[0]) and torch.equal(test_a.tensors[1], test_b.tensors[1])
    assert not torch.equal(train_a.tensors[0][:4], train_b.tensors[0][:4])
    _, train_c, _, _ = charlm_data(seq_len=16, max_chars=SMALL, seed=0)
    assert torch.equal(train_a.tensors[0], train_c.tensors[0])


def test_split_too_small_for_a_window_is_refused():
    with pytest.raises(ValueError, match="raise max_chars"):
        charlm_data(seq_len=128, max_chars=2_000)  # 200 held-out characters: not two windows of 129


# ---------------------------------------------------------------------- model


def test_attention_is_causal():
    torch.manual_seed(0)
    model = CharGPT(20, n_layer=2, n_head=2, n_embd=16, seq_len=12).eval()
    x = torch.randint(20, (3, 12))
    changed = x.clone()
    changed[:, 7] = (x[:, 7] + 1) % 20
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert a.shape == (3, 12, 20)
    assert torch.equal(a[:, :7], b[:, :7])  # the past does not see the future
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_parameter_count_by_hand():
    V, L, d, T = 10, 2, 8, 16
    # per block: 2 LayerNorms (2d each), qkv (d*3d + 3d), attention out (d*d + d), MLP (d*4d + 4d, 4d*d + d)
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    assert block == 872
    tied = V * d + T * d + L * block + 2 * d  # token and position tables, blocks, final LayerNorm; head shared
    assert count_parameters(CharGPT(V, L, 2, d, T)) == tied == 1968
    untied = CharGPT(V, L, 2, d, T, tie=False)
    assert count_parameters(untied) == sum(p.numel() for p in untied.parameters()) == tied + V * d


def test_gpt2_initialisation_scales_the_residual_projections():
    torch.manual_seed(0)
    L = 4
    model = CharGPT(50, n_layer=L, n_head=4, n_embd=128, seq_len=32)
    residual = torch.cat([w.flatten() for b in model.blocks for w in (b.attn.proj.weight, b.mlp.proj.weight)])
    other = torch.cat([w.flatten() for b in model.blocks for w in (b.attn.qkv.weight, b.mlp.fc.weight)])
    target = 0.02 / math.sqrt(2 * L)
    # the sample std of n normal values has a relative standard error of 1 / sqrt(2n) (0.12 % here): allow 5 errors
    assert residual.std().item() == pytest.approx(target, rel=5 / math.sqrt(2 * residual.numel()))
    assert other.std().item() == pytest.approx(0.02, rel=5 / math.sqrt(2 * other.numel()))
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(not b.attn.qkv.bias.any() and not b.mlp.proj.bias.any() for b in model.blocks)
    assert model.head.weight is model.tok_emb.weight


def test_model_rejects_bad_configurations():
    with pytest.raises(ValueError, match="multiple of n_head"):
        CharGPT(10, 1, 3, 16, 8)
    with pytest.raises(ValueError, match="n_layer"):
        CharGPT(10, 0, 2, 16, 8)
    with pytest.raises(ValueError, match="longer than"):
        CharGPT(10, 1, 2, 16, 8)(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown size"):
        charlm_task("huge")


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_size_is_tied_and_recognised_as_tied(size):
    model = CharGPT(95, *SIZES[size], seq_len=128)
    finding, = dltips.check_weight_tying(model)
    assert finding.status == "pass"
    assert [(p["embedding"], p["head"]) for p in finding.evidence["tied"]] == [("tok_emb", "head")]


# ---------------------------------------------------------------------- the demo Task


def test_demo_task_passes_initialization_and_weight_tying(one_thread):
    task = charlm_task()
    assert task.kind == "language-model" and task.name == "charlm" and task.n_classes == len(charlm_data()[0])
    x, y = task.train[0]
    assert x.shape == y.shape == (128,) and torch.equal(x[1:], y[:-1])
    init, = dltips.check_initial_loss(task)
    assert init.status == "pass", init.message
    assert init.evidence["measured"] == pytest.approx(math.log(task.n_classes), abs=0.1)
    tying, = dltips.check_weight_tying(task.model)
    assert tying.status == "pass"


def test_untied_variant_is_flagged(one_thread):
    task = charlm_task(size="tiny", tie=False)
    finding, = dltips.check_weight_tying(task.model)
    # flagged either way; a warning only when tying would save WARN_SHARE of the parameters or more
    assert finding.status == ("warn" if finding.evidence["share"] >= WARN_SHARE else "info")
    assert finding.title.startswith("Output layer not tied")
    pair, = finding.evidence["untied"]
    assert (pair["embedding"], pair["head"], pair["parameters"]) == ("tok_emb", "head", task.n_classes * SIZES["tiny"][2])


def test_fit_lowers_the_validation_loss(one_thread):
    task = charlm_task(size="tiny", batch_size=8, seq_len=32)
    task.valid = torch.utils.data.Subset(task.valid, range(64))
    before = dltips.evaluate(task.model, task, task.valid)["valid_loss"]
    result = dltips.fit(task, epochs=1, max_steps=40, progress=False)
    after = result.history[-1]["valid_loss"]
    assert result.steps == 40
    assert before == pytest.approx(math.log(task.n_classes), abs=0.1)
    assert after < before - 0.8  # from ln V (4.55) to below the unigram entropy's neighbourhood


@pytest.mark.slow
def test_the_doctors_report_on_the_demo_is_clean(one_thread):
    """The doctor on the charlm demo, with a budget its plans fit in: the checks that read a language model
    differently from a classifier pass.

    Before the doctor read language models against the majority-token baseline, the capacity
    check and the error gaps warned on this healthy model: 70% next-character error, judged against zero.
    """
    tips = ("initialization", "overfit-tiny", "weight-tying", "unseen-tokens", "error-gaps")
    # a budget that covers these checks' plans (the short run is 1,000 steps) on one thread
    report = dltips.doctor(charlm_task(), budget_s=240, seed=0, device="cpu", progress=False, only=tips)
    flagged = [(f.tip, f.status, f.message) for f in report.findings if f.status in ("warn", "fail")]
    assert not flagged
    statuses = {f.tip: f.status for f in report.findings}
    for tip in tips:
        assert statuses[tip] == "pass", tip
