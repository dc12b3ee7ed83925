"""Box maths: side distances <-> boxes, box areas, and class-aware Gaussian soft-NMS.

Boxes are absolute (x1, y1, x2, y2) pixels; distances are (left, top, right, bottom) from a point (x, y) to the
box's sides. Every expected value is worked out by hand here, never read back from the function under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from anchorfree.ops.boxes import box_area, boxes_to_distances, distances_to_boxes, soft_nms

# ------------------------------------------------------------------------------- distances <-> boxes


def test_distances_to_boxes_on_hand_computed_points() -> None:
    """(x, y) = (10, 20) with (l, t, r, b) = (3, 4, 5, 6) is the box (10 - 3, 20 - 4, 10 + 5, 20 + 6)."""
    points = torch.tensor([[10.0, 20.0], [0.0, 0.0], [4.0, 4.0]])
    distances = torch.tensor([[3.0, 4.0, 5.0, 6.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    expected = torch.tensor([[7.0, 16.0, 15.0, 26.0], [-1.0, -2.0, 3.0, 4.0], [4.0, 4.0, 4.0, 4.0]])
    assert torch.equal(distances_to_boxes(points, distances), expected)


def test_boxes_to_distances_inside_and_outside_a_box() -> None:
    """The box (0, 0, 8, 6): its centre (4, 3) is (4, 3, 4, 3) from the sides; (10, 1), right of it, has r = -2."""
    box = torch.tensor([0.0, 0.0, 8.0, 6.0])
    points = torch.tensor([[4.0, 3.0], [10.0, 1.0], [1.0, -2.0], [0.0, 6.0]])
    distances = boxes_to_distances(points, box.expand(4, 4))
    expected = torch.tensor([[4.0, 3.0, 4.0, 3.0], [10.0, 1.0, -2.0, 5.0], [1.0, -2.0, 7.0, 8.0], [0.0, 6.0, 8.0, 0.0]])
    assert distances.shape == (4, 4)
    assert torch.equal(distances, expected)
    # FCOS's "inside" rule: the point is inside when its smallest distance is > 0 (a point on the border is not).
    assert (distances.min(dim=-1).values > 0).tolist() == [True, False, False, False]


def test_distances_and_boxes_round_trip() -> None:
    """boxes_to_distances inverts distances_to_boxes, and back, on random points, distances and boxes."""
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(50, 2, generator=generator) * 200
    distances = torch.rand(50, 4, generator=generator) * 60
    torch.testing.assert_close(boxes_to_distances(points, distances_to_boxes(points, distances)), distances, rtol=0, atol=1e-4)
    corners = torch.rand(50, 2, generator=generator) * 100
    boxes = torch.cat([corners, corners + 1 + torch.rand(50, 2, generator=generator) * 50], dim=1)
    torch.testing.assert_close(distances_to_boxes(points, boxes_to_distances(points, boxes)), boxes, rtol=0, atol=1e-4)


def test_every_point_against_every_box_broadcasts_to_points_by_boxes() -> None:
    """points[:, None] (P = 3) against boxes[None] (M = 2) gives (P, M, 4): entry [p, m] is point p against box m."""
    points = torch.tensor([[5.0, 5.0], [15.0, 5.0], [25.0, 25.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 30.0, 30.0]])
    distances = boxes_to_distances(points[:, None], boxes[None])
    assert distances.shape == (3, 2, 4)
    expected = torch.tensor(
        [
            [[5.0, 5.0, 5.0, 5.0], [-5.0, 5.0, 25.0, 25.0]],
            [[15.0, 5.0, -5.0, 5.0], [5.0, 5.0, 15.0, 25.0]],
            [[25.0, 25.0, -15.0, -15.0], [15.0, 25.0, 5.0, 5.0]],
        ]
    )
    assert torch.equal(distances, expected)
    inside = distances.min(dim=-1).values > 0  # (P, M)
    assert inside.tolist() == [[True, False], [False, True], [False, True]]
    # Back to boxes with the same broadcasting: each point recovers each box.
    assert torch.equal(distances_to_boxes(points[:, None].expand(3, 2, 2), distances), boxes[None].expand(3, 2, 4))


def test_box_conversions_of_no_points_are_empty() -> None:
    """An image without points or boxes gives (0, 4) results, not an error."""
    assert distances_to_boxes(torch.zeros(0, 2), torch.zeros(0, 4)).shape == (0, 4)
    assert boxes_to_distances(torch.zeros(0, 2), torch.zeros(0, 4)).shape == (0, 4)
    assert boxes_to_distances(torch.zeros(5, 2)[:, None], torch.zeros(0, 4)[None]).shape == (5, 0, 4)


# ------------------------------------------------------------------------------------------------- box_area


def test_box_area_of_known_and_degenerate_boxes() -> None:
    """4 x 3 = 12 and 2.5 x 2 = 5 square pixels; zero width, zero height and inverted boxes have area 0."""
    boxes = torch.tensor(
        [[0.0, 0.0, 4.0, 3.0], [1.0, 2.0, 3.5, 4.0], [5.0, 5.0, 5.0, 9.0], [0.0, 7.0, 4.0, 7.0], [6.0, 0.0, 2.0, 3.0], [0.0, 4.0, 3.0, 1.0]]
    )
    assert box_area(boxes).tolist() == [12.0, 5.0, 0.0, 0.0, 0.0, 0.0]


def test_box_area_keeps_the_leading_shape() -> None:
    """(..., 4) -> (...): (2, 3, 4) boxes give (2, 3) areas; no boxes give no areas."""
    boxes = torch.tensor([0.0, 0.0, 2.0, 5.0]).repeat(2, 3, 1)
    boxes[1, 2] = torch.tensor([10.0, 10.0, 13.0, 11.0])
    areas = box_area(boxes)
    assert areas.shape == (2, 3)
    assert areas.tolist() == [[10.0, 10.0, 10.0], [10.0, 10.0, 3.0]]
    assert box_area(torch.zeros(0, 4)).shape == (0,)


# -------------------------------------------------------------------------------------------------- soft-NMS


def test_soft_nms_decays_overlapping_boxes_of_a_class_and_leaves_other_classes_alone() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    kept, decayed = soft_nms(boxes, scores, labels, sigma=0.5, score_threshold=0.01)
    # Box 1 overlaps box 0 (same class) at IoU 0.9: its score decays by exp(-0.81 / 0.5). Box 2 is another class.
    expected = {0: 0.9, 2: 0.7, 3: 0.6, 1: 0.8 * math.exp(-0.81 / 0.5)}
    assert kept.tolist() == [0, 2, 3, 1]
    assert torch.allclose(decayed, torch.tensor([expected[index] for index in kept.tolist()]), atol=1e-6)
    kept, _ = soft_nms(boxes, scores, labels, sigma=0.5, score_threshold=0.5)
    assert kept.tolist() == [0, 2, 3]  # the decayed box falls below the threshold
    empty, empty_scores = soft_nms(boxes[:0], scores[:0], labels[:0])
    assert empty.shape == (0,) and empty_scores.shape == (0,)


def test_soft_nms_of_zero_area_boxes_keeps_scores_finite() -> None:
    # Boxes clipped to an image edge can have zero width; IoU 0 / 0 must not turn the decayed scores into NaN.
    boxes = torch.tensor([[5.0, 5.0, 5.0, 9.0], [5.0, 5.0, 5.0, 9.0], [0.0, 0.0, 4.0, 4.0]])
    kept, decayed = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long))
    assert torch.isfinite(decayed).all()
    assert kept.tolist() == [0, 1, 2] and decayed.tolist() == pytest.approx([0.9, 0.8, 0.7])


def test_soft_nms_decays_compound_and_reorder_the_picks() -> None:
    """Three nested boxes of one class: each pick decays every box still waiting, so the order can change.

    A = (0, 0, 10, 10) 0.9, B = (0, 0, 10, 9) 0.8, C = (0, 0, 10, 5) 0.7; IoU(A, B) = 0.9, IoU(A, C) = 0.5,
    IoU(B, C) = 50 / 90 = 5 / 9. After A: B = 0.8 exp(-0.81 / 0.5) = 0.158, C = 0.7 exp(-0.25 / 0.5) = 0.425, so C
    is picked before B, and then B = 0.158 exp(-(5/9)^2 / 0.5) = 0.085.
    """
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [0.0, 0.0, 10.0, 5.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.zeros(3, dtype=torch.long)
    b_after_a = 0.8 * math.exp(-0.81 / 0.5)
    c_after_a = 0.7 * math.exp(-0.25 / 0.5)
    b_after_c = b_after_a * math.exp(-((5 / 9) ** 2) / 0.5)
    assert (b_after_a, c_after_a, b_after_c) == pytest.approx((0.1583, 0.4246, 0.0854), abs=1e-4)
    kept, decayed = soft_nms(boxes, scores, labels, sigma=0.5, score_threshold=0.001)
    assert kept.tolist() == [0, 2, 1]
    torch.testing.assert_close(decayed, torch.tensor([0.9, c_after_a, b_after_c]), rtol=0, atol=1e-6)
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7])  # the caller's scores are not changed in place
    # A smaller sigma decays harder: sigma = 0.1 takes C to 0.7 exp(-2.5) = 0.0575 and B to 0.8 exp(-8.1) = 0.00024,
    # below the default threshold of 0.001, so B is dropped.
    kept, decayed = soft_nms(boxes, scores, labels, sigma=0.1)
    assert kept.tolist() == [0, 2]
    torch.testing.assert_close(decayed, torch.tensor([0.9, 0.7 * math.exp(-2.5)]), rtol=0, atol=1e-6)
