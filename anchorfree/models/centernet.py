"""CenterNet: Objects as Points (Zhou, Wang & Krähenbühl, 2019, arXiv:1904.07850).

An object is the peak of a per-class heatmap at its box centre. At that point the network also predicts the
sub-cell offset that the output stride rounds away, and the box's width and height. Inference reads the peaks
of the heatmap with a 3x3 max-pool (a cell is kept when it is the maximum of its neighbourhood) and takes the
top K over all classes: one box per peak, and no box NMS.

Head outputs, on one map of stride R = 4 (H = input height / 4, W = input width / 4):
    heatmap_logits (N, C, H, W)  one sigmoid per class
    offsets        (N, 2, H, W)  (dx, dy) from the cell's corner to the true centre, in cells, in [0, 1)
    sizes          (N, 2, H, W)  box (width, height) in cells

Coordinate frame: cell (i, j) covers input pixels [jR, (j+1)R) x [iR, (i+1)R). A box of centre (cx, cy) in
input pixels has its peak at cell (floor(cx / R), floor(cy / R)) and offset (cx / R - floor(cx / R), ...).
Decoded boxes are absolute (x1, y1, x2, y2) pixels of the input image.

Reading order: head -> targets -> loss -> decode -> the model -> builder.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from anchorfree.models.backbones import PyramidP2Neck, UpsamplingNeck, build_backbone
from anchorfree.models.detector import batch_images, check_num_classes, check_targets, match_memory_format, select_detections
from anchorfree.ops.heatmaps import RADIUS_FORMULAS, draw_gaussians, gaussian_radius, heatmap_peaks, top_k_peaks
from anchorfree.ops.losses import penalty_reduced_focal_loss

NECKS = ("deconv", "fpn")


@dataclass
class CenterNetConfig:
    """CenterNet hyper-parameters. Defaults are the paper's ResNet settings unless noted."""

    neck: str = "deconv"  # deconv: the paper's 3 upsampling stages on C5; fpn: an FPN's P2 on C2-C5
    neck_channels: list[int] = field(default_factory=lambda: [256, 128, 64])  # the deconv stages' widths
    deformable: bool = False  # deformable 3x3 convs in the deconv stages (the paper's ResNet-DCN)
    fpn_channels: int = 128  # the fpn neck's width
    head_channels: int = 64  # the 3x3 conv of each head branch
    # Gaussian radius of the heatmap targets (see anchorfree.ops.heatmaps.gaussian_radius): "corrected" with
    # min_overlap 0.3 (mmdetection) or "original" with 0.7 (the released CenterNet code).
    radius_formula: str = "corrected"
    min_overlap: float = 0.3
    focal_alpha: float = 2.0
    focal_beta: float = 4.0
    size_weight: float = 0.1
    offset_weight: float = 1.0
    max_objects: int = 256  # per image; more are dropped with a warning (the released code silently keeps 128)
    peak_kernel: int = 3  # max-pool window of the peak extraction
    max_detections: int = 100  # K: the top-K peaks kept per image
    score_threshold: float = 0.01
    # The paper decodes with no NMS (0). Early in training a large object's heatmap has several local maxima,
    # each a duplicate box; class-aware NMS at this IoU removes them (the released code has an optional
    # soft-NMS at test time). See docs/benchmarks.md for what it changes.
    nms_threshold: float = 0.0
    soft_nms_sigma: float = 0.0  # > 0: class-aware Gaussian soft-NMS with this sigma instead (the released code's option)
    flip_test: bool = False  # average the heatmaps and sizes of the image and its mirror at test time


# ------------------------------------------------------------------------------------------------------ head


class CenterNetHead(nn.Module):
    """Three branches on the stride-4 features, each a 3x3 conv + ReLU + 1x1 conv: heatmap, offset, size."""

    def __init__(self, in_channels: int, num_classes: int, head_channels: int = 64) -> None:
        super().__init__()

        def branch(out_channels: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(in_channels, head_channels, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(head_channels, out_channels, 1))

        self.heatmap = branch(num_classes)
        self.offset = branch(2)
        self.size = branch(2)
        for module in [*self.offset.modules(), *self.size.modules()]:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.001)
                nn.init.zeros_(module.bias)
        # sigmoid(-2.19) = 0.1: the heatmap starts low everywhere, as the paper initialises it.
        nn.init.constant_(self.heatmap[-1].bias, -2.19)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """features: (N, in_channels, H, W) -> heatmap_logits (N, C, H, W), offsets (N, 2, H, W), sizes (N, 2, H, W)."""
        return self.heatmap(features), self.offset(features), self.size(features)


# --------------------------------------------------------------------------------------------------- targets


@dataclass
class CenterNetTargets:
    """The training targets of one image (M = objects whose centre falls on the map)."""

    heatmap: torch.Tensor  # (C, H, W) Gaussians, exactly 1 at each centre cell
    indices: torch.Tensor  # (M,) int64 flat index y * W + x of each object's centre cell
    sizes: torch.Tensor  # (M, 2) box (width, height) in cells
    offsets: torch.Tensor  # (M, 2) centre minus its cell, (dx, dy) in [0, 1)


@torch.no_grad()
def centernet_targets(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    output_size: tuple[int, int],
    stride: int = 4,
    radius_formula: str = "corrected",
    min_overlap: float = 0.3,
    max_objects: int = 256,
    iscrowd: torch.Tensor | None = None,
) -> CenterNetTargets:
    """CenterNet targets for one image.

    Each box (scaled to map cells by 1 / stride) puts a Gaussian on its class channel at its floored centre,
    of radius max(0, floor(gaussian_radius(ceil(h), ceil(w)))) as the released code computes it; where
    Gaussians of one class overlap the larger value wins. The box's size and the centre's sub-cell offset are
    the regression targets at that cell. Boxes whose centre falls outside the map and crowd boxes are left out
    (the others are unaffected); beyond `max_objects` boxes the rest are dropped with a warning.

    Args:
        boxes: (M, 4) boxes (x1, y1, x2, y2) in input pixels.
        labels: (M,) class indices in [0, num_classes).
        num_classes: C, the heatmap's channels.
        output_size: (H, W) of the output map.
        stride: input pixels per map cell.
        radius_formula, min_overlap: see `anchorfree.ops.heatmaps.gaussian_radius`.
        max_objects: the most objects kept per image.
        iscrowd: (M,) bool, optional; crowd boxes get no target.

    Returns:
        A `CenterNetTargets` on the boxes' device.
    """
    height, width = output_size
    device = boxes.device
    keep = torch.ones(len(boxes), dtype=torch.bool, device=device) if iscrowd is None else ~iscrowd.bool()
    boxes, labels = boxes[keep].float() / stride, labels[keep]
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2  # (M, 2) x, y in cells
    cells = centers.floor().long()
    on_map = (cells[:, 0] >= 0) & (cells[:, 0] < width) & (cells[:, 1] >= 0) & (cells[:, 1] < height)
    boxes, labels, centers, cells = boxes[on_map], labels[on_map], centers[on_map], cells[on_map]
    if len(boxes) > max_objects:
        warnings.warn(
            f"an image has {len(boxes)} objects; keeping the first {max_objects} (raise model.centernet.max_objects to keep them all)",
            stacklevel=2,
        )
        boxes, labels, centers, cells = boxes[:max_objects], labels[:max_objects], centers[:max_objects], cells[:max_objects]

    sizes = boxes[:, 2:] - boxes[:, :2]  # (M, 2) width, height in cells
    radii = gaussian_radius(sizes[:, 1].ceil(), sizes[:, 0].ceil(), min_overlap, radius_formula)
    radii = radii.floor().clamp(min=0).long()
    heatmap = torch.zeros((num_classes, height, width), dtype=torch.float32, device=device)
    draw_gaussians(heatmap, cells, radii, labels.long())
    return CenterNetTargets(heatmap, cells[:, 1] * width + cells[:, 0], sizes, centers - cells.float())


# ------------------------------------------------------------------------------------------------------ loss


def centernet_loss(
    heatmap_logits: torch.Tensor,
    offsets: torch.Tensor,
    sizes: torch.Tensor,
    targets: list[CenterNetTargets],
    focal_alpha: float = 2.0,
    focal_beta: float = 4.0,
    size_weight: float = 0.1,
    offset_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The CenterNet losses for a batch, in float32, already weighted (their sum is the training loss).

    Args:
        heatmap_logits: (N, C, H, W); offsets, sizes: (N, 2, H, W) (see the module doc).
        targets: one `CenterNetTargets` per image.

    Returns:
        {"heatmap": the penalty-reduced focal loss (anchorfree.ops.losses) on sigmoid(logits) clamped to
         [1e-4, 1 - 1e-4], normalised by the number of centres,
         "size": size_weight x L1 of (width, height) at the centres, averaged over the 2M values,
         "offset": offset_weight x L1 of the offsets, likewise}.
        With no object in the batch, size and offset are exactly 0 (still connected to the graph, so every
        parameter receives a gradient under DDP) and the heatmap loss is the negatives' sum.
    """
    probabilities = heatmap_logits.float().sigmoid().clamp(1e-4, 1 - 1e-4)
    target_heatmaps = torch.stack([target.heatmap for target in targets])  # (N, C, H, W)
    heatmap = penalty_reduced_focal_loss(probabilities, target_heatmaps, focal_alpha, focal_beta)

    image_index = torch.cat([torch.full_like(target.indices, index) for index, target in enumerate(targets)])  # (M,)
    cell_index = torch.cat([target.indices for target in targets])  # (M,)
    predicted_offsets = offsets.float().flatten(2)[image_index, :, cell_index]  # (N, 2, H*W) -> (M, 2)
    predicted_sizes = sizes.float().flatten(2)[image_index, :, cell_index]  # (M, 2)
    target_offsets = torch.cat([target.offsets for target in targets])
    target_sizes = torch.cat([target.sizes for target in targets])
    num_values = max(2 * len(cell_index), 1)
    size = (predicted_sizes - target_sizes).abs().sum() / num_values
    offset = (predicted_offsets - target_offsets).abs().sum() / num_values
    # With no object these are exact zeros, still in the graph through the (empty) reads of the outputs, so every
    # parameter receives a (zero) gradient under DDP.
    return {"heatmap": heatmap, "size": size_weight * size, "offset": offset_weight * offset}


# ---------------------------------------------------------------------------------------------------- decode


def centernet_decode(
    heatmap: torch.Tensor,
    offsets: torch.Tensor,
    sizes: torch.Tensor,
    stride: int = 4,
    top_k: int = 100,
    peak_kernel: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peaks of the heatmap -> the top-K boxes per image, in input pixels. Tensor ops only, static shapes.

    A cell is a detection when it is the maximum of its `peak_kernel` x `peak_kernel` neighbourhood (this is
    CenterNet's replacement for NMS); the K best over all classes are taken, and each box is
    (x + dx -/+ w / 2, y + dy -/+ h / 2) x stride with the offset and size read at the peak.

    Args:
        heatmap: (N, C, H, W) class probabilities (sigmoid of the logits, or the flip-test average).
        offsets: (N, 2, H, W); sizes: (N, 2, H, W), in cells.

    Returns:
        boxes (N, K, 4) float32 (x1, y1, x2, y2), scores (N, K) float32, labels (N, K) int64, sorted by score.
        K = min(top_k, C * H * W). Boxes are not clipped to the image (see `CenterNet.decode`).
    """
    batch = heatmap.shape[0]
    peaks = heatmap_peaks(heatmap.float(), peak_kernel)
    scores, labels, ys, xs = top_k_peaks(peaks, top_k)  # each (N, K)
    cell_index = ys * heatmap.shape[-1] + xs  # (N, K)
    gather_index = cell_index[:, None, :].expand(batch, 2, -1)  # (N, 2, K)
    peak_offsets = offsets.float().flatten(2).gather(2, gather_index)  # (N, 2, H*W) -> (N, 2, K)
    peak_sizes = sizes.float().flatten(2).gather(2, gather_index)  # (N, 2, K)
    center_x = xs.float() + peak_offsets[:, 0]
    center_y = ys.float() + peak_offsets[:, 1]
    half_width, half_height = peak_sizes[:, 0] / 2, peak_sizes[:, 1] / 2
    boxes = torch.stack([center_x - half_width, center_y - half_height, center_x + half_width, center_y + half_height], dim=2)
    return boxes * stride, scores, labels


# ----------------------------------------------------------------------------------------------------- model

# What `CenterNet.head_outputs` returns: heatmap_logits (N, C, H, W), offsets (N, 2, H, W), sizes (N, 2, H, W).
CenterNetOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class CenterNet(nn.Module):
    """CenterNet: backbone -> stride-4 neck -> heatmap/offset/size head; losses in training, detections in eval.

    A `DetectionModel` (anchorfree.models.detector): `forward` is `head_outputs`, then `training_targets` and
    `loss`, or `decode` (with `config.flip_test`, of the batch followed by its mirror).
    """

    family = "centernet"  # the key in anchorfree.models.MODELS

    def __init__(self, backbone: nn.Module, num_classes: int, config: CenterNetConfig | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.config = config or CenterNetConfig()
        if self.config.neck not in NECKS:
            raise ValueError(f"unknown CenterNet neck {self.config.neck!r}; choose one of {', '.join(NECKS)}")
        if self.config.radius_formula not in RADIUS_FORMULAS:
            raise ValueError(f"unknown radius formula {self.config.radius_formula!r}; choose one of {', '.join(RADIUS_FORMULAS)}")
        self.num_classes = num_classes
        self.backbone = backbone
        if self.config.neck == "deconv":
            if len(self.config.neck_channels) != 3:
                raise ValueError(f"the deconv neck needs 3 stage widths (stride 32 -> 4), got {self.config.neck_channels}")
            self.neck: nn.Module = UpsamplingNeck(backbone.out_channels[-1], self.config.neck_channels, self.config.deformable)
        else:
            self.neck = PyramidP2Neck(backbone.out_channels, self.config.fpn_channels)
        self.stride = self.neck.stride
        self.size_divisor = 32
        self.head = CenterNetHead(self.neck.out_channels, num_classes, self.config.head_channels)

    @property
    def max_detections(self) -> int:
        """The most detections `decode` returns per image: `config.max_detections` (K, the peaks kept)."""
        return self.config.max_detections

    def head_outputs(self, batch: torch.Tensor) -> CenterNetOutputs:
        """(N, 3, H, W) padded batch -> heatmap_logits (N, C, H/4, W/4), offsets and sizes (N, 2, H/4, W/4)."""
        return self.head(self.neck(self.backbone(match_memory_format(batch, self.backbone))))

    @torch.no_grad()
    def training_targets(
        self, outputs: CenterNetOutputs, targets: list[dict[str, torch.Tensor]], image_sizes: list[tuple[int, int]]
    ) -> list[CenterNetTargets]:
        """`centernet_targets` of every image on the (H/4, W/4) map of `outputs`, with the config's radius settings.

        Args:
            outputs: from `head_outputs` (only the heatmap's shape is read).
            targets: one {"boxes" (M, 4) input pixels, "labels" (M,), "iscrowd" (M,) optional} per image.
            image_sizes: unused: the targets cover the whole padded map.

        Returns:
            One `CenterNetTargets` per image.
        """
        config = self.config
        output_size = tuple(outputs[0].shape[-2:])
        image_targets = []
        for image_index, target in enumerate(targets):
            check_num_classes(target["labels"], self.num_classes, image_index)
            image_targets.append(
                centernet_targets(
                    target["boxes"], target["labels"], self.num_classes, output_size, self.stride,
                    config.radius_formula, config.min_overlap, config.max_objects, target.get("iscrowd"),
                )
            )
        return image_targets

    def loss(self, outputs: CenterNetOutputs, training_targets: list[CenterNetTargets]) -> dict[str, torch.Tensor]:
        """`centernet_loss` of `head_outputs` against `training_targets`: {"heatmap", "size", "offset"}."""
        heatmap_logits, offsets, sizes = outputs
        config = self.config
        return centernet_loss(
            heatmap_logits, offsets, sizes, training_targets, config.focal_alpha, config.focal_beta, config.size_weight, config.offset_weight
        )

    def decode(self, outputs: CenterNetOutputs, image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """`centernet_decode` of `head_outputs`, then `select_detections`: scores over `config.score_threshold`, boxes
        clipped to each image, the config's optional NMS or soft-NMS. Per image {"boxes", "scores", "labels"}.

        With `config.flip_test`, `outputs` are those of the N images followed by their N mirrors (as `forward` runs
        them, in one batch): the mirrors' outputs are flipped back and the heatmaps and sizes averaged (offsets are
        not mirror-symmetric and come from the images alone).
        """
        config = self.config
        heatmap_logits, offsets, sizes = outputs
        if config.flip_test:
            count = len(image_sizes)
            if heatmap_logits.shape[0] != 2 * count:
                raise ValueError(
                    f"with flip_test, decode takes the outputs of the {count} images followed by their mirrors "
                    f"({2 * count} maps), got {heatmap_logits.shape[0]}"
                )
            heatmap = (heatmap_logits[:count].float().sigmoid() + heatmap_logits[count:].float().sigmoid().flip(-1)) / 2
            sizes = (sizes[:count].float() + sizes[count:].float().flip(-1)) / 2
            offsets = offsets[:count]
        else:
            heatmap = heatmap_logits.float().sigmoid()
        boxes, scores, labels = centernet_decode(heatmap, offsets, sizes, self.stride, config.max_detections, config.peak_kernel)
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
            return self.loss(outputs, self.training_targets(outputs, targets, image_sizes))
        if self.config.flip_test:
            # The mirror goes through the network in the same batch; `decode` averages it back in.
            batch = torch.cat([batch, batch.flip(-1)])
        return self.decode(self.head_outputs(batch), image_sizes)


def build_centernet(
    num_classes: int, backbone: str = "resnet18", pretrained_backbone: bool = False, backbone_width: float = 1.0, config: CenterNetConfig | None = None
) -> CenterNet:
    """CenterNet with a torchvision backbone (see `anchorfree.models.backbones.BACKBONE_NAMES`)."""
    return CenterNet(build_backbone(backbone, pretrained_backbone, backbone_width), num_classes, config)
