"""One composed augmentation warp per batch (tip `compose-augmentations`).

Every geometric step (flip, rotation, zoom, translation, shear, perspective
warp and the final resize to `size`) is a 3x3 matrix in normalized
coordinates; the steps are multiplied into ONE matrix per image, with
independent random parameters per image, and the batch is resampled once with
one `F.grid_sample` call. Resampling once instead of once per step avoids the
blur, lost corners and padding artefacts that accumulate when every operation
interpolates the previous one's output (`bench/augment.py` measures the
difference: PSNR and images/s).

The recipe ("presizing"):

1. per item, on the CPU in the dataset: `presize(image, size)` resizes large
   once (e.g. 1.5-2x the training size) with an antialiased filter and crops
   to the aspect ratio of the training size;
2. per batch, on the device: `AffineAugment(size=...)(batch)` composes all
   geometric steps and the final resize into one warp, then `Lighting()`
   changes brightness and contrast (a cheap point-wise step, no resampling).

Coordinates. Normalized coordinates are those of `grid_sample` with
`align_corners=False`: (-1, -1) is the top-left corner of the top-left pixel
and (1, 1) the bottom-right corner of the bottom-right pixel, x to the right,
y down. A sampling matrix M maps OUTPUT normalized coordinates (x, y, 1) to
INPUT normalized coordinates (homogeneous, divided by the third component):
output pixel p shows the input at M p. Because both images are described in
their own normalized coordinates, resizing to `size` costs nothing in the
matrix: the whole input is mapped onto the whole output (stretched if the
aspect ratios differ; presize to the right aspect first). Pixel coordinates
(for keypoints) put the centre of pixel (row i, column j) at (x, y) = (j, i).

Downsampling. One bilinear resample aliases once it shrinks by more than 2x
(bilinear reads 2x2 input pixels per output pixel). `apply` measures the
smallest shrink of the composed matrices over the batch (input pixels per
output pixel: the smaller singular value of the Jacobian at the corners and
centre of every output image); when it exceeds 2, the input is area-averaged
once by the integer factor k = floor(shrink) (`F.interpolate(mode="area")`,
one read of the input and a write of 1/k^2 of it, before the warp) and the
warp then shrinks by less than 2x more. Normalized coordinates are unchanged by
that step, so the matrices still apply (measured on 2 CPU cores, batch 256,
512x512 -> 128x128: 360 images/s with the prefilter, 412 without, about 14%
more time). Masks (`mode="nearest"`) are never averaged. Presizing close to the training size keeps this step rare.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn

from dltips.core.params import ParamError, fraction, instance, int_at_least, ints, number, one_of

TIP = "compose-augmentations"
MODES = ("bilinear", "nearest", "bicubic")
PADS = ("reflection", "zeros", "border")
STEPS = ("flip", "rotate", "zoom", "translate", "shear", "warp")
ALIAS_SHRINK = 2.0  # one bilinear resample shrinking by more than this aliases


# ----------------------------------------------------------------------------- validation


def _check_images(x: object, name: str = "x") -> torch.Tensor:
    """A float (N, C, H, W) tensor, or a ParamError naming `name` and what was expected."""
    if not isinstance(x, torch.Tensor):
        raise ParamError(f"{name} must be a float tensor of shape (N, C, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise ParamError(f"{name} must be a float tensor (N, C, H, W), got dtype {x.dtype}; convert with {name}.float()")
    if x.dim() != 4:
        raise ParamError(f"{name} must have 4 dimensions (N, C, H, W), got {x.dim()} with shape {tuple(x.shape)}")
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ParamError(f"{name} must have a positive height and width, got shape {tuple(x.shape)}")
    return x


def _check_size(size: object, name: str = "size") -> tuple[int, int]:
    """(height, width) of positive ints; an int means a square."""
    pair = (size, size) if isinstance(size, Integral) else size
    if isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2:
        try:
            height, width = ints(name, list(pair))
            return height, width
        except ParamError:
            pass
    raise ParamError(f"{name} must be a positive int or a (height, width) pair of positive ints, got {size!r}")


def _below(value: float, name: str, low: float, high: float) -> float:
    """`value` (already checked to lie in [low, high]) if it is below `high`: the bound is open."""
    if value >= high:
        raise ParamError(f"{name} must be a number in [{low}, {high}), got {value!r}")
    return value


def _generator(generator: object) -> torch.Generator | None:
    return None if generator is None else instance("generator", generator, torch.Generator, "a torch.Generator or None")


def _uniform(n: int, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """(n, k) uniforms in [0, 1), float64, drawn in one call on the generator's device (CPU by default)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, k, generator=generator, device=device, dtype=torch.float64)


# ----------------------------------------------------------------------------- matrices


def _eye(n: int) -> torch.Tensor:
    return torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)


def _perspective(corner_offsets: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) homographies sending the output corners (+-1, +-1) to the corners moved by `corner_offsets` (n, 4, 2)."""
    n = corner_offsets.shape[0]
    src = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64).expand(n, 4, 2)
    dst = src + corner_offsets
    x, y, u, v = src[..., 0], src[..., 1], dst[..., 0], dst[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], dim=-1)
    a = torch.cat([rows_u, rows_v], dim=1)  # (n, 8, 8)
    b = torch.cat([u, v], dim=1)  # (n, 8)
    h = torch.linalg.solve(a, b)
    return torch.cat([h, torch.ones(n, 1, dtype=h.dtype)], dim=1).reshape(n, 3, 3)


def compose(steps: Sequence[torch.Tensor]) -> torch.Tensor:
    """The product M_1 @ M_2 @ ... of per-step sampling matrices: resampling with it equals resampling
    with M_1 first, then M_2, ... (each step reads the previous step's output at M_k p)."""
    out = steps[0]
    for m in steps[1:]:
        out = out @ m
    return out


def _base_grid(size: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(H*W, 3) homogeneous normalized coordinates of the output pixel centres (align_corners=False)."""
    h, w = size
    ys = (torch.arange(h, dtype=dtype, device=device) * 2 + 1) / h - 1
    xs = (torch.arange(w, dtype=dtype, device=device) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1), torch.ones(h * w, dtype=dtype, device=device)], dim=1)


def sampling_grid(matrices: torch.Tensor, size: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, H, W, 2) grid for `grid_sample` from (N, 3, 3) output->input matrices, with the projective divide."""
    base = _base_grid(size, dtype, matrices.device)
    m = matrices.to(dtype)
    projective = bool((m[:, 2, :2] != 0).any() or (m[:, 2, 2] != 1).any())
    if projective:
        points = base @ m.transpose(1, 2)  # (N, H*W, 3)
        grid = points[..., :2] / points[..., 2:]
    else:
        grid = base[:, :2] @ m[:, :2, :2].transpose(1, 2) + m[:, None, :2, 2]
    return grid.reshape(len(m), size[0], size[1], 2)


def _jacobians(matrices: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(N, P, 2, 2) Jacobians d(input normalized)/d(output normalized) of the matrices at (P, 2) output points."""
    m = matrices.double()
    homogeneous = torch.cat([points, torch.ones(len(points), 1, dtype=m.dtype, device=m.device)], dim=1)
    p = homogeneous @ m.transpose(1, 2)  # (N, P, 3)
    w = p[..., 2:]
    u = p[..., :2] / w
    return (m[:, None, :2, :2] - u[..., :, None] * m[:, None, None, 2, :2]) / w[..., None]


def min_shrink(matrices: torch.Tensor, in_size: tuple[int, int], out_size: tuple[int, int]) -> float:
    """Smallest number of input pixels per output pixel over the batch (at output corners and centres)."""
    points = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [0.0, 0.0]],
                          dtype=torch.float64, device=matrices.device)
    jac = _jacobians(matrices, points)
    to_pixels = torch.tensor([in_size[1] / out_size[1], in_size[0] / out_size[0]], dtype=torch.float64,
                             device=matrices.device)
    jac = jac * to_pixels[:, None]  # rows: input x, input y in pixels; columns: output pixels
    return float(torch.linalg.svdvals(jac).amin())


# ----------------------------------------------------------------------------- the warp


class AffineAugment(nn.Module):
    """Random flip, rotation, zoom, translation, shear, perspective warp and resize, resampled once per batch.

    Parameters (all per image, independent):
      size: output (height, width) or an int for a square.
      flip: probability of a horizontal flip.
      max_rotate: rotation angle drawn uniformly in [-max_rotate, max_rotate] degrees.
      zoom: zoom factor drawn uniformly in [zoom[0], zoom[1]]; > 1 magnifies the centre, < 1 shows padding.
      max_translate: shift drawn uniformly in [-max_translate, max_translate] of the size, per axis.
      max_shear: horizontal shear angle drawn uniformly in [-max_shear, max_shear] degrees.
      max_warp: each output corner reads from a point moved by up to max_warp of the size per axis
        (a projective matrix); 0 keeps the matrices affine.
      p_affine: probability of each of rotate, zoom, translate, shear and warp, drawn independently.
      mode: "bilinear", "bicubic" or "nearest" resampling; pad: "reflection", "zeros" or "border".
      generator: a torch.Generator to draw from (reproducible batches); the global RNG when None.

    In training mode `aug(x)` draws matrices with `sample` and resamples with `apply`. In eval mode it only
    resizes to `size` (identity matrices), with no randomness. Rotation and shear are isotropic in the
    output's pixel units, whatever its aspect ratio.
    """

    def __init__(self, size: int | tuple[int, int] = (128, 128), flip: float = 0.5, max_rotate: float = 10.0,
                 zoom: tuple[float, float] = (1.0, 1.1), max_translate: float = 0.1, max_shear: float = 0.0,
                 max_warp: float = 0.2, p_affine: float = 0.75, mode: str = "bilinear", pad: str = "reflection",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.size = _check_size(size)
        self.flip = fraction("flip (a probability)", flip)
        self.max_rotate = number("max_rotate (degrees)", max_rotate, 0.0, 180.0)
        if not isinstance(zoom, Sequence) or len(zoom) != 2:
            raise ParamError(f"zoom must be a (low, high) pair of positive numbers with low <= high, got {zoom!r}")
        low = number("zoom[0]", zoom[0], 1e-3, 1e3)
        high = number("zoom[1]", zoom[1], 1e-3, 1e3)
        if low > high:
            raise ParamError(f"zoom must be a (low, high) pair with low <= high, got {tuple(zoom)!r}")
        self.zoom = (low, high)
        self.max_translate = fraction("max_translate (a fraction of the size)", max_translate)
        self.max_shear = number("max_shear (degrees)", max_shear, 0.0, 80.0)
        warp = "max_warp (a fraction of the size)"
        self.max_warp = _below(number(warp, max_warp, 0.0, 0.5), warp, 0.0, 0.5)
        self.p_affine = fraction("p_affine (a probability)", p_affine)
        self.mode = one_of("mode", mode, MODES)
        self.pad = one_of("pad", pad, PADS)
        self.generator = _generator(generator)

    def extra_repr(self) -> str:
        return (f"size={self.size}, flip={self.flip}, max_rotate={self.max_rotate}, zoom={self.zoom}, "
                f"max_translate={self.max_translate}, max_shear={self.max_shear}, max_warp={self.max_warp}, "
                f"p_affine={self.p_affine}, mode={self.mode!r}, pad={self.pad!r}")

    def _steps(self, n: int) -> dict[str, torch.Tensor]:
        """Per-step float64 CPU sampling matrices, from one draw of (n, 19) uniforms."""
        n = int_at_least("n", n, 0)
        u = _uniform(n, 19, self.generator).cpu()
        gate = u[:, 14:19] < self.p_affine  # rotate, zoom, translate, shear, warp
        aspect = self.size[1] / self.size[0]
        steps = {name: _eye(n) for name in STEPS}

        steps["flip"][:, 0, 0] = torch.where(u[:, 0] < self.flip, -1.0, 1.0)

        angle = torch.deg2rad((2 * u[:, 1] - 1) * self.max_rotate) * gate[:, 0]
        cos, sin = torch.cos(angle), torch.sin(angle)
        steps["rotate"][:, 0, 0], steps["rotate"][:, 0, 1] = cos, -sin / aspect
        steps["rotate"][:, 1, 0], steps["rotate"][:, 1, 1] = sin * aspect, cos

        z = self.zoom[0] + (self.zoom[1] - self.zoom[0]) * u[:, 2]
        z = torch.where(gate[:, 1], z, torch.ones_like(z))
        steps["zoom"][:, 0, 0] = steps["zoom"][:, 1, 1] = 1 / z

        shift = 2 * (2 * u[:, 3:5] - 1) * self.max_translate * gate[:, 2:3]  # fraction of size -> normalized units
        steps["translate"][:, :2, 2] = shift

        shear = torch.deg2rad((2 * u[:, 5] - 1) * self.max_shear) * gate[:, 3]
        steps["shear"][:, 0, 1] = torch.tan(shear) / aspect

        if self.max_warp > 0:
            offsets = 2 * (2 * u[:, 6:14] - 1) * self.max_warp * gate[:, 4:5]
            steps["warp"] = _perspective(offsets.reshape(n, 4, 2))

        return steps

    def sample_steps(self, n: int, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Per-step sampling matrices {step: (n, 3, 3) float32} in the order of STEPS (output -> input normalized).

        `compose(list(steps.values()))` is what `sample` returns; resampling with the steps one after another
        (flip first) gives the same image up to interpolation error. One draw of uniforms per call.
        """
        return {name: m.to(device=device, dtype=torch.float32) for name, m in self._steps(n).items()}

    def sample(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(n, 3, 3) float32 matrices mapping OUTPUT normalized coordinates to INPUT normalized coordinates
        (align_corners=False), one per image, each the product of all steps and the resize."""
        return compose(list(self._steps(n).values())).to(device=device, dtype=torch.float32)

    def identity(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(n, 3, 3) identity matrices: applying them only resizes to `size`."""
        return torch.eye(3, device=device).repeat(n, 1, 1)

    def apply(self, x: torch.Tensor, matrices: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """Resample the batch `x` (N, C, H, W) once with (N, 3, 3) sampling matrices -> (N, C, *size).

        `mode` overrides the module's (use "nearest" for masks: values stay in the input's set). Inputs shrunk
        by more than 2x everywhere are area-averaged first by the integer factor (see the module docstring).
        """
        x = _check_images(x)
        mode = self.mode if mode is None else one_of("mode", mode, MODES)
        if not isinstance(matrices, torch.Tensor) or matrices.shape != (x.shape[0], 3, 3):
            got = tuple(matrices.shape) if isinstance(matrices, torch.Tensor) else type(matrices).__name__
            raise ParamError(f"matrices must be a tensor of shape ({x.shape[0]}, 3, 3) for x of batch size "
                             f"{x.shape[0]}, got {got}")
        matrices = matrices.to(x.device)
        if mode != "nearest" and len(x):
            x = _prefilter(x, min_shrink(matrices, tuple(x.shape[-2:]), self.size))
        grid_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        grid = sampling_grid(matrices, self.size, grid_dtype).to(x.dtype)
        return F.grid_sample(x, grid, mode=mode, padding_mode=self.pad, align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training: a random composed warp per image; eval: a plain resize to `size`."""
        x = _check_images(x)
        n = x.shape[0]
        matrices = self.sample(n, x.device) if self.training else self.identity(n, x.device)
        return self.apply(x, matrices)

    def transform_points(self, points: torch.Tensor, matrices: torch.Tensor, in_size: int | tuple[int, int],
                         out_size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Map pixel coordinates (x, y) of the input (N, K, 2) to the output of `apply(x, matrices)`.

        Uses the inverse of each sampling matrix (input -> output) with the projective divide. Pixel centres
        are at integer (x, y) = (column, row). `in_size` is the input's (H, W), `out_size` defaults to `size`.
        """
        in_h, in_w = _check_size(in_size, "in_size")
        out_h, out_w = self.size if out_size is None else _check_size(out_size, "out_size")
        if not isinstance(points, torch.Tensor) or not points.is_floating_point() or points.dim() != 3 \
                or points.shape[-1] != 2:
            got = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
            raise ParamError(f"points must be a float tensor of shape (N, K, 2) holding (x, y), got {got}")
        if not isinstance(matrices, torch.Tensor) or matrices.shape != (points.shape[0], 3, 3):
            got = tuple(matrices.shape) if isinstance(matrices, torch.Tensor) else type(matrices).__name__
            raise ParamError(f"matrices must be a tensor of shape ({points.shape[0]}, 3, 3), got {got}")
        p = points.double()
        norm = torch.stack([(2 * p[..., 0] + 1) / in_w - 1, (2 * p[..., 1] + 1) / in_h - 1, torch.ones_like(p[..., 0])],
                           dim=-1)
        forward = torch.linalg.inv(matrices.to(p.device).double())
        q = norm @ forward.transpose(1, 2)
        q = q[..., :2] / q[..., 2:]
        out = torch.stack([((q[..., 0] + 1) * out_w - 1) / 2, ((q[..., 1] + 1) * out_h - 1) / 2], dim=-1)
        return out.to(points.dtype)


def _prefilter(x: torch.Tensor, shrink: float) -> torch.Tensor:
    """Area-average `x` by floor(shrink) when the warp would shrink it by more than 2x (else return it)."""
    if shrink <= ALIAS_SHRINK:
        return x
    k = int(math.floor(shrink))
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(max(1, round(h / k)), max(1, round(w / k))), mode="area")


# ----------------------------------------------------------------------------- presizing and lighting


def presize(image: torch.Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize one image (C, H, W) or a batch (N, C, H, W) to cover `size`, then centre-crop to it.

    Meant to run once per item (in the dataset, on the CPU) to a size somewhat larger than the training size,
    with an antialiased filter, so that the per-batch `AffineAugment` only shrinks a little.
    """
    h, w = _check_size(size)
    if not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.dim() not in (3, 4):
        got = f"{image.dtype} tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) \
            else type(image).__name__
        raise ParamError(f"image must be a float tensor (C, H, W) or (N, C, H, W), got {got}")
    mode = one_of("mode", mode, ("bilinear", "bicubic"))
    batch = image if image.dim() == 4 else image[None]
    scale = max(h / batch.shape[-2], w / batch.shape[-1])
    covered = (max(h, round(batch.shape[-2] * scale)), max(w, round(batch.shape[-1] * scale)))
    resized = F.interpolate(batch, size=covered, mode=mode, align_corners=False, antialias=True)
    top, left = (covered[0] - h) // 2, (covered[1] - w) // 2
    out = resized[..., top:top + h, left:left + w]
    return out if image.dim() == 4 else out[0]


class Lighting(nn.Module):
    """Random brightness and contrast per image, a point-wise step after the warp (no resampling).

    With probability `p` per image: x -> (x - mean) * c + mean + b, where mean is the image's mean over
    channels and pixels, c is drawn uniformly in [1 - contrast, 1 + contrast] and b in [-brightness,
    brightness] (in the image's units: a fraction of the range for images in [0, 1]). Values are not
    clipped. Identity in eval mode.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, p: float = 0.75,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.brightness = number("brightness", brightness, 0.0)
        self.contrast = fraction("contrast", contrast)
        self.p = fraction("p (a probability)", p)
        self.generator = _generator(generator)

    def extra_repr(self) -> str:
        return f"brightness={self.brightness}, contrast={self.contrast}, p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_images(x)
        if not self.training:
            return x
        u = _uniform(x.shape[0], 3, self.generator).to(device=x.device, dtype=x.dtype)
        on = (u[:, 0] < self.p).to(x.dtype)
        b = ((2 * u[:, 1] - 1) * self.brightness * on).view(-1, 1, 1, 1)
        c = (1 + (2 * u[:, 2] - 1) * self.contrast * on).view(-1, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * c + mean + b
