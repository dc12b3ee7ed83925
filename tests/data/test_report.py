"""`dataset_report`, `show_dataset` and the `anchorfree data check | convert | show` commands."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anchorfree.cli import main
from anchorfree.data.formats import read_dataset
from anchorfree.data.report import IGNORE_COLOUR, class_colour, dataset_report, format_report, show_dataset

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
pytestmark = pytest.mark.filterwarnings("ignore:.*3 annotation or image problem")  # the flawed dataset's summary, asserted once
needs_shared = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"the shared datasets folder {DATASETS} is missing")


def write_jpeg(path: Path, width: int, height: int, seed: int = 0) -> bytes:
    """A noisy RGB JPEG of the given size; returns its bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def write_coco(folder: Path, images: list[dict], annotations: list[dict], names: tuple[str, ...] = ("cat", "dog")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    categories = [{"id": index, "name": name} for index, name in enumerate(names, start=1)]
    document = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "instances_train.json").write_text(json.dumps(document))
    return folder


@pytest.fixture
def flawed(tmp_path: Path) -> Path:
    """A COCO dataset with one problem of each kind: a zero-size box (id 2), a box outside its 64x48 image (id 3)
    and a truncated JPEG (b.jpg); c.jpg has a medium "dog" box and a crowd "cat" box."""
    folder = tmp_path / "flawed"
    write_jpeg(folder / "images" / "a.jpg", 64, 48, seed=1)
    truncated = write_jpeg(folder / "images" / "b.jpg", 64, 48, seed=2)
    (folder / "images" / "b.jpg").write_bytes(truncated[:-40])
    write_jpeg(folder / "images" / "c.jpg", 80, 60, seed=3)
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
        {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48},
        {"id": 3, "file_name": "c.jpg", "width": 80, "height": 60},
    ]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 16], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 5], "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [100, 100, 10, 10], "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 2, "bbox": [5, 5, 10, 10], "iscrowd": 0},
        {"id": 5, "image_id": 3, "category_id": 2, "bbox": [30, 20, 40, 30], "iscrowd": 0},
        {"id": 6, "image_id": 3, "category_id": 1, "bbox": [0, 0, 20, 20], "iscrowd": 1},
    ]
    return write_coco(folder, images, annotations)


def file_hashes(folder: Path) -> dict[str, str]:
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def assert_consistent(split: dict) -> None:
    """Per-class counts add up to the split's boxes, and every size histogram to its count."""
    assert sum(split["boxes_per_class"].values()) == split["boxes"]
    assert sum(split["box_sizes"].values()) == split["boxes"]
    for name, count in split["boxes_per_class"].items():
        assert sum(split["box_sizes_per_class"][name].values()) == count


def coco_counts(files: list[Path]) -> Counter:
    counts: Counter = Counter()
    for file in files:
        document = json.loads(file.read_text())
        names = {category["id"]: category["name"] for category in document["categories"]}
        counts.update(names[annotation["category_id"]] for annotation in document["annotations"])
    return counts


@needs_shared
def test_report_on_raccoon_coco_counts_every_split() -> None:
    folder = DATASETS / "raccoon" / "coco"
    report = dataset_report(folder)
    assert report["ok"] is True and report["format"] == "coco" and report["class_names"] == ["raccoon"]
    assert list(report["splits"]) == ["train", "val"]
    for split, images, boxes in (("train", 160, 172), ("val", 40, 45)):
        summary = report["splits"][split]
        assert (summary["images"], summary["boxes"]) == (images, boxes)
        assert summary["boxes_per_class"] == dict(coco_counts([folder / f"instances_{split}.json"]))
        assert summary["problems"] == {} and summary["warnings"] == []
        assert_consistent(summary)
    assert "ok: no problems found" in format_report(report)


@needs_shared
def test_report_on_bccd_voc_matches_the_coco_files() -> None:
    report = dataset_report(DATASETS / "bccd" / "voc")
    assert report["ok"] is True and report["format"] == "voc" and report["class_names"] == ["Platelets", "RBC", "WBC"]
    assert list(report["splits"]) == ["train"]
    summary = report["splits"]["train"]
    assert (summary["images"], summary["boxes"]) == (364, 4888)
    coco = DATASETS / "bccd" / "coco"
    assert summary["boxes_per_class"] == dict(coco_counts([coco / "instances_train.json", coco / "instances_val.json"]))
    assert summary["image_sizes"] == {"min_width": 640, "max_width": 640, "min_height": 480, "max_height": 480}
    assert_consistent(summary)


def test_report_lists_each_problem_with_its_file_and_annotation(flawed: Path) -> None:
    with pytest.warns(UserWarning, match="3 annotation or image problem"):  # the report catches this summary; a plain read still warns
        assert len(read_dataset(flawed, "train").records) == 2
    report = dataset_report(flawed)
    assert report["ok"] is False
    summary = report["splits"]["train"]
    problems = summary["problems"]
    counts = {kind: problem["count"] for kind, problem in problems.items()}
    assert counts == {"box outside the image": 1, "unusable image": 1, "zero-size box": 1}
    assert "annotation id=2" in problems["zero-size box"]["examples"][0]
    assert "annotation id=3" in problems["box outside the image"]["examples"][0]
    assert "b.jpg" in problems["unusable image"]["examples"][0]
    assert len(summary["warnings"]) == 1 and "3 annotation or image problem" in summary["warnings"][0]
    assert (summary["images"], summary["images_without_objects"], summary["boxes"], summary["crowd_boxes"]) == (2, 0, 3, 1)
    assert summary["boxes_per_class"] == {"cat": 2, "dog": 1}
    assert summary["box_sizes_per_class"] == {"cat": {"small": 2, "medium": 0, "large": 0}, "dog": {"small": 0, "medium": 1, "large": 0}}
    assert summary["image_sizes"] == {"min_width": 64, "max_width": 80, "min_height": 48, "max_height": 60}
    assert_consistent(summary)
    text = format_report(report)
    assert "zero-size box: 1, e.g." in text and "annotation id=2" in text and "problems found: 3" in text


def test_decode_finds_images_whose_header_and_end_marker_look_fine(tmp_path: Path) -> None:
    folder = tmp_path / "undecodable"
    content = write_jpeg(folder / "images" / "a.jpg", 64, 48)
    write_jpeg(folder / "images" / "b.jpg", 64, 48)
    # A lossless-arithmetic frame marker (SOF15) in place of the baseline one (SOF0): the header still parses.
    (folder / "images" / "a.jpg").write_bytes(content.replace(b"\xff\xc0", b"\xff\xcf", 1))
    images = [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}, {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48}]
    write_coco(folder, images, [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 30, 30]}])
    assert dataset_report(folder)["ok"] is True
    report = dataset_report(folder, decode=True)
    problem = report["splits"]["train"]["problems"]["image fails to decode"]
    assert report["ok"] is False and problem["count"] == 1 and "a.jpg" in problem["examples"][0]


def test_cli_check_exits_1_on_problems_and_2_under_strict(flawed: Path, tmp_path: Path, capsys) -> None:
    report_file = tmp_path / "out" / "report.json"
    assert main(["data", "check", str(flawed), "--json", str(report_file)]) == 1
    stdout = capsys.readouterr().out
    assert "zero-size box: 1" in stdout and stdout.strip().endswith(f"report: {report_file}")
    saved = json.loads(report_file.read_text())
    assert saved["ok"] is False and saved["splits"]["train"]["problems"]["unusable image"]["count"] == 1
    assert main(["data", "check", str(flawed), "--strict", "--json", str(report_file)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "instances_train.json" in error and "annotation id=2" in error


def test_cli_check_writes_the_default_report_path(flawed: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["data", "check", str(flawed)]) == 1
    assert capsys.readouterr().out.strip().endswith("report: runs/data_check/dataset_report.json")
    assert json.loads((tmp_path / "runs" / "data_check" / "dataset_report.json").read_text())["ok"] is False


def test_cli_convert_to_yolo_keeps_every_box(flawed: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "yolo"
    with pytest.warns(UserWarning, match="crowd"):  # YOLO has no ignore regions: the crowd box is left out, with a warning
        assert main(["data", "convert", str(flawed), "--to", "yolo", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"train with: anchorfree train data.dataset={out / 'data.yaml'}")
    assert main(["data", "check", str(out / "data.yaml"), "--json", str(tmp_path / "yolo.json")]) == 0
    capsys.readouterr()
    converted = json.loads((tmp_path / "yolo.json").read_text())
    source = dataset_report(flawed)["splits"]["train"]
    summary = converted["splits"]["train"]
    assert converted["ok"] is True and converted["class_names"] == ["cat", "dog"]
    assert summary["images"] == source["images"] and summary["boxes"] == source["boxes"] - source["crowd_boxes"] == 2
    assert summary["boxes_per_class"] == {"cat": 1, "dog": 1}


def test_cli_show_writes_a_grid_of_the_expected_size(flawed: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "show" / "grid.png"
    assert main(["data", "show", str(flawed), "--out", str(out), "--count", "16", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    with Image.open(out) as image:
        # Two usable images in a 4-column grid: one row of two 320 px tiles with 2 px gaps around them.
        assert image.format == "PNG" and image.size == (2 * (320 + 2) + 2, 320 + 2 + 2)
    again = show_dataset(flawed, tmp_path / "again.png", seed=3)
    assert again.read_bytes() == out.read_bytes()
    assert [path.name for path in out.parent.iterdir()] == ["grid.png"]  # no temporary file left behind


def test_show_draws_each_box_in_its_class_colour_at_the_scaled_position(tmp_path: Path) -> None:
    folder = tmp_path / "one"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (200, 100), (0, 0, 0)).save(folder / "images" / "a.png")
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [20, 10, 100, 50], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [150, 20, 40, 60], "iscrowd": 1},
    ]
    write_coco(folder, [{"id": 1, "file_name": "a.png", "width": 200, "height": 100}], annotations)
    out = show_dataset(folder, tmp_path / "one.png", columns=4)
    pixels = np.array(Image.open(out).convert("RGB"))
    assert pixels.shape == (320, 320, 3)  # one image: the grid is its tile, without gaps
    scale = 320 / 200  # the longer side becomes 320 px
    # The "dog" box's left edge, half-way down; the crowd box's right edge (drawn inside the box), half-way down.
    left, middle = int(20 * scale), int((10 + 25) * scale)
    assert tuple(pixels[middle, left]) == class_colour(1)
    right, crowd_middle = int(190 * scale), int((20 + 30) * scale)
    assert tuple(pixels[crowd_middle, right]) == IGNORE_COLOUR
    assert tuple(pixels[middle, left + 10]) == (0, 0, 0)  # inside the box: the black image, unfilled


def test_check_convert_and_show_never_change_the_dataset(flawed: Path, tmp_path: Path, capsys) -> None:
    before = file_hashes(flawed)
    main(["data", "check", str(flawed), "--decode", "--json", str(tmp_path / "report.json")])
    with pytest.warns(UserWarning, match="crowd"):
        main(["data", "convert", str(flawed), "--to", "yolo", "--out", str(tmp_path / "yolo")])
    main(["data", "convert", str(flawed), "--to", "voc", "--out", str(tmp_path / "voc"), "--images", "symlink"])
    main(["data", "show", str(flawed), "--out", str(tmp_path / "show.png")])
    capsys.readouterr()
    assert file_hashes(flawed) == before
