"""A PNG encoder with no imaging library (numpy and the standard library only), and images as pixels.

The reports embed images as PNG data URIs; `image_pixels` turns a tensor or
array image into the uint8 pixels that `png_bytes` encodes.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import numpy as np

from dltips.core.params import ParamError

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode uint8 pixels, (H, W) gray or (H, W, 3) RGB, as a PNG file."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    rows = pixels.reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) read from a PNG's header."""
    return struct.unpack(">II", png[16:24])


def data_uri(png: bytes) -> str:
    """A PNG as a data URI, for an <img> that needs no file beside the page."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_pixels(image: Any) -> np.ndarray:
    """An (H, W) or (C, H, W) image as min-max scaled uint8 pixels, (H, W) or (H, W, 3)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().float().numpy()
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 3 and array.shape[0] in (3, 4):
        array = array[:3].transpose(1, 2, 0)
    elif not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise ParamError(f"expected an image of shape (H, W) or (C, H, W) with C in 1, 3; got {array.shape}")
    finite = np.isfinite(array)
    low, high = (array[finite].min(), array[finite].max()) if finite.any() else (0.0, 0.0)
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return np.round(np.where(finite, scaled, 0.0) * 255).astype(np.uint8)
