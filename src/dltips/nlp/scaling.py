"""Compute budgets for transformer language models: C = 6·N·D, compute-optimal sizes, FLOPs per token and MFU.

Training a dense transformer of N parameters on D tokens costs about C = 6·N·D
FLOPs: 2·N per token for the forward pass and 4·N for the backward pass
(Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1).
Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models", the
Chinchilla paper) found that for a fixed C the loss is lowest when N and D grow
in equal proportion, at about 20 tokens per parameter (their Table 3: 400M
parameters on 8.0B tokens, 70B on 1.4T). They also fitted a parametric loss,
L(N, D) = E + A/N^alpha + B/D^beta (their Approach 3); Besiroglu et al. 2024
("Chinchilla Scaling: A replication attempt") refitted it on data reconstructed
from the paper's Figure 4 and found the original fit inconsistent with
Approaches 1 and 2; the minimum of their refit agrees with them (24 tokens per
parameter at 1e19 FLOPs, 20 at 1e22, 16 at 1e26).

Both laws were fitted on MassiveText, with the Chinchilla tokenizer, for
transformer LMs of 70M to 16B parameters. Their predicted losses (nats per
token) are not comparable in absolute value to a character-level model, another
tokenizer or another dataset; only the allocation between N and D transfers,
roughly.

Only `flops_per_token` needs torch, and it imports it when called, so that
`dltips budget` answers without paying for `import torch`.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dltips.core.params import ParamError, instance, number, one_of, positive, positive_int

if TYPE_CHECKING:
    from torch import nn

FLOPS_PER_PARAM_TOKEN = 6  # forward 2·N + backward 4·N per token (Kaplan et al. 2020, section 2.1)
TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022, Table 3 (Approach 1): 20.0 to 21.6 tokens per parameter
ATTENTION_WIDTH_ATTRS = ("n_embd", "embed_dim", "hidden_size", "d_model")


@dataclass(frozen=True)
class LossLaw:
    """A fitted loss law L(N, D) = E + A/N^alpha + B/D^beta, in nats per token.

    Minimising it subject to C = 6·N·D gives (Hoffmann et al. 2022, section 3.3)
    N_opt = G·(C/6)^a and D_opt = (C/6)/N_opt, with a = beta/(alpha + beta)
    and G = (alpha·A / (beta·B))^(1/(alpha + beta)).
    """

    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str

    def loss(self, params: float, tokens: float) -> float:
        """Predicted loss (nats per token) of a model of `params` parameters trained on `tokens` tokens."""
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    @property
    def a(self) -> float:
        """Exponent of N_opt in C: N_opt ∝ C^a (b = 1 - a for D_opt)."""
        return self.beta / (self.alpha + self.beta)

    def optimal_params(self, flops: float) -> float:
        """The N that minimises this law's loss at a compute of `flops` = 6·N·D."""
        return self.G * (flops / FLOPS_PER_PARAM_TOKEN) ** self.a


CHINCHILLA = LossLaw("chinchilla", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28,
                     source="Hoffmann et al. 2022 (Chinchilla), Approach 3")
BESIROGLU = LossLaw("besiroglu", E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658,
                    source="Besiroglu et al. 2024, refit of Chinchilla's Approach 3")
LAWS = {law.name: law for law in (CHINCHILLA, BESIROGLU)}


@dataclass(frozen=True)
class Budget:
    """A training budget: N parameters, D tokens, C = 6·N·D FLOPs, and the loss `law` predicts for (N, D)."""

    params: float
    tokens: float
    flops: float
    tokens_per_param: float
    predicted_loss: float
    law: str = "chinchilla"

    def __str__(self) -> str:
        law = LAWS[self.law]
        return (
            f"{format_count(self.params)} parameters x {format_count(self.tokens)} tokens"
            f" = {self.flops:.3g} training FLOPs (C = 6·N·D)\n"
            f"{self.tokens_per_param:.3g} tokens per parameter (compute-optimal: about {TOKENS_PER_PARAM:g})\n"
            f"predicted loss {self.predicted_loss:.3f} nats/token under {law.source}"
            " (fitted on MassiveText; compare only with similar LMs)"
        )

    def nearby(self, factors: tuple[float, ...] = (1 / 4, 1 / 2, 1, 2, 4)) -> list[Budget]:
        """Budgets at the same compute with `factors` times the parameters (and 1/factor times the tokens)."""
        budgets = []
        for i, factor in enumerate(factors):
            params = self.params * positive(f"factors[{i}]", factor)
            budgets.append(_budget(params, self.flops / (FLOPS_PER_PARAM_TOKEN * params), self.flops, self.law))
        return budgets


def compute_budget(params: float | str | None = None, tokens: float | str | None = None,
                   flops: float | str | None = None, *, law: str = "chinchilla") -> Budget:
    """Complete a training budget with C = 6·N·D, or find the compute-optimal one.

    Give two of `params` (N), `tokens` (D) and `flops` (C) and the third follows
    from C = 6·N·D. Give one alone and the budget is the compute-optimal one
    through it: with law="chinchilla", D = 20·N (Hoffmann et al. 2022,
    "Training Compute-Optimal Large Language Models", Approaches 1 and 2, Table
    3); with law="besiroglu", the minimum of the Besiroglu et al. 2024 refit
    ("Chinchilla Scaling: A replication attempt") of the loss law under the
    constraint, N_opt = G·(C/6)^(beta/(alpha+beta)). All three may be given if
    they agree with C = 6·N·D within 1% (they are then kept as given).

    The predicted loss is Hoffmann's Approach-3 fit (E=1.69, A=406.4, B=410.7,
    alpha=0.34, beta=0.28) for "chinchilla" and the refit (E=1.82, A=482.01,
    B=2085.43, alpha=0.3478, beta=0.3658) for "besiroglu". Note that the
    Approach-3 fit's own minimum lies at more tokens per parameter than 20, so
    under "chinchilla" a nearby budget can predict a slightly lower loss than
    the 20-to-1 one; the refit has no such disagreement. Both were fitted on
    MassiveText for LMs of 70M to 16B parameters: the loss is not comparable in
    absolute value for another dataset, tokenizer or a character-level model.

    Counts may be numbers or strings such as "124M", "10B", "1.5T", "3e21".
    """
    one_of("law", law, sorted(LAWS))
    given = {name: positive(name, parse_count(value, name=name))
             for name, value in (("params", params), ("tokens", tokens), ("flops", flops)) if value is not None}
    if not given:
        raise ParamError("give two of params, tokens and flops to complete a budget, or one of them for the compute-optimal one")
    n, d, c = given.get("params"), given.get("tokens"), given.get("flops")
    if len(given) == 3:
        implied = FLOPS_PER_PARAM_TOKEN * n * d
        if abs(implied / c - 1) > 0.01:
            raise ParamError(f"params, tokens and flops disagree: 6·N·D = {implied:.4g} but flops = {c:.4g};"
                             " give only two of them")
        return _budget(n, d, c, law)
    if len(given) == 2:
        if c is None:
            c = FLOPS_PER_PARAM_TOKEN * n * d
        elif n is None:
            n = c / (FLOPS_PER_PARAM_TOKEN * d)
        else:
            d = c / (FLOPS_PER_PARAM_TOKEN * n)
        return _budget(n, d, c, law)
    n, d = _optimal_split(n, d, c, law)
    return _budget(n, d, c if c is not None else FLOPS_PER_PARAM_TOKEN * n * d, law)


def _optimal_split(params: float | None, tokens: float | None, flops: float | None, law: str) -> tuple[float, float]:
    """The compute-optimal (N, D) through the one of params, tokens or flops that is given."""
    if law == "chinchilla":  # D = 20·N, so C = 6·20·N²
        if flops is not None:
            params = math.sqrt(flops / (FLOPS_PER_PARAM_TOKEN * TOKENS_PER_PARAM))
        elif tokens is not None:
            params = tokens / TOKENS_PER_PARAM
        return params, TOKENS_PER_PARAM * params
    fit = LAWS[law]  # N = G·S^a and D = S^(1-a)/G, with S = C/6 = N·D
    if flops is not None:
        scaled = flops / FLOPS_PER_PARAM_TOKEN
    elif params is not None:
        scaled = (params / fit.G) ** (1 / fit.a)
    else:
        scaled = (tokens * fit.G) ** (1 / (1 - fit.a))
    params = fit.G * scaled**fit.a
    return params, scaled / params


def _budget(params: float, tokens: float, flops: float, law: str) -> Budget:
    if not all(math.isfinite(x) and x > 0 for x in (params, tokens, flops)):
        raise ParamError(f"the budget is out of floating-point range (params {params:.3g}, tokens {tokens:.3g},"
                         f" flops {flops:.3g}); check the units")
    return Budget(params=params, tokens=tokens, flops=flops, tokens_per_param=tokens / params,
                  predicted_loss=LAWS[law].loss(params, tokens), law=law)


_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}
_COUNT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?([kmbgtp]?)")


def parse_count(text: float | int | str, *, name: str = "count") -> float:
    """A count such as 124M, 10B, 1.5T, 3e21 or 2.5k, as a float; numbers pass through.

    Suffixes (any case): k = 1e3, M = 1e6, B or G = 1e9, T = 1e12, P = 1e15.
    Underscores and commas between digits are ignored ("124_000_000"). `name`
    is the argument named in the ParamError for a value that is not a count.
    """
    if not isinstance(text, str):
        return number(name, text, 0.0)
    match = _COUNT.fullmatch(text.strip().lower().replace("_", "").replace(",", ""))
    if match is None:
        raise ParamError(f"{name}: cannot read {text!r} as a count; expected a number with an optional suffix"
                         " k, M, B, T (e.g. '124M', '10B', '1.5T', '3e21')")
    mantissa, exponent, suffix = match.groups()
    value = float(mantissa) * 10.0 ** int(exponent or 0) * _SUFFIXES[suffix]
    if not math.isfinite(value):
        raise ParamError(f"{name} must be a finite count, got {text!r}")
    return value


def format_count(value: float) -> str:
    """A count with three significant digits and a suffix: 124M, 10B, 1.5T, 2.08k."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale * 0.9995:
            return f"{value / scale:.3g}{suffix}" if value < scale * 999.5 else f"{value / scale:.0f}{suffix}"
    return f"{value:.3g}"


@dataclass(frozen=True)
class FlopCount:
    """Training FLOPs per token of a transformer: 6·matmul_params + 12·attention_layers·d_attn·seq_len.

    `d_attn` is the attention width (heads x head size) when every counted
    layer has the same one, None when they differ or no layer was counted.
    """

    per_token: float
    matmul_params: int
    attention_layers: int
    d_attn: int | None
    seq_len: int


def flops_per_token(model: nn.Module, seq_len: int, *, include_attention: bool = True,
                    n_layers: int | None = None, d_attn: int | None = None) -> FlopCount:
    """Training FLOPs per token: 6 per matmul weight plus 12·d_attn·seq_len per attention layer.

    The matmul weights are those of nn.Linear modules, the input projections of
    nn.MultiheadAttention and Conv1D modules (Hugging Face's GPT-2 layer). An
    embedding lookup is no matmul and is not counted, but an output head whose
    weight is tied to the embedding is (once, as the head). Biases are left out.

    The attention term is the scores Q·K^T and the weighted sum of V, 4·seq_len·d_attn
    per token forward and 12 for forward plus backward: PaLM (Chowdhery et al.
    2022, appendix B) writes the total as 6·N + 12·L·H·Q·T. Kaplan et al. 2020
    (Table 1) list only the scores, 2·n_layer·n_ctx·d_attn forward. Causal
    masking is not discounted, following both.

    Attention layers are nn.MultiheadAttention modules (width embed_dim) and
    modules whose class name ends in "Attention" with an int attribute n_embd,
    embed_dim, hidden_size or d_model (nanoGPT's CausalSelfAttention, for
    one); an attention module inside another is not counted again. For other
    attention blocks pass `n_layers` and `d_attn` (both), which replace the
    detection.
    """
    from torch import nn

    instance("model", model, nn.Module, "a torch.nn.Module")
    seq_len = positive_int("seq_len", seq_len)
    if (n_layers is None) != (d_attn is None):
        raise ParamError("give both n_layers and d_attn (the attention width, heads x head size), or neither")
    matmul = _matmul_params(model)
    widths: list[int] = []
    if include_attention:
        if n_layers is not None:
            widths = [positive_int("d_attn", d_attn)] * positive_int("n_layers", n_layers)
        else:
            widths = _attention_widths(model)
            if not widths:
                warnings.warn("flops_per_token found no attention layer; pass n_layers= and d_attn= for a custom"
                              " attention block, or include_attention=False for a model without one", stacklevel=2)
    per_token = FLOPS_PER_PARAM_TOKEN * matmul + 12 * sum(widths) * seq_len
    width = widths[0] if widths and len(set(widths)) == 1 else None
    return FlopCount(per_token=float(per_token), matmul_params=matmul, attention_layers=len(widths), d_attn=width,
                     seq_len=seq_len)


def _matmul_params(model: nn.Module) -> int:
    """Weights used in a matmul: nn.Linear (MultiheadAttention's out_proj is one), in-projections, Conv1D."""
    from torch import nn

    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D" and _is_matrix(module.weight)):
            total += module.weight.numel()
        elif isinstance(module, nn.MultiheadAttention):
            if module.in_proj_weight is not None:
                total += module.in_proj_weight.numel()
            else:  # separate projections when kdim or vdim differ from embed_dim
                total += sum(w.numel() for w in (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight))
    return total


def _is_matrix(weight: object) -> bool:
    return getattr(weight, "ndim", 0) == 2


def _attention_widths(model: nn.Module) -> list[int]:
    """d_attn of each attention layer: MultiheadAttention's embed_dim, or a width attribute of a *Attention module."""
    from torch import nn

    counted: list[str] = []
    widths = []
    for name, module in model.named_modules():
        if any(name.startswith(parent + ".") or parent == "" for parent in counted):
            continue
        if isinstance(module, nn.MultiheadAttention):
            width = module.embed_dim
        elif type(module).__name__.endswith("Attention"):
            width = next((getattr(module, attr) for attr in ATTENTION_WIDTH_ATTRS
                          if isinstance(getattr(module, attr, None), int)), None)
            if width is None:
                continue
        else:
            continue
        counted.append(name)
        widths.append(width)
    return widths


def mfu(flops_per_token: float | FlopCount, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: the model's FLOPs per second over the hardware's peak, in [0, 1].

    PaLM (Chowdhery et al. 2022, section 4.1 and appendix B) defines MFU as the
    observed tokens per second times the model's FLOPs per token (6·N plus the
    attention term, no rematerialisation counted), divided by the peak FLOP/s
    of the hardware; it reports 46.2% for PaLM 540B. Give the throughput and
    the peak for the same set of devices (both per chip or both in total).
    """
    per_token = flops_per_token.per_token if isinstance(flops_per_token, FlopCount) else flops_per_token
    per_token = positive("flops_per_token", per_token)
    tokens_per_s = positive("tokens_per_s", tokens_per_s)
    peak_flops = positive("peak_flops", peak_flops)
    utilisation = per_token * tokens_per_s / peak_flops
    if utilisation > 1:
        raise ParamError(f"the model runs at {per_token * tokens_per_s:.3g} FLOP/s, above the peak {peak_flops:.3g};"
                         " give the throughput and the peak for the same devices (both per chip or both in total)")
    return utilisation
