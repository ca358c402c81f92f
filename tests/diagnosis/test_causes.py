"""Differential diagnosis: causes ranked and named inside the failing findings, one voice on the LR, and the
labels-unrelated reading of the error gaps."""

import sys
from pathlib import Path

from dltips import Finding, doctor
from dltips.diagnosis.causes import attach_causes, labels_unrelated, one_voice_on_lr, rank_causes

sys.path.insert(0, str(Path(__file__).parents[1] / "calibration"))
import causes_model  # noqa: E402


def _cause(tip, status, name, title="t"):
    return Finding(tip, status, title, f"{name} words.", f"fix {name}", {"cause": name})


def test_causes_rank_fails_first_then_structural_faults_before_their_consequences():
    causes = [_cause("activation-gradient-stats", "warn", "saturated"),
              _cause("update-ratio", "fail", "no-gradient"),
              _cause("initialization", "fail", "output-layer"),
              _cause("activation-gradient-stats", "fail", "vanishing")]
    assert [c.evidence["cause"] for c in rank_causes(causes)] == ["output-layer", "no-gradient", "vanishing",
                                                                 "saturated"]


def test_the_top_cause_is_named_in_each_failing_fundamental_finding_and_its_fix_comes_first():
    symptom = Finding("overfit-tiny", "fail", "Cannot overfit 2 training items", "Rung 2 failed.", "Train by hand.")
    healthy = Finding("default-lr", "pass", "fine", "fine.")
    own = _cause("initialization", "fail", "output-layer", "The output layer cannot produce what the loss needs")
    findings = [symptom, healthy, own]
    attach_causes(findings, [_cause("update-ratio", "fail", "no-gradient", "No gradient"), own])
    assert "Most likely cause (initialization): The output layer cannot produce" in symptom.message
    assert "Also seen: no gradient (update-ratio)" in symptom.message
    assert symptom.fix == "fix output-layer Train by hand."
    assert [c["cause"] for c in symptom.evidence["causes"]] == ["output-layer", "no-gradient"]
    assert "causes" not in own.evidence and "Most likely" not in own.message  # a cause does not explain itself
    assert healthy.message == "fine."


def test_one_voice_on_the_lr():
    lr_pass = Finding("default-lr", "pass", "LR sane", ".", None, {"conclusive": True, "comparable": True,
                                                                   "ratio_to_min": 0.2, "limits": {"max_ratio": 1}})
    dead = Finding("activation-gradient-stats", "warn", "dead", "Dead units.", "learning rate: lower it")
    one_voice_on_lr([lr_pass, dead])
    assert "puts the Task's learning rate in range" in dead.message and dead.evidence["lr_verdict"] == "in range"
    too_high = Finding("default-lr", "warn", "LR 3 is past the loss minimum", ".", None,
                       {"conclusive": True, "comparable": True, "ratio_to_min": 50.0, "limits": {"max_ratio": 1}})
    rung = Finding("overfit-tiny", "fail", "Cannot overfit", "Rung failed.")
    one_voice_on_lr([too_high, rung])
    assert "finds the Task's learning rate too high" in rung.message
    inconclusive = Finding("default-lr", "pass", "x", ".", None, {"conclusive": False})
    other = Finding("activation-gradient-stats", "warn", "dead", "Dead.", "lower the LR")
    one_voice_on_lr([inconclusive, other])
    assert other.message == "Dead."


def _gaps(valid, baseline, kind="classification", se=0.02):
    return Finding("error-gaps", "warn", "High bias", ".", None,
                   {"kind": kind, "errors": {"train": valid, "valid": valid, "baseline": baseline},
                    "standard_errors": {"valid": se}})


def test_labels_unrelated_when_the_validation_error_is_no_better_than_the_baseline():
    assert labels_unrelated(_gaps(0.87, 0.90), ladder_passed=True).evidence["cause"] == "labels-unrelated"
    assert labels_unrelated(_gaps(0.80, 0.90), ladder_passed=True) is None  # 5 standard errors better
    assert labels_unrelated(_gaps(0.87, 0.90), ladder_passed=False) is None  # the fit itself is broken
    assert labels_unrelated(_gaps(0.87, 0.90, kind="language-model"), ladder_passed=True) is None


def test_the_doctor_names_a_dead_layer_under_its_own_tip_when_overfit_tiny_fails_first():
    report = doctor(causes_model.dead_biases_task(), budget_s=30, progress=False, device="cpu")
    by_tip = {}
    for f in report.findings:
        by_tip.setdefault(f.tip, []).append(f)
    assert by_tip["overfit-tiny"][0].status == "fail"
    assert by_tip["overfit-tiny"][0].evidence["causes"][0]["cause"] == "dead-layer"
    assert [f.status for f in by_tip["activation-gradient-stats"]] == ["fail"]  # not "skipped: overfit-tiny failed"
    assert "outputs zero for all 256 items" in by_tip["activation-gradient-stats"][0].message
    assert by_tip["default-lr"][0].status == "skip"  # still not run: the ladder failed
