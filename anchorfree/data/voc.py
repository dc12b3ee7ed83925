"""Pascal VOC XML reader and writer.

A VOC dataset is a folder of XML files, one per image: either the devkit layout (`Annotations/`, `JPEGImages/`,
`ImageSets/Main/<split>.txt`) or XML files in any folder, with the images beside them or in a sibling
`images/` or `JPEGImages/` folder. Files are parsed with defusedxml (no entity expansion, no external entities).

Coordinates follow the VOC devkit: pixel indices from 1 with both ends inclusive, so a box is read as
(xmin - 1, ymin - 1, xmax, ymax) in this project's continuous pixel coordinates (as detectron2 reads VOC) and
written back the same way. Float coordinates are accepted. `difficult` objects become ignore regions (like COCO
crowd boxes); a missing `<difficult>` means 0; a missing `<size>` is read from the image. Images get ids 1..N in
file-name order and classes get category ids 1..C in the order of `class_names` (sorted names by default).
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import defusedxml.ElementTree as SafeElementTree
import numpy as np
from defusedxml import DefusedXmlException

from anchorfree.data.cache import ImageInfoCache, content_hash
from anchorfree.data.images import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS
from anchorfree.data.records import DetectionData, InvalidAnnotation, ProblemLog, build_record, check_image, join_inside
from anchorfree.data.textfiles import MAX_LABEL_FILE_BYTES, read_bytes_limited, read_text_limited


def voc_annotation_files(path: Path, split: str | None = None) -> tuple[list[Path], Path]:
    """The XML files of a VOC dataset at `path` and the folder they are in.

    `path` is a devkit root (holding `Annotations/`), a folder of XML files, or an `ImageSets` split file
    (one image id per line). With a devkit root and a `split` whose `ImageSets/Main/<split>.txt` exists, only
    the images listed there are read.
    """
    if path.is_file() and path.suffix == ".txt":
        root = path.parent.parent.parent if path.parent.name == "Main" else path.parent.parent
        folder = root / "Annotations"
        ids = [line.split()[0] for line in read_text_limited(path, MAX_LABEL_FILE_BYTES, "VOC split file").splitlines() if line.strip()]
        return [folder / f"{image_id}.xml" for image_id in ids], folder
    if not path.is_dir():
        raise InvalidAnnotation(f"{path}: not a folder of Pascal VOC XML files")
    folder = path / "Annotations" if (path / "Annotations").is_dir() else path
    split_file = path / "ImageSets" / "Main" / f"{split}.txt"
    if split is not None and split_file.is_file():
        return voc_annotation_files(split_file)
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise InvalidAnnotation(f"{path}: no .xml annotation files found (expected Pascal VOC XML in {folder})")
    return files, folder


def read_voc(
    path: str | Path,
    split: str | None = None,
    class_names: list[str] | None = None,
    image_root: str | Path | None = None,
    on_invalid: str = "skip",
    trust_image_size: bool = False,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> DetectionData:
    """Read a Pascal VOC dataset into `DetectionData`.

    Args:
        path: a devkit root, a folder of XML files, or an ImageSets split file (see `voc_annotation_files`).
        split: the ImageSets/Main split to read when `path` is a devkit root that has one.
        class_names: the classes, in label order; an object of another class is an error. Default: the sorted
            names found in this split.
        image_root: the folder `<filename>` is relative to; found automatically when None.
        on_invalid, trust_image_size, max_image_pixels: as for `read_coco`.
    """
    path = Path(path)
    files, folder = voc_annotation_files(path, split)
    documents = []
    problems = ProblemLog(path, on_invalid)
    for xml_file in files:
        try:
            content = read_bytes_limited(xml_file, MAX_LABEL_FILE_BYTES, "VOC annotation file")
        except FileNotFoundError:
            problems.structural("annotation file not found", f"{xml_file}: annotation file not found (listed in the split file of {path})")
            continue
        except InvalidAnnotation as error:  # too large, or not UTF-8
            problems.reject(error)
            continue
        try:
            documents.append((xml_file, content, _parse(xml_file, content)))
        except InvalidAnnotation as error:
            problems.reject(error)  # the whole file is unreadable: recorded once, under "report"

    parsed = [(xml_file, _read_objects(xml_file, root, problems)) for xml_file, _, root in documents]
    if class_names is None:
        class_names = sorted({name for _, (_, _, objects) in parsed for _, name, _, _ in objects})
        if not class_names:
            raise InvalidAnnotation(f"{path}: no objects in any XML file; give the class names (data.names) to use it")
    label_of = {name: label for label, name in enumerate(class_names)}

    roots = [Path(image_root)] if image_root is not None else _image_root_candidates(folder)
    cache = ImageInfoCache(content_hash(*(content for _, content, _ in documents), str(path.resolve()), str(image_root)), max_image_pixels)
    records, paths_seen = [], {}
    for image_id, (xml_file, (file_name, size, objects)) in enumerate(parsed, start=1):
        try:
            image_path = _find_image(xml_file, file_name, roots)
        except InvalidAnnotation as error:
            problems.reject(error)
            continue
        if image_path in paths_seen:
            problems.structural(
                "image annotated twice", f"{xml_file}: image {image_path} is also annotated by {paths_seen[image_path]}; one XML file per image"
            )
            continue
        paths_seen[image_path] = xml_file
        where = f"{xml_file} ({image_path.name})"
        image_size = check_image(image_path, size, cache, problems, where, trust_image_size)
        if image_size is None:
            continue
        raw = []
        for index, name, box, difficult in objects:
            if name not in label_of:
                problems.structural("unknown class", f"{xml_file}: object {index}: class {name!r} is not one of the dataset's classes {class_names}")
                continue
            raw.append((index, f"object {index}", box, label_of[name], difficult))
        relative = _name_below_roots(image_path, roots)
        records.append(build_record(image_id, relative, image_path, image_size[0], image_size[1], raw, problems, where))
    cache.save()
    problems.warn_summary()
    category_ids = list(range(1, len(class_names) + 1))
    return DetectionData(
        records, list(class_names), category_ids, path, dict(problems.counts), dict(problems.examples), "voc", set(problems.structural_kinds)
    )


def _parse(xml_file: Path, content: bytes) -> ElementTree.Element:
    try:
        root = SafeElementTree.fromstring(content)
    except ElementTree.ParseError as error:
        line, column = error.position
        raise InvalidAnnotation(f"{xml_file}: malformed XML at line {line}, column {column} ({error})", "malformed file") from error
    except DefusedXmlException as error:
        raise InvalidAnnotation(f"{xml_file}: refused XML construct ({error}); VOC files need no entities or DTDs", "malformed file") from error
    if root.tag != "annotation":
        raise InvalidAnnotation(f"{xml_file}: root element is <{root.tag}>, expected <annotation> (Pascal VOC)", "malformed file")
    return root


def _read_objects(xml_file: Path, root: ElementTree.Element, problems: ProblemLog) -> tuple[str, tuple[int | None, int | None], list]:
    """(filename, (width, height) or Nones, [(index, name, (4,) box, difficult)]) of one XML document. A malformed
    object is an error, or under on_invalid="report" recorded and left out (a malformed <size> is then unknown)."""
    file_name = (root.findtext("filename") or "").strip() or xml_file.stem
    size = (None, None)
    size_element = root.find("size")
    if size_element is not None:
        try:
            width, height = (_number(xml_file, "size", field, size_element.findtext(field)) for field in ("width", "height"))
        except InvalidAnnotation as error:
            problems.reject(error)
            width = height = None
        if width is not None and height is not None and width > 0 and height > 0:
            size = (int(width), int(height))  # a 0 x 0 <size> (some tools write it) means unknown
    objects = []
    for index, element in enumerate(root.findall("object")):
        try:
            objects.append(_read_object(xml_file, index, element))
        except InvalidAnnotation as error:
            problems.reject(error)
    return file_name, size, objects


def _read_object(xml_file: Path, index: int, element: ElementTree.Element) -> tuple[int, str, np.ndarray, bool]:
    """(index, name, (4,) float64 x1 y1 x2 y2 box, difficult) of one <object>."""
    name = (element.findtext("name") or "").strip()
    if not name:
        raise InvalidAnnotation(f"{xml_file}: object {index} has no <name>", "malformed object")
    box_element = element.find("bndbox")
    if box_element is None:
        raise InvalidAnnotation(f"{xml_file}: object {index} ({name}) has no <bndbox>", "malformed box")
    values = []
    for field in ("xmin", "ymin", "xmax", "ymax"):
        value = _number(xml_file, f"object {index} ({name})", field, box_element.findtext(field))
        if value is None:
            raise InvalidAnnotation(f"{xml_file}: object {index} ({name}) has no <{field}> in <bndbox>", "malformed box")
        values.append(value)
    xmin, ymin, xmax, ymax = values
    # float64: a corrupt huge value reaches the shared range check in build_record instead of overflowing a cast
    box = np.array([xmin - 1, ymin - 1, xmax, ymax], dtype=np.float64)
    if box[2] < box[0] or box[3] < box[1]:
        raise InvalidAnnotation(
            f"{xml_file}: object {index} ({name}): xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g} has xmax < xmin or "
            "ymax < ymin (a negative width or height); the corners look swapped, fix the file",
            "malformed box",
        )
    difficult = _number(xml_file, f"object {index} ({name})", "difficult", element.findtext("difficult")) or 0
    return index, name, box, bool(difficult)


def _number(xml_file: Path, where: str, field: str, text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidAnnotation(f"{xml_file}: {where}: <{field}> is {text.strip()!r}, not a number", "not a number") from None
    if not math.isfinite(value):
        raise InvalidAnnotation(f"{xml_file}: {where}: <{field}> is {text.strip()!r} (NaN or inf)", "not a number")
    return value


def _name_below_roots(image_path: Path, roots: list[Path]) -> str:
    """The image's `file_name`: its path below the innermost image root holding it (relative, so a converted
    copy lands inside the output however the dataset was named), or the absolute path when none holds it."""
    holding = [Path(os.path.abspath(root)) for root in roots if image_path.is_relative_to(os.path.abspath(root))]
    if not holding:
        return str(image_path)
    return image_path.relative_to(max(holding, key=lambda root: len(root.parts))).as_posix()


def _image_root_candidates(folder: Path) -> list[Path]:
    parent = folder.parent
    return [parent / "JPEGImages", folder, parent / "images", folder / "images", parent]


def _find_image(xml_file: Path, file_name: str, roots: list[Path]) -> Path:
    """The image an XML file annotates: `<filename>` in one of the roots, or the XML's stem with an image suffix."""
    names = [file_name] if Path(file_name).suffix.lower() in IMAGE_SUFFIXES else []
    names += [Path(file_name).stem + suffix for suffix in IMAGE_SUFFIXES] + [xml_file.stem + suffix for suffix in IMAGE_SUFFIXES]
    for root in roots:
        for name in names:
            candidate = join_inside(root, name)
            if candidate is None:
                raise InvalidAnnotation(f"{xml_file}: <filename> {file_name!r} resolves outside the image folder {root}", "file_name outside the image folder")
            if candidate.is_file():
                return candidate
    tried = ", ".join(str(root) for root in roots)
    raise InvalidAnnotation(f"{xml_file}: image {file_name!r} not found in {tried}; pass the image folder as data.images", "image file not found")


def write_voc(data: DetectionData, out: Path, image_folder: str = "JPEGImages", split: str | None = None) -> Path:
    """Write `data` as VOC XML files in `out/Annotations` (and `out/ImageSets/Main/<split>.txt` when a split is
    named). Crowd boxes are written as difficult objects. Returns the Annotations folder."""
    folder = out / "Annotations"
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for record in data.records:
        stem = Path(record.file_name).stem
        ids.append(stem)
        root = ElementTree.Element("annotation")
        ElementTree.SubElement(root, "folder").text = image_folder
        ElementTree.SubElement(root, "filename").text = Path(record.file_name).name
        size = ElementTree.SubElement(root, "size")
        for field, value in (("width", record.width), ("height", record.height), ("depth", 3)):
            ElementTree.SubElement(size, field).text = str(value)
        for box, label, crowd in zip(record.boxes.tolist(), record.labels.tolist(), record.iscrowd.tolist()):
            element = ElementTree.SubElement(root, "object")
            ElementTree.SubElement(element, "name").text = data.class_names[label]
            ElementTree.SubElement(element, "difficult").text = str(int(crowd))
            box_element = ElementTree.SubElement(element, "bndbox")
            for field, value in zip(("xmin", "ymin", "xmax", "ymax"), (box[0] + 1, box[1] + 1, box[2], box[3])):
                ElementTree.SubElement(box_element, field).text = _format_coordinate(value)
        ElementTree.indent(root)
        ElementTree.ElementTree(root).write(folder / f"{stem}.xml", encoding="utf-8", xml_declaration=False)
    if split is not None:
        split_file = out / "ImageSets" / "Main" / f"{split}.txt"
        split_file.parent.mkdir(parents=True, exist_ok=True)
        split_file.write_text("".join(f"{image_id}\n" for image_id in ids), encoding="utf-8")
    return folder


def _format_coordinate(value: float) -> str:
    """Integers as integers (as VOC files have them), other values as the shortest decimal of the float64 value.

    The written value is a float32 box coordinate plus 1, computed in float64 where it is exact; writing that
    float64 (not its float32 rounding) lets the reader's `value - 1` give back the same float32 coordinate.
    """
    return str(int(value)) if float(value).is_integer() else repr(float(value))
