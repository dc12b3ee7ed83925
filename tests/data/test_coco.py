"""COCO reader: label mapping, crowd and empty images, and errors that name the file, annotation and value."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from anchorfree.data.coco import read_coco
from anchorfree.data.records import InvalidAnnotation

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def write_dataset(folder: Path, annotations: list[dict[str, Any]], images: list[dict[str, Any]] | None = None, categories: list[dict[str, Any]] | None = None) -> Path:
    """A COCO file beside an images/ folder holding 64x48 JPEGs for every image entry."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images = images if images is not None else [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 48}, {"id": 9, "file_name": "b.jpg", "width": 64, "height": 48}]
    for image in images:
        path = folder / "images" / image["file_name"]
        if not path.exists() and ".." not in image["file_name"]:
            Image.new("RGB", (image.get("width", 64), image.get("height", 48)), (40, 80, 120)).save(path)
    categories = categories if categories is not None else [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}, {"id": 10, "name": "owl"}]
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def box(annotation_id: int, image_id: int, category_id: int, bbox: list[Any], **extra: Any) -> dict[str, Any]:
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def test_non_contiguous_category_ids_map_to_sorted_contiguous_labels_and_back(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, [box(1, 7, 10, [1, 2, 10, 20]), box(2, 7, 1, [5, 5, 4, 4]), box(3, 9, 3, [0, 0, 8, 8])])
    data = read_coco(path)
    assert data.category_ids == [1, 3, 10]
    assert data.class_names == ["dog", "cat", "owl"]
    first = next(record for record in data.records if record.image_id == 7)
    assert first.labels.tolist() == [2, 0]
    np.testing.assert_allclose(first.boxes[0], [1, 2, 11, 22])
    ground_truth = data.coco_ground_truth()
    assert sorted(annotation["category_id"] for annotation in ground_truth["annotations"]) == [1, 3, 10]
    assert ground_truth["annotations"][0]["bbox"] == [1.0, 2.0, 10.0, 20.0]


def test_crowd_boxes_are_flagged_and_images_without_boxes_are_kept(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, [box(1, 7, 1, [1, 2, 10, 20], iscrowd=1), box(2, 7, 3, [3, 3, 5, 5])])
    data = read_coco(path)
    assert [record.image_id for record in data.records] == [7, 9]
    assert data.records[0].iscrowd.tolist() == [True, False]
    assert len(data.records[1].boxes) == 0


def test_zero_size_box_is_skipped_with_a_counted_warning_or_raised_under_error(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, [box(41, 7, 1, [1, 2, 0, 20]), box(42, 7, 1, [1, 2, 5, 5])])
    with pytest.warns(UserWarning, match="1 annotation or image problem"):
        data = read_coco(path)
    assert data.records[0].annotation_ids == [42]
    assert data.problems == {"zero-size box": 1}
    with pytest.raises(InvalidAnnotation) as error:
        read_coco(path, on_invalid="error")
    message = str(error.value)
    assert "annotations.json" in message and "id=41" in message and "a.jpg" in message and "[1, 2, 0, 20]" in message


@pytest.mark.parametrize(
    "annotation, expected",
    [
        (box(5, 7, 99, [1, 1, 2, 2]), "category_id 99"),
        (box(5, 7, 1, [1, 1, -3, 2]), "negative width"),
        (box(5, 7, 1, [1, 1, 2]), "must be 4 numbers"),
        (box(5, 7, 1, []), "must be 4 numbers"),
        (box(5, 7, 1, [1, "a", 2, 2]), "must be 4 numbers"),
        (box(5, 7, 1, [1, math.nan, 2, 2]), "NaN or inf"),
    ],
)
def test_structural_annotation_errors_name_file_annotation_and_value(tmp_path: Path, annotation: dict[str, Any], expected: str) -> None:
    path = write_dataset(tmp_path, [annotation])
    with pytest.raises(InvalidAnnotation, match=expected) as error:
        read_coco(path)
    assert str(path) in str(error.value) and "id=5" in str(error.value)


def test_duplicate_annotation_and_image_ids_are_errors(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, [box(5, 7, 1, [1, 1, 2, 2]), box(5, 9, 1, [1, 1, 2, 2])])
    with pytest.raises(InvalidAnnotation, match="duplicate annotation id 5"):
        read_coco(path)
    images = [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 48}, {"id": 7, "file_name": "b.jpg", "width": 64, "height": 48}]
    path = write_dataset(tmp_path / "two", [], images=images)
    with pytest.raises(InvalidAnnotation, match="image id 7 is used by 'a.jpg' and 'b.jpg'"):
        read_coco(path)


def test_boxes_partly_outside_are_clipped_and_boxes_fully_outside_are_skipped(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, [box(1, 7, 1, [-5, 40, 20, 30]), box(2, 7, 1, [100, 100, 5, 5])])
    with pytest.warns(UserWarning, match="box outside the image"):
        data = read_coco(path)
    np.testing.assert_allclose(data.records[0].boxes, [[0, 40, 15, 48]])


def test_annotations_of_unknown_images_are_counted(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, [box(1, 1234, 1, [1, 1, 5, 5])])
    with pytest.warns(UserWarning, match="unknown image_id"):
        data = read_coco(path)
    assert sum(len(record.boxes) for record in data.records) == 0


def test_file_name_escaping_the_image_folder_is_refused(tmp_path: Path) -> None:
    Image.new("RGB", (64, 48)).save(tmp_path / "outside.jpg")
    images = [{"id": 1, "file_name": "../outside.jpg", "width": 64, "height": 48}]
    path = write_dataset(tmp_path / "set", [], images=images)
    (tmp_path / "set" / "images" / "placeholder.jpg").write_bytes(b"")
    with pytest.raises(InvalidAnnotation, match="outside the image folder"):
        read_coco(path, image_root=tmp_path / "set" / "images")


def test_recorded_size_that_disagrees_with_the_file_is_an_error_with_an_exif_hint(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "a.jpg", "width": 48, "height": 64}]
    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "images" / "a.jpg")
    path = write_dataset(tmp_path, [], images=images)
    with pytest.raises(InvalidAnnotation, match="recorded size 48x64 but the file is 64x48.*EXIF"):
        read_coco(path)


def test_missing_image_and_bad_json_are_errors_naming_the_file(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}, {"id": 2, "file_name": "gone.jpg", "width": 64, "height": 48}]
    path = write_dataset(tmp_path, [], images=images)
    (tmp_path / "images" / "gone.jpg").unlink()
    with pytest.raises(InvalidAnnotation, match="gone.jpg"):
        read_coco(path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(InvalidAnnotation, match="broken.json: not valid JSON"):
        read_coco(broken)


def test_caller_files_are_never_modified(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, [box(1, 7, 1, [1, 2, 0, 20]), box(2, 9, 1, [-5, 1, 20, 20])])
    before = {file: file.read_bytes() for file in tmp_path.rglob("*") if file.is_file()}
    with pytest.warns(UserWarning):
        read_coco(path)
    assert {file: file.read_bytes() for file in tmp_path.rglob("*") if file.is_file()} == before


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets is not beside the repository")
@pytest.mark.parametrize("name, images, boxes", [("raccoon", 160, 172), ("bccd", 291, 3862)])
def test_shared_datasets_read_cleanly(name: str, images: int, boxes: int) -> None:
    data = read_coco(SHARED / name / "coco" / "instances_train.json")
    assert len(data.records) == images
    assert sum(len(record.boxes) for record in data.records) == boxes
    assert data.problems == {}
