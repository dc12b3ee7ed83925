"""FCOS: Fully Convolutional One-Stage Object Detection (Tian et al., ICCV 2019, arXiv:1904.01355).

Every location of every FPN level is a candidate detection: a location inside a ground-truth box regresses the
distances (l, t, r, b) from itself to the box's four sides and classifies the box's class, so there are no
anchors and no anchor-to-box IoU matching. A third branch predicts the *centerness* of the location,
sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)), which at test time multiplies the class score so that
boxes regressed from far off an object's centre rank low and are removed by NMS.

Head outputs, concatenated over the levels P3-P7 (P = sum of H_l * W_l locations, row-major per level):
    class_logits      (N, P, C)  one sigmoid per class (no background class)
    box_distances     (N, P, 4)  l, t, r, b divided by the level's stride (>= 0, ReLU of a scaled conv)
    centerness_logits (N, P)

Coordinate frame: location (i, j) of a level with stride s sits at input pixel ((j + 0.5) s, (i + 0.5) s);
boxes are absolute (x1, y1, x2, y2) pixels of the input image.

Reading order: head -> target assignment -> loss -> decode -> the model -> builder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torchvision.ops import batched_nms, clip_boxes_to_image

from anchorfree.models.backbones import FPN, build_backbone
from anchorfree.models.detector import batch_images, check_num_classes, check_targets, match_memory_format
from anchorfree.ops.boxes import box_area, boxes_to_distances, distances_to_boxes
from anchorfree.ops.losses import binary_cross_entropy_sum, focal_loss_sum, giou_loss
from anchorfree.ops.points import grid_points

# Values of the per-location label target besides class indices 0..C-1.
BACKGROUND = -1
IGNORE = -2  # inside a crowd region: neither a positive nor a negative
ASSIGNMENT_CHUNK = 512  # boxes compared with every location at once in `assign_targets` (memory O(P x chunk))


@dataclass
class FCOSConfig:
    """FCOS hyper-parameters. Defaults are the paper's (with its centre-sampling and GIoU improvements)."""

    fpn_channels: int = 256
    head_convs: int = 4  # conv-GN-ReLU layers in each of the two towers
    norm_groups: int = 32  # GroupNorm groups in the towers (must divide fpn_channels)
    # Level l takes locations whose max(l, t, r, b) lies in [bounds[l-1], bounds[l]] (0 and inf at the ends).
    size_boundaries: list[float] = field(default_factory=lambda: [64.0, 128.0, 256.0, 512.0])
    center_sampling_radius: float = 1.5  # in strides; 0 disables centre sampling
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    prior_probability: float = 0.01
    score_threshold: float = 0.05
    pre_nms_top_k: int = 1000  # per level
    nms_threshold: float = 0.6
    max_detections: int = 100


# ----------------------------------------------------------------------------------------------------- head


class Scale(nn.Module):
    """A learnable scalar per level: the levels share the head's weights but not the scale of their outputs."""

    def __init__(self, initial: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(initial))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class FCOSHead(nn.Module):
    """Classification and regression towers shared by all levels; centerness sits on the regression tower."""

    def __init__(self, channels: int, num_classes: int, num_levels: int, num_convs: int, norm_groups: int, prior_probability: float) -> None:
        super().__init__()
        if channels % norm_groups:
            raise ValueError(f"norm_groups={norm_groups} must divide the head width {channels}")

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(num_convs):
                layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(norm_groups, channels), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.classification_tower = tower()
        self.regression_tower = tower()
        self.class_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.box_distances = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        # Start every class at probability `prior_probability` so the ~all-negative locations do not swamp the
        # first iterations of the focal loss (RetinaNet's prior initialisation).
        nn.init.constant_(self.class_logits.bias, -math.log((1 - prior_probability) / prior_probability))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """features: the FPN levels, each (N, channels, H_l, W_l). Returns the flattened outputs (see module doc)."""
        class_logits, box_distances, centerness_logits = [], [], []
        for feature, scale in zip(features, self.scales):
            classification = self.classification_tower(feature)
            regression = self.regression_tower(feature)
            class_logits.append(self.class_logits(classification).flatten(2).transpose(1, 2))  # (N, C, H, W) -> (N, HW, C)
            # ReLU keeps distances non-negative; the targets are divided by the stride (FCOS's norm_reg_targets).
            distances = torch.relu(scale(self.box_distances(regression)))
            box_distances.append(distances.flatten(2).transpose(1, 2))  # (N, 4, H, W) -> (N, HW, 4)
            centerness_logits.append(self.centerness(regression).flatten(1))  # (N, 1, H, W) -> (N, HW)
        return torch.cat(class_logits, 1), torch.cat(box_distances, 1), torch.cat(centerness_logits, 1)


# ------------------------------------------------------------------------------------------ target assignment


@dataclass
class FCOSLocations:
    """The locations of all levels, concatenated in head order (P = total number of locations)."""

    points: torch.Tensor  # (P, 2) x, y in input pixels
    strides: torch.Tensor  # (P,) stride of each location's level
    size_ranges: torch.Tensor  # (P, 2) [low, high] of max(l, t, r, b) its level is responsible for
    level_shapes: list[tuple[int, int]]  # (H_l, W_l) per level

    @property
    def level_sizes(self) -> list[int]:
        """H_l * W_l per level: how many of the P locations each level holds."""
        return [height * width for height, width in self.level_shapes]


def make_locations(feature_shapes: list[tuple[int, int]], strides: list[int], size_boundaries: list[float], device: torch.device | str = "cpu") -> FCOSLocations:
    """Locations and level assignments for FPN maps of the given (H, W) shapes."""
    if len(size_boundaries) != len(strides) - 1:
        raise ValueError(f"{len(strides)} levels need {len(strides) - 1} size boundaries, got {size_boundaries}")
    bounds = [0.0, *size_boundaries, math.inf]
    points, point_strides, ranges = [], [], []
    for level, ((height, width), stride) in enumerate(zip(feature_shapes, strides)):
        level_points = grid_points(height, width, stride, device)
        points.append(level_points)
        point_strides.append(torch.full((len(level_points),), float(stride), device=device))
        ranges.append(torch.tensor([bounds[level], bounds[level + 1]], device=device).expand(len(level_points), 2))
    return FCOSLocations(torch.cat(points), torch.cat(point_strides), torch.cat(ranges), [tuple(shape) for shape in feature_shapes])


@torch.no_grad()
def assign_targets(
    locations: FCOSLocations,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    iscrowd: torch.Tensor | None = None,
    center_sampling_radius: float = 1.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FCOS target assignment for one image: which box (if any) each location regresses.

    A location is positive for a box when (1) it lies inside the box, (2) with centre sampling, it lies within
    `center_sampling_radius` strides of the box centre (that square clipped to the box), and (3) the largest of
    its distances (l, t, r, b) to the box falls in its level's size range. When several boxes qualify, the one
    with the smallest area wins (ties: the box listed first). Locations inside a crowd box that are not
    positive for a regular box are IGNORE. Vectorised over locations x boxes, in chunks of ASSIGNMENT_CHUNK boxes.

    Args:
        locations: from `make_locations`.
        boxes: (M, 4) ground-truth boxes (x1, y1, x2, y2), input pixels.
        labels: (M,) class indices in [0, C).
        iscrowd: (M,) bool, optional; crowd boxes are never positives.
        center_sampling_radius: in strides; 0 disables centre sampling (any location inside the box).

    Returns:
        point_labels: (P,) int64, the class index, BACKGROUND (-1) or IGNORE (-2).
        point_boxes: (P, 4) the matched box for positives (zeros elsewhere).
    """
    num_points = locations.points.shape[0]
    device = locations.points.device
    point_labels = torch.full((num_points,), BACKGROUND, dtype=torch.int64, device=device)
    point_boxes = torch.zeros((num_points, 4), dtype=torch.float32, device=device)
    if iscrowd is None:
        iscrowd = torch.zeros(len(boxes), dtype=torch.bool, device=device)
    iscrowd = iscrowd.bool()
    regular_boxes, regular_labels = boxes[~iscrowd].float(), labels[~iscrowd]

    if len(regular_boxes):
        # Boxes go in chunks so that memory stays O(P x chunk) however many boxes an image has (A27).
        smallest_area = torch.full((num_points,), math.inf, device=device)
        matched = torch.zeros(num_points, dtype=torch.int64, device=device)
        for start in range(0, len(regular_boxes), ASSIGNMENT_CHUNK):
            chunk_area, chunk_matched = _smallest_candidate(locations, regular_boxes[start : start + ASSIGNMENT_CHUNK], center_sampling_radius)
            # Strictly smaller: equal areas keep the box listed first, as within a chunk.
            better = chunk_area < smallest_area
            smallest_area = torch.where(better, chunk_area, smallest_area)
            matched = torch.where(better, chunk_matched + start, matched)
        positive = torch.isfinite(smallest_area)
        point_labels[positive] = regular_labels[matched[positive]]
        point_boxes[positive] = regular_boxes[matched[positive]]

    crowd_boxes = boxes[iscrowd].float()
    if len(crowd_boxes):
        inside_crowd = (boxes_to_distances(locations.points[:, None], crowd_boxes[None]).min(dim=2).values > 0).any(dim=1)  # (P,)
        point_labels[inside_crowd & (point_labels == BACKGROUND)] = IGNORE
    return point_labels, point_boxes


def _smallest_candidate(locations: FCOSLocations, boxes: torch.Tensor, center_sampling_radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For each location, the area of the smallest box (of `boxes`, (M, 4)) it is a candidate for, and its index.

    Returns (P,) areas (inf where none) and (P,) int64 indices into `boxes`; equal areas give the first box.
    """
    distances = boxes_to_distances(locations.points[:, None], boxes[None])  # (P, M, 4)
    candidate = distances.min(dim=2).values > 0  # (P, M): inside the box
    if center_sampling_radius > 0:
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2  # (M, 2)
        radius = locations.strides[:, None] * center_sampling_radius  # (P, 1)
        # The sampling square around the centre, clipped to the box so thin boxes stay inside themselves.
        sample_x1 = torch.maximum(centers[None, :, 0] - radius, boxes[None, :, 0])  # (P, M)
        sample_y1 = torch.maximum(centers[None, :, 1] - radius, boxes[None, :, 1])
        sample_x2 = torch.minimum(centers[None, :, 0] + radius, boxes[None, :, 2])
        sample_y2 = torch.minimum(centers[None, :, 1] + radius, boxes[None, :, 3])
        x, y = locations.points[:, None, 0], locations.points[:, None, 1]  # (P, 1)
        candidate &= (x > sample_x1) & (x < sample_x2) & (y > sample_y1) & (y < sample_y2)
    max_distance = distances.max(dim=2).values  # (P, M)
    candidate &= (max_distance >= locations.size_ranges[:, None, 0]) & (max_distance <= locations.size_ranges[:, None, 1])
    areas = box_area(boxes)[None, :].expand(candidate.shape[0], -1)  # (P, M)
    # min returns the first minimum, so equal areas resolve to the box listed first (deterministic).
    return torch.where(candidate, areas, torch.full_like(areas, math.inf)).min(dim=1)


def centerness_targets(distances: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) for (K, 4) positive distances -> (K,) in (0, 1]."""
    left_right = distances[:, [0, 2]]
    top_bottom = distances[:, [1, 3]]
    ratio = (left_right.min(dim=1).values / left_right.max(dim=1).values) * (
        top_bottom.min(dim=1).values / top_bottom.max(dim=1).values
    )
    return torch.sqrt(ratio.clamp(min=0))


# ------------------------------------------------------------------------------------------------------ loss


def fcos_loss(
    class_logits: torch.Tensor,
    box_distances: torch.Tensor,
    centerness_logits: torch.Tensor,
    locations: FCOSLocations,
    point_labels: torch.Tensor,
    point_boxes: torch.Tensor,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> dict[str, torch.Tensor]:
    """The three FCOS losses for a batch, in float32.

    Args:
        class_logits: (N, P, C); box_distances: (N, P, 4) stride-normalised; centerness_logits: (N, P).
        point_labels: (N, P) from `assign_targets`; point_boxes: (N, P, 4).

    Returns:
        {"classification": sigmoid focal loss over all non-ignored locations / number of positives,
         "box": GIoU loss of positives weighted by their centerness target / sum of those weights,
         "centerness": BCE of positives / number of positives}.
        With no positives, the box and centerness losses are exactly 0 (still connected to the graph, so
        every parameter receives a gradient under DDP) and the classification loss is the negatives' sum.
    """
    num_classes = class_logits.shape[-1]
    positive = point_labels >= 0  # (N, P)
    valid = point_labels != IGNORE
    num_positives = _mean_over_processes(positive.sum().float())
    normaliser = num_positives.clamp(min=1.0)

    one_hot = torch.zeros_like(class_logits, dtype=torch.float32)
    one_hot[positive] = nn.functional.one_hot(point_labels[positive], num_classes).float()
    classification = focal_loss_sum(class_logits[valid], one_hot[valid], focal_alpha, focal_gamma) / normaliser

    strides = locations.strides[None, :].expand_as(point_labels)  # (N, P)
    points = locations.points[None].expand(point_labels.shape[0], -1, -1)  # (N, P, 2)
    positive_points = points[positive]  # (K, 2)
    predicted_boxes = distances_to_boxes(positive_points, box_distances[positive].float() * strides[positive][:, None])
    target_boxes = point_boxes[positive]
    target_centerness = centerness_targets(boxes_to_distances(positive_points, target_boxes))
    centerness_weight = _mean_over_processes(target_centerness.sum()).clamp(min=1e-6)
    box = (giou_loss(predicted_boxes, target_boxes) * target_centerness).sum() / centerness_weight
    centerness = binary_cross_entropy_sum(centerness_logits[positive], target_centerness) / normaliser
    if not positive.any():
        # Empty sums are 0 but detached from the regression and centerness outputs; tie them in with weight 0.
        box = box + 0.0 * box_distances.sum()
        centerness = centerness + 0.0 * centerness_logits.sum()
    return {"classification": classification, "box": box, "centerness": centerness}


def _mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """Average a normaliser over DDP processes so every replica divides by the same count (FCOS does this)."""
    if dist.is_available() and dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


# ---------------------------------------------------------------------------------------------------- decode


def fcos_decode(
    class_logits: torch.Tensor,
    box_distances: torch.Tensor,
    centerness_logits: torch.Tensor,
    locations: FCOSLocations,
    image_sizes: list[tuple[int, int]],
    score_threshold: float = 0.05,
    pre_nms_top_k: int = 1000,
    nms_threshold: float = 0.6,
    max_detections: int = 100,
) -> list[dict[str, torch.Tensor]]:
    """Head outputs -> detections per image, in input-image pixels.

    Per level: keep (location, class) pairs whose class probability exceeds `score_threshold`, then the
    `pre_nms_top_k` best; score = sqrt(class probability x centerness). Then over all levels: clip boxes to the
    image, class-aware NMS (`torchvision.ops.batched_nms`), and the `max_detections` best by score.
    Non-finite outputs never crash: their locations are dropped.

    Args:
        class_logits: (N, P, C); box_distances: (N, P, 4) stride-normalised; centerness_logits: (N, P).
        image_sizes: (height, width) of each input image before padding.

    Returns:
        One dict per image: "boxes" (D, 4) float32, "scores" (D,), "labels" (D,) int64, sorted by score.
    """
    num_classes = class_logits.shape[-1]
    class_probabilities = class_logits.float().sigmoid()
    centerness = centerness_logits.float().sigmoid()
    boxes_all = distances_to_boxes(locations.points[None], box_distances.float() * locations.strides[None, :, None])  # (N, P, 4)
    finite = torch.isfinite(boxes_all).all(dim=2) & torch.isfinite(centerness)  # (N, P)
    detections = []
    for image_index, (height, width) in enumerate(image_sizes):
        level_boxes, level_scores, level_labels = [], [], []
        start = 0
        for level_size in locations.level_sizes:
            level = slice(start, start + level_size)
            start += level_size
            probabilities = class_probabilities[image_index, level]  # (H_l W_l, C)
            probabilities = torch.where(finite[image_index, level, None], probabilities, torch.zeros_like(probabilities))
            flat = probabilities.flatten()
            candidate = torch.nonzero(flat > score_threshold).squeeze(1)
            top = flat[candidate].topk(min(pre_nms_top_k, len(candidate))).indices
            candidate = candidate[top]
            point_index, label = candidate // num_classes, candidate % num_classes
            scores = torch.sqrt(flat[candidate] * centerness[image_index, level][point_index])
            level_boxes.append(boxes_all[image_index, level][point_index])
            level_scores.append(scores)
            level_labels.append(label)
        boxes = clip_boxes_to_image(torch.cat(level_boxes), (height, width))
        scores, labels = torch.cat(level_scores), torch.cat(level_labels)
        keep = batched_nms(boxes, scores, labels, nms_threshold)[:max_detections]
        detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return detections


# ----------------------------------------------------------------------------------------------------- model

# What `FCOS.head_outputs` returns: class_logits (N, P, C), box_distances (N, P, 4), centerness_logits (N, P),
# and the locations of the P points.
FCOSOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, FCOSLocations]


class FCOS(nn.Module):
    """FCOS detector: backbone -> FPN P3-P7 -> shared head; losses in training mode, detections in eval mode.

    A `DetectionModel` (anchorfree.models.detector): `forward` is `head_outputs`, then `training_targets` and
    `loss`, or `decode`.
    """

    family = "fcos"  # the key in anchorfree.models.MODELS

    def __init__(self, backbone: nn.Module, num_classes: int, config: FCOSConfig | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.config = config or FCOSConfig()
        self.num_classes = num_classes
        self.backbone = backbone
        self.neck = FPN(backbone.out_channels[-3:], self.config.fpn_channels)  # C3-C5
        self.strides = self.neck.strides
        self.size_divisor = 32
        self.head = FCOSHead(
            self.config.fpn_channels,
            num_classes,
            len(self.strides),
            self.config.head_convs,
            self.config.norm_groups,
            self.config.prior_probability,
        )

    @property
    def max_detections(self) -> int:
        """The most detections `decode` returns per image: `config.max_detections`."""
        return self.config.max_detections

    def head_outputs(self, batch: torch.Tensor) -> FCOSOutputs:
        """The raw head outputs of a padded batch, before any loss or decode.

        Args:
            batch: (N, 3, H, W) normalised images, H and W multiples of `size_divisor`.

        Returns:
            class_logits (N, P, C), box_distances (N, P, 4) stride-normalised, centerness_logits (N, P), and the
            `FCOSLocations` of the P points, made from the shapes of this batch's P3-P7 maps.
        """
        features = self.neck(self.backbone(match_memory_format(batch, self.backbone))[-3:])  # C3-C5 -> P3-P7
        class_logits, box_distances, centerness_logits = self.head(features)
        locations = make_locations(
            [tuple(feature.shape[-2:]) for feature in features], self.strides, self.config.size_boundaries, batch.device
        )
        return class_logits, box_distances, centerness_logits, locations

    @torch.no_grad()
    def training_targets(
        self, outputs: FCOSOutputs, targets: list[dict[str, torch.Tensor]], image_sizes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`assign_targets` of every image on the locations of `outputs`, with `config.center_sampling_radius`.

        Args:
            outputs: from `head_outputs` (only its locations are read).
            targets: one {"boxes" (M, 4) input pixels, "labels" (M,), "iscrowd" (M,) optional} per image.
            image_sizes: unused: boxes lie in their image, so the locations in the padding are background.

        Returns:
            point_labels (N, P) int64 (class index, BACKGROUND or IGNORE) and point_boxes (N, P, 4).
        """
        locations = outputs[3]
        assigned = []
        for image_index, target in enumerate(targets):
            check_num_classes(target["labels"], self.num_classes, image_index)
            assigned.append(
                assign_targets(locations, target["boxes"], target["labels"], target.get("iscrowd"), self.config.center_sampling_radius)
            )
        point_labels = torch.stack([labels for labels, _ in assigned])  # (N, P)
        point_boxes = torch.stack([boxes for _, boxes in assigned])  # (N, P, 4)
        return point_labels, point_boxes

    def loss(self, outputs: FCOSOutputs, training_targets: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`fcos_loss` of `head_outputs` against `training_targets`: {"classification", "box", "centerness"}."""
        class_logits, box_distances, centerness_logits, locations = outputs
        point_labels, point_boxes = training_targets
        return fcos_loss(
            class_logits, box_distances, centerness_logits, locations, point_labels, point_boxes,
            self.config.focal_alpha, self.config.focal_gamma,
        )

    def decode(self, outputs: FCOSOutputs, image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """`fcos_decode` of `head_outputs` with the config's thresholds: per image {"boxes", "scores", "labels"}."""
        class_logits, box_distances, centerness_logits, locations = outputs
        return fcos_decode(
            class_logits, box_distances, centerness_logits, locations, image_sizes,
            self.config.score_threshold, self.config.pre_nms_top_k, self.config.nms_threshold, self.config.max_detections,
        )

    def forward(
        self, images: torch.Tensor | list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """images: normalised (N, 3, H, W) or list of (3, H_i, W_i); targets: [{"boxes", "labels", "iscrowd"?}]."""
        batch, image_sizes = batch_images(images, self.size_divisor)
        if self.training:
            check_targets(targets, len(image_sizes))  # before the network runs: a bad target fails fast
        outputs = self.head_outputs(batch)
        if self.training:
            return self.loss(outputs, self.training_targets(outputs, targets, image_sizes))
        return self.decode(outputs, image_sizes)


def build_fcos(num_classes: int, backbone: str = "resnet50", pretrained_backbone: bool = False, backbone_width: float = 1.0, config: FCOSConfig | None = None) -> FCOS:
    """FCOS with a torchvision backbone (see `anchorfree.models.backbones.BACKBONE_NAMES`)."""
    return FCOS(build_backbone(backbone, pretrained_backbone, backbone_width), num_classes, config)
