"""Box conversions between the frames the families regress in. Boxes are absolute (x1, y1, x2, y2) pixels."""

from __future__ import annotations

import torch


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
