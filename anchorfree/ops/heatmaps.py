"""Keypoint heatmaps: Gaussian radii, Gaussian splatting, and peak extraction (CenterNet and CornerNet).

A keypoint detector predicts, per class, a map whose peaks are objects' keypoints (box centres, box corners).
Its training target is 1 at each keypoint and decays as an unnormalised Gaussian around it, so that near-misses
are penalised less; the Gaussian's radius comes from the box size. At test time the peaks are the local maxima.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RADIUS_FORMULAS = ("original", "corrected")


def gaussian_radius(heights: torch.Tensor, widths: torch.Tensor, min_overlap: float, formula: str = "corrected") -> torch.Tensor:
    """The radius r around a box's keypoint within which a shifted box still has IoU >= `min_overlap` with it.

    CornerNet (Law & Deng, 2018) bounds r by three cases of moving the corners of an (h, w) box by up to r: one
    corner inside the box and one outside, both inside, both outside. Each case is a quadratic in r whose
    coefficients (as the released code writes them, o = min_overlap) are

        case 1: a1 = 1,    b1 = h + w,          c1 = w h (1 - o) / (1 + o)
        case 2: a2 = 4,    b2 = 2 (h + w),      c2 = (1 - o) w h
        case 3: a3 = 4 o,  b3 = -2 o (h + w),   c3 = (o - 1) w h

    with s_i = sqrt(b_i^2 - 4 a_i c_i); the radius is the smallest of the three case radii.

    formula="corrected": r1 = (b1 - s1) / (2 a1), r2 = (b2 - s2) / (2 a2), r3 = (b3 + s3) / (2 a3), the roots of
    the quadratics; the fix published by CornerNet's authors, used by mmdetection with min_overlap 0.3.
    formula="original": r1 = (b1 + s1) / 2, r2 = (b2 + s2) / 2, r3 = (b3 + s3) / 2, exactly what the released
    CenterNet code computes (the other root in cases 1 and 2, and every root divided by 2 instead of 2a); it
    gives larger radii. CenterNet uses it with min_overlap 0.7.

    Args:
        heights, widths: (M,) box sizes (in the heatmap's units, i.e. divided by the output stride).
        min_overlap: the IoU o that a box built from displaced keypoints must keep, in (0, 1).
        formula: "corrected" or "original".

    Returns:
        (M,) float radii (not rounded; the target builders take max(0, floor(r)) as the released code does).
    """
    if formula not in RADIUS_FORMULAS:
        raise ValueError(f"unknown radius formula {formula!r}; choose one of {', '.join(RADIUS_FORMULAS)}")
    if not 0 < min_overlap < 1:
        raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap}")
    heights, widths = heights.double(), widths.double()
    overlap = min_overlap
    b1 = heights + widths
    c1 = widths * heights * (1 - overlap) / (1 + overlap)
    s1 = torch.sqrt((b1**2 - 4 * c1).clamp(min=0))
    b2 = 2 * (heights + widths)
    c2 = (1 - overlap) * widths * heights
    s2 = torch.sqrt((b2**2 - 16 * c2).clamp(min=0))
    a3 = 4 * overlap
    b3 = -2 * overlap * (heights + widths)
    c3 = (overlap - 1) * widths * heights
    s3 = torch.sqrt((b3**2 - 4 * a3 * c3).clamp(min=0))
    if formula == "corrected":
        r1, r2, r3 = (b1 - s1) / 2, (b2 - s2) / 8, (b3 + s3) / (2 * a3)
    else:
        r1, r2, r3 = (b1 + s1) / 2, (b2 + s2) / 2, (b3 + s3) / 2
    return torch.minimum(torch.minimum(r1, r2), r3).float()


def draw_gaussians(heatmap: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Splat unnormalised Gaussians (peak 1.0) into a heatmap in place, keeping the element-wise maximum.

    Each keypoint gets exp(-(dx^2 + dy^2) / (2 sigma^2)) with sigma = (2 r + 1) / 6, over the (2r+1) x (2r+1)
    square around it (clipped at the map's borders); values below float32 epsilon are zeroed, as the released
    code does. Where Gaussians of one channel overlap, the larger value wins. Vectorised over keypoints.

    Args:
        heatmap: (C, H, W) float map, modified in place and returned.
        centers: (M, 2) int64 keypoints (x, y) in map cells, inside the map.
        radii: (M,) int64 radii in cells, >= 0.
        channels: (M,) int64 channel (class) of each keypoint.
    """
    if len(centers) == 0:
        return heatmap
    _, height, width = heatmap.shape
    device = heatmap.device
    sigma = (2 * radii.float() + 1) / 6  # (M,)
    dx = torch.arange(width, device=device)[None, :] - centers[:, 0:1]  # (M, W)
    dy = torch.arange(height, device=device)[None, :] - centers[:, 1:2]  # (M, H)
    # The 2-D Gaussian is separable: exp(-(dx^2 + dy^2) / 2s^2) = exp(-dx^2 / 2s^2) * exp(-dy^2 / 2s^2).
    gaussian_x = torch.exp(-(dx.float() ** 2) / (2 * sigma[:, None] ** 2)) * (dx.abs() <= radii[:, None])  # (M, W)
    gaussian_y = torch.exp(-(dy.float() ** 2) / (2 * sigma[:, None] ** 2)) * (dy.abs() <= radii[:, None])  # (M, H)
    gaussians = gaussian_y[:, :, None] * gaussian_x[:, None, :]  # (M, H, W)
    gaussians = torch.where(gaussians < torch.finfo(torch.float32).eps, torch.zeros_like(gaussians), gaussians)
    index = channels[:, None, None].expand_as(gaussians)  # (M, H, W): the channel each Gaussian goes to
    return heatmap.scatter_reduce_(0, index, gaussians.to(heatmap.dtype), "amax")


def heatmap_peaks(heatmap: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Keep the local maxima of a heatmap (a `kernel` x `kernel` max-pool equals the value), zero the rest.

    This replaces box NMS in keypoint detectors: of the cells around a peak, only the peak survives.
    (N, C, H, W) -> (N, C, H, W).
    """
    pooled = F.max_pool2d(heatmap, kernel, stride=1, padding=(kernel - 1) // 2)
    return heatmap * (pooled == heatmap)


def top_k_peaks(peaks: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k highest cells of (N, C, H, W) peak maps over all classes and positions.

    Returns:
        scores (N, k), classes (N, k) int64, ys (N, k) int64, xs (N, k) int64, sorted by score. When the map has
        fewer than k cells, k is reduced to their number (shapes stay static for a given input size).
    """
    batch, channels, height, width = peaks.shape
    k = min(k, channels * height * width)
    scores, indices = peaks.flatten(1).topk(k, dim=1)  # (N, C*H*W) -> (N, k)
    classes = torch.div(indices, height * width, rounding_mode="floor")
    pixels = indices - classes * height * width
    ys = torch.div(pixels, width, rounding_mode="floor")
    xs = pixels - ys * width
    return scores, classes, ys, xs
