"""Transforms keep boxes on the objects they were drawn around; predictions map back to original pixels."""

from __future__ import annotations

import torch

from anchorfree.data.dataset import scale_to_original
from anchorfree.data.transforms import denormalize, eval_transforms, make_sample, resized_shape, train_transforms


def scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A black 120x200 image with a white 30x50 rectangle at x 20-70, y 40-70."""
    image = torch.zeros(3, 120, 200, dtype=torch.uint8)
    image[:, 40:70, 20:70] = 255
    return image, torch.tensor([[20.0, 40.0, 70.0, 70.0]])


def brightness_inside(image: torch.Tensor, box: torch.Tensor) -> float:
    x1, y1, x2, y2 = box.round().int().tolist()
    return denormalize(image)[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].float().mean().item()


def test_train_pipeline_moves_boxes_with_the_pixels_under_flip_and_resize() -> None:
    image, boxes = scene()
    pipeline = train_transforms([240], max_size=400, horizontal_flip=1.0, photometric=False)
    sample = pipeline(make_sample(image, boxes, torch.tensor([0]), torch.tensor([False])))
    out_image, out_box = sample["image"], sample["boxes"][0]
    assert tuple(out_image.shape) == (3, 240, 400)
    # Resize x2, then flip: x 20-70 -> 40-140 -> 400-140 .. 400-40.
    torch.testing.assert_close(out_box, torch.tensor([260.0, 80.0, 360.0, 140.0]))
    assert brightness_inside(out_image, out_box) > 240
    assert denormalize(out_image)[:, 10:30, 10:30].float().mean() < 15


def test_photometric_distortion_keeps_the_object_visible_inside_its_box() -> None:
    image, boxes = scene()
    torch.manual_seed(0)
    pipeline = train_transforms([120], max_size=400, horizontal_flip=0.0, photometric=True)
    for _ in range(5):
        sample = pipeline(make_sample(image, boxes, torch.tensor([0]), torch.tensor([False])))
        assert brightness_inside(sample["image"], sample["boxes"][0]) > denormalize(sample["image"])[:, :30, 100:].float().mean() + 100


def test_boxes_that_shrink_below_a_pixel_are_dropped_with_their_labels() -> None:
    image = torch.zeros(3, 400, 400, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 10.0, 11.5, 11.5], [100.0, 100.0, 200.0, 200.0]])
    sample = train_transforms([100], max_size=100, horizontal_flip=0.0, photometric=False)(
        make_sample(image, boxes, torch.tensor([3, 5]), torch.tensor([False, True]))
    )
    assert sample["labels"].tolist() == [5] and sample["iscrowd"].tolist() == [True]


def test_eval_resize_keeps_aspect_ratio_and_predictions_map_back() -> None:
    image, boxes = scene()
    sample = eval_transforms(60, max_size=1000)(make_sample(image, boxes, torch.tensor([0]), torch.tensor([False])))
    assert tuple(sample["image"].shape[-2:]) == resized_shape(120, 200, 60, 1000) == (60, 100)
    back = scale_to_original(sample["boxes"].as_subclass(torch.Tensor), (60, 100), (120, 200))
    torch.testing.assert_close(back, boxes)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)
