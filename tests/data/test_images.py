"""Image decoding: every PIL mode to RGB, EXIF orientation applied once, clear errors naming the path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anchorfree.data.images import ImageLoadError, image_size, load_image


def reference_image() -> np.ndarray:
    """A 40x60 (H x W) image whose top-left quadrant is red: orientation mistakes move the red block."""
    array = np.zeros((40, 60, 3), dtype=np.uint8)
    array[:20, :30] = (255, 0, 0)
    return array


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    # Store the pixels so that applying `orientation` gives back the reference image.
    inverse = {
        1: lambda image: image,
        2: lambda image: image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        3: lambda image: image.transpose(Image.Transpose.ROTATE_180),
        4: lambda image: image.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        5: lambda image: image.transpose(Image.Transpose.TRANSPOSE),
        6: lambda image: image.transpose(Image.Transpose.ROTATE_90),
        7: lambda image: image.transpose(Image.Transpose.TRANSVERSE),
        8: lambda image: image.transpose(Image.Transpose.ROTATE_270),
    }[orientation]
    stored = inverse(Image.fromarray(reference_image()))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"orientation{orientation}.png"
    stored.save(path, exif=exif)
    loaded = load_image(path)
    assert tuple(loaded.shape) == (3, 40, 60)
    assert torch.equal(loaded.permute(1, 2, 0), torch.from_numpy(reference_image()))
    assert image_size(path) == (60, 40)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK"])
def test_other_modes_become_three_channel_rgb(tmp_path: Path, mode: str) -> None:
    image = Image.fromarray(reference_image()).convert(mode)
    path = tmp_path / f"image_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    image.save(path)
    loaded = load_image(path)
    assert loaded.dtype == torch.uint8 and tuple(loaded.shape) == (3, 40, 60)
    # The red block stays brighter in the red channel than the black background.
    assert loaded[0, :20, :30].float().mean() > loaded[0, 20:, 30:].float().mean() + 40


def test_sixteen_bit_images_are_scaled_by_65535(tmp_path: Path) -> None:
    values = np.tile(np.array([[0, 32768, 65535, 1000]], dtype=np.uint16), (12, 3))
    path = tmp_path / "depth.png"
    Image.fromarray(values).save(path)
    loaded = load_image(path)
    assert loaded[0, 0, :4].tolist() == [0, 128, 255, 4]
    assert torch.equal(loaded[0], loaded[1]) and torch.equal(loaded[1], loaded[2])


def test_reduced_jpeg_decoding_keeps_at_least_the_requested_size(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (1600, 1200), (10, 200, 30)).save(path)
    loaded = load_image(path, reduce_to=(380, 290))
    assert loaded.shape[2] >= 380 and loaded.shape[1] >= 290
    assert loaded.shape[2] < 1600


def test_missing_corrupt_non_image_and_tiny_files_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="missing.jpg: image file not found"):
        load_image(tmp_path / "missing.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ImageLoadError, match="notes.jpg: cannot decode"):
        load_image(text)
    buffer = io.BytesIO()
    Image.fromarray(reference_image()).save(buffer, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="truncated.jpg"):
        load_image(truncated)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (5, 30)).save(tiny)
    with pytest.raises(ImageLoadError, match="5x30 px, below the minimum"):
        load_image(tiny)
    gif = tmp_path / "anim.gif"
    Image.new("RGB", (30, 30)).save(gif)
    with pytest.raises(ImageLoadError, match="unsupported image format 'GIF'"):
        load_image(gif)


def test_non_ascii_paths_load(tmp_path: Path) -> None:
    path = tmp_path / "dossier é" / "raton laveur 🦝.jpg"
    path.parent.mkdir()
    Image.fromarray(reference_image()).save(path)
    assert tuple(load_image(path).shape) == (3, 40, 60)
