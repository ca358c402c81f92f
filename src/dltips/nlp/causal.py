"""Does a language model see the future? Change the tokens after position t; the outputs up to t must not move.

A next-token model whose output at position t depends on tokens after t reads the answer: a Transformer
whose causal mask was dropped, a bidirectional RNN, a convolution that is not left-padded. Its
validation loss is then too good to be true, and every other check passes.

The probe takes up to `MAX_ITEMS` validation sequences and, for each of `CUTS` cuts t spread evenly
from the first position to the second-to-last (both included), replaces the tokens after t by tokens
drawn at random (seeded) and runs the model again in eval mode. The outputs at positions 0..t are
compared with the first run's: a change larger than `TOLERANCE` times the outputs' scale (their
largest absolute value, at least 1) at any position <= t is a leak.

Calibration (tests/calibration, at initialisation, 8 cuts of 8 sequences): the masked Transformers (the
zoo's and the charlm demo's), the bigram and a unidirectional LSTM change no output at all (0.0); the
zoo's Transformer without its mask changes them by 0.07 to 0.28, a bidirectional LSTM by 0.11 to 0.16,
at every cut and every position before it. The probe takes 1 to 30 ms there.

Only next-token tasks are probed: the targets must be the inputs shifted by one token on at least
`SHIFTED` of the positions, since a model may read the whole input when its targets are not the
next tokens.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import model_device, model_on_device, resolve_device, to_device
from dltips.core.state import eval_mode, rng_kept
from dltips.findings import Finding
from dltips.task import IGNORE_INDEX, Task

__all__ = ["check_causal_leak"]

TIP = "error-gaps"
MAX_ITEMS = 8
CUTS = 8  # a leak that reads one token ahead shows at any cut; one confined to a position between cuts does not
TOLERANCE = 1e-4
SHIFTED = 0.9


def check_causal_leak(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
) -> list[Finding]:
    """Whether the model's outputs at positions <= t change with the tokens after t; one Finding.

    fail naming the first positions that see the future, pass when no output moves, skip when the Task is not
    a next-token language model or its inputs are not (batch, tokens) ids.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    model = task.model if model is None else model
    device = resolve_device(device, model)
    if task.kind != "language-model":
        return [_skip("The causal-leak probe is for language models", f"This Task's kind is {task.kind!r}.")]
    n = min(MAX_ITEMS if max_items is None else max_items, len(task.valid))
    inputs, y = task.first_batch(task.valid, n)
    x = inputs.get("input_ids") if isinstance(inputs, Mapping) else inputs  # a Hugging Face batch: its token ids
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.is_floating_point() or x.shape[1] < 2:
        return [_skip("No token sequences to probe for a causal leak",
                      "The inputs are not a (batch, tokens) tensor of token ids.")]
    shifted = 0.0
    if y.shape == x.shape:  # over the counted targets: padding after the end of a sequence is not a target
        counted = y[:, :-1] != IGNORE_INDEX
        shifted = float((x[:, 1:] == y[:, :-1])[counted].double().mean()) if bool(counted.any()) else 0.0
    if shifted < SHIFTED:
        return [_skip("The targets are not the next tokens",
                      f"The targets equal the inputs shifted by one token on {shifted:.0%} of the positions (below "
                      f"{SHIFTED:.0%}): the model may legitimately read the whole input.")]
    run = model_on_device(model, device)
    length = x.shape[1]
    cuts = sorted({round(k * (length - 2) / (CUTS - 1)) for k in range(CUTS)})
    generator = torch.Generator().manual_seed(seed)
    changes = {}
    on = model_device(run)

    def outputs(tokens: torch.Tensor) -> torch.Tensor:
        batch = {**inputs, "input_ids": tokens} if isinstance(inputs, Mapping) else tokens
        return task.outputs(run, (to_device(batch, on), y.to(on)))[0].float()

    with torch.no_grad(), eval_mode(run), rng_kept():
        base = outputs(x)
        scale = max(float(base.abs().max()), 1.0)
        for t in cuts:
            changed = x.clone()
            changed[:, t + 1:] = torch.randint(0, task.n_classes, (n, length - t - 1), generator=generator)
            out = outputs(changed)
            moved = (out[:, :t + 1] - base[:, :t + 1]).abs().flatten(2).amax(-1).amax(0)  # per position <= t
            changes[t] = moved.cpu()
    evidence = {"items": n, "length": length, "cuts": cuts, "tolerance": TOLERANCE, "scale": scale,
                "max_change": {t: float(c.max()) for t, c in changes.items()}, "shifted_targets": shifted}
    leaks = {t: [int(p) for p in (c > TOLERANCE * scale).nonzero().flatten()] for t, c in changes.items()}
    leaks = {t: positions for t, positions in leaks.items() if positions}
    if not leaks:
        worst = max(evidence["max_change"].values())
        return [Finding(TIP, "pass", "The model does not see future tokens",
                        f"On {n} validation sequences of {length} tokens, replacing the tokens after positions "
                        f"{', '.join(map(str, cuts))} changed no output at or before the cut by more than {worst:.2g} "
                        f"(outputs up to {scale:.3g}).", None, evidence)]
    t, positions = min(leaks.items())
    evidence.update({"leaking_cut": t, "leaking_positions": positions, "cause": "causal-leak"})
    shown = ", ".join(map(str, positions[:8])) + (", ..." if len(positions) > 8 else "")
    return [Finding(
        TIP, "fail", "The model sees future tokens: a causal leak",
        f"Replacing the tokens after position {t} (of {length}) changed the outputs at positions {shown} by up to "
        f"{float(changes[t].max()):.3g} (outputs up to {scale:.3g}): the prediction of token t+1 reads tokens after "
        f"t, so the model is shown the answer ({len(leaks)} of the {len(cuts)} cuts leak). Its training and "
        "validation losses are too good to be true, and it cannot generate text.",
        "Give the attention its causal mask (`is_causal=True`, or `nn.Transformer.generate_square_subsequent_mask`), "
        "make recurrent layers unidirectional, and pad convolutions on the left only.", evidence)]


def _skip(title: str, message: str) -> Finding:
    return Finding(TIP, "skip", title, message)
