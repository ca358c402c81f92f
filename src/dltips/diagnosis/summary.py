"""What to fix first: the report's findings in causal order, and the summary that opens every report.

A report is read top down, so it is ordered the way an expert debugs: the data and inputs first (no model
learns from pairs that change from read to read), then the model and its initialization, then the
optimization, then capacity, then generalization. `STAGES` names these sections; each tip belongs to one
(`TIP_STAGES`), and a cause a probe names moves its finding to the stage of that cause (`CAUSE_STAGES`: a
layer dead at initialization is a fault of the model, even though activation-gradient-stats also watches
training). Within a section the findings are ordered by severity, so a broken report never hides its
failures below its passes.

`next_steps` turns the warn and fail findings into the summary's numbered lines, each with its numbers and
its fix. A symptom whose most likely cause is itself a finding (overfit-tiny failing because a layer is
dead), or a probe's finding that follows from another (`CONSEQUENCE_OF`: parameters no gradient reaches,
behind a dead layer), is folded into the cause's line ("explains overfit-tiny ..."): the cause is what to
fix.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from dltips.findings import SKIP_ERROR, SKIP_TIME, Finding

STAGES = {
    "data": "Data and inputs",
    "model": "Model and initialization",
    "optimization": "Optimization",
    "capacity": "Capacity",
    "generalization": "Generalization",
}
TIP_STAGES = {
    **dict.fromkeys(("verify-transforms", "image-resolution", "toy-problems", "label-preserving-augmentation",
                     "augmentation-invariances", "compose-augmentations", "encode-categoricals", "unseen-tokens",
                     "val-test-match", "worst-predictions"), "data"),
    **dict.fromkeys(("initialization", "weight-tying", "categorical-embedding-size"), "model"),
    **dict.fromkeys(("overfit-tiny", "default-lr", "batch-size-lr-scaling", "one-cycle", "mixed-precision",
                     "gradient-accumulation", "activation-gradient-stats", "update-ratio"), "optimization"),
    **dict.fromkeys(("overfit-then-regularize", "mixup", "compute-scaling", "emergent-scaling"), "capacity"),
    **dict.fromkeys(("error-gaps", "metric-divergence", "logloss-downstream"), "generalization"),
}
# The causes the probes name (diagnosis.causes.CAUSE_ORDER), by the stage where the fix is made.
CAUSE_STAGES = {
    **dict.fromkeys(("unstable-pairing", "target-leak", "split-overlap", "labels-unrelated"), "data"),
    **dict.fromkeys(("causal-leak", "output-layer", "dead-layer", "hidden-softmax", "dead-units", "saturated",
                     "vanishing"), "model"),
    **dict.fromkeys(("sum-reduction", "not-optimized", "no-gradient", "frozen"), "optimization"),
    "regularisation": "capacity",
}
# A probe's finding that follows from another's: no gradient reaches the layers before a dead layer or an
# output that cannot move (diagnosis.causes ranks these structural faults first for that reason).
CONSEQUENCE_OF = {"no-gradient": ("dead-layer", "output-layer", "hidden-softmax")}
SEVERITY = ("fail", "error", "warn", "info", "pass", "skip")  # the order of findings within a section
LINE_CHARS = 180  # characters of a message's sentence quoted in a summary line
FIX_CHARS = 220  # characters of a fix quoted in a summary line


@dataclass
class NextStep:
    """One line of the summary: a warn or fail finding (or a check that could not run) and its fix."""

    tip: str
    check: str
    status: str
    stage: str
    title: str
    numbers: str  # the sentence of the message that carries the numbers ("" when the title has them)
    fix: str  # the fix's first sentence ("" without a fix)
    explains: list[str] = field(default_factory=list)  # "tip: title" of the symptoms this cause explains

    @property
    def line(self) -> str:
        """The step as one line of text: what, the numbers, the fix, and what it explains."""
        text = f"{self.title}"
        if self.numbers:
            text += f": {self.numbers}" + ("" if self.numbers.endswith((".", "!", "?", "…")) else ".")
        if self.fix:
            text += f" Fix: {self.fix}"
        if self.explains:
            text += f" (explains {'; '.join(self.explains)})"
        return text

    def to_dict(self) -> dict:
        return {"tip": self.tip, "check": self.check, "status": self.status, "stage": self.stage,
                "line": self.line, "explains": list(self.explains)}


def stage_of(finding: Finding) -> str:
    """The report section of a finding: its cause's stage when a probe named one, else its tip's."""
    cause = finding.evidence.get("cause")
    if isinstance(cause, str) and cause in CAUSE_STAGES:
        return CAUSE_STAGES[cause]
    return TIP_STAGES.get(finding.tip, "generalization")


def severity(finding: Finding) -> int:
    """A finding's rank within its section: fails first, then checks that could not run, warns, infos, passes,
    and last the checks skipped (for time, or because they do not apply)."""
    if finding.status == "skip" and finding.evidence.get("skip_reason") == SKIP_ERROR:
        return SEVERITY.index("error")
    return SEVERITY.index(finding.status)


def by_stage(findings: list[Finding]) -> list[tuple[str, list[Finding]]]:
    """Findings grouped by stage in causal order, each group ordered by severity (stable: the doctor's order
    breaks ties)."""
    groups: dict[str, list[Finding]] = {stage: [] for stage in STAGES}
    for finding in findings:
        groups[stage_of(finding)].append(finding)
    return [(stage, sorted(items, key=severity)) for stage, items in groups.items() if items]


def next_steps(findings: list[Finding]) -> list[NextStep]:
    """The summary's lines: what to fix first, in causal order (stage, then severity, then the doctor's order).

    Included: every fail and warn, and every check that could not run because code raised. A fundamental
    finding whose top-ranked cause is another finding of the report is folded into that cause's line.
    """
    flagged = [f for f in findings if f.status in ("fail", "warn") or severity(f) == SEVERITY.index("error")]
    by_cause = {f.evidence["cause"]: f for f in flagged if isinstance(f.evidence.get("cause"), str)}
    folded: dict[int, list[Finding]] = {}
    kept = []
    for f in flagged:
        causes = f.evidence.get("causes") or []
        top = by_cause.get(causes[0].get("cause")) if causes and isinstance(causes[0], dict) else None
        if top is None:  # a consequence of a structural fault the report also names
            top = next((by_cause[c] for c in CONSEQUENCE_OF.get(f.evidence.get("cause"), ()) if c in by_cause), None)
        if top is not None and top is not f:
            folded.setdefault(id(top), []).append(f)
        else:
            kept.append(f)
    order = sorted(range(len(kept)), key=lambda i: (list(STAGES).index(stage_of(kept[i])), severity(kept[i]), i))
    steps = []
    for i in order:
        f = kept[i]
        steps.append(NextStep(f.tip, f.check or f.tip, f.status, stage_of(f), _strip_stop(f.title),
                              "" if _has_measure(f.title) else _numbers(f.message), _first_sentence(f.fix, FIX_CHARS),
                              [f"{s.tip}: {_strip_stop(s.title)}" for s in folded.get(id(f), [])]))
    return steps


def summary_line(findings: list[Finding]) -> str:
    """The one line said when nothing is to be fixed: how many checks passed, and what was not examined."""
    passed = sum(f.status == "pass" for f in findings)
    for_time = sum(f.evidence.get("skip_reason") == SKIP_TIME for f in findings)
    text = f"Nothing to fix: {passed} check{'s' if passed != 1 else ''} passed and none warned or failed."
    if for_time:
        text += f" {for_time} could not finish in the budget (see the time section)."
    return text


@dataclass
class BudgetCut:
    """Checks the budget stopped before the end of their plan: what they share, and the time they need."""

    check: str
    tips: list[str]
    needs_s: float
    done: str

    def to_dict(self) -> dict:
        return {"check": self.check, "tips": self.tips, "needs_s": round(self.needs_s, 1), "done": self.done}


def budget_cuts(findings: list[Finding]) -> list[BudgetCut]:
    """The time-skips grouped by what they waited for: the short run's tips share one cut, worth one rerun."""
    cuts: dict[tuple[float, str], BudgetCut] = {}
    for f in findings:
        if f.evidence.get("skip_reason") != SKIP_TIME:
            continue
        needs, done = float(f.evidence.get("needs_s") or 0.0), str(f.evidence.get("done") or "")
        cut = cuts.setdefault((needs, done), BudgetCut(f.check or f.tip, [], needs, done))
        if f.tip not in cut.tips:
            cut.tips.append(f.tip)
    return list(cuts.values())


def suggested_budget(budget_s: float | None, cuts: list[BudgetCut]) -> float | None:
    """A budget that would let every cut check finish: the budget plus what they need, rounded up to 10 s."""
    if budget_s is None or not cuts:
        return None
    return float(math.ceil((budget_s + sum(c.needs_s for c in cuts)) / 10) * 10)


def _has_number(text: str) -> bool:
    return re.search(r"\d", text) is not None


def _has_measure(text: str) -> bool:
    """Whether `text` quotes a measurement (a decimal, a percentage, a power of ten), not only a count."""
    return re.search(r"\d\.\d|\d\s?%|\de[-+]?\d", text) is not None


def _strip_stop(text: str) -> str:
    return text.rstrip(" .")


def _sentences(text: str) -> list[str]:
    """`text` cut into sentences at a full stop, question or exclamation mark followed by a capital or a digit."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])", text.strip()) if s.strip()]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _first_sentence(text: str | None, limit: int) -> str:
    sentences = _sentences(text or "")
    return _clip(sentences[0], limit) if sentences else ""


def _numbers(message: str) -> str:
    """The first sentence of `message` that has a number in it (the evidence behind the verdict), clipped."""
    for sentence in _sentences(message):
        if _has_number(sentence):
            return _clip(sentence, LINE_CHARS)
    return ""
