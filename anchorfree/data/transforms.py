"""Box-aware augmentation and preprocessing on `torchvision.transforms.v2`.

Resizing and normalisation live here, in the data pipeline, never inside a model: a sample leaves the pipeline
as a normalised float image at network resolution with its boxes in the same pixels. Every resize keeps the
aspect ratio; `resize` picks one of three ways (the `data.resize` setting):

- "shorter" (FCOS, torchvision, detectron2): shorter side to a size, longer side capped at `max_size`; padding
  to a stride multiple happens when images are batched.
- "letterbox": longer side to the size, then padded at the bottom and right to size x size. The image stays at
  the top-left, so boxes need no offset: mapping back to the original only needs the un-padded size, which the
  pipeline notes in the sample as "input_size".
- "crop" (CenterNet, CornerNet; training only, evaluation letterboxes): the letterboxed scale times a random
  factor from `scale_range`, then a random size x size window, padded where the image is smaller. Boxes are
  clipped to the window; as in both papers' code, a cut box is kept whatever fraction of it remains, as long as
  both its sides are at least `min_box_size` pixels.

Padding is the ImageNet mean colour, which normalises to ~0: the value the model pads batches with (in "crop"
training, colour distortion comes after the crop and shifts it a little, as it does the image).
Mosaic (four images in a 2x2 layout) needs other samples, so `DetectionDataset` builds it with `mosaic` below
before the sample enters the pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_PIXEL = tuple(round(255 * channel) for channel in IMAGENET_MEAN)  # (124, 116, 104): padding, ~0 once normalised
RESIZE_MODES = ("shorter", "letterbox", "crop")


def train_transforms(
    sizes: list[int],
    max_size: int,
    horizontal_flip: float = 0.5,
    photometric: bool = True,
    *,
    resize: str = "shorter",
    scale_range: Sequence[float] = (0.6, 1.4),
    min_box_size: float = 2.0,
) -> v2.Compose:
    """Training pipeline: resize as `resize` says (one of `sizes` per image), flip, colour distortion, normalise.

    Args:
        sizes: shorter sides ("shorter") or square sides ("letterbox", "crop"), in pixels; one is picked per image.
        max_size: cap on the longer side; used by "shorter" only.
        horizontal_flip: probability of a left-right flip.
        photometric: random brightness, contrast, saturation and hue.
        resize: "shorter", "letterbox" or "crop" (see the module docstring).
        scale_range: "crop" only: (low, high) of the random factor on the letterboxed scale.
        min_box_size: "crop" only: boxes cut to a side below this many pixels are dropped. The other resizes
            only shrink whole boxes and drop those below 1 px.

    Dropped boxes take their labels and iscrowd flags with them.
    """
    check_resize(resize)
    flip_and_colour: list[v2.Transform] = []
    if horizontal_flip > 0:
        flip_and_colour.append(v2.RandomHorizontalFlip(p=horizontal_flip))
    if photometric:
        flip_and_colour.append(
            v2.RandomPhotometricDistort(brightness=(0.75, 1.25), contrast=(0.75, 1.25), saturation=(0.7, 1.3), hue=(-0.03, 0.03), p=0.5)
        )
    smallest_box = 1.0
    if resize == "shorter":
        steps = [v2.RandomShortestSize(min_size=list(sizes), max_size=max_size, antialias=True), *flip_and_colour]
    elif resize == "letterbox":
        # Flip and colour before the padding: the image stays at the top-left, as in evaluation.
        longer_side = _one_of([v2.Resize(size=None, max_size=size, antialias=True) for size in sizes])
        steps = [longer_side, record_input_size, *flip_and_colour, PadToSquare()]
    else:
        low, high = scale_range
        scale_and_crop = _one_of(
            [
                v2.Compose(
                    [
                        v2.ScaleJitter((size, size), scale_range=(low, high), antialias=True),
                        v2.RandomCrop(size, pad_if_needed=True, fill=MEAN_PIXEL),
                    ]
                )
                for size in sizes
            ]
        )
        steps = [scale_and_crop, *flip_and_colour]
        smallest_box = min_box_size
    steps += [
        v2.SanitizeBoundingBoxes(min_size=smallest_box, labels_getter=_labels_and_crowd),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    return v2.Compose(steps)


def eval_transforms(size: int, max_size: int, *, resize: str = "shorter") -> v2.Compose:
    """Evaluation/prediction pipeline: deterministic resize, normalise.

    "shorter": shorter side `size`, longer side <= `max_size`. "letterbox" and "crop" (whose evaluation is the
    letterbox): longer side `size`, padded at the bottom and right to size x size. The sample's "input_size" is
    the resized image's (height, width) without padding: `scale_to_original` maps predictions back through it.
    """
    check_resize(resize)
    if resize == "shorter":
        steps = [v2.Resize(size=size, max_size=max_size, antialias=True), record_input_size]
    else:
        steps = [v2.Resize(size=None, max_size=size, antialias=True), record_input_size, PadToSquare()]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


def check_resize(resize: str) -> None:
    """Raise ValueError unless `resize` is one of RESIZE_MODES."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(map(repr, RESIZE_MODES))}, got {resize!r}")


def largest_input(size: int, max_size: int, resize: str = "shorter", scale_range: Sequence[float] = (1.0, 1.0)) -> tuple[int, int]:
    """(shorter side, longer-side cap) that bounds every resize of a pipeline, for `DetectionDataset(largest_input=)`.

    `size` is the largest of the pipeline's sizes. "letterbox" and "crop" ignore `max_size`: their longer side is
    `size`, times at most scale_range[1] for "crop" (pass no scale_range for evaluation, which letterboxes).
    """
    if resize == "shorter":
        return size, max_size
    longer = math.ceil(size * max(1.0, scale_range[1]))
    return longer, longer


def record_input_size(sample: dict) -> dict:
    """Pipeline step: note the resized image's (height, width), before any padding, as sample["input_size"]."""
    height, width = sample["image"].shape[-2:]
    return {**sample, "input_size": (int(height), int(width))}


class PadToSquare(v2.Transform):
    """Pad at the bottom and right to a square of the longer side (v2 has no pad-to-size transform).

    The image keeps its top-left corner, so boxes keep their coordinates and only their canvas grows.
    """

    def __init__(self, fill: Sequence[int] = MEAN_PIXEL) -> None:
        super().__init__()
        self.fill = list(fill)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        side = max(height, width)
        return {"padding": [0, 0, side - width, side - height]}  # left, top, right, bottom

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(v2.functional.pad, inpt, padding=params["padding"], fill=self.fill)


def mosaic(samples: list[dict], size: int, min_box_size: float = 2.0) -> dict:
    """Four samples in a 2x2 layout on a size x size canvas (YOLOv4's mosaic), made before the training pipeline.

    Each image is resized to a longer side of size / 2 and placed with the corner that faces the centre on a
    random centre (each coordinate uniform in [size / 4, 3 size / 4]): it lies inside its quadrant and only the
    outer canvas edges cut it. Boxes move with their image and are clipped to the canvas; those left with a side
    below `min_box_size` pixels are dropped with their labels and iscrowd flags. Where no image falls, the canvas
    is the mean colour. Randomness comes from torch's global generator (the dataset seeds it per sample).

    Args:
        samples: four samples from `make_sample` ((3, H, W) uint8 images, XYXY boxes), placed top-left,
            top-right, bottom-left, bottom-right.
        size: the canvas side in pixels.

    Returns:
        one sample of the same form with a (3, size, size) image.
    """
    centre_x, centre_y = (int(value) for value in size * (0.25 + 0.5 * torch.rand(2)))
    canvas = torch.tensor(MEAN_PIXEL, dtype=torch.uint8)[:, None, None].repeat(1, size, size)  # (3, size, size)
    fit = v2.Resize(size=None, max_size=size // 2, antialias=True)
    boxes, labels, iscrowd = [], [], []
    for quadrant, sample in enumerate(samples):
        sample = fit(sample)
        image = sample["image"].as_subclass(torch.Tensor)
        height, width = image.shape[-2:]
        left = centre_x - width if quadrant in (0, 2) else centre_x
        top = centre_y - height if quadrant in (0, 1) else centre_y
        x1, y1, x2, y2 = max(left, 0), max(top, 0), min(left + width, size), min(top + height, size)
        canvas[:, y1:y2, x1:x2] = image[:, y1 - top : y2 - top, x1 - left : x2 - left]
        boxes.append(sample["boxes"].as_subclass(torch.Tensor) + torch.tensor([left, top, left, top], dtype=torch.float32))
        labels.append(sample["labels"])
        iscrowd.append(sample["iscrowd"])
    all_boxes = torch.cat(boxes).clamp(0, size)  # (M, 4); the canvas is square, so one clamp serves x and y
    keep = ((all_boxes[:, 2] - all_boxes[:, 0]) >= min_box_size) & ((all_boxes[:, 3] - all_boxes[:, 1]) >= min_box_size)
    return make_sample(canvas, all_boxes[keep], torch.cat(labels)[keep], torch.cat(iscrowd)[keep])


def _one_of(transforms: list[v2.Transform]) -> v2.Transform:
    return transforms[0] if len(transforms) == 1 else v2.RandomChoice(transforms)


def _labels_and_crowd(sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
    # SanitizeBoundingBoxes drops the same rows from every tensor this returns.
    return sample["labels"], sample["iscrowd"]


def resized_shape(height: int, width: int, size: int, max_size: int) -> tuple[int, int]:
    """(height, width) after a shorter-side resize to `size` with the longer side capped at `max_size`."""
    scale = min(size / min(height, width), max_size / max(height, width))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def make_sample(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, iscrowd: torch.Tensor) -> dict:
    """Wrap a (3, H, W) uint8 image and its (M, 4) xyxy boxes as tv_tensors so v2 transforms move them together."""
    height, width = image.shape[-2:]
    return {
        "image": tv_tensors.Image(image),
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        "labels": labels,
        "iscrowd": iscrowd,
    }


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Normalised (3, H, W) float -> (3, H, W) uint8, for drawing."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=image.device)[:, None, None]
    return ((image * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
