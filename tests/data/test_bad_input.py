"""Hostile and careless annotation input: every bad value is a named InvalidAnnotation, `data check` lists them all.

Each test names the file, the item (image id, annotation id, object, line) and the offending value it expects in
the message, as the readers promise (../shared/RELIABILITY.md, rows cited per test).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from anchorfree.cli import main
from anchorfree.config import ConfigError, get_preset, validate
from anchorfree.data import cache as image_cache
from anchorfree.data import coco
from anchorfree.data.coco import read_coco
from anchorfree.data.formats import read_dataset
from anchorfree.data.images import image_to_tensor, inspect_image, load_image
from anchorfree.data.records import InvalidAnnotation
from anchorfree.data.report import dataset_report, format_report
from anchorfree.data.voc import read_voc
from anchorfree.data.yolo import read_yolo


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0, **save: Any) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", **save)
    return buffer.getvalue()


def write_coco(folder: Path, annotations: list[Any], images: list[Any] | None = None, categories: list[Any] | None = None, **top: Any) -> Path:
    """A COCO file beside images/ holding a 64x48 JPEG for a.jpg and b.jpg (ids 7 and 9), classes cat=1, dog=2."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name in ("a.jpg", "b.jpg"):
        (folder / "images" / name).write_bytes(jpeg_bytes())
    document = {
        "images": images if images is not None else [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 48}, {"id": 9, "file_name": "b.jpg", "width": 64, "height": 48}],
        "annotations": annotations,
        "categories": categories if categories is not None else [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        **top,
    }
    path = folder / "annotations.json"
    path.write_text(json.dumps(document))
    return path


def annotation(annotation_id: Any = 5, image_id: Any = 7, category_id: Any = 1, bbox: Any = None, **extra: Any) -> dict[str, Any]:
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": bbox if bbox is not None else [2, 3, 10, 12], **extra}


# ----------------------------------------------------------------------------------------------- iscrowd (11.3)


@pytest.mark.parametrize("value", ["0", "no", 2, None, 0.0, [0], -1])
def test_iscrowd_other_than_0_1_true_false_is_an_error_naming_the_annotation(tmp_path: Path, value: Any) -> None:
    """Issue 11.3; RELIABILITY A20: a string "0" is truthy, so it would make every box an ignore region."""
    path = write_coco(tmp_path, [annotation(41, iscrowd=value)])
    with pytest.raises(InvalidAnnotation, match="iscrowd") as error:
        read_coco(path)
    message = str(error.value)
    assert str(path) in message and "image_id=7" in message and "annotation id=41" in message and repr(value) in message


@pytest.mark.parametrize("value, crowd", [(0, False), (1, True), (False, False), (True, True), ("missing", False)])
def test_iscrowd_0_1_true_false_and_missing_are_read(tmp_path: Path, value: Any, crowd: bool) -> None:
    """Issue 11.3; RELIABILITY A20: missing iscrowd means 0."""
    extra = {} if value == "missing" else {"iscrowd": value}
    data = read_coco(write_coco(tmp_path, [annotation(**extra)]))
    assert data.records[0].iscrowd.tolist() == [crowd]


# ------------------------------------------------------------------------------------- value types (11.9)


BAD_COCO = [
    # (what to change, the words and value the message must hold)
    ({"images": [{"id": [7], "file_name": "a.jpg"}]}, ["images[0]", "id", "[7]"]),
    ({"images": [{"id": True, "file_name": "a.jpg"}]}, ["images[0]", "id", "True"]),
    ({"images": [{"id": 7.5, "file_name": "a.jpg"}]}, ["images[0]", "id", "7.5"]),
    ({"images": [{"id": 7, "file_name": "a.jpg", "width": "64", "height": 48}]}, ["image_id=7", "width", "'64'"]),
    ({"images": [{"id": 7, "file_name": "a.jpg", "width": 0, "height": 48}]}, ["image_id=7", "width", "0"]),
    ({"images": [{"id": 7, "file_name": 5}]}, ["image_id=7", "file_name", "5"]),
    ({"images": [{"file_name": "a.jpg"}]}, ["images[0]", "id", "None"]),
    ({"images": ["a.jpg"]}, ["images[0]", "'a.jpg'"]),
    ({"categories": [{"name": "cat"}]}, ["categories[0]", "id", "None"]),
    ({"categories": [{"id": 1}]}, ["categories[0]", "name", "None"]),
    ({"categories": [{"id": "1", "name": "cat"}]}, ["categories[0]", "id", "'1'"]),
    ({"categories": [{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}]}, ["categories[1]", "category id 1", "'dog'"]),
    ({"categories": 3}, ["'categories'", "integer 3"]),
    ({"images": {"id": 7}}, ["'images'", "object"]),
    ({"annotations": "none"}, ["'annotations'", "'none'"]),
    ({"annotations": [7]}, ["annotations[0]", "integer 7"]),
    ({"annotations": [annotation(annotation_id=[5])]}, ["annotations[0]", "id", "[5]"]),
    ({"annotations": [annotation(image_id="7")]}, ["annotation id=5", "image_id", "'7'"]),
    ({"annotations": [annotation(category_id=[1])]}, ["annotation id=5", "category_id", "[1]"]),
    ({"annotations": [annotation(category_id=None)]}, ["annotation id=5", "category_id", "None"]),
    ({"annotations": [annotation(bbox=[1, True, 3, 4])]}, ["annotation id=5", "bbox", "True"]),
    ({"annotations": [annotation(bbox="1 2 3 4")]}, ["annotation id=5", "bbox", "'1 2 3 4'"]),
]


@pytest.mark.parametrize("change, expected", BAD_COCO)
def test_malformed_coco_values_are_named_errors_not_tracebacks(tmp_path: Path, change: dict[str, Any], expected: list[str]) -> None:
    """Issue 11.9; RELIABILITY A12, A17, A19: a list id, a string width, a number for an annotation... are each an
    InvalidAnnotation naming the file, the item and the value, never a TypeError / KeyError / AttributeError."""
    path = write_coco(tmp_path, [annotation()])
    document = json.loads(path.read_text())
    document.update(change)
    path.write_text(json.dumps(document))
    with pytest.raises(InvalidAnnotation) as error:
        read_coco(path)
    message = str(error.value)
    assert str(path) in message
    for words in expected:
        assert words in message, (words, message)


def test_a_top_level_that_is_not_an_object_is_a_named_error(tmp_path: Path) -> None:
    """Issue 11.9: a JSON list where the object belongs."""
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(InvalidAnnotation, match="list.json: the top level is a JSON array"):
        read_coco(path)


def test_integral_float_ids_and_sizes_are_read_as_integers(tmp_path: Path) -> None:
    """Issue 11.9: 7.0 is the integer 7 (some writers emit floats); only non-integral floats are refused."""
    images = [{"id": 7.0, "file_name": "a.jpg", "width": 64.0, "height": 48}]
    data = read_coco(write_coco(tmp_path, [annotation(annotation_id=5.0, image_id=7, category_id=1.0)], images=images))
    assert data.records[0].image_id == 7 and data.records[0].annotation_ids == [5] and data.records[0].labels.tolist() == [0]


def test_deeply_nested_json_is_a_named_error_not_a_recursion_error(tmp_path: Path) -> None:
    """Issue 11.9: nesting deep enough to exhaust the parser's recursion is an error naming the file."""
    path = tmp_path / "deep.json"
    path.write_text('{"images": [], "categories": [], "annotations": [' + "[" * 200_000 + "]" * 200_000 + "]}")
    with pytest.raises(InvalidAnnotation, match="deep.json: JSON nested too deeply"):
        read_coco(path)


def test_an_annotation_file_above_the_size_limit_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11.9 (reading is bounded): the limit is a module constant, lowered here to keep the test small."""
    path = write_coco(tmp_path, [annotation()])
    monkeypatch.setattr(coco, "MAX_ANNOTATION_BYTES", 100)
    with pytest.raises(InvalidAnnotation, match=rf"annotations.json: annotation file is {path.stat().st_size} bytes, above the limit of 100"):
        read_coco(path)


def test_a_utf8_bom_before_the_json_is_read(tmp_path: Path) -> None:
    """Issue 11.9: a byte-order mark from a Windows editor is not an error."""
    path = write_coco(tmp_path, [annotation()])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(read_coco(path).records) == 2


# ------------------------------------------------------------------------------------ huge boxes (11.10)


@pytest.mark.parametrize("bbox", [[1e300, 2, 10, 10], [2, 3, 1e300, 10], [9e6, 0, 9e6, 10], [1.7e308, 0, 1.7e308, 5]])
def test_absurdly_large_coco_boxes_are_errors_without_overflow_warnings(tmp_path: Path, bbox: list[float]) -> None:
    """Issue 11.10; RELIABILITY A9: 1e300 (or x + width beyond 1e7 px) is a corrupt value, never a whole-image box."""
    path = write_coco(tmp_path, [annotation(41, bbox=bbox)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy overflow RuntimeWarning fails the test
        with pytest.raises(InvalidAnnotation, match="beyond 1e\\+07 px") as error:
            read_coco(path)
    message = str(error.value)
    assert str(path) in message and "annotation id=41" in message and "image_id=7" in message


def test_absurdly_large_voc_coordinates_are_errors_by_the_shared_rule(tmp_path: Path) -> None:
    """Issue 11.10; RELIABILITY A9: VOC goes through the same per-box rule as COCO."""
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    box = "<xmin>2</xmin><ymin>2</ymin><xmax>1e300</xmax><ymax>20</ymax>"
    (tmp_path / "a.xml").write_text(f"<annotation><filename>a.jpg</filename><object><name>cat</name><bndbox>{box}</bndbox></object></annotation>")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InvalidAnnotation, match="a.xml.*object 0: box .*1e\\+300.* beyond 1e\\+07 px"):
            read_voc(tmp_path)


# --------------------------------------------------------------------------------- JPEG end marker (11.7)


def test_a_jpeg_with_bytes_after_its_end_marker_is_complete(tmp_path: Path) -> None:
    """Issue 11.7; RELIABILITY B2: phones append data (motion photos a whole video) after the end-of-image marker."""
    path = tmp_path / "images" / "a.jpg"
    coco_file = write_coco(tmp_path, [annotation()])
    path.write_bytes(jpeg_bytes() + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    assert inspect_image(path) == (64, 48)
    assert tuple(load_image(path).shape) == (3, 48, 64)
    data = read_coco(coco_file)
    assert [record.image_id for record in data.records] == [7, 9] and data.problems == {}


@pytest.mark.parametrize("save", [{}, {"comment": b"\xff\xd9 an end marker inside a comment segment"}, {"progressive": True}])
def test_a_really_truncated_jpeg_is_still_reported(tmp_path: Path, save: dict[str, Any]) -> None:
    """Issue 11.7; RELIABILITY B2: cut inside the scan data, with junk appended or an FFD9 in a header segment, it
    is truncated."""
    coco_file = write_coco(tmp_path, [annotation()])
    content = jpeg_bytes(**save)
    (tmp_path / "images" / "a.jpg").write_bytes(content[: len(content) * 2 // 3] + b"junk")
    with pytest.warns(UserWarning, match="1 annotation or image problem"):
        data = read_coco(coco_file)
    assert [record.image_id for record in data.records] == [9]
    assert data.problems == {"unusable image": 1} and "a.jpg: truncated JPEG" in data.problem_examples["unusable image"][0]


def test_a_cached_truncated_verdict_of_an_older_cache_version_is_not_trusted(tmp_path: Path) -> None:
    """Issue 11.7: image checks cached before the end-marker rule changed are checked again."""
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_bytes() + b"trailing bytes")
    cache = image_cache.ImageInfoCache("old-entry", 10**7)
    stat = path.stat()
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    stale = {"stamp": [stat.st_size, stat.st_mtime_ns], "problem": f"{path}: truncated JPEG", "too_large": False}
    cache.path.write_text(json.dumps({"version": image_cache.CACHE_VERSION - 1, "entries": {str(path): stale}}))
    assert image_cache.ImageInfoCache("old-entry", 10**7).inspect(path) == (64, 48)


# ---------------------------------------------------------------------------------- PIL inputs (issue 11.10)


def test_image_to_tensor_gives_a_pil_image_exactly_the_treatment_of_its_file(tmp_path: Path) -> None:
    """Issue 11.10; RELIABILITY B4, B7: a 16-bit image is scaled by 65535, an EXIF-rotated one is turned once,
    the same for a PIL image as for the file it came from."""
    depth = tmp_path / "depth.png"
    Image.fromarray(np.tile(np.array([[0, 32768, 65535, 1000]], dtype=np.uint16), (12, 3))).save(depth)
    with Image.open(depth) as image:
        assert image.mode.startswith("I")
        from_pil = image_to_tensor(image)
    assert torch.equal(from_pil, load_image(depth)) and from_pil[0, 0, :4].tolist() == [0, 128, 255, 4]

    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.write_bytes(jpeg_bytes(60, 40, exif=exif.tobytes()))
    with Image.open(rotated) as image:
        from_pil = image_to_tensor(image)
        assert image.size == (60, 40)  # the caller's image is left as it was
    assert tuple(from_pil.shape) == (3, 60, 40) and torch.equal(from_pil, load_image(rotated))
    assert torch.equal(image_to_tensor(Image.fromarray(from_pil.permute(1, 2, 0).numpy())), from_pil)  # no second turn


@pytest.mark.parametrize("mode", ["L", "P", "LA", "RGBA", "CMYK", "I"])
def test_image_to_tensor_makes_three_channel_uint8_rgb_of_any_mode(mode: str) -> None:
    """Issue 11.10; RELIABILITY B5, B6."""
    image = Image.new("RGB", (30, 20), (200, 40, 10)).convert(mode)
    tensor = image_to_tensor(image)
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3, 20, 30)


# ----------------------------------------------------------------------------- data check lists all (11.11)


@pytest.fixture
def four_problems(tmp_path: Path) -> Path:
    """A COCO file with an unknown category (annotation 1), a zero-width box (annotation 2), a missing image
    (id 3, gone.jpg) and a file_name escaping the image folder (id 4, ../outside.jpg)."""
    folder = tmp_path / "four"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.jpg").write_bytes(jpeg_bytes())
    (folder / "outside.jpg").write_bytes(jpeg_bytes())
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
        {"id": 3, "file_name": "gone.jpg", "width": 64, "height": 48},
        {"id": 4, "file_name": "../outside.jpg", "width": 64, "height": 48},
    ]
    annotations = [annotation(1, 1, 99), annotation(2, 1, 1, [5, 5, 0, 10]), annotation(3, 1, 1)]
    document = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cat"}]}
    path = folder / "instances_train.json"
    path.write_text(json.dumps(document))
    return path


def test_data_check_lists_every_problem_of_a_coco_file_in_one_run(four_problems: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 11.11; RELIABILITY A4, A12, B1, H3: all four problems are reported, structural ones marked, exit 2."""
    report_file = tmp_path / "report.json"
    assert main(["data", "check", str(four_problems), "--json", str(report_file)]) == 2
    stdout = capsys.readouterr().out
    problems = json.loads(report_file.read_text())["splits"]["train"]["problems"]
    assert {kind: (problem["count"], problem["structural"]) for kind, problem in problems.items()} == {
        "unknown category": (1, True),
        "zero-size box": (1, False),
        "image file not found": (1, True),
        "file_name outside the image folder": (1, True),
    }
    assert "annotation id=1" in problems["unknown category"]["examples"][0] and "99" in problems["unknown category"]["examples"][0]
    assert "annotation id=2" in problems["zero-size box"]["examples"][0] and "[5, 5, 0, 10]" in problems["zero-size box"]["examples"][0]
    assert "image_id=3" in problems["image file not found"]["examples"][0] and "gone.jpg" in problems["image file not found"]["examples"][0]
    assert "image_id=4" in problems["file_name outside the image folder"]["examples"][0] and "'../outside.jpg'" in stdout
    assert "structural problems (training stops at the first):" in stdout and "problems (training skips them):" in stdout
    assert "structural problems found: 3" in stdout
    # The usable rest is still counted: image 1 with its one good box.
    summary = json.loads(report_file.read_text())["splits"]["train"]
    assert (summary["images"], summary["boxes"]) == (1, 1)


def test_training_still_stops_at_the_first_structural_problem(four_problems: Path, tiny_overrides, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 11.11; RELIABILITY A12: the readers' training modes raise at the first problem, and `train` exits 2."""
    for on_invalid in ("skip", "error"):
        with pytest.raises(InvalidAnnotation, match="annotation id=1: category_id 99 is not in 'categories'"):
            read_dataset(four_problems, on_invalid=on_invalid)
    overrides = tiny_overrides(tmp_path / "runs", data__train=str(four_problems))
    arguments = [f"{key}={json.dumps(value) if isinstance(value, list) else value}" for key, value in overrides.items()]
    assert main(["train", "--preset", "fcos_cpu", *arguments]) == 2
    stderr = capsys.readouterr().err
    assert "error:" in stderr and "category_id 99" in stderr and "Traceback" not in stderr
    assert main(["data", "check", str(four_problems), "--strict", "--json", str(tmp_path / "strict.json")]) == 2


def test_report_mode_is_not_a_training_setting() -> None:
    """Issue 11.11: "report" belongs to `data check`; data.on_invalid stays skip | error."""
    config = get_preset("fcos_cpu")
    config.data.on_invalid = "report"
    with pytest.raises(ConfigError, match="data.on_invalid"):
        validate(config)


def test_data_check_lists_every_structural_problem_of_a_voc_folder(tmp_path: Path) -> None:
    """Issue 11.11; RELIABILITY A5, A22: a negative width, an object without <name>, a malformed file and a
    missing image, all in one run; the good object and image stay."""
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "b.jpg").write_bytes(jpeg_bytes())

    def bndbox(xmin: int, xmax: int) -> str:
        return f"<bndbox><xmin>{xmin}</xmin><ymin>2</ymin><xmax>{xmax}</xmax><ymax>20</ymax></bndbox>"

    objects = f"<object><name>cat</name>{bndbox(30, 10)}</object><object>{bndbox(2, 9)}</object><object><name>cat</name>{bndbox(2, 20)}</object>"
    (tmp_path / "a.xml").write_text(f"<annotation><filename>a.jpg</filename>{objects}</annotation>")
    (tmp_path / "b.xml").write_text("<annotation><filename>b.jpg</filename><object>")
    (tmp_path / "c.xml").write_text("<annotation><filename>gone.jpg</filename></annotation>")
    with pytest.warns(UserWarning, match="4 annotation or image problem"):
        data = read_voc(tmp_path, on_invalid="report")
    assert data.problems == {"malformed box": 1, "malformed object": 1, "malformed file": 1, "image file not found": 1}
    assert data.structural_kinds == set(data.problems)
    assert "a.xml: object 0 (cat): xmin=30" in data.problem_examples["malformed box"][0]
    assert "a.xml: object 1 has no <name>" in data.problem_examples["malformed object"][0]
    assert "b.xml: malformed XML at line 1" in data.problem_examples["malformed file"][0]
    assert "c.xml: image 'gone.jpg' not found" in data.problem_examples["image file not found"][0]
    assert [len(record.boxes) for record in data.records] == [1]
    with pytest.raises(InvalidAnnotation, match="b.xml: malformed XML"):  # training's mode: the first one, files parsed first
        read_voc(tmp_path)


def test_data_check_lists_every_bad_row_of_a_yolo_split(tmp_path: Path) -> None:
    """Issue 11.11; RELIABILITY A10, A14: wrong columns and a class index beyond nc, each named by file:line."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2\n7 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n1 0.4 x 0.2 0.2\n")
    with pytest.warns(UserWarning, match="3 annotation or image problem"):
        data = read_yolo(tmp_path, ["cat", "dog"], on_invalid="report")
    assert data.problems == {"wrong number of columns": 1, "unknown class": 1, "not a number": 1}
    assert "a.txt:1: 4 columns" in data.problem_examples["wrong number of columns"][0]
    assert "a.txt:2: class 7" in data.problem_examples["unknown class"][0] and "nc=2" in data.problem_examples["unknown class"][0]
    assert "a.txt:4: column 3 of 5 is 'x'" in data.problem_examples["not a number"][0]
    assert [len(record.boxes) for record in data.records] == [1]
    report = dataset_report(tmp_path, "yolo", ["cat", "dog"])
    assert report["structural"] is True and "wrong number of columns: 1, e.g." in format_report(report)


def test_a_clean_dataset_exits_0_and_per_box_problems_alone_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 11.11; RELIABILITY A4: the exit code tells "refused" (2) from "some skipped" (1) from "clean" (0)."""
    clean = write_coco(tmp_path / "clean", [annotation()])
    assert main(["data", "check", str(clean), "--json", str(tmp_path / "clean.json")]) == 0
    skipped = write_coco(tmp_path / "skipped", [annotation(bbox=[1, 1, 0, 5])])
    assert main(["data", "check", str(skipped), "--json", str(tmp_path / "skipped.json")]) == 1
    report = json.loads((tmp_path / "skipped.json").read_text())
    assert report["structural"] is False and report["splits"]["train"]["problems"]["zero-size box"]["structural"] is False
    capsys.readouterr()


def test_data_check_reports_an_unreadable_split_beside_the_problems_of_the_others(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 11.11; RELIABILITY A22: a split that is not JSON is recorded once for its file; the other split is
    still checked and listed."""
    write_coco(tmp_path, [annotation(bbox=[1, 1, 0, 5])]).rename(tmp_path / "instances_train.json")
    (tmp_path / "instances_val.json").write_text('{"images": [')
    report_file = tmp_path / "report.json"
    assert main(["data", "check", str(tmp_path), "--json", str(report_file)]) == 2
    splits = json.loads(report_file.read_text())["splits"]
    assert splits["train"]["problems"]["zero-size box"] == {"count": 1, "examples": [splits["train"]["problems"]["zero-size box"]["examples"][0]], "structural": False}
    malformed = splits["val"]["problems"]["malformed file"]
    assert malformed["count"] == 1 and malformed["structural"] is True and "instances_val.json: not valid JSON" in malformed["examples"][0]
    capsys.readouterr()
