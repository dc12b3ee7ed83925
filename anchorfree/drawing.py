"""What every picture the project writes shares: class colours, fitting an image to a tile, and atomic PNG writes.

Used by `data show` (anchorfree.data.report), the run folder's plots (anchorfree.plots) and `anchorfree targets`
(anchorfree.targets_view), so a class has the same colour in all of them. Figures are rendered with matplotlib's
object API on the Agg canvas (no pyplot, no global backend).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torchvision.transforms.v2 import functional as F

from anchorfree.checkpoint import atomic_write_bytes

# One colour per class (cycled), none of them grey, which is kept for crowd / difficult (ignore) boxes.
CLASS_COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (255, 225, 25),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
)
IGNORE_COLOUR = (160, 160, 160)


def class_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour class `label` (a contiguous class index) is drawn with everywhere."""
    return CLASS_COLOURS[label % len(CLASS_COLOURS)]


def unit_rgb(colour: tuple[int, int, int]) -> tuple[float, float, float]:
    """An 8-bit RGB colour as matplotlib's 0-1 RGB."""
    return (colour[0] / 255, colour[1] / 255, colour[2] / 255)


def fit_to_tile(image: torch.Tensor, tile_size: int) -> tuple[torch.Tensor, float, float]:
    """(3, tile_size, tile_size) uint8: `image` scaled so its longer side fits, padded bottom/right with black;
    and the (x, y) scale factors applied to it (multiply boxes by them)."""
    height, width = image.shape[-2:]
    scale = tile_size / max(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    tile = torch.zeros((3, tile_size, tile_size), dtype=torch.uint8)
    tile[:, :new_height, :new_width] = F.resize(image, [new_height, new_width], antialias=True)
    return tile, new_width / width, new_height / height


def save_image(image: torch.Tensor, out_png: str | Path) -> Path:
    """Write a (3, H, W) uint8 image as a PNG atomically; returns the path."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")  # (3, H, W) -> (H, W, 3)
    out_png = Path(out_png)
    atomic_write_bytes(out_png, buffer.getvalue())
    return out_png


def save_figure(figure: Figure, out_png: str | Path, dpi: int = 100) -> Path:
    """Render `figure` with Agg and write it to `out_png` atomically; returns the path."""
    FigureCanvasAgg(figure)  # attaches itself to the figure
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    out_png = Path(out_png)
    atomic_write_bytes(out_png, buffer.getvalue())
    return out_png
