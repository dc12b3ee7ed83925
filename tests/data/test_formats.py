"""COCO, Pascal VOC and YOLO: the same samples from every format, round trips, format detection and VOC details."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from anchorfree.data.formats import convert_dataset, dataset_splits, detect_format, read_dataset
from anchorfree.data.records import DetectionData, ImageRecord, InvalidAnnotation
from anchorfree.data.voc import read_voc, write_voc
from anchorfree.data.yolo import read_yolo

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
SHARED_NAMES = ["raccoon", "bccd"]
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared datasets folder {SHARED} is not beside the repository")
TOLERANCE = 1e-3  # px


def by_file_name(*splits: DetectionData) -> dict[str, tuple[ImageRecord, list[str]]]:
    """{file name: (record, class names of its split)} over all the given splits; file names must be unique."""
    records = {}
    for data in splits:
        for record in data.records:
            name = Path(record.file_name).name
            assert name not in records, f"{name} appears twice"
            records[name] = (record, data.class_names)
    return records


def assert_same_samples(
    expected: dict[str, tuple[ImageRecord, list[str]]], actual: dict[str, tuple[ImageRecord, list[str]]], compare_crowd: bool = True
) -> None:
    """Same images, sizes, and (class name, box, crowd) multisets with boxes equal within TOLERANCE."""
    assert sorted(expected) == sorted(actual)
    for name, (record, names) in expected.items():
        other, other_names = actual[name]
        assert (record.width, record.height) == (other.width, other.height), name
        assert len(record.boxes) == len(other.boxes), name

        # Sort both by (class, rounded box) and compare element-wise within the tolerance.
        def ordered(item: ImageRecord, class_names: list[str]) -> list[tuple]:
            rows = zip(item.labels.tolist(), item.boxes.astype(np.float64).tolist(), item.iscrowd.tolist())
            return sorted((class_names[label], box, crowd) for label, box, crowd in rows)

        for (label, box, crowd), (other_label, other_box, other_crowd) in zip(ordered(record, names), ordered(other, other_names)):
            assert label == other_label, name
            np.testing.assert_allclose(box, other_box, atol=TOLERANCE, err_msg=name)
            if compare_crowd:
                assert crowd == other_crowd, name


# ----------------------------------------------------------------------------------------------- shared datasets


@needs_shared
@pytest.mark.parametrize("name", SHARED_NAMES)
def test_voc_coco_and_converted_yolo_give_identical_samples(name: str, tmp_path: Path) -> None:
    voc = read_dataset(SHARED / name / "voc")
    coco = [read_dataset(SHARED / name / "coco", split=split) for split in ("train", "val")]
    yolo_yaml = convert_dataset(SHARED / name / "coco", "yolo", tmp_path / "yolo", images="symlink")
    yolo = [read_dataset(yolo_yaml, split=split) for split in ("train", "val")]
    assert voc.format == "voc" and coco[0].format == "coco" and yolo[0].format == "yolo"
    assert voc.class_names == coco[0].class_names == coco[1].class_names == yolo[0].class_names == yolo[1].class_names
    assert len(voc.records) == len(coco[0].records) + len(coco[1].records)
    assert voc.problems == coco[0].problems == coco[1].problems == yolo[0].problems == yolo[1].problems == {}
    assert_same_samples(by_file_name(*coco), by_file_name(voc))
    assert_same_samples(by_file_name(*coco), by_file_name(*yolo))
    # The symlinked images point at the shared files, which stay where they were.
    linked = next((tmp_path / "yolo" / "images" / "train").iterdir())
    assert linked.is_symlink() and linked.resolve().parent == (SHARED / name / "images").resolve()


@needs_shared
@pytest.mark.parametrize("name", SHARED_NAMES)
@pytest.mark.parametrize("through", ["yolo", "voc"])
def test_coco_round_trips_through_yolo_and_voc_give_identical_records(name: str, through: str, tmp_path: Path) -> None:
    source = SHARED / name / "coco"
    middle = convert_dataset(source, through, tmp_path / through, images="symlink")
    back = convert_dataset(middle, "coco", tmp_path / "coco", images="symlink")
    assert back.name == "data.yaml"
    for split in ("train", "val"):
        original = read_dataset(source, split=split)
        again = read_dataset(back, split=split)
        assert again.class_names == original.class_names
        assert again.category_ids == original.category_ids
        assert sorted(record.file_name for record in again.records) == sorted(record.file_name for record in original.records)
        assert_same_samples(by_file_name(original), by_file_name(again))
        # Labels are the same contiguous indices, not only the same names.
        records = {record.file_name: record for record in again.records}
        for record in original.records:
            assert Counter(record.labels.tolist()) == Counter(records[record.file_name].labels.tolist())


@needs_shared
@pytest.mark.parametrize("name", SHARED_NAMES)
def test_dataset_splits_of_the_shared_coco_folder_are_train_and_val(name: str) -> None:
    splits = dataset_splits(SHARED / name / "coco")
    assert splits == {
        "train": (SHARED / name / "coco" / "instances_train.json", "coco"),
        "val": (SHARED / name / "coco" / "instances_val.json", "coco"),
    }


# ----------------------------------------------------------------------------------------------- small fixtures


def save_image(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 60, 30)).save(path)
    return path


def voc_xml(file_name: str, objects: list[str], size: tuple[int, int] | None = (64, 48)) -> str:
    """A VOC document; each object is given as its inner XML."""
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><filename>{file_name}</filename>{size_xml}{''.join(f'<object>{item}</object>' for item in objects)}</annotation>"


def voc_object(name: str, box: tuple[float, float, float, float], difficult: int | None = 0) -> str:
    difficult_xml = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    coordinates = "".join(f"<{field}>{value}</{field}>" for field, value in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<name>{name}</name>{difficult_xml}<bndbox>{coordinates}</bndbox>"


def voc_devkit(root: Path) -> Path:
    """A devkit with images a, b, c; ImageSets/Main/train.txt lists a and c, val.txt lists b."""
    for stem, name in (("a", "cat"), ("b", "dog"), ("c", "cat")):
        save_image(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", [voc_object(name, (5, 6, 20, 30))]))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nc\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\n")
    return root


def yolo_root(root: Path, with_classes_file: bool = False) -> Path:
    """images/{train,val}/*.jpg with labels/{train,val}/*.txt."""
    for split, stems in (("train", ["a", "b"]), ("val", ["c"])):
        for stem in stems:
            save_image(root / "images" / split / f"{stem}.jpg")
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{stem}.txt").write_text("1 0.5 0.5 0.25 0.5\n")
    if with_classes_file:
        (root / "labels" / "classes.txt").write_text("circle\nsquare\n")
    return root


def test_detect_format_on_every_kind_of_path(tmp_path: Path) -> None:
    json_file = tmp_path / "instances_train.json"
    json_file.write_text("{}")
    yaml_file = tmp_path / "data.yaml"
    yaml_file.write_text("train: x\n")
    devkit = voc_devkit(tmp_path / "VOC2007")
    xml_folder = tmp_path / "xmls"
    xml_folder.mkdir()
    (xml_folder / "a.xml").write_text(voc_xml("a.jpg", []))
    yolo = yolo_root(tmp_path / "yolo")
    assert detect_format(json_file) == "coco"
    assert detect_format(yaml_file) == "yaml"
    assert detect_format(devkit) == "voc"
    assert detect_format(devkit / "ImageSets" / "Main" / "train.txt") == "voc"
    assert detect_format(xml_folder) == "voc"
    assert detect_format(yolo) == "yolo"
    assert detect_format(yolo / "images" / "train") == "yolo"
    with pytest.raises(InvalidAnnotation, match="no such file or folder"):
        detect_format(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidAnnotation, match="cannot tell the dataset format"):
        detect_format(empty)


def test_split_of_a_devkit_root_reads_only_the_images_its_imageset_lists(tmp_path: Path) -> None:
    devkit = voc_devkit(tmp_path / "VOC2007")
    train = read_dataset(devkit, split="train")
    assert [record.file_name for record in train.records] == ["a.jpg", "c.jpg"]
    assert train.class_names == ["cat"]
    val = read_dataset(devkit, split="val", class_names=["cat", "dog"])
    assert [record.file_name for record in val.records] == ["b.jpg"] and val.records[0].labels.tolist() == [1]
    assert len(read_dataset(devkit).records) == 3  # no split: every XML file
    assert set(dataset_splits(devkit)) == {"train", "val"}


def test_our_dataset_yaml_and_an_ultralytics_yaml_both_read(tmp_path: Path) -> None:
    root = yolo_root(tmp_path / "shapes")
    ours = root / "data.yaml"
    ours.write_text(yaml.safe_dump({"train": "images/train", "val": "images/val", "names": ["circle", "square"], "format": "yolo"}))
    elsewhere = tmp_path / "configs" / "shapes.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(
        yaml.safe_dump({"path": "../shapes", "train": "images/train", "val": "images/val", "names": {0: "circle", 1: "square"}})
    )
    for dataset_yaml in (ours, elsewhere):
        train = read_dataset(dataset_yaml, split="train")
        val = read_dataset(dataset_yaml, split="val")
        assert train.class_names == val.class_names == ["circle", "square"]
        assert [record.file_name for record in train.records] == ["a.jpg", "b.jpg"] and [record.file_name for record in val.records] == [
            "c.jpg"
        ]
        np.testing.assert_allclose(val.records[0].boxes, [[24, 12, 40, 36]], atol=TOLERANCE)
        assert val.records[0].labels.tolist() == [1]
    assert read_dataset(ours).records[0].file_name == "a.jpg"  # no split: train


def test_yolo_names_come_from_classes_txt_and_missing_names_are_a_clear_error(tmp_path: Path) -> None:
    root = yolo_root(tmp_path / "with", with_classes_file=True)
    assert read_yolo(root / "images" / "train").class_names == ["circle", "square"]
    bare = yolo_root(tmp_path / "without")
    with pytest.raises(InvalidAnnotation, match="no class names for the YOLO labels") as error:
        read_yolo(bare / "images" / "train")
    assert str(bare / "images" / "train") in str(error.value) and "classes.txt" in str(error.value)


def test_voc_difficult_missing_difficult_float_coordinates_and_missing_size(tmp_path: Path) -> None:
    save_image(tmp_path / "JPEGImages" / "a.jpg", (64, 48))
    objects = [
        voc_object("cat", (1, 1, 10, 10), difficult=1),
        voc_object("cat", (11, 11, 20, 20), difficult=None),
        voc_object("dog", (2.5, 3.25, 30.75, 40.5), difficult=0),
    ]
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(voc_xml("a.jpg", objects, size=None))
    data = read_voc(tmp_path)
    record = data.records[0]
    assert (record.width, record.height) == (64, 48)  # no <size>: read from the image
    assert record.iscrowd.tolist() == [True, False, False]
    # 1-based inclusive pixel indices: (xmin - 1, ymin - 1, xmax, ymax).
    np.testing.assert_allclose(record.boxes, [[0, 0, 10, 10], [10, 10, 20, 20], [1.5, 2.25, 30.75, 40.5]])
    assert record.labels.tolist() == [0, 0, 1]


def test_voc_writer_inverts_the_one_based_convention(tmp_path: Path) -> None:
    save_image(tmp_path / "images" / "a.jpg")
    record = ImageRecord(
        image_id=1,
        file_name="a.jpg",
        path=tmp_path / "images" / "a.jpg",
        width=64,
        height=48,
        boxes=np.array([[0, 0, 10, 10], [1.5, 2.25, 30.75, 40.5]], dtype=np.float32),
        labels=np.array([0, 1]),
        iscrowd=np.array([False, True]),
    )
    data = DetectionData([record], ["cat", "dog"], [1, 2], tmp_path)
    folder = write_voc(data, tmp_path / "out", split="train")
    text = (folder / "a.xml").read_text()
    assert "<xmin>1</xmin>" in text and "<ymin>1</ymin>" in text and "<xmax>10</xmax>" in text
    assert "<xmin>2.5</xmin>" in text and "<ymin>3.25</ymin>" in text and "<difficult>1</difficult>" in text
    assert (tmp_path / "out" / "ImageSets" / "Main" / "train.txt").read_text() == "a\n"
    again = read_voc(folder, image_root=tmp_path / "images")
    np.testing.assert_allclose(again.records[0].boxes, record.boxes)
    assert again.records[0].iscrowd.tolist() == [False, True]


def test_yolo_polygon_row_is_read_as_its_bounding_box(tmp_path: Path) -> None:
    save_image(tmp_path / "images" / "a.jpg", (64, 48))
    (tmp_path / "labels").mkdir()
    # A triangle: x in [0.25, 0.75], y in [0.25, 0.5].
    (tmp_path / "labels" / "a.txt").write_text("0 0.25 0.5 0.75 0.5 0.5 0.25\n")
    record = read_yolo(tmp_path / "images", ["thing"]).records[0]
    np.testing.assert_allclose(record.boxes, [[16, 12, 48, 24]], atol=TOLERANCE)


def test_convert_refuses_a_non_empty_output_folder(tmp_path: Path) -> None:
    devkit = voc_devkit(tmp_path / "VOC2007")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_dataset(devkit, "coco", out)
    assert [path.name for path in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    # An existing empty folder is fine.
    empty = tmp_path / "empty"
    empty.mkdir()
    converted = convert_dataset(devkit, "coco", empty, class_names=["cat", "dog"])
    document = json.loads((empty / "annotations" / "instances_train.json").read_text())
    assert converted == empty / "data.yaml" and len(document["images"]) == 2


@needs_shared
def test_every_format_of_a_split_evaluates_to_the_same_metrics(tmp_path: Path) -> None:
    # The evaluator receives COCO-form ground truth built from any reader: the COCO val split of bccd and its YOLO
    # and VOC conversions give identical metrics for the same detections (the GT boxes, shifted and rescored).
    from anchorfree.evaluation import evaluate_coco

    coco = read_dataset(SHARED / "bccd" / "coco", "val")
    yolo = read_dataset(convert_dataset(SHARED / "bccd" / "coco", "yolo", tmp_path / "yolo", images="symlink"), "val")
    voc = read_dataset(convert_dataset(SHARED / "bccd" / "coco", "voc", tmp_path / "voc", images="symlink"), "val")

    def detections(data) -> list[dict]:
        by_name = {Path(record.file_name).name: record.image_id for record in data.records}
        results = []
        for record in sorted(coco.records, key=lambda record: record.file_name):
            for index, (box, label) in enumerate(zip(record.boxes.tolist(), record.labels.tolist())):
                shift = 3.0 * ((index % 5) - 2)
                results.append({
                    "image_id": by_name[Path(record.file_name).name], "category_id": data.category_ids[label],
                    "bbox": [box[0] + shift, box[1], box[2] - box[0], box[3] - box[1]], "score": 1.0 - 0.001 * index,
                })
        return results

    reference = evaluate_coco(coco.coco_ground_truth(), detections(coco))
    for other in (yolo, voc):
        result = evaluate_coco(other.coco_ground_truth(), detections(other))
        for name, value in reference.stats.items():
            assert result.stats[name] == pytest.approx(value, abs=1e-9), name
    assert 0.2 < reference.stats["mAP"] < 1.0
