"""dltips.watch: statistics against values computed by hand, hooks, cadence, bounds, non-finite values."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltips import Watch, watch
from dltips.monitor import stats
from dltips.monitor.samples import rebin
from dltips.monitor.sinks import MemorySink

pytestmark = pytest.mark.usefixtures("one_thread")
BINS = 8


def small_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3))


def batch(seed: int = 0, n: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g) * 2, torch.randint(0, 3, (n,), generator=g)


def reference_histogram(values: np.ndarray) -> np.ndarray:
    return np.histogram(values, bins=BINS, range=(values.min(), values.max()))[0]


def assert_histogram_close(counts: np.ndarray, values: np.ndarray) -> None:
    """Equal to numpy's histogram up to float rounding at bin edges (one value may change bins)."""
    expected = reference_histogram(values)
    assert counts.sum() == values.size
    assert np.abs(counts - expected).sum() <= 2, (counts, expected)


def test_one_step_statistics_match_values_computed_by_hand():
    model = small_model()
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batch()
    with torch.no_grad():  # give the ReLU some dead units: a unit with a very negative bias never fires
        model[0].bias[:2] = -100.0
        reference[0].bias[:2] = -100.0
    with watch(model, optimizer, every=1, bins=BINS) as w:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sample = w.samples[0]
    assert sample.step == 0

    # by hand, on the untouched copy
    h1 = reference[0](x)
    a1 = torch.relu(h1)
    h2 = reference[2](a1)
    a2 = torch.tanh(h2)
    ref_loss = F.cross_entropy(reference[4](a2), y)
    ref_loss.backward()
    for layer, out in (("0", h1), ("1", a1), ("2", h2), ("3", a2)):
        values = out.detach().numpy().astype(np.float64)
        row = sample.activations[layer]
        assert row[stats.ACTIVATION_FIELDS.index("n")] == values.size
        assert sample.activation(layer, "mean") == pytest.approx(values.mean(), rel=1e-5, abs=1e-6)
        assert sample.activation(layer, "var") == pytest.approx(values.var(), rel=1e-5)
        assert sample.activation(layer, "min") == pytest.approx(values.min(), rel=1e-6)
        assert sample.activation(layer, "max") == pytest.approx(values.max(), rel=1e-6)
        assert_histogram_close(row[len(stats.ACTIVATION_FIELDS):], values)
    relu = a1.detach().numpy()
    assert sample.activation("1", "dead") == pytest.approx((relu.max(axis=0) == 0).mean())
    assert sample.activation("1", "dead") >= 2 / 7
    tanh = a2.detach().numpy()
    assert sample.activation("3", "saturated") == pytest.approx((np.abs(tanh) > math.sqrt(0.95)).mean())
    assert math.isnan(sample.activation("0", "dead")) and math.isnan(sample.activation("0", "saturated"))

    for name, p in reference.named_parameters():
        g = p.grad.numpy().astype(np.float64)
        assert sample.gradient(name, "norm") == pytest.approx(np.linalg.norm(g), rel=1e-5)
        rms = np.linalg.norm(g) / math.sqrt(g.size)
        assert sample.gradient(name, "near_zero") == pytest.approx((np.abs(g) <= 1e-3 * rms).mean())
        assert_histogram_close(sample.gradients[name][len(stats.GRADIENT_FIELDS):], g)
        update = 0.1 * g  # plain SGD
        expected_ratio = np.linalg.norm(update) / np.linalg.norm(p.detach().numpy().astype(np.float64))
        assert sample.updates[name] == pytest.approx(expected_ratio, rel=1e-4)
    # the dead units' incoming weights get exactly zero gradient
    assert sample.gradient("0.weight", "near_zero") >= 2 / 7


def test_convolution_units_are_channels_and_linear_units_are_features():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.ReLU())
    with torch.no_grad():
        conv[0].bias[0] = -100.0  # channel 0 dead
        conv[3].bias[:3] = -1000.0  # features 0-2 dead
    x = torch.randn(8, 1, 6, 6)
    with watch(conv, every=1) as w:
        conv(x).sum().backward()
        conv(x)  # without an optimizer, each training forward is a step
    sample = w.samples[0]
    channels = torch.relu(conv[0](x)).amax(dim=(0, 2, 3))
    assert sample.activation("1", "dead") == pytest.approx((channels == 0).float().mean().item())
    assert sample.activation("1", "dead") >= 0.25
    features = conv(x).amax(dim=0)
    assert sample.activation("4", "dead") == pytest.approx((features == 0).float().mean().item())


def test_sequence_outputs_of_linear_layers_count_the_last_dimension_as_units():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    with torch.no_grad():
        model[0].bias[:3] = -100.0
    x = torch.randn(2, 5, 4)  # (batch, sequence, features)
    with watch(model, every=1) as w:
        model(x)
        model(x)
    assert w.samples[0].activation("1", "dead") == pytest.approx(0.5)


def test_large_tensors_are_subsampled_with_a_stride_that_visits_every_column():
    values = torch.arange(100 * 784, dtype=torch.float32).reshape(100, 784)
    sample = stats.subsample(values, 1000)
    assert sample.numel() <= 1000
    columns = (sample.long() % 784).unique()
    assert len(columns) > 700  # a stride dividing 784 would hit only a few columns
    small = torch.randn(10, 10)
    assert torch.equal(stats.subsample(small, 1000), small.reshape(-1))


def test_update_ratio_of_a_large_matrix_is_estimated_within_a_few_percent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))
    before = model[0].weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    with watch(model, optimizer, every=1, max_values=4096) as w:
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    exact = (model[0].weight.detach() - before).norm() / before.norm()
    assert w.samples[0].updates["0.weight"] == pytest.approx(exact.item(), rel=0.05)


def test_histogram_range_adapts_to_the_data():
    values = torch.tensor([100.0, 101.0, 102.0, 103.0])
    counts = stats.histogram(values, values.min(), values.max(), 4)
    assert counts.tolist() == [1, 1, 1, 1]
    assert stats.histogram(torch.full((5,), 3.0), torch.tensor(3.0), torch.tensor(3.0), 4).tolist() == [5, 0, 0, 0]


def test_rebin_preserves_counts_and_places_them_by_overlap():
    out = rebin(np.array([4.0, 0.0]), 0.0, 2.0, 0.0, 4.0, 4)  # [0,1) holds 4 -> first of 4 bins of width 1
    assert out.tolist() == [4.0, 0.0, 0.0, 0.0]
    out = rebin(np.array([2.0, 2.0]), 0.0, 2.0, 0.0, 2.0, 4)  # each old bin split in two
    assert out.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert rebin(np.array([3.0]), 5.0, 5.0, 0.0, 10.0, 10).tolist()[5] == 3.0
    out = rebin(np.array([1.0, 2.0, 3.0, 4.0]), 0.0, 4.0, 1.0, 3.0, 2)  # narrower: the ends take the rest
    assert out.tolist() == [3.0, 7.0]
    rng = np.random.default_rng(0)
    values = rng.normal(size=100_000)
    counts, _ = np.histogram(values, bins=64, range=(values.min(), values.max()))
    out = rebin(counts, values.min(), values.max(), -6.0, 6.0, 12)
    expected, _ = np.histogram(values, bins=12, range=(-6.0, 6.0))
    assert out.sum() == pytest.approx(values.size)
    assert np.abs(out - expected).max() < 0.01 * values.size


# ---------------------------------------------------------------------- hooks


def hook_counts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple:
    return (sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                for m in model.modules()),
            len(optimizer._optimizer_step_pre_hooks), len(optimizer._optimizer_step_post_hooks))


def test_hooks_are_removed_on_exit_and_when_the_body_raises():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    user_hook = model[0].register_forward_hook(lambda *a: None)
    empty = hook_counts(model, optimizer)
    with watch(model, optimizer) as w:
        assert hook_counts(model, optimizer) != empty
        assert w.attached
    assert hook_counts(model, optimizer) == empty and not w.attached
    with pytest.raises(ValueError, match="boom"):
        with watch(model, optimizer):
            model(batch()[0])
            raise ValueError("boom")
    assert hook_counts(model, optimizer) == empty
    assert len(model[0]._forward_hooks) == 1  # the user's own hook is left alone
    user_hook.remove()


def test_training_with_the_watch_is_bit_identical_and_adds_nothing_to_the_graph():
    x, y = batch(n=32)
    results = []
    for watched in (False, True):
        model = small_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        w = watch(model, optimizer, every=1) if watched else None
        if w:
            w.attach()
        graph_sizes = []
        for _ in range(5):
            loss = F.cross_entropy(model(x), y)
            graph_sizes.append(graph_size(loss.grad_fn))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if w:
            w.detach()
        results.append(([p.detach().clone() for p in model.parameters()], graph_sizes))
    (bare, bare_graph), (watched, watched_graph) = results
    assert all(torch.equal(a, b) for a, b in zip(bare, watched))
    assert bare_graph == watched_graph


def graph_size(fn) -> int:
    seen, stack = set(), [fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


def test_statistics_are_taken_every_n_steps_and_read_back_once_per_sample(monkeypatch):
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    rows, reads = [], []
    real_row, real_gather = stats.activation_row, Watch._gather
    monkeypatch.setattr(stats, "activation_row", lambda *a, **k: rows.append(1) or real_row(*a, **k))
    monkeypatch.setattr(Watch, "_gather", lambda self, flat: reads.append(1) or real_gather(self, flat))
    x, y = batch()
    with watch(model, optimizer, every=5) as w:
        for _ in range(23):
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad():
                model(x)  # evaluation-style forwards are not measured
    assert [s.step for s in w.samples] == [0, 5, 10, 15, 20]
    assert len(rows) == 5 * 5  # five watched layers per sampled step, nothing on the other steps
    assert len(reads) == 5  # at steps 5, 10, 15, 20 and on exit


def test_history_stays_bounded_and_spans_the_run():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sink = MemorySink()
    x, y = batch()
    with watch(model, optimizer, every=1, max_samples=8, sinks=[sink]) as w:
        for _ in range(100):
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert len(w.samples) <= 8
    steps = [s.step for s in w.samples]
    assert steps[0] == 0 and steps[-1] >= 100 - 100 // 8 and steps == sorted(steps)
    assert w.last.step == 99
    assert len(sink.records) == 100  # the sinks still get every sample


def test_logged_scalars_are_averaged_between_samples_and_written_to_sinks():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sink = MemorySink()
    x, y = batch()
    with watch(model, optimizer, every=4, sinks=[sink]) as w:
        for step in range(8):
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            w.log(loss=torch.tensor(float(step)), lr=0.5)
    by_step = {r["step"]: r["scalars"] for r in sink.records}
    assert by_step[4]["loss"] == pytest.approx(np.mean([0, 1, 2, 3]))  # logged after steps 0-3
    assert by_step[4]["lr"] == 0.5
    assert "act/1/dead" in by_step[0] and "update_ratio/0.weight" in by_step[0]
    assert by_step[0]["act/3/saturated"] >= 0 and "act/0/dead" not in by_step[0]
    assert "histograms" in sink.records[0] and sum(sink.records[0]["histograms"]["act/1"]["counts"]) == 9 * 7


# ---------------------------------------------------------------------- verdict inputs


def test_non_finite_loss_reports_the_first_step_and_layer():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = batch()
    with watch(model, optimizer, every=1) as w:
        for step in range(6):
            inputs = x.clone()
            if step == 3:
                inputs[0, 0] = math.inf
            loss = F.cross_entropy(model(inputs), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            w.log(loss=loss)
    assert w.first_nonfinite_loss_step == 3
    bad = [f for f in w.findings() if f.status == "fail" and f.tip == "activation-gradient-stats"]
    assert len(bad) == 1
    assert bad[0].evidence["first_sampled_step"] == 3
    assert bad[0].evidence["layers"][0] == "0"
    assert "step 3" in bad[0].message


def test_parameters_outside_the_optimizer_and_without_gradient_are_named():
    model = nn.ModuleDict({"used": nn.Linear(4, 2), "unused": nn.Linear(4, 2), "late": nn.Linear(2, 2)})
    optimizer = torch.optim.SGD([*model["used"].parameters(), *model["unused"].parameters()], lr=0.1)
    x = torch.randn(8, 4)
    with watch(model, optimizer, every=1) as w:
        for _ in range(3):
            model["late"](model["used"](x)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    assert w.not_in_optimizer == ["late.weight", "late.bias"]
    assert w.no_gradient == {"unused.weight", "unused.bias"}
    findings = w.findings()
    finding = next(f for f in findings if f.tip == "update-ratio" and "cause" not in f.evidence)
    assert finding.status == "warn" and "late.weight" in finding.message and "unused.weight" in finding.message
    named = next(f for f in findings if f.evidence.get("cause") == "no-gradient")
    assert named.status == "warn" and named.evidence["parameters"] == ["unused.bias", "unused.weight"]


def test_a_loop_that_never_steps_fails_update_ratio():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batch()
    with watch(model, optimizer) as w:
        for _ in range(3):
            F.cross_entropy(model(x), y).backward()
    finding = next(f for f in w.findings() if f.tip == "update-ratio")
    assert finding.status == "fail" and finding.evidence["training_forwards"] == 3


def test_bad_arguments_are_rejected_with_clear_messages():
    model = small_model()
    with pytest.raises(ValueError, match="every"):
        watch(model, every=0)
    with pytest.raises(TypeError, match="nn.Module"):
        watch("model")
    with pytest.raises(TypeError, match="Optimizer"):
        watch(model, optimizer=[1])
    with pytest.raises(TypeError, match="number or a tensor"):
        watch(model).log(loss="high")
    w = watch(model)
    with w, pytest.raises(RuntimeError, match="already attached"):
        w.attach()


def test_units_seen_on_too_few_inputs_are_not_called_dead():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    with watch(model, every=1) as w:
        model(torch.randn(stats.MIN_OBSERVATIONS - 1, 4))
        model(torch.randn(stats.MIN_OBSERVATIONS, 4))
        model(torch.randn(stats.MIN_OBSERVATIONS, 4))
    assert math.isnan(w.samples[0].activation("1", "dead"))
    assert not math.isnan(w.samples[1].activation("1", "dead"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_statistics_of_other_precisions_accumulate_in_float32_or_better(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 64), nn.ReLU()).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    model[0].register_forward_hook(lambda module, args, output: seen.append(output.detach().double()))
    with watch(model, optimizer, every=1) as w:
        model(torch.randn(512, 5, dtype=dtype)).sum().backward()
        optimizer.step()
    hidden = seen[0]
    sample = w.samples[0]
    rel = 1e-6 if dtype == torch.float64 else 1e-4  # bf16 values, summed in float32
    assert sample.activation("0", "mean") == pytest.approx(hidden.mean().item(), rel=rel)
    assert sample.activation("0", "var") == pytest.approx(hidden.var(unbiased=False).item(), rel=rel)
    assert sample.activation("0", "max") == pytest.approx(hidden.max().item(), rel=1e-6)  # rows are float32


@pytest.mark.parametrize("as_keyword", [False, True])
def test_a_step_with_a_closure_measures_the_gradients_the_closure_computes(as_keyword):
    """optimizer.step(closure) (Lightning, LBFGS) runs backward inside step, after the pre-step hooks."""
    x, y = batch()

    def run(use_closure):
        model = small_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        expected = []
        with watch(model, optimizer, every=2) as w:
            for step in range(6):
                def closure(step=step):
                    optimizer.zero_grad()
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    if step % 2 == 0:
                        expected.append(float(model[0].weight.grad.norm()))
                    return loss

                if not use_closure:
                    closure()
                    optimizer.step()
                elif as_keyword:
                    optimizer.step(closure=closure)
                else:
                    optimizer.step(closure)
        return w, expected

    plain, expected = run(False)
    closed, expected_closed = run(True)
    assert expected == pytest.approx(expected_closed)
    assert [s.step for s in closed.samples] == [0, 2, 4] and not closed.no_gradient
    for sample, norm in zip(closed.samples, expected_closed):
        assert sample.gradient("0.weight", "norm") == pytest.approx(norm, rel=1e-5)
    for a, b in zip(plain.samples, closed.samples):
        assert a.updates == pytest.approx(b.updates)


def test_an_output_sigmoid_that_saturates_is_a_confident_prediction_not_a_saturated_layer():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).float()
    hidden = nn.Sigmoid()
    model = nn.Sequential(nn.Linear(4, 16), hidden, nn.Linear(16, 1), nn.Sigmoid(), nn.Flatten(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    with watch(model, optimizer, every=5) as w:
        for _ in range(200):
            optimizer.zero_grad()
            F.binary_cross_entropy(model(x), y).backward()
            optimizer.step()
    assert w.output_layers == {"3"}  # the final sigmoid (its output, flattened, is the model's output)
    assert all("3" not in s.activations for s in w.samples)
    assert any(not math.isnan(s.activation("1", "saturated")) for s in w.samples)  # the hidden one is still judged
