"""CornerNet: Detecting Objects as Paired Keypoints (Law & Deng, ECCV 2018, arXiv:1808.01244).

An object is a pair of corners: its top-left and its bottom-right. The network predicts, per class, a heatmap
of top-left corners and one of bottom-right corners; for each corner an offset that recovers the position the
output stride rounded away; and a 1-d embedding, trained so that the two corners of one object have close
embeddings and corners of different objects distant ones. A corner usually lies outside the object, so the
features that locate it are pooled towards it: *corner pooling* gives each top-left position the maximum of
the features below it plus the maximum of the features to its right (and the mirror for bottom-right).

Head outputs for each corner type (tl, br), on one map of stride R = 4 (H = input height / 4, W = width / 4):
    heatmap_logits (N, C, H, W)  one sigmoid per class
    embeddings     (N, 1, H, W)
    offsets        (N, 2, H, W)  (dx, dy) from the cell's corner to the true corner, in cells

Coordinate frame: a corner at input pixel (x, y) sits in cell (floor(x / R), floor(y / R)) with offset
(x / R - floor(x / R), ...). Decoded boxes are absolute (x1, y1, x2, y2) pixels of the input image.

Reading order: corner pooling -> head -> targets -> loss -> decode -> the model -> builder.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from anchorfree.models.backbones import HourglassNetwork, PyramidP2Neck, UpsamplingNeck, build_backbone, hourglass52, hourglass104
from anchorfree.models.detector import batch_images, check_num_classes, check_targets, match_memory_format, select_detections
from anchorfree.ops.heatmaps import RADIUS_FORMULAS, draw_gaussians, gaussian_radius, heatmap_peaks, top_k_peaks
from anchorfree.ops.losses import penalty_reduced_focal_loss

NECKS = ("deconv", "fpn")
HOURGLASS_BACKBONES = {"hourglass52": hourglass52, "hourglass104": hourglass104}


@dataclass
class CornerNetConfig:
    """CornerNet hyper-parameters. Defaults are the paper's unless noted."""

    neck: str = "fpn"  # the stride-4 neck on a torchvision backbone: deconv (CenterNet's) or fpn (P2); unused by Hourglass
    neck_channels: list[int] = field(default_factory=lambda: [256, 128, 64])  # deconv stage widths
    fpn_channels: int = 128
    pool_channels: int = 128  # the two pooled branches of each corner pooling module
    head_channels: int = 256  # the 3x3 conv of each head branch
    exportable_pooling: bool = False  # corner pools by log-step shifted maxima (ONNX has no cumulative max)
    radius_formula: str = "corrected"
    min_overlap: float = 0.3
    focal_alpha: float = 2.0
    focal_beta: float = 4.0
    pull_weight: float = 0.1
    push_weight: float = 0.1
    push_margin: float = 1.0
    offset_weight: float = 1.0
    max_objects: int = 256  # per image; more are dropped with a warning
    peak_kernel: int = 3
    corners_top_k: int = 100  # K corners of each type before pairing (K x K pairs)
    embedding_threshold: float = 0.5  # a pair's corners must have embeddings closer than this
    max_detections: int = 100
    score_threshold: float = 0.01
    nms_threshold: float = 0.0  # 0: none; > 0: class-aware NMS on the paired boxes
    soft_nms_sigma: float = 0.0  # > 0: class-aware Gaussian soft-NMS with this sigma instead (the paper: 0.5)


# ------------------------------------------------------------------------------------------- corner pooling
#
# Each pool takes, at every position, the maximum over all positions on one side of it, itself included:
#   top pool:    out[i] = max(x[i:])  along H  (what lies below: a top-left corner looks down)
#   left pool:   out[j] = max(x[j:])  along W  (what lies to the right)
#   bottom pool: out[i] = max(x[:i+1]) along H
#   right pool:  out[j] = max(x[:j+1]) along W


def _cumulative_max(x: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    if reverse:
        return torch.cummax(x.flip(dim), dim).values.flip(dim)
    return torch.cummax(x, dim).values


def _doubling_max(x: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    """The same cumulative maximum by log-step doubling: after the step with shift s, each position holds the max
    over the 2s positions ending (or starting) at it. ceil(log2(length)) steps of max(x, x shifted); exportable."""
    length = x.shape[dim]
    lowest = torch.finfo(x.dtype).min if x.is_floating_point() else torch.iinfo(x.dtype).min  # the max's identity
    result = x
    shift = 1
    while shift < length:
        fill_shape = list(x.shape)
        fill_shape[dim] = shift
        fill = torch.full(fill_shape, lowest, dtype=x.dtype, device=x.device)
        if reverse:  # position i takes position i + shift
            shifted = torch.cat([result.narrow(dim, shift, length - shift), fill], dim)
        else:  # position i takes position i - shift
            shifted = torch.cat([fill, result.narrow(dim, 0, length - shift)], dim)
        result = torch.maximum(result, shifted)
        shift *= 2
    return result


def top_pool(x: torch.Tensor, exportable: bool = False) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H, W): out[..., i, j] = max over rows k >= i of x[..., k, j]."""
    return (_doubling_max if exportable else _cumulative_max)(x, 2, True)


def left_pool(x: torch.Tensor, exportable: bool = False) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H, W): out[..., i, j] = max over columns k >= j of x[..., i, k]."""
    return (_doubling_max if exportable else _cumulative_max)(x, 3, True)


def bottom_pool(x: torch.Tensor, exportable: bool = False) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H, W): out[..., i, j] = max over rows k <= i of x[..., k, j]."""
    return (_doubling_max if exportable else _cumulative_max)(x, 2, False)


def right_pool(x: torch.Tensor, exportable: bool = False) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H, W): out[..., i, j] = max over columns k <= j of x[..., i, k]."""
    return (_doubling_max if exportable else _cumulative_max)(x, 3, False)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False), nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class CornerPooling(nn.Module):
    """The paper's corner pooling module (its Fig. 7) for one corner type.

    Two 3x3 conv-BN-ReLU branches, each pooled in one direction, summed; a 3x3 conv-BN; plus a 1x1 conv-BN skip
    of the input; ReLU; then a 3x3 conv-BN-ReLU. (N, channels, H, W) -> (N, channels, H, W).
    """

    def __init__(self, channels: int, pool_channels: int, corner: str, exportable: bool = False) -> None:
        super().__init__()
        if corner not in ("top_left", "bottom_right"):
            raise ValueError(f"corner must be 'top_left' or 'bottom_right', got {corner!r}")
        self.pools = (top_pool, left_pool) if corner == "top_left" else (bottom_pool, right_pool)
        self.exportable = exportable
        self.first_branch = _conv_bn(channels, pool_channels, 3, relu=True)
        self.second_branch = _conv_bn(channels, pool_channels, 3, relu=True)
        self.pooled_conv = _conv_bn(pool_channels, channels, 3, relu=False)
        self.skip = _conv_bn(channels, channels, 1, relu=False)
        self.out_conv = _conv_bn(channels, channels, 3, relu=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        first_pool, second_pool = self.pools
        pooled = first_pool(self.first_branch(features), self.exportable) + second_pool(self.second_branch(features), self.exportable)
        return self.out_conv(F.relu(self.pooled_conv(pooled) + self.skip(features)))


# ------------------------------------------------------------------------------------------------------ head


class CornerHead(nn.Module):
    """Corner pooling and three branches (3x3 conv + ReLU + 1x1 conv) for one corner type."""

    def __init__(self, in_channels: int, num_classes: int, pool_channels: int, head_channels: int, corner: str, exportable: bool = False) -> None:
        super().__init__()
        self.pooling = CornerPooling(in_channels, pool_channels, corner, exportable)

        def branch(out_channels: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(in_channels, head_channels, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(head_channels, out_channels, 1))

        self.heatmap = branch(num_classes)
        self.embedding = branch(1)
        self.offset = branch(2)
        nn.init.constant_(self.heatmap[-1].bias, -2.19)  # sigmoid(-2.19) = 0.1, as the paper initialises it

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, in_channels, H, W) -> heatmap_logits (N, C, H, W), embeddings (N, 1, H, W), offsets (N, 2, H, W)."""
        pooled = self.pooling(features)
        return self.heatmap(pooled), self.embedding(pooled), self.offset(pooled)


# --------------------------------------------------------------------------------------------------- targets


@dataclass
class CornerNetTargets:
    """The training targets of one image (M = objects kept; object k's corners are entry k of each list)."""

    top_left_heatmap: torch.Tensor  # (C, H, W)
    bottom_right_heatmap: torch.Tensor  # (C, H, W)
    top_left_indices: torch.Tensor  # (M,) int64 flat index y * W + x of the top-left corner's cell
    bottom_right_indices: torch.Tensor  # (M,)
    top_left_offsets: torch.Tensor  # (M, 2) corner minus its cell, (dx, dy) in cells
    bottom_right_offsets: torch.Tensor  # (M, 2)


@torch.no_grad()
def cornernet_targets(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    output_size: tuple[int, int],
    stride: int = 4,
    radius_formula: str = "corrected",
    min_overlap: float = 0.3,
    max_objects: int = 256,
    iscrowd: torch.Tensor | None = None,
) -> CornerNetTargets:
    """CornerNet targets for one image.

    Each box (scaled to cells by 1 / stride) puts an unnormalised Gaussian on its class channel at its floored
    top-left corner and one at its floored bottom-right corner, radius max(0, floor(gaussian_radius(ceil(h),
    ceil(w)))); overlapping Gaussians keep the max. A corner on the map's far border (x2 == W cells) is kept in
    the last cell with an offset of 1. Boxes lying wholly off the map and crowd boxes get no target; beyond
    `max_objects` the rest are dropped with a warning. The two index lists pair the corners of each object.

    Args:
        boxes: (M, 4) boxes (x1, y1, x2, y2) in input pixels.
        labels: (M,) class indices in [0, num_classes).
        output_size: (H, W) of the output map.

    Returns:
        A `CornerNetTargets` on the boxes' device.
    """
    height, width = output_size
    device = boxes.device
    keep = torch.ones(len(boxes), dtype=torch.bool, device=device) if iscrowd is None else ~iscrowd.bool()
    boxes, labels = boxes[keep].float() / stride, labels[keep].long()
    on_map = (boxes[:, 0] < width) & (boxes[:, 1] < height) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    boxes, labels = boxes[on_map], labels[on_map]
    if len(boxes) > max_objects:
        warnings.warn(
            f"an image has {len(boxes)} objects; keeping the first {max_objects} (raise model.cornernet.max_objects to keep them all)",
            stacklevel=2,
        )
        boxes, labels = boxes[:max_objects], labels[:max_objects]
    # Corners clipped to the map, so a box that crosses its border still has both corners on it.
    limits = torch.tensor([width, height], dtype=torch.float32, device=device)
    top_left = torch.minimum(boxes[:, :2].clamp(min=0), limits)  # (M, 2) x, y in cells
    bottom_right = torch.minimum(boxes[:, 2:].clamp(min=0), limits)
    top_left_cells = torch.minimum(top_left.floor().long(), (limits - 1).long())
    bottom_right_cells = torch.minimum(bottom_right.floor().long(), (limits - 1).long())

    sizes = bottom_right - top_left  # (M, 2) width, height
    radii = gaussian_radius(sizes[:, 1].ceil(), sizes[:, 0].ceil(), min_overlap, radius_formula).floor().clamp(min=0).long()
    top_left_heatmap = draw_gaussians(torch.zeros((num_classes, height, width), device=device), top_left_cells, radii, labels)
    bottom_right_heatmap = draw_gaussians(torch.zeros((num_classes, height, width), device=device), bottom_right_cells, radii, labels)
    return CornerNetTargets(
        top_left_heatmap,
        bottom_right_heatmap,
        top_left_cells[:, 1] * width + top_left_cells[:, 0],
        bottom_right_cells[:, 1] * width + bottom_right_cells[:, 0],
        top_left - top_left_cells.float(),
        bottom_right - bottom_right_cells.float(),
    )


# ------------------------------------------------------------------------------------------------------ loss


def pull_push_losses(top_left_embeddings: torch.Tensor, bottom_right_embeddings: torch.Tensor, margin: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The associative-embedding losses of one image's M objects.

    With e_k the mean of object k's two corner embeddings:
        pull = 1/M sum_k [(tl_k - e_k)^2 + (br_k - e_k)^2]                 (brings a pair together)
        push = 1/(M(M-1)) sum_k sum_{j != k} max(0, margin - |e_k - e_j|)  (separates objects)
    With no object both are 0; with one object push is 0 (there is no pair to separate, and no 0/0).

    Args:
        top_left_embeddings, bottom_right_embeddings: (M,) embeddings read at each object's corners.

    Returns:
        pull, push: float32 scalars.
    """
    top_left, bottom_right = top_left_embeddings.float(), bottom_right_embeddings.float()
    count = top_left.shape[0]
    means = (top_left + bottom_right) / 2  # (M,)
    pull = ((top_left - means) ** 2 + (bottom_right - means) ** 2).sum() / max(count, 1)
    if count < 2:
        return pull, means.sum() * 0.0
    gaps = F.relu(margin - (means[:, None] - means[None, :]).abs())  # (M, M)
    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=means.device)
    push = gaps[off_diagonal].sum() / (count * (count - 1))
    return pull, push


def cornernet_loss(
    top_left_outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    bottom_right_outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    targets: list[CornerNetTargets],
    config: CornerNetConfig,
) -> dict[str, torch.Tensor]:
    """The CornerNet losses for a batch, in float32, already weighted (their sum is the training loss).

    Args:
        top_left_outputs, bottom_right_outputs: (heatmap_logits (N, C, H, W), embeddings (N, 1, H, W),
            offsets (N, 2, H, W)) of each corner type.
        targets: one `CornerNetTargets` per image.

    Returns:
        {"heatmap": penalty-reduced focal loss of the top-left plus the bottom-right heatmaps (probabilities
         clamped to [1e-4, 1 - 1e-4]), each normalised by its number of corners,
         "pull": pull_weight x the pull loss averaged over the images (the released code sums over the batch,
         which makes the weights depend on the batch size), "push": likewise,
         "offset": offset_weight x smooth-L1 of both corners' offsets summed over coordinates / number of objects}.
        With no object, pull, push and offset are exactly 0 (still connected to the graph).
    """
    heatmap = torch.zeros((), device=top_left_outputs[0].device)
    offset = torch.zeros((), device=top_left_outputs[0].device)
    pulls, pushes = [], []
    corner_embeddings = []
    for corner, (heatmap_logits, embeddings, offsets) in (("top_left", top_left_outputs), ("bottom_right", bottom_right_outputs)):
        probabilities = heatmap_logits.float().sigmoid().clamp(1e-4, 1 - 1e-4)
        target_heatmaps = torch.stack([getattr(target, f"{corner}_heatmap") for target in targets])  # (N, C, H, W)
        heatmap = heatmap + penalty_reduced_focal_loss(probabilities, target_heatmaps, config.focal_alpha, config.focal_beta)
        indices = [getattr(target, f"{corner}_indices") for target in targets]
        image_index = torch.cat([torch.full_like(index, image) for image, index in enumerate(indices)])  # (M,)
        cell_index = torch.cat(indices)
        predicted_offsets = offsets.float().flatten(2)[image_index, :, cell_index]  # (N, 2, H*W) -> (M, 2)
        target_offsets = torch.cat([getattr(target, f"{corner}_offsets") for target in targets])
        offset = offset + F.smooth_l1_loss(predicted_offsets, target_offsets, reduction="sum")
        flat_embeddings = embeddings.float().flatten(1)  # (N, 1, H, W) -> (N, H*W)
        corner_embeddings.append([flat_embeddings[image, index] for image, index in enumerate(indices)])
    for top_left, bottom_right in zip(*corner_embeddings):
        pull, push = pull_push_losses(top_left, bottom_right, config.push_margin)
        pulls.append(pull)
        pushes.append(push)
    num_objects = sum(len(target.top_left_indices) for target in targets)
    offset = offset / max(num_objects, 1)
    pull = torch.stack(pulls).mean()
    push = torch.stack(pushes).mean()
    # With no object these are exact zeros, still in the graph through the (empty) reads of the outputs, so every
    # parameter receives a (zero) gradient under DDP.
    return {
        "heatmap": heatmap,
        "pull": config.pull_weight * pull,
        "push": config.push_weight * push,
        "offset": config.offset_weight * offset,
    }


# ---------------------------------------------------------------------------------------------------- decode


def cornernet_decode(
    top_left_outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    bottom_right_outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    stride: int = 4,
    corners_top_k: int = 100,
    embedding_threshold: float = 0.5,
    max_detections: int = 100,
    peak_kernel: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corner heatmaps, embeddings and offsets -> the best corner pairs per image, in input pixels.

    Take the top K peaks (3x3 max-pool) of each heatmap over all classes; form all K x K (top-left,
    bottom-right) pairs; a pair is valid when both corners have the same class, the bottom-right lies at or
    below and at or right of the top-left (after offsets), and their embeddings differ by at most
    `embedding_threshold`. Its score is the mean of the two corner scores (-1 when invalid). The
    `max_detections` best pairs are returned. Tensor ops only, static shapes.

    Args:
        top_left_outputs, bottom_right_outputs: (heatmap_logits (N, C, H, W), embeddings (N, 1, H, W),
            offsets (N, 2, H, W)).

    Returns:
        boxes (N, D, 4) float32 (x1, y1, x2, y2), scores (N, D) (-1 for invalid pairs), labels (N, D) int64,
        sorted by score; D = min(max_detections, K * K).
    """
    corners = []
    for heatmap_logits, embeddings, offsets in (top_left_outputs, bottom_right_outputs):
        batch, _, _, width = heatmap_logits.shape
        peaks = heatmap_peaks(heatmap_logits.float().sigmoid(), peak_kernel)
        scores, classes, ys, xs = top_k_peaks(peaks, corners_top_k)  # each (N, K)
        cell_index = ys * width + xs  # (N, K)
        corner_offsets = offsets.float().flatten(2).gather(2, cell_index[:, None, :].expand(batch, 2, -1))  # (N, 2, K)
        corner_embeddings = embeddings.float().flatten(1).gather(1, cell_index)  # (N, K)
        corners.append((scores, classes, xs.float() + corner_offsets[:, 0], ys.float() + corner_offsets[:, 1], corner_embeddings))
    (tl_scores, tl_classes, tl_x, tl_y, tl_embeddings), (br_scores, br_classes, br_x, br_y, br_embeddings) = corners
    # Pairs: top-left k along dim 1, bottom-right j along dim 2 -> (N, K, K).
    scores = (tl_scores[:, :, None] + br_scores[:, None, :]) / 2
    valid = (tl_classes[:, :, None] == br_classes[:, None, :])
    valid &= (br_x[:, None, :] >= tl_x[:, :, None]) & (br_y[:, None, :] >= tl_y[:, :, None])
    valid &= (tl_embeddings[:, :, None] - br_embeddings[:, None, :]).abs() <= embedding_threshold
    scores = torch.where(valid, scores, torch.full_like(scores, -1.0))
    count = tl_scores.shape[1]
    boxes = torch.stack(
        [tl_x[:, :, None].expand(-1, -1, count), tl_y[:, :, None].expand(-1, -1, count), br_x[:, None, :].expand(-1, count, -1), br_y[:, None, :].expand(-1, count, -1)],
        dim=3,
    )  # (N, K, K, 4)
    best_scores, best = scores.flatten(1).topk(min(max_detections, count * count), dim=1)  # (N, D)
    best_boxes = boxes.flatten(1, 2).gather(1, best[:, :, None].expand(-1, -1, 4))  # (N, K*K, 4) -> (N, D, 4)
    best_labels = tl_classes.gather(1, torch.div(best, count, rounding_mode="floor"))  # the top-left's class
    return best_boxes * stride, best_scores, best_labels


# ----------------------------------------------------------------------------------------------------- model

# One corner type's head outputs: heatmap_logits (N, C, H, W), embeddings (N, 1, H, W), offsets (N, 2, H, W).
CornerOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class CornerNetOutputs:
    """What `CornerNet.head_outputs` returns for a batch.

    `top_left, bottom_right = outputs` unpacks the final stack's pair, the one `cornernet_decode` reads.
    """

    top_left: CornerOutputs
    bottom_right: CornerOutputs
    # In training mode, the (top_left, bottom_right) of each earlier Hourglass stack, first stack first (intermediate
    # supervision: the same losses, added to the final pair's); empty in eval mode, where those heads do not run.
    intermediate: list[tuple[CornerOutputs, CornerOutputs]] = field(default_factory=list)

    def __iter__(self) -> Iterator[CornerOutputs]:
        """The final stack's top-left outputs, then its bottom-right ones."""
        return iter((self.top_left, self.bottom_right))


class CornerNet(nn.Module):
    """CornerNet: backbone -> stride-4 features -> top-left and bottom-right corner heads.

    With an Hourglass backbone (the paper's), every stack's output is a stride-4 map: the last one feeds
    `top_left_head` / `bottom_right_head`, and each earlier one has its own pair in `intermediate_heads`, trained
    with the same losses (intermediate supervision) and unused at test time. A torchvision backbone goes through
    a stride-4 neck instead and has no intermediate heads.

    A `DetectionModel` (anchorfree.models.detector): `forward` is `head_outputs`, then `training_targets` and
    `loss`, or `decode`.
    """

    family = "cornernet"  # the key in anchorfree.models.MODELS

    def __init__(self, backbone: nn.Module, num_classes: int, config: CornerNetConfig | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.config = config or CornerNetConfig()
        config = self.config
        if config.neck not in NECKS:
            raise ValueError(f"unknown CornerNet neck {config.neck!r}; choose one of {', '.join(NECKS)}")
        if config.radius_formula not in RADIUS_FORMULAS:
            raise ValueError(f"unknown radius formula {config.radius_formula!r}; choose one of {', '.join(RADIUS_FORMULAS)}")
        self.num_classes = num_classes
        self.backbone = backbone
        if isinstance(backbone, HourglassNetwork):
            self.neck: nn.Module | None = None
            self.stride, self.size_divisor, channels = backbone.stride, backbone.size_multiple, backbone.out_channels
            num_intermediate = backbone.num_stacks - 1
        else:
            if config.neck == "deconv":
                self.neck = UpsamplingNeck(backbone.out_channels[-1], config.neck_channels)
            else:
                self.neck = PyramidP2Neck(backbone.out_channels, config.fpn_channels)
            self.stride, self.size_divisor, channels = self.neck.stride, 32, self.neck.out_channels
            num_intermediate = 0

        def corner_heads() -> tuple[CornerHead, CornerHead]:
            return (
                CornerHead(channels, num_classes, config.pool_channels, config.head_channels, "top_left", config.exportable_pooling),
                CornerHead(channels, num_classes, config.pool_channels, config.head_channels, "bottom_right", config.exportable_pooling),
            )

        self.top_left_head, self.bottom_right_head = corner_heads()
        self.intermediate_heads = nn.ModuleList(nn.ModuleList(corner_heads()) for _ in range(num_intermediate))

    @property
    def max_detections(self) -> int:
        """The most detections `decode` returns per image: `config.max_detections` (the best corner pairs)."""
        return self.config.max_detections

    def feature_maps(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) padded batch -> the stride-4 maps, (N, channels, H/4, W/4) each; the final one last."""
        features = self.backbone(match_memory_format(batch, self.backbone))
        return features if self.neck is None else [self.neck(features)]

    def head_outputs(self, batch: torch.Tensor) -> CornerNetOutputs:
        """(N, 3, H, W) padded batch -> the final map's (heatmap_logits, embeddings, offsets) of each corner type,
        (N, C, H/4, W/4), (N, 1, H/4, W/4) and (N, 2, H/4, W/4); in training mode also the earlier stacks' pairs."""
        maps = self.feature_maps(batch)
        outputs = CornerNetOutputs(self.top_left_head(maps[-1]), self.bottom_right_head(maps[-1]))
        if self.training:
            # Intermediate supervision only: at test time these heads are not run (the paper discards them).
            outputs.intermediate = [
                (top_left_head(features), bottom_right_head(features))
                for features, (top_left_head, bottom_right_head) in zip(maps[:-1], self.intermediate_heads)
            ]
        return outputs

    @torch.no_grad()
    def training_targets(
        self, outputs: CornerNetOutputs, targets: list[dict[str, torch.Tensor]], image_sizes: list[tuple[int, int]]
    ) -> list[CornerNetTargets]:
        """`cornernet_targets` of every image on the (H/4, W/4) maps of `outputs`, with the config's radius settings.

        Args:
            outputs: from `head_outputs` (only the top-left heatmap's shape is read; every stack's maps share it).
            targets: one {"boxes" (M, 4) input pixels, "labels" (M,), "iscrowd" (M,) optional} per image.
            image_sizes: unused: the targets cover the whole padded map.

        Returns:
            One `CornerNetTargets` per image, shared by the final and the intermediate heads.
        """
        config = self.config
        output_size = tuple(outputs.top_left[0].shape[-2:])
        image_targets = []
        for image_index, target in enumerate(targets):
            check_num_classes(target["labels"], self.num_classes, image_index)
            image_targets.append(
                cornernet_targets(
                    target["boxes"], target["labels"], self.num_classes, output_size, self.stride,
                    config.radius_formula, config.min_overlap, config.max_objects, target.get("iscrowd"),
                )
            )
        return image_targets

    def loss(self, outputs: CornerNetOutputs, training_targets: list[CornerNetTargets]) -> dict[str, torch.Tensor]:
        """`cornernet_loss` of the final pair plus that of each intermediate pair: {"heatmap", "pull", "push", "offset"}."""
        losses = cornernet_loss(outputs.top_left, outputs.bottom_right, training_targets, self.config)
        for top_left, bottom_right in outputs.intermediate:
            intermediate = cornernet_loss(top_left, bottom_right, training_targets, self.config)
            losses = {name: value + intermediate[name] for name, value in losses.items()}
        return losses

    def decode(self, outputs: CornerNetOutputs, image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """`cornernet_decode` of the final pair, then `select_detections`: scores over `config.score_threshold`, boxes
        clipped to each image, the config's optional NMS or soft-NMS. Per image {"boxes", "scores", "labels"}."""
        config = self.config
        boxes, scores, labels = cornernet_decode(
            outputs.top_left, outputs.bottom_right, self.stride, config.corners_top_k, config.embedding_threshold, config.max_detections,
            config.peak_kernel,
        )
        return select_detections(
            boxes, scores, labels, image_sizes, config.score_threshold, config.nms_threshold, config.soft_nms_sigma
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


def build_cornernet(
    num_classes: int, backbone: str = "resnet18", pretrained_backbone: bool = False, backbone_width: float = 1.0, config: CornerNetConfig | None = None
) -> CornerNet:
    """CornerNet with the paper's Hourglass (`hourglass52`, `hourglass104`; `backbone_width` scales its widths)
    or a torchvision backbone and a stride-4 neck (see `anchorfree.models.backbones`)."""
    if backbone in HOURGLASS_BACKBONES:
        if pretrained_backbone:
            raise ValueError(f"there are no ImageNet weights for {backbone} (the paper trains it from scratch): set model.pretrained_backbone=false")
        return CornerNet(HOURGLASS_BACKBONES[backbone](backbone_width), num_classes, config)
    return CornerNet(build_backbone(backbone, pretrained_backbone, backbone_width), num_classes, config)
