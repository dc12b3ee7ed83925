"""Point grids: the pixel centres a dense head makes its predictions at."""

from __future__ import annotations

import torch


def grid_points(height: int, width: int, stride: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Centres of the cells of an (height, width) feature map, in input-image pixels.

    Cell (i, j) of a map with stride s covers input pixels [j*s, (j+1)*s) x [i*s, (i+1)*s); its centre is
    ((j + 0.5) * s, (i + 0.5) * s). Row-major order, matching ``feature.flatten(2)``.

    Returns:
        (height * width, 2) float32 tensor of (x, y).
    """
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)
