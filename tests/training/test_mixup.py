import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dltips.core.params import ParamError
from dltips.training.mixup import MIXUP_LAM, MIXUP_PERM, Mixup


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_mix(t: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(t)
    for i in range(t.shape[0]):
        out[i] = lam[i] * t[i] + (1 - lam[i]) * t[perm[i]]
    return out


def _onehot_loop(y: torch.Tensor, c: int) -> torch.Tensor:
    """One-hot with the class dim at 1, built element by element."""
    out = torch.zeros(y.shape[0], c, *y.shape[1:])
    for idx in np.ndindex(*y.shape):
        out[(idx[0], int(y[idx])) + idx[1:]] = 1.0
    return out


@pytest.mark.parametrize(
    "x_shape, y_shape",
    [((6, 3, 5, 5), (6,)), ((7, 4), (7,)), ((5, 3, 4, 4), (5, 4, 4))],
    ids=["images", "tabular-odd", "segmentation"],
)
def test_mixed_batch_matches_reference_and_loss_is_lam_weighted(x_shape, y_shape):
    n_classes = 3
    g = _gen(0)
    x = torch.randn(*x_shape, generator=g)
    y = torch.randint(0, n_classes, y_shape, generator=g)
    mixup = Mixup(alpha=0.4, n_classes=n_classes, generator=_gen(1)).train()

    x_mix, y_mix = mixup(x, y)
    lam, perm = mixup.last_lam, mixup.last_perm

    assert lam.shape == (x.shape[0],) and perm.shape == (x.shape[0],)
    assert sorted(perm.tolist()) == list(range(x.shape[0]))
    assert torch.all(lam >= 0.5) and torch.all(lam <= 1.0)
    torch.testing.assert_close(x_mix, _reference_mix(x, lam, perm))
    assert y_mix.shape == (y.shape[0], n_classes, *y.shape[1:])
    torch.testing.assert_close(y_mix, _reference_mix(_onehot_loop(y, n_classes), lam, perm))
    torch.testing.assert_close(y_mix.sum(1), torch.ones(y.shape))

    logits = torch.randn(y.shape[0], n_classes, *y.shape[1:], generator=g, dtype=torch.float64)
    loss = F.cross_entropy(logits, y_mix.double(), reduction="none")
    logp = logits.log_softmax(1)
    for i in range(y.shape[0]):
        nll_a = -logp[i].gather(0, y[i].unsqueeze(0)).squeeze(0)
        nll_b = -logp[i].gather(0, y[perm[i]].unsqueeze(0)).squeeze(0)
        expected = lam[i].double() * nll_a + (1 - lam[i].double()) * nll_b
        torch.testing.assert_close(loss[i], expected, atol=1e-6, rtol=1e-6)


def test_label_smoothing_targets():
    mixup = Mixup(n_classes=4, label_smoothing=0.1, generator=_gen(0))
    y = torch.tensor([0, 3, 1, 2, 2])
    x = torch.randn(5, 2)
    _, y_mix = mixup(x, y)
    smoothed = _onehot_loop(y, 4) * 0.9 + 0.025
    assert smoothed[0, 0] == pytest.approx(0.925)
    torch.testing.assert_close(y_mix, _reference_mix(smoothed, mixup.last_lam, mixup.last_perm))
    torch.testing.assert_close(y_mix.sum(1), torch.ones(5))


@pytest.mark.parametrize("y_shape", [(8, 5), (8,), (8, 2, 3)], ids=["multilabel", "regression", "multi-output"])
def test_float_targets_are_mixed_like_inputs(y_shape):
    x = torch.randn(8, 3)
    y = torch.rand(*y_shape)
    mixup = Mixup(alpha=1.0, generator=_gen(3))
    x_mix, y_mix = mixup(x, y)
    assert y_mix.shape == y.shape
    torch.testing.assert_close(x_mix, _reference_mix(x, mixup.last_lam, mixup.last_perm))
    torch.testing.assert_close(y_mix, _reference_mix(y, mixup.last_lam, mixup.last_perm))


def test_dict_inputs_mix_float_entries():
    x = {"a": torch.randn(5, 4), "b": torch.randn(5, 2, 2)}
    y = torch.rand(5, 1)
    mixup = Mixup(generator=_gen(0))
    x_mix, _ = mixup(x, y)
    for k in x:
        torch.testing.assert_close(x_mix[k], _reference_mix(x[k], mixup.last_lam, mixup.last_perm))


def test_batch_of_one_is_unchanged():
    x = torch.randn(1, 3)
    mixup = Mixup(n_classes=3, generator=_gen(0))
    x_mix, y_mix = mixup(x, torch.tensor([2]))
    assert mixup.last_perm.tolist() == [0]
    torch.testing.assert_close(x_mix, x)
    torch.testing.assert_close(y_mix, torch.tensor([[0.0, 0.0, 1.0]]))


def test_sample_then_mix_equals_forward():
    x, y = torch.randn(9, 2), torch.randint(0, 3, (9,))
    a = Mixup(n_classes=3, generator=_gen(5))
    b = Mixup(n_classes=3, generator=_gen(5))
    lam, perm = a.sample(9)
    xa, ya = a.mix(x, y, lam, perm)
    xb, yb = b(x, y)
    torch.testing.assert_close(xa, xb)
    torch.testing.assert_close(ya, yb)


def test_reproducible_with_generator_and_global_seed():
    x, y = torch.randn(16, 4), torch.randint(0, 5, (16,))
    out1 = Mixup(n_classes=5, generator=_gen(123))(x, y)
    out2 = Mixup(n_classes=5, generator=_gen(123))(x, y)
    out3 = Mixup(n_classes=5, generator=_gen(124))(x, y)
    torch.testing.assert_close(out1, out2)
    assert not torch.equal(out1[0], out3[0])

    torch.manual_seed(7)
    g1 = Mixup(n_classes=5)(x, y)
    torch.manual_seed(7)
    g2 = Mixup(n_classes=5)(x, y)
    g3 = Mixup(n_classes=5)(x, y)
    torch.testing.assert_close(g1, g2)
    assert not torch.equal(g2[0], g3[0])


def test_eval_mode_passes_through():
    mixup = Mixup(n_classes=3).eval()
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    x_out, y_out = mixup(x, y)
    assert x_out is x and y_out is y
    assert mixup.last_lam is None
    assert list(mixup.parameters()) == []


def _folded_beta_reference(a: float) -> tuple[float, callable]:
    """E[max(L, 1-L)] and P(max(L, 1-L) <= t) for L ~ Beta(a, a), by quadrature.

    With u = (1-l)^a the endpoint singularity at l=1 disappears:
    (1-l)^(a-1) dl = -du/a, leaving smooth integrands in u.
    """
    beta_fn = math.gamma(a) ** 2 / math.gamma(2 * a)
    u = np.linspace(0.0, 0.5**a, 200_001)
    lam = 1.0 - u ** (1.0 / a)
    mean = 2.0 * np.trapezoid(lam**a, u) / a / beta_fn

    def cdf(t: float) -> float:
        # P(max <= t) = 1 - 2 P(L > t); P(L > t) = (1/(a B)) * int_0^{(1-t)^a} (1 - u^(1/a))^(a-1) du
        uu = np.linspace(0.0, (1.0 - t) ** a, 200_001)
        tail = np.trapezoid((1.0 - uu ** (1.0 / a)) ** (a - 1.0), uu) / a / beta_fn
        return 1.0 - 2.0 * tail

    return mean, cdf


def test_lam_distribution_matches_folded_beta():
    n, alpha = 20_000, 0.4
    lam = Mixup(alpha=alpha, generator=_gen(0)).sample(n)[0].double().numpy()
    mean, cdf = _folded_beta_reference(alpha)
    assert cdf(0.5) == pytest.approx(0.0, abs=1e-6)
    # standard error of the mean is ~0.17/sqrt(n) ~ 1.2e-3
    assert lam.mean() == pytest.approx(mean, abs=5e-3)
    grid = np.linspace(0.55, 0.99, 23)
    ks = max(abs((lam <= t).mean() - cdf(t)) for t in grid)
    assert ks < 1.63 / math.sqrt(n)  # 1% critical value of the KS statistic

    # A different alpha must be distinguishable: the check has power.
    mean_1, _ = _folded_beta_reference(1.0)
    assert abs(mean_1 - 0.75) < 1e-6
    assert abs(lam.mean() - mean_1) > 0.02


def test_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="n_classes"):
        Mixup()(x, torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"\[0, n_classes=3\)"):
        Mixup(n_classes=3)(x, torch.tensor([0, 1, 3, 1]))
    with pytest.raises(ValueError, match="n_classes"):
        Mixup(n_classes=3)(x, torch.tensor([0, -100, 1, 1]))
    with pytest.raises(TypeError, match="embedding"):
        Mixup()({"emb": x, "input_ids": torch.zeros(4, 5, dtype=torch.long)}, torch.rand(4))
    with pytest.raises(TypeError, match="floating"):
        Mixup()(torch.zeros(4, 3, dtype=torch.long), torch.rand(4))
    with pytest.raises(ValueError, match="batch size"):
        Mixup(n_classes=3)(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="batch size"):
        Mixup()({"a": x, "b": torch.randn(5, 3)}, torch.rand(4))
    with pytest.raises(ValueError, match="alpha"):
        Mixup(alpha=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        Mixup(label_smoothing=1.0)
    with pytest.raises(ParamError, match="alpha must be a number, got str"):
        Mixup(alpha="0.4")
    with pytest.raises(ParamError, match="n_classes must be an int >= 1"):
        Mixup(n_classes=0)
    with pytest.raises(ParamError, match="generator must be a torch.Generator or None"):
        Mixup(generator=0)


def test_ids_model_keeps_integer_entries_and_hands_lam_and_perm_to_the_model():
    g = _gen(11)
    ids = torch.randint(0, 7, (6, 2), generator=g)
    x = {"categorical": ids, "continuous": torch.randn(6, 3, generator=g)}
    y = torch.randint(0, 4, (6,), generator=g)
    mixup = Mixup(alpha=1.0, n_classes=4, generator=_gen(2), ids="model")

    x_mix, y_mix = mixup(x, y)
    lam, perm = mixup.last_lam, mixup.last_perm

    assert list(x_mix) == ["categorical", "continuous", MIXUP_LAM, MIXUP_PERM]
    assert x_mix["categorical"] is ids  # ids pass through untouched
    torch.testing.assert_close(x_mix["continuous"], _reference_mix(x["continuous"], lam, perm))
    torch.testing.assert_close(y_mix, _reference_mix(_onehot_loop(y, 4), lam, perm))
    assert x_mix[MIXUP_LAM].dtype == torch.float32 and x_mix[MIXUP_PERM].dtype == torch.long
    assert torch.equal(x_mix[MIXUP_LAM], lam) and torch.equal(x_mix[MIXUP_PERM], perm)
    assert not torch.all(lam == 1.0)  # a real mix happened, so the comparisons above have teeth


def test_ids_model_with_only_integer_entries_still_mixes_the_labels():
    x = {"categorical": torch.randint(0, 5, (5, 1))}
    y = torch.rand(5)
    mixup = Mixup(generator=_gen(4), ids="model")
    x_mix, y_mix = mixup.mix(x, y, torch.tensor([1.0, 0.5, 0.75, 0.6, 0.9]), torch.tensor([4, 3, 2, 1, 0]))
    assert torch.equal(x_mix["categorical"], x["categorical"])
    expected = torch.tensor([y[0], 0.5 * y[1] + 0.5 * y[3], y[2], 0.6 * y[3] + 0.4 * y[1], 0.9 * y[4] + 0.1 * y[0]])
    torch.testing.assert_close(y_mix, expected)
    assert x_mix[MIXUP_LAM].tolist() == pytest.approx([1.0, 0.5, 0.75, 0.6, 0.9])
    assert x_mix[MIXUP_PERM].tolist() == [4, 3, 2, 1, 0]


def test_ids_model_plain_tensors():
    mixup = Mixup(generator=_gen(0), ids="model")
    x = torch.randn(4, 3)
    x_mix, _ = mixup(x, torch.rand(4))
    assert isinstance(x_mix, torch.Tensor)  # a float tensor is mixed as before: no dict to add entries to
    torch.testing.assert_close(x_mix, _reference_mix(x, mixup.last_lam, mixup.last_perm))
    with pytest.raises(TypeError, match="needs a dict batch"):
        mixup(torch.zeros(4, 3, dtype=torch.long), torch.rand(4))


def test_ids_modes_and_their_errors():
    batch = {"categorical": torch.zeros(4, 2, dtype=torch.long), "continuous": torch.randn(4, 3)}
    with pytest.raises(TypeError, match="ids='model'"):
        Mixup(ids="error")(batch, torch.rand(4))
    with pytest.raises(ValueError, match="ids must be one of 'error', 'model'"):
        Mixup(ids="embeddings")
    with pytest.raises(ValueError, match="adds these entries itself"):
        Mixup(ids="model")({**batch, MIXUP_LAM: torch.ones(4)}, torch.rand(4))
    assert "ids='model'" in repr(Mixup(ids="model")) and "ids" not in repr(Mixup())

    mixup = Mixup(ids="model").eval()
    x_out, _ = mixup(batch, torch.rand(4))
    assert x_out is batch and MIXUP_LAM not in x_out
