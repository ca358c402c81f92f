"""Are the training images large enough for conclusions to carry over?

Images below about 96 px on their shorter side behave differently from larger
ones: what works on 32 px images (CIFAR-10) often does not on full-size ones
(ImageNet). Around 128 px, experiments are still fast and their conclusions
tend to hold at larger sizes. This check reads the size of a few training
inputs and says so.

What counts as an image (per item, before batching):

    (C, H, W)   C in 1..4 (channels first)
    (H, W, C)   C in 1..4 and H, W > 4 (channels last, as from PIL or numpy)
    (H, W)      one channel

with H and W at least MIN_SIDE and at most ASPECT times each other, in a float,
uint8 or bool tensor. Integer ids (token sequences, category codes), flat
feature vectors and dict inputs are not images, and the check is skipped.

    shorter side          verdict
    < 96 px               info: suggest experiments at about 128 px
    >= 96 px              pass
    not an image          skip
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from dltips.core.checks import check_args
from dltips.core.deadline import Deadline
from dltips.core.device import resolve_device
from dltips.core.params import positive_int
from dltips.findings import Finding
from dltips.predict import evenly_spaced
from dltips.task import Task

TIP = "image-resolution"
SMALL_SIDE = 96  # below this shorter side, images behave differently
SUGGESTED_SIDE = 128  # fast to train on, and its conclusions hold at larger sizes
MIN_SIDE = 8  # smaller "images" are taken for something else
ASPECT = 4.0  # larger ratios of the sides are taken for sequences or tables
SAMPLED_ITEMS = 8


@dataclass
class ImageShape:
    """How an input was read: its layout, channels and size in pixels."""

    layout: str  # "CHW", "HWC" or "HW"
    channels: int
    height: int
    width: int

    @property
    def shorter(self) -> int:
        return min(self.height, self.width)


def image_shape(x: object) -> ImageShape | None:
    """The image layout and size of one input item, or None when it does not look like an image."""
    if not isinstance(x, torch.Tensor) or not (x.is_floating_point() or x.dtype in (torch.uint8, torch.bool)):
        return None
    shape = tuple(x.shape)
    if len(shape) == 3 and 1 <= shape[0] <= 4:
        found = ImageShape("CHW", shape[0], shape[1], shape[2])
    elif len(shape) == 3 and 1 <= shape[2] <= 4 and min(shape[0], shape[1]) > 4:
        found = ImageShape("HWC", shape[2], shape[0], shape[1])
    elif len(shape) == 2:
        found = ImageShape("HW", 1, shape[0], shape[1])
    else:
        return None
    sides = (found.height, found.width)
    if min(sides) < MIN_SIDE or max(sides) > ASPECT * min(sides):
        return None
    return found


def check_image_resolution(
    task: Task,
    *,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    max_items: int | None = None,
    deadline: Deadline | float | None = None,
    target_size: int | None = None,
) -> list[Finding]:
    """Note training images smaller than SMALL_SIDE px on their shorter side; one Finding.

    `target_size` (optional): the shorter side, in pixels, of the images the
    model will meet in use. Training at that size or above passes even when it
    is small, since the conclusions are then drawn at the size that matters.
    Reads `max_items` (default SAMPLED_ITEMS) evenly spaced training items; the
    model is not run and nothing is drawn at random, so `model`, `device`,
    `seed` and `deadline` are validated for the common check signature only.
    """
    seed, max_items, deadline = check_args(seed, max_items, deadline)
    resolve_device(device, task.model if model is None else model)
    if target_size is not None:
        target_size = positive_int("target_size", target_size)
    shapes = []
    for i in evenly_spaced(len(task.train), SAMPLED_ITEMS if max_items is None else max_items):
        x = task.train[i][0]
        shape = image_shape(x)
        if shape is None:
            return [_not_images(x)]
        shapes.append(shape)
    smallest = min(shapes, key=lambda s: s.shorter)
    sizes = sorted({(s.height, s.width) for s in shapes})
    size_text = ", ".join(f"{h}x{w}" for h, w in sizes)
    evidence = {"shape": asdict(smallest), "shorter_side": smallest.shorter, "sizes": [list(s) for s in sizes],
                "n_sampled": len(shapes), "small_side": SMALL_SIDE, "suggested_side": SUGGESTED_SIDE,
                "target_size": target_size}
    measured = (f"Training images are {size_text} px ({smallest.channels} channel"
                f"{'s' if smallest.channels > 1 else ''}, {smallest.layout}; {len(shapes)} items sampled), "
                f"a shorter side of {smallest.shorter} px.")
    if smallest.shorter >= SMALL_SIDE:
        return [Finding(TIP, "pass", f"Training images are large enough ({smallest.shorter} px shorter side)",
                        f"{measured} From about {SMALL_SIDE} px up, conclusions tend to carry over to larger images.",
                        None, evidence)]
    if target_size is not None and target_size <= smallest.shorter:
        return [Finding(TIP, "pass", f"Training images ({smallest.shorter} px) match the size the model is used at",
                        f"{measured} The model is used on images of {target_size} px, no larger than the training "
                        "images, so conclusions are drawn at the size that matters.", None, evidence)]
    use = f" while the model is used on {target_size} px images" if target_size is not None else ""
    message = (f"{measured} Images below about {SMALL_SIDE} px behave differently from larger ones{use}: what works "
               "on 32 px images (CIFAR-10) often fails on full-size ones (ImageNet), so conclusions drawn here may "
               f"not transfer. At about {SUGGESTED_SIDE} px experiments are still fast and their conclusions tend to "
               "hold for larger images.")
    fix = (f"Run the experiments whose conclusions must carry over (architecture, augmentation, learning-rate "
           f"choices) at about {SUGGESTED_SIDE}x{SUGGESTED_SIDE} px, e.g. on a subset of the data resized to "
           f"{SUGGESTED_SIDE} px, and confirm at the final size.")
    return [Finding(TIP, "info", f"Small training images ({smallest.shorter} px): conclusions may not transfer",
                    message, fix, evidence)]


def _not_images(x: object) -> Finding:
    if isinstance(x, dict):
        found = f"dict inputs with keys {sorted(x)}"
    elif isinstance(x, torch.Tensor):
        found = f"{x.dtype} tensors of shape {tuple(x.shape)}"
    else:
        found = type(x).__name__
    return Finding(TIP, "skip", "Training inputs are not images",
                   f"The training inputs are {found}; images are (C, H, W) or (H, W, C) tensors with 1 to 4 "
                   f"channels, or (H, W), with both sides at least {MIN_SIDE} px, in a float, uint8 or bool tensor.",
                   None, {"found": found})
