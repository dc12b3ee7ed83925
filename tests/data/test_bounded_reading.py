"""Bounded reading of user text files: YAML alias bombs, size limits, non-UTF-8 files and byte-order marks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

from anchorfree.cli import main
from anchorfree.config import Config, ConfigError, apply_overrides
from anchorfree.data import formats, textfiles, yolo
from anchorfree.data.formats import read_dataset, read_dataset_yaml
from anchorfree.data.records import InvalidAnnotation
from anchorfree.data.textfiles import YAMLExpansionError, safe_load_bounded
from anchorfree.data.voc import read_voc
from anchorfree.data.yolo import read_yolo

BOM = b"\xef\xbb\xbf"


def alias_bomb(levels: int = 10, fan_out: int = 10) -> str:
    """A YAML "billion laughs": `levels` anchors, each a list of `fan_out` aliases of the one before (10**10 leaves)."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * fan_out) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * fan_out) + "]")
    return "\n".join(lines) + f"\ntrain: images/train\nnames: *l{levels - 1}\n"


def write_yolo_split(root: Path, label_bytes: bytes = b"0 0.5 0.5 0.25 0.25\n") -> Path:
    """root/images/train/a.png (32x32) with its label file; returns the images folder."""
    images = root / "images" / "train"
    images.mkdir(parents=True)
    Image.new("RGB", (32, 32), "white").save(images / "a.png")
    labels = root / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "a.txt").write_bytes(label_bytes)
    return images


# ------------------------------------------------------------------------------------------------------------ YAML


def test_dataset_yaml_alias_bomb_is_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    """Issue 11.2; RELIABILITY H4: a 10 x 10 alias bomb in `names` is refused before it is expanded."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(), encoding="utf-8")
    with pytest.raises(InvalidAnnotation) as caught:
        read_dataset_yaml(bomb)
    message = str(caught.value)
    assert str(bomb) in message and "line " in message and "alias" in message


def test_data_check_of_an_alias_bomb_exits_2_with_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.2; RELIABILITY H4: `data check bomb.yaml` ends in a named error, exit 2, no traceback."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(), encoding="utf-8")
    assert main(["data", "check", str(bomb)]) == 2
    error = capsys.readouterr().err
    assert "error:" in error and str(bomb) in error and "Traceback" not in error


def test_a_few_aliases_and_merge_keys_still_read() -> None:
    """Issue 11.2: aliases are bounded, not banned; an ordinary document that uses them reads as before."""
    document = safe_load_bounded("base: &base {a: 1}\nother: {<<: *base, b: 2}\nnames: &n [cat, dog]\nagain: *n\n")
    assert document == {"base": {"a": 1}, "other": {"a": 1, "b": 2}, "names": ["cat", "dog"], "again": ["cat", "dog"]}


def test_recursive_and_deeply_nested_yaml_are_refused_with_a_yaml_error() -> None:
    """Issue 11.2: a self-referencing alias and nesting deeper than Python's stack are YAML errors, not crashes."""
    with pytest.raises(YAMLExpansionError, match="line 1: a YAML alias refers to a node that contains it"):
        safe_load_bounded("&a [*a]")
    with pytest.raises(YAMLExpansionError, match="nested too deeply"):
        safe_load_bounded("[" * 1200 + "]" * 1200)


def test_dataset_yaml_above_the_size_bound_is_refused_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11.2: a dataset YAML larger than MAX_YAML_BYTES is refused before it is parsed."""
    monkeypatch.setattr(formats, "MAX_YAML_BYTES", 100)
    large = tmp_path / "large.yaml"
    large.write_text("train: images/train\nnames: [" + ", ".join(f"class{index}" for index in range(50)) + "]\n", encoding="utf-8")
    with pytest.raises(InvalidAnnotation, match="larger than 100 bytes") as caught:
        read_dataset_yaml(large)
    assert str(large) in str(caught.value)


def test_dataset_yaml_with_a_bom_reads_and_one_not_in_utf8_is_named(tmp_path: Path) -> None:
    """Issue 11.9: a BOM is accepted; a file in another encoding is an error naming the file and the byte."""
    with_bom = tmp_path / "bom.yaml"
    with_bom.write_bytes(BOM + b"train: images/train\nnames: [cat]\n")
    assert read_dataset_yaml(with_bom).names == ["cat"]
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("train: images/train\nnames: [café]\n".encode("latin-1"))
    with pytest.raises(InvalidAnnotation, match=r"is not UTF-8 text: byte 31 \(line 2\) is b'\\xe9'") as caught:
        read_dataset_yaml(latin1)
    assert str(latin1) in str(caught.value)


def test_override_value_alias_bomb_is_a_config_error_naming_the_key() -> None:
    """Issue 11.2: `key=value` overrides are parsed with the same bounded loader."""
    levels = ["&l0 [" + ", ".join(["lol"] * 10) + "]"] + [f"&l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]" for level in range(1, 10)]
    with pytest.raises(ConfigError, match="cannot parse the value of 'data.names'") as caught:
        apply_overrides(Config(), [f"data.names=[{', '.join(levels)}]"])
    assert "alias" in str(caught.value)
    assert isinstance(caught.value.__cause__, yaml.YAMLError)


# ----------------------------------------------------------------------------------------- label and list files


def test_yolo_label_file_not_in_utf8_is_named_with_its_byte_offset(tmp_path: Path) -> None:
    """Issue 11.9: a label file in another encoding names the label file, the byte offset and the byte."""
    images = write_yolo_split(tmp_path, b"0 0.5 0.5 0.25 0.25\n0 0.5 0.5 0.1 0.1 \xff\n")
    with pytest.raises(InvalidAnnotation) as caught:
        read_yolo(images, ["cat"])
    message = str(caught.value)
    label_file = tmp_path / "labels" / "train" / "a.txt"
    assert str(label_file) in message and "byte 38 (line 2)" in message and "\\xff" in message


def test_yolo_label_file_with_a_bom_reads_its_first_row(tmp_path: Path) -> None:
    """Issue 11.9: a UTF-8 BOM (Notepad) at the start of a label file is not part of the first row."""
    images = write_yolo_split(tmp_path, BOM + b"0 0.5 0.5 0.25 0.25\r\n")
    data = read_yolo(images, ["cat"])
    assert data.records[0].boxes.tolist() == [[12.0, 12.0, 20.0, 20.0]]


def test_yolo_label_file_above_the_size_bound_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11.9: label files are read with a size limit; the error names the label file."""
    monkeypatch.setattr(yolo, "MAX_LABEL_FILE_BYTES", 64)
    images = write_yolo_split(tmp_path, b"0 0.5 0.5 0.25 0.25\n" * 10)
    with pytest.raises(InvalidAnnotation, match="larger than 64 bytes") as caught:
        read_yolo(images, ["cat"])
    assert str(tmp_path / "labels" / "train" / "a.txt") in str(caught.value)


def test_read_text_limited_refuses_a_device_that_never_ends() -> None:
    """Issue 11.9: at most the bound is read, so even an endless file is refused by name."""
    with pytest.raises(InvalidAnnotation, match="larger than 1024 bytes") as caught:
        textfiles.read_text_limited(Path("/dev/zero"), 1024, "YOLO label file")
    assert "/dev/zero" in str(caught.value)


def test_classes_txt_and_image_list_with_a_bom_read(tmp_path: Path) -> None:
    """Issue 11.9: classes.txt and an image-list file saved by Notepad (BOM, CRLF) read as written."""
    images = write_yolo_split(tmp_path)
    (tmp_path / "labels" / "classes.txt").write_bytes(BOM + b"cat\r\ndog\r\n")
    listing = tmp_path / "train.txt"
    listing.write_bytes(BOM + b"images/train/a.png\r\n")
    from_folder = read_yolo(images)
    from_list = read_yolo(listing, ["cat", "dog"])
    assert from_folder.class_names == ["cat", "dog"]
    assert [record.path for record in from_list.records] == [images / "a.png"]


def test_classes_txt_not_in_utf8_is_named(tmp_path: Path) -> None:
    """Issue 11.9: a classes.txt in another encoding is an error naming it."""
    images = write_yolo_split(tmp_path)
    classes = tmp_path / "labels" / "classes.txt"
    classes.write_bytes("chat\ncafé\n".encode("latin-1"))
    with pytest.raises(InvalidAnnotation, match="class-names file is not UTF-8 text: byte 8") as caught:
        read_yolo(images)
    assert str(classes) in str(caught.value)


def test_voc_split_file_with_a_bom_lists_its_first_image(tmp_path: Path) -> None:
    """Issue 11.9: an ImageSets split file with a BOM names its first image id without the mark."""
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    Image.new("RGB", (32, 32), "white").save(tmp_path / "JPEGImages" / "a.jpg")
    (tmp_path / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>32</width><height>32</height></size>"
        "<object><name>cat</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>",
        encoding="utf-8",
    )
    split_file = tmp_path / "ImageSets" / "Main" / "val.txt"
    split_file.parent.mkdir(parents=True)
    split_file.write_bytes(BOM + b"a\r\n")
    data = read_voc(tmp_path, split="val")
    assert [record.file_name for record in data.records] == ["a.jpg"]
    assert read_dataset(split_file).class_names == ["cat"]
