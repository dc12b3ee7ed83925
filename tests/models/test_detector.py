"""The family contract (`DetectionModel`) and the input checks every family shares.

For each family, a tiny randomly initialised model on small images: it meets the protocol; its `forward` is exactly
the composition of its steps (training: `loss` of the `training_targets` of the `head_outputs`; eval: `decode` of
the `head_outputs`); its training targets are its pure builder's, on the maps of its head outputs, with its config;
`max_detections` reads its config. Then `batch_images` and `check_targets` on their own.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from anchorfree.models import MODELS, centernet, cornernet, fcos
from anchorfree.models.detector import DetectionModel, batch_images, check_targets

FAMILIES = ("fcos", "centernet", "cornernet")
NUM_CLASSES = 3
CONFIGS: dict[str, Any] = {"fcos": fcos.FCOSConfig, "centernet": centernet.CenterNetConfig, "cornernet": cornernet.CornerNetConfig}
TINY: dict[str, dict[str, Any]] = {  # the heads of tests/models/test_<family>.py, about 0.1 s a step on one CPU thread
    "fcos": {"fpn_channels": 32, "head_convs": 1, "norm_groups": 8},
    "centernet": {"neck": "fpn", "fpn_channels": 16, "head_channels": 16},
    "cornernet": {"fpn_channels": 16, "pool_channels": 16, "head_channels": 16},
}


def tiny_model(family: str, backbone: str = "mobilenet_v2", backbone_width: float = 0.25, **options: Any) -> nn.Module:
    """The family's builder from `MODELS`, random weights (seed 0), a tiny head; `options` override its config."""
    torch.manual_seed(0)
    config = CONFIGS[family](**{**TINY[family], **options})
    return MODELS[family](NUM_CLASSES, backbone, backbone_width=backbone_width, config=config)


def scene() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images of different sizes (a 64 x 96 batch once padded to 32) and their targets in input pixels: one box
    in the first; a box and a crowd box in the second (48 x 80)."""
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(3, 64, 64, generator=generator), torch.randn(3, 48, 80, generator=generator)]
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[10.0, 8.0, 60.0, 40.0], [0.0, 0.0, 30.0, 30.0]]),
            "labels": torch.tensor([0, 2]),
            "iscrowd": torch.tensor([False, True]),
        },
    ]
    return images, targets


def assert_same_detections(actual: list[dict[str, torch.Tensor]], expected: list[dict[str, torch.Tensor]]) -> None:
    assert len(actual) == len(expected)
    for image_actual, image_expected in zip(actual, expected):
        assert set(image_actual) == set(image_expected) == {"boxes", "scores", "labels"}
        for key in image_expected:
            assert torch.equal(image_actual[key], image_expected[key]), key


def assert_same_dataclasses(actual: list[Any], expected: list[Any]) -> None:
    """Per-image target dataclasses (CenterNetTargets, CornerNetTargets): every field equal, exactly."""
    assert len(actual) == len(expected) and all(type(one) is type(other) for one, other in zip(actual, expected))
    for image_actual, image_expected in zip(actual, expected):
        for name, value in vars(image_expected).items():
            assert torch.equal(getattr(image_actual, name), value), name


# ---------------------------------------------------------------------------------------------- the protocol


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_meets_the_protocol_under_its_key_in_models(family: str) -> None:
    model = tiny_model(family)
    assert isinstance(model, DetectionModel)
    assert model.family == family and isinstance(model.config, CONFIGS[family])
    assert isinstance(model.size_divisor, int) and model.size_divisor == 32


def test_a_module_without_the_members_is_not_a_detection_model() -> None:
    assert not isinstance(nn.Conv2d(3, 8, 3), DetectionModel)


@pytest.mark.parametrize("family", FAMILIES)
def test_max_detections_reads_the_family_config(family: str) -> None:
    model = tiny_model(family, max_detections=7)
    assert model.max_detections == 7
    model.config.max_detections = 3  # evaluation settings are changed on the config of a loaded model
    assert model.max_detections == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_train_mode_forward_is_the_loss_of_the_training_targets_of_the_head_outputs(family: str) -> None:
    model = tiny_model(family).train()
    images, targets = scene()
    losses = model(images, targets)
    batch, image_sizes = batch_images(images, model.size_divisor)
    outputs = model.head_outputs(batch)
    expected = model.loss(outputs, model.training_targets(outputs, targets, image_sizes))
    assert list(losses) == list(expected)
    for name, value in expected.items():
        assert losses[name].dtype == torch.float32 and losses[name].shape == () and losses[name].requires_grad, name
        assert torch.equal(losses[name], value), name


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_mode_forward_is_the_decode_of_the_head_outputs(family: str) -> None:
    model = tiny_model(family, score_threshold=0.0, max_detections=5).eval()
    images, _ = scene()
    with torch.no_grad():
        detections = model(images)
        batch, image_sizes = batch_images(images, model.size_divisor)
        expected = model.decode(model.head_outputs(batch), image_sizes)
    assert image_sizes == [(64, 64), (48, 80)] and all(len(detection["boxes"]) == 5 for detection in expected)
    assert_same_detections(detections, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_targets_check_the_labels_against_the_head(family: str) -> None:
    model = tiny_model(family).eval()
    images, targets = scene()
    targets[1]["labels"] = torch.tensor([0, NUM_CLASSES])
    batch, image_sizes = batch_images(images, model.size_divisor)
    with torch.no_grad():
        outputs = model.head_outputs(batch)
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\] has label 3 outside \[0, 3\)"):
        model.training_targets(outputs, targets, image_sizes)


# ------------------------------------------------------------------ training targets = the pure builders'


def test_fcos_training_targets_are_assign_targets_on_the_locations_of_the_head_outputs() -> None:
    model = tiny_model("fcos", center_sampling_radius=2.5, size_boundaries=[16.0, 32.0, 64.0, 128.0]).eval()
    images, targets = scene()
    batch, image_sizes = batch_images(images, model.size_divisor)  # (2, 3, 64, 96)
    with torch.no_grad():
        outputs = model.head_outputs(batch)
    point_labels, point_boxes = model.training_targets(outputs, targets, image_sizes)
    # P3-P5 at strides 8-32 of 64 x 96, then P6 and P7 by 3x3 stride-2 convs: 2 x 3 -> 1 x 2 -> 1 x 1.
    locations = fcos.make_locations([(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)], [8, 16, 32, 64, 128], [16.0, 32.0, 64.0, 128.0])
    assert torch.equal(outputs[3].points, locations.points) and torch.equal(outputs[3].size_ranges, locations.size_ranges)
    expected = [fcos.assign_targets(locations, target["boxes"], target["labels"], target.get("iscrowd"), 2.5) for target in targets]
    assert point_labels.shape == (2, 96 + 24 + 6 + 2 + 1) and point_boxes.shape == (2, 129, 4)
    for image_index, (labels, boxes) in enumerate(expected):
        assert torch.equal(point_labels[image_index], labels) and torch.equal(point_boxes[image_index], boxes)
    assert (point_labels[0] >= 0).any() and (point_labels[1] == fcos.IGNORE).any()  # a real scene: positives, a crowd


def test_centernet_training_targets_are_centernet_targets_on_the_heatmap_of_the_head_outputs() -> None:
    model = tiny_model("centernet", radius_formula="original", min_overlap=0.7, max_objects=8).eval()
    images, targets = scene()
    batch, image_sizes = batch_images(images, model.size_divisor)
    with torch.no_grad():
        outputs = model.head_outputs(batch)
    assert outputs[0].shape == (2, NUM_CLASSES, 16, 24)  # stride 4
    expected = [
        centernet.centernet_targets(target["boxes"], target["labels"], NUM_CLASSES, (16, 24), 4, "original", 0.7, 8, target.get("iscrowd"))
        for target in targets
    ]
    assert_same_dataclasses(model.training_targets(outputs, targets, image_sizes), expected)
    assert [len(image.indices) for image in expected] == [1, 1]  # the crowd box has no target


def test_cornernet_training_targets_are_cornernet_targets_on_the_maps_of_the_head_outputs() -> None:
    model = tiny_model("cornernet", radius_formula="original", min_overlap=0.7, max_objects=8).eval()
    images, targets = scene()
    batch, image_sizes = batch_images(images, model.size_divisor)
    with torch.no_grad():
        outputs = model.head_outputs(batch)
    top_left, bottom_right = outputs  # the final pair; no intermediate heads without an Hourglass
    assert top_left[0].shape == bottom_right[0].shape == (2, NUM_CLASSES, 16, 24) and outputs.intermediate == []
    expected = [
        cornernet.cornernet_targets(target["boxes"], target["labels"], NUM_CLASSES, (16, 24), 4, "original", 0.7, 8, target.get("iscrowd"))
        for target in targets
    ]
    assert_same_dataclasses(model.training_targets(outputs, targets, image_sizes), expected)
    assert [len(image.top_left_indices) for image in expected] == [1, 1]


# ------------------------------------------------------------------------------------- family particulars


def test_centernet_flip_test_forward_decodes_the_batch_followed_by_its_mirror() -> None:
    model = tiny_model("centernet", score_threshold=0.0, max_detections=5, flip_test=True).eval()
    images, _ = scene()
    with torch.no_grad():
        detections = model(images)
        batch, image_sizes = batch_images(images, model.size_divisor)
        outputs = model.head_outputs(torch.cat([batch, batch.flip(-1)]))
        assert_same_detections(detections, model.decode(outputs, image_sizes))
        with pytest.raises(ValueError, match=r"with flip_test, decode takes the outputs of the 2 images followed by their mirrors \(4 maps\), got 2"):
            model.decode(model.head_outputs(batch), image_sizes)


def test_cornernet_hourglass_trains_its_intermediate_heads_only_in_training_mode() -> None:
    """Hourglass-104 has two stacks: the first stack's heads add the same losses to the final pair's in training,
    and are not run in eval mode."""
    model = tiny_model("cornernet", backbone="hourglass104", backbone_width=0.125).train()
    assert model.size_divisor == 128
    images, targets = scene()
    losses = model(images, targets)
    batch, image_sizes = batch_images(images, model.size_divisor)  # (2, 3, 128, 128)
    outputs = model.head_outputs(batch)
    assert len(outputs.intermediate) == 1
    image_targets = model.training_targets(outputs, targets, image_sizes)
    final = cornernet.cornernet_loss(outputs.top_left, outputs.bottom_right, image_targets, model.config)
    first_stack = cornernet.cornernet_loss(*outputs.intermediate[0], image_targets, model.config)
    for name, value in model.loss(outputs, image_targets).items():
        assert torch.equal(losses[name], value) and torch.equal(value, final[name] + first_stack[name]), name
    model.eval()
    with torch.no_grad():
        assert model.head_outputs(batch).intermediate == []


# --------------------------------------------------------------------------------------------- batch_images


def test_a_list_is_padded_bottom_right_to_the_divisor_and_keeps_each_size() -> None:
    images = [torch.rand(3, 50, 70), torch.rand(3, 64, 33)]
    batch, image_sizes = batch_images(images, 32)
    assert batch.shape == (2, 3, 64, 96) and image_sizes == [(50, 70), (64, 33)]
    for image, padded in zip(images, batch):
        height, width = image.shape[-2:]
        assert torch.equal(padded[:, :height, :width], image)
        assert padded[:, height:].abs().sum() == 0 and padded[:, :, width:].abs().sum() == 0
    batch, _ = batch_images(images, 128)
    assert batch.shape == (2, 3, 128, 128)


def test_a_batch_tensor_is_padded_only_when_needed() -> None:
    images = torch.rand(2, 3, 50, 70)
    batch, image_sizes = batch_images(images, 32)
    assert batch.shape == (2, 3, 64, 96) and image_sizes == [(50, 70), (50, 70)]
    assert torch.equal(batch[..., :50, :70], images) and batch[..., 50:, :].abs().sum() == 0
    aligned = torch.rand(1, 3, 64, 32)
    batch, image_sizes = batch_images(aligned, 32)
    assert batch is aligned and image_sizes == [(64, 32)]


@pytest.mark.parametrize(
    "images, error, message",
    [
        (torch.rand(3, 64, 64), ValueError, r"images must be \(N, 3, H, W\), got shape \(3, 64, 64\)"),
        (torch.rand(1, 1, 64, 64), ValueError, r"images must be \(N, 3, H, W\), got shape \(1, 1, 64, 64\)"),
        ([torch.rand(3, 32, 32), torch.rand(1, 32, 32)], ValueError, r"images\[1\] must be a \(3, H, W\) tensor, got \(1, 32, 32\)"),
        ([torch.rand(3, 32, 32), [[0.0]]], ValueError, r"images\[1\] must be a \(3, H, W\) tensor, got list"),
        ([], TypeError, "non-empty list of \\(3, H, W\\) tensors, got list"),
        (np.zeros((1, 3, 32, 32), dtype=np.float32), TypeError, "got ndarray"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "must be floating point and normalised by the data pipeline, got dtype torch.uint8"),
        ([torch.zeros(3, 32, 32, dtype=torch.uint8)], TypeError, "must be floating point .* got dtype torch.uint8"),
    ],
)
def test_bad_images_raise_with_the_shape_or_dtype(images: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        batch_images(images, 32)


# -------------------------------------------------------------------------------------------- check_targets


def one_box(**extra: Any) -> dict[str, Any]:
    return {"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1]), **extra}


@pytest.mark.parametrize(
    "targets, message",
    [
        (None, r"targets are required in training mode"),
        ([one_box()], r"expected a list of 2 target dicts \(one per image\), got 1"),
        (one_box(), r"expected a list of 2 target dicts \(one per image\), got dict"),
        ([one_box(), {"boxes": torch.zeros(0, 4)}], r"targets\[1\] must be a dict with 'boxes' and 'labels'"),
        ([one_box(), one_box(boxes=torch.tensor([4.0, 4.0, 40.0, 40.0]))], r"targets\[1\]\['boxes'\] must be a \(N, 4\) tensor of x1, y1, x2, y2, got \(4,\)"),
        ([one_box(), one_box(boxes=[[4.0, 4.0, 40.0, 40.0]])], r"targets\[1\]\['boxes'\] must be a \(N, 4\) tensor .* got list"),
        ([one_box(), one_box(labels=torch.tensor([1, 2]))], r"targets\[1\]\['labels'\] must be a \(1,\) tensor, got \(2,\)"),
        ([one_box(boxes=torch.tensor([[4.0, 4.0, math.nan, 40.0]])), one_box()], r"targets\[0\]\['boxes'\] contains NaN or inf"),
        ([one_box(), one_box(boxes=torch.tensor([[40.0, 4.0, 40.0, 50.0]]))], r"targets\[1\]\['boxes'\] has boxes with x2 <= x1 or y2 <= y1: \[\[40.0, 4.0, 40.0, 50.0\]\]"),
    ],
)
def test_malformed_targets_raise_value_error_naming_the_image(targets: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_targets(targets, 2)


def test_well_formed_targets_pass_including_an_image_without_boxes() -> None:
    check_targets([one_box(iscrowd=torch.tensor([False])), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}], 2)
