"""COCO detection JSON reader.

Category ids may be any integers (COCO's own skip numbers); they are mapped to contiguous labels in the order
of their ids, and the mapping travels with every checkpoint so results map back to the original ids.
Structural problems (unreadable JSON, duplicate ids, unknown categories, malformed boxes) are errors raised
before training; per-box geometric problems are skipped with a counted warning, or raised under
on_invalid="error". Crowd boxes become ignore regions; images without annotations stay, as negatives.
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
from anchorfree.data.records import DetectionData, InvalidAnnotation, ProblemLog, build_record, check_image, join_inside

LOGGER = logging.getLogger(__name__)


def find_image_root(annotation_file: Path, file_name: str, image_id: int | None = None) -> Path:
    """Where `file_name` is relative to: `images/` beside the JSON, `images/` one level up, or the JSON's folder."""
    folder = annotation_file.parent
    candidates = [folder / "images", folder.parent / "images", folder]
    for candidate in candidates:
        if (candidate / file_name).is_file():
            return candidate
    tried = ", ".join(str(candidate / file_name) for candidate in candidates)
    image = f"image_id={image_id}: " if image_id is not None else ""
    raise InvalidAnnotation(f"{annotation_file}: {image}cannot find image {file_name!r} (tried {tried}); pass the image folder as data.images")


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
            non-image) files, with one summary warning; "error" raises on the first one.
        trust_image_size: when an image's recorded width/height disagrees with the file, use the file's size
            instead of raising.
        max_image_pixels: images above this many pixels are refused (decompression bombs).
    """
    annotation_file = Path(annotation_file)
    try:
        content = annotation_file.read_bytes()
        document = json.loads(content.decode("utf-8"))
    except FileNotFoundError as error:
        raise InvalidAnnotation(f"{annotation_file}: annotation file not found") from error
    except IsADirectoryError as error:
        raise InvalidAnnotation(f"{annotation_file}: is a folder, not a COCO JSON file") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidAnnotation(f"{annotation_file}: not valid JSON ({error})") from error
    if not isinstance(document, dict):
        raise InvalidAnnotation(f"{annotation_file}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "categories"):
        if not isinstance(document.get(key), list):
            raise InvalidAnnotation(f"{annotation_file}: missing or non-list '{key}'")
    annotations = document.get("annotations", [])
    if not isinstance(annotations, list):
        raise InvalidAnnotation(f"{annotation_file}: 'annotations' must be a list")

    categories = sorted(document["categories"], key=lambda category: category["id"])
    category_ids = [int(category["id"]) for category in categories]
    if len(set(category_ids)) != len(category_ids):
        raise InvalidAnnotation(f"{annotation_file}: duplicate category ids in 'categories': {category_ids}")
    if not category_ids:
        raise InvalidAnnotation(f"{annotation_file}: 'categories' is empty")
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}
    if category_ids != list(range(1, len(category_ids) + 1)) and category_ids != list(range(len(category_ids))):
        LOGGER.info("%s: category ids %s map to labels 0..%d in that order (mapped back in every result)", annotation_file, category_ids, len(category_ids) - 1)
    class_names = [str(category.get("name", category["id"])) for category in categories]

    images: dict[int, dict] = {}
    for index, image in enumerate(document["images"]):
        for key in ("id", "file_name"):
            if key not in image:
                raise InvalidAnnotation(f"{annotation_file}: images[{index}] has no '{key}'")
        if image["id"] in images:
            raise InvalidAnnotation(
                f"{annotation_file}: image id {image['id']} is used by {images[image['id']]['file_name']!r} and {image['file_name']!r}; image ids must be unique"
            )
        images[image["id"]] = image

    problems = ProblemLog(annotation_file, on_invalid)
    seen_annotation_ids: set = set()
    per_image: dict[int, list[tuple[int, np.ndarray, int, bool]]] = {image_id: [] for image_id in images}
    orphans: list[str] = []  # "annotation id=.. image_id=.." of annotations whose image is not in 'images'
    for index, annotation in enumerate(annotations):
        annotation_id = annotation.get("id", f"#{index}")
        where = f"{annotation_file}: annotation id={annotation_id}"
        if annotation_id in seen_annotation_ids:
            raise InvalidAnnotation(f"{where}: duplicate annotation id {annotation_id}; annotation ids must be unique")
        seen_annotation_ids.add(annotation_id)
        image = images.get(annotation.get("image_id"))
        if image is None:
            orphans.append(f"annotation id={annotation_id} image_id={annotation.get('image_id')!r}")
            continue
        where = f"{annotation_file}: image_id={image['id']} ({image['file_name']}) annotation id={annotation_id}"
        category_id = annotation.get("category_id")
        if category_id not in label_of:
            raise InvalidAnnotation(f"{where}: category_id {category_id!r} is not in 'categories' (known: {category_ids})")
        bbox = annotation.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in bbox):
            raise InvalidAnnotation(f"{where}: bbox {bbox!r} must be 4 numbers [x, y, width, height]")
        if not all(math.isfinite(value) for value in bbox):
            field_name = ("x", "y", "width", "height")[next(i for i, value in enumerate(bbox) if not math.isfinite(value))]
            raise InvalidAnnotation(f"{where}: bbox {bbox} has {field_name} = {bbox[('x', 'y', 'width', 'height').index(field_name)]} (NaN or inf)")
        x, y, width, height = (float(value) for value in bbox)
        if width < 0 or height < 0:
            raise InvalidAnnotation(f"{where}: bbox {bbox} has negative width or height; COCO boxes are [x, y, width, height]")
        if width == 0 or height == 0:
            problems.report("zero-size box", f"{where}: bbox {bbox} has width or height 0 (must be > 0)")
            continue
        crowd = bool(annotation.get("iscrowd", 0))
        box = np.array([x, y, x + width, y + height], dtype=np.float32)
        per_image[image["id"]].append((annotation_id, f"annotation id={annotation_id}", box, label_of[category_id], crowd))

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
        if root is None:
            root = find_image_root(annotation_file, image["file_name"], image_id)
        where = f"{annotation_file}: image_id={image_id} ({image['file_name']})"
        path = _safe_join(root, image["file_name"], annotation_file, image_id)
        size = check_image(path, (image.get("width"), image.get("height")), cache, problems, where, trust_image_size)
        if size is None:
            continue
        boxes_seen += len(per_image[image_id])
        boxes_beyond += sum(box[2] > size[0] + 1 or box[3] > size[1] + 1 for _, _, box, _, _ in per_image[image_id])
        records.append(build_record(image_id, image["file_name"], path, size[0], size[1], per_image[image_id], problems, where))
    cache.save()
    _check_box_format(annotation_file, boxes_seen, boxes_beyond, on_invalid)
    problems.warn_summary()
    return DetectionData(records, class_names, category_ids, annotation_file, dict(problems.counts), dict(problems.examples), "coco")


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
        raise InvalidAnnotation(f"{annotation_file}: image_id={image_id}: file_name {file_name!r} resolves outside the image folder {root}")
    return path
