"""What a dataset holds and what is wrong with it, before any training: `anchorfree data check` and `data show`.

    report = dataset_report("coco/")          # every split the path holds, read as training would read it
    print(format_report(report))              # a table per split: images, boxes per class and size, problems
    show_dataset("coco/", "train.png")        # a grid of sample images with their ground-truth boxes drawn

The report reads each split with the same readers (and the same per-box rules) as training, in the readers'
"report" mode: every problem of a file is listed in one run, grouped by kind and counted, with the first examples.
Structural problems (an unknown category, a missing image, a file_name escaping the image folder, malformed
values...), which training refuses at the first, are marked as such; per-box problems are what training skips
with a warning, or refuses under `on_invalid="error"`. A path that holds no dataset at all still raises.
Only files under our own cache folder and the given output paths are written; the dataset is only read.
"""

from __future__ import annotations

import itertools
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import draw_bounding_boxes, make_grid

from anchorfree.data.formats import dataset_splits, detect_format, iter_splits
from anchorfree.data.images import ImageLoadError, load_image
from anchorfree.data.records import PROBLEM_SUMMARY, DetectionData, ImageRecord, InvalidAnnotation
from anchorfree.drawing import IGNORE_COLOUR, class_colour, fit_to_tile, save_image
from anchorfree.outputs import data_inputs, refuse_overwriting_inputs

# COCO's size ranges, on box area in pixels of the (EXIF-oriented) image: small < 32^2 <= medium < 96^2 <= large.
SIZE_RANGES = (("small", 32**2), ("medium", 96**2), ("large", float("inf")))
DECODE_PROBLEM = "image fails to decode"
MAX_EXAMPLES = 3  # as the readers' ProblemLog keeps
_LIBRARY_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)  # about our dependencies, not the data


def dataset_report(
    path: str | Path,
    data_format: str = "",
    class_names: list[str] | None = None,
    on_invalid: str = "report",
    decode: bool = False,
) -> dict[str, Any]:
    """Statistics and problems of every split at `path` (a COCO JSON, a VOC or YOLO folder, a dataset YAML, or a
    folder holding several splits), as a JSON-ready dict.

    Args:
        path: what `read_dataset` accepts; every split `dataset_splits` finds is read.
        data_format: "coco", "voc" or "yolo"; detected when empty.
        class_names: the classes in label order (VOC, YOLO; checked against COCO's categories).
        on_invalid: "report" lists every problem, structural ones included; "skip" lists per-box problems and
            unusable images and raises InvalidAnnotation on the first structural one (as training reads); "error"
            raises on the first problem of any kind.
        decode: also decode every image in full (`load_image`); the readers only check headers and JPEG end
            markers. A failure is a problem of kind "image fails to decode" (raised under on_invalid="error").

    Returns:
        {"path", "format" (detected: coco | voc | yolo | yaml), "class_names", "decoded", "ok", "structural",
        "splits": {split: {"path", "format", "images", "images_without_objects", "boxes", "crowd_boxes",
        "boxes_per_class", "box_sizes", "box_sizes_per_class", "image_sizes", "problems": {kind: {"count",
        "examples", "structural"}}, "warnings"}}}. Box sizes are COCO's small / medium / large counts; crowd boxes
        are included in every count. "ok" is true when no split has a problem or a reader warning; "structural" is
        true when some split has a structural problem (one training refuses, not skips).

    Raises:
        InvalidAnnotation, ImageLoadError: a path that holds no readable dataset, structural problems under
        on_invalid="skip", and any problem under on_invalid="error".
    """
    splits: dict[str, dict[str, Any]] = {}
    names: list[str] = []
    decoded: dict[Path, str | None] = {}  # image path -> decode error (None: fine); an image shared by splits is decoded once
    for split, data, texts in _read_splits(path, data_format, class_names, on_invalid):
        names = names or data.class_names
        summary = _split_summary(data)
        if decode:
            for record in data.records:
                if record.path not in decoded:
                    decoded[record.path] = _decode_error(record.path, on_invalid)
                if decoded[record.path] is not None:
                    _add_problem(summary["problems"], DECODE_PROBLEM, f"{record.file_name}: {decoded[record.path]}")
        summary["warnings"] = texts
        splits[split] = summary
    ok = all(not summary["problems"] and not summary["warnings"] for summary in splits.values())
    structural = any(problem["structural"] for summary in splits.values() for problem in summary["problems"].values())
    return {
        "path": str(path),
        "format": "yaml" if _is_yaml(path) else data_format or detect_format(path),
        "class_names": names,
        "decoded": decode,
        "ok": ok,
        "structural": structural,
        "splits": splits,
    }


def _read_splits(
    path: str | Path, data_format: str, class_names: list[str] | None, on_invalid: str, last: str | None = None
) -> Iterator[tuple[str, DetectionData, list[str]]]:
    """`iter_splits` up to the split `last`, with the warning texts each split's reader gave."""
    splits = iter_splits(path, data_format, class_names, on_invalid)
    while True:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step = next(splits, None)
        if step is None:
            return
        split, data = step
        yield split, data, [str(warning.message) for warning in caught if not issubclass(warning.category, _LIBRARY_WARNINGS)]
        if split == last:
            return


def _is_yaml(path: str | Path) -> bool:
    return Path(path).suffix.lower() in (".yaml", ".yml")


def _split_summary(data: DetectionData) -> dict[str, Any]:
    """The counts of one split (see `dataset_report`)."""
    sizes = [name for name, _ in SIZE_RANGES]
    per_class = {name: 0 for name in data.class_names}
    sizes_per_class = {name: dict.fromkeys(sizes, 0) for name in data.class_names}
    without_objects = crowd = 0
    for record in data.records:
        without_objects += len(record.boxes) == 0
        crowd += int(record.iscrowd.sum())
        areas = (record.boxes[:, 2] - record.boxes[:, 0]) * (record.boxes[:, 3] - record.boxes[:, 1])  # (M,)
        for area, label in zip(areas.tolist(), record.labels.tolist()):
            name = data.class_names[label]
            per_class[name] += 1
            sizes_per_class[name][next(size for size, limit in SIZE_RANGES if area < limit)] += 1
    widths = [record.width for record in data.records]
    heights = [record.height for record in data.records]
    problems = {
        kind: {"count": int(count), "examples": list(data.problem_examples.get(kind, [])), "structural": kind in data.structural_kinds}
        for kind, count in sorted(data.problems.items())
    }
    return {
        "path": str(data.source),
        "format": data.format,
        "images": len(data.records),
        "images_without_objects": int(without_objects),
        "boxes": sum(per_class.values()),
        "crowd_boxes": int(crowd),
        "boxes_per_class": per_class,
        "box_sizes": {size: sum(counts[size] for counts in sizes_per_class.values()) for size in sizes},
        "box_sizes_per_class": sizes_per_class,
        "image_sizes": {
            "min_width": min(widths, default=None),
            "max_width": max(widths, default=None),
            "min_height": min(heights, default=None),
            "max_height": max(heights, default=None),
        },
        "problems": problems,
        "warnings": [],
    }


def _decode_error(path: Path, on_invalid: str) -> str | None:
    """Why the image at `path` fails a full decode, or None when it decodes."""
    try:
        load_image(path)
    except ImageLoadError as error:
        if on_invalid == "error":
            raise
        return str(error)
    return None


def _add_problem(problems: dict[str, dict[str, Any]], kind: str, message: str) -> None:
    entry = problems.setdefault(kind, {"count": 0, "examples": [], "structural": False})
    entry["count"] += 1
    if len(entry["examples"]) < MAX_EXAMPLES:
        entry["examples"].append(message)


def format_report(report: dict[str, Any]) -> str:
    """`dataset_report`'s result as text: a table per split (boxes per class by size), then its problems."""
    names = report["class_names"]
    lines = [f"{report['path']}: {report['format']}, {len(names)} {'class' if len(names) == 1 else 'classes'}: {', '.join(names)}"]
    width = max([len("class"), len("all"), *(len(name) for name in names)])
    for split, summary in report["splits"].items():
        sizes = summary["image_sizes"]
        lines.append("")
        lines.append(f"{split} ({summary['format']}, {summary['path']})")
        lines.append(f"  images {summary['images']} ({summary['images_without_objects']} without objects)")
        if summary["images"]:
            widths, heights = f"{sizes['min_width']}-{sizes['max_width']}", f"{sizes['min_height']}-{sizes['max_height']}"
            lines.append(f"  image sizes: width {widths} px, height {heights} px")
        lines.append(f"  boxes {summary['boxes']} ({summary['crowd_boxes']} crowd / ignore)")
        lines.append(f"  {'class':<{width}}  {'boxes':>7}  {'small':>7}  {'medium':>7}  {'large':>7}")
        rows = [(name, summary["boxes_per_class"][name], summary["box_sizes_per_class"][name]) for name in summary["boxes_per_class"]]
        rows.append(("all", summary["boxes"], summary["box_sizes"]))
        for name, count, by_size in rows:
            lines.append(f"  {name:<{width}}  {count:>7}  {by_size['small']:>7}  {by_size['medium']:>7}  {by_size['large']:>7}")
        for structural, title in ((True, "structural problems (training stops at the first):"), (False, "problems (training skips them):")):
            group = {kind: problem for kind, problem in summary["problems"].items() if problem["structural"] == structural}
            if not group:
                continue
            lines.append(f"  {title}")
            for kind, problem in group.items():
                lines.append(f"    {kind}: {problem['count']}" + (", e.g." if problem["examples"] else ""))
                lines.extend(f"      {example}" for example in problem["examples"])
        # The readers' summary warnings repeat the problems above; any other warning is shown in full.
        for text in summary["warnings"]:
            if not text.split("\n", 1)[0].endswith(PROBLEM_SUMMARY):
                lines.append(f"  warning: {text}")
    every_problem = [problem for summary in report["splits"].values() for problem in summary["problems"].values()]
    structural = sum(problem["count"] for problem in every_problem if problem["structural"])
    skipped = sum(problem["count"] for problem in every_problem if not problem["structural"])
    lines.append("")
    if report["ok"]:
        lines.append("ok: no problems found" + (" (every image decoded)" if report["decoded"] else ""))
    elif structural:
        lines.append(
            f"structural problems found: {structural}, which training refuses (it stops at the first); fix them all, "
            f"then check again" + (f"; and {skipped} skipped annotation(s) or image(s)" if skipped else "")
        )
    else:
        lines.append(f"problems found: {skipped} skipped annotation(s) or image(s); training skips them (on_invalid=error refuses them)")
    return "\n".join(lines)


def show_dataset(
    path: str | Path,
    out_png: str | Path,
    split: str | None = None,
    count: int = 16,
    columns: int = 4,
    seed: int = 0,
    data_format: str = "",
    class_names: list[str] | None = None,
    tile_size: int = 320,
) -> Path:
    """Draw the ground-truth boxes and class names of `count` sample images of a split on one PNG grid.

    The sample is `random.Random(seed)` over the split's images (all of them when it has at most `count`), in
    the split's order. Each image is scaled so its longer side is `tile_size` px (aspect ratio kept, boxes scaled the
    same way) and padded at the bottom and right to a `tile_size` square; tiles sit in `columns` columns with
    2 px white gaps (torchvision's `make_grid`; a single image is its tile alone). Boxes are drawn 2 px wide in
    their class's colour (`class_colour`), crowd / difficult boxes in grey. The PNG is written atomically; returns its path.
    """
    if count < 1 or columns < 1 or tile_size < 1:
        raise ValueError(f"count, columns and tile_size must be positive, got {count}, {columns}, {tile_size}")
    available = dataset_splits(path, "yaml" if _is_yaml(path) else data_format)
    split = split or ("train" if "train" in available else next(iter(available)))
    if split not in available:
        raise InvalidAnnotation(f"{path}: no '{split}' split (it has {', '.join(available)})")
    read = _read_splits(path, data_format, class_names, "skip", last=split)
    data, texts = next((data, texts) for current, data, texts in read if current == split)
    refuse_overwriting_inputs([out_png], itertools.chain([Path(path)], data_inputs(data)), "data show --out")
    for text in texts:
        warnings.warn(text, stacklevel=2)
    if not data.records:
        raise InvalidAnnotation(f"{path}: the '{split}' split has no usable images to show")
    indices = sorted(random.Random(seed).sample(range(len(data.records)), min(count, len(data.records))))
    tiles = [_draw_tile(data.records[index], data.class_names, tile_size) for index in indices]
    grid = make_grid(tiles, nrow=columns, padding=2, pad_value=255)  # (3, rows * (tile + 2) + 2, columns * (tile + 2) + 2)
    return save_image(grid, out_png)


def _draw_tile(record: ImageRecord, class_names: list[str], tile_size: int) -> torch.Tensor:
    """(3, tile_size, tile_size) uint8: the record's image scaled to fit, padded bottom/right, boxes drawn."""
    # (3, H, W) uint8, EXIF applied: the frame the record's boxes are in
    tile, scale_x, scale_y = fit_to_tile(load_image(record.path), tile_size)
    if len(record.boxes) == 0:
        return tile
    boxes = torch.from_numpy(np.asarray(record.boxes, dtype=np.float32)) * torch.tensor([scale_x, scale_y] * 2)
    colours = [IGNORE_COLOUR if crowd else class_colour(label) for label, crowd in zip(record.labels.tolist(), record.iscrowd.tolist())]
    captions = [class_names[label] for label in record.labels.tolist()]
    return draw_bounding_boxes(tile, boxes, labels=captions, colors=colours, width=2)
