"""Image decoding: one function so that training, evaluation, prediction and size checks see the same pixels.

EXIF orientation is applied once, here; grayscale, palette, RGBA, CMYK and 16-bit images become 8-bit RGB.
The user's file is only read, never rewritten, and Pillow's global limits are never loosened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "MPO")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".mpo")
MIN_IMAGE_SIDE = 10
# Pillow's own decompression-bomb limit (about 89 megapixels), read once; Pillow's global is never changed.
MAX_IMAGE_PIXELS = int(Image.MAX_IMAGE_PIXELS or 0) or 89_478_485
_SCAN_CHUNK_BYTES = 1 << 20  # the search for a JPEG's end marker reads this much at a time


class ImageLoadError(ValueError):
    """An image file that cannot be used: missing, not an image, unsupported, corrupt or too small."""


class ImageTooLarge(ImageLoadError):
    """An image above the pixel limit: a possible decompression bomb, never decoded."""


def load_image(path: str | Path, reduce_to: tuple[int, int] | None = None) -> torch.Tensor:
    """Decode an image file into a (3, H, W) uint8 RGB tensor, EXIF orientation applied.

    Args:
        path: the image file.
        reduce_to: optional (width, height) the caller will resize to anyway; JPEGs are then decoded at the
            smallest power-of-two reduction that is still at least that large (libjpeg's DCT scaling), which
            makes large photos several times cheaper to load. The caller reads the actual size from the result.

    Raises:
        ImageLoadError naming the path, for missing, non-image, unsupported, corrupt or too small files.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            _check_header(path, image, MAX_IMAGE_PIXELS)
            if reduce_to is not None and image.format in ("JPEG", "MPO"):
                orientation = image.getexif().get(0x0112, 1)
                # A 90-degree EXIF rotation swaps the axes the reduction applies to.
                width, height = reduce_to if orientation in (1, 2, 3, 4) else reduce_to[::-1]
                image.draft("RGB", (width, height))
            image.load()
            tensor = image_to_tensor(image)
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"{path}: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageLoadError(f"{path}: cannot decode image ({error}); the file is corrupt, truncated or not an image") from error
    if min(tensor.shape[1:]) < MIN_IMAGE_SIDE:
        raise ImageLoadError(f"{path}: image is {tensor.shape[2]}x{tensor.shape[1]} px, below the minimum side of {MIN_IMAGE_SIDE} px")
    return tensor


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """A decoded PIL image as a (3, H, W) uint8 RGB tensor, with exactly the treatment `load_image` gives a file.

    EXIF orientation is applied once (an image already transposed carries no orientation tag any more, so a
    second call leaves it alone); 16-bit images (I;16, I) are scaled by 65535, not clipped at 255; L, P, LA,
    RGBA, CMYK and the other modes become RGB, transparency composited on black. The size is not checked: a
    caller that holds a PIL image chose it. The caller's image is not modified.
    """
    oriented = ImageOps.exif_transpose(image)
    array = _to_rgb_array(oriented)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8 RGB. 16-bit images are scaled by 65535, not clipped at 255."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image).astype(np.float64)
        maximum = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(np.round(values / maximum * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels are composited on black, the colour the padding uses.
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return np.array(image.convert("RGB"))


def _check_header(path: Path, image: Image.Image, max_pixels: int) -> None:
    if image.format not in ALLOWED_FORMATS:
        raise ImageLoadError(f"{path}: unsupported image format {image.format!r} (allowed: {', '.join(ALLOWED_FORMATS)})")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} (a decompression bomb?); "
            "raise data.max_image_pixels if the image is genuine"
        )


def inspect_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) after EXIF orientation of an image that passes every check short of a full decode.

    Checks: the file exists and is an image in an allowed format, it is at most `max_pixels` pixels and at least
    MIN_IMAGE_SIDE on each side, and it is complete (a JPEG ends with its end-of-image marker; other formats
    pass Pillow's `verify`). Raises ImageLoadError naming the path and the reason.

    A JPEG with bytes after its end-of-image marker (phones and editors append metadata, motion photos a whole
    video) is complete; only one with no end-of-image marker after its scan data is truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            _check_header(path, image, max_pixels)
            width, height = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
            if image.format in ("JPEG", "MPO"):
                with path.open("rb") as handle:
                    if not jpeg_is_complete(handle):
                        raise ImageLoadError(f"{path}: truncated JPEG (no end-of-image marker after the image data); the file is corrupt or incomplete")
            else:
                # Pillow's verify() must come straight after open (getexif() above has already read chunks).
                with Image.open(path) as fresh:
                    fresh.verify()
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"{path}: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageLoadError):
            raise
        raise ImageLoadError(f"{path}: cannot read image ({error}); the file is corrupt, truncated or not an image") from error
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageLoadError(f"{path}: image is {width}x{height} px, below the minimum side of {MIN_IMAGE_SIDE} px")
    return width, height


def jpeg_is_complete(handle: BinaryIO) -> bool:
    """Whether the JPEG in the binary file `handle` has an end-of-image marker (FFD9) after its image data.

    The marker segments are walked from start-of-image to the first start-of-scan by their lengths, so an
    embedded EXIF thumbnail's own end marker is never mistaken for the image's; after the scan header the file is
    searched for FFD9 (entropy-coded data escapes every FF byte, so FFD9 there is a marker). Trailing bytes after
    the marker are allowed. The common case, a file ending in FFD9, is answered from its last two bytes.
    """
    handle.seek(0, os.SEEK_END)
    file_size = handle.tell()
    if file_size < 4:
        return False
    handle.seek(-2, os.SEEK_END)
    if handle.read(2) == b"\xff\xd9":
        return True
    handle.seek(0)
    if handle.read(2) != b"\xff\xd8":
        return False
    while True:
        byte = handle.read(1)
        if not byte:
            return False
        if byte != b"\xff":
            return False  # garbage between segments: not a JPEG we can vouch for
        marker = handle.read(1)
        while marker == b"\xff":  # fill bytes before a marker
            marker = handle.read(1)
        if not marker or marker == b"\xd9":
            return False  # the file ends, or the image ends before any scan data
        if marker == b"\x01" or b"\xd0" <= marker <= b"\xd7":
            continue  # markers without a length field
        length_bytes = handle.read(2)
        if len(length_bytes) < 2:
            return False
        length = int.from_bytes(length_bytes, "big")
        if length < 2:
            return False
        handle.seek(length - 2, os.SEEK_CUR)
        if marker == b"\xda":
            break
    carry = b""
    while True:
        chunk = handle.read(_SCAN_CHUNK_BYTES)
        if not chunk:
            return False
        if b"\xff\xd9" in carry + chunk:
            return True
        carry = chunk[-1:]


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image after EXIF orientation, read from its header without decoding pixels."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
    except (UnidentifiedImageError, OSError) as error:
        raise ImageLoadError(f"{path}: cannot read image header ({error})") from error
    return width, height
