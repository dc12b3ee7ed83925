"""The in-memory form every reader produces: images with their boxes, plus the class list.

Readers (COCO, Pascal VOC, YOLO) turn a user's files into `DetectionData`; everything downstream (datasets,
evaluation, checkpoints, `data check`, `data convert`) reads only this, so a new format needs a new reader and
nothing else. The per-box rules every reader shares live here (`build_record`), so all formats treat a bad box
the same way.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anchorfree.data.cache import ImageInfoCache
from anchorfree.data.images import ImageLoadError, ImageTooLarge


# The first line of the readers' one summary warning ends with this (`data check` recognises it).
PROBLEM_SUMMARY = "annotation or image problem(s), skipped unless the kind says otherwise:"
# How the readers treat problems: "skip" and "error" are training's data.on_invalid; "report" is `data check`'s
# mode, in which structural problems are also recorded (the offending item left out) instead of raised.
ON_INVALID_MODES = ("skip", "error", "report")
# A box coordinate beyond this many pixels is a corrupt value (1e300, a unit mix-up), never a real box; it also
# keeps x + width far inside float32, so no coordinate overflows to inf.
MAX_BOX_COORDINATE = 1e7


class InvalidAnnotation(ValueError):
    """A data error: the message names the file, the image, the annotation and the value, and how to fix it.

    `kind` groups it in `data check`'s report ("unknown category", "malformed box", ...).
    """

    def __init__(self, message: str, kind: str = "structural problem") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class ImageRecord:
    """One image and its objects. Boxes are absolute (x1, y1, x2, y2) pixels of the EXIF-oriented image."""

    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (M, 4) float32
    labels: np.ndarray  # (M,) int64, contiguous class indices
    iscrowd: np.ndarray  # (M,) bool: crowd / ignore regions, never positives
    annotation_ids: list[int] = field(default_factory=list)


@dataclass
class DetectionData:
    """A split of a dataset: its images and the class list shared by all splits."""

    records: list[ImageRecord]
    class_names: list[str]
    category_ids: list[int]  # contiguous label -> the dataset's own category id
    source: Path
    problems: dict[str, int] = field(default_factory=dict)  # skipped-annotation counts by kind
    problem_examples: dict[str, list[str]] = field(default_factory=dict)  # the first messages of each kind
    format: str = "coco"  # the reader that produced it: coco | voc | yolo
    # The kinds in `problems` that are structural (only recorded under on_invalid="report"; training raises them).
    structural_kinds: set[str] = field(default_factory=set)

    def coco_ground_truth(self) -> dict:
        """The split as a COCO detection dict with the dataset's original category ids (for the evaluator)."""
        images, annotations = [], []
        next_id = 1
        for record in self.records:
            images.append({"id": record.image_id, "file_name": record.file_name, "width": record.width, "height": record.height})
            for box, label, crowd in zip(record.boxes.tolist(), record.labels.tolist(), record.iscrowd.tolist()):
                width, height = box[2] - box[0], box[3] - box[1]
                annotations.append(
                    {
                        "id": next_id,
                        "image_id": record.image_id,
                        "category_id": self.category_ids[label],
                        "bbox": [box[0], box[1], width, height],
                        "area": width * height,
                        "iscrowd": int(crowd),
                    }
                )
                next_id += 1
        categories = [{"id": category_id, "name": name} for category_id, name in zip(self.category_ids, self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}


class ProblemLog:
    """Counts the problems that were skipped, keeping the first examples, and warns once with a summary.

    Per-box problems (`report`) are skipped, or raised under on_invalid="error". Structural problems
    (`structural`, `reject`) are raised under "skip" and "error", so training stops at the first one; under
    "report" they are recorded too and the reader leaves the offending item out, so `data check` lists every
    problem of a file in one run.
    """

    def __init__(self, source: Path, on_invalid: str) -> None:
        if on_invalid not in ON_INVALID_MODES:
            raise ValueError(f"on_invalid must be one of {', '.join(ON_INVALID_MODES)}, got {on_invalid!r}")
        self.source = source
        self.on_invalid = on_invalid
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.structural_kinds: set[str] = set()

    def structural(self, kind: str, message: str) -> None:
        """A structural problem: raise InvalidAnnotation(message) unless on_invalid="report", where it is recorded
        and the caller leaves the offending item (annotation, image, row, file) out and carries on."""
        if self.on_invalid != "report":
            raise InvalidAnnotation(message, kind)
        self.structural_kinds.add(kind)
        self.note(kind, message)

    def reject(self, error: InvalidAnnotation) -> None:
        """`structural` for an InvalidAnnotation a helper raised: re-raised unless on_invalid="report"."""
        if self.on_invalid != "report":
            raise error
        self.structural_kinds.add(error.kind)
        self.note(error.kind, str(error))

    def report(self, kind: str, message: str, hint: str = "Use on_invalid=skip to drop such boxes with a warning.") -> None:
        """A per-box problem: raise under on_invalid='error', otherwise count it and keep the example."""
        if self.on_invalid == "error":
            raise InvalidAnnotation(f"{message}. {hint}")
        self.note(kind, message)

    def note(self, kind: str, message: str) -> None:
        """Count a problem that is always skipped (never an error), keeping the first examples."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.examples.setdefault(kind, [])
        if len(self.examples[kind]) < 3:
            self.examples[kind].append(message)

    def warn_summary(self) -> None:
        if not self.counts:
            return
        lines = [f"{self.source}: {sum(self.counts.values())} {PROBLEM_SUMMARY}"]
        for kind, count in sorted(self.counts.items()):
            lines.append(f"  {kind}: {count}, e.g. {self.examples[kind][0]}")
        warnings.warn("\n".join(lines), stacklevel=3)


def build_record(
    image_id: int,
    file_name: str,
    path: Path,
    width: int,
    height: int,
    objects: list[tuple[int, str, np.ndarray, int, bool]],
    problems: ProblemLog,
    where: str,
) -> ImageRecord:
    """One image's record from its raw objects (annotation id, how messages name it (e.g. "annotation id=7",
    "object 2", "line 3"), (4,) x1 y1 x2 y2 box, label, crowd), after the rules every format shares: a box with
    a coordinate beyond MAX_BOX_COORDINATE (or NaN/inf) is a structural problem, boxes are clipped to the image,
    boxes left under 1 px are skipped with a counted warning (the image itself always stays), and exact
    duplicates (same box and label) are dropped with a counted warning. `where` prefixes messages: the
    annotation file and the image.
    """
    boxes, labels, crowds, annotation_ids = [], [], [], []
    seen: set[tuple] = set()
    for annotation_id, reference, box, label, crowd in objects:
        # Readers pass float64 boxes, so a huge value arrives here intact instead of overflowed to inf by a cast.
        # NaN fails both comparisons, so it is caught too.
        if not all(-MAX_BOX_COORDINATE <= value <= MAX_BOX_COORDINATE for value in box.tolist()):
            problems.structural(
                "box coordinates out of range",
                f"{where} {reference}: box {box.tolist()} has a coordinate beyond {MAX_BOX_COORDINATE:g} px (or NaN/inf); "
                "the value is corrupt, fix or remove the box",
            )
            continue
        if box[2] <= box[0] or box[3] <= box[1]:
            problems.report("zero-size box", f"{where} {reference}: box {box.tolist()} has width or height 0 (must be > 0)")
            continue
        clipped = clip_box(box, width, height)
        if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
            problems.report("box outside the image", f"{where} {reference}: box {box.tolist()} lies outside the {width}x{height} image")
            continue
        key = (*clipped.tolist(), int(label), bool(crowd))
        if key in seen:
            problems.report(
                "duplicate box",
                f"{where} {reference}: box {box.tolist()} repeats an earlier box of the same class",
                hint="Use on_invalid=skip to drop repeated boxes with a warning.",
            )
            continue
        seen.add(key)
        boxes.append(clipped)
        labels.append(label)
        crowds.append(crowd)
        annotation_ids.append(annotation_id)
    return ImageRecord(
        image_id=int(image_id),
        file_name=file_name,
        path=path,
        width=int(width),
        height=int(height),
        boxes=np.stack(boxes) if boxes else np.zeros((0, 4), dtype=np.float32),
        labels=np.array(labels, dtype=np.int64),
        iscrowd=np.array(crowds, dtype=bool),
        annotation_ids=annotation_ids,
    )


def clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip a (4,) x1, y1, x2, y2 box to the image."""
    return np.array([min(max(box[0], 0), width), min(max(box[1], 0), height), min(max(box[2], 0), width), min(max(box[3], 0), height)], dtype=np.float32)


def check_image(
    path: Path,
    recorded: tuple[int | None, int | None],
    cache: ImageInfoCache,
    problems: ProblemLog,
    where: str,
    trust_image_size: bool = False,
) -> tuple[int, int] | None:
    """(width, height) of a usable image after EXIF orientation, or None when it is skipped.

    A missing file or a decompression bomb is always a structural problem (an error, recorded under
    on_invalid="report"). A corrupt, truncated, too small or non-image file is skipped with a counted warning (an
    error under on_invalid='error'). A recorded size that disagrees with the file is structural unless
    `trust_image_size`, which takes the file's size instead.
    """
    if not path.is_file():
        problems.structural("image file not found", f"{where}: image file {path} not found")
        return None
    try:
        width, height = cache.inspect(path)
    except ImageTooLarge as error:
        problems.structural("image too large", f"{where}: {error}")
        return None
    except ImageLoadError as error:
        problems.report("unusable image", f"{where}: {error}", hint="Use on_invalid=skip to leave such images out with a warning.")
        return None
    recorded_width, recorded_height = recorded
    if recorded_width is not None and recorded_height is not None and (int(recorded_width), int(recorded_height)) != (width, height):
        if not trust_image_size:
            problems.structural(
                "recorded size differs from the image",
                f"{where}: recorded size {recorded_width}x{recorded_height} but the file is {width}x{height} after EXIF "
                f"orientation ({path}); fix the annotation (an EXIF-rotated photo is the usual cause) or set data.trust_image_size=true "
                "to use the file's size",
            )
            return None
        problems.note("recorded size differs from the image (the file's size is used)", f"{where}: recorded {recorded_width}x{recorded_height}, file {width}x{height}")
    return width, height


def join_inside(root: Path, file_name: str) -> Path | None:
    """The absolute, normalised root / file_name, or None when the name escapes root (`../`, an absolute path).

    The check is on the names, not on where symbolic links point: a folder of links to images elsewhere is fine.
    """
    root = Path(os.path.abspath(root))
    path = Path(os.path.normpath(root / file_name))
    return path if path.is_relative_to(root) else None
