"""What `predict` shows: class colours, labels that stay inside the image and off each other, sizes that follow the
image, class-agnostic NMS, and the closing summary.

The detector is a stub that returns planted detections, so every count and pixel below is known in advance.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from anchorfree import api
from anchorfree.cli import main
from anchorfree.config import get_preset
from anchorfree.drawing import CLASS_COLOURS, class_colour, draw_detections, font_size_for, layout_labels, line_width_for, text_colour

CLASS_NAMES = ["circle", "square", "triangle"]


class PlantedDetections(nn.Module):
    """A stand-in model: whatever the image, the same detections, boxes given as fractions of the network input."""

    def __init__(self, boxes: list[list[float]], scores: list[float], labels: list[int]) -> None:
        super().__init__()
        self.boxes, self.scores, self.labels = torch.tensor(boxes), torch.tensor(scores), torch.tensor(labels)

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        height, width = images[0].shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        return [{"boxes": self.boxes * scale, "scores": self.scores, "labels": self.labels} for _ in images]


def planted_detector(boxes: list[list[float]], scores: list[float], labels: list[int]) -> api.Detector:
    config = get_preset("fcos_mobilenet_v2_cpu")
    config.data.val_size, config.data.max_size, config.train.amp = 128, 160, False
    return api.Detector(PlantedDetections(boxes, scores, labels), config, CLASS_NAMES, [1, 2, 3], torch.device("cpu"))


def overlaps(first: tuple[int, int, int, int], second: tuple[int, int, int, int]) -> bool:
    """Whether two (x1, y1, x2, y2) rectangles share some area (touching edges do not)."""
    return min(first[2], second[2]) > max(first[0], second[0]) and min(first[3], second[3]) > max(first[1], second[1])


def inside(rectangle: tuple[int, int, int, int], image_size: tuple[int, int]) -> bool:
    return rectangle[0] >= 0 and rectangle[1] >= 0 and rectangle[2] <= image_size[1] and rectangle[3] <= image_size[0]


# ------------------------------------------------------------------------------------------------- drawing


def test_each_class_is_drawn_in_its_palette_colour() -> None:
    image = torch.full((3, 200, 300), 128, dtype=torch.uint8)
    boxes = torch.tensor([[20.0, 60, 80, 180], [110, 60, 170, 180], [200, 60, 260, 180]])
    drawn = draw_detections(image, boxes, [0, 1, 2], ["circle 0.90", "square 0.80", "triangle 0.70"])
    edge_colours = [tuple(drawn[:, 120, int(box[0])].tolist()) for box in boxes]  # left edge, mid-height
    assert edge_colours == [class_colour(0), class_colour(1), class_colour(2)] == list(CLASS_COLOURS[:3])
    assert len(set(edge_colours)) == 3
    assert torch.equal(image, torch.full((3, 200, 300), 128, dtype=torch.uint8))  # the input is not drawn on


def test_the_best_detection_gets_the_label_above_its_box_in_its_colour() -> None:
    detector = planted_detector([[0.3, 0.4, 0.7, 0.8], [0.3, 0.4, 0.7, 0.8]], [0.6, 0.9], [1, 0])
    image = torch.zeros((3, 200, 200), dtype=torch.uint8)
    drawn = detector.draw(image, detector.predict(image, score_threshold=0.3))
    # Label backgrounds just above the box's top-left corner (x1, y1) = (60, 80): the 0.9 circle's colour.
    assert tuple(drawn[:, 78, 61].tolist()) == class_colour(0)


def test_label_text_is_black_or_white_by_the_background() -> None:
    assert text_colour((255, 225, 25)) == (0, 0, 0)  # yellow
    assert text_colour((128, 0, 0)) == (255, 255, 255)  # maroon
    assert all(text_colour(colour) in {(0, 0, 0), (255, 255, 255)} for colour in CLASS_COLOURS)


def test_line_width_and_font_size_grow_with_the_image() -> None:
    small, photo = (300, 300), (3000, 4000)
    assert line_width_for(photo) > line_width_for(small) >= 2
    assert font_size_for(photo) > font_size_for(small) >= 10


def test_a_label_at_the_image_corner_stays_inside() -> None:
    image_size = (120, 160)  # (height, width)
    corner_boxes = [(0.0, 0.0, 30.0, 20.0), (140.0, 100.0, 160.0, 120.0), (0.0, 100.0, 10.0, 120.0), (150.0, 0.0, 160.0, 8.0)]
    for box in corner_boxes:
        [rectangle] = layout_labels([box], [(70, 14)], image_size)
        assert inside(rectangle, image_size) and (rectangle[2] - rectangle[0], rectangle[3] - rectangle[1]) == (70, 14)
    [too_wide] = layout_labels([(10.0, 10.0, 50.0, 50.0)], [(400, 14)], image_size)
    assert too_wide == (0, 0, 160, 14)  # cut at the image's edge


def test_overlapping_labels_are_moved_off_each_other() -> None:
    image_size = (300, 400)
    # Two classes on one object, a third box nearly on top of it, and a crowd of boxes in one corner.
    boxes = [(100.0, 100.0, 200.0, 200.0), (100.0, 100.0, 200.0, 200.0), (104.0, 98.0, 204.0, 198.0)]
    boxes += [(float(x), float(y), x + 30.0, y + 30.0) for x in (0, 10, 20) for y in (0, 10, 20)]
    sizes = [(80, 14)] * len(boxes)
    rectangles = layout_labels(boxes, sizes, image_size)
    assert rectangles[0] == (100, 86, 180, 100)  # the first label sits above its box
    assert rectangles[1] == (100, 100, 180, 114)  # the second is stacked under it, inside the box
    for first, second in itertools.combinations(rectangles, 2):
        assert not overlaps(first, second), (first, second)
    assert all(inside(rectangle, image_size) for rectangle in rectangles)


# ------------------------------------------------------------------------------------------ agnostic NMS


def test_agnostic_nms_keeps_one_of_two_classes_on_the_same_box() -> None:
    same_box = [0.2, 0.2, 0.6, 0.6]
    detector = planted_detector([same_box, same_box, [0.7, 0.7, 0.9, 0.9]], [0.9, 0.8, 0.5], [0, 1, 1])
    image = torch.zeros((3, 128, 128), dtype=torch.uint8)
    assert detector.predict(image).get("names") == ["circle", "square", "square"]  # per-class NMS keeps both
    kept = detector.predict(image, agnostic_nms=0.7)
    assert kept["names"] == ["circle", "square"] and kept["scores"].tolist() == pytest.approx([0.9, 0.5])
    assert len(kept["boxes"]) == len(kept["labels"]) == len(kept["category_ids"]) == 2
    with pytest.raises(ValueError, match="IoU threshold in \\(0, 1\\], got 1.5"):
        detector.predict(image, agnostic_nms=1.5)


# ------------------------------------------------------------------------------------------------ summary


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three readable photos and one file that is no image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (160, 120), (40 * index, 90, 160)).save(folder / f"photo_{index}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


@pytest.fixture
def planted_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """`predict` loads a detector that finds two circles and a square (on one circle's box) in every image."""
    same_box = [0.1, 0.1, 0.4, 0.4]
    detector = planted_detector([same_box, [0.5, 0.5, 0.9, 0.9], same_box], [0.9, 0.8, 0.6], [0, 0, 1])
    monkeypatch.setattr(api, "load", lambda weights, device="auto", overrides=None: detector)


def test_predict_summary_counts_images_skips_and_detections_per_class(photos: Path, planted_load: None, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="broken.jpg"):
        summary = api.predict(tmp_path / "best.safetensors", [photos], out, progress=False)
    assert (summary.images, len(summary.skipped), summary.images_without_detections) == (3, 1, 0)
    assert summary.detections_per_class == {"circle": 6, "square": 3}
    assert summary.predictions_json == out / "predictions.json" and summary.predictions_json.is_file()
    assert sorted(path.name for path in summary.drawn) == ["photo_0.jpg", "photo_1.jpg", "photo_2.jpg"]
    assert all(path.parent == out and path.is_file() for path in summary.drawn)
    with pytest.warns(UserWarning, match="broken.jpg"):
        agnostic = api.predict(tmp_path / "best.safetensors", [photos], tmp_path / "agnostic", agnostic_nms=0.7, save_images=False, progress=False)
    assert agnostic.detections_per_class == {"circle": 6} and agnostic.drawn == []


def test_cli_predict_prints_the_summary(photos: Path, planted_load: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert main(["predict", str(tmp_path / "best.safetensors"), str(photos), "--out", str(out), "--agnostic-nms", "--agnostic-iou", "0.5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("predicted 3 image(s) in ") and lines[0].endswith("; 1 skipped (could not be read, named above)")
    assert lines[1] == "6 detection(s) with score >= 0.3, class-agnostic NMS at IoU 0.5; 0 image(s) with none"
    assert lines[2:] == ["  circle  6", f"predictions: {out / 'predictions.json'}", f"drawn images: {out}/ (3 file(s))"]
