"""The in-memory form every reader produces: images with their boxes, plus the class list.

Readers (COCO today) turn a user's files into `DetectionData`; everything downstream (datasets, evaluation,
checkpoints) reads only this, so a new format needs a new reader and nothing else.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class InvalidAnnotation(ValueError):
    """A data error: the message names the file, the image, the annotation and the value, and how to fix it."""


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
    """Counts per-box problems that were skipped, keeping the first examples, and warns once with a summary."""

    def __init__(self, source: Path, on_invalid: str) -> None:
        if on_invalid not in ("skip", "error"):
            raise ValueError(f"on_invalid must be 'skip' or 'error', got {on_invalid!r}")
        self.source = source
        self.on_invalid = on_invalid
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def report(self, kind: str, message: str) -> None:
        """A per-box problem: raise under on_invalid='error', otherwise count it and keep the example."""
        if self.on_invalid == "error":
            raise InvalidAnnotation(f"{message}. Use on_invalid=skip to drop such boxes with a warning.")
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.examples.setdefault(kind, [])
        if len(self.examples[kind]) < 3:
            self.examples[kind].append(message)

    def warn_summary(self) -> None:
        if not self.counts:
            return
        lines = [f"{self.source}: skipped {sum(self.counts.values())} annotation(s):"]
        for kind, count in sorted(self.counts.items()):
            lines.append(f"  {kind}: {count}, e.g. {self.examples[kind][0]}")
        warnings.warn("\n".join(lines), stacklevel=3)


def clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip a (4,) x1, y1, x2, y2 box to the image."""
    return np.array([min(max(box[0], 0), width), min(max(box[1], 0), height), min(max(box[2], 0), width), min(max(box[3], 0), height)], dtype=np.float32)
