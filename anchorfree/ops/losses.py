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
