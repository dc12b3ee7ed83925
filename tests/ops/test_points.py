"""Point grids: cell (i, j) of a stride-s map has its centre at ((j + 0.5) s, (i + 0.5) s) input pixels, in the
row-major order of ``feature.flatten(2)``."""

from __future__ import annotations

import pytest
import torch

from anchorfree.ops.points import grid_points


def test_a_2x3_grid_at_stride_8_lists_the_cell_centres_row_by_row() -> None:
    """Rows y = 4, 12; columns x = 4, 12, 20; x varies fastest."""
    points = grid_points(2, 3, 8)
    assert points.shape == (6, 2) and points.dtype == torch.float32
    expected = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [4.0, 12.0], [12.0, 12.0], [20.0, 12.0]])
    assert torch.equal(points, expected)


@pytest.mark.parametrize("stride", [8, 16, 32, 64, 128])
def test_each_fpn_stride_covers_a_256x192_image_with_centred_cells(stride: int) -> None:
    """A 192 x 256 (H x W) input: the stride-s level is (192 / s rounded up) x (256 / s rounded up) cells, the
    first centre at (s / 2, s / 2), neighbours s apart, the last at ((W_s - 0.5) s, (H_s - 0.5) s)."""
    height, width = -(-192 // stride), -(-256 // stride)
    points = grid_points(height, width, stride)
    assert points.shape == (height * width, 2)
    assert points[0].tolist() == [stride / 2, stride / 2]
    assert points[-1].tolist() == [(width - 0.5) * stride, (height - 0.5) * stride]
    if width > 1:
        assert points[1].tolist() == [1.5 * stride, stride / 2]  # the next column
    if height > 1:
        assert points[width].tolist() == [stride / 2, 1.5 * stride]  # the first cell of the next row
    grid = points.reshape(height, width, 2)  # (H*W, 2) -> (H, W, 2)
    assert torch.equal(grid[..., 0], ((torch.arange(width) + 0.5) * stride).expand(height, width))
    assert torch.equal(grid[..., 1], ((torch.arange(height)[:, None] + 0.5) * stride).expand(height, width))


def test_point_order_matches_a_flattened_feature_map() -> None:
    """The k-th point is where ``feature.flatten(2)[..., k]`` was computed: a map holding 100 i + j at (i, j)
    gives, at each point, 100 (y / s - 0.5) + (x / s - 0.5)."""
    height, width, stride = 3, 4, 16
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    feature = (100 * rows + columns).float()[None, None]  # (1, 1, H, W)
    flat = feature.flatten(2)[0, 0]  # (1, 1, H, W) -> (H*W,)
    points = grid_points(height, width, stride)
    from_points = 100 * (points[:, 1] / stride - 0.5) + (points[:, 0] / stride - 0.5)
    assert torch.equal(from_points, flat)


def test_a_one_cell_map_and_an_empty_map() -> None:
    """A 1 x 1 map at stride 128 has its only centre at (64, 64); a map without rows has no points."""
    assert grid_points(1, 1, 128).tolist() == [[64.0, 64.0]]
    assert grid_points(0, 5, 8).shape == (0, 2)
    assert grid_points(4, 0, 8).shape == (0, 2)


def test_the_device_may_be_a_name_or_a_torch_device() -> None:
    """'cpu' and torch.device('cpu') give the same float32 grid on the CPU."""
    by_name = grid_points(2, 2, 4, device="cpu")
    by_device = grid_points(2, 2, 4, device=torch.device("cpu"))
    assert by_name.device.type == by_device.device.type == "cpu"
    assert torch.equal(by_name, by_device) and by_name.tolist() == [[2.0, 2.0], [6.0, 2.0], [2.0, 6.0], [6.0, 6.0]]
