"""Verdicts from what a `Watch` measured: `activation-gradient-stats` and `update-ratio`.

The thresholds are calibrated on healthy and broken training runs
(tests/monitor/test_watch_calibration.py; figures in docs/calibration.md):
healthy runs (AdamW and SGD, MLPs and CNNs of several sizes, ReLU and tanh)
stay inside them, and the broken ones (a dead-ReLU init, a saturating tanh
init, a layer left out of the optimizer, a loop without `optimizer.step()`, a
far-too-high learning rate) fall outside.
"""

from __future__ import annotations

import math

import numpy as np

from dltips.findings import Finding
from dltips.monitor import stats
from dltips.monitor.samples import Sample, WatchedRun, rebin

# A ReLU layer with this fraction of its units dead (zero for every item of a batch),
# at initialization or in the median sample of the run's second half, is flagged.
# Measured: healthy runs at most 0.53 (late) and 0.50 (init); broken runs 0.94 to 1.0.
DEAD_WARN = 0.7
# A bounded activation with this fraction of its outputs flat (slope < 5 % of peak).
# Measured: healthy runs at most 0.062; a saturating init 0.62 (init) and 0.64 (late). Saturation that
# appears only during training is `info`: a healthy digits tanh MLP (tests/calibration/causes_model.py
# shallow_tanh_task) reaches 41 % at AdamW lr 1e-2 and 73 % at 3e-2 with the same 4 % validation error as
# at 3e-3 (0 %), and no broken run of the calibration sets is saturated only late.
SATURATED_WARN = 0.2
# norm(update) / norm(weights) per weight matrix. The median over the sampled steps
# must lie in UPDATE_BAND and the largest sampled value below UPDATE_PEAK (the seed's
# "50 %: changes too fast"). Measured medians: healthy 1.3e-3 to 1.9e-2; a dead init
# 1e-5, a zero LR 0; peaks: healthy at most 0.165, far-too-high LRs 0.70 and 14.
UPDATE_BAND = (1e-4, 1e-1)
UPDATE_PEAK = 0.5
UPDATE_TARGET = 1e-2  # the seed's "about 1 %"
# Low ratios are no fault once the logged loss has fallen this far below its start:
# with nothing left to learn, Adam's steps shrink (a healthy run converged to 1e-5 of
# its first loss and its ratios fell to 3e-5).
CONVERGED = 1e-3
MAX_PANELS = 12


def watch_findings(watch: WatchedRun) -> list[Finding]:
    """The monitors' verdicts on one run, in the order a reader wants them."""
    from dltips.monitor.loop import loop_findings

    findings = nonfinite_findings(watch)
    loop = loop_findings(watch)
    findings.extend(loop)  # named loop bugs come before the statistics they explain
    findings.append(activation_finding(watch))
    if not any(f.evidence.get("cause") == "zeroed-before-step" for f in loop):
        findings.append(update_ratio_finding(watch))  # else every ratio is 0 because of it, and "no gradient" false
    return findings


def late_samples(samples: list[Sample]) -> list[Sample]:
    """The second half of the samples (the run after it settled), at least one."""
    return samples[len(samples) // 2:] if len(samples) > 1 else samples


def layer_median(samples: list[Sample], layer: str, name: str) -> float:
    """The median of one activation field of `layer` over `samples` (NaN where it was never measured)."""
    values = [s.activation(layer, name) for s in samples if layer in s.activations]
    values = [v for v in values if not math.isnan(v)]
    return float(np.median(values)) if values else math.nan


def layer_names(samples: list[Sample]) -> list[str]:
    """The layers with activation statistics in any sample, in the order they first appear."""
    names: dict[str, None] = {}
    for sample in samples:
        names.update(dict.fromkeys(sample.activations))
    return list(names)


# ---------------------------------------------------------------------- non-finite values


def nonfinite_findings(watch: WatchedRun) -> list[Finding]:
    """A `fail` naming the first step and layer where NaN or infinity appeared; nothing when all was finite."""
    loss_step = watch.first_nonfinite_loss_step
    first = None
    for sample in watch.samples + ([watch.last] if watch.last is not None else []):
        if _nonfinite_parts(sample) != ([], [], []):
            first = sample
            break
    if loss_step is None and first is None:
        return []
    parts = []
    evidence: dict = {"first_nonfinite_loss_step": loss_step}
    if loss_step is not None:
        parts.append(f"The loss was first NaN or infinite on step {loss_step} (counted from 0, as in the figures).")
    if first is not None:
        outputs, gradients, weights = _nonfinite_parts(first)
        evidence.update(first_sampled_step=first.step, layers=outputs, gradients=gradients, weights=weights)
        where = []
        if weights:
            where.append(f"weights already non-finite: {_names(weights)}")
        if outputs:
            where.append(f"first layer with non-finite outputs (forward order): {outputs[0]}")
        if gradients:
            where.append(f"non-finite gradients, from the output back: {_names(gradients[::-1])}")
        parts.append(f"On sampled step {first.step} (statistics are taken every {watch.every} steps): "
                     + "; ".join(where) + ".")
    return [Finding(
        tip="activation-gradient-stats",
        status="fail",
        title="NaN or infinite values in training",
        message=" ".join(parts),
        fix=("Lower the learning rate (see update-ratio) or clip gradients; look for log(0), division by zero "
             "or sqrt(0) in the loss and the first layer named; with float16, use bfloat16 or a GradScaler. "
             "Watch with every=1 to find the exact first step and layer."),
        evidence=evidence,
    )]


def _nonfinite_parts(sample: Sample) -> tuple[list[str], list[str], list[str]]:
    outputs = [layer for layer, row in sample.activations.items()
               if not all(map(math.isfinite, (sample.activation(layer, "min"), sample.activation(layer, "max"))))]
    gradients = [p for p in sample.gradients if not math.isfinite(sample.gradient(p, "norm"))]
    weights = [p for p, norm in sample.weight_norms.items() if not math.isfinite(norm)]
    return outputs, gradients, weights


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ---------------------------------------------------------------------- activations and gradients


def activation_finding(watch: WatchedRun) -> Finding:
    """Dead ReLU units and saturated tanh/sigmoid outputs per layer, with the likely cause."""
    samples = watch.samples
    if not samples:
        return Finding("activation-gradient-stats", "skip", "No sampled step",
                       f"The watch saw no training step to sample (it samples every {watch.every} steps, "
                       "from the first).", fix="Run at least one training step inside the watch.")
    late, first = late_samples(samples), samples[0]
    dead, saturated, rows = {}, {}, []
    for layer in layer_names(samples):
        late_dead, late_sat = layer_median(late, layer, "dead"), layer_median(late, layer, "saturated")
        init_dead, init_sat = layer_median([first], layer, "dead"), layer_median([first], layer, "saturated")
        if late_dead >= DEAD_WARN or init_dead >= DEAD_WARN:
            dead[layer] = {"dead": late_dead, "at_init": init_dead}
        if late_sat >= SATURATED_WARN or init_sat >= SATURATED_WARN:
            saturated[layer] = {"saturated": late_sat, "at_init": init_sat}
        last = late[-1]
        std = math.sqrt(max(last.activation(layer, "var"), 0.0)) if layer in last.activations else math.nan
        mean = last.activation(layer, "mean") if layer in last.activations else math.nan
        rows.append([_label(watch, layer), _round(mean), _round(std), _round(late_dead), _round(late_sat)])
    gradients = _gradient_summary(late)
    evidence = {"dead": dead, "saturated": saturated, "dead_warn": DEAD_WARN, "saturated_warn": SATURATED_WARN,
                "samples": len(samples), "every": watch.every, "gradients": gradients}
    figures = activation_figures(watch)
    figures.insert(0, {"kind": "table", "title": "Layers (median of the second half of the run; last sample's mean/std)",
                       "columns": ["layer", "mean", "std", "dead units", "saturated outputs"], "rows": rows})
    if not dead and not saturated:
        return Finding("activation-gradient-stats", "pass", "No dead or saturated layer",
                       f"Over {len(samples)} sampled steps (every {watch.every}) no ReLU layer had {DEAD_WARN:.0%} "
                       f"of its units dead and no tanh/sigmoid layer had {SATURATED_WARN:.0%} of its outputs "
                       "saturated, at initialization or in the median sample of the run's second half.",
                       evidence=evidence, figures=figures)
    parts, fixes = [], []
    if dead:
        listed = "; ".join(f"{_label(watch, k)}: {v['at_init']:.0%} dead at init, {v['dead']:.0%} later"
                           for k, v in dead.items())
        when, init, later = _onset(watch, dead, DEAD_WARN)
        recovered = _recovered(watch, dead, "dead", DEAD_WARN)
        parts.append(f"ReLU layers with units that output zero for every item of a batch ({when}): {listed}. "
                     "A dead unit passes no gradient, so it recovers only if the layers before it change its "
                     f"inputs{'; ' + recovered + ' recovered later' if recovered else ''}.")
        if init:
            fixes.append(f"initialization of the layers before {_names([_label(watch, k) for k in dead])}: He "
                         "(Kaiming) init and zero or small positive biases; normalise the inputs")
        if later:
            fixes.append(f"learning rate: lower it (see update-ratio) or warm it up; LeakyReLU or GELU in place of "
                         f"{_names([_label(watch, k) for k in dead])} cannot die")
    if saturated:
        listed = "; ".join(f"{_label(watch, k)}: {v['at_init']:.0%} saturated at init, {v['saturated']:.0%} later"
                           for k, v in saturated.items())
        when, init, later = _onset(watch, saturated, SATURATED_WARN)
        recovered = _recovered(watch, saturated, "saturated", SATURATED_WARN)
        parts.append(f"Bounded activations on their flat ends, slope below 5 % of its peak ({when}): {listed}; "
                     "gradients through them nearly vanish"
                     f"{' (' + recovered + ' recovered later)' if recovered else ''}.")
        if init:
            fixes.append(f"initialization of the layers before {_names([_label(watch, k) for k in saturated])}: "
                         "scale the weights down (Xavier/Glorot; gain 5/3 for tanh) or add a normalisation layer "
                         "before the activation")
        if later:
            fixes.append("learning rate or activation choice: lower the LR, add normalisation, or use ReLU/GELU")
    late_only = not dead and all(v["at_init"] < SATURATED_WARN for v in saturated.values())
    if late_only:  # see SATURATED_WARN: saturation that grows during training went with healthy fits
        return Finding("activation-gradient-stats", "info", f"{len(saturated)} layer(s) saturated later in training",
                       " ".join(parts) + " Saturation that grows as a model becomes confident is common; it is a "
                       "problem only when training stalls (the error gaps and update-ratio say whether it did).",
                       evidence=evidence, figures=figures)
    return Finding("activation-gradient-stats", "warn",
                   f"{len(dead) + len(saturated)} layer(s) dead or saturated",
                   " ".join(parts), fix=("Likely cause, " if len(fixes) == 1 else "Likely causes, ")
                   + "; ".join(fixes) + ".",
                   evidence=evidence, figures=figures)


def _onset(watch: WatchedRun, flagged: dict[str, dict], limit: float) -> tuple[str, bool, bool]:
    """When the flagged layers went flat: (words, some already at init, some only later), true of every layer named."""
    init = [k for k, v in flagged.items() if v["at_init"] >= limit]
    later = [k for k in flagged if k not in init]
    if not later:
        return "starting at initialization", True, False
    if not init:
        return "during training (not at initialization)", False, True
    return (f"{_names([_label(watch, k) for k in init])} from initialization, "
            f"{_names([_label(watch, k) for k in later])} only during training"), True, True


def _recovered(watch: WatchedRun, flagged: dict[str, dict], name: str, limit: float) -> str:
    """The layers flagged at initialization whose later median is back under the limit ('' when none)."""
    back = [_label(watch, k) for k, v in flagged.items() if v["at_init"] >= limit and not v[name] >= limit]
    return _names(back) if back else ""


def _gradient_summary(samples: list[Sample]) -> dict[str, dict[str, float]]:
    summary = {}
    for parameter in dict.fromkeys(p for s in samples for p in s.gradients):
        norms = [s.gradient(parameter, "norm") for s in samples if parameter in s.gradients]
        zeros = [s.gradient(parameter, "near_zero") for s in samples if parameter in s.gradients]
        summary[parameter] = {"norm": _round(float(np.median(norms))), "near_zero": _round(float(np.median(zeros)))}
    return summary


# ---------------------------------------------------------------------- update ratio


def update_ratio_finding(watch: WatchedRun) -> Finding:
    """norm(update) / norm(weights) per weight matrix against the calibrated band."""
    low, high = UPDATE_BAND
    if watch.optimizer is None:
        return Finding("update-ratio", "skip", "No optimizer watched",
                       "Update ratios need the optimizer: watch(model, optimizer).")
    if watch.training_forwards and not watch.optimizer_steps:
        return Finding("update-ratio", "fail", "The optimizer never stepped",
                       f"The model ran {watch.training_forwards} training forward passes but optimizer.step() "
                       "was never called, so no weight changed.",
                       fix="Call optimizer.step() after loss.backward() (and optimizer.zero_grad() before it).",
                       evidence={"training_forwards": watch.training_forwards, "optimizer_steps": 0})
    samples = [s for s in watch.samples if s.updates]
    if not samples:
        return Finding("update-ratio", "skip", "No sampled optimizer step",
                       f"The watch samples every {watch.every} optimizer steps and saw none.")
    ratios, peaks = {}, {}
    for parameter in dict.fromkeys(p for s in samples for p in s.updates):
        if len(watch.shapes.get(parameter, ())) < 2:
            continue  # biases and norm scales start at 0 or 1: their ratios mislead
        values = [s.updates[parameter] for s in samples if parameter in s.updates]
        values = [v for v in values if math.isfinite(v)]
        if values:
            ratios[parameter], peaks[parameter] = float(np.median(values)), max(values)
    problems = []
    if watch.not_in_optimizer:
        problems.append(f"parameters with requires_grad=True that the optimizer does not hold (never updated): "
                        f"{_names(watch.not_in_optimizer)}.")
    if watch.no_gradient:
        problems.append(f"parameters that received no gradient (not connected to the loss): "
                        f"{_names(sorted(watch.no_gradient))}.")
    converged = _converged(watch)
    too_low = {p: r for p, r in ratios.items() if r < low and not (converged and r > 0)}
    too_high = {p: max(r / high, peaks[p] / UPDATE_PEAK) for p, r in ratios.items()
                if r > high or peaks[p] > UPDATE_PEAK}
    centre = math.sqrt(low * high)
    factors = {p: _round(centre / r) if r > 0 else math.inf for p, r in too_low.items()}
    factors.update({p: _round(1 / excess) for p, excess in too_high.items()})
    if too_low:
        frozen = [p for p, r in too_low.items() if r == 0]
        slow = {p: r for p, r in too_low.items() if r > 0}
        if frozen:
            problems.append(f"weights that did not change at all: {_names(frozen)} (learning rate 0, or no "
                            "gradient reaches them: dead ReLU units, a detach, a frozen branch).")
        if slow:
            listed = ", ".join(f"{p} {r:.1e} (LR x{factors[p]:.3g})" for p, r in slow.items())
            problems.append(f"median update ratios below {low:.0e} (barely learning): {listed}.")
    if too_high:
        listed = ", ".join(f"{p} median {ratios[p]:.1e}, peak {peaks[p]:.2g} (LR x{factors[p]:.3g})"
                           for p in too_high)
        problems.append(f"update ratios above {high:.0e} (median) or {UPDATE_PEAK:.0%} of the weights in one step "
                        f"(moving too fast, may overshoot): {listed}.")
    evidence = {"median_ratio": {p: _round(r) for p, r in ratios.items()},
                "peak_ratio": {p: _round(r) for p, r in peaks.items()}, "band": list(UPDATE_BAND),
                "peak_limit": UPDATE_PEAK, "converged": converged,
                "target": UPDATE_TARGET, "lr_factor": factors, "not_in_optimizer": watch.not_in_optimizer,
                "no_gradient": sorted(watch.no_gradient), "samples": len(samples)}
    figures = [update_figure(samples, list(ratios))]
    summary = (f"median over {len(samples)} sampled steps, from {min(ratios.values()):.1e} to "
               f"{max(ratios.values()):.1e}" if ratios else "no weight matrix was measured")
    if not problems and not ratios:
        return Finding("update-ratio", "info", "No weight matrix to measure",
                       "Update ratios are read on weight matrices (parameters of two or more dimensions); the "
                       f"optimizer's parameters had none over {len(samples)} sampled steps.",
                       evidence=evidence, figures=figures)
    if not problems:
        return _ratios_in_band(ratios, summary, evidence, figures)
    title = {(True, True): "Layers learning too slowly or too fast", (True, False): "Layers learning too slowly",
             (False, True): "Layers learning too fast"}.get((bool(too_low), bool(too_high)),
                                                            "Parameters that are never updated")
    return Finding("update-ratio", "warn", title, f"norm(update)/norm(weights), {summary}. Problems: "
                   + " ".join(problems), fix=_update_fix(watch, too_low, too_high, centre, factors),
                   evidence=evidence, figures=figures)


def _ratios_in_band(ratios: dict[str, float], summary: str, evidence: dict, figures: list) -> Finding:
    """The pass: every median in the band, or below it only because the loss has converged (said so).

    Medians below the band reach here only when the run converged (otherwise they are problems).
    """
    low, high = UPDATE_BAND
    below = [p for p, r in ratios.items() if r < low]
    peak = f"no step moved a matrix by {UPDATE_PEAK:.0%} (the seed's target is about {UPDATE_TARGET:.0e})"
    if not below:
        return Finding("update-ratio", "pass", "Update-to-weight ratios in band",
                       f"norm(update)/norm(weights) per weight matrix, {summary}; inside the healthy band "
                       f"[{low:.0e}, {high:.0e}] and {peak}.", evidence=evidence, figures=figures)
    return Finding("update-ratio", "pass", "Update-to-weight ratios in band, or small after convergence",
                   f"norm(update)/norm(weights) per weight matrix, {summary}; {len(below)} of {len(ratios)} "
                   f"below the healthy band [{low:.0e}, {high:.0e}] ({_names(below)}), which is expected since the "
                   f"loss fell below 1/1000 of its start, the others inside it; {peak}.",
                   evidence=evidence, figures=figures)


def _update_fix(watch: WatchedRun, too_low: dict[str, float], too_high: dict[str, float], centre: float,
                factors: dict[str, float]) -> str:
    """What to do about the problems found, and only those, naming the parameters and the LR factors."""
    fixes = []
    if watch.not_in_optimizer:
        fixes.append(f"Build the optimizer after the model is complete, from model.parameters(): it does not hold "
                     f"{_names(watch.not_in_optimizer)}.")
    if watch.no_gradient:
        fixes.append(f"Connect {_names(sorted(watch.no_gradient))} to the loss, or set requires_grad=False on them.")
    frozen = [p for p, r in too_low.items() if r == 0]
    if frozen:
        fixes.append(f"Check that {_names(frozen)} get a gradient (no detach, no frozen branch, no dead units before "
                     "them) and a learning rate above 0.")
    scaled = [p for p in (*too_low, *too_high) if math.isfinite(factors.get(p, math.inf))]
    if scaled:
        listed = ", ".join(f"{p} by {factors[p]:.3g}" for p in scaled[:8])
        more = f" and {len(scaled) - 8} more (see the evidence)" if len(scaled) > 8 else ""
        fixes.append(f"Multiply the learning rate of {listed}{more} (the ratio scales with the LR; slow layers move "
                     f"to the band's centre, {centre:.0e}, fast ones under its top), or give them their own "
                     "parameter group.")
    return " ".join(fixes)


def _converged(watch: WatchedRun) -> bool:
    """Whether the logged loss fell below CONVERGED times its first logged value (False without a logged loss)."""
    losses = [s.scalars["loss"] for s in watch.samples if math.isfinite(s.scalars.get("loss", math.nan))]
    if watch.last is not None and math.isfinite(watch.last.scalars.get("loss", math.nan)):
        losses.append(watch.last.scalars["loss"])
    return len(losses) >= 2 and losses[0] > 0 and losses[-1] <= CONVERGED * losses[0]


# ---------------------------------------------------------------------- figures


def activation_figures(watch: WatchedRun) -> list[dict]:
    """Histograms over time per layer (heat maps) and the dead/saturated fractions per layer."""
    samples = watch.samples
    figures = []
    for title, key, fields in (("Activations per layer over training (log count)", "activations",
                                stats.ACTIVATION_FIELDS),
                               ("Weight gradients per layer over training (log count)", "gradients",
                                stats.GRADIENT_FIELDS)):
        names = list(dict.fromkeys(n for s in samples for n in getattr(s, key)))[:MAX_PANELS]
        panels = []
        for name in names:
            rows = [(s.step, getattr(s, key)[name]) for s in samples if name in getattr(s, key)]
            lows = [r[fields.index("min")] for _, r in rows if math.isfinite(r[fields.index("min")])]
            highs = [r[fields.index("max")] for _, r in rows if math.isfinite(r[fields.index("max")])]
            if not lows or not highs:
                continue
            low, high = min(lows), max(highs)
            columns = [np.log1p(rebin(r[len(fields):], r[fields.index("min")], r[fields.index("max")],
                                      low, high, watch.bins)) for _, r in rows]
            panels.append({"name": _label(watch, name), "z": np.stack(columns, axis=1).round(3).tolist(),
                           "x": [step for step, _ in rows], "y_range": [low, high]})
        if panels:
            figures.append({"kind": "heatmap", "title": title, "xlabel": "step", "ylabel": "value",
                            "panels": panels})
    for name, title in (("dead", "Dead units per ReLU layer"), ("saturated", "Saturated outputs per bounded layer")):
        series = {}
        for layer in layer_names(samples):
            values = [s.activation(layer, name) if layer in s.activations else math.nan for s in samples]
            if any(not math.isnan(v) for v in values):
                series[_label(watch, layer)] = [_round(v) for v in values]
        if series:
            figures.append({"kind": "lines", "title": title, "x": [s.step for s in samples], "series": series,
                            "xlabel": "step", "ylabel": f"fraction {name}"})
    return figures


def update_figure(samples: list[Sample], parameters: list[str]) -> dict:
    """Update ratios per weight matrix on a log scale, the healthy band shaded."""
    series = {p: [_round(s.updates.get(p, math.nan)) for s in samples] for p in parameters[:MAX_PANELS * 2]}
    return {"kind": "lines", "title": "norm(update) / norm(weights) per weight matrix (band shaded)",
            "x": [s.step for s in samples],
            "series": series, "xlabel": "step", "ylabel": "update ratio", "ylog": True, "band": list(UPDATE_BAND)}


def _label(watch: WatchedRun, layer: str) -> str:
    """A layer's name with its class, e.g. "features.3 (ReLU)"; parameter names pass through."""
    kind = watch.layer_types.get(layer)
    return f"{layer} ({kind})" if kind else layer


def _round(value: float, digits: int = 4) -> float:
    if value is None or not math.isfinite(value) or value == 0:
        return value
    return float(f"{value:.{digits}g}")
