import json
import math

import numpy as np
import pytest
import torch

from dltips import Finding, ParamError, Report


def test_report_json_follows_the_contract_and_round_trips(tmp_path):
    findings = [
        Finding("initialization", "pass", "Loss at init as expected", "measured 1.10, expected 1.10",
                evidence={"measured": torch.tensor(1.1), "expected": np.float64(1.0986), "per_class": np.ones(3)}),
        Finding("overfit-tiny", "fail", "Cannot overfit one example", "loss stayed at 2.3", fix="check the loss",
                evidence={"losses": [2.3, float("nan")]}),
        Finding("error-gaps", "skip", "Skipped", "overfit failed"),
    ]
    report = Report(task={"name": "t", "kind": "classification", "n_classes": 3, "n_params": 10,
                          "n_train": 5, "n_valid": 2, "n_test": 0}, findings=findings, duration_s=1.23456)
    path = tmp_path / "r.json"
    data = json.loads(report.to_json(path))
    assert set(data) == {"dltips_version", "task", "duration_s", "next_steps", "findings", "summary", "incomplete",
                         "timings"}
    assert [s["tip"] for s in data["next_steps"]] == ["overfit-tiny"]
    assert data["next_steps"][0]["line"] == "Cannot overfit one example: loss stayed at 2.3. Fix: check the loss"
    assert data["summary"] == {"pass": 1, "warn": 0, "fail": 1, "info": 0, "skip": 1}
    assert data["findings"][0]["theme"] == "training"
    assert data["findings"][0]["evidence"]["per_class"] == [1.0, 1.0, 1.0]
    assert math.isclose(data["findings"][0]["evidence"]["measured"], 1.1, rel_tol=1e-6)
    assert data["findings"][1]["evidence"]["losses"] == [2.3, None]
    assert json.loads(path.read_text()) == data
    again = Report.from_json(report.to_json())
    assert [f.to_dict() for f in again.findings] == data["findings"]
    assert report.failed and not Report(task={}, findings=findings[:1]).failed


def test_findings_reject_unknown_tips_statuses_and_evidence():
    with pytest.raises(ValueError, match="status"):
        Finding("one-cycle", "ok", "t", "m")
    with pytest.raises(ValueError, match="catalog id"):
        Finding("one_cycle", "pass", "t", "m")
    with pytest.raises(TypeError, match="evidence"):
        Finding("one-cycle", "pass", "t", "m", evidence={"x": object()}).to_dict()
    with pytest.raises(ParamError, match="Finding.status must be one of 'pass'"):
        Finding("one-cycle", "ok", "t", "m")


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import os

    from dltips.core.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.txt").read_text() == "x"
