"""CornerNet behaviour: corner pooling, corner targets, the pull/push and the full losses, decoding of planted
corner pairs, the model contract and a short overfit.

Coordinates: the output map has stride 4; a box (x1, y1, x2, y2) in input pixels has its top-left corner at cell
(floor(x1 / 4), floor(y1 / 4)) with offset (x1 / 4 - floor(x1 / 4), ...), and likewise its bottom-right corner
from (x2, y2); flat index y * W + x.
"""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from torchvision.ops import box_iou

from anchorfree.models.backbones import FrozenNorm, build_backbone
from anchorfree.models.detector import select_detections
from anchorfree.models.cornernet import (
    CornerHead,
    CornerNet,
    CornerNetConfig,
    CornerNetTargets,
    CornerPooling,
    bottom_pool,
    build_cornernet,
    cornernet_decode,
    cornernet_loss,
    cornernet_targets,
    left_pool,
    pull_push_losses,
    right_pool,
    top_pool,
)

LN2 = math.log(2.0)
MAP_SIZE = (32, 32)  # a 128 x 128 input at stride 4


def tiny_config(**options) -> CornerNetConfig:
    return CornerNetConfig(**{"fpn_channels": 16, "pool_channels": 16, "head_channels": 16, **options})


def tiny_model(num_classes: int = 3, **options) -> CornerNet:
    torch.manual_seed(0)
    return build_cornernet(num_classes, "mobilenet_v2", backbone_width=0.25, config=tiny_config(**options))


# ------------------------------------------------------------------------------------------- corner pooling


def naive_pool(x: torch.Tensor, dim: int, towards_end: bool) -> torch.Tensor:
    """The definition, one position at a time: the max over the positions from i to the end (or from 0 to i)."""
    out = torch.empty_like(x)
    length = x.shape[dim]
    for i in range(length):
        window = x.narrow(dim, i, length - i) if towards_end else x.narrow(dim, 0, i + 1)
        out.narrow(dim, i, 1).copy_(window.amax(dim, keepdim=True))
    return out


POOLS = {
    # name: (pool, dim, max over positions >= i (True) or <= i (False))
    "top": (top_pool, 2, True),
    "left": (left_pool, 3, True),
    "bottom": (bottom_pool, 2, False),
    "right": (right_pool, 3, False),
}
SIZES = [(1, 1), (1, 6), (5, 1), (2, 3), (7, 8), (16, 9)]  # 1-long, odd, even, powers of two and not


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("name", list(POOLS))
def test_pools_equal_the_naive_definition_with_many_ties_in_both_formulations(name: str, size: tuple[int, int]) -> None:
    """Values in {-1, 0, 1} (ties everywhere, negatives too): cummax and the log-step doubling both give exactly
    the loop's maxima."""
    pool, dim, towards_end = POOLS[name]
    torch.manual_seed(0)
    x = torch.randint(-1, 2, (2, 3, *size)).float()
    expected = naive_pool(x, dim, towards_end)
    assert torch.equal(pool(x), expected)
    assert torch.equal(pool(x, exportable=True), expected)


def test_pools_on_a_hand_written_column_and_row() -> None:
    """A column (3, 1, 4, 1, 5) read downwards: top pool (3, 1, 4, 1, 5) -> (5, 5, 5, 5, 5); bottom pool -> (3, 3, 4, 4, 5)."""
    column = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0]).reshape(1, 1, 5, 1)
    row = column.reshape(1, 1, 1, 5)
    for exportable in (False, True):
        assert top_pool(column, exportable).flatten().tolist() == [5.0, 5.0, 5.0, 5.0, 5.0]
        assert bottom_pool(column, exportable).flatten().tolist() == [3.0, 3.0, 4.0, 4.0, 5.0]
        assert left_pool(row, exportable).flatten().tolist() == [5.0, 5.0, 5.0, 5.0, 5.0]
        assert right_pool(row, exportable).flatten().tolist() == [3.0, 3.0, 4.0, 4.0, 5.0]
    descending = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]).reshape(1, 1, 5, 1)
    assert top_pool(descending, True).flatten().tolist() == [5.0, 4.0, 3.0, 2.0, 1.0]  # itself included


def tie_free(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Distinct double values (a shuffled range), so every max has a single argmax and gradients are unique."""
    generator = torch.Generator().manual_seed(seed)
    count = math.prod(shape)
    return (torch.randperm(count, generator=generator).double() / count - 0.5).reshape(shape)


@pytest.mark.parametrize("exportable", [False, True])
@pytest.mark.parametrize("name", list(POOLS))
def test_pool_gradients_pass_gradcheck_on_tie_free_inputs(name: str, exportable: bool) -> None:
    pool = POOLS[name][0]
    x = tie_free((1, 2, 5, 4), seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda inputs: pool(inputs, exportable), (x,))


@pytest.mark.parametrize("name", list(POOLS))
def test_pool_gradients_of_both_formulations_are_equal_on_tie_free_inputs(name: str) -> None:
    """Each output's gradient goes to its argmax in both formulations (the doubling's maxima never tie here): the
    same cells receive gradient, the same amounts up to the order of summation."""
    pool = POOLS[name][0]
    weights = tie_free((2, 3, 7, 6), seed=2)
    gradients = []
    for exportable in (False, True):
        x = tie_free((2, 3, 7, 6), seed=3).requires_grad_()
        (pool(x, exportable) * weights).sum().backward()
        gradients.append(x.grad)
    assert torch.equal(gradients[0] != 0, gradients[1] != 0)
    torch.testing.assert_close(gradients[0], gradients[1], rtol=0, atol=1e-12)
    assert gradients[0].abs().sum() > 0


@pytest.mark.parametrize("corner", ["top_left", "bottom_right"])
def test_corner_pooling_keeps_the_shape_and_the_exportable_flag_keeps_the_values(corner: str) -> None:
    """(N, C, H, W) -> (N, C, H, W); flipping `exportable` on the same weights changes nothing in the output."""
    torch.manual_seed(0)
    module = CornerPooling(8, 4, corner).eval()
    features = torch.randn(2, 8, 11, 14)
    with torch.no_grad():
        plain = module(features)
        module.exportable = True
        exportable = module(features)
    assert plain.shape == features.shape
    assert torch.equal(plain, exportable)
    # A separate exportable module given the same weights agrees as well.
    twin = CornerPooling(8, 4, corner, exportable=True).eval()
    twin.load_state_dict(module.state_dict())
    with torch.no_grad():
        assert torch.equal(twin(features), plain)


@pytest.mark.parametrize("corner", ["top_left", "bottom_right"])
def test_corner_pooling_looks_towards_the_object(corner: str) -> None:
    """A bright spot at the centre (12, 12) of a 25 x 25 map reaches, for top-left pooling, the cells above it
    (column pooling looks down) and to its left (row pooling looks right), but not those far below or right;
    bottom-right pooling is the mirror. Far from the spot only the pooled branches (no conv) carry it."""
    torch.manual_seed(0)
    module = CornerPooling(8, 8, corner).eval()
    features = torch.zeros(1, 8, 25, 25)
    spotted = features.clone()
    spotted[0, :, 12, 12] = 50.0
    with torch.no_grad():
        changed = (module(spotted) - module(features)).abs().sum(1)[0] > 0  # (25, 25)
    above, left, below, right = changed[0, 12].item(), changed[12, 0].item(), changed[24, 12].item(), changed[12, 24].item()
    if corner == "top_left":
        assert (above, left, below, right) == (True, True, False, False)
    else:
        assert (above, left, below, right) == (False, False, True, True)
    assert not changed[0, 0] and not changed[24, 24]  # off both the spot's row and column


def test_corner_pooling_rejects_an_unknown_corner() -> None:
    with pytest.raises(ValueError, match="corner must be 'top_left' or 'bottom_right', got 'top_right'"):
        CornerPooling(8, 4, "top_right")


# --------------------------------------------------------------------------------------------------- targets


def corrected_radius(height: float, width: float, overlap: float = 0.3) -> float:
    """The smallest root of CornerNet's three quadratics (corrected formula), written out from the paper's cases."""
    b1, c1 = height + width, width * height * (1 - overlap) / (1 + overlap)
    r1 = (b1 - math.sqrt(b1**2 - 4 * c1)) / 2
    b2, c2 = 2 * (height + width), (1 - overlap) * width * height
    r2 = (b2 - math.sqrt(b2**2 - 16 * c2)) / 8
    a3, b3, c3 = 4 * overlap, -2 * overlap * (height + width), (overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / (2 * a3)
    return min(r1, r2, r3)


# Box A, class 0: cells (1.25, 3.5, 10.25, 15.5). Top-left cell (x, y) = (1, 3), offset (0.25, 0.5), index 97;
# bottom-right cell (10, 15), offset (0.25, 0.5), index 490. Size (w, h) = (9, 12) cells.
BOX_A = [5.0, 14.0, 41.0, 62.0]
# Box B, class 1: cells (15, 7.5, 29.5, 27.5). Top-left (15, 7), offset (0, 0.5), index 239; bottom-right
# (29, 27), offset (0.5, 0.5), index 893. Size (14.5, 20) -> ceil (15, 20).
BOX_B = [60.0, 30.0, 118.0, 110.0]
RADIUS_A = math.floor(corrected_radius(12, 9))  # case 2: (42 - sqrt(42^2 - 16 * 0.7 * 108)) / 8 = 2.3068
RADIUS_B = math.floor(corrected_radius(20, 15))  # case 2: (70 - sqrt(70^2 - 16 * 0.7 * 300)) / 8 = 3.8446


def targets_for(boxes: list[list[float]], labels: list[int], num_classes: int = 2, **options) -> CornerNetTargets:
    boxes_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return cornernet_targets(boxes_tensor, torch.tensor(labels, dtype=torch.int64), num_classes, MAP_SIZE, stride=4, **options)


def assert_same_targets(actual: CornerNetTargets, expected: CornerNetTargets) -> None:
    for name in ("top_left_heatmap", "bottom_right_heatmap", "top_left_indices", "bottom_right_indices", "top_left_offsets", "bottom_right_offsets"):
        assert torch.equal(getattr(actual, name), getattr(expected, name)), name


def test_hand_computed_radii() -> None:
    """Case 2 is the smallest for both boxes, and the two radii differ, so the extents below tell the boxes apart."""
    assert corrected_radius(12, 9) == pytest.approx(2.3068, abs=1e-4) and RADIUS_A == 2
    assert corrected_radius(20, 15) == pytest.approx(3.8446, abs=1e-4) and RADIUS_B == 3


def test_two_box_scene_corners_extents_indices_offsets_and_pairing() -> None:
    """Each corner: 1.0 exactly at its floored cell on its class channel of its own heatmap, a row of 2r + 1
    non-zero cells (clipped at the map's left and right borders), its flat index and its offset."""
    targets = targets_for([BOX_A, BOX_B], [0, 1])
    top_left, bottom_right = targets.top_left_heatmap, targets.bottom_right_heatmap
    assert top_left.shape == bottom_right.shape == (2, 32, 32) and top_left.dtype == torch.float32

    # (heatmap, channel, cell (x, y), radius, the expected non-zero columns on the corner's row)
    corners = [
        (top_left, 0, (1, 3), RADIUS_A, list(range(0, 4))),  # 1 - 2 < 0: clipped at the left border, 4 cells
        (bottom_right, 0, (10, 15), RADIUS_A, list(range(8, 13))),  # 5 = 2r + 1 cells
        (top_left, 1, (15, 7), RADIUS_B, list(range(12, 19))),  # 7 cells
        (bottom_right, 1, (29, 27), RADIUS_B, list(range(26, 32))),  # 29 + 3 > 31: clipped at the right border, 6 cells
    ]
    for heatmap, channel, (x, y), radius, columns in corners:
        assert heatmap[channel, y, x].item() == 1.0
        assert heatmap[1 - channel, y, x].item() == 0.0
        assert torch.nonzero(heatmap[channel, y]).flatten().tolist() == columns
        assert torch.nonzero(heatmap[channel, :, x]).flatten().tolist() == list(range(y - radius, y + radius + 1))
        sigma = (2 * radius + 1) / 6
        assert heatmap[channel, y, columns[-1]].item() == pytest.approx(math.exp(-((columns[-1] - x) ** 2) / (2 * sigma**2)), rel=1e-6)
    for heatmap in (top_left, bottom_right):
        assert (heatmap == 1.0).sum().item() == 2  # one peak per box and corner type
    # Counting the clipped squares: A's top-left 4 x 5, B's bottom-right 6 x 7.
    assert torch.count_nonzero(top_left[0]).item() == 4 * 5 and torch.count_nonzero(top_left[1]).item() == 7 * 7
    assert torch.count_nonzero(bottom_right[0]).item() == 5 * 5 and torch.count_nonzero(bottom_right[1]).item() == 6 * 7

    assert targets.top_left_indices.dtype == targets.bottom_right_indices.dtype == torch.int64
    assert targets.top_left_indices.tolist() == [3 * 32 + 1, 7 * 32 + 15]
    assert targets.bottom_right_indices.tolist() == [15 * 32 + 10, 27 * 32 + 29]
    torch.testing.assert_close(targets.top_left_offsets, torch.tensor([[0.25, 0.5], [0.0, 0.5]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(targets.bottom_right_offsets, torch.tensor([[0.25, 0.5], [0.5, 0.5]]), rtol=0, atol=1e-6)

    # Pairing: entry k of every list is object k, so reversing the boxes reverses all four lists together.
    reversed_targets = targets_for([BOX_B, BOX_A], [1, 0])
    assert reversed_targets.top_left_indices.tolist() == targets.top_left_indices.flip(0).tolist()
    assert reversed_targets.bottom_right_indices.tolist() == targets.bottom_right_indices.flip(0).tolist()
    assert torch.equal(reversed_targets.top_left_offsets, targets.top_left_offsets.flip(0))
    assert torch.equal(reversed_targets.bottom_right_offsets, targets.bottom_right_offsets.flip(0))
    assert torch.equal(reversed_targets.top_left_heatmap, top_left) and torch.equal(reversed_targets.bottom_right_heatmap, bottom_right)


def test_a_box_on_the_far_border_keeps_its_bottom_right_in_the_last_cell_with_offset_one() -> None:
    """(100, 80, 128, 128) on a 128 x 128 input: bottom-right (32, 32) cells is cell (31, 31) with offset (1, 1)."""
    targets = targets_for([[100.0, 80.0, 128.0, 128.0]], [1])
    assert targets.top_left_indices.tolist() == [20 * 32 + 25]
    assert targets.bottom_right_indices.tolist() == [31 * 32 + 31]
    torch.testing.assert_close(targets.top_left_offsets, torch.tensor([[0.0, 0.0]]), rtol=0, atol=0)
    torch.testing.assert_close(targets.bottom_right_offsets, torch.tensor([[1.0, 1.0]]), rtol=0, atol=0)
    assert targets.bottom_right_heatmap[1, 31, 31].item() == 1.0
    assert targets.top_left_heatmap[1, 20, 25].item() == 1.0


def test_a_box_crossing_the_top_left_border_has_its_corner_clipped_to_the_map() -> None:
    """(-8, -12, 20, 24): the top-left is clipped to cell (0, 0), offset 0; the bottom-right (5, 6) is unchanged."""
    targets = targets_for([[-8.0, -12.0, 20.0, 24.0]], [0])
    assert targets.top_left_indices.tolist() == [0] and targets.bottom_right_indices.tolist() == [6 * 32 + 5]
    torch.testing.assert_close(targets.top_left_offsets, torch.tensor([[0.0, 0.0]]), rtol=0, atol=0)
    assert targets.top_left_heatmap[0, 0, 0].item() == 1.0


def test_boxes_wholly_off_the_map_are_dropped_and_the_others_keep_their_targets() -> None:
    """Right of the map (x1 = 32.5 cells), below it (y1 = 33 cells), above-left of it: no target; A and B unchanged."""
    off_right = [130.0, 10.0, 160.0, 40.0]
    off_below = [10.0, 132.0, 40.0, 150.0]
    off_top_left = [-40.0, -40.0, -4.0, -4.0]
    with_outsiders = targets_for([off_right, BOX_A, off_below, BOX_B, off_top_left], [1, 0, 0, 1, 1])
    assert_same_targets(with_outsiders, targets_for([BOX_A, BOX_B], [0, 1]))
    assert len(with_outsiders.top_left_indices) == len(with_outsiders.bottom_right_offsets) == 2


def test_crowd_boxes_get_no_target() -> None:
    with_crowd = targets_for([BOX_A, BOX_B], [0, 1], iscrowd=torch.tensor([False, True]))
    assert_same_targets(with_crowd, targets_for([BOX_A], [0]))
    everything_crowd = targets_for([BOX_A, BOX_B], [0, 1], iscrowd=torch.tensor([True, True]))
    assert not everything_crowd.top_left_heatmap.any() and not everything_crowd.bottom_right_heatmap.any()
    assert everything_crowd.top_left_indices.shape == (0,) and everything_crowd.bottom_right_offsets.shape == (0, 2)


def test_more_boxes_than_max_objects_warn_and_keep_exactly_the_first() -> None:
    boxes = [[8.0 + 24 * i, 8.0, 24.0 + 24 * i, 24.0] for i in range(5)]
    labels = [0, 1, 0, 1, 0]
    with pytest.warns(UserWarning, match="an image has 5 objects; keeping the first 3"):
        capped = targets_for(boxes, labels, max_objects=3)
    assert len(capped.top_left_indices) == len(capped.bottom_right_indices) == 3
    assert len(capped.top_left_offsets) == len(capped.bottom_right_offsets) == 3
    assert_same_targets(capped, targets_for(boxes[:3], labels[:3]))


def test_no_boxes_give_empty_targets() -> None:
    targets = targets_for([], [])
    assert targets.top_left_heatmap.shape == (2, 32, 32) and not targets.top_left_heatmap.any() and not targets.bottom_right_heatmap.any()
    assert targets.top_left_indices.shape == targets.bottom_right_indices.shape == (0,)
    assert targets.top_left_offsets.shape == targets.bottom_right_offsets.shape == (0, 2)


# ---------------------------------------------------------------------------------------- pull / push losses


def test_one_object_pull_by_hand_push_exactly_zero_and_finite_gradients() -> None:
    """tl 0.3, br 1.1: e = 0.7, pull = 0.4^2 + 0.4^2 = 0.32; push 0 (no pair); d pull / d tl = tl - br = -0.8."""
    top_left = torch.tensor([0.3], requires_grad=True)
    bottom_right = torch.tensor([1.1], requires_grad=True)
    pull, push = pull_push_losses(top_left, bottom_right)
    assert pull.item() == pytest.approx(0.32, rel=1e-6)
    assert push.item() == 0.0
    (pull + push).backward()
    assert top_left.grad.item() == pytest.approx(-0.8, rel=1e-6) and bottom_right.grad.item() == pytest.approx(0.8, rel=1e-6)
    # push alone: a gradient of exactly 0, not NaN.
    top_left.grad = None
    _, push = pull_push_losses(top_left, bottom_right)
    push.backward()
    assert top_left.grad.item() == 0.0


def test_zero_objects_give_zero_pull_and_push() -> None:
    pull, push = pull_push_losses(torch.zeros(0, requires_grad=True), torch.zeros(0, requires_grad=True))
    assert pull.item() == 0.0 and push.item() == 0.0
    assert pull.dtype == push.dtype == torch.float32


@pytest.mark.parametrize(
    "top_left, bottom_right, pull, push",
    [
        # e = (0.2, 1.1): pull = (0.04 + 0.04 + 0.01 + 0.01) / 2 = 0.05; push = 2 * max(0, 1 - 0.9) / (2 * 1) = 0.1.
        ([0.0, 1.0], [0.4, 1.2], 0.05, 0.1),
        # e = (0, 0.25): pull 0 (both pairs agree); push = 2 * 0.75 / 2.
        ([0.0, 0.25], [0.0, 0.25], 0.0, 0.75),
        # e = (0.1, 2.5): |e1 - e2| = 2.4 > 1, push 0; pull = (0.01 + 0.01 + 0.25 + 0.25) / 2 = 0.26.
        ([0.0, 2.0], [0.2, 3.0], 0.26, 0.0),
        # e = (0.1, 0.5, 2.2): pull = (0.02 + 0 + 0.08) / 3; gaps 0.4, 2.1, 1.7 -> push = 2 * 0.6 / (3 * 2) = 0.2.
        ([0.0, 0.5, 2.0], [0.2, 0.5, 2.4], 0.1 / 3, 0.2),
    ],
)
def test_pull_and_push_by_hand(top_left: list[float], bottom_right: list[float], pull: float, push: float) -> None:
    actual_pull, actual_push = pull_push_losses(torch.tensor(top_left), torch.tensor(bottom_right))
    assert actual_pull.item() == pytest.approx(pull, abs=1e-6)
    assert actual_push.item() == pytest.approx(push, abs=1e-6)


def test_push_margin() -> None:
    """Margin 2, e = (0.1, 0.5, 2.2): gaps 1.6, max(0, 2 - 2.1) = 0, 0.3 -> push = 2 * 1.9 / 6."""
    _, push = pull_push_losses(torch.tensor([0.0, 0.5, 2.0]), torch.tensor([0.2, 0.5, 2.4]), margin=2.0)
    assert push.item() == pytest.approx(2 * 1.9 / 6, abs=1e-6)


# ------------------------------------------------------------------------------------------------------ loss


def zero_outputs(batch: int = 2, num_classes: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.zeros(batch, num_classes, 32, 32), torch.zeros(batch, 1, 32, 32), torch.zeros(batch, 2, 32, 32)


def test_all_empty_batch_gives_positive_heatmap_loss_and_exact_zeros_with_gradients() -> None:
    """No object: heatmap > 0 and finite; pull, push and offset exactly 0.0; every branch of both heads gets a
    (zero, finite) gradient, so that an all-empty batch does not leave parameters without .grad."""
    torch.manual_seed(0)
    heads = [CornerHead(8, 2, 4, 8, "top_left"), CornerHead(8, 2, 4, 8, "bottom_right")]
    features = torch.randn(2, 8, 16, 16)
    empty = cornernet_targets(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), 2, (16, 16))
    losses = cornernet_loss(heads[0](features), heads[1](features), [empty, empty], CornerNetConfig())
    assert set(losses) == {"heatmap", "pull", "push", "offset"}
    assert torch.isfinite(losses["heatmap"]) and losses["heatmap"].item() > 0
    assert losses["pull"].item() == 0.0 and losses["push"].item() == 0.0 and losses["offset"].item() == 0.0
    sum(losses.values()).backward()
    for head in heads:
        for branch in (head.embedding, head.offset, head.heatmap, head.pooling):
            for parameter in branch.parameters():
                assert parameter.grad is not None and torch.isfinite(parameter.grad).all()


def test_all_empty_batch_with_zero_logits_hand_computed() -> None:
    """p = 0.5 everywhere, no positive: each of the 2 x 2 x 32 x 32 cells of each heatmap adds 0.25 ln 2."""
    empty = targets_for([], [])
    losses = cornernet_loss(zero_outputs(), zero_outputs(), [empty, empty], CornerNetConfig())
    assert losses["heatmap"].item() == pytest.approx(2 * (2 * 2 * 32 * 32) * 0.25 * LN2, rel=1e-6)


def planted_loss_outputs(box_image: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Zero logits and offsets; embeddings 0.3 at box A's top-left cell and 1.1 at its bottom-right, in `box_image`."""
    top_left, bottom_right = zero_outputs(), zero_outputs()
    top_left[1][box_image, 0, 3, 1] = 0.3
    bottom_right[1][box_image, 0, 15, 10] = 1.1
    return top_left, bottom_right


@pytest.mark.parametrize("box_image", [0, 1])
def test_half_empty_batch_losses_hand_computed_and_weighted(box_image: int) -> None:
    """One image holds box A, the other nothing: finite losses; heatmap, pull, push and offset by hand; each
    weight scales its own term only."""
    box_targets, empty = targets_for([BOX_A], [0]), targets_for([], [])
    targets = [box_targets, empty] if box_image == 0 else [empty, box_targets]
    top_left, bottom_right = planted_loss_outputs(box_image)
    unit = CornerNetConfig(pull_weight=1.0, push_weight=1.0, offset_weight=1.0)
    losses = cornernet_loss(top_left, bottom_right, targets, unit)
    for value in losses.values():
        assert value.dtype == torch.float32 and torch.isfinite(value)
    # Heatmap at p = 0.5, per corner type: (positive + sum of (1 - y)^4 over the negatives) * 0.25 ln 2 / 1 positive.
    expected_heatmap = 0.0
    for heatmap in (box_targets.top_left_heatmap, box_targets.bottom_right_heatmap):
        negative_weight = ((1 - heatmap[heatmap < 1]) ** 4).sum().item() + 2 * 32 * 32  # + the empty image's cells
        expected_heatmap += 0.25 * LN2 * (1 + negative_weight)
    assert losses["heatmap"].item() == pytest.approx(expected_heatmap, rel=1e-5)
    # Pull: 0.32 for the box image, 0 for the empty one, averaged over the 2 images. Push: one object, 0.
    assert losses["pull"].item() == pytest.approx(0.32 / 2, rel=1e-6)
    assert losses["push"].item() == 0.0
    # Offset: smooth L1 (0.5 x^2 below 1) of (0.25, 0.5) for both corners against 0, over 1 object.
    assert losses["offset"].item() == pytest.approx(2 * 0.5 * (0.25**2 + 0.5**2), rel=1e-6)

    weighted = cornernet_loss(top_left, bottom_right, targets, CornerNetConfig(pull_weight=0.25, push_weight=3.0, offset_weight=2.0))
    assert weighted["heatmap"].item() == losses["heatmap"].item()
    assert weighted["pull"].item() == pytest.approx(0.25 * 0.16, rel=1e-6)
    assert weighted["offset"].item() == pytest.approx(2.0 * 0.3125, rel=1e-6)
    assert weighted["push"].item() == 0.0


def test_push_weight_scales_push() -> None:
    """Two objects whose mean embeddings are 0 and 0.25: push = 0.75 per image, times push_weight."""
    targets = targets_for([BOX_A, BOX_B], [0, 1])
    top_left, bottom_right = zero_outputs(1), zero_outputs(1)
    top_left[1][0, 0, 7, 15] = 0.25  # box B's corners
    bottom_right[1][0, 0, 27, 29] = 0.25
    for push_weight in (1.0, 0.1, 4.0):
        losses = cornernet_loss(top_left, bottom_right, [targets], CornerNetConfig(push_weight=push_weight))
        assert losses["push"].item() == pytest.approx(push_weight * 0.75, rel=1e-6)
        assert losses["pull"].item() == 0.0


# ---------------------------------------------------------------------------------------------------- decode

# (image, class, top-left cell (x, y), top-left offset, bottom-right cell, bottom-right offset, scores (tl, br),
#  embeddings (tl, br)). Background: probability 1e-3, embeddings +50 (top-left) and -50 (bottom-right), so that
# no background corner ever pairs with anything.
DECODE_PLANTS = [
    # image 0, two good pairs: boxes (3.25, 4.5, 12.5, 14.75) * 4 and (16, 10, 28.5, 26.25) * 4.
    (0, 0, (3, 4), (0.25, 0.5), (12, 14), (0.5, 0.75), (0.9, 0.7), (1.0, 1.2)),
    (0, 1, (16, 10), (0.0, 0.0), (28, 26), (0.5, 0.25), (0.6, 0.8), (-2.0, -2.3)),
    # image 1, three refused pairs: embeddings 0.6 apart; inverted (bottom-right above-left); different classes.
    (1, 0, (5, 5), (0.0, 0.0), (20, 20), (0.0, 0.0), (0.9, 0.9), (0.0, 0.6)),
    (1, 1, (25, 25), (0.0, 0.0), (10, 12), (0.0, 0.0), (0.8, 0.8), (3.0, 3.0)),
    (1, None, (2, 28), (0.0, 0.0), (8, 30), (0.0, 0.0), (0.7, 0.7), (6.0, 6.0)),  # tl class 0, br class 1
]


def planted_corner_outputs(batch: int = 2) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    outputs = []
    for corner in range(2):
        probabilities = torch.full((batch, 2, 32, 32), 1e-3)
        embeddings = torch.full((batch, 1, 32, 32), 50.0 if corner == 0 else -50.0)
        offsets = torch.zeros(batch, 2, 32, 32)
        for image, label, *cells_offsets, scores, corner_embeddings in DECODE_PLANTS:
            if image >= batch:
                continue
            (x, y), offset = cells_offsets[2 * corner], cells_offsets[2 * corner + 1]
            channel = label if label is not None else corner  # the mixed pair: tl on class 0, br on class 1
            probabilities[image, channel, y, x] = scores[corner]
            embeddings[image, 0, y, x] = corner_embeddings[corner]
            offsets[image, :, y, x] = torch.tensor(offset)
        outputs.append((torch.logit(probabilities), embeddings, offsets))
    return outputs[0], outputs[1]


def test_decode_recovers_the_planted_pairs() -> None:
    """Image 0: the two planted boxes (cells + offsets, x 4) with the mean of their corner scores and their class,
    first by score; no other pair is valid. Shapes are static: (N, D, 4) with D = max_detections."""
    top_left, bottom_right = planted_corner_outputs()
    boxes, scores, labels = cornernet_decode(top_left, bottom_right, stride=4, corners_top_k=100, max_detections=100)
    assert boxes.shape == (2, 100, 4) and scores.shape == (2, 100) and labels.shape == (2, 100)
    assert boxes.dtype == scores.dtype == torch.float32 and labels.dtype == torch.int64

    valid = scores[0] > -1
    assert valid.sum().item() == 2 and valid[:2].all()  # sorted: the valid pairs first
    torch.testing.assert_close(scores[0, :2], torch.tensor([(0.9 + 0.7) / 2, (0.6 + 0.8) / 2]), rtol=0, atol=1e-6)
    assert labels[0, :2].tolist() == [0, 1]
    expected = torch.tensor([[13.0, 18.0, 50.0, 59.0], [64.0, 40.0, 114.0, 105.0]])
    torch.testing.assert_close(boxes[0, :2], expected, rtol=0, atol=1e-4)
    assert (scores[0, 2:] == -1).all()


def test_decode_refuses_mismatched_embeddings_inverted_corners_and_mixed_classes() -> None:
    """Image 1 has three corner pairs, each refused for one reason: every score is -1."""
    top_left, bottom_right = planted_corner_outputs()
    _, scores, _ = cornernet_decode(top_left, bottom_right)
    assert (scores[1] == -1).all()
    # The embeddings alone refused the first pair: a looser threshold accepts it, box (5, 5, 20, 20) * 4.
    boxes, scores, labels = cornernet_decode(top_left, bottom_right, embedding_threshold=1.0)
    assert (scores[1] > -1).sum().item() == 1
    assert scores[1, 0].item() == pytest.approx(0.9, abs=1e-6) and labels[1, 0].item() == 0
    torch.testing.assert_close(boxes[1, 0], torch.tensor([20.0, 20.0, 80.0, 80.0]), rtol=0, atol=1e-4)


def test_decode_counts_pairs_of_the_top_k_corners() -> None:
    """K = 3 corners of each type -> 9 pairs; max_detections above K * K gives K * K."""
    top_left, bottom_right = planted_corner_outputs(batch=1)
    boxes, scores, labels = cornernet_decode(top_left, bottom_right, corners_top_k=3, max_detections=50)
    assert boxes.shape == (1, 9, 4) and scores.shape == labels.shape == (1, 9)
    assert (scores[0] > -1).sum().item() == 2
    boxes, scores, _ = cornernet_decode(top_left, bottom_right, corners_top_k=100, max_detections=1)
    assert boxes.shape == (1, 1, 4) and scores[0, 0].item() == pytest.approx(0.8, abs=1e-6)


# ----------------------------------------------------------------------------------------------------- model


def sample_batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 96)
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[10.0, 20.0, 60.0, 50.0], [50.0, 10.0, 90.0, 60.0], [0.0, 0.0, 30.0, 30.0]]),
            "labels": torch.tensor([0, 2, 2]),
            "iscrowd": torch.tensor([False, False, True]),
        },
    ]
    return images, targets


def test_train_mode_returns_four_finite_scalar_losses() -> None:
    """Training: {"heatmap", "pull", "push", "offset"} float32 scalars with gradients reaching both heads."""
    model = tiny_model(3).train()
    assert model.stride == 4
    images, targets = sample_batch()
    losses = model(images, targets)
    assert set(losses) == {"heatmap", "pull", "push", "offset"}
    for name, value in losses.items():
        assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value), name
        assert value.requires_grad, name
    assert losses["heatmap"].item() > 0 and losses["offset"].item() > 0
    sum(losses.values()).backward()
    for head in (model.top_left_head, model.bottom_right_head):
        assert all(parameter.grad is not None for parameter in head.parameters())


def test_head_outputs_are_a_quarter_of_the_input() -> None:
    model = tiny_model(3).eval()
    with torch.no_grad():
        top_left, bottom_right = model.head_outputs(torch.zeros(2, 3, 64, 96))
    for heatmap_logits, embeddings, offsets in (top_left, bottom_right):
        assert heatmap_logits.shape == (2, 3, 16, 24) and embeddings.shape == (2, 1, 16, 24) and offsets.shape == (2, 2, 16, 24)


def test_eval_mode_returns_detections_clipped_to_each_image() -> None:
    """Eval: one {"boxes", "scores", "labels"} per image, sorted, valid pairs only, inside each image's own size."""
    model = tiny_model(3, score_threshold=0.0, max_detections=20).eval()
    torch.manual_seed(2)
    images = [torch.randn(3, 64, 64), torch.randn(3, 48, 80)]  # padded to 64 x 96 inside
    with torch.no_grad():
        detections = model(images)
    assert isinstance(detections, list) and len(detections) == 2
    for detection, (height, width) in zip(detections, [(64, 64), (48, 80)]):
        assert set(detection) == {"boxes", "scores", "labels"}
        count = len(detection["scores"])
        assert 0 < count <= 20
        assert detection["boxes"].shape == (count, 4) and detection["labels"].shape == (count,)
        assert detection["labels"].dtype == torch.int64 and ((detection["labels"] >= 0) & (detection["labels"] < 3)).all()
        assert (detection["scores"] > 0).all() and (detection["scores"] <= 1).all()
        assert (detection["scores"][:-1] >= detection["scores"][1:]).all()
        boxes = detection["boxes"]
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= width).all() and (boxes[:, [1, 3]] <= height).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


def test_exportable_pooling_model_gives_the_same_detections() -> None:
    """The log-step pools are an exact rewrite: the same weights give the same detections, bit for bit."""
    plain = tiny_model(3, score_threshold=0.0, max_detections=30).eval()
    exportable = tiny_model(3, score_threshold=0.0, max_detections=30, exportable_pooling=True).eval()
    exportable.load_state_dict(plain.state_dict())
    assert exportable.top_left_head.pooling.exportable and not plain.top_left_head.pooling.exportable
    torch.manual_seed(3)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, actual = plain(images), exportable(images)
    assert len(expected[0]["scores"]) > 0
    for left, right in zip(expected, actual):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(left[key], right[key]), key


class PlantedCornerHead(torch.nn.Module):
    """Stands in for a corner head on a 32 x 32 map with 2 classes. Three objects (cells, no offsets):
    A class 0 (10, 10)-(20, 20), corner scores 0.9, embedding 0; B class 0 (12, 10)-(22, 20), 0.8, embedding 2
    (IoU with A 80 / 120 = 0.667); C class 1 (11, 11)-(21, 21), 0.7, embedding 4 (overlaps A, another class)."""

    OBJECTS = [(0, (10, 10), (20, 20), 0.9, 0.0), (0, (12, 10), (22, 20), 0.8, 2.0), (1, (11, 11), (21, 21), 0.7, 4.0)]

    def __init__(self, corner: int) -> None:
        super().__init__()
        self.corner = corner  # 0: top-left, 1: bottom-right

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = features.shape[0]
        probabilities = torch.full((batch, 2, 32, 32), 1e-3)
        embeddings = torch.full((batch, 1, 32, 32), 50.0 if self.corner == 0 else -50.0)
        for label, top_left, bottom_right, score, embedding in self.OBJECTS:
            x, y = (top_left, bottom_right)[self.corner]
            probabilities[:, label, y, x] = score
            embeddings[:, 0, y, x] = embedding
        return torch.logit(probabilities), embeddings, torch.zeros(batch, 2, 32, 32)


@pytest.mark.parametrize("nms_threshold, expected_scores", [(0.0, [0.9, 0.8, 0.7]), (0.6, [0.9, 0.7]), (0.7, [0.9, 0.8, 0.7])])
def test_optional_nms_removes_an_overlapping_duplicate_of_the_same_class(nms_threshold: float, expected_scores: list[float]) -> None:
    """nms_threshold 0: every valid pair; 0.6: B (IoU 0.667 with A, same class) goes, C (another class) stays."""
    model = tiny_model(2, score_threshold=0.1, nms_threshold=nms_threshold).eval()
    model.top_left_head, model.bottom_right_head = PlantedCornerHead(0), PlantedCornerHead(1)
    with torch.no_grad():
        (detection,) = model(torch.zeros(1, 3, 128, 128))
    torch.testing.assert_close(detection["scores"], torch.tensor(expected_scores), rtol=0, atol=1e-5)
    torch.testing.assert_close(detection["boxes"][0], torch.tensor([40.0, 40.0, 80.0, 80.0]))  # A: (10, 10, 20, 20) x 4
    assert detection["labels"].tolist() == ([0, 0, 1] if len(expected_scores) == 3 else [0, 1])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"neck": "hourglass"}, "unknown CornerNet neck 'hourglass'; choose one of deconv, fpn"),
        ({"radius_formula": "exact"}, "unknown radius formula 'exact'; choose one of original, corrected"),
    ],
)
def test_bad_config_raises_value_error_naming_the_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_cornernet(3, "mobilenet_v2", backbone_width=0.25, config=tiny_config(**options))


def test_labels_outside_the_classes_raise_value_error() -> None:
    model = tiny_model(3).train()
    with pytest.raises(ValueError, match=r"label 3 outside \[0, 3\)"):
        model(torch.randn(1, 3, 64, 64), [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([3])}])


# ---------------------------------------------------------------------------------------------------- overfit


def rectangles_batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two dark 128 x 128 images with filled rectangles, one colour per class: two boxes of the same class in the
    first (so only the embeddings can refuse the cross pairs), one box in the second."""
    images = torch.full((2, 3, 128, 128), -1.0)
    targets = [
        {"boxes": torch.tensor([[16.0, 20.0, 64.0, 60.0], [72.0, 64.0, 112.0, 120.0]]), "labels": torch.tensor([0, 0])},
        {"boxes": torch.tensor([[40.0, 24.0, 96.0, 80.0]]), "labels": torch.tensor([2])},
    ]
    colours = {0: torch.tensor([2.0, -1.0, -1.0]), 2: torch.tensor([-1.0, -1.0, 2.0])}
    for image, target in zip(images, targets):
        for (x1, y1, x2, y2), label in zip(target["boxes"].long().tolist(), target["labels"].tolist()):
            image[:, y1:y2, x1:x2] = colours[label][:, None, None]
    return images, targets


@pytest.mark.slow
def test_overfits_one_batch_and_pairs_the_right_corners(overfit: Callable[..., list[float]]) -> None:
    """100 Adam steps on one batch: the loss falls below 10% of its start, and in eval the best detections are the
    ground-truth boxes with their labels; in the first image both same-class boxes come before the cross pairs
    (tl of one, br of the other, IoU < 0.25 with either), which only the push loss keeps apart.

    The backbone's batch norm is frozen (as for the presets' pretrained backbones); the corner modules' batch norm
    trains, and after 100 steps its running statistics have caught up (after 60 they may not have, on some seeds).
    """
    torch.manual_seed(0)
    model = CornerNet(FrozenNorm(build_backbone("mobilenet_v2", False, 0.25)), 3, tiny_config(score_threshold=0.0))
    images, targets = rectangles_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    totals = overfit(model, images, targets, optimizer, 100)
    assert all(math.isfinite(value) for value in totals)
    assert totals[-1] < 0.1 * totals[0], f"loss went from {totals[0]:.3f} to {totals[-1]:.3f}"

    model.eval()
    with torch.no_grad():
        detections = model(images)
    for detection, target in zip(detections, targets):
        count = len(target["boxes"])
        assert len(detection["boxes"]) >= count
        iou = box_iou(detection["boxes"][:count], target["boxes"])  # (count best detections, GT)
        matched = iou.argmax(1)
        assert sorted(matched.tolist()) == list(range(count)), iou  # each GT box found once among the best
        assert (iou.max(1).values > 0.5).all(), (detection["boxes"][:count], target["boxes"])
        assert detection["labels"][:count].tolist() == target["labels"][matched].tolist()


def test_exportable_corner_pooling_runs_in_onnx_runtime_with_the_same_output() -> None:
    """ONNX has no cumulative max: the log-step formulation exports, and ONNX Runtime computes what PyTorch does."""
    import io

    import onnxruntime

    torch.manual_seed(0)
    for corner in ("top_left", "bottom_right"):
        module = CornerPooling(8, 8, corner, exportable=True).eval()
        features = torch.randn(1, 8, 20, 24)
        buffer = io.BytesIO()
        torch.onnx.export(module, (features,), buffer, dynamo=False, opset_version=17)
        session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
        (exported,) = session.run(None, {session.get_inputs()[0].name: features.numpy()})
        with torch.no_grad():
            expected = module(features)
        torch.testing.assert_close(torch.from_numpy(exported), expected, rtol=1e-5, atol=1e-5)


def test_select_detections_with_soft_nms_keeps_order_by_decayed_score() -> None:
    """CornerNet's soft_nms_sigma in the shared selection step (soft_nms itself: tests/ops/test_boxes.py)."""
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [20.0, 20.0, 30.0, 30.0]]])
    scores = torch.tensor([[0.9, 0.85, 0.5]])
    labels = torch.zeros(1, 3, dtype=torch.long)
    (detections,) = select_detections(boxes, scores, labels, [(40, 40)], score_threshold=0.01, soft_nms_sigma=0.5)
    assert detections["scores"].tolist() == sorted(detections["scores"].tolist(), reverse=True)
    assert detections["scores"][0] == pytest.approx(0.9)
    assert detections["scores"][-1] == pytest.approx(0.85 * math.exp(-0.81 / 0.5), abs=1e-6)
