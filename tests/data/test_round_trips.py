"""`data convert` output reads back by its folder, round trips through folders are exact, and convert never
writes over a user's file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anchorfree.cli import main
from anchorfree.data.formats import convert_dataset, read_dataset
from anchorfree.data.records import DetectionData, InvalidAnnotation
from anchorfree.data.voc import read_voc

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
needs_shared = pytest.mark.skipif(not (SHARED / "bccd").is_dir(), reason=f"the shared BCCD dataset {SHARED / 'bccd'} is not beside the repository")
YOLO_TOLERANCE = 1e-4  # px: what convert promises for YOLO's normalised coordinates


def samples(data: DetectionData) -> dict[str, tuple[int, int, list[tuple[str, int, tuple[float, ...], bool]]]]:
    """{file name: (width, height, sorted (class name, category id, box, crowd) rows)} of a split."""
    result = {}
    for record in data.records:
        rows = sorted(
            (data.class_names[label], data.category_ids[label], tuple(box), crowd)
            for box, label, crowd in zip(record.boxes.astype(np.float64).tolist(), record.labels.tolist(), record.iscrowd.tolist())
        )
        result[record.file_name] = (record.width, record.height, rows)
    return result


def assert_same(original: DetectionData, again: DetectionData, tolerance: float) -> None:
    """Same categories (ids and names, in order), images (names and sizes) and boxes within `tolerance` px."""
    assert (again.category_ids, again.class_names) == (original.category_ids, original.class_names)
    expected, actual = samples(original), samples(again)
    assert sorted(actual) == sorted(expected)
    for name, (width, height, rows) in expected.items():
        other_width, other_height, other_rows = actual[name]
        assert (other_width, other_height) == (width, height), name
        assert [row[:2] + row[3:] for row in other_rows] == [row[:2] + row[3:] for row in rows], name
        if rows:
            np.testing.assert_allclose([row[2] for row in other_rows], [row[2] for row in rows], rtol=0, atol=tolerance, err_msg=name)


def generated_coco(root: Path, crowd: bool) -> Path:
    """root/val.json + root/images: 4 images, non-contiguous category ids (2, 5, 7) named out of alphabetical order,
    float boxes, an image without boxes, and (with `crowd`) one crowd box."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(11)
    entries, annotations = [], []
    for image_id, (width, height) in enumerate([(97, 61), (64, 64), (130, 45), (50, 80)], start=1):
        Image.new("RGB", (width, height), (image_id * 40, 90, 160)).save(images / f"img{image_id}.png")
        entries.append({"id": image_id, "file_name": f"img{image_id}.png", "width": width, "height": height})
        for _ in range(0 if image_id == 4 else 3):
            x, y = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
            box_width, box_height = rng.uniform(2, width / 2), rng.uniform(2, height / 2)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice([2, 5, 7])),
                    "bbox": [round(x, 3), round(y, 3), round(box_width, 3), round(box_height, 3)],
                    "area": box_width * box_height,
                    "iscrowd": int(crowd and len(annotations) == 4),
                }
            )
    categories = [{"id": 2, "name": "zebra"}, {"id": 5, "name": "ant"}, {"id": 7, "name": "moth"}]
    annotation_file = root / "val.json"
    annotation_file.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}), encoding="utf-8")
    return annotation_file


# ------------------------------------------------------------------------------------------------ round trips


def test_coco_to_yolo_to_coco_through_folders_keeps_ids_names_and_boxes(tmp_path: Path) -> None:
    """Issue 11.12: COCO -> YOLO -> COCO, each read by its folder, gives back the same categories (ids and
    names), images and boxes (within 1e-4 px)."""
    original = read_dataset(generated_coco(tmp_path / "source", crowd=False))
    convert_dataset(tmp_path / "source" / "val.json", "yolo", tmp_path / "yolo")
    through_yolo = read_dataset(tmp_path / "yolo", split="val")
    assert through_yolo.format == "yolo"
    assert_same(original, through_yolo, YOLO_TOLERANCE)
    convert_dataset(tmp_path / "yolo", "coco", tmp_path / "coco")
    assert_same(original, read_dataset(tmp_path / "coco", split="val"), YOLO_TOLERANCE)


def test_coco_to_voc_to_coco_through_folders_is_exact_with_crowd_boxes(tmp_path: Path) -> None:
    """Issue 11.12: COCO -> VOC -> COCO through folders is exact: VOC's 1-based writer and reader are inverse
    for float boxes, and crowd boxes come back as crowd boxes."""
    original = read_dataset(generated_coco(tmp_path / "source", crowd=True))
    assert original.records[1].iscrowd.any()
    convert_dataset(tmp_path / "source" / "val.json", "voc", tmp_path / "voc", images="symlink")
    through_voc = read_dataset(tmp_path / "voc", split="val")
    assert through_voc.format == "voc"
    assert_same(original, through_voc, 0.0)
    convert_dataset(tmp_path / "voc", "coco", tmp_path / "coco", images="symlink")
    assert_same(original, read_dataset(tmp_path / "coco", split="val"), 0.0)


@needs_shared
@pytest.mark.parametrize("through", ["yolo", "voc"])
def test_bccd_val_round_trips_through_folders(through: str, tmp_path: Path) -> None:
    """Issue 11.12: the shared BCCD val split, COCO -> YOLO / VOC -> COCO, each step read by its folder."""
    source = SHARED / "bccd" / "coco" / "instances_val.json"
    original = read_dataset(source)
    convert_dataset(source, through, tmp_path / through, images="symlink")
    assert_same(original, read_dataset(tmp_path / through, split="val"), YOLO_TOLERANCE if through == "yolo" else 0.0)
    convert_dataset(tmp_path / through, "coco", tmp_path / "coco", images="symlink")
    assert_same(original, read_dataset(tmp_path / "coco", split="val"), YOLO_TOLERANCE if through == "yolo" else 0.0)


# ------------------------------------------------------------------------------------------ read back by folder


def test_converted_yolo_folder_checks_and_converts_by_its_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.12: `data check D` and `data convert D --to coco` find D/data.yaml (no "no class names")."""
    convert_dataset(generated_coco(tmp_path / "source", crowd=False), "yolo", tmp_path / "D", images="symlink")
    assert main(["data", "check", str(tmp_path / "D")]) == 0, capsys.readouterr().err
    assert main(["data", "convert", str(tmp_path / "D"), "--to", "coco", "--out", str(tmp_path / "back"), "--images", "none"]) == 0
    document = json.loads((tmp_path / "back" / "annotations" / "instances_val.json").read_text(encoding="utf-8"))
    assert [category["name"] for category in document["categories"]] == ["zebra", "ant", "moth"]


def test_relative_voc_folder_records_relative_file_names_and_converts_with_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11.12: a VOC folder given by a relative path records file names relative to its image folder, so
    `data convert voc --to coco --out coco` copies the images (no SameFileError) and leaves the source alone."""
    convert_dataset(generated_coco(tmp_path / "source", crowd=False), "voc", tmp_path / "voc")
    monkeypatch.chdir(tmp_path)
    data = read_voc(Path("voc"), split="val")
    assert sorted(record.file_name for record in data.records) == [f"img{index}.png" for index in range(1, 5)]
    before = {path: path.read_bytes() for path in Path("voc").rglob("*") if path.is_file()}
    assert main(["data", "convert", "voc", "--to", "coco", "--out", "coco"]) == 0
    copied = Path("coco") / "images" / "img1.png"
    assert copied.is_file() and not copied.is_symlink()
    assert {path: path.read_bytes() for path in Path("voc").rglob("*") if path.is_file()} == before
    document = json.loads((Path("coco") / "annotations" / "instances_val.json").read_text(encoding="utf-8"))
    assert sorted(image["file_name"] for image in document["images"]) == [f"img{index}.png" for index in range(1, 5)]


def test_convert_refuses_an_output_that_is_a_users_file(tmp_path: Path) -> None:
    """Issue 11.12: `--out val.json` names an existing file: refused by name, the file unchanged."""
    annotation_file = generated_coco(tmp_path / "source", crowd=False)
    content = annotation_file.read_bytes()
    with pytest.raises(InvalidAnnotation, match="is a file; choose a new output folder") as caught:
        convert_dataset(annotation_file, "yolo", annotation_file)
    assert str(annotation_file) in str(caught.value)
    assert annotation_file.read_bytes() == content


def test_yolo_splits_sharing_file_names_go_to_split_folders_in_coco(tmp_path: Path) -> None:
    """Issue 11.12: images/train/0.png and images/val/0.png are different images; the COCO output keeps both."""
    root = tmp_path / "yolo"
    for split, colour in (("train", "red"), ("val", "blue")):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        Image.new("RGB", (40, 30), colour).save(root / "images" / split / "0.png")
        (root / "labels" / split / "0.txt").write_text("0 0.5 0.5 0.5 0.5\n", encoding="utf-8")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [thing]\n", encoding="utf-8")
    convert_dataset(root, "coco", tmp_path / "coco")
    for split, colour in (("train", (255, 0, 0)), ("val", (0, 0, 255))):
        data = read_dataset(tmp_path / "coco", split=split)
        assert [record.file_name for record in data.records] == [f"{split}/0.png"]
        assert Image.open(data.records[0].path).getpixel((0, 0)) == colour


def test_absolute_paths_of_an_image_list_land_inside_the_output(tmp_path: Path) -> None:
    """Issue 11.12: an image list naming images outside its folder (absolute paths) converts into the output,
    never onto the listed image itself."""
    elsewhere = tmp_path / "elsewhere" / "images"
    elsewhere.mkdir(parents=True)
    Image.new("RGB", (40, 30), "white").save(elsewhere / "a.png")
    (tmp_path / "elsewhere" / "labels").mkdir()
    (tmp_path / "elsewhere" / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n", encoding="utf-8")
    listing = tmp_path / "lists" / "val.txt"
    listing.parent.mkdir()
    listing.write_text(f"{elsewhere / 'a.png'}\n", encoding="utf-8")
    original = (elsewhere / "a.png").read_bytes()
    convert_dataset(listing, "coco", tmp_path / "coco", class_names=["thing"])
    copies = [path for path in (tmp_path / "coco").rglob("a.png")]
    assert len(copies) == 1 and copies[0].is_relative_to(tmp_path / "coco") and os.path.realpath(copies[0]) != str(elsewhere / "a.png")
    assert (elsewhere / "a.png").read_bytes() == original
