"""Downstream probes across model sizes: tips `logloss-downstream` and `emergent-scaling`.

The validation log-loss of a language model falls smoothly and predictably as
training compute grows (Kaplan et al. 2020, "Scaling Laws for Neural Language
Models"), and a lower loss usually goes with better downstream results. A
particular task need not follow: Wei et al. 2022 ("Emergent Abilities of Large
Language Models") show tasks that stay at chance over a range of sizes and then
jump, and others that get worse. Schaeffer et al. 2023 ("Are Emergent Abilities
of Large Language Models a Mirage?") show that much of the suddenness comes
from the metric: an all-or-nothing score such as exact match turns a smooth
gain in per-token probability into a flat line followed by a jump. The advice
is therefore to track tasks separately across sizes, next to the loss.

The parts:

- `Probe`: a named function `(logits[B,T,V], tokens[B,T], targets[B,T]) ->
  (correct, total)` that scores a model's predictions on the positions it cares
  about. `char_probes(chars)` builds three for a character-level model:
  "next-char", "close-bracket" and "keyword".
- `ScalingPoint`: one trained size, with its parameters, tokens seen, training
  compute, validation loss and probe scores. `measure_point` evaluates a model
  on a task's validation set; `scaling_study` trains each size with
  `dltips.fit` and measures it.
- `check_emergent_scaling(points)`: the two findings, with the per-probe curves
  against compute.

Noise. A probe score is a proportion of `total` positions, so its binomial
standard error is sqrt(p(1-p)/n); it is computed with p = (correct + 0.5) /
(total + 1) so that a score of exactly 0 or 1 still has a non-zero error. A
change between two sizes is "beyond noise" when it exceeds Z = 2 standard
errors of the difference, sqrt(se_a² + se_b²). This treats the two scores as
independent samples; every size is scored on the same validation positions, so
the true noise of a difference is smaller and the rule is conservative: it
calls "opposite" only on a clear fall and may call a small real gain a plateau.
The loss "falls clearly" when it drops by at least LOSS_FALL = 0.02 nats/token
from the smallest to the largest compute (all sizes see the same tokens, so the
difference between two sizes' mean losses is much less noisy than either).

Trends, per probe, over the sizes ordered by training compute:

- "opposite": the score at the largest compute is below an earlier size's by
  more than Z_OPPOSITE = 2.5 standard errors while the loss fell by at least
  LOSS_FALL between the two (it moves against the loss). The stricter Z is
  because the best of several earlier sizes is compared.
- "improves": last minus first is above Z standard errors; "jump" when, in
  addition, one step between neighbouring sizes holds at least JUMP_SHARE of
  the gain, it is not the first step, and the scores before it are within
  noise of the first (flat over at least two sizes, then a rise: the
  emergent-looking shape).
- "saturated": no gain beyond noise, but the best score is too close to 1 for
  one to be measurable (1 - best < Z standard errors of last minus first).
- "plateau": none of these while the loss falls clearly.

Verdicts. `emergent-scaling` warns when a probe plateaus or moves opposite to
the loss, is "info" when one jumps, and passes when all improve or are
saturated. `logloss-downstream` reports Spearman's rank correlation between
(-loss) and each score across sizes; it warns when a probe moves opposite to
the loss, passes when every probe improves (or is saturated), and is "info"
when some stay flat. Both need at least MIN_SIZES = 3 sizes ("skip" otherwise)
and are "info" when the loss itself does not fall clearly.

Calibration (2-core CPU; measured with this module's rule).
- Synthetic points, 4 sizes with a falling loss, each score a binomial draw
  over n = 500 positions, 5,000 trials per curve (independent draws, so
  noisier than real paired scores):
    flat at 0.40:                 plateau 96.0%, opposite 1.7%, improves/jump 2.3%
    flat at 0.02:                 plateau 96.8%, opposite 1.3%, improves/jump 1.9%
    flat at 0.99:                 saturated 97.4%, opposite 0.5%, improves/jump 2.1%
    rising 0.30, 0.37, 0.44, 0.50: improves 98.0%, jump 2.0%
    falling 0.50, 0.47, 0.43, 0.40: opposite 78.6%, plateau 21.4%
    0.05, 0.05, 0.06, 0.40:        jump 90.3%, improves 9.7%
  With Z_OPPOSITE = Z = 2 the flat curve at 0.40 was called opposite in 5.8%
  of trials (the best of three earlier sizes is compared), hence 2.5; with
  "saturated" judged on the first score instead of the best, 17% of the
  curves flat at 0.99 were called plateaus.
- A real study: TinyTransformer character models of widths 8, 16, 32 and 64
  (1.7k to 56k parameters), 200 steps of 32 windows of 32 characters of
  synthetic Python-like text (def/return/import/while lines, nested brackets;
  the generator is `python_like` in tests/nlp/test_emergent.py), validation on
  6,400 characters, seeds 0, 1, 2. The loss fell from 1.34-1.39 to 0.65-0.70
  nats/token; next-char rose 0.50-0.54 -> 0.74-0.76, close-bracket 0.13-0.22
  -> 0.94-0.95 (256 to 303 positions), keyword 0.58-0.67 -> 1.00 (574 to 615
  positions): "improves" for all three at every seed (z 17 to 34), both tips
  "pass". A fourth probe that cannot be learnt beyond chance (the first letter
  of a name drawn at random from six after "def ", 64 to 66 positions; chance
  is about 1/6) came out "jump" (0.00, 0.08, 0.05, 0.18), "improves" (0.00,
  0.29, 0.12, 0.17) and "plateau" (0.05, 0.14, 0.17, 0.13) on the three seeds:
  with some 65 positions a probe's argmax accuracy moves by 0.1 between sizes
  by chance, so probes need hundreds of positions per size to be read.
"""

from __future__ import annotations

import functools
import keyword
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dltips.core.params import ParamError, fraction, instance, int_at_least, number, optional_int, positive, positive_int
from dltips.core.state import eval_mode
from dltips.findings import Finding
from dltips.monitor.curves import spearman
from dltips.nlp.scaling import FLOPS_PER_PARAM_TOKEN, format_count
from dltips.nlp.tying import count_parameters
from dltips.task import IGNORE_INDEX, Task
from dltips.training.fit import Recipe, fit

TIP_EMERGENT = "emergent-scaling"
TIP_LOGLOSS = "logloss-downstream"

Z = 2.0  # standard errors of a difference that count as "beyond noise"
Z_OPPOSITE = 2.5  # for a fall from the best earlier size: stricter, since the best of several is compared
LOSS_FALL = 0.02  # nats/token: the loss "falls clearly" across sizes when it drops at least this much
MIN_SIZES = 3  # fewer sizes give no curve to judge
JUMP_SHARE = 0.75  # share of the total gain made in one step between neighbouring sizes for a "jump"

KEYWORDS = tuple(word for word in keyword.kwlist if len(word) >= 3)  # Python's keywords of 3 letters or more
BRACKET_PAIRS = (("(", ")"), ("[", "]"), ("{", "}"))

ProbeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[int, int]]


# ---------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Probe:
    """A downstream probe: `score(logits[B,T,V], tokens[B,T], targets[B,T]) -> (correct, total)`.

    `tokens[b, t]` is the input at position t and `targets[b, t]` the token to
    predict there (IGNORE_INDEX where nothing is predicted); the prediction at
    position t may use tokens[b, 0..t] only. `total` counts the positions the
    probe cares about in the batch and `correct` those the model predicts
    (usually: the argmax of the logits is the target). Scores add up across
    batches by summing both counts.
    """

    name: str
    score: ProbeFn
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ParamError(f"Probe.name must be a non-empty string, got {self.name!r}")
        if not callable(self.score):
            raise ParamError(f"Probe.score must be a function (logits, tokens, targets) -> (correct, total), "
                             f"got {type(self.score).__name__}")

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        _check_batch(logits, tokens, targets)
        counts = self.score(logits, tokens, targets)
        if not isinstance(counts, (tuple, list)) or len(counts) != 2:
            raise ValueError(f"probe {self.name!r} must return (correct, total), got {counts!r}")
        correct, total = (int(c) for c in counts)
        if not 0 <= correct <= total:
            raise ValueError(f"probe {self.name!r} returned correct={correct}, total={total}; "
                             "expected 0 <= correct <= total")
        return correct, total


def char_probes(chars: Sequence[str], keywords: Sequence[str] = KEYWORDS) -> list[Probe]:
    """Probes for a character-level model whose token id i is the character chars[i].

    - "next-char": every position with a target; correct when the argmax of the
      logits is the target (the model's next-character accuracy).
    - "close-bracket": positions whose target is a closing bracket ")", "]" or
      "}" that closes the innermost bracket still open in the visible context
      tokens[b, 0..t]. The context is scanned left to right with a stack: an
      opening bracket is pushed; a closing bracket pops the top when it matches
      it and is otherwise ignored (its opener may lie before the window).
      Brackets inside strings or comments count like any other. Correct when
      the argmax is that closing bracket.
    - "keyword": positions inside a keyword (by default Python's keywords of
      three letters or more: def, class, return, import, lambda, while, yield
      ...): the context ends with a character that is not part of an
      identifier (not a letter, digit or "_"; at least one such character must
      be visible in the window) followed by the keyword's first j letters, j >=
      2, and the target is its letter j+1. So "\\nret" with target "u" counts
      once (j = 3), "_ret" and "pret" do not, and a word that only starts like
      a keyword ("classes") counts for the letters it shares with it. Correct
      when the argmax is that letter.

    Probes whose characters the vocabulary lacks are left out (no "close-bracket"
    without a matching pair of brackets, no "keyword" when no keyword can be
    spelled). Ids whose entry is not a single character (e.g. "<unk>") count as
    non-identifier characters. The scans are vectorised over the batch except
    the bracket stack, which walks only the bracket positions in Python.
    """
    if isinstance(chars, str) or not isinstance(chars, Sequence) or not all(isinstance(c, str) for c in chars):
        raise ParamError("chars must be a sequence of strings (chars[i] is the character of token id i), "
                         f"got {type(chars).__name__}")
    ids: dict[str, int] = {}
    for i, c in enumerate(chars):
        if c in ids:
            raise ParamError(f"chars has {c!r} twice (ids {ids[c]} and {i}); each character needs one id")
        ids[c] = i
    if isinstance(keywords, str) or not all(isinstance(k, str) and len(k) >= 3 for k in keywords):
        raise ParamError(f"keywords must be a sequence of words of at least 3 letters, got {keywords!r}")
    probes = [Probe("next-char", next_token_score, "argmax accuracy over every position with a target")]
    pairs = tuple((ids[o], ids[c]) for o, c in BRACKET_PAIRS if o in ids and c in ids)
    if pairs:
        probes.append(Probe("close-bracket", functools.partial(close_bracket_score, pairs=pairs),
                            "a closing bracket that matches the innermost open bracket"))
    spelled = tuple(tuple(ids[c] for c in word) for word in keywords if all(c in ids for c in word))
    if spelled:
        separators = tuple(i for i, c in enumerate(chars) if not _identifier_char(c))
        probes.append(Probe("keyword", functools.partial(keyword_score, keywords=spelled, separators=separators),
                            "the next letter of a keyword after its first two letters"))
    return probes


def next_token_score(logits: torch.Tensor, tokens: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """Argmax accuracy over every position whose target is not IGNORE_INDEX."""
    return _hits(logits, targets, targets != IGNORE_INDEX)


def close_bracket_score(logits: torch.Tensor, tokens: torch.Tensor, targets: torch.Tensor, *,
                        pairs: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """Argmax accuracy where the target closes the innermost open bracket; `pairs` are (opener id, closer id)."""
    return _hits(logits, targets, closing_positions(tokens, targets, pairs))


def keyword_score(logits: torch.Tensor, tokens: torch.Tensor, targets: torch.Tensor, *,
                  keywords: Sequence[Sequence[int]], separators: Sequence[int]) -> tuple[int, int]:
    """Argmax accuracy on the next letter of a keyword (token ids) begun after a separator (see `keyword_positions`)."""
    return _hits(logits, targets, keyword_positions(tokens, targets, keywords, separators))


def closing_positions(tokens: torch.Tensor, targets: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Bool [B,T]: the target at (b, t) is the closer of the innermost bracket open in tokens[b, 0..t].

    Openers push onto a stack; a closer pops the top when it matches it and is
    ignored otherwise. Only bracket positions are walked in Python (one pass).
    """
    opener_of = {close: open_ for open_, close in pairs}
    openers = torch.tensor([o for o, _ in pairs], device=tokens.device)
    closers = torch.tensor([c for _, c in pairs], device=tokens.device)
    brackets = torch.isin(tokens, torch.cat([openers, closers]))
    queries = torch.isin(targets, closers)
    events = [(b, t, 0, v) for (b, t), v in zip(brackets.nonzero().tolist(), tokens[brackets].tolist())]
    events += [(b, t, 1, v) for (b, t), v in zip(queries.nonzero().tolist(), targets[queries].tolist())]
    events.sort()  # by row, then position; at one position the token enters the context before the query
    rows, cols, stack, row = [], [], [], -1
    for b, t, is_query, v in events:
        if b != row:
            stack, row = [], b
        top = stack[-1] if stack else None
        if is_query:
            if top is not None and top == opener_of[v]:
                rows.append(b)
                cols.append(t)
        elif v in opener_of:
            if top is not None and top == opener_of[v]:
                stack.pop()
        else:
            stack.append(v)
    mask = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
    if rows:
        mask[torch.tensor(rows), torch.tensor(cols)] = True
    return mask


def keyword_positions(tokens: torch.Tensor, targets: torch.Tensor, keywords: Sequence[Sequence[int]],
                      separators: Sequence[int]) -> torch.Tensor:
    """Bool [B,T]: tokens[b, t-j+1..t] spell a keyword's first j >= 2 ids, tokens[b, t-j] is a separator,
    and the target is the keyword's next id. Vectorised: one shifted comparison per keyword letter."""
    boundary = torch.isin(tokens, torch.tensor(list(separators), dtype=tokens.dtype, device=tokens.device))
    mask = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
    for word in keywords:
        run = boundary  # run[b, t]: tokens[b, t-j+1..t] == word[:j] and tokens[b, t-j] is a separator
        for j in range(1, len(word)):
            shifted = torch.zeros_like(run)
            shifted[:, 1:] = run[:, :-1]
            run = shifted & (tokens == word[j - 1])
            if j >= 2:
                mask |= run & (targets == word[j])
    return mask


def _hits(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    correct = (logits.argmax(-1) == targets) & mask
    return int(correct.sum()), int(mask.sum())


def _identifier_char(c: str) -> bool:
    return len(c) == 1 and (c.isalnum() or c == "_")


def _check_batch(logits: torch.Tensor, tokens: torch.Tensor, targets: torch.Tensor) -> None:
    for name, value in (("logits", logits), ("tokens", tokens), ("targets", targets)):
        if not isinstance(value, torch.Tensor):
            raise ParamError(f"{name} must be a tensor, got {type(value).__name__}")
    if logits.dim() != 3 or not logits.is_floating_point():
        raise ParamError(f"logits must be a float tensor [batch, tokens, vocabulary], got {logits.dtype} "
                         f"of shape {tuple(logits.shape)}")
    for name, value in (("tokens", tokens), ("targets", targets)):
        if value.shape != logits.shape[:2] or value.is_floating_point() or value.dtype == torch.bool:
            raise ParamError(f"{name} must be integer ids of shape {tuple(logits.shape[:2])} (the logits' batch and "
                             f"tokens), got {value.dtype} of shape {tuple(value.shape)}")


# ---------------------------------------------------------------------- measuring sizes


@dataclass
class ScalingPoint:
    """One trained model size: its cost and how well it does.

    params: parameter values, each tensor counted once (a tied embedding and
    output layer count once). tokens: training tokens seen (D). flops: training
    compute, 6·N·D (Kaplan et al. 2020, section 2.1). valid_loss: mean
    validation cross-entropy in nats per predicted token. scores: probe name ->
    share of the probe's positions predicted correctly; totals: probe name ->
    how many positions that share is over (its binomial noise depends on it).
    """

    size: str
    params: int
    tokens: int
    flops: float
    valid_loss: float
    scores: dict[str, float] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    valid_tokens: int = 0

    def __post_init__(self) -> None:
        instance("ScalingPoint.size", self.size, str, "a name (str)")
        for name in ("params", "tokens", "flops"):
            positive(f"ScalingPoint.{name} of size {self.size!r}", getattr(self, name))
        number(f"ScalingPoint.valid_loss of size {self.size!r}", self.valid_loss)
        if set(self.scores) != set(self.totals):
            raise ParamError(f"ScalingPoint.scores and .totals must name the same probes, got {sorted(self.scores)} "
                             f"and {sorted(self.totals)} (size {self.size!r})")
        for name, total in self.totals.items():
            if int_at_least(f"ScalingPoint.totals[{name!r}]", total, 0) > 0:
                fraction(f"ScalingPoint.scores[{name!r}] (a share)", self.scores[name])

    def correct(self, probe: str) -> int:
        """How many of the probe's positions were predicted correctly."""
        return round(self.scores[probe] * self.totals[probe])

    def to_dict(self) -> dict:
        return {"size": self.size, "params": self.params, "tokens": self.tokens, "flops": self.flops,
                "valid_loss": self.valid_loss, "scores": dict(self.scores), "totals": dict(self.totals),
                "valid_tokens": self.valid_tokens}


@torch.no_grad()
def measure_point(model: nn.Module, task: Task, probes: Sequence[Probe], tokens_seen: int, size: str,
                  device: str | torch.device = "cpu", max_batches: int | None = None) -> ScalingPoint:
    """Evaluate `model` on `task.valid`: the validation loss (nats/token) and each probe's score.

    Items must be `(tokens[T], next_tokens[T])` pairs of integer ids (a
    "language-model" Task). The loss is the cross-entropy summed over targets
    that are not IGNORE_INDEX, divided by their number. `max_batches` limits the
    evaluation to the first batches (None: the whole validation set). FLOPs are
    6·N·D with N = `count_parameters(model)` and D = `tokens_seen`.
    """
    instance("model", model, nn.Module, "a torch.nn.Module")
    if not isinstance(task, Task) or task.kind != "language-model":
        raise ParamError(f"task must be a dltips.Task of kind 'language-model', got "
                         f"{getattr(task, 'kind', type(task).__name__)!r}")
    probes = _check_probes(probes)
    positive_int("tokens_seen (training tokens)", tokens_seen)
    optional_int("max_batches", max_batches)
    device = torch.device(device)
    model.to(device)
    loss_sum, n_tokens = torch.zeros((), dtype=torch.float64, device=device), 0
    correct = {p.name: 0 for p in probes}
    totals = {p.name: 0 for p in probes}
    with eval_mode(model):
        for i, (x, y) in enumerate(task.loader(task.valid, shuffle=False)):
            if max_batches is not None and i >= max_batches:
                break
            if not isinstance(x, torch.Tensor) or x.dim() != 2:
                shape = f" of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else ""
                raise ValueError("measure_point needs validation items (tokens[T], next_tokens[T]) of integer ids; got "
                                 f"inputs of type {type(x).__name__}{shape}")
            x, y = x.to(device), y.to(device)
            logits = task.outputs(model, (x, y))[0].float()
            loss_sum += F.cross_entropy(logits.flatten(0, -2), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
            n_tokens += int((y != IGNORE_INDEX).sum())
            for probe in probes:
                c, t = probe(logits, x, y)
                correct[probe.name] += c
                totals[probe.name] += t
    if n_tokens == 0:
        raise ValueError("the validation set has no target tokens (all IGNORE_INDEX); cannot measure a loss")
    params = count_parameters(model)
    scores = {name: correct[name] / totals[name] if totals[name] else math.nan for name in totals}
    return ScalingPoint(size=str(size), params=params, tokens=tokens_seen,
                        flops=float(FLOPS_PER_PARAM_TOKEN * params * tokens_seen), valid_loss=float(loss_sum) / n_tokens,
                        scores=scores, totals=totals, valid_tokens=n_tokens)


def scaling_study(make_task: Callable[[str], Task], sizes: Sequence[str], steps: int, probes: Sequence[Probe],
                  device: str | torch.device = "cpu", seed: int = 0, *, recipe: Recipe | None = None,
                  max_batches: int | None = None, progress: bool = False) -> list[ScalingPoint]:
    """Train each size for `steps` optimizer steps with `dltips.fit` and measure it (see `measure_point`).

    `make_task(size)` builds a fresh "language-model" Task for that size (the
    global torch seed is set to `seed` before each call, so models built
    without their own seed start reproducibly). Every size gets the same number
    of steps and batch size, so the same training tokens: compute grows with
    the parameters. `recipe` defaults to `Recipe()`, the recommended recipe.
    Tokens seen = steps x items per step x tokens per item (the first training
    input's length).
    """
    if not callable(make_task):
        raise ParamError(f"make_task must be a function size -> Task, got {type(make_task).__name__}")
    if isinstance(sizes, str) or not isinstance(sizes, Sequence) or not sizes:
        raise ParamError(f"sizes must be a non-empty sequence of size names, got {sizes!r}")
    if len(set(sizes)) != len(sizes):
        raise ParamError(f"sizes must not repeat, got {list(sizes)}")
    positive_int("steps", steps)
    probes = _check_probes(probes)
    recipe = Recipe() if recipe is None else instance("recipe", recipe, Recipe, "a dltips Recipe or None")
    points = []
    for size in sizes:
        torch.manual_seed(seed)
        task = make_task(size)
        if not isinstance(task, Task) or task.kind != "language-model":
            raise ParamError(f"make_task({size!r}) must return a dltips.Task of kind 'language-model', got "
                             f"{getattr(task, 'kind', type(task).__name__)!r}")
        items_per_step = min(task.batch_size, len(task.train)) * recipe.accumulate
        steps_per_epoch = math.ceil(max(1, len(task.train) // task.batch_size) / recipe.accumulate)
        result = fit(task, epochs=math.ceil(steps / steps_per_epoch), max_steps=steps, recipe=recipe, device=device,
                     seed=seed, progress=progress)
        tokens_seen = result.steps * items_per_step * int(torch.as_tensor(task.train[0][0]).numel())
        points.append(measure_point(task.model, task, probes, tokens_seen, str(size), device=device,
                                    max_batches=max_batches))
    return points


def _check_probes(probes: Sequence[Probe]) -> list[Probe]:
    probes = list(probes) if isinstance(probes, Sequence) else None
    if not probes or not all(isinstance(p, Probe) for p in probes):
        raise ParamError("probes must be a non-empty sequence of Probe (see char_probes)")
    names = [p.name for p in probes]
    if len(set(names)) != len(names):
        raise ParamError(f"probe names must be unique, got {names}")
    return probes


# ---------------------------------------------------------------------- the verdicts


@dataclass
class ProbeTrend:
    """How one probe's score moves across sizes ordered by compute (see the module docstring for `trend`).

    change: last score minus first; noise: the standard error of that change;
    z = change / noise. rho: Spearman's rank correlation of (-loss) with the
    score across sizes (NaN when either is constant). drop_from: the size the
    score fell from, for "opposite". jump_at: the size reached by the jump, for "jump".
    """

    probe: str
    trend: str
    scores: list[float]
    totals: list[int]
    change: float = math.nan
    noise: float = math.nan
    z: float = math.nan
    rho: float = math.nan
    drop_from: str | None = None
    jump_at: str | None = None

    def to_dict(self) -> dict:
        return {"probe": self.probe, "trend": self.trend, "scores": self.scores, "totals": self.totals,
                "change": self.change, "noise": self.noise, "z": self.z, "rho": self.rho,
                "drop_from": self.drop_from, "jump_at": self.jump_at}


def score_error(correct: int, total: int) -> float:
    """Binomial standard error of a share correct/total, with p = (correct + 0.5) / (total + 1) so it is never 0."""
    if total <= 0:
        return math.nan
    p = (correct + 0.5) / (total + 1)
    return math.sqrt(p * (1 - p) / total)


def probe_trends(points: Sequence[ScalingPoint]) -> dict[str, ProbeTrend]:
    """Each probe's trend over `points` (sorted by compute here), named by the module docstring's rules.

    A probe with no scored position at some size is "no-positions"; when the
    loss does not fall clearly, every other probe is "loss-flat". Any number of
    points is accepted; `check_emergent_scaling` gives verdicts only from
    MIN_SIZES sizes on.
    """
    ordered = _ordered(points)
    losses = [p.valid_loss for p in ordered]
    loss_falls = losses[0] - losses[-1] >= LOSS_FALL
    names = list(dict.fromkeys(name for p in ordered for name in p.scores))
    trends = {}
    for name in names:
        scores = [p.scores.get(name, math.nan) for p in ordered]
        totals = [p.totals.get(name, 0) for p in ordered]
        if min(totals) == 0:
            trends[name] = ProbeTrend(name, "no-positions", scores, totals)
            continue
        errors = [score_error(p.correct(name), p.totals[name]) for p in ordered]
        trend = _trend(name, ordered, scores, totals, errors, losses) if loss_falls else \
            ProbeTrend(name, "loss-flat", scores, totals)
        noise = math.hypot(errors[0], errors[-1])
        trend.change, trend.noise = scores[-1] - scores[0], noise
        trend.z = trend.change / noise
        trend.rho = spearman([-v for v in losses], scores)
        trends[name] = trend
    return trends


def _trend(name: str, ordered: list[ScalingPoint], scores: list[float], totals: list[int], errors: list[float],
           losses: list[float]) -> ProbeTrend:
    last = len(scores) - 1
    falls = [((scores[k] - scores[last]) / math.hypot(errors[k], errors[last]), k) for k in range(last)
             if losses[k] - losses[last] >= LOSS_FALL]
    if falls and max(falls)[0] > Z_OPPOSITE:
        return ProbeTrend(name, "opposite", scores, totals, drop_from=ordered[max(falls)[1]].size)
    gain = scores[last] - scores[0]
    if gain > Z * math.hypot(errors[0], errors[last]):
        steps = np.diff(scores)
        k = int(np.argmax(steps))  # the largest step goes from size k to size k + 1
        flat_before = abs(scores[k] - scores[0]) <= Z * math.hypot(errors[0], errors[k])
        if k >= 1 and steps[k] >= JUMP_SHARE * gain and flat_before:  # flat over at least two sizes, then a jump
            return ProbeTrend(name, "jump", scores, totals, jump_at=ordered[k + 1].size)
        return ProbeTrend(name, "improves", scores, totals)
    if 1.0 - max(scores) < Z * math.hypot(errors[0], errors[last]):
        return ProbeTrend(name, "saturated", scores, totals)
    return ProbeTrend(name, "plateau", scores, totals)


def check_emergent_scaling(points: Sequence[ScalingPoint]) -> list[Finding]:
    """The `emergent-scaling` and `logloss-downstream` findings for a set of model sizes (in that order).

    `emergent-scaling`: per probe, the curve of score against training compute;
    "warn" for probes that plateau (no gain beyond noise while the loss falls
    clearly) or move opposite to the loss, "info" for an emergent-looking jump,
    "pass" when all improve or are saturated. `logloss-downstream`: Spearman
    agreement between (-loss) and each probe across sizes; "warn" when a probe
    moves opposite to the loss, "info" when one stays flat, "pass" otherwise.
    Both "skip" with fewer than MIN_SIZES sizes and are "info" when the loss
    does not fall clearly (by LOSS_FALL nats/token). The rules and noise model
    are in the module docstring.

    The module docstring gives the calibration on synthetic curves and on a
    real study of four character-model widths.

    This check keeps its own form, not the common `check_x(task, *, model=...)`
    one: it judges a study of several models (one ScalingPoint per size, each
    trained and measured by `scaling_study` or `measure_point`), not one Task's
    model, so there is no single task, model, device or item budget to pass.
    """
    ordered = _ordered(points)
    if len(ordered) < MIN_SIZES:
        reason = (f"{len(ordered)} model size{'s' if len(ordered) != 1 else ''} measured; a trend across sizes needs at "
                  f"least {MIN_SIZES}")
        fix = f"Train at least {MIN_SIZES} sizes (e.g. `dltips demo charlm --sizes tiny,small,medium`)."
        evidence = {"points": [p.to_dict() for p in ordered], "min_sizes": MIN_SIZES}
        return [Finding(TIP_EMERGENT, "skip", "Too few model sizes for a scaling curve", reason, fix, evidence),
                Finding(TIP_LOGLOSS, "skip", "Too few model sizes to compare the loss with the probes", reason, fix,
                        dict(evidence))]
    trends = probe_trends(ordered)
    figures = _figures(ordered, trends)
    evidence = {"points": [p.to_dict() for p in ordered], "trends": {n: t.to_dict() for n, t in trends.items()},
                "z": Z, "loss_fall": LOSS_FALL, "jump_share": JUMP_SHARE}
    losses = [p.valid_loss for p in ordered]
    loss_text = (f"Validation loss went from {losses[0]:.3f} to {losses[-1]:.3f} nats/token over {len(ordered)} sizes "
                 f"({_compute_range(ordered)}).")
    if losses[0] - losses[-1] < LOSS_FALL:
        message = (f"{loss_text} It did not fall by at least {LOSS_FALL} nats/token from the smallest to the largest "
                   "compute, so there is no loss trend to compare the probes with.")
        fix = "Train longer, or spread the sizes further apart, until the loss falls clearly with compute."
        return [Finding(TIP_EMERGENT, "info", "The loss does not fall across sizes", message, fix, evidence, figures),
                Finding(TIP_LOGLOSS, "info", "The loss does not fall across sizes", message, fix, dict(evidence),
                        [figures[-1]])]
    return [_emergent_finding(ordered, trends, loss_text, evidence, figures),
            _logloss_finding(trends, loss_text, dict(evidence), [figures[-1]])]


def _emergent_finding(ordered: list[ScalingPoint], trends: dict[str, ProbeTrend], loss_text: str, evidence: dict,
                      figures: list) -> Finding:
    scored = {n: t for n, t in trends.items() if t.trend != "no-positions"}
    parts = [loss_text] + [_describe(t) for t in trends.values()]
    if not scored:
        return Finding(TIP_EMERGENT, "skip", "No probe scored any position at every size", " ".join(parts),
                       "Check that the probes match the vocabulary and that the validation text contains their cases.",
                       evidence, figures)
    bad = [t for t in scored.values() if t.trend in ("plateau", "opposite")]
    jumps = [t for t in scored.values() if t.trend == "jump"]
    if bad:
        names = ", ".join(f"{t.probe} ({t.trend})" for t in bad)
        title = f"{len(bad)} of {len(scored)} probes do not improve with the loss: {names}"
        fix = ("Judge these tasks on their own curves, not through the loss: train larger or longer before relying on "
               "them, and score them with a smoother metric too (the probability of the right answer rather than "
               "exact match; Schaeffer et al. 2023) to see whether a gain is building up below the threshold.")
        return Finding(TIP_EMERGENT, "warn", title, " ".join(parts), fix, evidence, figures)
    if jumps:
        names = ", ".join(t.probe for t in jumps)
        title = f"Emergent-looking jump in {names}"
        fix = ("A sudden rise across sizes is often the metric's doing: check the per-token probability of the answer, "
               "which usually rises smoothly (Schaeffer et al. 2023), before extrapolating.")
        return Finding(TIP_EMERGENT, "info", title, " ".join(parts), fix, evidence, figures)
    title = f"All {len(scored)} probes improve with compute" if len(scored) > 1 else \
        f"Probe {next(iter(scored))} improves with compute"
    return Finding(TIP_EMERGENT, "pass", title, " ".join(parts), None, evidence, figures)


def _logloss_finding(trends: dict[str, ProbeTrend], loss_text: str, evidence: dict, figures: list) -> Finding:
    scored = {n: t for n, t in trends.items() if t.trend != "no-positions"}
    rhos = ", ".join(f"{t.probe} {t.rho:+.2f}" for t in scored.values())
    parts = [loss_text, f"Spearman rank agreement of lower loss with higher score across sizes: {rhos or 'none'}.",
             f"(Ranks among sizes whose scores differ by less than {Z:g} standard errors are noise; the verdict uses "
             "the noise-aware trends.)"]
    columns = ["probe", "Spearman (-loss, score)", "trend", "change", "noise (SE)", "z"]
    rows = [[t.probe, _round(t.rho), t.trend, _round(t.change), _round(t.noise), _round(t.z)] for t in trends.values()]
    figures = [*figures, {"kind": "table", "title": "Does lower loss go with higher probe scores?", "columns": columns,
                          "rows": rows}]
    if not scored:
        return Finding(TIP_LOGLOSS, "skip", "No probe scored any position at every size", " ".join(parts), None,
                       evidence, figures)
    opposite = [t.probe for t in scored.values() if t.trend == "opposite"]
    flat = [t.probe for t in scored.values() if t.trend == "plateau"]
    if opposite:
        return Finding(TIP_LOGLOSS, "warn", f"Lower loss goes with worse {', '.join(opposite)}", " ".join(parts),
                       "The loss is a misleading guide for these tasks: choose sizes and checkpoints by the task's own "
                       "score, measured at every size, and look at what the larger model predicts instead.",
                       evidence, figures)
    if flat:
        return Finding(TIP_LOGLOSS, "info", f"Lower loss does not move {', '.join(flat)}", " ".join(parts),
                       "The loss says little about these tasks at these sizes; track them separately.", evidence, figures)
    return Finding(TIP_LOGLOSS, "pass", "Lower loss goes with higher scores on every probe", " ".join(parts), None,
                   evidence, figures)


def _describe(t: ProbeTrend) -> str:
    curve = " -> ".join(f"{s:.3f}" for s in t.scores)
    if t.trend == "no-positions":
        return f"{t.probe}: no positions to score at some size ({curve}); left out."
    text = {"improves": "improves", "jump": f"jumps at {t.jump_at}", "plateau": "stays flat within noise",
            "opposite": f"falls from its score at {t.drop_from} while the loss falls",
            "saturated": "is already near 1", "loss-flat": "moves"}[t.trend]
    return (f"{t.probe} {text}: {curve} (change {t.change:+.3f}, {t.z:+.1f} standard errors; at least {min(t.totals)} "
            "positions per size).")


def _figures(ordered: list[ScalingPoint], trends: dict[str, ProbeTrend]) -> list[dict]:
    x = [p.flops for p in ordered]
    scores = {name: [None if not math.isfinite(s) else s for s in t.scores] for name, t in trends.items()}
    columns = ["size", "parameters", "training tokens", "FLOPs", "valid loss"] + list(trends)
    rows = []
    for i, p in enumerate(ordered):
        cells = []
        for t in trends.values():
            total = t.totals[i]
            cells.append(f"{t.scores[i]:.3f} ± {score_error(round(t.scores[i] * total), total):.3f} (n={total})"
                         if total else "no positions")
        rows.append([p.size, p.params, p.tokens, float(f"{p.flops:.3g}"), _round(p.valid_loss), *cells])
    trend_rows = [[t.probe, t.trend, _round(t.change), _round(t.noise), _round(t.z)] for t in trends.values()]
    return [
        {"kind": "lines", "title": "Probe scores against training compute", "x": x, "series": scores,
         "xlabel": "training FLOPs (6·N·D)", "ylabel": "share of positions predicted", "xlog": True, "ylog": False},
        {"kind": "table", "title": "Per size: loss and probe scores (± binomial standard error)", "columns": columns,
         "rows": rows},
        {"kind": "table", "title": "Per probe: trend from the smallest to the largest compute",
         "columns": ["probe", "trend", "change", "noise (SE)", "z"], "rows": trend_rows},
        {"kind": "lines", "title": "Validation loss against training compute", "x": x,
         "series": {"validation loss (nats/token)": [p.valid_loss for p in ordered]},
         "xlabel": "training FLOPs (6·N·D)", "ylabel": "nats per token", "xlog": True, "ylog": False},
    ]


def _ordered(points: Sequence[ScalingPoint]) -> list[ScalingPoint]:
    if isinstance(points, ScalingPoint) or not isinstance(points, Sequence) or \
            not all(isinstance(p, ScalingPoint) for p in points):
        raise ParamError("points must be a sequence of ScalingPoint (see measure_point and scaling_study)")
    sizes = [p.size for p in points]
    if len(set(sizes)) != len(sizes):
        raise ParamError(f"points must have distinct size names, got {sizes}")
    return sorted(points, key=lambda p: p.flops)


def _compute_range(ordered: list[ScalingPoint]) -> str:
    return (f"{format_count(ordered[0].params)} to {format_count(ordered[-1].params)} parameters, "
            f"{ordered[0].flops:.3g} to {ordered[-1].flops:.3g} training FLOPs")


def _round(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None
