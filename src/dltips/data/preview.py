"""`dltips.preview`: look at what each step of an input pipeline does (tip `verify-transforms`).

    result = dltips.preview([("load", load), ("presize", resize), ("augment", aug)], samples, "steps.png")

Every sample goes through the steps in order; the PNG has one row per sample
and one column per stage (the input, then the output of each step), and
`result.stats` gives per stage the shapes, dtype, range, mean and std over the
samples: a wrong scale (0-255 where 0-1 was meant), a swapped channel axis or a
label-destroying crop shows up before any training. Steps are any callables on
tensors, numpy arrays or PIL images; a stage that is not an image (a vector, a
token sequence) gets an empty cell and still has its statistics.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from dltips.core.io import atomic_write
from dltips.core.params import ParamError, int_at_least

CELL = 96  # pixels per grid cell side
GAP = 4  # pixels between cells


@dataclass
class StageStats:
    """Statistics of one stage over all samples (NaN where a value is not numeric)."""

    stage: str
    shapes: list[tuple[int, ...]]
    dtypes: list[str]
    min: float
    max: float
    mean: float
    std: float

    def row(self) -> list:
        shapes = ", ".join(str(s) for s in dict.fromkeys(self.shapes))
        return [self.stage, shapes, ", ".join(dict.fromkeys(self.dtypes)), self.min, self.max, self.mean, self.std]


@dataclass
class Preview:
    """What `preview` saw: stage names, displayable pixels per [sample][stage] (None if not an image), stats."""

    stages: list[str]
    pixels: list[list[np.ndarray | None]]
    stats: list[StageStats]
    png: bytes = field(repr=False, default=b"")

    def table(self) -> dict:
        """The statistics as a "table" figure for a Finding."""
        return {"kind": "table", "title": "Each stage of the input pipeline, over the previewed samples",
                "columns": ["stage", "shapes", "dtype", "min", "max", "mean", "std"],
                "rows": [s.row() for s in self.stats]}

    def figure(self) -> dict:
        """Every sample at every stage as an "images" figure for a Finding (captions "sample i: stage")."""
        images, captions = [], []
        for i, row in enumerate(self.pixels):
            for stage, pixels in zip(self.stages, row):
                if pixels is not None:
                    images.append(pixels)
                    captions.append(f"sample {i}: {stage}")
        return {"kind": "images", "title": "Samples through the input pipeline", "images": images,
                "captions": captions}


def preview(
    pipeline: Sequence[tuple[str, Callable]] | dict[str, Callable],
    samples: Iterable[Any],
    path: str | os.PathLike | None = None,
    *,
    cell: int = CELL,
) -> Preview:
    """Run each sample through the named steps, keep every stage, and write the grid PNG to `path`.

    `pipeline`: (name, callable) pairs in order, or a dict. `samples`: inputs
    (tensors, arrays, PIL images), or (x, y) items whose x is used. The PNG is
    written atomically; `Preview.png` holds its bytes either way.
    """
    steps = _steps(pipeline)
    cell = int_at_least("cell (pixels)", cell, 8)
    samples = [s[0] if isinstance(s, tuple) and len(s) == 2 else s for s in samples]
    if not samples:
        raise ParamError("preview needs at least one sample")
    stages = ["input", *(name for name, _ in steps)]
    values: list[list[Any]] = []
    for i, sample in enumerate(samples):
        row = [sample]
        for name, step in steps:
            try:
                row.append(step(row[-1]))
            except Exception as error:
                raise RuntimeError(f"preview: step {name!r} raised {type(error).__name__} on sample {i}: {error}") \
                    from error
        values.append(row)
    pixels = [[to_pixels(value) for value in row] for row in values]
    stats = [stage_stats(stage, [row[j] for row in values]) for j, stage in enumerate(stages)]
    result = Preview(stages, pixels, stats)
    result.png = grid_png(pixels, cell)
    if path is not None:
        atomic_write(path, lambda f: f.write(result.png))
    return result


def _steps(pipeline: Any) -> list[tuple[str, Callable]]:
    items = list(pipeline.items()) if isinstance(pipeline, dict) else list(pipeline)
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and callable(item[1])):
            raise ParamError("preview(pipeline=...) expects (name, callable) pairs or a dict {name: callable}; "
                             f"got {item!r}")
    return items


def as_array(value: Any) -> np.ndarray | None:
    """A tensor, array or PIL image as a float64 numpy array; None for anything else."""
    if hasattr(value, "detach"):
        return value.detach().cpu().double().numpy()
    if isinstance(value, np.ndarray):
        return value.astype(np.float64) if value.dtype != object else None
    if hasattr(value, "mode") and hasattr(value, "size") and hasattr(value, "getdata"):  # a PIL image
        return np.asarray(value, dtype=np.float64)
    return None


def to_pixels(value: Any) -> np.ndarray | None:
    """Displayable uint8 pixels, (H, W) or (H, W, 3), min-max scaled; None when `value` is not an image.

    Tensors are read as (C, H, W) or (H, W); numpy arrays and PIL images as
    (H, W, C) or (H, W), the conventions of each library.
    """
    from dltips.core.png import image_pixels

    array = as_array(value)
    if array is None:
        return None
    if not hasattr(value, "detach") and array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array.transpose(2, 0, 1)  # HWC (numpy, PIL) -> CHW
    if array.ndim == 3 and array.shape[0] not in (1, 3, 4) or array.ndim not in (2, 3) or min(array.shape[-2:]) < 2:
        return None
    return image_pixels(array)


def stage_stats(stage: str, values: list[Any]) -> StageStats:
    arrays = [as_array(v) for v in values]
    shapes = [tuple(np.shape(a)) if a is not None else () for a in arrays]
    dtypes = [str(getattr(v, "dtype", type(v).__name__)) for v in values]
    numbers = np.concatenate([a.reshape(-1) for a in arrays if a is not None and a.size]) if any(
        a is not None and a.size for a in arrays) else np.zeros(0)
    if not numbers.size:
        return StageStats(stage, shapes, dtypes, math.nan, math.nan, math.nan, math.nan)
    return StageStats(stage, shapes, dtypes, float(numbers.min()), float(numbers.max()), float(numbers.mean()),
                      float(numbers.std()))


def grid_png(pixels: list[list[np.ndarray | None]], cell: int = CELL) -> bytes:
    """One PNG: a row per sample, a column per stage; each image scaled to fit a `cell` square (nearest)."""
    from dltips.core.png import png_bytes

    rows, columns = len(pixels), max(len(row) for row in pixels)
    canvas = np.full((GAP + rows * (cell + GAP), GAP + columns * (cell + GAP), 3), 255, dtype=np.uint8)
    for i, row in enumerate(pixels):
        for j, image in enumerate(row):
            top, left = GAP + i * (cell + GAP), GAP + j * (cell + GAP)
            if image is None:
                canvas[top:top + cell, left:left + cell] = 220  # light gray: not an image
                continue
            fitted = fit(image, cell)
            height, width = fitted.shape[:2]
            canvas[top:top + height, left:left + width] = fitted[..., None] if fitted.ndim == 2 else fitted
    return png_bytes(canvas)


def fit(image: np.ndarray, cell: int) -> np.ndarray:
    """Nearest-neighbour resize so the longer side is `cell` pixels (pixels stay sharp for small images)."""
    height, width = image.shape[:2]
    scale = cell / max(height, width)
    rows = np.minimum((np.arange(max(1, round(height * scale))) / scale).astype(int), height - 1)
    cols = np.minimum((np.arange(max(1, round(width * scale))) / scale).astype(int), width - 1)
    return image[rows][:, cols]
