import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dltips import Task
from dltips.data.toys import TinyTransformer
from dltips.nlp.emergent import (
    Probe,
    ScalingPoint,
    char_probes,
    check_emergent_scaling,
    measure_point,
    probe_trends,
    scaling_study,
    score_error,
)
from dltips.task import IGNORE_INDEX

CHARS = list(" \n_;:=,+.()[]{}0123456789abcdefghijklmnopqrstuvwxyz")
IDS = {c: i for i, c in enumerate(CHARS)}


def encode(text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One row: tokens are text[:-1], targets text[1:] (the character that follows each position)."""
    ids = torch.tensor([[IDS[c] for c in text]])
    return ids[:, :-1], ids[:, 1:]


def predicting(text: str) -> torch.Tensor:
    """Logits [1, T, V] whose argmax at position t is the character text[t]."""
    logits = torch.zeros(1, len(text), len(CHARS))
    for t, c in enumerate(text):
        logits[0, t, IDS[c]] = 1.0
    return logits


def probe(name: str) -> Probe:
    return {p.name: p for p in char_probes(CHARS)}[name]


def positions(name: str, text: str) -> list[int]:
    """The positions a probe counts, found by predicting every target correctly except one position at a time."""
    tokens, targets = encode(text)
    truth = text[1:]
    counted = []
    for t in range(len(truth)):
        wrong = truth[:t] + ("x" if truth[t] != "x" else "y") + truth[t + 1:]
        correct, total = probe(name)(predicting(wrong), tokens, targets)
        if correct < total:
            counted.append(t)
    return counted


# ---------------------------------------------------------------------- probes on hand-made strings


def test_char_probes_names_and_omissions():
    assert [p.name for p in char_probes(CHARS)] == ["next-char", "close-bracket", "keyword"]
    assert [p.name for p in char_probes(list(" abc()"))] == ["next-char", "close-bracket"]  # no keyword spelled
    assert [p.name for p in char_probes(list(" defr(]"))] == ["next-char", "keyword"]  # "def"; no matching pair
    with pytest.raises(ValueError, match="twice"):
        char_probes(list("abca"))
    with pytest.raises(ValueError, match="sequence of strings"):
        char_probes("abc")


def test_next_char_counts_every_target_but_ignored_ones():
    tokens, targets = encode("see the tree")  # targets "ee the tree": 11 characters, 5 of them "e"
    all_e = predicting("e" * 11)
    assert probe("next-char")(all_e, tokens, targets) == (5, 11)
    targets[0, :2] = IGNORE_INDEX  # the first two targets ("e", "e") are not scored: 3 "e" among 9
    assert probe("next-char")(all_e, tokens, targets) == (3, 9)


BRACKETS = "f(a[0], {b: (c)}) ]x)"
# index:    0123456789...: closers at 5 "]", 14 ")", 15 "}", 16 ")", 18 "]", 20 ")"; a closer at index i is the
# target of position i - 1. Open at 4: "( [" -> "]" counted. At 13: "( { (" -> ")" counted. At 14: "( {" -> "}"
# counted. At 15: "(" -> ")" counted. At 17 nothing is open ("]" not counted); the "]" at 18 is ignored, so at 19
# nothing is open either (")" not counted).


def test_close_bracket_positions_by_hand():
    assert positions("close-bracket", BRACKETS) == [4, 13, 14, 15]
    tokens, targets = encode(BRACKETS)
    truth = BRACKETS[1:]
    assert probe("close-bracket")(predicting(truth), tokens, targets) == (4, 4)
    one_wrong = truth[:14] + ")" + truth[15:]  # at position 14 the model closes "(" instead of "{"
    assert probe("close-bracket")(predicting(one_wrong), tokens, targets) == (3, 4)


def test_close_bracket_ignores_a_mismatched_closer_and_sees_only_the_window():
    # "a([x)]": at 3 the innermost open bracket is "[", so the target ")" is not counted; that ")" does not match
    # and is ignored, so at 4 "[" is still open and the target "]" is counted.
    assert positions("close-bracket", "a([x)]") == [4]
    assert positions("close-bracket", "x)]") == []  # their openers lie before the window
    assert positions("close-bracket", "{[()]}") == [2, 3, 4]


def test_close_bracket_rows_are_independent():
    tokens = torch.tensor([[IDS[c] for c in "((a"], [IDS[c] for c in "bbb"]])
    targets = torch.tensor([[IDS[c] for c in "(a)"], [IDS[c] for c in "bb)"]])  # row 1 has nothing open
    logits = torch.zeros(2, 3, len(CHARS))
    assert probe("close-bracket")(logits, tokens, targets) == (0, 1)


KEYWORDS = " return x\nimport y;_def z=redef(w) classes"
# " return": after the space, "re"->t, "ret"->u, "retu"->r, "retur"->n at positions 2, 3, 4, 5.
# "\nimport": "im"->p ... "impor"->t at 11, 12, 13, 14. "_def": "_" is part of an identifier, not counted.
# "=redef": "re" is followed by "d", not the "t" of return; the "def" inside follows "e": not counted.
# " classes": "cl"->a, "cla"->s, "clas"->s at 36, 37, 38; after "class" the word goes on, outside the keyword.


def test_keyword_positions_by_hand():
    assert positions("keyword", KEYWORDS) == [2, 3, 4, 5, 11, 12, 13, 14, 36, 37, 38]
    tokens, targets = encode(KEYWORDS)
    assert probe("keyword")(predicting(" " * (len(KEYWORDS) - 1)), tokens, targets) == (0, 11)
    assert probe("keyword")(predicting(KEYWORDS[1:]), tokens, targets) == (11, 11)


def test_keyword_needs_a_visible_separator_and_two_letters():
    assert positions("keyword", "return x") == []  # no character before "r" in the window
    assert positions("keyword", "(def)") == [2]  # "(" separates; "de"->f, and "def" is complete after that
    assert positions("keyword", " dx") == []  # "d" alone is not enough, and "dx" is no keyword's start
    custom = {p.name: p for p in char_probes(CHARS, keywords=("foo",))}["keyword"]
    tokens, targets = encode(" foo def")
    assert custom(torch.zeros(1, 7, len(CHARS)), tokens, targets) == (0, 1)  # only "fo"->o


def test_probe_validates_inputs_and_outputs():
    tokens, targets = encode("abc")
    with pytest.raises(ValueError, match="logits must be a float tensor"):
        probe("next-char")(torch.zeros(2, len(CHARS)), tokens, targets)
    with pytest.raises(ValueError, match="targets must be integer ids"):
        probe("next-char")(torch.zeros(1, 2, len(CHARS)), tokens, targets.float())
    bad = Probe("bad", lambda logits, tokens, targets: (3, 2))
    with pytest.raises(ValueError, match="0 <= correct <= total"):
        bad(torch.zeros(1, 2, len(CHARS)), tokens, targets)
    with pytest.raises(ValueError, match="non-empty string"):
        Probe("", lambda *a: (0, 0))


# ---------------------------------------------------------------------- measuring one size


class BiasLM(nn.Module):
    """The same logits at every position: `bias` (V parameters)."""

    def __init__(self, vocab: int, favourite: int | None = None, logit: float = 0.0):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab))
        if favourite is not None:
            with torch.no_grad():
                self.bias[favourite] = logit

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(*tokens.shape, -1) + 0.0 * tokens.unsqueeze(-1)


def text_task(model: nn.Module, text: str, length: int, batch_size: int = 2) -> Task:
    ids = torch.tensor([IDS[c] for c in text])
    n = (len(ids) - 1) // length
    x = torch.stack([ids[i * length:(i + 1) * length] for i in range(n)])
    y = torch.stack([ids[i * length + 1:(i + 1) * length + 1] for i in range(n)])
    data = TensorDataset(x, y)
    return Task(model, data, data, kind="language-model", n_classes=len(CHARS), batch_size=batch_size)


def test_measure_point_loss_scores_and_compute():
    text = "def f(x): return (x) \n"  # 22 characters: 3 windows of 7 tokens, targets text[1:22]
    targets = text[1:22]
    v = len(CHARS)
    p = math.exp(2.0) / (math.exp(2.0) + v - 1)  # the model's probability of " ", every other character (1-p)/(v-1)
    k = targets.count(" ")
    expected_loss = -(k * math.log(p) + (21 - k) * math.log((1 - p) / (v - 1))) / 21
    model = BiasLM(v, favourite=IDS[" "], logit=2.0)
    point = measure_point(model, text_task(model, text, 7), char_probes(CHARS), tokens_seen=1000, size="bias")
    assert point.valid_loss == pytest.approx(expected_loss, rel=1e-6)
    assert point.valid_tokens == 21
    assert point.totals["next-char"] == 21 and point.scores["next-char"] == pytest.approx(k / 21)  # always " "
    # Windows (tokens -> targets) "def f(x" -> "ef f(x)", "): retu" -> ": retur", "rn (x) " -> "n (x) \n".
    # Closers: after "def f(x" (window 1, position 6) and after "rn (x" (window 3, position 3), both closing "(".
    # Keyword letters: window 2, after " re", " ret", " retu"; window 1's "def" has no visible separator before it.
    assert point.totals["close-bracket"] == 2 and point.scores["close-bracket"] == 0.0
    assert point.totals["keyword"] == 3 and point.scores["keyword"] == 0.0
    assert point.params == v and point.tokens == 1000 and point.flops == 6 * v * 1000
    assert model.training  # restored


def test_measure_point_counts_a_tied_matrix_once_and_limits_batches():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(len(CHARS), 4)
            self.head = nn.Linear(4, len(CHARS), bias=False)
            self.head.weight = self.embed.weight

        def forward(self, tokens):
            return self.head(self.embed(tokens))

    model = Tied()
    point = measure_point(model, text_task(model, "abcdefghijklmnopqrstuvwxyz", 5), char_probes(CHARS), 10, "tied",
                          max_batches=1)
    assert point.params == len(CHARS) * 4
    assert point.valid_tokens == 2 * 5  # one batch of two windows


def test_measure_point_validates():
    model = BiasLM(len(CHARS))
    task = text_task(model, "abcdefghijk", 5)
    with pytest.raises(ValueError, match="tokens_seen"):
        measure_point(model, task, char_probes(CHARS), 0, "s")
    with pytest.raises(ValueError, match="non-empty sequence of Probe"):
        measure_point(model, task, [], 10, "s")
    with pytest.raises(ValueError, match="unique"):
        measure_point(model, task, [probe("next-char"), probe("next-char")], 10, "s")


# ---------------------------------------------------------------------- verdicts on synthetic sizes


def points(scores: dict[str, list[float]], losses: list[float], n: int = 1000) -> list[ScalingPoint]:
    sizes = len(losses)
    return [ScalingPoint(f"s{i}", params=10 ** (i + 3), tokens=10_000, flops=6.0 * 10 ** (i + 3) * 10_000,
                         valid_loss=losses[i], scores={k: v[i] for k, v in scores.items()},
                         totals={k: n for k in scores}) for i in range(sizes)]


FALLING = [2.0, 1.8, 1.6]


def by_tip(findings):
    return {f.tip: f for f in findings}


def test_improving_probes_pass_both_tips():
    found = by_tip(check_emergent_scaling(points({"a": [0.3, 0.4, 0.5], "b": [0.6, 0.7, 0.8]}, FALLING)))
    assert found["emergent-scaling"].status == "pass"
    assert found["logloss-downstream"].status == "pass"
    trends = found["emergent-scaling"].evidence["trends"]
    assert trends["a"]["trend"] == "improves" and trends["a"]["rho"] == pytest.approx(1.0)


def test_flat_probe_is_a_plateau():
    found = by_tip(check_emergent_scaling(points({"a": [0.3, 0.4, 0.5], "flat": [0.40, 0.41, 0.40]}, FALLING)))
    assert found["emergent-scaling"].status == "warn"
    assert "flat (plateau)" in found["emergent-scaling"].title
    assert found["logloss-downstream"].status == "info"


def test_opposite_probe_warns_on_both_tips():
    found = by_tip(check_emergent_scaling(points({"a": [0.3, 0.4, 0.5], "inverse": [0.5, 0.45, 0.4]}, FALLING)))
    assert found["emergent-scaling"].status == "warn"
    assert found["logloss-downstream"].status == "warn"
    trend = found["emergent-scaling"].evidence["trends"]["inverse"]
    assert trend["trend"] == "opposite" and trend["drop_from"] == "s0"
    assert trend["rho"] == pytest.approx(-1.0)


def test_a_fall_after_the_best_size_is_opposite_only_while_the_loss_falls():
    late = probe_trends(points({"a": [0.3, 0.5, 0.35]}, FALLING))["a"]
    assert late.trend == "opposite" and late.drop_from == "s1"
    assert late.rho == pytest.approx(0.5)  # ranks 1, 3, 2 against 1, 2, 3: 1 - 6 * 2 / (3 * 8)
    # The loss rises from s1 to s2 as well: the score follows the loss there. The gain from s0 (0.30 -> 0.35 over
    # 1000 positions, 2.4 standard errors) still counts.
    assert probe_trends(points({"a": [0.3, 0.5, 0.35]}, [2.0, 1.6, 1.9]))["a"].trend == "improves"


def test_noise_threshold_by_hand():
    # 400 positions. First 200/400: p = 200.5/401 = 0.5, se = sqrt(0.25/400) = 0.025.
    # Last 226/400: p = 226.5/401 = 0.564838, se = 0.024789, noise = hypot = 0.035206, 2 noise = 0.07041 > 0.065.
    # Last 230/400: p = 230.5/401 = 0.574813, se = 0.024719, noise = 0.035157, 2 noise = 0.07031 < 0.075.
    assert score_error(200, 400) == pytest.approx(0.025, abs=1e-6)
    assert score_error(226, 400) == pytest.approx(0.024789, abs=1e-6)
    below = probe_trends(points({"a": [0.5, 0.53, 0.565]}, FALLING, n=400))["a"]
    above = probe_trends(points({"a": [0.5, 0.53, 0.575]}, FALLING, n=400))["a"]
    assert below.trend == "plateau" and below.noise == pytest.approx(0.035206, abs=1e-5)
    assert above.trend == "improves" and above.z == pytest.approx(0.075 / 0.035157, rel=1e-4)


def test_jump_is_info_and_saturated_passes():
    losses = [2.0, 1.9, 1.8, 1.7]
    found = by_tip(check_emergent_scaling(points({"a": [0.05, 0.055, 0.06, 0.5]}, losses)))
    assert found["emergent-scaling"].status == "info"
    assert found["emergent-scaling"].evidence["trends"]["a"]["jump_at"] == "s3"
    assert found["logloss-downstream"].status == "pass"
    # A jump in the first step is no emergence: nothing was flat before it.
    assert probe_trends(points({"a": [0.0, 0.076, 0.099]}, FALLING, n=303))["a"].trend == "improves"
    assert probe_trends(points({"a": [1.0, 1.0, 0.999]}, FALLING))["a"].trend == "saturated"
    # Headroom is judged on the best score: 1 - 0.995 = 0.005 is below 2 standard errors of the change (0.0101 here),
    # though 1 - 0.985 (the first score) is not.
    assert probe_trends(points({"a": [0.985, 0.995, 0.99]}, FALLING))["a"].trend == "saturated"
    assert probe_trends(points({"a": [0.9, 0.9, 0.9]}, FALLING))["a"].trend == "plateau"


def test_skips_and_info():
    two = check_emergent_scaling(points({"a": [0.3, 0.5]}, [2.0, 1.5]))
    assert [(f.tip, f.status) for f in two] == [("emergent-scaling", "skip"), ("logloss-downstream", "skip")]
    flat_loss = check_emergent_scaling(points({"a": [0.3, 0.4, 0.5]}, [2.0, 1.995, 1.99]))
    assert [f.status for f in flat_loss] == ["info", "info"]
    no_positions = points({"a": [0.3, 0.4, 0.5], "b": [0.1, 0.1, 0.1]}, FALLING)
    no_positions[1].totals["b"] = 0
    found = by_tip(check_emergent_scaling(no_positions))
    assert found["emergent-scaling"].status == "pass"  # "b" is left out, "a" improves
    assert found["emergent-scaling"].evidence["trends"]["b"]["trend"] == "no-positions"


def test_points_are_ordered_by_compute_and_figures_follow():
    shuffled = points({"a": [0.3, 0.4, 0.5]}, FALLING)[::-1]
    finding = check_emergent_scaling(shuffled)[0]
    lines = [f for f in finding.figures if f["kind"] == "lines"]
    assert lines[0]["x"] == [6e7, 6e8, 6e9] and lines[0]["xlog"] is True
    assert lines[0]["series"] == {"a": [0.3, 0.4, 0.5]}
    assert lines[1]["series"] == {"validation loss (nats/token)": FALLING}
    table = next(f for f in finding.figures if f["kind"] == "table")
    assert [row[0] for row in table["rows"]] == ["s0", "s1", "s2"]
    for f in check_emergent_scaling(shuffled):
        json.dumps(f.to_dict(), allow_nan=False)


def test_scaling_point_and_check_validate():
    with pytest.raises(ValueError, match="same probes"):
        ScalingPoint("s", 10, 10, 600.0, 1.0, scores={"a": 0.5}, totals={})
    with pytest.raises(ValueError, match=r"scores\['a'\] \(a share\) must be a finite number >= 0 and <= 1"):
        ScalingPoint("s", 10, 10, 600.0, 1.0, scores={"a": 1.5}, totals={"a": 4})
    with pytest.raises(ValueError, match="params of size 's' must be a finite number > 0"):
        ScalingPoint("s", 0, 10, 600.0, 1.0)
    with pytest.raises(ValueError, match="distinct size names"):
        check_emergent_scaling([points({"a": [0.3]}, [2.0])[0]] * 3)
    with pytest.raises(ValueError, match="sequence of ScalingPoint"):
        check_emergent_scaling([1, 2, 3])


def test_rule_on_binomial_draws():
    """A seeded version of the module docstring's calibration: flat, rising and falling probes over 4 sizes."""
    rng = np.random.default_rng(0)

    def trends(true: list[float], trials: int = 300) -> dict[str, float]:
        counts: dict[str, int] = {}
        for _ in range(trials):
            drawn = [rng.binomial(500, p) / 500 for p in true]
            name = probe_trends(points({"a": drawn}, [2.0, 1.8, 1.6, 1.4], n=500))["a"].trend
            counts[name] = counts.get(name, 0) + 1
        return {k: v / trials for k, v in counts.items()}

    flat = trends([0.4] * 4)
    assert flat.get("opposite", 0) < 0.04 and flat["plateau"] > 0.9
    rising = trends([0.30, 0.37, 0.44, 0.50])
    assert rising.get("improves", 0) + rising.get("jump", 0) > 0.97
    assert trends([0.5, 0.47, 0.43, 0.40]).get("opposite", 0) > 0.6


# ---------------------------------------------------------------------- a real tiny study


def python_like(lines: int, seed: int) -> str:
    """Synthetic Python-like text with nested brackets and the keywords def, return, import and while."""
    rng = random.Random(seed)
    names = ["x", "y", "val", "item", "data", "n"]

    def expr(depth: int) -> str:
        r = rng.random()
        if depth > 2 or r < 0.4:
            return rng.choice(names)
        open_, sep, close = rng.choice([("(", " + ", ")"), ("[", ", ", "]"), ("{", ": ", "}")])
        return open_ + expr(depth + 1) + sep + expr(depth + 1) + close

    out = []
    for _ in range(lines):
        r = rng.random()
        if r < 0.25:
            out.append(f"def {rng.choice(names)}({rng.choice(names)}):")
        elif r < 0.5:
            out.append(f"    return {expr(0)}")
        elif r < 0.65:
            out.append(f"import {rng.choice(names)}")
        elif r < 0.8:
            out.append(f"while {expr(0)}:")
        else:
            out.append(f"    {rng.choice(names)} = {expr(0)}")
    return "\n".join(out) + "\n"


def test_scaling_study_trains_and_measures_each_size(one_thread):
    text = python_like(1500, seed=0)
    ids = torch.tensor([IDS[c] for c in text])
    length, n_train, n_valid = 16, 320, 48

    def windows(start: int, n: int) -> TensorDataset:
        x = torch.stack([ids[start + i * length:start + (i + 1) * length] for i in range(n)])
        y = torch.stack([ids[start + i * length + 1:start + (i + 1) * length + 1] for i in range(n)])
        return TensorDataset(x, y)

    train, valid = windows(0, n_train), windows(n_train * length + 1, n_valid)
    widths = {"tiny": 4, "small": 8, "medium": 16}
    built = {}

    def make_task(size: str) -> Task:
        model = TinyTransformer(len(CHARS), length, dim=widths[size], heads=2)
        built[size] = sum(p.numel() for p in model.parameters())
        return Task(model, train, valid, kind="language-model", batch_size=32, name=size)

    study = scaling_study(make_task, list(widths), steps=15, probes=char_probes(CHARS))
    assert [p.size for p in study] == ["tiny", "small", "medium"]
    for point in study:
        assert point.params == built[point.size]
        assert point.tokens == 15 * 32 * length
        assert point.flops == 6 * point.params * point.tokens
        assert point.valid_tokens == n_valid * length
        assert point.valid_loss < math.log(len(CHARS))  # trained: below a uniform guess
        assert set(point.scores) == {"next-char", "close-bracket", "keyword"}
        assert point.totals["keyword"] > 0 and point.totals["close-bracket"] > 0
    assert study[0].valid_loss > study[-1].valid_loss
    findings = check_emergent_scaling(study)
    assert [f.tip for f in findings] == ["emergent-scaling", "logloss-downstream"]
    assert all(f.status in ("pass", "warn", "info") for f in findings)
    with pytest.raises(ValueError, match="must not repeat"):
        scaling_study(make_task, ["tiny", "tiny"], 1, char_probes(CHARS))
