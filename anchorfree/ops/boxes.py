"""Box conversions between the frames the families regress in. Boxes are absolute (x1, y1, x2, y2) pixels."""

from __future__ import annotations

import torch
from torchvision.ops import box_iou


def distances_to_boxes(points: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Boxes from per-point distances to the four sides.

    Args:
        points: (..., 2) point (x, y) in pixels.
        distances: (..., 4) distances (left, top, right, bottom) in pixels, >= 0.

    Returns:
        (..., 4) boxes (x1, y1, x2, y2).
    """
    x, y = points.unbind(-1)
    left, top, right, bottom = distances.unbind(-1)
    return torch.stack([x - left, y - top, x + right, y + bottom], dim=-1)


def boxes_to_distances(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Distances (left, top, right, bottom) from points to the sides of boxes; negative when outside.

    The inverse of `distances_to_boxes`, with the same broadcasting: (K, 2) points and their (K, 4) boxes give
    (K, 4); `points[:, None]` and `boxes[None]` give every point against every box, (P, M, 4).

    Args:
        points: (..., 2) point (x, y) in pixels.
        boxes: (..., 4) boxes (x1, y1, x2, y2).

    Returns:
        (..., 4) distances in pixels.
    """
    x, y = points.unbind(-1)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) boxes -> (...) areas in square pixels (0 for degenerate boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, sigma: float = 0.5, score_threshold: float = 0.001) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian soft-NMS (Bodla et al., 2017), class-aware: instead of removing a box that overlaps a higher
    scoring box of its class, decay its score by exp(-IoU^2 / sigma), greedily from the highest score down.

    Args:
        boxes: (D, 4) x1, y1, x2, y2; scores: (D,); labels: (D,).
        sigma: the Gaussian's width; smaller decays overlapping boxes harder.
        score_threshold: boxes whose decayed score falls to this or below are dropped.

    Returns:
        (K,) indices into the inputs, in the order picked (descending decayed score), and their (K,) decayed scores.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device), scores.new_zeros(0)
    # Shift each class to its own region so that boxes of different classes never overlap (as batched_nms does).
    offsets = labels.to(boxes.dtype) * (boxes.max() - boxes.min() + 1)
    shifted = boxes + offsets[:, None]
    # Two zero-area boxes (clipped to an image edge) have IoU 0 / 0: count it as no overlap, never NaN.
    overlaps = torch.nan_to_num(box_iou(shifted, shifted), nan=0.0)  # (D, D)
    scores = scores.clone()
    remaining = torch.ones_like(scores, dtype=torch.bool)
    picked = []
    for _ in range(boxes.shape[0]):
        candidates = torch.where(remaining, scores, torch.full_like(scores, -1.0))
        best = int(candidates.argmax())
        if float(candidates[best]) <= score_threshold:
            break
        picked.append(best)
        remaining[best] = False
        decay = torch.exp(-overlaps[best].square() / sigma)
        scores = torch.where(remaining, scores * decay, scores)
    indices = torch.tensor(picked, dtype=torch.long, device=boxes.device)
    return indices, scores[indices]
