"""COCO box-detection metrics, computed by pycocotools itself.

``evaluate_coco`` returns the 12 standard COCO numbers (AP@[.5:.95], AP50, AP75,
AP/AR by object size, AR@1/10/maxDets) plus per-class AP for a set of detections.
The matching, crowd handling, 101-point interpolated precision and area ranges are
not re-implemented: ``pycocotools.cocoeval.COCOeval`` does the work, so the numbers
are the ones papers and leaderboards report.  This module only adds what pycocotools
lacks: in-memory input, validation with useful messages, no mutation of the caller's
data, a zero-detection path (``COCO.loadRes([])`` crashes), a correct summary for
``maxDets`` other than 100 (``COCOeval.summarize`` hard-codes 100 for some entries),
per-class AP (read from pycocotools' own precision array, which the result keeps for
plots) and a per-class CSV.

``confusion_matrix`` is not a COCO metric: it is the Ultralytics-style class confusion
matrix (with a background row and column), for seeing which classes get mixed up.
"""
from __future__ import annotations

import contextlib
import copy
import io
import csv
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from anchorfree.files import atomic_write_text

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


# Per-class metrics read from the precision array: (name, iou_threshold or None for the .5:.95 mean, area label);
# the same rule as COCOeval.summarize, restricted to one class, at the last maxDets.
_PER_CLASS_QUERIES = (
    ("AP", None, "all"), ("AP50", 0.5, "all"), ("AP75", 0.75, "all"),
    ("AP_small", None, "small"), ("AP_medium", None, "medium"), ("AP_large", None, "large"),
)
PER_CLASS_METRICS = tuple(name for name, _, _ in _PER_CLASS_QUERIES)
PER_CLASS_CSV_COLUMNS = ("category_id", "name", "num_gt", "num_det", *PER_CLASS_METRICS)
_SHORT_NAMES = {"AP_small": "APs", "AP_medium": "APm", "AP_large": "APl"}  # table column headers


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _format(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{value:6.4f}"


def _csv_cell(value: Any) -> Any:
    return "" if isinstance(value, float) and math.isnan(value) else value


@dataclass
class EvaluationResult:
    """COCO metrics of one evaluation; every AP/AR is in [0, 1], nan when not computable.

    per_class: one row per category, sorted by the dataset's category id, with keys category_id, name,
        num_gt (non-crowd GT boxes), num_det (detections of the class that were evaluated, after the
        max_detections cap), AP, AP50, AP75, AP_small, AP_medium, AP_large.
    precision: pycocotools' own ``COCOeval.eval["precision"]``, shape (T, R, K, A, M) = (10 IoU
        thresholds, 101 recall points, K classes in per_class order, 4 areas (all, small, medium, large),
        3 maxDets (1, 10, max_detections)); -1 where undefined (no GT of that class in that area).
    scores: ``COCOeval.eval["scores"]``, the same shape: the detection score at which each precision
        point is reached (0 where never reached, -1 where undefined).
    iou_thresholds: (T,) 0.5, 0.55, ..., 0.95.  recall_points: (R,) 0.0, 0.01, ..., 1.0.
    The arrays are None only for results built by hand without them; ``to_dict`` leaves them out
    unless asked.
    """

    stats: dict[str, float]
    per_class: list[dict[str, Any]]
    max_detections: int
    num_images: int
    num_detections: int
    # compare=False: numpy arrays have no single truth value, so they cannot take part in ==.
    precision: np.ndarray | None = field(default=None, repr=False, compare=False)
    scores: np.ndarray | None = field(default=None, repr=False, compare=False)
    iou_thresholds: np.ndarray | None = field(default=None, repr=False, compare=False)
    recall_points: np.ndarray | None = field(default=None, repr=False, compare=False)

    def table(self) -> str:
        """Fixed-width text: the 12 summary stats, then one row per class."""
        lines = [f"COCO bbox: {self.num_images} images, {self.num_detections} detections, "
                 f"maxDets={self.max_detections}"]
        lines += [f"  {name:<10} {_format(value)}" for name, value in self.stats.items()]
        metric_header = " ".join(f"{_SHORT_NAMES.get(name, name):>6}" for name in PER_CLASS_METRICS)
        lines.append(f"  {'name':<24} {'id':>5} {'num_gt':>7} {'num_det':>7} {metric_header}")
        for row in self.per_class:
            metrics = " ".join(_format(row.get(name, float("nan"))) for name in PER_CLASS_METRICS)
            num_det = row["num_det"]
            lines.append(f"  {str(row['name'])[:24]:<24} {row['category_id']:>5} {row['num_gt']:>7} "
                         f"{num_det:>7} {metrics}")
        return "\n".join(lines)

    def to_dict(self, include_arrays: bool = False) -> dict[str, Any]:
        """JSON-serialisable copy; nan (not computable) becomes None.

        The precision/scores arrays (about 12k numbers per class each) are left out unless
        include_arrays, which adds them as nested lists.
        """
        result: dict[str, Any] = {
            "stats": {name: _nan_to_none(value) for name, value in self.stats.items()},
            "per_class": [{key: _nan_to_none(value) if isinstance(value, float) else value
                           for key, value in row.items()} for row in self.per_class],
            "max_detections": self.max_detections,
            "num_images": self.num_images,
            "num_detections": self.num_detections,
        }
        if include_arrays:
            for name in ("precision", "scores", "iou_thresholds", "recall_points"):
                array = getattr(self, name)
                result[name] = None if array is None else array.tolist()
        return result

    def per_class_csv(self, path: str | Path) -> Path:
        """Write one row per class, then an "all" row, to ``path`` (CSV, written atomically); returns the path.

        Columns: category_id (the dataset's own id), name, num_gt, num_det, AP, AP50, AP75, AP_small,
        AP_medium, AP_large.  The last row has category_id and name "all", the summed counts and the summary
        stats (mAP in the AP column).  Not-computable values (nan) are empty cells.
        """
        path = Path(path)
        rows = [[row["category_id"], row["name"], row["num_gt"], row["num_det"],
                 *(row.get(name, float("nan")) for name in PER_CLASS_METRICS)] for row in self.per_class]
        summary_names = ("mAP", *PER_CLASS_METRICS[1:])  # the summary's AP@[.5:.95] is called mAP
        rows.append(["all", "all", sum(row["num_gt"] for row in self.per_class), self.num_detections,
                     *(self.stats.get(name, float("nan")) for name in summary_names)])
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(PER_CLASS_CSV_COLUMNS)
        writer.writerows([_csv_cell(value) for value in row] for row in rows)
        atomic_write_text(path, buffer.getvalue())  # a reader never sees half a file
        return path


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
    size range with no GT); the precision/scores arrays are 0 where GT exists, -1 elsewhere.

    Per-class AP, AP50, AP75, AP_small/medium/large are read from pycocotools' precision
    array with COCOeval.summarize's rule (mean over entries > -1, at the last maxDets), so
    they equal a pycocotools run with params.catIds = [that category].  Raises ValueError for unknown image/category ids or
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

    params = coco_eval.params
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]; K follows params.catIds (sorted ids)
    num_gt: dict[int, int] = defaultdict(int)
    for ann in gt_dataset["annotations"]:
        if int(ann["image_id"]) in eval_image_set and not ann["iscrowd"]:
            num_gt[int(ann["category_id"])] += 1
    num_dets: dict[int, int] = defaultdict(int)
    for det in cleaned:
        num_dets[det["category_id"]] += 1
    per_class = []
    for k, cat in enumerate(categories):
        row: dict[str, Any] = {"category_id": category_ids[k], "name": str(cat.get("name", category_ids[k]))}
        for name, iou_thr, area in _PER_CLASS_QUERIES:
            values = precision[:, :, k, params.areaRngLbl.index(area), 2]  # (T, R)
            if iou_thr is not None:
                values = values[np.where(iou_thr == params.iouThrs)[0]]  # (1, R)
            row[name] = _mean_valid(values)
        row.update(num_gt=num_gt[category_ids[k]], num_det=num_dets[category_ids[k]])
        per_class.append(row)
    return EvaluationResult(stats=_summary_stats(coco_eval), per_class=per_class,
                            max_detections=max_detections, num_images=len(eval_image_ids),
                            num_detections=len(cleaned), precision=np.array(precision),
                            scores=np.array(coco_eval.eval["scores"]),
                            iou_thresholds=np.array(params.iouThrs), recall_points=np.array(params.recThrs))


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


def _box_intersections(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(N, 4) and (M, 4) x1, y1, x2, y2 boxes -> (N, M) intersection areas."""
    top_left = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])  # (N, M, 2)
    bottom_right = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])  # (N, M, 2)
    return np.prod(np.clip(bottom_right - top_left, 0.0, None), axis=2)


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _xywh_to_xyxy(bboxes: list[list[float]]) -> np.ndarray:
    boxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)  # (N, 4) x, y, w, h
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def confusion_matrix(ground_truth: dict, detections: list[dict], iou_threshold: float = 0.5,
                     score_threshold: float = 0.25) -> np.ndarray:
    """Class confusion matrix with a background class, as Ultralytics draws it (not a COCO metric).

    ground_truth: a COCO detection dict (images, annotations, categories); detections: COCO results
    [{"image_id", "category_id" (original ids), "bbox": [x, y, w, h] pixels, "score"}].

    Returns an int64 (K + 1, K + 1) matrix, K = number of categories, index k = the k-th category id in
    sorted order, index K = background.  Rows are the predicted class, columns the true class:
      [k, j]  a detection of class k matched to a GT box of class j (k == j: correct; else a class mix-up);
      [k, K]  a detection of class k matched to no GT box (a false positive);
      [K, j]  a GT box of class j matched by no detection (a miss).
    [K, K] is always 0.

    The rule, per image:
      1. Detections with score < score_threshold are dropped; the rest are visited in descending score
         order (ties keep the input order), as COCO does.
      2. Each detection takes the still-unmatched non-crowd GT box with the highest IoU, whatever the
         classes (class-agnostic), if that IoU >= iou_threshold; each GT box is matched at most once.
         (Ultralytics orders the matches by IoU instead of by score; with well-separated objects the
         two agree.)
      3. A detection left unmatched whose intersection with some crowd region (iscrowd=1), divided by the
         detection's own area, is >= iou_threshold is ignored, as COCO ignores detections on crowds;
         any other unmatched detection is a false positive.
      4. Unmatched non-crowd GT boxes are misses; crowd regions are never misses.
    Raises ValueError for unknown image/category ids or non-finite values, as evaluate_coco does.
    """
    categories = sorted(int(cat["id"]) for cat in ground_truth["categories"])
    index_of = {category_id: k for k, category_id in enumerate(categories)}
    background = len(categories)
    image_ids = {int(img["id"]) for img in ground_truth["images"]}
    cleaned = _validated_detections(detections, image_ids, set(categories))

    gt_by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in ground_truth.get("annotations", []):
        gt_by_image[int(ann["image_id"])].append(ann)
    dt_by_image: dict[int, list[dict]] = defaultdict(list)
    for det in cleaned:
        if det["score"] >= score_threshold:
            dt_by_image[det["image_id"]].append(det)

    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    for image_id in sorted(image_ids):
        annotations = gt_by_image.get(image_id, [])
        crowd = [ann for ann in annotations if ann.get("iscrowd", 0)]
        objects = [ann for ann in annotations if not ann.get("iscrowd", 0)]
        object_labels = [index_of[int(ann["category_id"])] for ann in objects]
        dets = sorted(dt_by_image.get(image_id, []), key=lambda det: -det["score"])  # stable
        dt_boxes = _xywh_to_xyxy([det["bbox"] for det in dets])  # (D, 4)
        gt_boxes = _xywh_to_xyxy([ann["bbox"] for ann in objects])  # (G, 4)
        crowd_boxes = _xywh_to_xyxy([ann["bbox"] for ann in crowd])  # (C, 4)

        intersections = _box_intersections(dt_boxes, gt_boxes)  # (D, G)
        unions = _areas(dt_boxes)[:, None] + _areas(gt_boxes)[None, :] - intersections
        ious = np.divide(intersections, unions, out=np.zeros_like(intersections), where=unions > 0)
        dt_areas = _areas(dt_boxes)[:, None]  # (D, 1)
        crowd_intersections = _box_intersections(dt_boxes, crowd_boxes)  # (D, C)
        # COCO's crowd overlap: intersection over the detection's area only (a crowd region can hold many).
        crowd_overlap = np.divide(crowd_intersections, dt_areas, out=np.zeros_like(crowd_intersections),
                                  where=dt_areas > 0)

        matched = np.zeros(len(objects), dtype=bool)
        for d, det in enumerate(dets):
            predicted = index_of[det["category_id"]]
            candidates = np.where(matched, -1.0, ious[d]) if len(objects) else np.zeros(0)
            best = int(np.argmax(candidates)) if candidates.size else -1
            if best >= 0 and candidates[best] >= iou_threshold:
                matched[best] = True
                matrix[predicted, object_labels[best]] += 1
            elif not (crowd_overlap[d] >= iou_threshold).any():
                matrix[predicted, background] += 1
        for g in np.flatnonzero(~matched):
            matrix[background, object_labels[g]] += 1
    return matrix
