"""COCO box-detection metrics, computed by pycocotools itself.

``evaluate_coco`` returns the 12 standard COCO numbers (AP@[.5:.95], AP50, AP75,
AP/AR by object size, AR@1/10/maxDets) plus per-class AP for a set of detections.
The matching, crowd handling, 101-point interpolated precision and area ranges are
not re-implemented: ``pycocotools.cocoeval.COCOeval`` does the work, so the numbers
are the ones papers and leaderboards report.  This module only adds what pycocotools
lacks: in-memory input, validation with useful messages, no mutation of the caller's
data, a zero-detection path (``COCO.loadRes([])`` crashes), a correct summary for
``maxDets`` other than 100 (``COCOeval.summarize`` hard-codes 100 for some entries)
and per-class AP.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")

# (is_ap, iou_threshold or None for the .5:.95 mean, area label, index into params.maxDets);
# the same 12 queries, in the same order, as COCOeval.summarize's _summarizeDets.
_STAT_QUERIES = (
    (True, None, "all", 2), (True, 0.5, "all", 2), (True, 0.75, "all", 2),
    (True, None, "small", 2), (True, None, "medium", 2), (True, None, "large", 2),
    (False, None, "all", 0), (False, None, "all", 1), (False, None, "all", 2),
    (False, None, "small", 2), (False, None, "medium", 2), (False, None, "large", 2),
)


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _format(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{value:6.4f}"


@dataclass
class EvaluationResult:
    """COCO metrics of one evaluation; every AP/AR is in [0, 1], nan when not computable."""

    stats: dict[str, float]
    per_class: list[dict[str, Any]]
    max_detections: int
    num_images: int
    num_detections: int

    def table(self) -> str:
        """Fixed-width text: the 12 summary stats, then one row per class."""
        lines = [f"COCO bbox: {self.num_images} images, {self.num_detections} detections, "
                 f"maxDets={self.max_detections}"]
        lines += [f"  {name:<10} {_format(value)}" for name, value in self.stats.items()]
        lines.append(f"  {'name':<24} {'id':>5} {'num_gt':>7} {'AP':>6} {'AP50':>6}")
        for row in self.per_class:
            lines.append(f"  {str(row['name'])[:24]:<24} {row['category_id']:>5} {row['num_gt']:>7} "
                         f"{_format(row['AP'])} {_format(row['AP50'])}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy; nan (not computable) becomes None."""
        result = asdict(self)
        result["stats"] = {name: _nan_to_none(value) for name, value in self.stats.items()}
        for row in result["per_class"]:
            row["AP"], row["AP50"] = _nan_to_none(row["AP"]), _nan_to_none(row["AP50"])
        return result


def _mean_valid(values: np.ndarray) -> float:
    """Mean over entries > -1 (pycocotools marks "no GT" with -1); nan when none are valid."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


def _summary_stats(coco_eval: COCOeval) -> dict[str, float]:
    """The 12 stats computed exactly as COCOeval.summarize, but with maxDets taken by index."""
    params = coco_eval.params
    stats = {}
    for name, (is_ap, iou_thr, area, max_det_index) in zip(STAT_NAMES, _STAT_QUERIES):
        values = coco_eval.eval["precision" if is_ap else "recall"]  # [T,R,K,A,M] / [T,K,A,M]
        if iou_thr is not None:
            values = values[np.where(iou_thr == params.iouThrs)[0]]
        area_index = params.areaRngLbl.index(area)
        values = values[..., area_index, max_det_index]
        stats[name] = _mean_valid(values)
    return stats


def _validated_detections(detections: list[dict], image_ids: set[int],
                          category_ids: set[int]) -> list[dict]:
    """Clean copies of the detections; ValueError naming the first bad index otherwise."""
    cleaned, bad_categories, bad_images = [], {}, {}
    for index, det in enumerate(detections):
        missing = {"image_id", "category_id", "bbox", "score"} - set(det)
        if missing:
            raise ValueError(f"detection {index} lacks key(s) {sorted(missing)}")
        bbox = [float(v) for v in det["bbox"]]
        score = float(det["score"])
        if len(bbox) != 4 or not all(math.isfinite(v) for v in (*bbox, score)):
            raise ValueError(f"detection {index} has a non-finite or malformed bbox/score: "
                             f"bbox={det['bbox']}, score={det['score']}")
        image_id, category_id = int(det["image_id"]), int(det["category_id"])
        if category_id not in category_ids:
            bad_categories.setdefault(category_id, index)
        if image_id not in image_ids:
            bad_images.setdefault(image_id, index)
        cleaned.append({"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score})
    if bad_categories:
        raise ValueError(f"detections use category_id(s) {sorted(bad_categories)} not in the ground-truth "
                         f"categories (first at detection index {min(bad_categories.values())})")
    if bad_images:
        raise ValueError(f"detections use image_id(s) {sorted(bad_images)} not in the ground-truth "
                         f"images (first at detection index {min(bad_images.values())})")
    return cleaned


def _cap_per_image_and_category(detections: list[dict], max_detections: int) -> list[dict]:
    """Keep the top-scoring max_detections per (image, category), in the original order.

    pycocotools applies its maxDets cap per image *and category* (stable sort by score),
    so this cap drops exactly what it would drop and the stats stay identical; keeping
    the original order keeps its tie-breaking identical too.  A per-image cap across
    categories (the COCO challenge rule) would change the numbers versus pycocotools.
    """
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, det in enumerate(detections):
        groups[det["image_id"], det["category_id"]].append(index)
    keep = set()
    for indices in groups.values():
        keep.update(sorted(indices, key=lambda i: -detections[i]["score"])[:max_detections])
    return [det for index, det in enumerate(detections) if index in keep]


def evaluate_coco(ground_truth: dict, detections: list[dict], max_detections: int = 100,
                  image_ids: list[int] | None = None) -> EvaluationResult:
    """COCO bbox metrics of ``detections`` against ``ground_truth``, via pycocotools.

    ground_truth: a COCO detection dict (images, annotations, categories); annotations
        without "area" get w*h, without "iscrowd" get 0 (on a copy; inputs are never mutated).
    detections: COCO results [{"image_id", "category_id" (original dataset ids),
        "bbox": [x, y, w, h] in absolute pixels, "score"}].
    max_detections: pycocotools' maxDets cap (>= 10), applied per image and category;
        params.maxDets is [1, 10, max_detections].
    image_ids: evaluate only these GT images (default: all).

    With no detections on the evaluated images this warns and returns what pycocotools
    would for "nothing detected" (loadRes([]) crashes, so an empty result set is built by
    hand): every AP/AR is 0.0 where GT exists, nan where none does (e.g. per class, or a
    size range with no GT).  Raises ValueError for unknown image/category ids or
    non-finite values, naming the first offending detection index.
    """
    if max_detections < 10:
        # COCOeval sorts maxDets, so a cap below 10 would silently become AR10's slot.
        raise ValueError(f"max_detections must be >= 10, got {max_detections}")
    gt_dataset = copy.deepcopy(ground_truth)  # pycocotools adds keys to annotations
    gt_dataset.setdefault("annotations", [])
    for ann in gt_dataset["annotations"]:
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    all_image_ids = {int(img["id"]) for img in gt_dataset["images"]}
    categories = sorted(gt_dataset["categories"], key=lambda cat: cat["id"])
    category_ids = [int(cat["id"]) for cat in categories]
    if image_ids is None:
        eval_image_ids = sorted(all_image_ids)
    else:
        eval_image_ids = sorted({int(i) for i in image_ids})
        unknown = sorted(set(eval_image_ids) - all_image_ids)
        if unknown:
            raise ValueError(f"image_ids {unknown} are not in the ground-truth images")
    cleaned = _validated_detections(detections, all_image_ids, set(category_ids))
    eval_image_set = set(eval_image_ids)
    cleaned = [det for det in cleaned if det["image_id"] in eval_image_set]
    cleaned = _cap_per_image_and_category(cleaned, max_detections)

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = gt_dataset
        coco_gt.createIndex()
        if cleaned:
            coco_dt = coco_gt.loadRes(cleaned)  # cleaned is our own copy; loadRes mutates it
        else:
            warnings.warn("no detections on the evaluated images: AP/AR are 0.0 (nan where no GT)",
                          stacklevel=2)
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(gt_dataset["images"]),
                               "categories": copy.deepcopy(categories), "annotations": []}
            coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        coco_eval.params.imgIds = eval_image_ids
        coco_eval.params.catIds = category_ids
        coco_eval.params.maxDets = [1, 10, max_detections]
        coco_eval.evaluate()
        coco_eval.accumulate()

    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]; K follows params.catIds
    area_all = coco_eval.params.areaRngLbl.index("all")
    num_gt: dict[int, int] = defaultdict(int)
    for ann in gt_dataset["annotations"]:
        if int(ann["image_id"]) in eval_image_set and not ann["iscrowd"]:
            num_gt[int(ann["category_id"])] += 1
    num_dets: dict[int, int] = defaultdict(int)
    for det in cleaned:
        num_dets[det["category_id"]] += 1
    per_class = []
    for k, cat in enumerate(categories):
        class_precision = precision[:, :, k, area_all, 2]
        per_class.append({"category_id": category_ids[k], "name": str(cat.get("name", category_ids[k])),
                          "AP": _mean_valid(class_precision), "AP50": _mean_valid(class_precision[0]),
                          "num_gt": num_gt[category_ids[k]], "num_detections": num_dets[category_ids[k]]})
    return EvaluationResult(stats=_summary_stats(coco_eval), per_class=per_class,
                            max_detections=max_detections, num_images=len(eval_image_ids),
                            num_detections=len(cleaned))


def detections_to_coco_results(image_id: int, boxes: Any, scores: Any, labels: Any,
                               label_to_category_id: list[int]) -> list[dict]:
    """Convert one image's detections to COCO result dicts.

    boxes: (N, 4) x1, y1, x2, y2 in absolute pixels of the original image; scores: (N,);
    labels: (N,) contiguous 0-based class indices.  Torch tensors, numpy arrays or lists
    (anything with ``.tolist()`` or already a list).  Returns [{"image_id", "category_id",
    "bbox": [x, y, w, h] rounded to 2 decimals, "score" rounded to 5 decimals}].
    Raises ValueError for a label outside range(len(label_to_category_id)).
    """
    # .tolist() works for torch and numpy alike, so torch is never imported here.
    box_list = boxes.tolist() if hasattr(boxes, "tolist") else list(boxes)
    score_list = scores.tolist() if hasattr(scores, "tolist") else list(scores)
    label_list = labels.tolist() if hasattr(labels, "tolist") else list(labels)
    if not len(box_list) == len(score_list) == len(label_list):
        raise ValueError(f"image {image_id}: {len(box_list)} boxes, {len(score_list)} scores, "
                         f"{len(label_list)} labels; expected equal counts")
    results = []
    for box, score, label in zip(box_list, score_list, label_list):
        if label != int(label) or not 0 <= int(label) < len(label_to_category_id):
            raise ValueError(f"image {image_id}: label {label} outside "
                             f"range({len(label_to_category_id)})")
        x1, y1, x2, y2 = (float(v) for v in box)
        results.append({"image_id": int(image_id), "category_id": int(label_to_category_id[int(label)]),
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": round(float(score), 5)})
    return results
