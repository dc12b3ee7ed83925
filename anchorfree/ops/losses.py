"""Losses shared by the families, computed in float32 whatever the autocast dtype (bf16/fp16 overflow in
focal terms and IoUs is a classic source of NaNs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss


def focal_loss_sum(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al., RetinaNet) summed over all elements, in float32.

    Args:
        logits: (..., C) raw classification outputs.
        targets: (..., C) one-hot float targets (all zeros for background).
    """
    return sigmoid_focal_loss(logits.float(), targets.float(), alpha=alpha, gamma=gamma, reduction="sum")


def giou_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
    """Per-box generalised IoU loss, 1 - GIoU, in float32.

    Args:
        pred_boxes: (K, 4) predicted boxes (x1, y1, x2, y2).
        target_boxes: (K, 4) matched ground-truth boxes.

    Returns:
        (K,) losses in [0, 2].
    """
    return generalized_box_iou_loss(pred_boxes.float(), target_boxes.float(), reduction="none")


def binary_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, summed, in float32 (the FCOS centerness loss)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum")


def penalty_reduced_focal_loss(probabilities: torch.Tensor, targets: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's and CornerNet's heatmap loss: a focal loss whose negatives near a keypoint are penalty-reduced.

    With p the predicted probability and y the Gaussian target, over all cells and classes:
        positives (y == 1):  (1 - p)^alpha * log(p)
        negatives (y < 1):   (1 - y)^beta * p^alpha * log(1 - p)
    loss = -(sum of both) / number of positives, or -(negative sum) alone when there is no positive.
    The (1 - y)^beta factor lowers the penalty on cells close to a keypoint, whose boxes would still be good.

    Args:
        probabilities: (N, C, H, W) sigmoid outputs, clamped away from 0 and 1 by the caller (the released code
            clamps to [1e-4, 1 - 1e-4]) so that the logarithms stay finite.
        targets: (N, C, H, W) Gaussian heatmaps in [0, 1], exactly 1 at keypoints.

    Returns:
        A float32 scalar.
    """
    probabilities, targets = probabilities.float(), targets.float()
    positive = targets.eq(1).float()
    negative = targets.lt(1).float()
    negative_weights = torch.pow(1 - targets, beta)
    positive_loss = (torch.log(probabilities) * torch.pow(1 - probabilities, alpha) * positive).sum()
    negative_loss = (torch.log(1 - probabilities) * torch.pow(probabilities, alpha) * negative_weights * negative).sum()
    num_positives = positive.sum()
    # With no positive the positive sum is 0, so this is -negative_loss: the seed's num_pos == 0 case, without a
    # data-dependent branch (no host sync on GPU).
    return -(positive_loss + negative_loss) / num_positives.clamp(min=1)
