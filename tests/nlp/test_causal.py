"""A language model that reads the tokens it predicts fails the causal-leak probe, naming the positions."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dltips import Task
from dltips.nlp.causal import check_causal_leak

sys.path.insert(0, str(Path(__file__).parents[1] / "calibration"))
import causes_model  # noqa: E402
from zoo import HEALTHY  # noqa: E402


@pytest.mark.parametrize("make", [causes_model.unmasked_transformer_task, causes_model.bidirectional_lstm_task])
def test_a_model_that_sees_the_future_fails_with_the_positions(make):
    (finding,) = check_causal_leak(make())
    assert finding.status == "fail" and finding.evidence["cause"] == "causal-leak"
    t = finding.evidence["leaking_cut"]
    assert finding.evidence["leaking_positions"] == list(range(t + 1))  # every position before the cut reads ahead


@pytest.mark.parametrize("make", [causes_model.lstm_lm_task, HEALTHY["transformer-lm"], HEALTHY["count-lm"]])
def test_causal_models_pass_with_no_output_moved(make):
    (finding,) = check_causal_leak(make())
    assert finding.status == "pass" and max(finding.evidence["max_change"].values()) == 0.0


class LooksOneAhead(nn.Module):
    """Only the second-to-last position reads ahead: its logits are the embedding of the last token."""

    def __init__(self, vocab):
        super().__init__()
        self.embed = nn.Embedding(vocab, vocab)

    def forward(self, ids):
        ahead = torch.cat([ids[:, 1:], ids[:, -1:]], 1)
        out = self.embed(ids)
        out[:, -2] = self.embed(ahead)[:, -2]
        return out


def test_a_leak_at_one_position_is_found_there():
    tokens = torch.randint(0, 11, (16, 21), generator=torch.Generator().manual_seed(0))
    data = TensorDataset(tokens[:, :-1], tokens[:, 1:])
    (finding,) = check_causal_leak(Task(LooksOneAhead(11), data, data, kind="language-model"))
    assert finding.status == "fail"
    assert finding.evidence["leaking_cut"] == 18 and finding.evidence["leaking_positions"] == [18]


def test_targets_that_are_not_the_next_tokens_and_other_kinds_are_skipped():
    tokens = torch.randint(0, 11, (16, 20), generator=torch.Generator().manual_seed(0))
    tagged = TensorDataset(tokens, torch.randint(0, 11, (16, 20), generator=torch.Generator().manual_seed(1)))
    assert check_causal_leak(Task(nn.Embedding(11, 11), tagged, tagged, kind="language-model"))[0].status == "skip"
    assert check_causal_leak(HEALTHY["digits-mlp"]())[0].status == "skip"
