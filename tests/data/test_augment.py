import math

import pytest
import torch
import torch.nn.functional as F

from dltips.data.augment import STEPS, AffineAugment, Lighting, compose, min_shrink, presize, sampling_grid

STRONG = dict(flip=0.5, max_rotate=25.0, zoom=(0.9, 1.3), max_translate=0.1, max_shear=10.0, max_warp=0.1,
              p_affine=1.0)


def seeded(seed: int = 0, **kwargs) -> AffineAugment:
    return AffineAugment(generator=torch.Generator().manual_seed(seed), **kwargs)


def smooth_image(n: int, size: int) -> torch.Tensor:
    """Low-frequency image (a few cycles per image) in [0, 1]: interpolation error is small on it."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    phase = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    img = 0.5 + 0.25 * torch.sin(3.0 * xs + 2.0 * ys + phase) + 0.2 * torch.cos(2.5 * ys - 1.5 * xs * ys)
    return img.expand(n, 1, size, size).contiguous()


def apply_points(m: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Apply (N, 3, 3) matrices to (N, K, 2) points with the projective divide."""
    h = torch.cat([p, torch.ones_like(p[..., :1])], dim=-1) @ m.transpose(1, 2)
    return h[..., :2] / h[..., 2:]


def test_composed_matrix_equals_steps_one_after_another_on_coordinates():
    steps = seeded(1, **STRONG).sample_steps(16)
    matrices = [m.double() for m in steps.values()]
    assert list(steps) == list(STEPS)
    points = torch.rand(16, 50, 2, dtype=torch.float64) * 2 - 1
    # resampling with step 1 first means the output is read through the LAST step's matrix first
    chained = points
    for m in reversed(matrices):
        chained = apply_points(m, chained)
    composed = apply_points(compose(matrices), points)
    assert torch.allclose(composed, chained, atol=1e-9)
    wrong_order = apply_points(compose(matrices[::-1]), points)
    assert (wrong_order - chained).abs().max() > 1e-2  # the check above can tell the orders apart


def test_composed_warp_equals_sequential_resamples_on_a_smooth_image(one_thread):
    size = 64
    aug = seeded(2, size=size, pad="border", **STRONG)
    x = smooth_image(6, size)
    steps = list(aug.sample_steps(6).values())
    sequential = x
    for m in steps:
        sequential = F.grid_sample(sequential, sampling_grid(m, (size, size)), align_corners=False, padding_mode="border")
    composed = aug.apply(x, compose(steps))
    crop = slice(16, -16)  # centre: far from the padding that the intermediate steps introduce
    err = (composed - sequential)[..., crop, crop].abs().max()
    assert err < 0.005
    wrong = aug.apply(x, compose(steps[::-1]))
    assert (wrong - sequential)[..., crop, crop].abs().max() > 10 * err


def test_one_grid_sample_call_per_batch(monkeypatch, one_thread):
    calls = []
    original = torch.nn.functional.grid_sample

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "grid_sample", counting)
    aug = seeded(0, size=(32, 32), **STRONG)
    out = aug(torch.rand(8, 3, 160, 160))  # > 2x shrink: the area prefilter runs too, but not a second resample
    assert out.shape == (8, 3, 32, 32)
    assert len(calls) == 1 and calls[0][0] == 8


def gaussian_dots(centres: torch.Tensor, size: int, sigma: float = 1.5) -> torch.Tensor:
    """(N, 1, size, size) images, each with one Gaussian dot at the (x, y) pixel coordinates in `centres` (N, 2)."""
    coords = torch.arange(size, dtype=torch.float64)
    dx = coords.view(1, 1, size) - centres[:, 0].view(-1, 1, 1)
    dy = coords.view(1, size, 1) - centres[:, 1].view(-1, 1, 1)
    return torch.exp(-(dx**2 + dy**2) / (2 * sigma**2))[:, None].float()


def test_keypoints_land_on_the_warped_dots(one_thread):
    n, size_in, size_out = 24, 96, 64
    gen = torch.Generator().manual_seed(3)
    centres = 30 + 36 * torch.rand(n, 2, generator=gen, dtype=torch.float64)  # well inside the image
    aug = seeded(3, size=size_out, **STRONG)
    matrices = aug.sample(n)
    warped = aug.apply(gaussian_dots(centres, size_in), matrices)[:, 0].double()
    predicted = aug.transform_points(centres[:, None].float(), matrices, size_in)[:, 0].double()
    coords = torch.arange(size_out, dtype=torch.float64)
    for i in range(n):
        weights = warped[i] - 0.2 * warped[i].max()  # keep the dot's core only
        weights = weights.clamp(min=0)
        total = weights.sum()
        centroid = torch.stack([(weights.sum(0) * coords).sum() / total, (weights.sum(1) * coords).sum() / total])
        assert (centroid - predicted[i]).norm() < 0.5, (i, centroid, predicted[i])


def test_transform_points_of_a_pure_flip_and_resize_is_exact():
    aug = AffineAugment(size=(20, 40), flip=1.0, p_affine=0.0, max_warp=0.0)
    pts = torch.tensor([[[0.0, 0.0], [9.0, 4.0], [3.5, 2.25]]])
    out = aug.transform_points(pts, aug.sample(1), in_size=(5, 10))
    # 2x in x and 4x in y with pixel centres at integers: x -> (W_in - 1 - x) * 4 + 1.5, y -> y * 4 + 1.5
    expected = torch.tensor([[[37.5, 1.5], [1.5, 17.5], [23.5, 10.5]]])
    assert torch.allclose(out, expected, atol=1e-5)


def test_masks_with_nearest_stay_binary_and_match_the_image(one_thread):
    n, size = 8, 64
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = (((xs - 24) ** 2 + (ys - 36) ** 2) < 15**2) | ((xs > 40) & (ys < 20))
    mask = mask.float().expand(n, 1, size, size).contiguous()
    aug = seeded(4, size=48, **STRONG)
    matrices = aug.sample(n)
    warped_mask = aug.apply(mask, matrices, mode="nearest")
    warped_image = aug.apply(mask, matrices)  # bilinear, as an image would be
    assert set(warped_mask.unique().tolist()) <= {0.0, 1.0}
    agree = ((warped_image > 0.5).float() == warped_mask).float().mean()
    assert agree > 0.98
    assert (warped_mask != mask[:, :, ::1, ::1][..., :48, :48]).any()  # it did move


def test_seeded_generators_reproduce_and_different_seeds_differ():
    x = torch.rand(4, 3, 40, 40)
    a, b, c = seeded(7, size=32, **STRONG), seeded(7, size=32, **STRONG), seeded(8, size=32, **STRONG)
    assert torch.equal(a(x), b(x))
    assert torch.equal(a.sample(5), b.sample(5))
    assert not torch.allclose(seeded(7, **STRONG).sample(5), c.sample(5))
    la, lb = Lighting(generator=torch.Generator().manual_seed(1)), Lighting(generator=torch.Generator().manual_seed(1))
    assert torch.equal(la(x), lb(x))


def test_parameters_are_drawn_per_image():
    steps = seeded(5, **STRONG).sample_steps(256)
    flips = steps["flip"][:, 0, 0]
    assert 0.35 < (flips < 0).float().mean() < 0.65
    for name in ("rotate", "zoom", "translate", "shear", "warp"):
        m = steps[name]
        assert (m - m[:1]).abs().amax(dim=(1, 2)).gt(1e-4).float().mean() > 0.9, name
    # independent draws: rotation angle and zoom are uncorrelated across images
    angle = torch.atan2(steps["rotate"][:, 1, 0], steps["rotate"][:, 0, 0])
    zoom = steps["zoom"][:, 0, 0]
    assert abs(torch.corrcoef(torch.stack([angle, zoom]))[0, 1]) < 0.2


def test_p_affine_zero_gives_only_flips():
    m = seeded(6, flip=0.5, max_rotate=30, max_warp=0.2, max_shear=10, p_affine=0.0).sample(64)
    assert torch.allclose(m.abs(), torch.eye(3).expand(64, 3, 3))


def test_eval_mode_only_resizes_and_is_deterministic():
    aug = AffineAugment(size=(24, 32), **STRONG).eval()
    x = torch.rand(3, 2, 12, 16)
    first, second = aug(x), aug(x)
    assert torch.equal(first, second)
    assert torch.allclose(first, F.interpolate(x, size=(24, 32), mode="bilinear", align_corners=False), atol=1e-5)
    same = AffineAugment(size=(12, 16)).eval()(x)
    assert torch.allclose(same, x, atol=1e-6)
    light = Lighting(p=1.0).eval()
    assert light(x) is x


def test_flip_only_mirrors_exactly():
    aug = AffineAugment(size=(10, 14), flip=1.0, max_rotate=30.0, max_warp=0.3, p_affine=0.0)
    x = torch.rand(2, 3, 10, 14)
    assert torch.allclose(aug(x), x.flip(-1), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_devices(dtype):
    aug = seeded(0, size=(20, 30), **STRONG)
    x = torch.rand(5, 3, 41, 17, dtype=dtype)
    out = aug(x)
    assert out.shape == (5, 3, 20, 30) and out.dtype == dtype and out.device == x.device
    assert aug(torch.rand(0, 3, 8, 8, dtype=dtype)).shape == (0, 3, 20, 30)
    assert Lighting()(x).dtype == dtype
    if torch.cuda.is_available():
        out = aug(x.cuda())
        assert out.is_cuda and out.shape == (5, 3, 20, 30)


def test_prefilter_stops_aliasing_when_shrinking_more_than_2x(monkeypatch, one_thread):
    stripes = (torch.arange(128) % 2).float().expand(2, 1, 128, 128).contiguous()  # finest pattern: mean 0.5
    aug = AffineAugment(size=32, flip=0.0, p_affine=0.0, max_warp=0.0)
    m = torch.eye(3).repeat(2, 1, 1)
    m[:, 0, 2] = 0.3 / 128  # a subpixel shift: one bilinear read per output pixel would land between stripes
    assert min_shrink(m, (128, 128), (32, 32)) == pytest.approx(4.0)
    out = aug.apply(stripes, m)
    assert (out - 0.5).abs().max() < 0.01
    monkeypatch.setattr("dltips.data.augment.ALIAS_SHRINK", math.inf)  # without the prefilter: aliasing
    assert (aug.apply(stripes, m) - 0.5).abs().max() > 0.1


def test_lighting_changes_brightness_and_contrast_within_bounds():
    x = torch.rand(64, 3, 8, 8)
    out = Lighting(brightness=0.1, contrast=0.3, p=1.0, generator=torch.Generator().manual_seed(0))(x)
    shift = out.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))
    ratio = out.std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3))
    assert shift.abs().max() <= 0.1 + 1e-5 and shift.std() > 0.02
    assert ((ratio >= 0.7 - 1e-5) & (ratio <= 1.3 + 1e-5)).all() and ratio.std() > 0.05
    assert torch.allclose(Lighting(p=0.0)(x), x, atol=1e-6)


def test_presize_covers_and_crops():
    img = torch.rand(3, 100, 200)
    out = presize(img, 64)
    assert out.shape == (3, 64, 64)
    assert torch.allclose(out, F.interpolate(img[None], size=(64, 128), mode="bilinear", antialias=True)[0, :, :, 32:96])
    assert presize(torch.rand(2, 3, 50, 40), (30, 20)).shape == (2, 3, 30, 20)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(zoom=(1.2, 1.0)), ValueError, r"zoom must be a \(low, high\) pair with low <= high"),
    (dict(mode="cubic"), ValueError, r"mode must be one of 'bilinear', 'nearest', 'bicubic', got 'cubic'"),
    (dict(pad="wrap"), ValueError, r"pad must be one of 'reflection', 'zeros', 'border'"),
    (dict(flip=1.5), ValueError, r"flip \(a probability\) must be a finite number >= 0 and <= 1"),
    (dict(max_warp=0.5), ValueError, r"max_warp .* must be a number in \[0.0, 0.5\)"),
    (dict(size=(0, 10)), ValueError, r"size must be a positive int or a \(height, width\) pair"),
    (dict(generator=3), TypeError, r"generator must be a torch.Generator"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        AffineAugment(**kwargs)


def test_bad_inputs_are_named():
    aug = AffineAugment(size=8)
    with pytest.raises(TypeError, match=r"x must be a float tensor .*got dtype torch.uint8"):
        aug(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"x must have 4 dimensions \(N, C, H, W\), got 3"):
        aug(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"matrices must be a tensor of shape \(2, 3, 3\)"):
        aug.apply(torch.rand(2, 3, 8, 8), torch.eye(3).repeat(3, 1, 1))
    with pytest.raises(ValueError, match=r"mode must be one of"):
        aug.apply(torch.rand(2, 3, 8, 8), torch.eye(3).repeat(2, 1, 1), mode="area")
    with pytest.raises(ValueError, match=r"points must be a float tensor of shape \(N, K, 2\)"):
        aug.transform_points(torch.rand(2, 2), torch.eye(3).repeat(2, 1, 1), (8, 8))
    with pytest.raises(ValueError, match=r"contrast must be a finite number >= 0 and <= 1"):
        Lighting(contrast=2.0)
