"""YOLO txt reader and writer (the layout Ultralytics and Darknet use).

One text file per image, one object per line: `class cx cy w h`, the centre and size normalised by the image's
width and height (a polygon `class x1 y1 x2 y2 ...`, as segmentation labels have it, is read as its bounding
box). An image's label file is found by replacing the last `images` folder of its path with `labels` and its
suffix with `.txt`; a missing or empty label file is an image with no objects.

Where the images are: a folder of images, a text file listing image paths, or a dataset YAML (`path`, `train`,
`val`, `names`) whose splits are either. Class names come from the YAML's `names`, the caller, or a
`classes.txt` beside the labels. Classes get category ids 1..C in label order (COCO style; YOLO files store
the label, 0..C-1). Images get ids 1..N in path order.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np

from anchorfree.data.cache import ImageInfoCache, content_hash
from anchorfree.data.images import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS
from anchorfree.data.records import DetectionData, InvalidAnnotation, ProblemLog, build_record, check_image
from anchorfree.data.textfiles import MAX_LABEL_FILE_BYTES, read_text_limited

OUT_OF_RANGE_ERROR_FRACTION = 0.05  # above this share of rows out of [0, 1], coordinates are taken to be pixels
RANGE_TOLERANCE = 1e-3  # normalised values this far outside [0, 1] still count as inside (rounding)


def label_path(image_path: Path) -> Path:
    """.../images/a/b.jpg -> .../labels/a/b.txt (the last `images` folder of the path becomes `labels`)."""
    parts = list(image_path.parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image_path.with_suffix(".txt")  # no images/ folder: the label sits beside the image


def yolo_image_files(path: Path) -> tuple[list[Path], Path]:
    """The images of a YOLO split and the folder their `file_name`s are relative to.

    `path` is a folder of images (searched recursively), a dataset root holding `images/`, or a text file listing
    image paths (relative to the file's folder or absolute).
    """
    if path.is_file() and path.suffix == ".txt":
        images = []
        for line in read_text_limited(path, MAX_LABEL_FILE_BYTES, "YOLO image-list file").splitlines():
            if line.strip():
                image = Path(line.strip())
                images.append(image if image.is_absolute() else (path.parent / image))
        return sorted(Path(os.path.abspath(image)) for image in images), Path(os.path.abspath(path.parent))
    if not path.is_dir():
        raise InvalidAnnotation(f"{path}: not a YOLO image folder or image-list file")
    if (path / "images").is_dir():
        path = path / "images"
    images = sorted(file for file in path.rglob("*") if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file())
    if not images:
        raise InvalidAnnotation(f"{path}: no images found (suffixes {', '.join(IMAGE_SUFFIXES)})")
    return [Path(os.path.abspath(image)) for image in images], Path(os.path.abspath(path))


def find_class_names(image_root: Path) -> list[str] | None:
    """Class names from a `classes.txt` (one per line) beside the labels or the images, if there is one."""
    labels_root = label_path(image_root / "x.jpg").parent
    for candidate in (labels_root / "classes.txt", labels_root.parent / "classes.txt", image_root / "classes.txt", image_root.parent / "classes.txt"):
        if candidate.is_file():
            return [line.strip() for line in read_text_limited(candidate, MAX_LABEL_FILE_BYTES, "class-names file").splitlines() if line.strip()]
    return None


def read_yolo(
    path: str | Path,
    class_names: list[str] | None = None,
    on_invalid: str = "skip",
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> DetectionData:
    """Read a YOLO split into `DetectionData`.

    Args:
        path: a folder of images, a dataset root holding `images/`, or an image-list text file.
        class_names: the classes in label order; default a `classes.txt` next to the labels.
        on_invalid: "skip" drops boxes out of the image or of zero size, rows with coordinates outside [0, 1] (when
            they are few) and unusable image files, with one summary warning; "error" raises on the first one.
        max_image_pixels: images above this many pixels are refused (decompression bombs).

    Raises:
        InvalidAnnotation for rows that are not 5 numbers (or a polygon), class indices outside the class list,
        NaN/inf values, and when more than 5% of the rows lie outside [0, 1] (pixel coordinates, not normalised).
    """
    path = Path(path)
    images, image_root = yolo_image_files(path)
    if class_names is None:
        class_names = find_class_names(image_root)
    if not class_names:
        raise InvalidAnnotation(f"{path}: no class names for the YOLO labels; give them as `names` in a dataset YAML, data.names, or a classes.txt")
    problems = ProblemLog(path, on_invalid)
    parsed, contents, rows_seen = [], [], 0
    out_of_range: list[tuple[Path, int, str]] = []
    for image_path in images:
        labels_file = label_path(image_path)
        try:
            text = read_text_limited(labels_file, MAX_LABEL_FILE_BYTES, "YOLO label file") if labels_file.is_file() else ""
        except InvalidAnnotation as error:  # too large, or not UTF-8: under "report", recorded and the image left out
            problems.reject(error)
            continue
        contents.append(text)
        rows = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            rows_seen += 1
            try:
                row = _parse_row(labels_file, line_number, line, len(class_names))
            except InvalidAnnotation as error:
                problems.reject(error)  # under "report": recorded, the row left out
                continue
            if any(value < -RANGE_TOLERANCE or value > 1 + RANGE_TOLERANCE for value in row[1:]):
                out_of_range.append((labels_file, line_number, line.strip()))
                continue
            rows.append((line_number, *row))
        parsed.append((image_path, labels_file, rows))
    if out_of_range:
        labels_file, line_number, line = out_of_range[0]
        message = f"{labels_file}:{line_number}: {line!r} has coordinates outside [0, 1]"
        if len(out_of_range) > OUT_OF_RANGE_ERROR_FRACTION * max(rows_seen, 1):
            problems.structural(
                "coordinates not normalised",
                f"{message}, as do {len(out_of_range)} of {rows_seen} rows: YOLO coordinates are normalised by the image size; "
                "these look like pixel coordinates (convert them, or use the COCO or VOC format)",
            )
            out_of_range = []  # reported once above, as the problem of the whole split
        for labels_file, line_number, line in out_of_range:
            problems.report("coordinates outside [0, 1]", f"{labels_file}:{line_number}: {line!r} has coordinates outside [0, 1]")

    cache = ImageInfoCache(content_hash(*contents, *(str(image) for image in images)), max_image_pixels)
    records = []
    for image_id, (image_path, labels_file, rows) in enumerate(parsed, start=1):
        where = f"{labels_file} ({image_path.name})"
        size = check_image(image_path, (None, None), cache, problems, where)
        if size is None:
            continue
        width, height = size
        objects = []
        for line_number, label, center_x, center_y, box_width, box_height in rows:
            box = np.array(
                [(center_x - box_width / 2) * width, (center_y - box_height / 2) * height, (center_x + box_width / 2) * width, (center_y + box_height / 2) * height],
                dtype=np.float32,
            )
            objects.append((line_number, f"line {line_number}", box, label, False))
        file_name = image_path.relative_to(image_root).as_posix() if image_path.is_relative_to(image_root) else str(image_path)
        records.append(build_record(image_id, file_name, image_path, width, height, objects, problems, where))
    cache.save()
    problems.warn_summary()
    category_ids = list(range(1, len(class_names) + 1))
    return DetectionData(
        records, list(class_names), category_ids, path, dict(problems.counts), dict(problems.examples), "yolo", set(problems.structural_kinds)
    )


def _parse_row(labels_file: Path, line_number: int, line: str, num_classes: int) -> tuple[int, float, float, float, float]:
    """(label, cx, cy, w, h) of one label row; a polygon row becomes its bounding box."""
    where = f"{labels_file}:{line_number}"
    tokens = line.split()
    if len(tokens) != 5 and (len(tokens) < 7 or len(tokens) % 2 == 0):
        raise InvalidAnnotation(
            f"{where}: {len(tokens)} columns in {line.strip()!r}; YOLO rows are 'class cx cy w h' (5 columns) or a polygon 'class x1 y1 x2 y2 ...'",
            "wrong number of columns",
        )
    values = []
    for column, token in enumerate(tokens, start=1):
        try:
            values.append(float(token))
        except ValueError:
            raise InvalidAnnotation(f"{where}: column {column} of {len(tokens)} is {token!r}, not a number, in {line.strip()!r}", "not a number") from None
        if not math.isfinite(values[-1]):
            raise InvalidAnnotation(f"{where}: column {column} of {len(tokens)} is {token!r} (NaN or inf) in {line.strip()!r}", "not a number")
    label = values[0]
    if not label.is_integer() or not 0 <= label < num_classes:
        raise InvalidAnnotation(f"{where}: class {tokens[0]} is not a class index below the number of classes nc={num_classes}", "unknown class")
    if len(values) == 5:
        return int(label), values[1], values[2], values[3], values[4]
    xs, ys = values[1::2], values[2::2]
    return int(label), (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)


def write_yolo(data: DetectionData, images_folder: Path) -> int:
    """Write one label file per record of `data` for images laid out under `images_folder` (a folder named
    `images` or inside one), at each record's `file_name`. Crowd / ignore boxes have no YOLO form: they are left
    out with a warning. Returns the number of boxes written."""
    written, crowd = 0, 0
    for record in data.records:
        labels_file = label_path(images_folder / record.file_name)
        labels_file.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for box, label, is_crowd in zip(record.boxes.astype(np.float64).tolist(), record.labels.tolist(), record.iscrowd.tolist()):
            if is_crowd:
                crowd += 1
                continue
            center_x, center_y = (box[0] + box[2]) / 2 / record.width, (box[1] + box[3]) / 2 / record.height
            box_width, box_height = (box[2] - box[0]) / record.width, (box[3] - box[1]) / record.height
            lines.append(f"{label} {center_x:.10f} {center_y:.10f} {box_width:.10f} {box_height:.10f}\n")
        labels_file.write_text("".join(lines), encoding="utf-8")
        written += len(lines)
    if crowd:
        warnings.warn(f"{data.source}: {crowd} crowd / difficult box(es) left out: YOLO labels cannot mark ignore regions", stacklevel=2)
    return written
