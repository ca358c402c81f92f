import math
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dltips.cli import main
from dltips.nlp.scaling import Budget, FlopCount, compute_budget, flops_per_token, mfu, parse_count

# Hoffmann et al. 2022, Table 3 (Approach 1): parameters, FLOPs, tokens of the compute-optimal model.
CHINCHILLA_TABLE_3 = [
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
]


# --- parse_count -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ("124M", 124_000_000), ("10B", 10_000_000_000), ("1.5T", 1_500_000_000_000), ("3e21", 3 * 10**21),
    ("2.5k", 2_500), ("124m", 124_000_000), (" 7 ", 7), ("124_000_000", 124_000_000), ("1,000", 1_000),
    ("2G", 2_000_000_000), ("1.5e3M", 1_500_000_000), (".5B", 500_000_000), (42, 42), (1e21, 1e21),
])
def test_parse_count_reads_numbers_and_suffixes(text, value):
    assert parse_count(text) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("text", ["12x", "", "M", "-5", "1.2.3", "10 B B", True, None, float("nan"), float("inf"), -3])
def test_parse_count_rejects_what_is_not_a_count(text):
    with pytest.raises(ValueError):
        parse_count(text)


# --- compute_budget ----------------------------------------------------------------------------------------------


def test_any_two_of_params_tokens_flops_give_the_third_by_6ND():
    budget = compute_budget(params="124M", tokens="10B")
    assert isinstance(budget, Budget)
    assert budget.flops == pytest.approx(6 * 124e6 * 10e9, rel=1e-12)  # 7.44e18
    assert budget.tokens_per_param == pytest.approx(10e9 / 124e6)
    from_flops_and_tokens = compute_budget(tokens=10e9, flops=7.44e18)
    assert from_flops_and_tokens.params == pytest.approx(124e6, rel=1e-12)
    from_flops_and_params = compute_budget(params=124e6, flops="7.44e18")
    assert from_flops_and_params.tokens == pytest.approx(10e9, rel=1e-12)


def test_all_three_are_accepted_only_when_they_agree_within_one_percent():
    kept = compute_budget(params="124M", tokens="10B", flops=7.5e18)  # 0.8% above 6ND
    assert (kept.params, kept.tokens, kept.flops) == (124e6, 10e9, 7.5e18)
    with pytest.raises(ValueError, match="disagree"):
        compute_budget(params="124M", tokens="10B", flops=7.6e18)  # 2.2% above 6ND


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give two of params, tokens and flops"),
    ({"params": 0, "tokens": "10B"}, "params must be a finite number > 0"),
    ({"params": "124M", "tokens": "ten"}, "cannot read 'ten'"),
    ({"flops": 1e21, "law": "kaplan"}, "law must be one of"),
])
def test_compute_budget_says_what_was_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_budget(**kwargs)


@pytest.mark.parametrize("params, flops, tokens", CHINCHILLA_TABLE_3)
def test_flops_alone_land_on_chinchilla_table_3(params, flops, tokens):
    # 20 tokens per parameter reproduces each row of Table 3 to within 5% in N and 8% in D (the 67B row's
    # 1.5T tokens is rounded: 5.76e23 / (6 * 67e9) = 1.43T).
    budget = compute_budget(flops=flops)
    assert budget.params == pytest.approx(params, rel=0.05)
    assert budget.tokens == pytest.approx(tokens, rel=0.08)
    assert budget.tokens_per_param == pytest.approx(20)
    assert budget.flops == pytest.approx(flops, rel=1e-12)
    # and the table's own rows satisfy C = 6ND to within its rounding
    assert compute_budget(params=params, tokens=tokens).flops == pytest.approx(flops, rel=0.05)


def test_chinchilla_law_predicts_the_published_fit_for_chinchilla_and_gopher():
    # L = 1.69 + 406.4 / N^0.34 + 410.7 / D^0.28, by hand: Chinchilla (70B, 1.4T) 1.937, Gopher (280B, 300B) 1.993;
    # the fit ranks Chinchilla below Gopher at (about) the same compute, as the paper found.
    assert compute_budget(params="70B", tokens="1.4T").predicted_loss == pytest.approx(1.9366, abs=1e-3)
    assert compute_budget(params="280B", tokens="300B").predicted_loss == pytest.approx(1.9933, abs=1e-3)
    refit = compute_budget(params="70B", tokens="1.4T", law="besiroglu")
    # 1.82 + 482.01 / 70e9^0.3478 + 2085.43 / 1.4e12^0.3658 = 1.82 + 482.01 / 5915 + 2085.43 / 27738 = 1.82 + 0.0815 + 0.0752
    assert refit.predicted_loss == pytest.approx(1.9767, abs=1e-3)


@pytest.mark.parametrize("flops", [1e18, 1e21, 5.76e23, 1e26])
def test_besiroglu_optimum_is_the_minimum_of_the_refit_at_fixed_compute(flops):
    def loss(n: float) -> float:  # the refit, written out here, along C = 6ND
        d = flops / (6 * n)
        return 1.82 + 482.01 / n**0.3478 + 2085.43 / d**0.3658

    grid = [10 ** (k / 2000) for k in range(2000 * 6, 2000 * 15)]  # 1e6 to 1e15 parameters, 0.1% steps
    best = min(grid, key=loss)
    budget = compute_budget(flops=flops, law="besiroglu")
    assert budget.params == pytest.approx(best, rel=2e-3)
    assert loss(best) - 1e-6 < budget.predicted_loss <= loss(best)  # the closed form is the exact minimum
    assert 15 < budget.tokens_per_param < 30  # the refit's optimum agrees with ~20 tokens per parameter


def test_one_of_params_or_tokens_alone_gives_the_optimal_partner_on_the_same_frontier():
    assert compute_budget(params="124M").tokens == pytest.approx(20 * 124e6)
    assert compute_budget(tokens="10B").params == pytest.approx(10e9 / 20)
    optimum = compute_budget(flops=1e22, law="besiroglu")
    assert compute_budget(params=optimum.params, law="besiroglu").tokens == pytest.approx(optimum.tokens, rel=1e-9)
    assert compute_budget(tokens=optimum.tokens, law="besiroglu").params == pytest.approx(optimum.params, rel=1e-9)


def test_nearby_keeps_the_compute_and_trades_params_for_tokens():
    budget = compute_budget(params="124M", tokens="10B")
    rows = budget.nearby()
    assert [row.params for row in rows] == pytest.approx([31e6, 62e6, 124e6, 248e6, 496e6])
    assert [row.tokens for row in rows] == pytest.approx([40e9, 20e9, 10e9, 5e9, 2.5e9])
    assert all(row.flops == budget.flops for row in rows)
    assert rows[2] == budget
    with pytest.raises(ValueError, match=r"factors\[1\] must be a finite number > 0"):
        budget.nearby((1, 0))


def test_budget_str_is_a_human_summary():
    text = str(compute_budget(params="124M", tokens="10B"))
    assert "124M parameters" in text and "10B tokens" in text and "7.44e+18" in text
    assert "80.6 tokens per parameter" in text and "3.061" in text and "Hoffmann" in text


# --- flops_per_token ---------------------------------------------------------------------------------------------


class MHABlock(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return self.down(F.gelu(self.up(x + self.attn(x, x, x, need_weights=False)[0])))


def mha_model(tied: bool = True) -> nn.Module:
    model = nn.Sequential(nn.Embedding(100, 16), MHABlock(16, 4, 64), MHABlock(16, 4, 64), nn.Linear(16, 100, bias=False))
    if tied:
        model[3].weight = model[0].weight
    return model


def test_hand_counted_two_layer_model():
    # Per block: in-projection 3*16*16 = 768, out-projection 16*16 = 256, MLP 16*64 + 64*16 = 2048: 3072.
    # Two blocks 6144, head 16*100 = 1600 (tied to the embedding, counted once), embedding 0: 7744.
    # Per token at seq_len 32: 6*7744 + 12 * 2 layers * 16 * 32 = 46464 + 12288 = 58752.
    count = flops_per_token(mha_model(), 32)
    assert count == FlopCount(per_token=58752.0, matmul_params=7744, attention_layers=2, d_attn=16, seq_len=32)
    assert flops_per_token(mha_model(tied=False), 32) == count  # the untied embedding is not a matmul
    assert flops_per_token(mha_model(), 32, include_attention=False).per_token == 46464


class CausalSelfAttention(nn.Module):
    """nanoGPT's layout: one fused qkv projection, an output projection, an `n_embd` attribute."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_embd, self.n_head = n_embd, n_head
        self.c_attn, self.c_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.n_head)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        return self.c_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C))


class GPTBlock(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(d), CausalSelfAttention(d, n_head), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, ctx: int, n_layer: int, d: int, n_head: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.h = nn.ModuleList(GPTBlock(d, n_head) for _ in range(n_layer))
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def test_gpt2_small_matches_its_published_size():
    with torch.device("meta"):  # no memory, no init time
        model = GPT(vocab=50257, ctx=1024, n_layer=12, d=768, n_head=12)
    assert sum(p.numel() for p in model.parameters()) == 124_439_808  # GPT-2 small's published count (tied head)
    count = flops_per_token(model, 1024)
    # 12 layers * 12 * 768^2 = 84,934,656 non-embedding matmul weights + the 50257 * 768 = 38,597,376 head.
    assert count.matmul_params == 84_934_656 + 38_597_376
    assert (count.attention_layers, count.d_attn) == (12, 768)
    assert count.per_token == 6 * 123_532_032 + 12 * 12 * 768 * 1024  # 854,438,400, ~0.85 GFLOP per token


def test_per_token_equals_what_torch_counts_in_a_forward_and_backward(one_thread):
    torch.manual_seed(0)
    model, batch, seq_len = GPT(vocab=50, ctx=16, n_layer=2, d=32, n_head=4), 3, 16
    idx = torch.randint(0, 50, (batch, seq_len))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    assert flops_per_token(model, seq_len).per_token == counter.get_total_flops() / (batch * seq_len)


class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner


class SelfAttention(nn.Module):  # a custom block around nn.MultiheadAttention: one layer, not two
    def __init__(self, d: int):
        super().__init__()
        self.embed_dim, self.mha = d, nn.MultiheadAttention(d, 2)


class MixerAttention(nn.Module):  # ends in "Attention" but says nothing of its width
    def __init__(self, d: int):
        super().__init__()
        self.proj = nn.Linear(d, d)


def test_attention_detection_nesting_overrides_and_warnings():
    nested = flops_per_token(Wrapper(nn.ModuleList([SelfAttention(8), SelfAttention(8)])), 10)
    assert (nested.attention_layers, nested.d_attn) == (2, 8)
    assert nested.per_token == 6 * 2 * (3 * 64 + 64) + 12 * 2 * 8 * 10
    with pytest.warns(UserWarning, match="no attention layer"):
        bare = flops_per_token(MixerAttention(8), 10)
    assert bare.per_token == 6 * 64 and bare.attention_layers == 0
    given = flops_per_token(MixerAttention(8), 10, n_layers=3, d_attn=8)
    assert given.per_token == 6 * 64 + 12 * 3 * 8 * 10 and (given.attention_layers, given.d_attn) == (3, 8)
    with pytest.raises(ValueError, match="both n_layers and d_attn"):
        flops_per_token(MixerAttention(8), 10, n_layers=3)
    with pytest.raises(ValueError, match="seq_len must be an int >= 1"):
        flops_per_token(mha_model(), 0)
    with pytest.raises(ValueError, match="torch.nn.Module"):
        flops_per_token("gpt2", 1024)


# --- mfu ---------------------------------------------------------------------------------------------------------


def test_mfu_reproduces_palm_540b():
    # PaLM (Chowdhery et al. 2022) Table 1 / Table 3: 540.35B parameters, L=118, H=48, Q=256, T=2048,
    # 238.3K tokens/s on 6144 TPU v4 chips of 275 TFLOP/s peak: 46.2% MFU.
    per_token = 6 * 540.35e9 + 12 * 118 * 48 * 256 * 2048
    assert mfu(per_token, 238.3e3, 6144 * 275e12) == pytest.approx(0.462, abs=5e-4)
    count = FlopCount(per_token=per_token, matmul_params=540_350_000_000, attention_layers=118, d_attn=12288, seq_len=2048)
    assert mfu(count, 238.3e3, 6144 * 275e12) == mfu(per_token, 238.3e3, 6144 * 275e12)


@pytest.mark.parametrize("args, message", [
    ((0, 1e3, 1e12), "flops_per_token must be a finite number > 0"),
    ((1e9, -1, 1e12), "tokens_per_s must be a finite number > 0"),
    ((1e9, 1e3, float("nan")), "peak_flops must be a finite number > 0"),
    ((1e9, 1e6, 1e12), "above the peak"),
])
def test_mfu_rejects_impossible_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        mfu(*args)


# --- the `dltips budget` command -----------------------------------------------------------------------------------


def test_cli_budget_prints_the_budget_and_the_trade_offs(capsys):
    assert main(["budget", "--params", "124M", "--tokens", "10B"]) == 0
    out = capsys.readouterr().out
    assert "7.44e+18" in out and "80.6 tokens per parameter" in out
    rows = [line.split() for line in out.splitlines() if re.fullmatch(r"\s+[\d.]+[kMBT]\s+[\d.]+[kMBT]\s.*", line)]
    assert [row[0] for row in rows] == ["31M", "62M", "124M", "248M", "496M"]
    assert rows[2][-1] == "yours" and rows[3][-1] == "compute-optimal"  # 248M ~ sqrt(7.44e18 / 120) = 249M
    assert main(["budget", "--flops", "1e21", "--law", "besiroglu"]) == 0
    out = capsys.readouterr().out
    assert "2.78B parameters" in out and "yours, compute-optimal" in out and "Besiroglu" in out


@pytest.mark.parametrize("argv, message", [
    (["budget"], "give two of params, tokens and flops"),
    (["budget", "--params", "12x"], "cannot read '12x'"),
    (["budget", "--params", "1", "--tokens", "1", "--flops", "7"], "disagree"),
])
def test_cli_budget_bad_input_exits_2_with_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("dltips: ") and err.count("\n") == 1


def test_cli_budget_does_not_import_torch():
    code = ("import sys; from dltips.cli import main; main(['budget', '--flops', '1e21']);"
            " assert 'torch' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
