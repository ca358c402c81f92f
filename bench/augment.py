"""Composed augmentation warp (`dltips.AffineAugment`) against one resample per operation.

(a) Fidelity. A band-limited analytic image (a sum of sinusoids below the output's Nyquist frequency) is
rendered at the source resolution, then warped to the output size (i) by the composed matrix, one
resample, and (ii) one operation at a time: each step resampled at the working (source) size, then a final
resize, as a pipeline of separate transforms does. Both are compared with the analytic image evaluated at
the exact transformed coordinates (pixels whose source point lies inside the image, away from a border),
and the PSNR is printed for the first 1..5 operations of rotate, zoom, translate, shear, warp.

(b) Speed. Images/s at batch 256 on the CPU (torch's default threads), source at 2x the output size
(presized), for the composed warp, the one-resample-per-operation pipeline, and kornia's
AugmentationSequential with the same transforms when kornia is importable: "kornia per op" (one kornia
transform per operation, as the sequential pipeline) and "kornia affine" (kornia's RandomAffine, which
already fuses rotate/zoom/translate/shear, then RandomPerspective and Resize). Repeats are interleaved and
medians printed, with ratios against the composed warp. Also the cost of the area prefilter that the
composed warp adds when it shrinks by more than 2x.

Run: python bench/augment.py [--quick]   (a few minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

import dltips.data.augment as augment_module
from dltips.data.augment import AffineAugment, compose, sampling_grid

OPS = ("rotate", "zoom", "translate", "shear", "warp")


# ----------------------------------------------------------------------------- (a) fidelity


def analytic(n: int, n_waves: int, max_cycles: float, seed: int):
    """A function (N, ..., 2) normalized coords -> (N, ...) values in [0, 1]: per image, a sum of sinusoids
    whose frequencies (cycles per image) are below `max_cycles`."""
    g = torch.Generator().manual_seed(seed)
    cycles = max_cycles * (0.1 + 0.9 * torch.rand(n, n_waves, generator=g, dtype=torch.float64))
    theta = 2 * math.pi * torch.rand(n, n_waves, generator=g, dtype=torch.float64)
    freq = torch.stack([cycles * torch.cos(theta), cycles * torch.sin(theta)], dim=-1)  # (n, k, 2)
    phase = 2 * math.pi * torch.rand(n, n_waves, generator=g, dtype=torch.float64)
    amp = 0.5 / n_waves

    def f(coords: torch.Tensor) -> torch.Tensor:
        shape = coords.shape
        c = coords.reshape(n, -1, 2)  # cycles per image over [-1, 1]: cos(pi * f . x)
        arg = math.pi * (c @ freq.transpose(1, 2)) + phase[:, None, :]
        return (0.5 + amp * torch.cos(arg).sum(-1)).reshape(shape[:-1])

    return f


def pixel_centres(size: int) -> torch.Tensor:
    """(size, size, 2) normalized (x, y) of pixel centres, align_corners=False."""
    t = (torch.arange(size, dtype=torch.float64) * 2 + 1) / size - 1
    gy, gx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def sequential(x: torch.Tensor, steps: list[torch.Tensor], out: int, mode: str, pad: str) -> torch.Tensor:
    """One resample per step at the working (input) size, then a resize to `out`: a pipeline of transforms."""
    work = tuple(x.shape[-2:])
    for m in steps:
        x = F.grid_sample(x, sampling_grid(m, work, x.dtype), mode=mode, padding_mode=pad, align_corners=False)
    return F.interpolate(x, size=(out, out), mode=mode, align_corners=False)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    mse = ((a - b) ** 2 * mask).sum() / mask.sum()
    return float(10 * math.log10(1.0 / mse))


def fidelity(src: int = 256, out: int = 128, n: int = 16, seed: int = 0) -> None:
    print(f"(a) fidelity: {n} analytic images rendered at {src}x{src}, warped to {out}x{out}; frequencies "
          f"0.1-0.7 of the output Nyquist ({out // 2} cycles/image); PSNR (dB) against the exact image")
    f = analytic(n, n_waves=8, max_cycles=0.7 * out / 2, seed=seed)
    source = f(pixel_centres(src).expand(n, src, src, 2)).float()[:, None]
    aug = AffineAugment(size=out, flip=0.0, max_rotate=10.0, zoom=(1.0, 1.2), max_translate=0.1, max_shear=10.0,
                        max_warp=0.1, p_affine=1.0, pad="reflection", generator=torch.Generator().manual_seed(seed))
    steps = aug.sample_steps(n)
    border = out // 16
    print(f"{'ops':>4} {'chain':<32} {'mode':<9} {'composed':>9} {'sequential':>11} {'gain':>6}")
    for k in range(1, len(OPS) + 1):
        chain = [steps[name].double() for name in OPS[:k]]
        matrices = compose(chain)
        exact_coords = sampling_grid(matrices, (out, out), torch.float64)  # (n, out, out, 2)
        reference = f(exact_coords)[:, None]
        mask = (exact_coords.abs() < 1 - 8 / src).all(-1)[:, None].double()
        mask[..., :border, :] = mask[..., -border:, :] = mask[..., :, :border] = mask[..., :, -border:] = 0
        for mode in ("bilinear", "bicubic"):
            aug.mode = mode
            composed = aug.apply(source, matrices.float()).double()
            seq = sequential(source, [m.float() for m in chain], out, mode, "reflection").double()
            p_c, p_s = psnr(composed, reference, mask), psnr(seq, reference, mask)
            print(f"{k:>4} {'+'.join(OPS[:k]):<32} {mode:<9} {p_c:>9.1f} {p_s:>11.1f} {p_c - p_s:>6.1f}")


# ----------------------------------------------------------------------------- (b) speed


def kornia_pipelines(size: int, aug: AffineAugment):
    """kornia AugmentationSequential with the same transforms, or None when kornia is not importable."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    p, pad = aug.p_affine, aug.pad
    common = dict(padding_mode=pad)
    distortion = 2 * aug.max_warp  # kornia moves corners by up to distortion_scale * half the size
    per_op = K.AugmentationSequential(
        K.RandomHorizontalFlip(p=aug.flip),
        K.RandomAffine(aug.max_rotate, p=p, **common),
        K.RandomAffine(0.0, scale=aug.zoom, p=p, **common),
        K.RandomAffine(0.0, translate=(aug.max_translate, aug.max_translate), p=p, **common),
        K.RandomAffine(0.0, shear=aug.max_shear, p=p, **common),
        K.RandomPerspective(distortion, p=p),
        K.Resize(size, align_corners=False),
    )
    fused = K.AugmentationSequential(
        K.RandomHorizontalFlip(p=aug.flip),
        K.RandomAffine(aug.max_rotate, translate=(aug.max_translate, aug.max_translate), scale=aug.zoom,
                       shear=aug.max_shear, p=p, **common),
        K.RandomPerspective(distortion, p=p),
        K.Resize(size, align_corners=False),
    )
    return {"kornia per op": per_op, "kornia affine": fused}


def speed(out: int, batch: int, repeats: int) -> None:
    src = 2 * out
    x = torch.rand(batch, 3, src, src)
    aug = AffineAugment(size=out, flip=0.5, max_rotate=10.0, zoom=(1.0, 1.1), max_translate=0.1, max_shear=10.0,
                        max_warp=0.2, p_affine=0.75)
    methods = {
        "composed": lambda: aug(x),
        "sequential": lambda: sequential(x, list(aug.sample_steps(batch).values()), out, aug.mode, aug.pad),
    }
    pipelines = kornia_pipelines(out, aug)
    if pipelines is None:
        print("    kornia not importable (pip install kornia): kornia columns skipped")
    else:
        for name, pipe in pipelines.items():
            methods[name] = lambda pipe=pipe: pipe(x)
    times: dict[str, list[float]] = {name: [] for name in methods}
    with torch.no_grad():
        for fn in methods.values():
            fn()  # warm-up
        for _ in range(repeats):
            for name, fn in methods.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["composed"])
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = "" if name == "composed" else f"   images/s composed/{name} = {med / base:.1f}x"
        print(f"    {out}x{out} from {src}x{src}  {name:<14} {batch / med:>8.0f} images/s  (median {med:.3f} s){ratio}")


def prefilter_cost(batch: int, repeats: int) -> None:
    """Composed warp from 512x512 to 128x128 (4x shrink): with the area prefilter and without it."""
    x = torch.rand(batch, 3, 512, 512)
    aug = AffineAugment(size=128, generator=torch.Generator().manual_seed(0))
    matrices = aug.sample(batch)
    default = augment_module.ALIAS_SHRINK
    times: dict[str, list[float]] = {"with prefilter": [], "without (aliases)": []}
    with torch.no_grad():
        for _ in range(repeats + 1):
            for name, limit in (("with prefilter", default), ("without (aliases)", math.inf)):
                augment_module.ALIAS_SHRINK = limit
                start = time.perf_counter()
                aug.apply(x, matrices)
                times[name].append(time.perf_counter() - start)
    augment_module.ALIAS_SHRINK = default
    shrink = augment_module.min_shrink(matrices, (512, 512), (128, 128))
    print(f"    smallest shrink over the batch {shrink:.2f}: area-averaged by {math.floor(shrink)} before the warp")
    for name, ts in times.items():
        med = statistics.median(ts[1:])
        print(f"    512x512 -> 128x128 {name:<18} {batch / med:>8.0f} images/s  (median {med:.3f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches and fewer repeats")
    args = parser.parse_args()
    batch, repeats = (64, 3) if args.quick else (256, 5)
    fidelity()
    print(f"\n(b) speed: batch {batch}, CPU, {torch.get_num_threads()} threads, median of {repeats} interleaved repeats")
    for out in (128, 224):
        speed(out, batch, repeats)
    print("\n    cost of the area prefilter (composed warp shrinking 4x)")
    prefilter_cost(batch, repeats)


if __name__ == "__main__":
    main()
