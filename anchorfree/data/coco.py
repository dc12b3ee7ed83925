"""COCO detection JSON reader.

Category ids may be any integers (COCO's own skip numbers); they are mapped to contiguous labels in the order
of their ids, and the mapping travels with every checkpoint so results map back to the original ids.
Every value is type-checked where it is read. Structural problems (unreadable JSON, values of the wrong type,
duplicate ids, unknown categories, malformed boxes, an `iscrowd` other than 0/1/true/false) are errors raised
before training, or, under on_invalid="report" (`data check`), recorded each with the offending item left out;
per-box geometric problems are skipped with a counted warning, or raised under on_invalid="error". Crowd boxes
become ignore regions; images without annotations stay, as negatives.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np

from anchorfree.data.cache import ImageInfoCache, content_hash
from anchorfree.data.images import MAX_IMAGE_PIXELS
from anchorfree.data.records import (
    MAX_BOX_COORDINATE,
    DetectionData,
    InvalidAnnotation,
    ProblemLog,
    build_record,
    check_image,
    join_inside,
)

LOGGER = logging.getLogger(__name__)
# An annotation file above this size is refused before it is read: parsing JSON takes several times its size in
# memory. COCO's largest official file (instances_train2017.json) is about 450 MB.
MAX_ANNOTATION_BYTES = 2 * 1024**3


def find_image_root(annotation_file: Path, file_name: str, image_id: int | None = None) -> Path:
    """Where `file_name` is relative to: `images/` beside the JSON, `images/` one level up, or the JSON's folder."""
    folder = annotation_file.parent
    candidates = [folder / "images", folder.parent / "images", folder]
    for candidate in candidates:
        if (candidate / file_name).is_file():
            return candidate
    tried = ", ".join(str(candidate / file_name) for candidate in candidates)
    image = f"image_id={image_id}: " if image_id is not None else ""
    raise InvalidAnnotation(
        f"{annotation_file}: {image}cannot find image {file_name!r} (tried {tried}); pass the image folder as data.images", "image file not found"
    )


def read_coco(
    annotation_file: str | Path,
    image_root: str | Path | None = None,
    on_invalid: str = "skip",
    trust_image_size: bool = False,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> DetectionData:
    """Read a COCO detection JSON file into `DetectionData`.

    Args:
        annotation_file: the JSON file.
        image_root: folder `file_name`s are relative to; found automatically when None (see `find_image_root`).
        on_invalid: "skip" drops boxes with zero size or outside the image, and unusable (corrupt, tiny,
            non-image) files, with one summary warning; "error" raises on the first one. Both raise
            InvalidAnnotation on the first structural problem. "report" also records structural problems
            (the offending annotation, image or category left out) so every problem of the file is listed.
        trust_image_size: when an image's recorded width/height disagrees with the file, use the file's size
            instead of raising.
        max_image_pixels: images above this many pixels are refused (decompression bombs).
    """
    annotation_file = Path(annotation_file)
    problems = ProblemLog(annotation_file, on_invalid)
    loaded = _load_json(annotation_file, problems)
    if loaded is None:
        return _coco_data([], [], [], annotation_file, problems)
    content, document = loaded
    if not isinstance(document, dict):
        problems.structural(
            "malformed file", f"{annotation_file}: the top level is a JSON {_JSON_TYPES.get(type(document), 'value')}, expected an object with 'images', 'annotations', 'categories'"
        )
        return _coco_data([], [], [], annotation_file, problems)
    sections: dict[str, list] = {}
    for key in ("images", "annotations", "categories"):
        value = document.get(key, [] if key == "annotations" else None)
        if not isinstance(value, list):
            problems.structural("malformed file", f"{annotation_file}: '{key}' is {_describe(value)}, expected a list")
            value = []
        sections[key] = value

    label_of, class_names, category_ids = _read_categories(annotation_file, sections["categories"], problems)
    images, rejected_image_ids = _read_images(annotation_file, sections["images"], problems)

    seen_annotation_ids: set[int] = set()
    per_image: dict[int, list[tuple[int, str, np.ndarray, int, bool]]] = {image_id: [] for image_id in images}
    orphans: list[str] = []  # "annotation id=.. image_id=.." of annotations whose image is not in 'images'
    for index, annotation in enumerate(sections["annotations"]):
        if not isinstance(annotation, dict):
            problems.structural("malformed annotation", f"{annotation_file}: annotations[{index}] is {_describe(annotation)}, expected an object")
            continue
        annotation_id: int | str = f"#{index}"
        if "id" in annotation:
            annotation_id = _integer(annotation["id"])
            if annotation_id is None:
                problems.structural("malformed annotation", f"{annotation_file}: annotations[{index}]: id {_describe(annotation['id'])} is not an integer")
                continue
            if annotation_id in seen_annotation_ids:
                problems.structural(
                    "duplicate annotation id", f"{annotation_file}: annotation id={annotation_id}: duplicate annotation id {annotation_id}; annotation ids must be unique"
                )
                continue
            seen_annotation_ids.add(annotation_id)
        where = f"{annotation_file}: annotation id={annotation_id}"
        image_id = _integer(annotation.get("image_id"))
        if image_id is None:
            problems.structural("malformed annotation", f"{where}: image_id {_describe(annotation.get('image_id'))} is not an integer image id")
            continue
        if image_id in rejected_image_ids:
            continue  # its image entry is malformed, and reported as such
        image = images.get(image_id)
        if image is None:
            orphans.append(f"annotation id={annotation_id} image_id={image_id!r}")
            continue
        where = f"{annotation_file}: image_id={image_id} ({image['file_name']}) annotation id={annotation_id}"
        entry = _read_annotation(where, annotation, label_of, category_ids, problems)
        if entry is not None:
            box, label, crowd = entry
            per_image[image_id].append((annotation_id, f"annotation id={annotation_id}", box, label, crowd))

    if orphans:
        kind = "annotation for an unknown image_id"
        message = f"{annotation_file}: {len(orphans)} annotation(s) refer to image ids not in 'images', e.g. {orphans[0]}"
        problems.report(kind, message, hint="Use on_invalid=skip to ignore them with a warning.")
        problems.counts[kind] = len(orphans)

    records = []
    root = Path(image_root) if image_root is not None else None
    cache = ImageInfoCache(content_hash(content, str(annotation_file.resolve()), str(root)), max_image_pixels)
    boxes_seen, boxes_beyond = 0, 0  # boxes reaching past the right or bottom edge: a hint of [x1, y1, x2, y2]
    for image_id, image in images.items():
        where = f"{annotation_file}: image_id={image_id} ({image['file_name']})"
        if join_inside(root or annotation_file.parent, image["file_name"]) is None:
            # Whether a name escapes does not depend on the root: `../` or an absolute path escapes every folder.
            problems.structural(
                "file_name outside the image folder",
                f"{annotation_file}: image_id={image_id}: file_name {image['file_name']!r} resolves outside the image folder {root or annotation_file.parent}",
            )
            continue
        image_folder = root
        if image_folder is None:
            try:
                image_folder = find_image_root(annotation_file, image["file_name"], image_id)
            except InvalidAnnotation as error:
                problems.reject(error)
                continue
            root = image_folder
        path = _safe_join(image_folder, image["file_name"], annotation_file, image_id)
        size = check_image(path, (image.get("width"), image.get("height")), cache, problems, where, trust_image_size)
        if size is None:
            continue
        boxes_seen += len(per_image[image_id])
        boxes_beyond += sum(box[2] > size[0] + 1 or box[3] > size[1] + 1 for _, _, box, _, _ in per_image[image_id])
        records.append(build_record(image_id, image["file_name"], path, size[0], size[1], per_image[image_id], problems, where))
    cache.save()
    _check_box_format(annotation_file, boxes_seen, boxes_beyond, on_invalid)
    problems.warn_summary()
    return _coco_data(records, class_names, category_ids, annotation_file, problems)


def _coco_data(records: list, class_names: list[str], category_ids: list[int], annotation_file: Path, problems: ProblemLog) -> DetectionData:
    return DetectionData(
        records, class_names, category_ids, annotation_file, dict(problems.counts), dict(problems.examples), "coco", set(problems.structural_kinds)
    )


def _load_json(annotation_file: Path, problems: ProblemLog) -> tuple[bytes, object] | None:
    """(the file's bytes, its parsed JSON), or None when a problem of the whole file was recorded.

    The file is refused above MAX_ANNOTATION_BYTES before it is read, and nesting deeper than the parser's recursion
    limit is an error of the file, not a crash: reading a hostile file is bounded in memory and time.
    """
    try:
        file_size = annotation_file.stat().st_size
        if annotation_file.is_dir():
            raise InvalidAnnotation(f"{annotation_file}: is a folder, not a COCO JSON file", "malformed file")
        if file_size > MAX_ANNOTATION_BYTES:
            problems.structural(
                "malformed file",
                f"{annotation_file}: annotation file is {file_size} bytes, above the limit of {MAX_ANNOTATION_BYTES} bytes; "
                "split it into smaller files",
            )
            return None
        content = annotation_file.read_bytes()
    except FileNotFoundError as error:
        raise InvalidAnnotation(f"{annotation_file}: annotation file not found", "malformed file") from error
    try:
        return content, json.loads(content.decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.structural("malformed file", f"{annotation_file}: not valid JSON ({error})")
    except RecursionError:
        problems.structural("malformed file", f"{annotation_file}: JSON nested too deeply to read (a COCO file needs only a few levels)")
    return None


def _integer(value: object) -> int | None:
    """`value` as an id or a size in pixels when it is a JSON integer (or an integral float), else None.

    Booleans are not integers here: `true` where an id belongs is a mistake, not 1.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}


def _describe(value: object) -> str:
    """A value as a message shows it: its JSON type and its repr, cut short (a hostile value may be huge)."""
    if value is None:
        return "None (missing or null)"
    text = repr(value)
    return f"{_JSON_TYPES.get(type(value), type(value).__name__)} {text if len(text) <= 60 else text[:57] + '...'}"


def _read_categories(annotation_file: Path, entries: list, problems: ProblemLog) -> tuple[dict[int, int], list[str], list[int]]:
    """(category id -> contiguous label, class names, category ids) from 'categories', labels in the order of the ids."""
    named: dict[int, str] = {}
    for index, category in enumerate(entries):
        where = f"{annotation_file}: categories[{index}]"
        if not isinstance(category, dict):
            problems.structural("malformed category", f"{where} is {_describe(category)}, expected an object with 'id' and 'name'")
            continue
        category_id = _integer(category.get("id"))
        if category_id is None:
            problems.structural("malformed category", f"{where}: id {_describe(category.get('id'))} is not an integer (missing?)")
            continue
        name = category.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.structural("malformed category", f"{where} (id {category_id}): name {_describe(name)} is not a non-empty string")
            continue
        if category_id in named:
            problems.structural(
                "duplicate category id", f"{where}: category id {category_id} is used by {named[category_id]!r} and {name!r}; category ids must be unique"
            )
            continue
        named[category_id] = name
    if not named:
        problems.structural("malformed file", f"{annotation_file}: 'categories' is empty or has no usable category")
    category_ids = sorted(named)
    if category_ids and category_ids != list(range(1, len(category_ids) + 1)) and category_ids != list(range(len(category_ids))):
        LOGGER.info("%s: category ids %s map to labels 0..%d in that order (mapped back in every result)", annotation_file, category_ids, len(category_ids) - 1)
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}
    return label_of, [named[category_id] for category_id in category_ids], category_ids


def _read_images(annotation_file: Path, entries: list, problems: ProblemLog) -> tuple[dict[int, dict], set[int]]:
    """({image id: entry} of the well-formed image entries, the ids of malformed ones, whose annotations are dropped
    without a second report). Widths and heights, when given, are positive integers."""
    images: dict[int, dict] = {}
    rejected: set[int] = set()
    for index, image in enumerate(entries):
        where = f"{annotation_file}: images[{index}]"
        if not isinstance(image, dict):
            problems.structural("malformed image entry", f"{where} is {_describe(image)}, expected an object with 'id' and 'file_name'")
            continue
        image_id = _integer(image.get("id"))
        if image_id is None:
            problems.structural("malformed image entry", f"{where}: id {_describe(image.get('id'))} is not an integer (missing?)")
            continue
        where = f"{annotation_file}: image_id={image_id}"
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            problems.structural("malformed image entry", f"{where}: file_name {_describe(file_name)} is not a non-empty string")
            rejected.add(image_id)
            continue
        sizes = {key: image[key] for key in ("width", "height") if image.get(key) is not None}
        bad_sizes = [f"{key} {_describe(value)}" for key, value in sizes.items() if _integer(value) is None or _integer(value) <= 0]
        if bad_sizes:
            problems.structural("malformed image entry", f"{where} ({file_name}): {', '.join(bad_sizes)} is not a positive integer number of pixels")
            rejected.add(image_id)
            continue
        if image_id in images:
            problems.structural(
                "duplicate image id",
                f"{annotation_file}: image id {image_id} is used by {images[image_id]['file_name']!r} and {file_name!r}; image ids must be unique",
            )
            continue
        images[image_id] = {**image, "id": image_id, **{key: _integer(value) for key, value in sizes.items()}}
    return images, rejected - set(images)


def _read_annotation(
    where: str, annotation: dict, label_of: dict[int, int], category_ids: list[int], problems: ProblemLog
) -> tuple[np.ndarray, int, bool] | None:
    """((4,) float64 x1 y1 x2 y2 box, label, crowd) of one annotation, or None when it is left out (a problem recorded)."""
    category_id = annotation.get("category_id")
    if _integer(category_id) not in label_of:
        problems.structural("unknown category", f"{where}: category_id {category_id!r} is not in 'categories' (known: {category_ids})")
        return None
    label = label_of[_integer(category_id)]
    bbox = annotation.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in bbox):
        problems.structural("malformed box", f"{where}: bbox {bbox!r} must be 4 numbers [x, y, width, height]")
        return None
    for field_name, value in zip(("x", "y", "width", "height"), bbox):
        if not math.isfinite(value):
            problems.structural("malformed box", f"{where}: bbox {bbox} has {field_name} = {value} (NaN or inf)")
            return None
        if abs(value) > MAX_BOX_COORDINATE:
            problems.structural(
                "box coordinates out of range",
                f"{where}: bbox {bbox} has {field_name} = {value:g}, beyond {MAX_BOX_COORDINATE:g} px; the value is corrupt, fix or remove the box",
            )
            return None
    x, y, width, height = (float(value) for value in bbox)
    if width < 0 or height < 0:
        problems.structural("malformed box", f"{where}: bbox {bbox} has negative width or height; COCO boxes are [x, y, width, height]")
        return None
    crowd = annotation.get("iscrowd", 0)
    if not (isinstance(crowd, bool) or (isinstance(crowd, int) and crowd in (0, 1))):
        problems.structural("invalid iscrowd", f"{where}: iscrowd {_describe(crowd)} must be 0, 1, true or false")
        return None
    if width == 0 or height == 0:
        problems.report("zero-size box", f"{where}: bbox {bbox} has width or height 0 (must be > 0)")
        return None
    return np.array([x, y, x + width, y + height], dtype=np.float64), label, bool(crowd)


def _check_box_format(annotation_file: Path, boxes_seen: int, boxes_beyond: int, on_invalid: str) -> None:
    """Warn (raise under on_invalid='error') when over 5% of at least 20 boxes overflow their image: the usual sign
    of [x1, y1, x2, y2] written where COCO's [x, y, width, height] belongs."""
    if boxes_seen < 20 or boxes_beyond <= 0.05 * boxes_seen:
        return
    message = (
        f"{annotation_file}: {boxes_beyond} of {boxes_seen} boxes extend past the image's right or bottom edge; the boxes "
        "may not be COCO [x, y, width, height] (e.g. [x1, y1, x2, y2] given where [x, y, width, height] is expected)"
    )
    if on_invalid == "error":
        raise InvalidAnnotation(message)
    warnings.warn(message, stacklevel=3)


def _safe_join(root: Path, file_name: str, annotation_file: Path, image_id: int) -> Path:
    """root / file_name, refusing names that escape the image root (`../`, absolute paths)."""
    path = join_inside(root, file_name)
    if path is None:
        raise InvalidAnnotation(
            f"{annotation_file}: image_id={image_id}: file_name {file_name!r} resolves outside the image folder {root}", "file_name outside the image folder"
        )
    return path
