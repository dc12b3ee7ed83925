"""The contract every family follows (`DetectionModel`), and the input checks they share.

A detector is a plain `nn.Module` with torchvision's contract: `model(images, targets)` returns a dict of
scalar losses in training mode and `list[{"boxes", "scores", "labels"}]` in eval mode. `images` are already
resized and normalised by the data pipeline (the model never resizes); they may be a padded batch tensor
(N, 3, H, W) or a list of (3, H_i, W_i) tensors, which are padded here (bottom/right) to a common size.
Boxes are absolute (x1, y1, x2, y2) pixels of the (unpadded) input image.

`forward` is the composition of four public steps (head outputs, training targets, loss, decode), so that a
caller who takes one step alone (drawing the targets, testing the loss on planted outputs) gets exactly what
training and evaluation get.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, clip_boxes_to_image

from anchorfree.ops.boxes import soft_nms


@runtime_checkable
class DetectionModel(Protocol):
    """What every family's model offers: an `nn.Module` with these members (a protocol, not a base class).

    `forward` is their composition (N images, P the family's output positions):

        batch, image_sizes = batch_images(images, model.size_divisor)    # (N, 3, H, W), [(H_i, W_i)] * N
        training: check_targets(targets, N)                              # before the network runs
                  outputs = model.head_outputs(batch)
                  losses = model.loss(outputs, model.training_targets(outputs, targets, image_sizes))
        eval:     detections = model.decode(model.head_outputs(batch), image_sizes)

    The types of `outputs` and of the training targets are the family's own, documented by its
    `head_outputs` and `training_targets`: FCOS gives (class_logits, box_distances, centerness_logits,
    locations) and (point_labels (N, P), point_boxes (N, P, 4)); CenterNet three stride-4 maps and one
    `CenterNetTargets` per image; CornerNet a `CornerNetOutputs` and one `CornerNetTargets` per image.
    A test-time variant of the batch is the family's to document: with `flip_test`, CenterNet's eval `forward`
    decodes the head outputs of the batch followed by its mirror.
    """

    family: str  # the family's key in `anchorfree.models.MODELS`: "fcos", "centernet", "cornernet"
    config: Any  # the family's settings dataclass (`FCOSConfig`, `CenterNetConfig`, `CornerNetConfig`)
    size_divisor: int  # `forward` pads the batch's sides to a multiple of this (32; 128 for an Hourglass)

    @property
    def max_detections(self) -> int:
        """The most detections `decode` returns per image (`config.max_detections`): the evaluator's per-image cap."""
        ...

    def head_outputs(self, batch: torch.Tensor) -> Any:
        """The raw head outputs of a padded (N, 3, H, W) batch (H, W multiples of `size_divisor`), before any loss
        or decode; their shapes follow from the batch's (e.g. (N, C, H/4, W/4) heatmap logits)."""
        ...

    def training_targets(self, outputs: Any, targets: list[dict[str, torch.Tensor]], image_sizes: list[tuple[int, int]]) -> Any:
        """The training targets of the batch, without gradients: the family's target builder applied to each
        image's {"boxes" (M, 4) input pixels, "labels" (M,) in [0, C), "iscrowd" (M,) optional}, on the
        positions of `outputs` (their shapes, never their values) with the settings of `config`. A picture of
        these targets is therefore by construction what `loss` sees.

        Raises:
            ValueError: a label outside [0, C), naming the image index.
        """
        ...

    def loss(self, outputs: Any, training_targets: Any) -> dict[str, torch.Tensor]:
        """The family's losses: float32 scalars, already weighted, so that their sum is the training loss."""
        ...

    def decode(self, outputs: Any, image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """Detections per image: {"boxes" (D, 4) x1, y1, x2, y2 network-input pixels clipped to the image's
        (height, width) in `image_sizes`, "scores" (D,) sorted descending, "labels" (D,) int64}, D <= max_detections."""
        ...

    def forward(
        self, images: torch.Tensor | list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """torchvision's contract: `loss` of the targets in training mode, `decode` in eval mode (see the class doc).

        Args:
            images: normalised (N, 3, H, W) float, or a list of (3, H_i, W_i).
            targets: training mode only, one dict per image (see `training_targets`).
        """
        ...


def batch_images(images: torch.Tensor | list[torch.Tensor], size_divisor: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Pad images into one (N, 3, H, W) batch whose sides are multiples of `size_divisor`.

    Returns:
        The batch and each image's (height, width) before padding. A batch tensor is taken as is: its
        images are assumed to fill it (their sizes are the batch size), padded to `size_divisor` if needed.
    """
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
        _check_floating(images)
        height, width = images.shape[-2:]
        image_sizes = [(int(height), int(width))] * images.shape[0]
        padded_height = int(math.ceil(height / size_divisor) * size_divisor)
        padded_width = int(math.ceil(width / size_divisor) * size_divisor)
        if (padded_height, padded_width) != (height, width):
            images = F.pad(images, (0, padded_width - width, 0, padded_height - height))
        return images, image_sizes
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise TypeError(f"images must be a (N, 3, H, W) tensor or a non-empty list of (3, H, W) tensors, got {type(images).__name__}")
    for index, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"images[{index}] must be a (3, H, W) tensor, got {shape}")
        _check_floating(image)
    image_sizes = [(int(image.shape[1]), int(image.shape[2])) for image in images]
    padded_height = int(math.ceil(max(height for height, _ in image_sizes) / size_divisor) * size_divisor)
    padded_width = int(math.ceil(max(width for _, width in image_sizes) / size_divisor) * size_divisor)
    batch = images[0].new_zeros((len(images), 3, padded_height, padded_width))
    for index, image in enumerate(images):
        batch[index, :, : image.shape[1], : image.shape[2]].copy_(image)
    return batch, image_sizes


def match_memory_format(batch: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """Give the batch the memory format of the module's first conv weights (channels_last is much faster on CPU)."""
    first_conv = next(layer for layer in module.modules() if isinstance(layer, torch.nn.Conv2d))
    if first_conv.weight.is_contiguous(memory_format=torch.channels_last) and not first_conv.weight.is_contiguous():
        return batch.contiguous(memory_format=torch.channels_last)
    return batch


def _check_floating(images: torch.Tensor) -> None:
    if not images.is_floating_point():
        raise TypeError(
            f"images must be floating point and normalised by the data pipeline, got dtype {images.dtype}; "
            "convert with anchorfree.data.transforms (or image.float() / 255 and normalise)"
        )


def check_targets(targets: list[dict[str, torch.Tensor]] | None, num_images: int) -> None:
    """Raise a clear error for missing or malformed training targets (torchvision's checks, with the values)."""
    if targets is None:
        raise ValueError("targets are required in training mode: model(images, targets) with one dict per image")
    if not isinstance(targets, (list, tuple)) or len(targets) != num_images:
        count = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise ValueError(f"expected a list of {num_images} target dicts (one per image), got {count}")
    for index, target in enumerate(targets):
        if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
            raise ValueError(f"targets[{index}] must be a dict with 'boxes' and 'labels'")
        boxes, labels = target["boxes"], target["labels"]
        if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
            shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
            raise ValueError(f"targets[{index}]['boxes'] must be a (N, 4) tensor of x1, y1, x2, y2, got {shape}")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != boxes.shape[0]:
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"targets[{index}]['labels'] must be a ({boxes.shape[0]},) tensor, got {shape}")
        if not torch.isfinite(boxes).all():
            raise ValueError(f"targets[{index}]['boxes'] contains NaN or inf: {boxes[~torch.isfinite(boxes).all(1)].tolist()}")
        degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if degenerate.any():
            raise ValueError(f"targets[{index}]['boxes'] has boxes with x2 <= x1 or y2 <= y1: {boxes[degenerate].tolist()}")


def check_num_classes(labels: torch.Tensor, num_classes: int, image_index: int) -> None:
    """Raise when a target label is outside [0, num_classes): the model's head and the data disagree."""
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.numel():
        raise ValueError(
            f"targets[{image_index}]['labels'] has label {int(outside[0])} outside [0, {num_classes}): "
            f"the model was built for {num_classes} classes"
        )


def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    image_sizes: list[tuple[int, int]],
    score_threshold: float,
    nms_threshold: float = 0.0,
    soft_nms_sigma: float = 0.0,
) -> list[dict[str, torch.Tensor]]:
    """From a static-shape decode to the per-image detections of the contract.

    Keeps scores above `score_threshold`, clips boxes to each image, and with `nms_threshold` > 0 applies
    class-aware NMS (`torchvision.ops.batched_nms`), or with `soft_nms_sigma` > 0 class-aware Gaussian soft-NMS
    (`anchorfree.ops.boxes.soft_nms`, scores decayed, boxes at or below `score_threshold` dropped) instead; the
    order by score is kept.

    Args:
        boxes: (N, D, 4) x1, y1, x2, y2 in input pixels; scores: (N, D) sorted descending; labels: (N, D).
        image_sizes: (height, width) of each image before padding.
    """
    detections = []
    for image_index, (height, width) in enumerate(image_sizes):
        # Non-finite scores or boxes (NaN features, catalogue C6) are dropped, never passed on.
        keep = (scores[image_index] > score_threshold) & torch.isfinite(boxes[image_index]).all(dim=-1)
        image_boxes = clip_boxes_to_image(boxes[image_index, keep], (height, width))
        image_scores, image_labels = scores[image_index, keep], labels[image_index, keep]
        if soft_nms_sigma > 0:
            kept, image_scores = soft_nms(image_boxes, image_scores, image_labels, soft_nms_sigma, score_threshold)
            image_boxes, image_labels = image_boxes[kept], image_labels[kept]
        elif nms_threshold > 0:
            kept = batched_nms(image_boxes, image_scores, image_labels, nms_threshold)  # sorted by score
            image_boxes, image_scores, image_labels = image_boxes[kept], image_scores[kept], image_labels[kept]
        detections.append({"boxes": image_boxes, "scores": image_scores, "labels": image_labels})
    return detections
