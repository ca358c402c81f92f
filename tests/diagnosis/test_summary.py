"""The summary that opens every report: what to fix first in causal order, the time section, and the JSON."""

import io
import json

from dltips import Finding, Report
from dltips.diagnosis.summary import STAGES, by_stage, next_steps, stage_of, suggested_budget
from dltips.diagnosis.terminal import render_terminal
from dltips.findings import could_not_run, skipped_for_time


def dead_layer() -> Finding:
    return Finding("activation-gradient-stats", "fail", "A layer is entirely dead at initialisation",
                   "At initialisation, on 256 training items: every unit of 1 (ReLU) outputs zero.",
                   "Reinitialise layer 0 (before 1) (Kaiming init). Or use GELU.", {"cause": "dead-layer"},
                   check="cause-probes")


def overfit_fails() -> Finding:
    return Finding("overfit-tiny", "fail", "Cannot overfit 2 training items",
                   "Rung 2 failed. After 300 steps the loss is 0.79, 50% right.", "Reinitialise layer 0 (before 1).",
                   {"causes": [{"cause": "dead-layer", "tip": "activation-gradient-stats"}]})


def test_steps_follow_causal_order_then_severity():
    findings = [
        Finding("error-gaps", "warn", "High variance", "Validation error 12.0% against training 1.0%.", "Regularise."),
        Finding("update-ratio", "warn", "Layers learning too slowly", "Median 3.1e-05.", "Raise the LR."),
        Finding("overfit-tiny", "fail", "Cannot overfit 1 training item", "The loss stayed at 2.3.", "Check the loss."),
        Finding("initialization", "pass", "As expected", "2.30."),
        Finding("verify-transforms", "warn", "Unnormalised inputs", "Values from 0 to 255.", "Scale them."),
    ]
    steps = next_steps(findings)
    assert [s.tip for s in steps] == ["verify-transforms", "overfit-tiny", "update-ratio", "error-gaps"]
    assert [s.stage for s in steps] == ["data", "optimization", "optimization", "generalization"]
    # a line carries the numbers of its message and the first sentence of its fix
    assert steps[0].line == "Unnormalised inputs: Values from 0 to 255. Fix: Scale them."
    # a title that quotes a measurement is not repeated by the message's sentence
    assert next_steps([Finding("error-gaps", "warn", "Error 12.0%", "Validation 12.0%.", None)])[0].line == "Error 12.0%"


def test_a_symptom_is_folded_into_its_cause():
    steps = next_steps([overfit_fails(), dead_layer()])
    assert len(steps) == 1
    step = steps[0]
    assert step.tip == "activation-gradient-stats" and step.check == "cause-probes" and step.stage == "model"
    assert step.explains == ["overfit-tiny: Cannot overfit 2 training items"]
    assert step.line.endswith("(explains overfit-tiny: Cannot overfit 2 training items)")
    assert "Fix: Reinitialise layer 0 (before 1) (Kaiming init)." in step.line
    # without the cause's finding in the report, the symptom stays a step of its own
    assert [s.tip for s in next_steps([overfit_fails()])] == ["overfit-tiny"]


def test_a_cause_moves_its_finding_to_the_stage_of_the_fix():
    assert stage_of(dead_layer()) == "model"
    assert stage_of(Finding("activation-gradient-stats", "warn", "Dead later", "x")) == "optimization"
    leak = Finding("error-gaps", "fail", "A feature gives the label away", "x", evidence={"cause": "target-leak"})
    assert stage_of(leak) == "data"
    assert set(STAGES) == {stage for stage, _ in by_stage([leak, dead_layer(), overfit_fails()])} | {"capacity",
                                                                                                  "generalization"}


def test_a_check_that_could_not_run_is_a_step_and_comes_before_warnings():
    try:
        raise RuntimeError("shape mismatch")
    except RuntimeError as e:
        crashed = could_not_run("update-ratio", e)
    warn = Finding("update-ratio", "warn", "Layers learning too slowly", "Median 3.1e-05.", "Raise the LR.")
    steps = next_steps([warn, crashed])
    assert [s.status for s in steps] == ["skip", "warn"]
    stream = io.StringIO()
    render_terminal(Report(task={}, findings=[warn, crashed]), stream)
    assert "  1. ERROR update-ratio" in stream.getvalue()


def test_an_all_clear_report_says_so_in_one_line():
    findings = [Finding("initialization", "pass", "As expected", "2.30."), Finding("one-cycle", "info", "i", "x"),
                Finding("default-lr", "pass", "In range", "x")]
    report = Report(task={"name": "t"}, findings=findings)
    assert report.next_steps == [] and report.to_dict()["next_steps"] == []
    stream = io.StringIO()
    render_terminal(report, stream)
    lines = stream.getvalue().splitlines()
    assert lines[2] == "All clear. Nothing to fix: 2 checks passed and none warned or failed."
    assert "Fix first" not in lines


def test_what_the_budget_cut_is_reported_with_the_budget_that_would_finish():
    short = [skipped_for_time(tip, 41.3, "the short training run stopped at step 288 of 712") for tip in
             ("error-gaps", "worst-predictions", "metric-divergence")]
    capacity = skipped_for_time("overfit-then-regularize", 12.0, "900 of its 2000 planned steps ran")
    report = Report(task={"name": "t"}, findings=[*short, capacity], duration_s=29.0,
                    timings={"overfit-tiny": 3.0, "short-run": 20.0}, budget_s=30.0)
    cuts = report.budget_cuts
    assert [(c.tips, c.needs_s) for c in cuts] == [(["error-gaps", "worst-predictions", "metric-divergence"], 41.3),
                                                   (["overfit-then-regularize"], 12.0)]
    assert suggested_budget(30.0, cuts) == 90.0  # 30 + 41.3 + 12, rounded up to 10 s
    assert suggested_budget(None, cuts) is None and suggested_budget(30.0, []) is None
    stream = io.StringIO()
    render_terminal(report, stream)
    text = stream.getvalue()
    assert "in 29.0 s of a 30.0 s budget" in text
    assert ("cut  error-gaps, worst-predictions, metric-divergence: needs about 41 s more (the short training run "
            "stopped at step 288 of 712)") in text
    assert "--budget 90 would let every check finish." in text
    html = report.to_html()
    assert "stopped at step 288 of 712" in html and "<code>--budget 90</code>" in html
    timings = json.loads(report.to_json())["timings"]
    assert timings["budget_s"] == 30.0 and timings["checks_s"] == {"overfit-tiny": 3.0, "short-run": 20.0}
    assert timings["cut"][0]["needs_s"] == 41.3 and timings["suggested_budget_s"] == 90.0


def test_json_carries_the_steps_the_checks_and_their_times_and_reads_back():
    report = Report(task={"name": "t"}, findings=[overfit_fails(), dead_layer()], duration_s=2.0,
                    timings={"overfit-tiny": 1.5, "cause-probes": 0.02}, budget_s=60.0)
    data = json.loads(report.to_json())
    assert [s["tip"] for s in data["next_steps"]] == ["activation-gradient-stats"]
    assert data["next_steps"][0]["explains"] == ["overfit-tiny: Cannot overfit 2 training items"]
    assert [f["check"] for f in data["findings"]] == ["overfit-tiny", "cause-probes"]
    back = Report.from_json(report.to_json())
    assert back.timings == report.timings and back.budget_s == 60.0
    assert [f.check for f in back.findings] == ["overfit-tiny", "cause-probes"]
    # an older report, without checks, steps or timings, still reads
    old = {k: v for k, v in data.items() if k not in ("next_steps", "timings")}
    old["findings"] = [{k: v for k, v in f.items() if k != "check"} for f in old["findings"]]
    again = Report.from_json(json.dumps(old))
    assert again.timings == {} and again.budget_s is None and again.findings[1].check is None


def test_parameters_without_gradient_behind_a_dead_layer_are_folded_into_it():
    stuck = Finding("update-ratio", "fail", "Parameters no gradient reaches", "No gradient reaches 0.weight.",
                    "Build the optimizer over model.parameters().", {"cause": "no-gradient"})
    steps = next_steps([overfit_fails(), stuck, dead_layer()])
    assert [s.tip for s in steps] == ["activation-gradient-stats"]
    assert steps[0].explains == ["overfit-tiny: Cannot overfit 2 training items",
                                 "update-ratio: Parameters no gradient reaches"]
    # alone, it is a step of its own
    assert [s.tip for s in next_steps([stuck])] == ["update-ratio"]
