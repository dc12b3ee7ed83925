"""Tests for the synthetic shapes dataset behind `anchorfree demo`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anchorfree.data.synth import CLASS_NAMES, MAX_SIDE, MIN_SIDE, render_image, write_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small dataset shared by the read-only tests (generation dominates test time)."""
    root = tmp_path_factory.mktemp("synth") / "shapes"
    return write_synthetic_dataset(root, num_train=100, num_val=60, seed=3)


def _load(root: Path, split: str) -> dict:
    return json.loads((root / f"instances_{split}.json").read_text(encoding="utf-8"))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(path for path in root.rglob("*") if path.is_file())
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in files}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = write_synthetic_dataset(tmp_path / "a", num_train=6, num_val=3, seed=7)
    second = write_synthetic_dataset(tmp_path / "b", num_train=6, num_val=3, seed=7)
    other = write_synthetic_dataset(tmp_path / "c", num_train=6, num_val=3, seed=8)
    first_files = _tree_bytes(first)
    assert "instances_train.json" in first_files and "images/val/000002.jpg" in first_files
    assert first_files == _tree_bytes(second)
    other_files = _tree_bytes(other)
    assert other_files["instances_train.json"] != first_files["instances_train.json"]
    assert other_files["images/train/000000.jpg"] != first_files["images/train/000000.jpg"]


def test_image_does_not_depend_on_split_size(tmp_path: Path) -> None:
    small = write_synthetic_dataset(tmp_path / "small", num_train=2, num_val=1, seed=5)
    large = write_synthetic_dataset(tmp_path / "large", num_train=4, num_val=2, seed=5)
    for file_name in ("train/000001.jpg", "val/000000.jpg"):
        assert (small / "images" / file_name).read_bytes() == (large / "images" / file_name).read_bytes()


@pytest.mark.parametrize("split", ["train", "val"])
def test_json_is_valid_coco(dataset: Path, split: str) -> None:
    coco = _load(dataset, split)
    assert coco["info"]["description"] == "anchorfree synthetic shapes"
    assert coco["info"]["seed"] == 3
    assert coco["categories"] == [
        {"id": index + 1, "name": name, "supercategory": "shape"} for index, name in enumerate(CLASS_NAMES)
    ]
    image_ids = [image["id"] for image in coco["images"]]
    assert image_ids == list(range(1, len(image_ids) + 1))
    annotation_ids = [annotation["id"] for annotation in coco["annotations"]]
    assert annotation_ids == list(range(1, len(annotation_ids) + 1))

    images = {image["id"]: image for image in coco["images"]}
    for image in coco["images"]:
        with Image.open(dataset / "images" / image["file_name"]) as opened:
            assert opened.size == (image["width"], image["height"])
            assert opened.mode == "RGB"
        assert MIN_SIDE <= image["width"] <= MAX_SIDE and MIN_SIDE <= image["height"] <= MAX_SIDE
        assert 0.6 <= image["width"] / image["height"] <= 1.7
    for annotation in coco["annotations"]:
        image = images[annotation["image_id"]]
        x, y, width, height = annotation["bbox"]
        assert all(isinstance(value, float) for value in annotation["bbox"])
        assert width > 0 and height > 0
        assert x >= 0 and y >= 0 and x + width <= image["width"] and y + height <= image["height"]
        assert annotation["area"] == pytest.approx(width * height)
        assert 1 <= annotation["category_id"] <= len(CLASS_NAMES)
        assert annotation["iscrowd"] == 0


def test_class_and_size_coverage(dataset: Path) -> None:
    val = _load(dataset, "val")
    assert len(val["images"]) == 60
    assert len({annotation["category_id"] for annotation in val["annotations"]}) >= 5
    areas = [annotation["area"] for annotation in _load(dataset, "train")["annotations"]]
    assert any(area < 32**2 for area in areas)
    assert any(area > 96**2 for area in areas)


def test_some_images_have_no_objects(dataset: Path) -> None:
    train = _load(dataset, "train")
    annotated = {annotation["image_id"] for annotation in train["annotations"]}
    empty_count = len(train["images"]) - len(annotated)
    assert 1 <= empty_count <= 25
    assert len(train["annotations"]) / len(train["images"]) >= 2.5


def _share_unlike_surroundings(pixels: np.ndarray, box: tuple[float, float, float, float]) -> float | None:
    """Share of box pixels far from the median colour of a thin band around the box (None: no band)."""
    height, width, _ = pixels.shape
    x1, y1, x2, y2 = (int(value) for value in box)
    band = 4
    outer = np.zeros((height, width), dtype=bool)
    outer[max(y1 - band, 0) : y2 + band, max(x1 - band, 0) : x2 + band] = True
    outer[y1:y2, x1:x2] = False
    if outer.sum() < 20:
        return None
    surroundings = np.median(pixels[outer].astype(np.float32), axis=0)
    inside = pixels[y1:y2, x1:x2].reshape(-1, 3).astype(np.float32)
    return float(np.mean(np.linalg.norm(inside - surroundings, axis=1) > 40))


def test_rendered_boxes_contain_the_drawn_objects() -> None:
    shares = []
    for index in range(30):
        pixels, objects = render_image(np.random.default_rng([11, 0, index]))
        height, width, _ = pixels.shape
        for class_index, box in objects:
            x1, y1, x2, y2 = box
            assert 0 <= class_index < len(CLASS_NAMES)
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            share = _share_unlike_surroundings(pixels, box)
            if share is not None:
                shares.append(share)
    assert len(shares) >= 50
    # Objects fill at least ~a quarter of their box (a 60%-visible star or ring) and contrast with
    # what they cover; a box in the wrong place would mostly look like its surroundings. Clutter or
    # a same-coloured neighbour can fool the band's median now and then, hence the 95% quorum.
    assert np.mean(np.asarray(shares) > 0.15) >= 0.95


def test_box_check_can_fail_on_background() -> None:
    """Guards the check above: small boxes shifted sideways onto background mostly look plain."""
    shares = []
    for index in range(60):
        pixels, objects = render_image(np.random.default_rng([11, 0, index]))
        for _, (x1, y1, x2, y2) in objects:
            shift = 2 * (x2 - x1)
            if x2 - x1 < 32 and x2 + shift + 4 < pixels.shape[1]:  # COCO-small widths (objects start at 16 px)
                share = _share_unlike_surroundings(pixels, (x1 + shift, y1, x2 + shift, y2))
                shares.append(share)
    assert len(shares) >= 10
    assert np.median(shares) < 0.15


def test_existing_non_empty_output_raises(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("x", encoding="utf-8")
    with pytest.raises(FileExistsError):
        write_synthetic_dataset(target, num_train=1, num_val=1)
    assert sorted(path.name for path in target.iterdir()) == ["keep.txt"]


def test_empty_existing_folder_is_filled_and_nothing_temporary_is_left(tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    assert write_synthetic_dataset(target, num_train=2, num_val=1) == target
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]
    expected = ["images", "instances_train.json", "instances_val.json"]
    assert sorted(path.name for path in target.iterdir()) == expected
    assert len(list((target / "images" / "train").iterdir())) == 2
