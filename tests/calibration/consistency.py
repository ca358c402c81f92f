"""Findings whose words contradict their own numbers: a checker of a finding's text against its evidence and status.

`contradictions(finding)` returns one line per contradiction found, empty when none. Each rule reads
one kind of claim and checks it only where the claim can be tied to a number (in the text itself or
in the evidence); a claim it cannot tie to a number is left alone, so a rule never guesses.
It runs over any Finding the doctor produces (`contradictions(f) for f in report.findings`).

Numbers printed in the text are compared with the slack of their printed precision ("1.3e-03"
may stand for anything in [1.25e-03, 1.35e-03]).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from dltips.findings import Finding

FLOAT_SLACK = 1e-6  # a float32 mean this close to a bound is on it
NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_LR_CHANGE = re.compile(
    r"\b(?:lower|raise|reduce|increase|decrease|multiply)\w*\b[^.;]{0,60}?\b(?:learning rates?|LR|lr)\b"
    r"|\b(?:learning rates?|LR|lr)\b[^.;]{0,30}?\b(?:lower|raise|reduce|increase|decrease)\w*\b", re.IGNORECASE)
_RELABEL = re.compile(r"\brelabel\w*|\b(?:fix|correct|drop|remove)\w*\s+(?:the\s+|wrong\s+|their\s+|bad\s+|these\s+)*"
                      r"labels?\b", re.IGNORECASE)


def contradictions(finding: Finding) -> list[str]:
    """Every contradiction between `finding`'s words and its status or evidence, as 'rule: what' lines."""
    return [f"{rule.__name__}: {what}" for rule in RULES for what in rule(finding)]


# ---------------------------------------------------------------------------------------------- numbers


def _slack(text: str) -> float:
    """Half a unit of the last printed digit of the number `text`."""
    mantissa, _, exponent = text.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 0.5 * 10.0 ** (int(exponent or 0) - decimals)


def _inside(x: str, a: str, b: str) -> bool:
    """Whether the printed number x can lie in [a, b], given how they were rounded."""
    value, low, high = float(x), float(a), float(b)
    low, high = min(low, high), max(low, high)
    return low - _slack(a) - _slack(x) <= value <= high + _slack(b) + _slack(x)


def _number(value) -> float | None:
    """A finite number from the evidence, else None (bools, strings, lists, None are no numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _text(f: Finding) -> str:
    return f"{f.title}. {f.message} {f.fix or ''}"


def _negated(text: str, start: int) -> bool:
    """Whether the words just before `start` negate the claim (" not within", "never in")."""
    return re.search(r"\b(?:not|never|no longer)\s*$", text[max(0, start - 12):start]) is not None


# ---------------------------------------------------------------------------------------------- rules


def range_claims(f: Finding) -> list[str]:
    """(a) A number said to be within a range must be inside it.

    "within the expected range A to B" is checked against evidence["measured"] (and evidence["range"]
    where given, unrounded); "X is within/inside/in/between [A, B]" or "... A and B", and "from X to
    Y; inside the ... band [A, B]", against the printed numbers.
    """
    found = []
    text = _text(f)
    measured = _number(f.evidence.get("measured"))
    bounds = f.evidence.get("range")
    for m in re.finditer(rf"within the expected range ({NUM})(?: \([^)]*\))? to ({NUM})", text):
        if _negated(text, m.start()) or measured is None:
            continue
        low, high = (bounds if isinstance(bounds, (list, tuple)) and len(bounds) == 2 else
                     (float(m.group(1)), float(m.group(2))))
        if not low - FLOAT_SLACK * abs(low) <= measured <= high + FLOAT_SLACK * abs(high):
            found.append(f"says 'within the expected range {low:.4g} to {high:.4g}' for a measured {measured:.4g}")
    claim = (rf"({NUM})[^.;\d]{{0,40}}?\b(?:is|are|lies|lie)\s+(?:within|inside|in|between)\s+(?:the\s+)?"
             rf"(?:[a-z-]+\s+){{0,3}}?\[?({NUM})(?:,|\s+to|\s+and)\s*({NUM})\]?")
    for m in re.finditer(claim, text):
        if not _inside(m.group(1), m.group(2), m.group(3)):
            found.append(f"says {m.group(1)} is in [{m.group(2)}, {m.group(3)}]")
    spanned = rf"from ({NUM}) to ({NUM})[;,]?\s+(?:inside|within|in)\s+(?:the\s+)?(?:[a-z-]+\s+){{0,3}}\[({NUM}), ({NUM})\]"
    for m in re.finditer(spanned, text):
        for x in m.group(1, 2):
            if not _inside(x, m.group(3), m.group(4)):
                found.append(f"says {x} (in 'from {m.group(1)} to {m.group(2)}') is inside [{m.group(3)}, {m.group(4)}]")
    return found


def fix_changes_lr_on_pass(f: Finding) -> list[str]:
    """(b) A pass or info gives no fix telling to lower, raise or scale the learning rate: that is a warning's job."""
    if f.status not in ("pass", "info") or not f.fix:
        return []
    m = _LR_CHANGE.search(f.fix)
    return [f"status {f.status} with a fix that changes the learning rate ({m.group(0)!r})"] if m else []


def not_run_rungs(f: Finding) -> list[str]:
    """(c) A rung said "not run" has no steps: evidence["rungs"] (size, status, steps) must agree with the words."""
    rungs = f.evidence.get("rungs")
    if not isinstance(rungs, list):
        return []
    steps = {r.get("size"): r.get("steps") or 0 for r in rungs if isinstance(r, dict)}
    statuses = {r.get("size"): r.get("status") for r in rungs if isinstance(r, dict)}
    found = [f"rung {size} has status 'not run' but {n} steps" for size, n in steps.items()
             if statuses[size] == "not run" and n > 0]
    text = f"{f.title}. {f.message}"
    named = {int(m.group(1)) for m in re.finditer(r"\b(\d+)(?: training)?(?: items?)?: (?:was )?not run\b", text)}
    named |= {int(m.group(1)) for m in re.finditer(r"\b[Rr]ung (\d+)\b[^.;]*?\b(?:was )?not run\b", text)}
    found += [f"says rung {size} was not run, but it ran {steps[size]} steps" for size in sorted(named)
              if steps.get(size, 0) > 0 and statuses.get(size) != "not run"]
    return found


def relabel_without_mistakes(f: Finding) -> list[str]:
    """(d) Relabelling advice needs suspected label errors: not with 0 confident mistakes (worst-predictions counts)."""
    if not f.fix or not _RELABEL.search(f.fix):
        return []
    counts = f.evidence.get("counts")
    counts = counts if isinstance(counts, dict) else {}
    listed = f.evidence.get("confident_mistakes")
    for key in ("confident_mistakes", "suspected_label_errors", "wrong"):
        if _number(counts.get(key)) is not None:
            suspected = int(counts[key])
            break
    else:
        if not isinstance(listed, list):
            return []
        suspected, key = len(listed), "confident_mistakes"
    return [f"fix suggests relabelling with {key} = 0"] if suspected == 0 else []


def default_lr_without_family(f: Finding) -> list[str]:
    """(e) default_lr is quoted only for an optimizer family it knows (evidence["optimizer_family"] not None)."""
    if f.tip != "default-lr" or "optimizer_family" not in f.evidence or f.evidence["optimizer_family"] is not None:
        return []
    found = []
    if f.evidence.get("default_lr") is not None:
        found.append(f"evidence default_lr = {f.evidence['default_lr']} for an optimizer without a family")
    m = re.search(rf"default_lr\s*(?:for this model\s*)?(?:is|=|:|\()\s*\(?{NUM}|from default_lr", _text(f))
    if m:
        found.append(f"quotes default_lr ({m.group(0)!r}) for an optimizer without a family")
    return found


def time_skip_without_needs(f: Finding) -> list[str]:
    """(f) A skip for time says how much more time it needs: evidence["needs_s"], a positive number."""
    if f.evidence.get("skip_reason") != "time":
        return []
    found = [] if f.status == "skip" else [f"skip_reason 'time' on a {f.status}"]
    needs = _number(f.evidence.get("needs_s"))
    if needs is None or needs <= 0:
        found.append(f"skip for time without a positive needs_s ({f.evidence.get('needs_s')!r})")
    return found


def title_percentages(f: Finding) -> list[str]:
    """(g) A percentage in the title agrees with the evidence fraction it names (the word before or after it).

    "accuracy drops by 12%" names evidence["drop"] (a trailing "s" is dropped); only top-level
    numeric evidence counts as a clear mapping.
    """
    found = []
    for m in re.finditer(rf"(?:\b(\w+)\s+(?:by\s+|of\s+)?)?({NUM})%(?:\s+(\w+))?", f.title):
        words = [w for w in (m.group(1), m.group(3)) if w]
        keys = [k for w in words for k in (w, w[:-1] if w.endswith("s") else w, w.lower())]
        key = next((k for k in keys if _number(f.evidence.get(k)) is not None), None)
        if key is None:
            continue
        value = 100 * _number(f.evidence[key])
        if abs(value - float(m.group(2))) > _slack(m.group(2)) + 1e-9:
            found.append(f"title says {m.group(2)}% for {key}, the evidence gives {value:.4g}%")
    return found


def not_enough_claims(f: Finding) -> list[str]:
    """A title "Not enough evaluations" needs evidence["evaluations"] below evidence["min_evaluations"]."""
    m = re.search(r"\bnot enough (\w+)", f.title, re.IGNORECASE)
    if not m:
        return []
    word = m.group(1).lower()
    have, need = _number(f.evidence.get(word)), _number(f.evidence.get(f"min_{word}"))
    if have is None or need is None or have < need:
        return []
    return [f"title says not enough {word}, the evidence has {have:g} of the {need:g} needed"]


def suggestion_claims(f: Finding) -> list[str]:
    """A default-lr pass calls the LR "in the sane range (suggestion X)" or "below its suggestion (X)" only below X."""
    lr = _number(f.evidence.get("task_lr"))
    if f.tip != "default-lr" or lr is None:
        return []
    found = []
    text = f"{f.title}. {f.message}"
    for pattern in (rf"sane range[^.;]*?suggestion\s*\(?({NUM})", rf"below (?:its|the range test's) suggestion\s*\(?({NUM})"):
        for m in re.finditer(pattern, text):
            if lr >= float(m.group(1)) - _slack(m.group(1)):
                found.append(f"says the LR {lr:.3g} is below or in range of a suggestion {m.group(1)} it is not below")
    return found


RULES: list[Callable[[Finding], list[str]]] = [
    range_claims, fix_changes_lr_on_pass, not_run_rungs, relabel_without_mistakes, default_lr_without_family,
    time_skip_without_needs, title_percentages, not_enough_claims, suggestion_claims,
]
