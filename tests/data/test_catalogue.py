"""The bad-input catalogue, sections A (annotations) and B (images): one generated dataset per row.

Each test builds a tiny dataset (64x48 images made with PIL) in its `data` folder, reads it with the COCO, VOC
or YOLO reader where the row can be written in that format, and checks the catalogue's class:
E rows raise InvalidAnnotation (or ImageLoadError) naming the file, the image, the annotation and the value;
W rows skip with a counted problem and one warning, keep the image, and raise under on_invalid="error";
H rows are handled. Every test also checks that reading left every file of its data folder byte-identical.

Rows not here: A2 and A3 (empty and half-empty batches) are training rows, tested with the models
(tests/models: test_*_empty_targets_*, test_half_empty_batch_*). A24-A27 build targets, not read data, and
belong to tests/models: A24 in test_centernet.py / test_cornernet.py (test_more_boxes_than_max_objects_*),
A25 in test_fcos.py (test_overlapping_boxes_locations_inside_both_get_the_smaller_box,
test_equal_areas_resolve_to_the_box_listed_first) and test_centernet.py (test_overlapping_boxes_of_one_class_*),
A26 in test_centernet.py (test_box_smaller_than_a_cell_is_a_single_cell_peak) and tests/ops/test_heatmaps.py
(test_radius_zero_is_a_single_cell), A27 in test_fcos.py (test_thousands_of_boxes_are_assigned_in_chunks_*).
A7 has no YOLO form (normalised values inside [0, 1] cannot lie wholly outside the image: that is A8), A5 and
A22 are VOC-only, A8, A10 and A14 YOLO-only, A12, A16-A19 and A23 COCO-only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import anchorfree.data.cache
from anchorfree.config import get_preset
from anchorfree.data.cache import cache_dir
from anchorfree.data.coco import read_coco
from anchorfree.data.dataset import DetectionDataset
from anchorfree.data.formats import convert_dataset, read_dataset
from anchorfree.data.images import ImageLoadError, load_image
from anchorfree.data.records import DetectionData, InvalidAnnotation
from anchorfree.data.voc import read_voc
from anchorfree.data.yolo import read_yolo
from anchorfree.data.splits import read_splits

WIDTH, HEIGHT = 64, 48


# ----------------------------------------------------------------------------------------------- fixture helpers


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256 of the file} for every file under root (links by their target), and every folder."""
    digest = {}
    for folder, folders, files in os.walk(root):
        for name in folders:
            digest[os.path.relpath(os.path.join(folder, name), root)] = "folder"
        for name in files:
            path = Path(folder) / name
            relative = os.path.relpath(path, root)
            digest[relative] = f"link to {os.readlink(path)}" if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


class DataFolder:
    """A test's data folder: `seal()` once it is written; the fixture checks at the end that no file changed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshot: dict[str, str] | None = None

    def seal(self) -> None:
        self.snapshot = tree_digest(self.root)


@pytest.fixture
def data(tmp_path: Path) -> Iterator[DataFolder]:
    folder = DataFolder(tmp_path / "data")
    folder.root.mkdir()
    yield folder
    assert folder.snapshot is not None, "the test never sealed its data folder"
    assert tree_digest(folder.root) == folder.snapshot, f"reading changed files under {folder.root}"


def save_image(path: Path, size: tuple[int, int] = (WIDTH, HEIGHT), mode: str = "RGB", **options: Any) -> Path:
    """An image with a red top-left quadrant (so orientation and colour mistakes show)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[: size[1] // 2, : size[0] // 2] = (255, 0, 0)
    Image.fromarray(array).convert(mode).save(path, **options)
    return path


def annotation(annotation_id: Any, image_id: Any, category_id: Any, bbox: Any, **extra: Any) -> dict[str, Any]:
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def coco_set(
    root: Path,
    annotations: list[dict[str, Any]],
    images: list[dict[str, Any]] | None = None,
    categories: list[dict[str, Any]] | None = None,
    make_images: bool = True,
) -> Path:
    """root/annotations.json and root/images/ with a 64x48 JPEG for every image entry (unless make_images=False)."""
    images = (
        images
        if images is not None
        else [
            {"id": 7, "file_name": "a.jpg", "width": WIDTH, "height": HEIGHT},
            {"id": 9, "file_name": "b.jpg", "width": WIDTH, "height": HEIGHT},
        ]
    )
    (root / "images").mkdir(parents=True, exist_ok=True)
    if make_images:
        for image in images:
            path = root / "images" / image["file_name"]
            if not path.exists():
                save_image(path)
    categories = categories if categories is not None else [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}), encoding="utf-8")
    return path


def voc_object(name: str, box: tuple[Any, Any, Any, Any], difficult: int = 0) -> str:
    coordinates = "".join(f"<{field}>{value}</{field}>" for field, value in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{coordinates}</bndbox></object>"


def voc_set(root: Path, files: dict[str, list[str]], size: tuple[int, int] | None = (WIDTH, HEIGHT), make_images: bool = True) -> Path:
    """root/Annotations/<stem>.xml (objects as XML strings) and root/JPEGImages/<stem>.jpg; returns root."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for stem, objects in files.items():
        if make_images and not (root / "JPEGImages" / f"{stem}.jpg").exists():
            save_image(root / "JPEGImages" / f"{stem}.jpg")
        size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation>\n<filename>{stem}.jpg</filename>\n{size_xml}\n{''.join(objects)}\n</annotation>\n", encoding="utf-8"
        )
    return root


def yolo_set(root: Path, files: dict[str, str | None], make_images: bool = True) -> Path:
    """root/images/<stem>.jpg with root/labels/<stem>.txt holding the given text (None: no label file); returns images/."""
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for stem, text in files.items():
        if make_images and not (root / "images" / f"{stem}.jpg").exists():
            save_image(root / "images" / f"{stem}.jpg")
        if text is not None:
            (root / "labels" / f"{stem}.txt").write_text(text, encoding="utf-8")
    return root / "images"


def read_cleanly(read: Callable[..., DetectionData], **options: Any) -> DetectionData:
    """Read with every warning turned into an error: a clean dataset warns about nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = read(**options)
    assert result.problems == {}
    return result


def assert_skipped(read: Callable[..., DetectionData], kind: str, count: int, names: list[str]) -> DetectionData:
    """A W row: skipped with a counted `kind` and a warning by default; an InvalidAnnotation naming `names` under
    on_invalid="error". Returns the data read with the default."""
    with pytest.warns(UserWarning, match=re.escape(kind)):
        result = read(on_invalid="skip")
    assert result.problems == {kind: count}
    assert 1 <= len(result.problem_examples[kind]) <= 3
    with pytest.raises(InvalidAnnotation) as error:
        read(on_invalid="error")
    for name in names:
        assert name in str(error.value), f"{name!r} not in {error.value}"
    return result


def assert_error(read: Callable[..., DetectionData], names: list[str], error_class: type[Exception] = InvalidAnnotation) -> str:
    """An E row: an error under both policies, naming every one of `names`."""
    messages = []
    for on_invalid in ("skip", "error"):
        with pytest.raises(error_class) as error:
            read(on_invalid=on_invalid)
        messages.append(str(error.value))
        for name in names:
            assert name in str(error.value), f"{name!r} not in {error.value}"
    return messages[0]


def coco_reader(path: Path, **options: Any) -> Callable[..., DetectionData]:
    return partial(read_coco, path, **options)


def voc_reader(root: Path, names: list[str] | None = None, **options: Any) -> Callable[..., DetectionData]:
    return partial(read_voc, root, class_names=names or ["cat", "dog"], **options)


def yolo_reader(images: Path, names: list[str] | None = None, **options: Any) -> Callable[..., DetectionData]:
    return partial(read_yolo, images, names or ["cat", "dog"], **options)


def identity(sample: dict) -> dict:
    return sample


def by_name(result: DetectionData) -> dict[str, Any]:
    return {Path(record.file_name).stem: record for record in result.records}


# ----------------------------------------------------------------------------------------------- A. annotations


def test_a1_images_without_objects_are_kept_in_every_format(data: DataFolder) -> None:
    coco = coco_set(data.root / "coco", [annotation(1, 7, 1, [1, 2, 10, 20])])
    voc = voc_set(data.root / "voc", {"a": [voc_object("cat", (2, 3, 11, 22))], "b": []})
    yolo = yolo_set(data.root / "yolo", {"a": "0 0.5 0.5 0.25 0.5\n", "b": "", "c": None, "d": "\n  \n"})
    data.seal()
    for read, empty in ((coco_reader(coco), ["b"]), (voc_reader(voc), ["b"]), (yolo_reader(yolo), ["b", "c", "d"])):
        result = read_cleanly(read)
        records = by_name(result)
        assert sorted(records) == sorted(["a", *empty])
        assert len(records["a"].boxes) == 1
        dataset = DetectionDataset(result, identity)
        for stem in empty:
            assert records[stem].boxes.shape == (0, 4) and records[stem].labels.shape == (0,)
            image, target = dataset[result.records.index(records[stem])]
            assert tuple(image.shape) == (3, HEIGHT, WIDTH) and tuple(target["boxes"].shape) == (0, 4)


def test_a4_zero_size_boxes_are_skipped_counted_and_named_under_error(data: DataFolder) -> None:
    coco = coco_set(data.root / "coco", [annotation(41, 7, 1, [1, 2, 5, 0]), annotation(42, 7, 2, [1, 2, 5, 5])])
    # VOC: xmax = xmin - 1 is a zero-width box in 1-based inclusive pixels.
    voc = voc_set(data.root / "voc", {"a": [voc_object("dog", (2, 3, 10, 20)), voc_object("cat", (11, 3, 10, 20))]})
    yolo = yolo_set(data.root / "yolo", {"a": "1 0.5 0.5 0.25 0.5\n0 0.5 0.5 0.0 0.5\n"})
    data.seal()
    cases = [
        (coco_reader(coco), ["annotations.json", "image_id=7", "a.jpg", "annotation id=41", "[1, 2, 5, 0]"]),
        (voc_reader(voc), [str(voc / "Annotations" / "a.xml"), "a.jpg", "object 1", "[10.0, 2.0, 10.0, 20.0]"]),
        (yolo_reader(yolo), [str(data.root / "yolo" / "labels" / "a.txt"), "a.jpg", "line 2", "[32.0, 12.0, 32.0, 36.0]"]),
    ]
    for read, names in cases:
        result = assert_skipped(read, "zero-size box", 1, names)
        record = by_name(result)["a"]
        assert record.labels.tolist() == [1] and (record.boxes[:, 2:] > record.boxes[:, :2]).all()  # never padded


def test_a5_voc_swapped_corners_are_an_error_naming_the_file_and_object(data: DataFolder) -> None:
    voc = voc_set(data.root, {"a": [voc_object("cat", (2, 3, 10, 20)), voc_object("dog", (30, 3, 10, 20))]})
    data.seal()
    assert_error(voc_reader(voc), [str(voc / "Annotations" / "a.xml"), "object 1", "dog", "xmin=30", "xmax=10", "swapped"])


def test_a6_boxes_partly_outside_are_clipped_and_slivers_skipped_in_every_format(data: DataFolder) -> None:
    coco = coco_set(data.root / "coco", [annotation(1, 7, 1, [50, -4, 30, 20]), annotation(2, 7, 1, [63.5, 10, 10, 10])])
    voc = voc_set(data.root / "voc", {"a": [voc_object("cat", (51, -3, 80, 16)), voc_object("cat", (64.5, 11, 74, 20))]})
    # Inside [0, 1] as numbers, but the box reaches past the right edge: x from 0.7 to 1.1 of the width.
    yolo = yolo_set(data.root / "yolo", {"a": "0 0.9 0.5 0.4 0.5\n0 1.0 0.5 0.01 0.1\n"})
    data.seal()
    cases = [
        (coco_reader(coco), [50, 0, 64, 16], "annotation id=2"),
        (voc_reader(voc), [50, 0, 64, 16], "object 1"),
        (yolo_reader(yolo), [44.8, 12, 64, 36], "line 2"),
    ]
    for read, clipped, sliver in cases:
        result = assert_skipped(read, "box outside the image", 1, [sliver, "outside the 64x48 image"])
        np.testing.assert_allclose(by_name(result)["a"].boxes, [clipped], atol=1e-4)


def test_a7_box_fully_outside_is_skipped_and_image_kept(data: DataFolder) -> None:
    coco = coco_set(data.root / "coco", [annotation(5, 9, 2, [100, 60, 10, 10])])
    voc = voc_set(data.root / "voc", {"b": [voc_object("dog", (70, 50, 80, 60))]})
    data.seal()
    for read, names in (
        (coco_reader(coco), ["image_id=9", "b.jpg", "annotation id=5", "[100.0, 60.0, 110.0, 70.0]"]),
        (voc_reader(voc), ["b.xml", "object 0", "[69.0, 49.0, 80.0, 60.0]"]),
    ):
        result = assert_skipped(read, "box outside the image", 1, [*names, "lies outside the 64x48 image"])
        assert "b" in by_name(result) and len(by_name(result)["b"].boxes) == 0


def test_a8_yolo_pixel_coordinates_are_an_error_and_a_few_stray_rows_are_skipped(data: DataFolder) -> None:
    pixels = yolo_set(data.root / "pixels", {"a": "0 32 24 10 10\n1 10 10 4 4\n", "b": "0 0.5 0.5 0.2 0.2\n"})
    # 25 rows, one of them (4% <= 5%) outside [0, 1]: that row is skipped, its image and the other rows stay.
    rows = "".join(f"0 {0.2 + 0.02 * index:.2f} 0.5 0.1 0.1\n" for index in range(23))
    stray = yolo_set(data.root / "stray", {"a": rows, "b": "1 0.5 0.5 0.2 0.2\n0 1.5 0.5 0.2 0.2\n"})
    data.seal()
    message = assert_error(
        yolo_reader(pixels), [str(data.root / "pixels" / "labels" / "a.txt") + ":1", "'0 32 24 10 10'", "2 of 3 rows", "pixel coordinates"]
    )
    assert "outside [0, 1]" in message
    result = assert_skipped(
        yolo_reader(stray), "coordinates outside [0, 1]", 1, [str(data.root / "stray" / "labels" / "b.txt") + ":2", "'0 1.5 0.5 0.2 0.2'"]
    )
    records = by_name(result)
    assert len(records["a"].boxes) == 23 and records["b"].labels.tolist() == [1]


def test_a9_nan_and_inf_coordinates_are_errors_in_every_format(data: DataFolder) -> None:
    coco = coco_set(data.root / "coco", [annotation(3, 7, 1, [1, float("inf"), 5, 5])])
    voc = voc_set(data.root / "voc", {"a": [voc_object("cat", (2, 3, 10, "nan"))]})
    yolo = yolo_set(data.root / "yolo", {"a": "0 0.5 0.5 0.2 0.2\n0 0.5 inf 0.2 0.2\n"})
    data.seal()
    assert_error(coco_reader(coco), ["annotations.json", "image_id=7", "a.jpg", "annotation id=3", "inf", "NaN or inf"])
    assert_error(voc_reader(voc), ["a.xml", "object 0", "<ymax>", "'nan'", "NaN or inf"])
    assert_error(yolo_reader(yolo), [str(data.root / "yolo" / "labels" / "a.txt") + ":2", "inf", "NaN or inf"])


@pytest.mark.parametrize(
    "row, expected",
    [
        ("0 0.5 0.5 0.2", ["4 columns", "'0 0.5 0.5 0.2'"]),
        ("0 0.5 0.5 0.2 0.2 0.9", ["6 columns", "'0 0.5 0.5 0.2 0.2 0.9'"]),
        ("0 0.5 abc 0.2 0.2", ["column 3 of 5 is 'abc', not a number", "'0 0.5 abc 0.2 0.2'"]),
        ("0, 0.5, 0.5, 0.2, 0.2", ["column 1 of 5 is '0,', not a number", "'0, 0.5, 0.5, 0.2, 0.2'"]),
    ],
)
def test_a10_yolo_row_with_wrong_columns_or_non_numbers_is_an_error_naming_file_and_line(
    data: DataFolder, row: str, expected: list[str]
) -> None:
    yolo = yolo_set(data.root, {"a": "1 0.5 0.5 0.2 0.2\n\n" + row + "\n"})
    data.seal()
    assert_error(yolo_reader(yolo), [str(data.root / "labels" / "a.txt") + ":3", *expected])


def test_a11_duplicate_boxes_are_deduplicated_with_a_count_in_every_format(data: DataFolder) -> None:
    coco = coco_set(
        data.root / "coco",
        [
            annotation(1, 7, 1, [1, 2, 10, 20]),
            annotation(2, 7, 1, [1, 2, 10, 20]),
            annotation(3, 7, 2, [1, 2, 10, 20]),
            annotation(4, 7, 1, [1, 2, 10, 20], iscrowd=1),
        ],
    )
    box = voc_object("cat", (2, 3, 11, 22))
    voc = voc_set(data.root / "voc", {"a": [box, box, box, voc_object("dog", (2, 3, 11, 22))]})
    yolo = yolo_set(data.root / "yolo", {"a": "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n"})
    data.seal()
    cases = [
        (coco_reader(coco), 1, ["annotation id=2", "repeats"], [0, 1, 0]),
        (voc_reader(voc), 2, ["object 1", "repeats"], [0, 1]),
        (yolo_reader(yolo), 1, ["line 2", "repeats"], [0, 1]),
    ]
    for read, count, names, labels in cases:
        result = assert_skipped(read, "duplicate box", count, names)
        # The same box with another class, or as a crowd region, is not a duplicate.
        assert by_name(result)["a"].labels.tolist() == labels


@pytest.mark.parametrize("category_id", [99, "1", None, 1.5])
def test_a12_unknown_category_id_is_an_error_naming_file_annotation_and_value(data: DataFolder, category_id: Any) -> None:
    item = annotation(8, 9, category_id, [1, 1, 5, 5])
    if category_id is None:
        del item["category_id"]
    coco = coco_set(data.root, [annotation(7, 7, 1, [1, 1, 5, 5]), item])
    data.seal()
    assert_error(coco_reader(coco), [str(coco), "image_id=9", "b.jpg", "annotation id=8", f"category_id {category_id!r}", "[1, 2]"])


def test_a13_non_contiguous_category_ids_map_to_labels_and_back_through_a_conversion(data: DataFolder, tmp_path: Path) -> None:
    categories = [{"id": 40, "name": "owl"}, {"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}]
    coco = coco_set(
        data.root,
        [annotation(1, 7, 40, [1, 2, 10, 20]), annotation(2, 7, 2, [5, 5, 4, 4]), annotation(3, 9, 5, [0, 0, 8, 8])],
        categories=categories,
    )
    data.seal()
    result = read_cleanly(coco_reader(coco))
    assert result.category_ids == [2, 5, 40] and result.class_names == ["dog", "cat", "owl"]
    _, target = DetectionDataset(result, identity)[0]
    assert target["labels"].tolist() == [2, 0]
    converted = convert_dataset(coco, "coco", tmp_path / "converted", images="symlink")
    again = read_cleanly(coco_reader(converted))
    assert again.category_ids == [2, 5, 40] and again.class_names == ["dog", "cat", "owl"]
    original = {(item["image_id"], tuple(item["bbox"])): item["category_id"] for item in json.loads(coco.read_text())["annotations"]}
    written = {(item["image_id"], tuple(item["bbox"])): item["category_id"] for item in json.loads(converted.read_text())["annotations"]}
    assert written == original


def test_a14_yolo_class_beyond_the_class_list_is_an_error_naming_file_line_and_nc(data: DataFolder) -> None:
    rows = "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.2 0.2\n9 0.5 0.5 0.2 0.2\n"
    yolo = yolo_set(data.root / "nine", {"a": rows})
    negative = yolo_set(data.root / "negative", {"a": "-1 0.5 0.5 0.2 0.2\n"})
    fractional = yolo_set(data.root / "fractional", {"a": "1.5 0.5 0.5 0.2 0.2\n"})
    names_file = data.root / "nc.yaml"
    names_file.write_text("train: nine/images\nnc: 3\nnames: [cat, dog]\n")
    data.seal()
    nine = [f"c{index}" for index in range(9)]
    assert_error(yolo_reader(yolo, nine), [str(data.root / "nine" / "labels" / "a.txt") + ":3", "class 9", "nc=9"])
    assert_error(yolo_reader(negative), ["a.txt:1", "class -1", "nc=2"])
    assert_error(yolo_reader(fractional), ["a.txt:1", "class 1.5", "nc=2"])
    with pytest.raises(InvalidAnnotation, match=r"nc\.yaml: nc=3 but 'names' lists 2 classes"):
        read_dataset(names_file)
    assert read_cleanly(yolo_reader(yolo, nine[:10] + ["c9"])).records[0].labels.tolist() == [0, 1, 9]


def test_a15_train_and_val_that_disagree_on_categories_are_an_error_before_training(data: DataFolder) -> None:
    train = coco_set(data.root / "train", [annotation(1, 7, 1, [1, 1, 5, 5])])
    renumbered = coco_set(data.root / "renumbered", [], categories=[{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}])
    renamed = coco_set(data.root / "renamed", [], categories=[{"id": 1, "name": "cat"}, {"id": 2, "name": "hound"}])
    agreeing = coco_set(data.root / "agreeing", [])
    voc_train = voc_set(data.root / "voc_train", {"a": [voc_object("cat", (2, 2, 9, 9)), voc_object("dog", (12, 2, 19, 9))]})
    voc_val = voc_set(data.root / "voc_val", {"v": [voc_object("cat", (2, 2, 9, 9)), voc_object("bird", (12, 2, 19, 9))]})
    data.seal()

    def config(train_path: Path, val_path: Path) -> Any:
        configured = get_preset("fcos_cpu")
        configured.data.train, configured.data.val = str(train_path), str(val_path)
        return configured

    with pytest.raises(InvalidAnnotation) as error:
        read_splits(config(train, renumbered))
    for name in (str(train), str(renumbered), "(2, 'dog')", "(3, 'dog')"):
        assert name in str(error.value)
    with pytest.raises(InvalidAnnotation, match=r"\(2, 'dog'\), \(2, 'hound'\)"):
        read_splits(config(train, renamed))
    train_data, val_data = read_splits(config(train, agreeing))
    assert train_data.category_ids == val_data.category_ids == [1, 2]
    with pytest.raises(InvalidAnnotation) as error:
        read_splits(config(voc_train, voc_val))
    for name in (str(voc_val / "Annotations" / "v.xml"), "object 1", "'bird'", "['cat', 'dog']"):
        assert name in str(error.value)


def test_a16_duplicate_annotation_ids_are_an_error_even_when_one_is_an_orphan(data: DataFolder) -> None:
    coco = coco_set(
        data.root, [annotation(12, 7, 1, [1, 1, 5, 5]), annotation(13, 9, 1, [1, 1, 5, 5]), annotation(12, 555, 1, [2, 2, 5, 5])]
    )
    data.seal()
    assert_error(coco_reader(coco), [str(coco), "duplicate annotation id 12"])


def test_a17_background_images_sharing_one_id_are_an_error(data: DataFolder) -> None:
    images = [{"id": 0, "file_name": name, "width": WIDTH, "height": HEIGHT} for name in ("bg1.jpg", "bg2.jpg", "bg3.jpg")]
    coco = coco_set(data.root, [], images=images)
    data.seal()
    assert_error(coco_reader(coco), [str(coco), "image id 0", "'bg1.jpg'", "'bg2.jpg'", "unique"])


def test_a18_orphan_annotations_are_counted_and_ignored(data: DataFolder) -> None:
    coco = coco_set(
        data.root, [annotation(1, 7, 1, [1, 1, 5, 5]), annotation(2, 404, 1, [1, 1, 5, 5]), annotation(3, 405, 2, [1, 1, 5, 5])]
    )
    data.seal()
    result = assert_skipped(
        coco_reader(coco), "annotation for an unknown image_id", 2, [str(coco), "2 annotation(s)", "annotation id=2 image_id=404"]
    )
    assert by_name(result)["a"].annotation_ids == [1] and len(result.records) == 2


def test_a18_an_image_id_of_the_wrong_type_is_an_error_not_an_orphan(data: DataFolder) -> None:
    """A string "7" is a malformed value (issue 11.9), named as such rather than counted as an unknown image."""
    coco = coco_set(data.root, [annotation(3, "7", 2, [1, 1, 5, 5])])
    data.seal()
    assert_error(coco_reader(coco), [str(coco), "annotation id=3", "image_id", "'7'"])


@pytest.mark.parametrize("bbox", [None, "1,2,3,4", {"x": 1}, [1, 2, 3, 4, 5], [1, True, 2, 2], [1, None, 2, 2]])
def test_a19_bbox_that_is_not_four_numbers_is_an_error_naming_the_image(data: DataFolder, bbox: Any) -> None:
    item = annotation(21, 9, 1, bbox)
    if bbox is None:
        del item["bbox"]
    coco = coco_set(data.root, [item])
    data.seal()
    assert_error(coco_reader(coco), [str(coco), "image_id=9", "b.jpg", "annotation id=21", f"bbox {bbox!r}", "4 numbers"])


def test_a20_crowd_and_difficult_boxes_become_ignore_regions(data: DataFolder) -> None:
    coco = coco_set(
        data.root / "coco",
        [
            annotation(1, 7, 1, [1, 2, 10, 20], iscrowd=1),
            annotation(2, 7, 2, [30, 2, 10, 20], iscrowd=0),
            annotation(3, 7, 2, [40, 20, 5, 5]),
        ],
    )
    voc = voc_set(
        data.root / "voc",
        {"a": [voc_object("cat", (2, 3, 11, 22), difficult=1), voc_object("dog", (31, 3, 40, 22)), voc_object("dog", (41, 21, 45, 25))]},
    )
    data.seal()
    for read in (coco_reader(coco), voc_reader(voc)):
        result = read_cleanly(read)
        record = by_name(result)["a"]
        assert record.iscrowd.tolist() == [True, False, False]
        _, target = DetectionDataset(result, identity)[result.records.index(record)]
        assert target["iscrowd"].tolist() == [True, False, False] and target["labels"].tolist() == [0, 1, 1]
        ground_truth = result.coco_ground_truth()
        assert [item["iscrowd"] for item in ground_truth["annotations"]] == [1, 0, 0]


def exif_rotated_jpeg(path: Path, orientation: int, oriented_size: tuple[int, int] = (WIDTH, HEIGHT)) -> Path:
    """A JPEG that shows the red-quadrant image of `oriented_size` once EXIF `orientation` is applied."""
    inverse = {
        1: None,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    array = np.zeros((oriented_size[1], oriented_size[0], 3), dtype=np.uint8)
    array[: oriented_size[1] // 2, : oriented_size[0] // 2] = (255, 0, 0)
    stored = Image.fromarray(array)
    stored = stored if inverse is None else stored.transpose(inverse)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, exif=exif, quality=95)
    return path


def test_a21_recorded_size_mismatch_is_an_error_with_an_exif_hint_unless_the_file_size_is_trusted(data: DataFolder) -> None:
    # The JSON records the stored (pre-EXIF) 48x64 of a photo that shows as 64x48.
    exif_rotated_jpeg(data.root / "coco" / "images" / "a.jpg", 6)
    coco = coco_set(
        data.root / "coco", [annotation(1, 7, 1, [1, 2, 10, 20])], images=[{"id": 7, "file_name": "a.jpg", "width": 48, "height": 64}]
    )
    voc = voc_set(data.root / "voc", {"a": [voc_object("cat", (2, 3, 11, 22))]}, size=(100, 80))
    data.seal()
    assert_error(coco_reader(coco), [str(coco), "image_id=7", "a.jpg", "recorded size 48x64", "file is 64x48", "EXIF", "trust_image_size"])
    assert_error(voc_reader(voc), [str(voc / "Annotations" / "a.xml"), "recorded size 100x80", "file is 64x48", "EXIF"])
    for read in (coco_reader(coco, trust_image_size=True), voc_reader(voc, trust_image_size=True)):
        for on_invalid in ("skip", "error"):
            with pytest.warns(UserWarning, match="recorded size differs from the image"):
                result = read(on_invalid=on_invalid)
            record = result.records[0]
            assert (record.width, record.height) == (WIDTH, HEIGHT) and len(record.boxes) == 1
            assert result.problems == {"recorded size differs from the image (the file's size is used)": 1}
    with pytest.warns(UserWarning, match="recorded 48x64, file 64x48"):
        trusted = read_dataset(coco, trust_image_size=True)
    assert (trusted.records[0].width, trusted.records[0].height) == (WIDTH, HEIGHT)


def test_a22_malformed_voc_xml_is_an_error_naming_file_and_line_and_entities_are_refused(data: DataFolder) -> None:
    malformed = voc_set(data.root / "malformed", {"a": []})
    (malformed / "Annotations" / "a.xml").write_text(
        "<annotation>\n<filename>a.jpg</filename>\n<object><name>cat</object>\n</annotation>\n"
    )
    bomb = voc_set(data.root / "bomb", {"a": []})
    laughs = "".join(f'<!ENTITY lol{index} "{f"&lol{index - 1};" * 10}">\n' for index in range(1, 10))
    document = f'<!DOCTYPE annotation [\n<!ENTITY lol0 "lol">\n{laughs}]>\n<annotation><filename>&lol9;</filename></annotation>\n'
    (bomb / "Annotations" / "a.xml").write_text('<?xml version="1.0"?>\n' + document)
    wrong_root = voc_set(data.root / "wrong_root", {"a": []})
    (wrong_root / "Annotations" / "a.xml").write_text("<coco><filename>a.jpg</filename></coco>")
    data.seal()
    assert_error(voc_reader(malformed), [str(malformed / "Annotations" / "a.xml"), "malformed XML at line 3"])
    assert_error(voc_reader(bomb), [str(bomb / "Annotations" / "a.xml"), "refused XML construct"])
    assert_error(voc_reader(wrong_root), [str(wrong_root / "Annotations" / "a.xml"), "<coco>", "<annotation>"])


def test_a23_many_xyxy_boxes_given_as_xywh_warn_and_are_an_error_under_strict(data: DataFolder) -> None:
    # 25 boxes written as [x1, y1, x2, y2] in COCO's [x, y, width, height]: read as xywh they overflow the image.
    boxes = [annotation(index + 1, 7, 1, [4 + index, 4, 30 + index, 46]) for index in range(25)]
    coco = coco_set(data.root, boxes)
    data.seal()
    with pytest.warns(UserWarning, match=r"25 of 25 boxes extend past the image's right or bottom edge.*\[x, y, width, height\]"):
        result = coco_reader(coco)()
    assert len(by_name(result)["a"].boxes) == 25  # clipped and kept: the warning is a hint, not a filter
    with pytest.raises(InvalidAnnotation, match=f"{coco}: 25 of 25 boxes"):
        coco_reader(coco)(on_invalid="error")


# ----------------------------------------------------------------------------------------------- B. images


def test_b1_missing_image_is_an_error_naming_annotation_file_image_and_path(data: DataFolder) -> None:
    images = [
        {"id": 7, "file_name": "a.jpg", "width": WIDTH, "height": HEIGHT},
        {"id": 9, "file_name": "gone.jpg", "width": WIDTH, "height": HEIGHT},
    ]
    coco = coco_set(data.root / "coco", [], images=images, make_images=False)
    save_image(data.root / "coco" / "images" / "a.jpg")
    first_missing = coco_set(data.root / "first", [], images=images[::-1], make_images=False)
    save_image(data.root / "first" / "images" / "a.jpg")
    voc = voc_set(data.root / "voc", {"gone": []}, make_images=False)
    listed = data.root / "yolo" / "train.txt"
    save_image(data.root / "yolo" / "images" / "a.jpg")
    listed.write_text("images/a.jpg\nimages/gone.jpg\n")
    data.seal()
    assert_error(coco_reader(coco), [str(coco), "image_id=9", str(data.root / "coco" / "images" / "gone.jpg"), "not found"])
    assert_error(coco_reader(first_missing), [str(first_missing), "image_id=9", str(data.root / "first" / "images" / "gone.jpg")])
    assert_error(voc_reader(voc), [str(voc / "Annotations" / "gone.xml"), "'gone.jpg'", str(voc / "JPEGImages"), "not found"])
    assert_error(
        yolo_reader(listed), [str(data.root / "yolo" / "labels" / "gone.txt"), str(data.root / "yolo" / "images" / "gone.jpg"), "not found"]
    )


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def truncated_png(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def text_as_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("these are notes, not pixels\n")
    return path


def gif(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (WIDTH, HEIGHT)).save(path, format="GIF")
    return path


def tiny(path: Path) -> Path:
    return save_image(path, (8, 30))


UNUSABLE = {
    "b2_truncated_jpeg": (truncated_jpeg, "jpg", "truncated JPEG"),
    "b2_truncated_png": (truncated_png, "png", "truncated"),
    "b3_text_renamed_jpg": (text_as_jpeg, "jpg", "not an image"),
    "b3_unsupported_gif": (gif, "jpg", "unsupported image format 'GIF'"),
    "b8_tiny_image": (tiny, "jpg", "8x30 px, below the minimum side of 10 px"),
}


@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_b2_b3_b8_unusable_images_are_skipped_with_a_count_or_an_error_naming_the_path(data: DataFolder, case: str) -> None:
    """B2 truncated JPEG/PNG, B3 a .txt renamed .jpg and an unsupported format, B8 an image under 10 px a side."""
    make, suffix, reason = UNUSABLE[case]
    bad_coco = make(data.root / "coco" / "images" / f"bad.{suffix}")
    coco = coco_set(
        data.root / "coco",
        [annotation(1, 7, 1, [1, 1, 5, 5])],
        images=[{"id": 7, "file_name": "a.jpg"}, {"id": 9, "file_name": f"bad.{suffix}"}],
    )
    bad_voc = make(data.root / "voc" / "JPEGImages" / f"bad.{suffix}")
    voc = voc_set(data.root / "voc", {"a": [voc_object("cat", (2, 3, 11, 22))]})
    voc_set(data.root / "voc", {"bad": []}, size=None, make_images=False)
    bad_yolo = make(data.root / "yolo" / "images" / f"bad.{suffix}")
    yolo = yolo_set(
        data.root / "yolo", {"a": "0 0.5 0.5 0.2 0.2\n", "bad": "0 0.5 0.5 0.2 0.2\n"} if suffix == "jpg" else {"a": "0 0.5 0.5 0.2 0.2\n"}
    )
    data.seal()
    for read, bad in ((coco_reader(coco), bad_coco), (voc_reader(voc), bad_voc), (yolo_reader(yolo), bad_yolo)):
        result = assert_skipped(read, "unusable image", 1, [str(bad), reason])
        assert [Path(record.file_name).stem for record in result.records] == ["a"]
        with pytest.raises(ImageLoadError, match=str(bad)):
            load_image(bad)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("largest_input", [None, (24, 32)])
def test_b4_exif_orientation_keeps_boxes_on_their_pixels(data: DataFolder, orientation: int, largest_input: tuple[int, int] | None) -> None:
    """The JSON records the size as shown (after EXIF); the box around the red quadrant stays on red pixels,
    also when the JPEG is decoded at a reduced scale."""
    exif_rotated_jpeg(data.root / "images" / "a.jpg", orientation)
    coco = coco_set(
        data.root,
        [annotation(1, 7, 1, [0, 0, WIDTH / 2, HEIGHT / 2])],
        images=[{"id": 7, "file_name": "a.jpg", "width": WIDTH, "height": HEIGHT}],
    )
    data.seal()
    result = read_cleanly(coco_reader(coco))
    image, target = DetectionDataset(result, identity, largest_input=largest_input)[0]
    scale = 1 if largest_input is None else 2
    assert tuple(image.shape) == (3, HEIGHT // scale, WIDTH // scale)
    x1, y1, x2, y2 = (int(value) for value in target["boxes"][0].tolist())
    assert (x1, y1, x2, y2) == (0, 0, WIDTH // 2 // scale, HEIGHT // 2 // scale)
    red = image[0].float()
    inside = red[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].mean()
    outside = torch.cat([red[y2 + 2 :].flatten(), red[: y2 - 2, x2 + 2 :].flatten()]).mean()
    assert inside > 200 and outside < 50


MODES = {
    "b5_grayscale_L": ("L", "png"),
    "b5_palette_P": ("P", "png"),
    "b5_gray_alpha_LA": ("LA", "png"),
    "b6_rgba": ("RGBA", "png"),
    "b6_cmyk_jpeg": ("CMYK", "jpg"),
    "b7_sixteen_bit_png": ("I;16", "png"),
}


@pytest.mark.parametrize("case", sorted(MODES))
def test_b5_b6_b7_image_modes_read_and_load_as_three_channel_rgb(data: DataFolder, case: str) -> None:
    mode, suffix = MODES[case]
    path = data.root / "images" / f"a.{suffix}"
    path.parent.mkdir(parents=True)
    if mode == "I;16":
        # Dark in 16 bits (1000 / 65535) must stay dark: scaled by 65535, not clipped at 255.
        values = np.full((HEIGHT, WIDTH), 1000, dtype=np.uint16)
        values[: HEIGHT // 2, : WIDTH // 2] = 65535
        Image.fromarray(values).save(path)
        with Image.open(path) as stored:
            assert stored.mode == "I;16"
    else:
        save_image(path, mode=mode)
    coco = coco_set(
        data.root,
        [annotation(1, 7, 1, [0, 0, WIDTH / 2, HEIGHT / 2])],
        images=[{"id": 7, "file_name": f"a.{suffix}", "width": WIDTH, "height": HEIGHT}],
    )
    data.seal()
    result = read_cleanly(coco_reader(coco))
    image, _ = DetectionDataset(result, identity)[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, HEIGHT, WIDTH)
    assert torch.equal(image, load_image(path))
    first = image[0].float()
    assert first[: HEIGHT // 2 - 2, : WIDTH // 2 - 2].mean() > first[HEIGHT // 2 + 2 :, WIDTH // 2 + 2 :].mean() + 40
    if mode == "I;16":
        assert image[:, 0, 0].tolist() == [255, 255, 255] and image[:, -1, -1].tolist() == [4, 4, 4]


@pytest.mark.parametrize("suffix", ["png", "bmp", "webp", "tif"])
def test_b3_every_allowed_format_reads_and_loads(data: DataFolder, suffix: str) -> None:
    """The allow-list (jpeg, png, bmp, webp, tiff) passes the reader's checks, not only JPEG."""
    save_image(data.root / "images" / f"a.{suffix}")
    yolo = yolo_set(data.root, {"a": "0 0.25 0.25 0.5 0.5\n"}, make_images=False)
    data.seal()
    result = read_cleanly(yolo_reader(yolo))
    image, target = DetectionDataset(result, identity)[0]
    assert tuple(image.shape) == (3, HEIGHT, WIDTH) and target["boxes"].tolist() == [[0.0, 0.0, 32.0, 24.0]]


def test_b9_decompression_bomb_is_an_error_naming_path_and_pixel_count(data: DataFolder) -> None:
    coco = coco_set(data.root / "coco", [])
    yolo = yolo_set(data.root / "yolo", {"a": ""})
    data.seal()
    names = ["64x48 = 3072 pixels exceeds the limit of 1000", "max_image_pixels"]
    assert_error(coco_reader(coco, max_image_pixels=1000), [str(coco), "image_id=7", str(data.root / "coco" / "images" / "a.jpg"), *names])
    assert_error(yolo_reader(yolo, max_image_pixels=1000), [str(data.root / "yolo" / "images" / "a.jpg"), *names])
    assert len(read_cleanly(coco_reader(coco, max_image_pixels=3072)).records) == 2


def test_b10_non_ascii_and_space_containing_paths_read_and_load(data: DataFolder) -> None:
    name = "dossier é/raton laveur 🦝.jpg"
    coco = coco_set(
        data.root / "coco ü", [annotation(1, 7, 1, [1, 2, 10, 20])], images=[{"id": 7, "file_name": name, "width": WIDTH, "height": HEIGHT}]
    )
    save_image(data.root / "voc ü" / "JPEGImages" / "raton laveur 🦝.jpg")
    (data.root / "voc ü" / "Annotations").mkdir(parents=True)
    (data.root / "voc ü" / "Annotations" / "raton laveur 🦝.xml").write_text(
        f"<annotation><filename>raton laveur 🦝.jpg</filename>{voc_object('cat', (2, 3, 11, 22))}</annotation>", encoding="utf-8"
    )
    yolo = yolo_set(data.root / "yolo ü", {"raton laveur 🦝": "0 0.5 0.5 0.2 0.2\n"})
    data.seal()
    for read in (coco_reader(coco), voc_reader(data.root / "voc ü"), yolo_reader(yolo)):
        result = read_cleanly(read)
        assert Path(result.records[0].file_name).name == "raton laveur 🦝.jpg" and len(result.records[0].boxes) == 1
        image, target = DetectionDataset(result, identity)[0]
        assert tuple(image.shape) == (3, HEIGHT, WIDTH) and len(target["boxes"]) == 1


# ----------------------------------------------------------------------------------------------- paths and the cache


def test_file_names_escaping_the_image_root_are_refused(data: DataFolder) -> None:
    outside = save_image(data.root / "outside.jpg")
    absolute = coco_set(
        data.root / "absolute", [], images=[{"id": 3, "file_name": str(outside), "width": WIDTH, "height": HEIGHT}], make_images=False
    )
    # The image exists beside the JSON one level up, so the automatic image root is found; the name still escapes it.
    save_image(data.root / "dotdot" / "x.jpg")
    dotdot = coco_set(
        data.root / "dotdot" / "set", [], images=[{"id": 4, "file_name": "../x.jpg", "width": WIDTH, "height": HEIGHT}], make_images=False
    )
    voc = voc_set(data.root / "voc", {"a": []})
    (voc / "Annotations" / "a.xml").write_text("<annotation><filename>../../outside.jpg</filename></annotation>")
    data.seal()
    assert_error(coco_reader(absolute), [str(absolute), "image_id=3", repr(str(outside)), "resolves outside the image folder"])
    assert_error(coco_reader(dotdot), [str(dotdot), "image_id=4", "'../x.jpg'", "resolves outside the image folder"])
    assert_error(voc_reader(voc), [str(voc / "Annotations" / "a.xml"), "'../../outside.jpg'", "resolves outside the image folder"])


def test_image_checks_are_cached_as_json_and_a_changed_image_is_inspected_again(data: DataFolder, monkeypatch: pytest.MonkeyPatch) -> None:
    coco = coco_set(data.root, [annotation(1, 7, 1, [1, 2, 10, 20])])
    truncated_jpeg(data.root / "images" / "broken.jpg")
    document = json.loads(coco.read_text())
    document["images"].append({"id": 11, "file_name": "broken.jpg", "width": WIDTH, "height": HEIGHT})
    coco.write_text(json.dumps(document))
    data.seal()
    inspected: list[Path] = []
    real = anchorfree.data.cache.inspect_image

    def counting(path: Path, max_pixels: int) -> tuple[int, int]:
        inspected.append(Path(path))
        return real(path, max_pixels)

    monkeypatch.setattr(anchorfree.data.cache, "inspect_image", counting)
    with pytest.warns(UserWarning, match="unusable image"):
        first = read_coco(coco)
    assert sorted(path.name for path in inspected) == ["a.jpg", "b.jpg", "broken.jpg"]
    caches = [path for path in (cache_dir() / "image-info").glob("*.json") if str(data.root) in path.read_text(encoding="utf-8")]
    assert len(caches) == 1 and not caches[0].is_relative_to(data.root)
    entries = json.loads(caches[0].read_text(encoding="utf-8"))["entries"]
    assert (
        entries[str(data.root / "images" / "a.jpg")]["size"] == [WIDTH, HEIGHT]
        and "truncated" in entries[str(data.root / "images" / "broken.jpg")]["problem"]
    )

    inspected.clear()
    with pytest.warns(UserWarning, match="unusable image"):
        second = read_coco(coco)
    assert inspected == [] and second.problems == first.problems  # the problem is remembered too
    assert [record.file_name for record in second.records] == [record.file_name for record in first.records]

    save_image(data.root / "images" / "b.jpg", (WIDTH + 2, HEIGHT))  # new content and size
    later = os.stat(data.root / "images" / "a.jpg").st_mtime_ns + 5_000_000_000
    os.utime(data.root / "images" / "a.jpg", ns=(later, later))  # same bytes, new modification time
    data.seal()
    inspected.clear()
    with pytest.raises(InvalidAnnotation, match="recorded size 64x48 but the file is 66x48"):
        read_coco(coco)
    assert sorted(path.name for path in inspected) == ["a.jpg", "b.jpg"]

    caches[0].write_text("{not json", encoding="utf-8")  # an unreadable cache is ignored, never an error
    inspected.clear()
    with pytest.warns(UserWarning, match="unusable image"):
        assert len(read_coco(coco, trust_image_size=True).records) == 2
    assert len(inspected) == 3
