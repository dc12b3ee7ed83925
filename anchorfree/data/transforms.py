"""Box-aware augmentation and preprocessing on `torchvision.transforms.v2`.

Resizing and normalisation live here, in the data pipeline, never inside a model: a sample leaves the pipeline
as a normalised float image at network resolution with its boxes in the same pixels. Resizing keeps the aspect
ratio (shorter side to a size, longer side capped), as torchvision's and detectron2's detectors do; padding
to a stride multiple happens when images are batched.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transforms(sizes: list[int], max_size: int, horizontal_flip: float = 0.5, photometric: bool = True) -> v2.Compose:
    """Training pipeline: random shorter side from `sizes` (multi-scale), flip, colour distortion, normalise.

    Boxes that shrink below 1 px are removed with their labels.
    """
    steps: list[v2.Transform] = [v2.RandomShortestSize(min_size=list(sizes), max_size=max_size, antialias=True)]
    if horizontal_flip > 0:
        steps.append(v2.RandomHorizontalFlip(p=horizontal_flip))
    if photometric:
        steps.append(v2.RandomPhotometricDistort(brightness=(0.75, 1.25), contrast=(0.75, 1.25), saturation=(0.7, 1.3), hue=(-0.03, 0.03), p=0.5))
    steps += [
        v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_and_crowd),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    return v2.Compose(steps)


def eval_transforms(size: int, max_size: int) -> v2.Compose:
    """Evaluation/prediction pipeline: deterministic resize (shorter side `size`, longer <= `max_size`), normalise."""
    return v2.Compose(
        [
            v2.Resize(size=size, max_size=max_size, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


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
