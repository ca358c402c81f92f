"""Session: the watch, the first-batch checks, evaluations and the report that every adapter shares."""

import copy
import json
import math
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltips.integrations.session import Session, batch_task, infer_kind


def blobs(n=512, d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    return x, y


def mlp(seed=0, d=20, width=64, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, classes))


def train(session, model, x, y, steps=60, lr=1e-2, evaluate_every=15):
    """A hand-written loop with the session's calls where an adapter makes them."""
    optimizer = torch.optim.AdamW(model.parameters(), lr)
    session.start(model, optimizer)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        i = torch.randint(0, len(x), (32,), generator=g)
        if step == 0:
            session.check_first_batch(model, x[i], y[i])
        loss = F.cross_entropy(model(x[i]), y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        session.log(loss=loss)
        if (step + 1) % evaluate_every == 0:
            with torch.no_grad():
                out = model(x)
            session.log_eval({"valid_loss": F.cross_entropy(out, y), "valid_accuracy": (out.argmax(1) == y).float().mean()},
                             step + 1)
    return optimizer


def hooks_left(model, optimizer):
    modules = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return modules + len(optimizer._optimizer_step_pre_hooks) + len(optimizer._optimizer_step_post_hooks)


def test_a_healthy_run_gets_a_clean_report_with_every_part(tmp_path):
    x, y = blobs()
    model = mlp()
    session = Session(every=5, html=str(tmp_path / "r.html"), json=str(tmp_path / "r.json"), print_report=False)
    optimizer = train(session, model, x, y)
    report = session.finish(n_train=len(x))
    statuses = {f.tip: f.status for f in report.findings}
    assert statuses["initialization"] == "pass" and statuses["verify-transforms"] == "pass"
    assert statuses["activation-gradient-stats"] == "pass" and statuses["update-ratio"] == "pass"
    assert statuses["metric-divergence"] in ("pass", "info")
    assert not [f for f in report.findings if f.status in ("warn", "fail")]
    assert report.task["kind"] == "classification" and report.task["n_classes"] == 3
    assert report.task["n_params"] == sum(p.numel() for p in model.parameters()) and report.task["n_train"] == 512
    assert hooks_left(model, optimizer) == 0
    assert json.loads((tmp_path / "r.json").read_text())["summary"] == report.summary
    assert "activation-gradient-stats" in (tmp_path / "r.html").read_text()
    assert session.finish() is report  # a second call returns the same report


def test_first_batch_loss_is_the_one_check_initial_loss_measures_by_hand():
    x, y = blobs(n=64)
    model = mlp()
    (init, _) = Session(print_report=False).check_first_batch(model, x, y)
    with torch.no_grad():
        by_hand = F.cross_entropy(model(x), y).item()
    assert init.evidence["measured"] == pytest.approx(by_hand, rel=1e-5)
    assert init.evidence["n_items"] == 64 and init.evidence["measured_on"] == "the first training batch"
    assert init.evidence["range"][1] == pytest.approx(math.log(3))


def test_an_overconfident_head_is_flagged_on_the_first_batch():
    x, y = blobs(n=64)
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(30)
    (init, _) = Session(print_report=False).check_first_batch(model, x, y)
    assert init.status in ("warn", "fail") and init.evidence["measured"] > 2 * math.log(3)


def test_raw_inputs_are_flagged_on_the_first_batch():
    x, y = blobs(n=64)
    (_, inputs) = Session(print_report=False).check_first_batch(mlp(), x * 255, y)
    assert inputs.tip == "verify-transforms" and inputs.status == "warn"


class Unpicklable(nn.Module):
    """A model holding what cannot be deep-copied (as a LightningModule holds its Trainer)."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.dropout = nn.Dropout(0.5)
        self.lock = threading.Lock()

    def forward(self, x):
        return self.net(self.dropout(x))


def test_the_model_is_lent_not_copied_and_its_modes_are_put_back():
    model = Unpicklable()
    with pytest.raises(TypeError):
        copy.deepcopy(model)
    model.train()
    model.net[0].eval()  # a mixed state must survive exactly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = blobs(n=32)
    found = Session(print_report=False).check_first_batch(model, x, y)
    assert [f.status for f in found] == ["pass", "pass"]  # eval mode: dropout off, so the loss is as at init
    assert model.training and model.dropout.training and not model.net[0].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_language_model_dict_inputs_and_every_kind_are_inferred():
    assert infer_kind(torch.zeros(4, 7), torch.zeros(4, dtype=torch.long)) == ("classification", 7)
    assert infer_kind(torch.zeros(4, 5, 11), torch.zeros(4, 5, dtype=torch.long)) == ("language-model", 11)
    assert infer_kind(torch.zeros(4, 1), torch.tensor([0.0, 1.0, 1.0, 0.0])) == ("binary", None)
    assert infer_kind(torch.zeros(4, 3), torch.tensor([[0.0, 1, 1]] * 4)) == ("multilabel", None)
    assert infer_kind(torch.zeros(4, 1), torch.tensor([0.5, 1.5, 2.0, 0.0])) == ("regression", None)
    assert infer_kind(torch.zeros(4, 7), torch.zeros(4, dtype=torch.long), "classification", 9) == ("classification", 9)

    class TokenModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(13, 16), nn.Linear(16, 13)

        def forward(self, input_ids, attention_mask):
            return self.head(self.emb(input_ids)) * attention_mask[..., None]

    torch.manual_seed(0)
    ids = torch.randint(0, 13, (8, 6))
    task = batch_task(TokenModel(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids)
    assert (task.kind, task.n_classes, len(task.train)) == ("language-model", 13, 8)
    (init, _) = Session(print_report=False).check_first_batch(
        TokenModel(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids)
    assert init.status == "pass" and init.evidence["ln_v"] == pytest.approx(math.log(13))


def test_a_batch_that_cannot_be_read_is_a_skip_not_a_crash():
    x, y = blobs(n=16)
    (finding,) = Session(print_report=False).check_first_batch(mlp(), [x, x], y)
    assert finding.status == "skip" and "kind=" in finding.fix
    (wrong,) = Session(print_report=False).check_first_batch(mlp(), x, y, forward=lambda model, x: model(x[:, :5]))
    assert wrong.status == "skip"


def test_checks_off_and_bad_arguments():
    x, y = blobs(n=16)
    assert Session(checks=False, print_report=False).check_first_batch(mlp(), x, y) == []
    with pytest.raises(ValueError, match="kind"):
        Session(kind="segmentation")
    with pytest.raises(TypeError, match="checks"):
        Session(checks="yes")
    with pytest.raises(ValueError, match="every"):
        Session(every=0)


def test_a_dead_relu_layer_is_found_through_the_session():
    x, y = blobs()
    model = mlp()
    with torch.no_grad():
        model[0].bias.fill_(-20.0)  # every unit of the first ReLU is dead from the start
    session = Session(every=5, print_report=False)
    train(session, model, x, y, steps=30)
    report = session.finish()
    (stats,) = [f for f in report.findings if f.tip == "activation-gradient-stats"]
    assert stats.status in ("warn", "fail") and "1 (ReLU)" in stats.message


def test_the_report_is_printed_on_rank_zero(capsys):
    x, y = blobs()
    session = Session(every=5)
    train(session, mlp(), x, y, steps=10, evaluate_every=100)
    session.finish()
    assert "dltips report: run (classification, 3 classes" in capsys.readouterr().out


def test_validation_metrics_are_tracked_under_dltips_names_and_unknown_ones_only_logged():
    from dltips.integrations.session import validation_name

    assert validation_name("val_acc") == "valid_accuracy" and validation_name("eval_loss") == "valid_loss"
    assert validation_name("val/perplexity") == "valid_perplexity" and validation_name("valid_macro_f1") == "valid_macro_f1"
    assert validation_name("train_loss") is None and validation_name("epoch") is None
    assert validation_name("val_bleu") is None and validation_name("val_bleu", {"bleu": True}) == "valid_bleu"
    session = Session(every=5, sinks="memory", print_report=False)
    model = mlp()
    session.start(model, torch.optim.SGD(model.parameters(), 0.1))
    session.log_eval({"val_loss": 0.5, "val_acc": torch.tensor(0.8), "val_bleu": 3.0, "epoch": 1, "flag": True}, step=10)
    (record,) = session.tracker.records
    assert record.metrics == {"valid_loss": 0.5, "valid_accuracy": pytest.approx(0.8)}
    assert session.watch.evaluations == [(10, {"val_loss": 0.5, "val_acc": pytest.approx(0.8), "val_bleu": 3.0, "epoch": 1.0})]
    session.finish()


def test_an_objective_never_logged_is_a_skip_at_the_end_not_a_crash():
    x, y = blobs()
    session = Session(every=5, objective="valid_macro_f1", print_report=False)
    train(session, mlp(), x, y, steps=45)  # three evaluations of valid_loss and valid_accuracy only
    report = session.finish()
    (skip,) = [f for f in report.findings if f.tip == "metric-divergence"]
    assert skip.status == "skip" and "valid_macro_f1" in skip.message
    assert {f.tip for f in report.findings} >= {"activation-gradient-stats", "update-ratio"}
