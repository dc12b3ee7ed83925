"""What every picture the project writes shares: class colours, fitting an image to a tile, and atomic PNG writes.

Used by `data show` (anchorfree.data.report), the run folder's plots (anchorfree.plots), `anchorfree targets`
(anchorfree.targets_view) and `predict`'s drawn images (`draw_detections`), so a class has the same colour in all
of them. Figures are rendered with matplotlib's
object API on the Agg canvas (no pyplot, no global backend).
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.v2 import functional as F

from anchorfree.files import atomic_write_bytes

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


# ------------------------------------------------------------------------------ detections drawn on a full image
#
# `predict` draws on the user's own photos, from 300 px crops to 4000 px phone pictures: line width and font size
# follow the image size, each label sits on a filled background in its box's colour, and labels are laid out so
# that none covers another (two classes scoring on one object both stay readable).


def line_width_for(image_size: tuple[int, int]) -> int:
    """Box outline width in pixels for an image of (height, width): 0.3% of the mean side, at least 2."""
    return max(2, round(0.003 * (image_size[0] + image_size[1]) / 2))


def font_size_for(image_size: tuple[int, int]) -> int:
    """Label font size in pixels for an image of (height, width): 2% of the mean side, at least 10."""
    return max(10, round(0.02 * (image_size[0] + image_size[1]) / 2))


@functools.lru_cache(maxsize=16)
def label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at `size` pixels (Pillow >= 10.1); older Pillow only has its fixed-size bitmap font."""
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: load_default() takes no size
        return ImageFont.load_default()


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `background` (by its luma, ITU-R BT.601)."""
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma > 150 else (255, 255, 255)


def layout_labels(
    boxes: list[tuple[float, float, float, float]], label_sizes: list[tuple[int, int]], image_size: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Where each box's label goes: one (x1, y1, x2, y2) rectangle per box, inside the image, none overlapping.

    A pure function of the boxes (x1, y1, x2, y2 pixels), the labels' (width, height) and the image's (height,
    width). Labels are placed in the order given (pass the most confident first: it gets the best place). Each
    prefers, in turn: above its box's top-left corner, inside it at the top, below it, inside at the bottom; a
    place is shifted into the image when it would leave it. When all four cover an earlier label, the label is
    stacked against an earlier one (below, above or beside it), nearest to its box first. Only a label that has
    no free place at all (an image full of labels) may overlap, where it overlaps least. A label wider or taller
    than the image is cut at the image's right or bottom edge.
    """
    image_height, image_width = image_size
    placed = torch.zeros((0, 4))
    rectangles: list[tuple[int, int, int, int]] = []
    for (x1, y1, x2, y2), (label_width, label_height) in zip(boxes, label_sizes):
        label_width, label_height = min(label_width, image_width), min(label_height, image_height)
        x1, y1, x2, y2 = round(x1), round(y1), round(x2), round(y2)
        preferred = [(x1, y1 - label_height), (x1, y1), (x1, y2), (x1, y2 - label_height)]
        stacked = []
        for left, top, right, bottom in placed.int().tolist():
            stacked += [(x1, bottom), (x1, top - label_height), (right, y1 - label_height), (left - label_width, y1 - label_height)]
        # Stacked places nearest to the preferred one first.
        stacked.sort(key=lambda corner: abs(corner[1] - (y1 - label_height)) + abs(corner[0] - x1))
        corners = torch.tensor(preferred + stacked, dtype=torch.float32)  # (C, 2) top-left corners
        corners[:, 0] = corners[:, 0].clamp(max=image_width - label_width).clamp(min=0)
        corners[:, 1] = corners[:, 1].clamp(max=image_height - label_height).clamp(min=0)
        candidates = torch.cat([corners, corners + torch.tensor([label_width, label_height])], dim=1)  # (C, 4)
        if len(placed):
            # Overlap area of every candidate with every placed label: (C, 1, 2) vs (1, P, 2) -> (C, P).
            overlap_width = (torch.minimum(candidates[:, None, 2], placed[None, :, 2]) - torch.maximum(candidates[:, None, 0], placed[None, :, 0])).clamp(min=0)
            overlap_height = (torch.minimum(candidates[:, None, 3], placed[None, :, 3]) - torch.maximum(candidates[:, None, 1], placed[None, :, 1])).clamp(min=0)
            covered = (overlap_width * overlap_height).sum(dim=1)  # (C,)
            free = torch.nonzero(covered == 0).flatten()
            choice = int(free[0]) if len(free) else int(covered.argmin())
        else:
            choice = 0
        chosen = candidates[choice]
        placed = torch.cat([placed, chosen[None]])
        rectangles.append(tuple(int(value) for value in chosen.tolist()))  # type: ignore[arg-type]
    return rectangles


def draw_detections(image: torch.Tensor, boxes: torch.Tensor, labels: list[int], captions: list[str]) -> torch.Tensor:
    """(3, H, W) uint8 `image` with each box (x1, y1, x2, y2 pixels) outlined in its class's colour and its caption
    ("name 0.87") on a filled label of that colour, laid out by `layout_labels` in the order given.

    Boxes are drawn first and labels last, so no outline crosses a label. Line width and font size follow the
    image size (`line_width_for`, `font_size_for`). Returns a new image; `image` is not changed.
    """
    height, width = image.shape[-2:]
    picture = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())  # (3, H, W) -> (H, W, 3)
    canvas = ImageDraw.Draw(picture)
    line_width = line_width_for((height, width))
    font = label_font(font_size_for((height, width)))
    padding = max(2, font_size_for((height, width)) // 5)
    ascent, descent = font.getmetrics()
    # Boxes outside the image (a decode can reach its border) are drawn clipped to it.
    clipped = boxes.float().clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width - 1)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height - 1)
    box_list = [tuple(box) for box in clipped.tolist()]
    for box, label in zip(box_list, labels):
        canvas.rectangle(box, outline=class_colour(label), width=line_width)
    label_sizes = [(round(canvas.textlength(caption, font=font)) + 2 * padding, ascent + descent + 2 * padding) for caption in captions]
    for (left, top, right, bottom), label, caption in zip(layout_labels(box_list, label_sizes, (height, width)), labels, captions):
        colour = class_colour(label)
        canvas.rectangle((left, top, right - 1, bottom - 1), fill=colour)
        canvas.text((left + padding, top + padding), caption, fill=text_colour(colour), font=font)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
