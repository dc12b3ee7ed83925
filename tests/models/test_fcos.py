"""FCOS behaviour: target assignment, centerness, losses, decoding, the model contract and a short overfit.

Coordinates: location (i, j) of a level with stride s sits at ((j + 0.5) s, (i + 0.5) s); locations are
row-major per level and levels are concatenated, so on a (H, W) level location (i, j) has index i * W + j.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import pytest
import torch
from torchvision.ops import box_iou

from anchorfree.models.fcos import (
    BACKGROUND,
    IGNORE,
    FCOSConfig,
    assign_targets,
    build_fcos,
    centerness_targets,
    fcos_decode,
    fcos_loss,
    make_locations,
)

LN2 = math.log(2.0)
TINY = dict(fpn_channels=32, head_convs=1, norm_groups=8)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def one_level(height: int, width: int, stride: int = 8):
    return make_locations([(height, width)], [stride], [])


def tiny_model(num_classes: int = 3, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_fcos(num_classes, "mobilenet_v2", backbone_width=0.25, config=FCOSConfig(**TINY, **config))


# ------------------------------------------------------------------------------------------ assign_targets


def test_make_locations_points_strides_and_ranges() -> None:
    locations = make_locations([(2, 3), (1, 2)], [8, 16], [32.0])
    # level 0: x in 4, 12, 20; y in 4, 12 (row-major); level 1: x in 8, 24; y = 8
    assert locations.points.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12], [8, 8], [24, 8]]
    assert locations.strides.tolist() == [8] * 6 + [16] * 2
    assert locations.size_ranges.tolist() == [[0, 32]] * 6 + [[32, math.inf]] * 2
    assert locations.level_sizes == [6, 2]
    with pytest.raises(ValueError, match="2 levels need 1 size boundaries"):
        make_locations([(2, 3), (1, 2)], [8, 16], [32.0, 64.0])


def test_thousands_of_boxes_are_assigned_in_chunks_with_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    # Catalogue A27: memory stays O(P x chunk). 3000 random boxes, some of equal area across chunk boundaries:
    # chunks of 97 give exactly the assignment of one chunk holding every box (smallest area, first listed on ties).
    import anchorfree.models.fcos as fcos

    generator = torch.Generator().manual_seed(0)
    locations = make_locations([(40, 40), (20, 20)], [8, 16], [64.0])
    corners = torch.rand(3000, 2, generator=generator) * 300
    sizes = torch.randint(4, 60, (3000, 2), generator=generator).float()
    boxes = torch.cat([corners, corners + sizes], dim=1)
    boxes[1500] = boxes[3] + 1.0  # same area as box 3, listed later and in another chunk
    labels = torch.randint(0, 5, (3000,), generator=generator)
    monkeypatch.setattr(fcos, "ASSIGNMENT_CHUNK", 10_000)
    whole_labels, whole_boxes = assign_targets(locations, boxes, labels)
    monkeypatch.setattr(fcos, "ASSIGNMENT_CHUNK", 97)
    chunked_labels, chunked_boxes = assign_targets(locations, boxes, labels)
    assert (whole_labels >= 0).sum() > 100
    assert torch.equal(chunked_labels, whole_labels) and torch.equal(chunked_boxes, whole_boxes)


def test_overlapping_boxes_locations_inside_both_get_the_smaller_box() -> None:
    # 4x4 level, stride 8: x, y in {4, 12, 20, 28}. Big box A (label 0) covers everything; small B = (2, 2, 20, 20)
    # (label 1) strictly contains x, y in {4, 12}; x = 20 lies on B's right edge (r = 0) and is outside B.
    locations = one_level(4, 4)
    big, small = [0.0, 0.0, 32.0, 32.0], [2.0, 2.0, 20.0, 20.0]
    expected = torch.tensor([1, 1, 0, 0,
                             1, 1, 0, 0,
                             0, 0, 0, 0,
                             0, 0, 0, 0])
    for boxes, labels in (([big, small], [0, 1]), ([small, big], [1, 0])):  # the order of the boxes does not matter
        point_labels, point_boxes = assign_targets(locations, torch.tensor(boxes), torch.tensor(labels), center_sampling_radius=0)
        assert torch.equal(point_labels, expected)
        assert point_boxes[[0, 1, 4, 5]].tolist() == [small] * 4
        assert point_boxes[expected == 0].tolist() == [big] * 12


@pytest.mark.parametrize(
    "boundary, expected_positive",
    [
        # Box (0, 0, 80, 80), centre (40, 40); radius 1.5 strides.
        # Level 1 (stride 16, x, y in 8, 24, 40, 56, 72): sampling square (16, 64) -> x, y in {24, 40, 56}, max(l, t, r, b)
        # between 40 (the centre location (40, 40)) and 56 (corners (24, 24) etc.). Level 0 (stride 8): square (28, 52)
        # -> x, y in {36, 44}, max distance 44.
        (32.0, [100 + i * 5 + j for i in (1, 2, 3) for j in (1, 2, 3)]),  # level 0 [0, 32] < 44; level 1 [32, inf] holds 40..56
        (64.0, [44, 45, 54, 55]),  # level 0 [0, 64] holds 44; level 1 [64, inf] > 56
    ],
)
def test_box_is_assigned_only_on_the_level_whose_size_range_holds_its_distances(boundary: float, expected_positive: list[int]) -> None:
    locations = make_locations([(10, 10), (5, 5)], [8, 16], [boundary])
    point_labels, point_boxes = assign_targets(locations, torch.tensor([[0.0, 0.0, 80.0, 80.0]]), torch.tensor([2]))
    assert torch.nonzero(point_labels >= 0).flatten().tolist() == expected_positive
    assert set(point_labels[expected_positive].tolist()) == {2}
    assert (point_labels[point_labels < 0] == BACKGROUND).all()
    assert point_boxes[expected_positive].tolist() == [[0.0, 0.0, 80.0, 80.0]] * len(expected_positive)


def test_center_sampling_keeps_only_locations_within_radius_strides_of_the_centre() -> None:
    # 10x10 level, stride 8, box (0, 0, 80, 80) centred at (40, 40): radius 1.5 -> square (28, 52) -> x, y in {36, 44}.
    locations = one_level(10, 10)
    box, label = torch.tensor([[0.0, 0.0, 80.0, 80.0]]), torch.tensor([0])
    sampled, _ = assign_targets(locations, box, label, center_sampling_radius=1.5)
    assert torch.nonzero(sampled >= 0).flatten().tolist() == [44, 45, 54, 55]
    assert sampled[0] == BACKGROUND  # (4, 4) is inside the box but 36 px > 12 px from its centre
    everywhere, _ = assign_targets(locations, box, label, center_sampling_radius=0)
    assert (everywhere == 0).all()  # radius 0: every location inside the box


def test_crowd_box_makes_uncovered_locations_ignore_and_is_never_positive() -> None:
    # 4x4 level, stride 8. Crowd C = (0, 0, 32, 16) covers rows y in {4, 12} (indices 0-7); regular R = (0, 0, 16, 16)
    # holds indices 0, 1, 4, 5, which stay positive; the rest of C (2, 3, 6, 7) is IGNORE; rows 2-3 are background.
    locations = one_level(4, 4)
    boxes = torch.tensor([[0.0, 0.0, 32.0, 16.0], [0.0, 0.0, 16.0, 16.0]])
    point_labels, point_boxes = assign_targets(
        locations, boxes, torch.tensor([1, 0]), iscrowd=torch.tensor([True, False]), center_sampling_radius=0
    )
    assert point_labels.tolist() == [0, 0, IGNORE, IGNORE,
                                     0, 0, IGNORE, IGNORE] + [BACKGROUND] * 8
    assert point_boxes[[0, 1, 4, 5]].tolist() == [[0.0, 0.0, 16.0, 16.0]] * 4
    assert (point_boxes[point_labels < 0] == 0).all()


def test_equal_areas_resolve_to_the_box_listed_first() -> None:
    # Tall A = (0, 0, 16, 32) and wide B = (0, 0, 32, 16), both 512 px^2, overlap on indices 0, 1, 4, 5.
    locations = one_level(4, 4)
    tall, wide = [0.0, 0.0, 16.0, 32.0], [0.0, 0.0, 32.0, 16.0]
    a_first, _ = assign_targets(locations, torch.tensor([tall, wide]), torch.tensor([0, 1]), center_sampling_radius=0)
    assert a_first.tolist() == [0, 0, 1, 1,
                                0, 0, 1, 1,
                                0, 0, -1, -1,
                                0, 0, -1, -1]
    b_first, boxes = assign_targets(locations, torch.tensor([wide, tall]), torch.tensor([1, 0]), center_sampling_radius=0)
    assert b_first[[0, 1, 4, 5]].tolist() == [1, 1, 1, 1]
    assert boxes[[0, 1, 4, 5]].tolist() == [wide] * 4


def test_no_boxes_gives_all_background() -> None:
    locations = make_locations([(4, 4), (2, 2)], [8, 16], [32.0])
    for iscrowd in (None, torch.zeros(0, dtype=torch.bool)):
        point_labels, point_boxes = assign_targets(locations, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), iscrowd)
        assert point_labels.dtype == torch.int64 and point_labels.tolist() == [BACKGROUND] * 20
        assert point_boxes.shape == (20, 4) and not point_boxes.any()


def test_centerness_targets_hand_computed() -> None:
    distances = torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0], [1.0, 5.0, 4.0, 5.0]])
    # sqrt(1/3 * 2/4) = sqrt(1/6); a centred location is 1; sqrt(1/4 * 5/5) = 0.5
    expected = torch.tensor([math.sqrt(1 / 6), 1.0, 0.5])
    torch.testing.assert_close(centerness_targets(distances), expected, rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------------------------------ loss


def one_positive_scene(num_images: int, num_classes: int = 2):
    """4x4 level, stride 8; image 0 has box (8, 0, 16, 10), label 1, which holds only location 1 = (12, 4)
    (l, t, r, b = 4, 4, 4, 6); further images are empty. Head outputs are all zero."""
    locations = one_level(4, 4)
    assigned = [assign_targets(locations, torch.tensor([[8.0, 0.0, 16.0, 10.0]]), torch.tensor([1]))]
    assigned += [assign_targets(locations, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64))] * (num_images - 1)
    point_labels = torch.stack([labels for labels, _ in assigned])
    point_boxes = torch.stack([boxes for _, boxes in assigned])
    assert torch.nonzero(point_labels >= 0).tolist() == [[0, 1]]
    outputs = (
        torch.zeros(num_images, 16, num_classes, requires_grad=True),
        torch.zeros(num_images, 16, 4, requires_grad=True),
        torch.zeros(num_images, 16, requires_grad=True),
    )
    return outputs, locations, point_labels, point_boxes


@pytest.mark.parametrize("num_images", [1, 2])
def test_loss_values_on_one_positive_scene_including_a_half_empty_batch(num_images: int) -> None:
    (logits, distances, centerness), locations, point_labels, point_boxes = one_positive_scene(num_images)
    losses = fcos_loss(logits, distances, centerness, locations, point_labels, point_boxes)
    # Focal loss at p = 0.5: positive 0.25 * 0.5^2 * ln 2, each negative 0.75 * 0.5^2 * ln 2; 1 positive normalises.
    negatives = num_images * 16 * 2 - 1
    assert losses["classification"].item() == pytest.approx((0.0625 + negatives * 0.1875) * LN2, rel=1e-6)
    # Zero distances predict the point box (12, 4, 12, 4): IoU 0, the enclosing box is the target -> GIoU 0 -> loss 1.
    assert losses["box"].item() == pytest.approx(1.0, rel=1e-6)
    # Centerness logit 0 -> BCE ln 2 whatever the target (sqrt(1 * 4/6)).
    assert losses["centerness"].item() == pytest.approx(LN2, rel=1e-6)
    sum(losses.values()).backward()
    for tensor in (logits, distances, centerness):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()


def test_box_loss_is_zero_when_distances_in_strides_encode_the_target_box() -> None:
    (logits, distances, centerness), locations, point_labels, point_boxes = one_positive_scene(1)
    exact = torch.zeros(1, 16, 4)
    exact[0, 1] = torch.tensor([4.0, 4.0, 4.0, 6.0]) / 8  # stride-normalised l, t, r, b of location (12, 4)
    losses = fcos_loss(logits, exact, centerness, locations, point_labels, point_boxes)
    assert losses["box"].item() == pytest.approx(0.0, abs=1e-6)
    in_pixels = fcos_loss(logits, exact * 8, centerness, locations, point_labels, point_boxes)
    assert in_pixels["box"].item() > 0.5  # un-normalised distances are wrong by 8x


def test_empty_targets_give_zero_box_and_centerness_losses_connected_to_the_graph() -> None:
    locations = make_locations([(4, 4), (2, 2)], [8, 16], [32.0])  # P = 20
    logits = torch.zeros(2, 20, 3, requires_grad=True)
    distances = torch.ones(2, 20, 4, requires_grad=True)
    centerness = torch.zeros(2, 20, requires_grad=True)
    point_labels = torch.full((2, 20), BACKGROUND)
    losses = fcos_loss(logits, distances, centerness, locations, point_labels, torch.zeros(2, 20, 4))
    # 120 negatives at p = 0.5, each 0.75 * 0.25 * ln 2, normaliser clamped to 1.
    assert losses["classification"].item() == pytest.approx(120 * 0.1875 * LN2, rel=1e-6)
    assert losses["box"].item() == 0.0
    assert losses["centerness"].item() == 0.0
    sum(losses.values()).backward()
    for tensor in (logits, distances, centerness):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
    assert not distances.grad.any() and not centerness.grad.any()


def test_ignored_locations_do_not_contribute_to_classification() -> None:
    (logits, distances, centerness), locations, point_labels, point_boxes = one_positive_scene(1)
    point_labels = point_labels.clone()
    point_labels[0, 10:] = IGNORE
    base = fcos_loss(logits.detach(), distances.detach(), centerness.detach(), locations, point_labels, point_boxes)
    confident = logits.detach().clone()
    confident[0, 10:] = 30.0  # would be a huge focal loss on negatives
    changed = fcos_loss(confident, distances.detach(), centerness.detach(), locations, point_labels, point_boxes)
    assert changed["classification"].item() == base["classification"].item()
    # 1 positive + 9 * 2 - 1 background elements remain
    assert base["classification"].item() == pytest.approx((0.0625 + 19 * 0.1875) * LN2, rel=1e-6)


def test_loss_is_float32_and_finite_under_bf16_autocast_with_saturated_logits() -> None:
    (logits, distances, centerness), locations, point_labels, point_boxes = one_positive_scene(2)
    saturated = torch.full(logits.shape, 50.0)  # every negative confidently wrong
    saturated[0, 1, 1] = -50.0  # and the positive confidently wrong
    leaves = [
        saturated.to(torch.bfloat16).requires_grad_(),
        torch.full(distances.shape, 50.0).to(torch.bfloat16).requires_grad_(),
        torch.full(centerness.shape, -50.0).to(torch.bfloat16).requires_grad_(),
    ]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = fcos_loss(*leaves, locations, point_labels, point_boxes)
    for name, value in losses.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
    assert losses["classification"].item() > 1000  # 63 negatives at ~0.75 * 50 each
    sum(losses.values()).backward()
    for leaf in leaves:
        assert torch.isfinite(leaf.grad.float()).all()


# ---------------------------------------------------------------------------------------------------- decode


def planted_outputs():
    """Head outputs for 2 images on levels (4x4, stride 8) + (2x2, stride 16) = 20 locations, 2 classes.

    Image 0 (32x32):                                  location  class  p     box (input px)       centerness  score
      A        (12, 12) l,t,r,b = 8, 6, 8, 14 px         5       1    0.9   (4, 6, 20, 26)        0.8    sqrt(0.72)
      dupA     (20, 12) 16, 6, 0, 14                      6       1    0.6   (4, 6, 20, 26)        0.8    sqrt(0.48) -> NMS
      A0       (20, 20) 16, 14, 0, 6                     10       0    0.5   (4, 6, 20, 26)        0.8    sqrt(0.40)
      clipped  (4, 4)   16, 8, 40, 8 -> (-12, -4, 44, 12) 0       1    0.85  (0, 0, 32, 12)        0.5    sqrt(0.425)
      B        (24, 24) level 1, 14, 12, 6, 7            19       0    0.7   (10, 12, 30, 31)      0.5    sqrt(0.35)
      NaN distances / NaN centerness / NaN logits / inf distances at 12, 13, 14, 15 with p = 0.99.
    Image 1 is all background (p ~ 4.5e-5).
    """
    locations = make_locations([(4, 4), (2, 2)], [8, 16], [32.0])
    logits = torch.full((2, 20, 2), -10.0)
    distances = torch.ones(2, 20, 4)
    centerness = torch.zeros(2, 20)
    plants = [  # location, class, p, distances in px, stride, centerness
        (5, 1, 0.9, [8, 6, 8, 14], 8, 0.8),
        (6, 1, 0.6, [16, 6, 0, 14], 8, 0.8),
        (10, 0, 0.5, [16, 14, 0, 6], 8, 0.8),
        (0, 1, 0.85, [16, 8, 40, 8], 8, 0.5),
        (19, 0, 0.7, [14, 12, 6, 7], 16, 0.5),
    ]
    for location, label, probability, pixels, stride, center in plants:
        logits[0, location, label] = logit(probability)
        distances[0, location] = torch.tensor(pixels, dtype=torch.float32) / stride
        centerness[0, location] = logit(center)
    logits[0, 12:16] = logit(0.99)
    distances[0, 12] = float("nan")
    centerness[0, 13] = float("nan")
    logits[0, 14] = float("nan")
    distances[0, 15] = float("inf")
    return logits, distances, centerness, locations


def test_decode_recovers_planted_boxes_with_nms_clipping_and_non_finite_outputs_dropped() -> None:
    logits, distances, centerness, locations = planted_outputs()
    detections = fcos_decode(logits, distances, centerness, locations, [(32, 32), (32, 32)])
    assert len(detections) == 2
    first = detections[0]
    torch.testing.assert_close(
        first["boxes"],
        torch.tensor([[4.0, 6.0, 20.0, 26.0], [0.0, 0.0, 32.0, 12.0], [4.0, 6.0, 20.0, 26.0], [10.0, 12.0, 30.0, 31.0]]),
        rtol=0, atol=1e-4,
    )
    assert first["labels"].tolist() == [1, 1, 0, 0]
    assert first["labels"].dtype == torch.int64 and first["boxes"].dtype == torch.float32
    expected_scores = torch.tensor([math.sqrt(0.72), math.sqrt(0.425), math.sqrt(0.40), math.sqrt(0.35)])
    torch.testing.assert_close(first["scores"], expected_scores, rtol=0, atol=1e-5)
    second = detections[1]
    assert second["boxes"].shape == (0, 4) and second["scores"].shape == (0,) and second["labels"].shape == (0,)


def test_decode_caps_detections_and_clips_to_each_images_own_size() -> None:
    logits, distances, centerness, locations = planted_outputs()
    top_two = fcos_decode(logits, distances, centerness, locations, [(32, 32), (32, 32)], max_detections=2)[0]
    assert top_two["labels"].tolist() == [1, 1]
    # A smaller image (height 20, width 16) clips A to (4, 6, 16, 20) and the clipped box to (0, 0, 16, 12).
    small = fcos_decode(logits, distances, centerness, locations, [(20, 16), (32, 32)], max_detections=2)[0]
    torch.testing.assert_close(small["boxes"], torch.tensor([[4.0, 6.0, 16.0, 20.0], [0.0, 0.0, 16.0, 12.0]]), rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model(3)


def sample_batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[10.0, 20.0, 60.0, 50.0], [0.0, 0.0, 30.0, 30.0]]),
            "labels": torch.tensor([0, 2]),
            "iscrowd": torch.tensor([False, True]),
        },
    ]
    return images, targets


def test_train_mode_returns_three_finite_scalar_losses(model: torch.nn.Module) -> None:
    images, targets = sample_batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"classification", "box", "centerness"}
    for name, value in losses.items():
        assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value), name
        assert value.requires_grad, name
    assert losses["box"].item() > 0  # the images have positives


def test_eval_mode_returns_detections_per_image_clipped_to_each_image() -> None:
    model = tiny_model(3, score_threshold=0.0, max_detections=5).eval()
    images = [torch.randn(3, 64, 64), torch.randn(3, 48, 80)]  # padded to 64x96 inside
    with torch.no_grad():
        detections = model(images)
    assert isinstance(detections, list) and len(detections) == 2
    for detection, (height, width) in zip(detections, [(64, 64), (48, 80)]):
        assert set(detection) == {"boxes", "scores", "labels"}
        assert detection["boxes"].shape == (5, 4) and detection["scores"].shape == (5,) and detection["labels"].shape == (5,)
        assert detection["labels"].dtype == torch.int64 and ((detection["labels"] >= 0) & (detection["labels"] < 3)).all()
        assert (detection["scores"][:-1] >= detection["scores"][1:]).all()
        boxes = detection["boxes"]
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= width).all() and (boxes[:, [1, 3]] <= height).all()


def test_uint8_images_raise_type_error(model: torch.nn.Module) -> None:
    model.eval()
    with pytest.raises(TypeError, match="floating point"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(TypeError, match="floating point"):
        model([torch.zeros(3, 64, 64, dtype=torch.uint8)])


@pytest.mark.parametrize(
    "targets, message",
    [
        (None, "targets are required"),
        ([{"boxes": torch.tensor([4.0, 4.0, 40.0, 40.0]), "labels": torch.tensor([1])}], r"must be a \(N, 4\) tensor"),
        ([{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0, 1.0]]), "labels": torch.tensor([1])}], r"must be a \(N, 4\) tensor"),
        ([{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]])}], "with 'boxes' and 'labels'"),
        ([{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([3])}], r"label 3 outside \[0, 3\)"),
        ([{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([-1])}], r"label -1 outside \[0, 3\)"),
    ],
)
def test_malformed_targets_raise_value_error(model: torch.nn.Module, targets, message: str) -> None:
    model.train()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(1, 3, 64, 64), targets)


def test_callers_targets_are_not_mutated(model: torch.nn.Module) -> None:
    images, targets = sample_batch()
    before = copy.deepcopy(targets)
    model.train()
    model(images, targets)
    assert [set(target) for target in targets] == [set(target) for target in before]
    for target, original in zip(targets, before):
        for key in original:
            assert target[key].dtype == original[key].dtype and torch.equal(target[key], original[key]), key


# ---------------------------------------------------------------------------------------------------- overfit


def rectangles_batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two 128x128 dark images with two filled rectangles each: class 0 is red, class 1 is green."""
    images = torch.full((2, 3, 128, 128), -1.0)
    targets = [
        {"boxes": torch.tensor([[16.0, 20.0, 64.0, 60.0], [72.0, 64.0, 112.0, 120.0]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.tensor([[40.0, 24.0, 96.0, 80.0], [8.0, 88.0, 40.0, 120.0]]), "labels": torch.tensor([1, 0])},
    ]
    colours = {0: torch.tensor([2.0, -1.0, -1.0]), 1: torch.tensor([-1.0, 2.0, -1.0])}
    for image, target in zip(images, targets):
        for (x1, y1, x2, y2), label in zip(target["boxes"].long().tolist(), target["labels"].tolist()):
            image[:, y1:y2, x1:x2] = colours[label][:, None, None]
    return images, targets


@pytest.mark.slow
def test_overfits_one_batch_and_detects_its_boxes(overfit: Callable[..., list[float]]) -> None:
    images, targets = rectangles_batch()
    model = tiny_model(2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    totals = overfit(model, images, targets, optimizer, 150)
    assert all(math.isfinite(value) for value in totals)
    assert totals[-1] < 0.4 * totals[0], f"loss went from {totals[0]:.3f} to {totals[-1]:.3f}"

    model.eval()
    with torch.no_grad():
        detections = model(images)
    for detection, target in zip(detections, targets):
        top_boxes, top_labels = detection["boxes"][:2], detection["labels"][:2]
        assert len(top_boxes) == 2, detection
        iou = box_iou(target["boxes"], top_boxes)  # (GT, top-2)
        matched = iou.argmax(dim=1)
        assert sorted(matched.tolist()) == [0, 1], iou  # one detection per ground-truth box
        assert (iou.max(dim=1).values > 0.5).all(), iou
        assert torch.equal(top_labels[matched], target["labels"]), (top_labels, target["labels"])
