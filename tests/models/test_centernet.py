"""CenterNet behaviour: heatmap/size/offset targets, losses, decoding of planted outputs, the model contract and a
short overfit.

Coordinates: the output map has stride 4; a box (x1, y1, x2, y2) in input pixels has its centre at cell
(floor(cx / 4), floor(cy / 4)), flat index y * W + x, size (w, h) / 4 and offset centre / 4 - floor(centre / 4).
"""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from torchvision.ops import box_iou

from anchorfree.models.backbones import FrozenNorm, ModulatedDeformConv, build_backbone
from anchorfree.models.centernet import (
    CenterNet,
    CenterNetConfig,
    CenterNetHead,
    CenterNetTargets,
    build_centernet,
    centernet_decode,
    centernet_loss,
    centernet_targets,
)
from anchorfree.models.detector import select_detections

LN2 = math.log(2.0)
MAP_SIZE = (32, 32)  # a 128 x 128 input at stride 4

# Box A in input pixels; in cells (7.25, 12.5, 17.75, 23.75): centre (12.5, 18.125) -> cell (x, y) = (12, 18),
# flat index 18 * 32 + 12 = 588, offset (0.5, 0.125), size (w, h) = (10.5, 11.25), radius from ceil: (h, w) = (12, 11).
BOX_A = [29.0, 50.0, 71.0, 95.0]
CELL_A = (12, 18)
# Box B overlaps A: cells (10, 15, 20, 25), centre (15, 20), size (10, 10).
BOX_B = [40.0, 60.0, 80.0, 100.0]


def targets_for(boxes: list[list[float]], labels: list[int], num_classes: int = 3, **options) -> CenterNetTargets:
    boxes_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return centernet_targets(boxes_tensor, torch.tensor(labels, dtype=torch.int64), num_classes, MAP_SIZE, stride=4, **options)


def assert_same_targets(actual: CenterNetTargets, expected: CenterNetTargets) -> None:
    assert torch.equal(actual.heatmap, expected.heatmap)
    assert torch.equal(actual.indices, expected.indices)
    assert torch.equal(actual.sizes, expected.sizes)
    assert torch.equal(actual.offsets, expected.offsets)


def tiny_config(**options) -> CenterNetConfig:
    return CenterNetConfig(**{"neck": "fpn", "fpn_channels": 16, "head_channels": 16, **options})


def tiny_model(num_classes: int = 3, **options) -> CenterNet:
    torch.manual_seed(0)
    return build_centernet(num_classes, "mobilenet_v2", backbone_width=0.25, config=tiny_config(**options))


# --------------------------------------------------------------------------------------------------- targets

# gaussian_radius(h = 12, w = 11): h + w = 23, w h = 132.
#   original, o = 0.7: case 3 (a3 = 2.8, b3 = -32.2, c3 = -39.6) is the smallest; cases 1 and 2 take the + root (> 11.5).
ORIGINAL_RADIUS_A = min(
    (23 + math.sqrt(23**2 - 4 * 132 * 0.3 / 1.7)) / 2,
    (46 + math.sqrt(46**2 - 16 * 0.3 * 132)) / 2,
    (-32.2 + math.sqrt(32.2**2 + 4 * 2.8 * 0.3 * 132)) / 2,
)
#   corrected, o = 0.3: the roots, case 2 (a2 = 4, b2 = 46, c2 = 92.4) is the smallest.
CORRECTED_RADIUS_A = min(
    (23 - math.sqrt(23**2 - 4 * 132 * 0.7 / 1.3)) / 2,
    (46 - math.sqrt(46**2 - 16 * 0.7 * 132)) / 8,
    (-13.8 + math.sqrt(13.8**2 + 4 * 1.2 * 0.7 * 132)) / 2.4,
)


def test_hand_computed_radii_of_box_a() -> None:
    """The two formulas give different integer radii for box A, so the extent test below tells them apart."""
    assert ORIGINAL_RADIUS_A == pytest.approx(3.1377, abs=1e-4)
    assert CORRECTED_RADIUS_A == pytest.approx(2.5937, abs=1e-4)


@pytest.mark.parametrize(
    "formula, min_overlap, radius",
    [("original", 0.7, math.floor(ORIGINAL_RADIUS_A)), ("corrected", 0.3, math.floor(CORRECTED_RADIUS_A))],
)
def test_single_box_targets_peak_extent_index_size_and_offset(formula: str, min_overlap: float, radius: int) -> None:
    """One box: 1.0 exactly at its floored centre on its class channel, a (2r+1)^2 Gaussian, and its regression targets."""
    targets = targets_for([BOX_A], [2], radius_formula=formula, min_overlap=min_overlap)
    x, y = CELL_A
    heatmap = targets.heatmap
    assert heatmap.shape == (3, 32, 32) and heatmap.dtype == torch.float32
    assert heatmap[2, y, x].item() == 1.0
    assert (heatmap == 1.0).sum().item() == 1  # nowhere else 1.0
    assert not heatmap[0].any() and not heatmap[1].any()
    # The Gaussian's extent: 2r + 1 non-zero cells on the row and the column through the centre, a full square.
    row, column = heatmap[2, y], heatmap[2, :, x]
    assert torch.nonzero(row).flatten().tolist() == list(range(x - radius, x + radius + 1))
    assert torch.nonzero(column).flatten().tolist() == list(range(y - radius, y + radius + 1))
    assert torch.count_nonzero(heatmap).item() == (2 * radius + 1) ** 2
    sigma = (2 * radius + 1) / 6
    assert row[x + 1].item() == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-6)
    assert targets.indices.dtype == torch.int64 and targets.indices.tolist() == [y * 32 + x]
    torch.testing.assert_close(targets.sizes, torch.tensor([[42.0 / 4, 45.0 / 4]]), rtol=0, atol=1e-6)  # (w, h) / stride
    torch.testing.assert_close(targets.offsets, torch.tensor([[12.5 - 12, 18.125 - 18]]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("formula, min_overlap", [("original", 0.7), ("corrected", 0.3)])
def test_box_smaller_than_a_cell_is_a_single_cell_peak(formula: str, min_overlap: float) -> None:
    """Catalogue A26: a 2 x 3 px box at stride 4 has a radius below 1, clamped to 0: one cell, 1.0, its size kept."""
    targets = targets_for([[50.0, 70.0, 52.0, 73.0]], [0], radius_formula=formula, min_overlap=min_overlap)
    assert torch.count_nonzero(targets.heatmap).item() == 1
    assert targets.heatmap[0, 71 // 4, 51 // 4].item() == 1.0
    torch.testing.assert_close(targets.sizes, torch.tensor([[2.0 / 4, 3.0 / 4]]), rtol=0, atol=1e-6)


def test_overlapping_boxes_of_one_class_keep_the_max_and_classes_use_their_own_channel() -> None:
    """Same class: the element-wise max of the two single-box heatmaps; different classes: each on its channel."""
    alone_a = targets_for([BOX_A], [1])
    alone_b = targets_for([BOX_B], [1])
    assert (alone_a.heatmap * alone_b.heatmap).any()  # the Gaussians overlap
    same_class = targets_for([BOX_A, BOX_B], [1, 1])
    assert torch.equal(same_class.heatmap, torch.maximum(alone_a.heatmap, alone_b.heatmap))
    assert same_class.indices.tolist() == [18 * 32 + 12, 20 * 32 + 15]
    torch.testing.assert_close(same_class.sizes, torch.tensor([[10.5, 11.25], [10.0, 10.0]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(same_class.offsets, torch.tensor([[0.5, 0.125], [0.0, 0.0]]), rtol=0, atol=1e-6)

    two_classes = targets_for([BOX_A, BOX_B], [2, 0])
    assert torch.equal(two_classes.heatmap[2], alone_a.heatmap[1])
    assert torch.equal(two_classes.heatmap[0], alone_b.heatmap[1])
    assert not two_classes.heatmap[1].any()


def test_boxes_centred_off_the_map_are_dropped_and_the_others_keep_their_targets() -> None:
    """A centre right of the 128 px map (x = 36.25 cells) or above-left of it gets no target; A and B are unchanged."""
    off_right = [120.0, 10.0, 170.0, 30.0]
    off_top_left = [-40.0, -40.0, -4.0, -4.0]
    with_outsiders = targets_for([BOX_A, off_right, BOX_B, off_top_left], [0, 1, 2, 1])
    assert_same_targets(with_outsiders, targets_for([BOX_A, BOX_B], [0, 2]))
    assert not with_outsiders.heatmap[1].any()


def test_crowd_boxes_get_no_target() -> None:
    """iscrowd True removes the box from the heatmap and from the regression targets."""
    with_crowd = targets_for([BOX_A, BOX_B], [0, 1], iscrowd=torch.tensor([False, True]))
    assert_same_targets(with_crowd, targets_for([BOX_A], [0]))
    everything_crowd = targets_for([BOX_A, BOX_B], [0, 1], iscrowd=torch.tensor([True, True]))
    assert not everything_crowd.heatmap.any() and everything_crowd.indices.shape == (0,)


def test_more_boxes_than_max_objects_warn_and_keep_the_first() -> None:
    """5 boxes with max_objects 3: a UserWarning and exactly the first 3 boxes' targets."""
    boxes = [[8.0 + 24 * i, 8.0, 24.0 + 24 * i, 24.0] for i in range(5)]
    labels = [0, 1, 2, 0, 1]
    with pytest.warns(UserWarning, match="an image has 5 objects; keeping the first 3"):
        capped = targets_for(boxes, labels, max_objects=3)
    assert len(capped.indices) == len(capped.sizes) == len(capped.offsets) == 3
    assert_same_targets(capped, targets_for(boxes[:3], labels[:3]))


def test_no_boxes_give_an_empty_target() -> None:
    """An image without boxes: an all-zero heatmap and empty (0,), (0, 2) regression targets."""
    targets = targets_for([], [])
    assert targets.heatmap.shape == (3, 32, 32) and not targets.heatmap.any()
    assert targets.indices.shape == (0,) and targets.sizes.shape == (0, 2) and targets.offsets.shape == (0, 2)


# ------------------------------------------------------------------------------------------------------ loss


def test_empty_targets_give_a_positive_heatmap_loss_and_exact_zero_box_losses_with_gradients() -> None:
    """No object in the batch: heatmap loss > 0 and finite, size and offset exactly 0.0, every head branch gets a gradient."""
    torch.manual_seed(0)
    head = CenterNetHead(8, num_classes=3, head_channels=8)
    heatmap_logits, offsets, sizes = head(torch.randn(2, 8, 16, 16))
    empty = centernet_targets(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), 3, (16, 16))
    losses = centernet_loss(heatmap_logits, offsets, sizes, [empty, empty])
    assert set(losses) == {"heatmap", "size", "offset"}
    assert torch.isfinite(losses["heatmap"]) and losses["heatmap"].item() > 0
    assert losses["size"].item() == 0.0 and losses["offset"].item() == 0.0
    sum(losses.values()).backward()
    for branch in (head.heatmap, head.size, head.offset):
        for parameter in branch.parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all()


def test_empty_targets_with_zero_logits_hand_computed() -> None:
    """p = 0.5 everywhere, no positive: every cell adds 0.5^2 ln 2, and the sum is not divided."""
    heatmap_logits = torch.zeros(2, 3, 4, 4)
    empty = centernet_targets(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), 3, (4, 4))
    losses = centernet_loss(heatmap_logits, torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4), [empty, empty])
    assert losses["heatmap"].item() == pytest.approx(2 * 3 * 16 * 0.25 * LN2, rel=1e-6)


@pytest.mark.parametrize("box_image", [0, 1])
def test_half_empty_batch_losses_hand_computed_with_weights(box_image: int) -> None:
    """One image holds box A, the other nothing; zero outputs give hand-computed, finite, weighted losses."""
    box_targets = targets_for([BOX_A], [2])
    empty = targets_for([], [])
    targets = [box_targets, empty] if box_image == 0 else [empty, box_targets]
    heatmap_logits = torch.zeros(2, 3, 32, 32)
    offsets, sizes = torch.zeros(2, 2, 32, 32), torch.zeros(2, 2, 32, 32)
    losses = centernet_loss(heatmap_logits, offsets, sizes, targets, size_weight=0.1, offset_weight=1.0)
    for value in losses.values():
        assert value.dtype == torch.float32 and torch.isfinite(value)
    # Heatmap at p = 0.5: the positive adds 0.25 ln 2, each negative (1 - y)^4 * 0.25 ln 2; one positive normalises.
    target_heatmap = box_targets.heatmap
    negative_weight = ((1 - target_heatmap[target_heatmap < 1]) ** 4).sum().item() + 2 * 3 * 32 * 32 - 3 * 32 * 32
    assert losses["heatmap"].item() == pytest.approx(0.25 * LN2 * (1 + negative_weight), rel=1e-5)
    # Size: L1 of (10.5, 11.25) against 0, over 2 values, times 0.1. Offset: (0.5 + 0.125) / 2.
    assert losses["size"].item() == pytest.approx(0.1 * (10.5 + 11.25) / 2, rel=1e-6)
    assert losses["offset"].item() == pytest.approx((0.5 + 0.125) / 2, rel=1e-6)
    weighted = centernet_loss(heatmap_logits, offsets, sizes, targets, size_weight=1.0, offset_weight=2.0)
    assert weighted["size"].item() == pytest.approx((10.5 + 11.25) / 2, rel=1e-6)
    assert weighted["offset"].item() == pytest.approx(2 * 0.3125, rel=1e-6)
    # Exact predictions at the box's own image and cell (and only there) zero both regression losses.
    x, y = CELL_A
    sizes[box_image, :, y, x] = torch.tensor([10.5, 11.25])
    offsets[box_image, :, y, x] = torch.tensor([0.5, 0.125])
    exact = centernet_loss(heatmap_logits, offsets, sizes, targets)
    assert exact["size"].item() == pytest.approx(0.0, abs=1e-7) and exact["offset"].item() == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------------------------------------------- decode


def planted_outputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, offsets and sizes (cells) for 2 images, 3 classes, 32 x 32, stride 4; zero elsewhere.

    image  class  cell (y, x)  score  offset (dx, dy)  size (w, h)  box (input px)
      0      1      (5, 7)      0.9    (0.25, 0.75)      (6, 4)     (17, 15, 41, 31)
      0      1      (5, 8)      0.8    (0.5, 0.5)        (20, 20)   neighbour of the 0.9 peak: suppressed
      0      0      (5, 6)      0.5    (0.5, 0.5)        (2, 2)     (22, 18, 30, 26): next to it, but another class
      0      2      (20, 25)    0.7    (0.1, 0.2)        (10, 8)    (80.4, 64.8, 120.4, 96.8)
      1      0      (10, 3)     0.95   (0.0, 0.5)        (8, 12)    (-4, 18, 28, 66): decode does not clip
    """
    heatmap = torch.zeros(2, 3, 32, 32)
    offsets = torch.zeros(2, 2, 32, 32)
    sizes = torch.zeros(2, 2, 32, 32)
    plants = [
        (0, 1, 5, 7, 0.9, (0.25, 0.75), (6.0, 4.0)),
        (0, 1, 5, 8, 0.8, (0.5, 0.5), (20.0, 20.0)),
        (0, 0, 5, 6, 0.5, (0.5, 0.5), (2.0, 2.0)),
        (0, 2, 20, 25, 0.7, (0.1, 0.2), (10.0, 8.0)),
        (1, 0, 10, 3, 0.95, (0.0, 0.5), (8.0, 12.0)),
    ]
    for image, label, y, x, score, offset, size in plants:
        heatmap[image, label, y, x] = score
        offsets[image, :, y, x] = torch.tensor(offset)
        sizes[image, :, y, x] = torch.tensor(size)
    return heatmap, offsets, sizes


def test_decode_recovers_the_planted_boxes_and_suppresses_the_neighbour() -> None:
    """Peaks -> (x + dx -/+ w/2, y + dy -/+ h/2) * 4, sorted by score; the 0.8 neighbour of the 0.9 peak is not reported."""
    heatmap, offsets, sizes = planted_outputs()
    boxes, scores, labels = centernet_decode(heatmap, offsets, sizes, stride=4, top_k=100)
    assert boxes.shape == (2, 100, 4) and scores.shape == (2, 100) and labels.shape == (2, 100)  # static K
    assert boxes.dtype == scores.dtype == torch.float32 and labels.dtype == torch.int64

    found = scores[0] > 0
    assert found.sum().item() == 3
    torch.testing.assert_close(scores[0, found], torch.tensor([0.9, 0.7, 0.5]), rtol=0, atol=0)
    assert labels[0, found].tolist() == [1, 2, 0]
    torch.testing.assert_close(
        boxes[0, found], torch.tensor([[17.0, 15.0, 41.0, 31.0], [80.4, 64.8, 120.4, 96.8], [22.0, 18.0, 30.0, 26.0]]), rtol=0, atol=1e-4
    )
    assert not torch.isclose(scores, torch.tensor(0.8)).any()

    found = scores[1] > 0
    assert found.sum().item() == 1
    assert scores[1, 0].item() == pytest.approx(0.95) and labels[1, 0].item() == 0
    torch.testing.assert_close(boxes[1, 0], torch.tensor([-4.0, 18.0, 28.0, 66.0]), rtol=0, atol=1e-4)


def test_decode_keeps_k_static_and_clamps_it_to_the_map() -> None:
    """top_k 2 keeps the two best per image; top_k above C * H * W (= 3 * 32 * 32) gives C * H * W."""
    heatmap, offsets, sizes = planted_outputs()
    boxes, scores, labels = centernet_decode(heatmap, offsets, sizes, top_k=2)
    assert boxes.shape == (2, 2, 4)
    assert labels[0].tolist() == [1, 2] and scores[0].tolist() == pytest.approx([0.9, 0.7])
    boxes, _, _ = centernet_decode(heatmap, offsets, sizes, top_k=5000)
    assert boxes.shape == (2, 3 * 32 * 32, 4)


# ----------------------------------------------------------------------------------------------------- model

NECK_OPTIONS = {
    "fpn": {"neck": "fpn"},
    "deconv-dcn": {"neck": "deconv", "neck_channels": [16, 16, 16], "deformable": True},
}


def sample_batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 96)
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[10.0, 20.0, 60.0, 50.0], [0.0, 0.0, 30.0, 30.0]]),
            "labels": torch.tensor([0, 2]),
            "iscrowd": torch.tensor([False, True]),
        },
    ]
    return images, targets


@pytest.mark.parametrize("neck", list(NECK_OPTIONS))
def test_output_map_is_a_quarter_of_the_input(neck: str) -> None:
    """A 64 x 96 input gives (N, C, 16, 24) heatmap logits and (N, 2, 16, 24) offsets and sizes."""
    model = tiny_model(3, **NECK_OPTIONS[neck]).eval()
    assert model.stride == 4
    if neck == "deconv-dcn":
        assert sum(isinstance(module, ModulatedDeformConv) for module in model.modules()) == 3
    with torch.no_grad():
        heatmap_logits, offsets, sizes = model.head(model.neck(model.backbone(torch.zeros(2, 3, 64, 96))))
    assert heatmap_logits.shape == (2, 3, 16, 24) and offsets.shape == (2, 2, 16, 24) and sizes.shape == (2, 2, 16, 24)


@pytest.mark.parametrize("neck", list(NECK_OPTIONS))
def test_train_mode_returns_three_finite_scalar_losses(neck: str) -> None:
    """Training: {"heatmap", "size", "offset"} float32 scalars with gradients; the batch has objects, so size > 0."""
    model = tiny_model(3, **NECK_OPTIONS[neck]).train()
    images, targets = sample_batch()
    losses = model(images, targets)
    assert set(losses) == {"heatmap", "size", "offset"}
    for name, value in losses.items():
        assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value), name
        assert value.requires_grad, name
    assert losses["size"].item() > 0 and losses["heatmap"].item() > 0
    sum(losses.values()).backward()
    assert all(parameter.grad is not None for parameter in model.head.parameters())


@pytest.mark.parametrize("flip_test", [False, True])
@pytest.mark.parametrize("neck", list(NECK_OPTIONS))
def test_eval_mode_returns_detections_clipped_to_each_image(neck: str, flip_test: bool) -> None:
    """Eval: one {"boxes", "scores", "labels"} per image, at most max_detections, sorted, inside each image's own size."""
    model = tiny_model(3, **NECK_OPTIONS[neck], score_threshold=0.0, max_detections=5, flip_test=flip_test).eval()
    torch.manual_seed(2)
    images = [torch.randn(3, 64, 64), torch.randn(3, 48, 80)]  # padded to 64 x 96 inside
    with torch.no_grad():
        detections = model(images)
    assert isinstance(detections, list) and len(detections) == 2
    for detection, (height, width) in zip(detections, [(64, 64), (48, 80)]):
        assert set(detection) == {"boxes", "scores", "labels"}
        count = len(detection["scores"])
        assert 0 < count <= 5
        assert detection["boxes"].shape == (count, 4) and detection["labels"].shape == (count,)
        assert detection["labels"].dtype == torch.int64 and ((detection["labels"] >= 0) & (detection["labels"] < 3)).all()
        assert (detection["scores"] > 0).all() and (detection["scores"] <= 1).all()
        assert (detection["scores"][:-1] >= detection["scores"][1:]).all()
        boxes = detection["boxes"]
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= width).all() and (boxes[:, [1, 3]] <= height).all()


def test_flip_test_scores_are_mirror_symmetric() -> None:
    """With flip_test the heatmap averages the image and its mirror, so an image and its mirror score alike."""
    model = tiny_model(3, score_threshold=0.0, max_detections=10, flip_test=True).eval()
    torch.manual_seed(3)
    image = torch.randn(1, 3, 64, 96)  # multiples of 32: no padding to break the symmetry
    with torch.no_grad():
        original, mirrored = model(torch.cat([image, image.flip(-1)]))
    torch.testing.assert_close(original["scores"], mirrored["scores"], rtol=0, atol=1e-5)
    assert original["labels"].tolist() == mirrored["labels"].tolist()


class PlantedHead(torch.nn.Module):
    """Stands in for the head: on a 32 x 32 map, peaks at cells (10, 10) and (12, 10) of class 0 (scores 0.9 and
    0.8) and (20, 20) of class 1 (0.7), each a 10 x 10-cell box; boxes 1 and 2 overlap at IoU 8 / 12 = 0.667."""

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = features.shape[0]
        probabilities = torch.full((batch, 2, 32, 32), 1e-3)
        for channel, y, x, score in [(0, 10, 10, 0.9), (0, 10, 12, 0.8), (1, 20, 20, 0.7)]:
            probabilities[:, channel, y, x] = score
        sizes = torch.full((batch, 2, 32, 32), 10.0)
        return torch.logit(probabilities), torch.zeros(batch, 2, 32, 32), sizes


@pytest.mark.parametrize("nms_threshold, expected_scores", [(0.0, [0.9, 0.8, 0.7]), (0.6, [0.9, 0.7]), (0.7, [0.9, 0.8, 0.7])])
def test_optional_nms_removes_an_overlapping_duplicate_of_the_same_class(nms_threshold: float, expected_scores: list[float]) -> None:
    """nms_threshold 0 is the paper's decode (every peak); above 0, a same-class box overlapping a better one by more
    than the threshold is removed, and the order by score is kept."""
    model = tiny_model(2, score_threshold=0.1, nms_threshold=nms_threshold).eval()
    model.head = PlantedHead()
    with torch.no_grad():
        (detection,) = model(torch.zeros(1, 3, 128, 128))
    torch.testing.assert_close(detection["scores"], torch.tensor(expected_scores), rtol=0, atol=1e-5)
    # The first box: cell (10, 10) + offset 0, size 10 cells, stride 4 -> (20, 20, 60, 60) pixels.
    torch.testing.assert_close(detection["boxes"][0], torch.tensor([20.0, 20.0, 60.0, 60.0]))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"neck": "hourglass"}, "unknown CenterNet neck 'hourglass'; choose one of deconv, fpn"),
        ({"radius_formula": "exact"}, "unknown radius formula 'exact'; choose one of original, corrected"),
        ({"neck": "deconv", "neck_channels": [16, 16]}, r"the deconv neck needs 3 stage widths \(stride 32 -> 4\), got \[16, 16\]"),
    ],
)
def test_bad_config_raises_value_error_naming_the_options(options: dict, message: str) -> None:
    """An unknown neck or radius formula names the valid choices; a deconv neck needs 3 widths."""
    with pytest.raises(ValueError, match=message):
        build_centernet(3, "mobilenet_v2", backbone_width=0.25, config=tiny_config(**options))


def test_labels_outside_the_classes_raise_value_error() -> None:
    """A label >= num_classes is reported with its value, not an index error deep in the heatmap."""
    model = tiny_model(3).train()
    with pytest.raises(ValueError, match=r"label 3 outside \[0, 3\)"):
        model(torch.randn(1, 3, 64, 64), [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([3])}])


# ---------------------------------------------------------------------------------------------------- overfit


def rectangles_batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two dark 128 x 128 images with filled rectangles, one colour per class: 2 boxes in the first, 1 in the second."""
    images = torch.full((2, 3, 128, 128), -1.0)
    targets = [
        {"boxes": torch.tensor([[16.0, 20.0, 64.0, 60.0], [72.0, 64.0, 112.0, 120.0]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.tensor([[40.0, 24.0, 96.0, 80.0]]), "labels": torch.tensor([2])},
    ]
    colours = {0: torch.tensor([2.0, -1.0, -1.0]), 1: torch.tensor([-1.0, 2.0, -1.0]), 2: torch.tensor([-1.0, -1.0, 2.0])}
    for image, target in zip(images, targets):
        for (x1, y1, x2, y2), label in zip(target["boxes"].long().tolist(), target["labels"].tolist()):
            image[:, y1:y2, x1:x2] = colours[label][:, None, None]
    return images, targets


@pytest.mark.slow
def test_overfits_one_batch_and_detects_its_boxes(overfit: Callable[..., list[float]]) -> None:
    """100 Adam steps on one batch: the loss falls below 30% of its start and each image's top detection is a right box.

    Batch norm is frozen (as for the pretrained backbones of the presets): with trainable batch norm, two
    images and 100 fast steps, eval mode's running statistics lag the weights and the test would measure that.
    """
    torch.manual_seed(0)
    model = CenterNet(FrozenNorm(build_backbone("mobilenet_v2", False, 0.25)), 3, tiny_config())
    images, targets = rectangles_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    totals = overfit(model, images, targets, optimizer, 100)
    assert all(math.isfinite(value) for value in totals)
    assert totals[-1] < 0.3 * totals[0], f"loss went from {totals[0]:.3f} to {totals[-1]:.3f}"

    model.eval()
    with torch.no_grad():
        detections = model(images)
    for detection, target in zip(detections, targets):
        assert len(detection["boxes"]) > 0
        iou = box_iou(detection["boxes"][:1], target["boxes"])[0]  # (GT,) for the top-scoring detection
        matched = int(iou.argmax())
        assert iou[matched].item() > 0.5, (detection["boxes"][:1], target["boxes"])
        assert detection["labels"][0].item() == target["labels"][matched].item()


def test_the_soft_nms_setting_reaches_the_selection_step(monkeypatch: pytest.MonkeyPatch) -> None:
    # model.centernet.soft_nms_sigma is handed to the shared selection step (tested with CornerNet's soft-NMS tests).
    import anchorfree.models.centernet as centernet_module

    seen = []

    def spy(*args):
        seen.append(args[-1])
        return select_detections(*args)

    monkeypatch.setattr(centernet_module, "select_detections", spy)
    model = tiny_model(soft_nms_sigma=0.5).eval()
    with torch.no_grad():
        (detections,) = model(torch.zeros(1, 3, 64, 64))
    assert seen == [0.5] and torch.isfinite(detections["scores"]).all()
