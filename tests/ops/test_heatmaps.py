"""Keypoint heatmaps: Gaussian radii, Gaussian splatting and peak extraction (their loss, the penalty-reduced focal
loss, is tested with the other losses in test_losses.py).

Every expected value is worked out by hand here from the closed forms (plain `math`), never read back from the
function under test. Heatmaps are (C, H, W) or (N, C, H, W); centres are (x, y) cells.
"""

from __future__ import annotations

import math

import pytest
import torch

from anchorfree.ops.heatmaps import draw_gaussians, gaussian_radius, heatmap_peaks, top_k_peaks

# ------------------------------------------------------------------------------------------ gaussian_radius
#
# CornerNet's three quadratics for an (h, w) box and overlap o (see gaussian_radius's docstring):
#   case 1: a1 = 1,   b1 = h + w,        c1 = w h (1 - o) / (1 + o)
#   case 2: a2 = 4,   b2 = 2 (h + w),    c2 = (1 - o) w h
#   case 3: a3 = 4 o, b3 = -2 o (h + w), c3 = (o - 1) w h
# "original": r_i = (b_i +/- s_i) / 2 (+ in cases 1 and 2); "corrected": the roots, divided by 2 a_i.


def test_original_radius_of_a_10x10_box_at_overlap_0_7() -> None:
    """h = w = 10, o = 0.7: the third case, (-28 + sqrt(1120)) / 2 = 2.7332, is the smallest."""
    # case 1: b1 = 20, c1 = 100 * 0.3 / 1.7; case 2: b2 = 40, c2 = 30 -> s2 = sqrt(1600 - 480) = sqrt(1120)
    # case 3: a3 = 2.8, b3 = -28, c3 = -30 -> s3 = sqrt(784 + 4 * 2.8 * 30) = sqrt(1120)
    case_1 = (20 + math.sqrt(400 - 4 * 30 / 1.7)) / 2
    case_2 = (40 + math.sqrt(1120)) / 2
    case_3 = (-28 + math.sqrt(1120)) / 2
    assert case_1 == pytest.approx(19.0749, abs=1e-4) and case_2 == pytest.approx(36.7332, abs=1e-4)
    assert case_3 == pytest.approx(2.7332, abs=1e-4)
    radius = gaussian_radius(torch.tensor([10.0]), torch.tensor([10.0]), 0.7, "original")
    assert radius.shape == (1,) and radius.dtype == torch.float32
    assert radius.item() == pytest.approx(min(case_1, case_2, case_3), abs=1e-5)


def test_corrected_radius_of_a_10x10_box_at_overlaps_0_7_and_0_3() -> None:
    """The corrected roots: 0.8167 at o = 0.7 and 2.2614 at o = 0.3, both from the second case."""
    # o = 0.7: the same discriminants as above; roots (20 - s1) / 2, (40 - s2) / 8, (-28 + s3) / 5.6
    at_07 = [(20 - math.sqrt(400 - 4 * 30 / 1.7)) / 2, (40 - math.sqrt(1120)) / 8, (-28 + math.sqrt(1120)) / 5.6]
    assert at_07 == pytest.approx([0.9251, 0.8167, 0.9761], abs=1e-4)
    # o = 0.3: c1 = 70 / 1.3, c2 = 70 -> s2 = sqrt(1600 - 1120) = sqrt(480); a3 = 1.2, b3 = -12, c3 = -70 -> s3 = sqrt(480)
    at_03 = [(20 - math.sqrt(400 - 4 * 70 / 1.3)) / 2, (40 - math.sqrt(480)) / 8, (-12 + math.sqrt(480)) / 2.4]
    assert at_03 == pytest.approx([3.2063, 2.2614, 4.1287], abs=1e-4)
    side = torch.tensor([10.0])
    assert gaussian_radius(side, side, 0.7, "corrected").item() == pytest.approx(min(at_07), abs=1e-5)
    assert gaussian_radius(side, side, 0.3, "corrected").item() == pytest.approx(min(at_03), abs=1e-5)
    assert gaussian_radius(side, side, 0.3).item() == pytest.approx(min(at_03), abs=1e-5)  # "corrected" is the default


def test_radius_of_a_non_square_box_and_vectorised_input() -> None:
    """h = 6, w = 20 (h + w = 26, w h = 120) next to the 10x10 box, in one (M,) call per formula."""
    # corrected, o = 0.3: c1 = 84 / 1.3, c2 = 84, a3 = 1.2, b3 = -15.6, c3 = -84
    corrected = min(
        (26 - math.sqrt(676 - 4 * 84 / 1.3)) / 2,
        (52 - math.sqrt(2704 - 16 * 84)) / 8,
        (-15.6 + math.sqrt(15.6**2 + 4 * 1.2 * 84)) / 2.4,
    )
    assert corrected == pytest.approx(1.8902, abs=1e-4)  # case 2
    # original, o = 0.7: c1 = 36 / 1.7, c2 = 36, a3 = 2.8, b3 = -36.4, c3 = -36
    original = min(
        (26 + math.sqrt(676 - 4 * 36 / 1.7)) / 2,
        (52 + math.sqrt(2704 - 16 * 36)) / 2,
        (-36.4 + math.sqrt(36.4**2 + 4 * 2.8 * 36)) / 2,
    )
    assert original == pytest.approx(2.5856, abs=1e-4)  # case 3
    heights, widths = torch.tensor([6.0, 10.0, 20.0]), torch.tensor([20.0, 10.0, 6.0])
    torch.testing.assert_close(
        gaussian_radius(heights, widths, 0.3, "corrected"), torch.tensor([corrected, 2.2614, corrected]), rtol=0, atol=1e-4
    )
    torch.testing.assert_close(
        gaussian_radius(heights, widths, 0.7, "original"), torch.tensor([original, 2.7332, original]), rtol=0, atol=1e-4
    )


@pytest.mark.parametrize(
    "formula, min_overlap, message",
    [
        ("exact", 0.3, "unknown radius formula 'exact'; choose one of original, corrected"),
        ("corrected", 0.0, r"min_overlap must be in \(0, 1\), got 0.0"),
        ("corrected", 1.0, r"min_overlap must be in \(0, 1\), got 1.0"),
        ("original", -0.5, r"min_overlap must be in \(0, 1\), got -0.5"),
    ],
)
def test_unknown_formula_or_overlap_outside_0_1_raises(formula: str, min_overlap: float, message: str) -> None:
    """A bad formula name or an overlap outside the open interval (0, 1) is a ValueError saying what is allowed."""
    with pytest.raises(ValueError, match=message):
        gaussian_radius(torch.tensor([10.0]), torch.tensor([10.0]), min_overlap, formula)


# ------------------------------------------------------------------------------------------- draw_gaussians


def gaussian_value(dx: int, dy: int, radius: int) -> float:
    """exp(-(dx^2 + dy^2) / (2 sigma^2)) with sigma = (2 r + 1) / 6, the released code's Gaussian."""
    sigma = (2 * radius + 1) / 6
    return math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))


def draw_one(shape: tuple[int, int, int], x: int, y: int, radius: int, channel: int) -> torch.Tensor:
    heatmap = torch.zeros(shape)
    return draw_gaussians(heatmap, torch.tensor([[x, y]]), torch.tensor([radius]), torch.tensor([channel]))


def test_gaussian_peaks_at_the_centre_on_its_channel_and_fills_exactly_its_square() -> None:
    """Radius 2 at (x, y) = (5, 4), channel 1 of 3: peak 1, exp(-1 / 2 sigma^2) one cell away, zero beyond 2 cells."""
    heatmap = torch.zeros(3, 10, 12)
    returned = draw_gaussians(heatmap, torch.tensor([[5, 4]]), torch.tensor([2]), torch.tensor([1]))
    assert returned is heatmap  # drawn in place
    assert heatmap[1, 4, 5].item() == 1.0
    assert heatmap[1].max().item() == 1.0 and (heatmap[1] == 1.0).sum().item() == 1
    assert not heatmap[0].any() and not heatmap[2].any()
    sigma = 5 / 6
    one_step = math.exp(-1 / (2 * sigma**2))  # exp(-18 / 25) = 0.4868
    assert one_step == pytest.approx(math.exp(-0.72))
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        assert heatmap[1, 4 + dy, 5 + dx].item() == pytest.approx(one_step, rel=1e-6)
    assert heatmap[1, 6, 7].item() == pytest.approx(math.exp(-8 * 18 / 25), rel=1e-5)  # the square's corner
    expected = torch.zeros(10, 12)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            expected[4 + dy, 5 + dx] = gaussian_value(dx, dy, 2)
    torch.testing.assert_close(heatmap[1], expected, rtol=1e-6, atol=0)  # exactly 0 outside the 5x5 square
    assert torch.count_nonzero(heatmap).item() == 25


def test_gaussian_at_the_map_corner_is_clipped() -> None:
    """A radius-2 Gaussian at (0, 0) keeps the 3x3 quarter inside the map with the unclipped values."""
    heatmap = draw_one((1, 6, 6), x=0, y=0, radius=2, channel=0)
    expected = torch.zeros(1, 6, 6)
    for dy in range(3):
        for dx in range(3):
            expected[0, dy, dx] = gaussian_value(dx, dy, 2)
    torch.testing.assert_close(heatmap, expected, rtol=1e-6, atol=0)
    assert heatmap[0, 0, 0].item() == 1.0
    # The opposite corner clips the same way.
    far = draw_one((1, 6, 6), x=5, y=5, radius=2, channel=0)
    torch.testing.assert_close(far, expected.flip(-1).flip(-2), rtol=1e-6, atol=0)


def test_overlapping_gaussians_of_one_class_keep_the_elementwise_max() -> None:
    """Two overlapping same-channel Gaussians drawn together equal the max of the two drawn separately, not the sum."""
    first = draw_one((2, 12, 12), x=4, y=5, radius=3, channel=1)
    second = draw_one((2, 12, 12), x=6, y=5, radius=2, channel=1)
    together = draw_gaussians(torch.zeros(2, 12, 12), torch.tensor([[4, 5], [6, 5]]), torch.tensor([3, 2]), torch.tensor([1, 1]))
    assert ((first > 0) & (second > 0)).any()  # they do overlap
    torch.testing.assert_close(together, torch.maximum(first, second), rtol=0, atol=0)
    assert together[1, 5, 4].item() == 1.0 and together[1, 5, 6].item() == 1.0
    assert together.max().item() == 1.0  # no sum above the peak
    # An existing map is also merged by max: drawing the second into the first in place gives the same map.
    merged = draw_gaussians(first, torch.tensor([[6, 5]]), torch.tensor([2]), torch.tensor([1]))
    torch.testing.assert_close(merged, together, rtol=0, atol=0)


def test_radius_zero_is_a_single_cell() -> None:
    """Radius 0: sigma = 1/6, and the 1x1 square holds only the 1.0 at the centre."""
    heatmap = draw_one((2, 5, 5), x=3, y=1, radius=0, channel=0)
    assert heatmap[0, 1, 3].item() == 1.0
    assert torch.count_nonzero(heatmap).item() == 1


def test_no_keypoints_leave_the_map_untouched() -> None:
    """An image without objects draws nothing."""
    heatmap = torch.zeros(2, 4, 4)
    draw_gaussians(heatmap, torch.zeros((0, 2), dtype=torch.int64), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    assert not heatmap.any()


# ------------------------------------------------------------------------------------------------- peaks


def test_heatmap_peaks_zeroes_non_maximal_neighbours_and_keeps_isolated_maxima() -> None:
    """A 3x3 max-pool keeps only cells that equal their neighbourhood's maximum."""
    heatmap = torch.zeros(1, 2, 8, 8)
    heatmap[0, 0, 2, 2] = 0.9  # a peak
    heatmap[0, 0, 2, 3] = 0.6  # its smaller neighbour
    heatmap[0, 0, 3, 3] = 0.5  # a diagonal neighbour
    heatmap[0, 0, 6, 6] = 0.3  # an isolated, lower maximum
    heatmap[0, 1, 2, 4] = 0.4  # another channel: not suppressed by channel 0's peak
    peaks = heatmap_peaks(heatmap)
    expected = torch.zeros_like(heatmap)
    expected[0, 0, 2, 2], expected[0, 0, 6, 6], expected[0, 1, 2, 4] = 0.9, 0.3, 0.4
    assert torch.equal(peaks, expected)
    # A cell two steps from a higher peak is outside a 3x3 window but inside a 5x5 one.
    two_apart = torch.zeros(1, 1, 8, 8)
    two_apart[0, 0, 2, 2], two_apart[0, 0, 2, 4] = 0.9, 0.4
    assert torch.equal(heatmap_peaks(two_apart), two_apart)
    assert heatmap_peaks(two_apart, kernel=5)[0, 0, 2, 4].item() == 0.0
    assert heatmap_peaks(two_apart, kernel=5)[0, 0, 2, 2].item() == pytest.approx(0.9)


def test_top_k_peaks_returns_the_planted_peaks_in_score_order() -> None:
    """Scores, classes, rows and columns of the k best cells over all classes, per image."""
    peaks = torch.zeros(2, 3, 4, 5)
    peaks[0, 2, 1, 3] = 0.8
    peaks[0, 0, 3, 0] = 0.95
    peaks[0, 1, 0, 4] = 0.5
    peaks[1, 1, 2, 2] = 0.7
    scores, classes, ys, xs = top_k_peaks(peaks, 3)
    assert scores.shape == classes.shape == ys.shape == xs.shape == (2, 3)
    assert classes.dtype == ys.dtype == xs.dtype == torch.int64
    torch.testing.assert_close(scores[0], torch.tensor([0.95, 0.8, 0.5]), rtol=0, atol=0)
    assert list(zip(classes[0].tolist(), ys[0].tolist(), xs[0].tolist())) == [(0, 3, 0), (2, 1, 3), (1, 0, 4)]
    assert scores[1, 0].item() == pytest.approx(0.7) and (classes[1, 0].item(), ys[1, 0].item(), xs[1, 0].item()) == (1, 2, 2)
    assert (scores[1, 1:] == 0).all()


def test_top_k_peaks_clamps_k_to_the_number_of_cells() -> None:
    """k above C * H * W = 2 * 2 * 3 = 12 gives 12 results, every cell once."""
    peaks = torch.arange(12, dtype=torch.float32).reshape(1, 2, 2, 3) / 12
    scores, classes, ys, xs = top_k_peaks(peaks, 100)
    assert scores.shape == (1, 12)
    every_cell = [(channel, y, x) for channel in range(2) for y in range(2) for x in range(3)]
    assert sorted(zip(classes[0].tolist(), ys[0].tolist(), xs[0].tolist())) == every_cell
    assert (scores[0, :-1] >= scores[0, 1:]).all()
