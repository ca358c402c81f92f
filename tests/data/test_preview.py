"""dltips.preview: every sample at every stage, in a PNG that really holds the images, with statistics."""

import struct
import zlib

import numpy as np
import pytest
import torch

from dltips import preview
from dltips.data.preview import CELL, GAP


def decode_png(data: bytes) -> np.ndarray:
    """Pixels of an 8-bit RGB PNG without filters (what the report's encoder writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        tag = data[pos + 4:pos + 8]
        chunks.setdefault(tag, b"")
        chunks[tag] += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(height, 1 + 3 * width)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(height, width, 3)


def cell(pixels: np.ndarray, row: int, column: int, size: int = CELL) -> np.ndarray:
    top, left = GAP + row * (size + GAP), GAP + column * (size + GAP)
    return pixels[top:top + size, left:left + size]


def test_grid_shows_each_sample_after_each_step(tmp_path):
    # a left-to-right ramp; the step mirrors it, so the bright side moves from right to left
    ramp = torch.linspace(0, 1, 8).repeat(8, 1)[None]  # (1, 8, 8)
    samples = [ramp, 2 * ramp]
    result = preview([("mirror", lambda x: x.flip(-1)), ("scale", lambda x: x * 255)], samples, tmp_path / "p.png")
    pixels = decode_png((tmp_path / "p.png").read_bytes())
    assert pixels.shape == (GAP + 2 * (CELL + GAP), GAP + 3 * (CELL + GAP), 3)
    for row in range(2):
        before, mirrored = cell(pixels, row, 0)[..., 0], cell(pixels, row, 1)[..., 0]
        assert before[:, -1].mean() > 250 and before[:, 0].mean() < 5  # bright on the right
        assert mirrored[:, 0].mean() > 250 and mirrored[:, -1].mean() < 5  # bright on the left
        assert np.array_equal(mirrored, before[:, ::-1])
    assert result.stages == ["input", "mirror", "scale"]
    scale = result.stats[2]
    assert scale.max == pytest.approx(2 * 255) and scale.min == 0
    values = np.concatenate([(s.flip(-1) * 255).numpy().ravel() for s in samples])
    assert scale.mean == pytest.approx(values.mean()) and scale.std == pytest.approx(values.std())
    assert scale.shapes == [(1, 8, 8), (1, 8, 8)] and scale.dtypes == ["torch.float32"] * 2


def test_non_images_get_an_empty_cell_and_still_their_statistics():
    result = preview({"flatten": lambda x: x.reshape(-1)}, [torch.arange(16.0).reshape(1, 4, 4)])
    assert result.pixels[0][0] is not None and result.pixels[0][1] is None
    assert result.stats[1].shapes == [(16,)] and result.stats[1].max == 15
    pixels = decode_png(result.png)
    assert (cell(pixels, 0, 1) == 220).all()
    assert result.table()["rows"][1][0] == "flatten"
    assert len(result.figure()["images"]) == 1


def test_numpy_and_pil_inputs_are_read_channels_last():
    image = np.zeros((6, 10, 3), dtype=np.uint8)
    image[:, :5, 0] = 255  # red left half
    result = preview([("same", lambda a: a)], [image])
    assert result.pixels[0][0].shape == (6, 10, 3)
    assert result.pixels[0][0][0, 0, 0] == 255 and result.pixels[0][0][0, 9, 0] == 0
    Image = pytest.importorskip("PIL.Image")
    result = preview([("gray", lambda im: im.convert("L"))], [Image.fromarray(image)])
    assert result.stats[1].shapes == [(6, 10)]


def test_items_and_errors():
    result = preview([("double", lambda x: 2 * x)], [(torch.ones(1, 4, 4), 3)])  # (x, y) items: x is used
    assert result.stats[1].max == 2
    with pytest.raises(TypeError, match="name, callable"):
        preview([lambda x: x], [torch.ones(2, 2)])
    with pytest.raises(RuntimeError, match="step 'boom' raised ZeroDivisionError on sample 0"):
        preview([("boom", lambda x: 1 / 0)], [torch.ones(2, 2)])
    with pytest.raises(ValueError, match="at least one sample"):
        preview([("same", lambda x: x)], [])
