"""Differential tests: anchorfree.evaluation must give exactly pycocotools' numbers."""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from anchorfree.evaluation import (
    PER_CLASS_CSV_COLUMNS,
    PER_CLASS_METRICS,
    STAT_NAMES,
    EvaluationResult,
    confusion_matrix,
    detections_to_coco_results,
    evaluate_coco,
)

CATEGORY_IDS = (1, 3, 7)  # deliberately non-contiguous
CROWDED_IMAGE = 0  # gets > 100 detections


def make_ground_truth(seed: int = 0, num_images: int = 20) -> dict:
    """Random GT: sizes spanning small/medium/large, a few crowd boxes, image 5 empty,
    category 7 absent from odd images."""
    rng = np.random.RandomState(seed)
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(num_images)]
    annotations = []
    for image_id in range(num_images):
        if image_id == 5:
            continue
        for _ in range(rng.randint(1, 7)):
            category_id = int(rng.choice(CATEGORY_IDS if image_id % 2 == 0 else CATEGORY_IDS[:2]))
            side = float(rng.choice([12.0, 20.0, 50.0, 80.0, 150.0, 300.0])) * rng.uniform(0.8, 1.2)
            w, h = round(side, 2), round(side * rng.uniform(0.6, 1.4), 2)
            x, y = round(rng.uniform(0, 640 - w), 2), round(rng.uniform(0, 480 - min(h, 479)), 2)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "bbox": [x, y, w, h], "area": w * h,
                                "iscrowd": int(rng.uniform() < 0.08)})
    categories = [{"id": cid, "name": f"class{cid}"} for cid in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}


def make_detections(ground_truth: dict, seed: int = 1) -> list[dict]:
    """Jittered copies of most GT boxes, plus false positives; > 100 on CROWDED_IMAGE."""
    rng = np.random.RandomState(seed)
    detections = []
    for ann in ground_truth["annotations"]:
        if rng.uniform() < 0.85:
            x, y, w, h = ann["bbox"]
            dx, dy, dw, dh = rng.normal(0, 0.1, size=4) * [w, h, w, h]
            jittered = (x + dx, y + dy, max(1.0, w + dw), max(1.0, h + dh))
            detections.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                               "bbox": [round(float(v), 2) for v in jittered],
                               "score": round(float(rng.uniform(0.3, 1.0)), 5)})
    num_images = len(ground_truth["images"])
    false_positives = [(int(rng.randint(num_images)), int(rng.choice(CATEGORY_IDS))) for _ in range(60)]
    # > 100 of one class (exercises the per-category cap) and > 100 in total on one image.
    false_positives += [(CROWDED_IMAGE, 1)] * 120 + [(CROWDED_IMAGE, 3)] * 30
    for image_id, category_id in false_positives:
        w, h = rng.uniform(5, 200, size=2)
        x, y = rng.uniform(0, 500), rng.uniform(0, 350)
        detections.append({"image_id": image_id, "category_id": category_id,
                           "bbox": [round(float(v), 2) for v in (x, y, w, h)],
                           "score": round(float(rng.uniform(0.2, 0.95)), 5)})
    return detections


def reference_eval(tmp_path: Path, ground_truth: dict, detections: list[dict],
                   max_dets: list[int] | None = None, cat_ids: list[int] | None = None,
                   img_ids: list[int] | None = None) -> COCOeval:
    """pycocotools the usual way: JSON files, COCO(file), loadRes(file), evaluate, accumulate."""
    gt_file, dt_file = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_file.write_text(json.dumps(ground_truth))
    dt_file.write_text(json.dumps(detections))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(str(dt_file)), iouType="bbox")
        if max_dets is not None:
            coco_eval.params.maxDets = max_dets
        if cat_ids is not None:
            coco_eval.params.catIds = cat_ids
        if img_ids is not None:
            coco_eval.params.imgIds = img_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval


def reference_summarize(tmp_path: Path, *args, **kwargs) -> list[float]:
    coco_eval = reference_eval(tmp_path, *args, **kwargs)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.summarize()
    return [float("nan") if v == -1 else float(v) for v in coco_eval.stats]


def assert_stats_equal(ours: dict[str, float], reference: list[float]) -> None:
    assert list(ours) == list(STAT_NAMES)
    for name, expected in zip(STAT_NAMES, reference):
        got = ours[name]
        assert (math.isnan(got) and math.isnan(expected)) or abs(got - expected) < 1e-6, (name, got, expected)


@pytest.fixture(scope="module")
def data() -> tuple[dict, list[dict]]:
    ground_truth = make_ground_truth()
    detections = make_detections(ground_truth)
    per_image = np.bincount([d["image_id"] for d in detections])
    assert per_image.max() > 100
    assert any(a["iscrowd"] for a in ground_truth["annotations"])
    assert not any(a["image_id"] == 5 for a in ground_truth["annotations"])
    return ground_truth, detections


def test_matches_pycocotools_summarize(tmp_path: Path, data: tuple[dict, list[dict]]) -> None:
    ground_truth, detections = data
    result = evaluate_coco(ground_truth, detections)
    assert_stats_equal(result.stats, reference_summarize(tmp_path, ground_truth, detections))
    assert 0.0 < result.stats["mAP"] < 1.0
    assert result.num_images == 20 and result.max_detections == 100
    json.dumps(result.to_dict())
    assert "AP_small" in result.table() and "class7" in result.table()


def test_matches_pycocotools_on_image_subset(tmp_path: Path, data: tuple[dict, list[dict]]) -> None:
    ground_truth, detections = data
    subset = [0, 2, 5, 7, 11]
    result = evaluate_coco(ground_truth, detections, image_ids=subset)
    assert_stats_equal(result.stats, reference_summarize(tmp_path, ground_truth, detections, img_ids=subset))
    assert result.num_images == len(subset)
    group_sizes = Counter((d["image_id"], d["category_id"]) for d in detections if d["image_id"] in subset)
    assert max(group_sizes.values()) > 100
    assert result.num_detections == sum(min(n, 100) for n in group_sizes.values())


def summarize_from_arrays(coco_eval: COCOeval) -> list[float]:
    """COCOeval.summarize's computation, but addressing maxDets by position (summarize hard-codes 100)."""
    p = coco_eval.params
    queries = [(1, None, "all", 2), (1, 0.5, "all", 2), (1, 0.75, "all", 2), (1, None, "small", 2),
               (1, None, "medium", 2), (1, None, "large", 2), (0, None, "all", 0), (0, None, "all", 1),
               (0, None, "all", 2), (0, None, "small", 2), (0, None, "medium", 2), (0, None, "large", 2)]
    stats = []
    for ap, iou_thr, area, m in queries:
        s = coco_eval.eval["precision" if ap else "recall"]
        if iou_thr is not None:
            s = s[np.where(iou_thr == p.iouThrs)[0]]
        s = s[..., p.areaRngLbl.index(area), m]
        stats.append(float(np.mean(s[s > -1])) if (s > -1).any() else float("nan"))
    return stats


def test_max_detections_10_matches_pycocotools(tmp_path: Path, data: tuple[dict, list[dict]]) -> None:
    ground_truth, detections = data
    result = evaluate_coco(ground_truth, detections, max_detections=10)
    reference = reference_eval(tmp_path, ground_truth, detections, max_dets=[1, 10, 10])
    assert_stats_equal(result.stats, summarize_from_arrays(reference))
    assert result.stats["AR10"] == result.stats["AR100"]  # AR100 here means AR@maxDets=10
    # The helper itself agrees with summarize() where summarize is right (maxDets 100).
    default = reference_eval(tmp_path, ground_truth, detections)
    with contextlib.redirect_stdout(io.StringIO()):
        default.summarize()
    assert np.allclose(summarize_from_arrays(default), default.stats, equal_nan=False)


def assert_per_class_matches_single_category_runs(tmp_path: Path, result: EvaluationResult, ground_truth: dict,
                                                  detections: list[dict]) -> None:
    """AP, AP50, AP75, AP_small/medium/large of each row equal summarize() of a catIds=[id] run."""
    assert PER_CLASS_METRICS == ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")
    for row in result.per_class:
        reference = reference_summarize(tmp_path, ground_truth, detections, cat_ids=[row["category_id"]])
        for name, expected in zip(PER_CLASS_METRICS, reference[:6]):
            got = row[name]
            assert (math.isnan(got) and math.isnan(expected)) or abs(got - expected) <= 1e-12, \
                (row["category_id"], name, got, expected)


def test_per_class_ap_matches_single_category_runs(tmp_path: Path, data: tuple[dict, list[dict]]) -> None:
    ground_truth, detections = data
    result = evaluate_coco(ground_truth, detections)
    assert [row["category_id"] for row in result.per_class] == list(CATEGORY_IDS)
    assert_per_class_matches_single_category_runs(tmp_path, result, ground_truth, detections)
    # Some size range of some class has no GT, so the nan path is exercised too.
    assert any(math.isnan(row[name]) for row in result.per_class for name in PER_CLASS_METRICS)
    group_sizes = Counter((d["image_id"], d["category_id"]) for d in detections)
    for row in result.per_class:
        cid = row["category_id"]
        expected = sum(min(n, 100) for (_, category_id), n in group_sizes.items() if category_id == cid)
        assert row["num_det"] == expected
        assert row["num_gt"] == sum(a["category_id"] == cid and not a["iscrowd"]
                                    for a in ground_truth["annotations"])
        assert row["name"] == f"class{cid}"
    assert abs(np.mean([row["AP"] for row in result.per_class]) - result.stats["mAP"]) < 1e-6


def test_class_without_ground_truth_is_nan_and_excluded(tmp_path: Path,
                                                        data: tuple[dict, list[dict]]) -> None:
    ground_truth, detections = copy.deepcopy(data)
    ground_truth["categories"].append({"id": 9, "name": "ghost"})
    detections.append({"image_id": 1, "category_id": 9, "bbox": [10.0, 10.0, 50.0, 50.0], "score": 0.9})
    result = evaluate_coco(ground_truth, detections)
    ghost = result.per_class[-1]
    assert ghost["category_id"] == 9 and math.isnan(ghost["AP"]) and ghost["num_gt"] == 0
    assert ghost["num_det"] == 1
    assert_stats_equal(result.stats, reference_summarize(tmp_path, ground_truth, detections))
    real_aps = [row["AP"] for row in result.per_class[:-1]]
    assert abs(np.mean(real_aps) - result.stats["mAP"]) < 1e-6
    assert all(math.isnan(ghost[name]) for name in PER_CLASS_METRICS)
    assert all(result.to_dict()["per_class"][-1][name] is None for name in PER_CLASS_METRICS)
    assert_per_class_matches_single_category_runs(tmp_path, result, ground_truth, detections)
    reference = reference_eval(tmp_path, ground_truth, detections)
    assert np.array_equal(result.precision, reference.eval["precision"])
    assert (result.precision[:, :, -1] == -1).all()


def test_precision_and_scores_are_pycocotools_arrays(tmp_path: Path, data: tuple[dict, list[dict]]) -> None:
    ground_truth, detections = data
    result = evaluate_coco(ground_truth, detections)
    reference = reference_eval(tmp_path, ground_truth, detections)
    assert result.precision.shape == result.scores.shape == (10, 101, len(CATEGORY_IDS), 4, 3)
    assert np.array_equal(result.precision, reference.eval["precision"])
    assert np.array_equal(result.scores, reference.eval["scores"])
    assert np.array_equal(result.iou_thresholds, reference.params.iouThrs)
    assert np.array_equal(result.recall_points, reference.params.recThrs)
    assert (result.precision == -1).any() and (result.precision > 0).any()  # both paths present
    # With maxDets [1, 10, 10] and an image subset too.
    subset = [0, 2, 5, 7, 11]
    capped = evaluate_coco(ground_truth, detections, max_detections=10, image_ids=subset)
    reference = reference_eval(tmp_path, ground_truth, detections, max_dets=[1, 10, 10], img_ids=subset)
    assert np.array_equal(capped.precision, reference.eval["precision"])
    assert np.array_equal(capped.scores, reference.eval["scores"])
    # The arrays stay out of the JSON unless asked for.
    as_dict = result.to_dict()
    assert set(as_dict) == {"stats", "per_class", "max_detections", "num_images", "num_detections"}
    assert len(json.dumps(as_dict)) < 5000
    full = result.to_dict(include_arrays=True)
    assert np.array_equal(np.array(full["precision"]), result.precision)
    for name in ("AP75", "APs", "APm", "APl", "num_det"):
        assert name in result.table().splitlines()[13]


def test_zero_detections(data: tuple[dict, list[dict]]) -> None:
    ground_truth, _ = data
    with pytest.warns(UserWarning, match="no detections"):
        result = evaluate_coco(ground_truth, [])
    assert all(result.stats[name] == 0.0 for name in STAT_NAMES), result.stats
    assert all(row["AP"] == 0.0 for row in result.per_class)
    assert result.num_detections == 0


def test_zero_detections_give_plottable_arrays(data: tuple[dict, list[dict]]) -> None:
    ground_truth = copy.deepcopy(data[0])
    ground_truth["categories"].append({"id": 9, "name": "ghost"})  # no GT at all
    with pytest.warns(UserWarning, match="no detections"):
        result = evaluate_coco(ground_truth, [])
    assert result.precision.shape == result.scores.shape == (10, 101, 4, 4, 3)
    area_all = 0
    assert (result.precision[:, :, :3, area_all] == 0).all() and (result.scores[:, :, :3, area_all] == 0).all()
    assert (result.precision[:, :, 3] == -1).all() and (result.scores[:, :, 3] == -1).all()
    # Per size range: 0 where the class has GT of that size, -1 where it has none.
    assert set(np.unique(result.precision)) <= {-1.0, 0.0}
    for row in result.per_class[:3]:
        assert all(row[name] == 0.0 or math.isnan(row[name]) for name in PER_CLASS_METRICS)
        assert row["AP"] == row["AP50"] == row["AP75"] == 0.0 and row["num_det"] == 0



def test_zero_detections_match_pycocotools(tmp_path: Path, data: tuple[dict, list[dict]]) -> None:
    # pycocotools cannot load an empty result list, but it can evaluate images that got no detections.
    ground_truth, detections = data
    elsewhere = [d for d in detections if d["image_id"] == 1]
    subset = [0, 2, 4, 5, 6]
    with pytest.warns(UserWarning, match="no detections"):
        result = evaluate_coco(ground_truth, elsewhere, image_ids=subset)
    reference = reference_eval(tmp_path, ground_truth, elsewhere, img_ids=subset)
    assert np.array_equal(result.precision, reference.eval["precision"])
    assert np.array_equal(result.scores, reference.eval["scores"])
    assert_stats_equal(result.stats, reference_summarize(tmp_path, ground_truth, elsewhere, img_ids=subset))


def test_missing_area_and_iscrowd_are_filled(data: tuple[dict, list[dict]]) -> None:
    ground_truth, detections = data
    bare = copy.deepcopy(ground_truth)
    bare["annotations"] = [a for a in bare["annotations"] if not a["iscrowd"]]
    expected = evaluate_coco(bare, detections).stats
    for ann in bare["annotations"]:
        del ann["area"], ann["iscrowd"]
    assert evaluate_coco(bare, detections).stats == expected


def test_bad_detections_raise(data: tuple[dict, list[dict]]) -> None:
    ground_truth, detections = data
    bad = copy.deepcopy(detections[:5]) + [dict(detections[0], category_id=42)]
    with pytest.raises(ValueError, match=r"42.*index 5"):
        evaluate_coco(ground_truth, bad)
    with pytest.raises(ValueError, match="999"):
        evaluate_coco(ground_truth, [dict(detections[0], image_id=999)])
    with pytest.raises(ValueError, match="detection 1"):
        evaluate_coco(ground_truth, [detections[0], dict(detections[0], score=float("nan"))])
    with pytest.raises(ValueError, match="detection 0"):
        evaluate_coco(ground_truth, [dict(detections[0], bbox=[0.0, 0.0, float("inf"), 5.0])])


def test_inputs_not_mutated(data: tuple[dict, list[dict]]) -> None:
    ground_truth, detections = data
    gt_before, dt_before = copy.deepcopy(ground_truth), copy.deepcopy(detections)
    evaluate_coco(ground_truth, detections)
    evaluate_coco(ground_truth, detections, max_detections=10, image_ids=[0, 1])
    assert ground_truth == gt_before and detections == dt_before


def test_detections_to_coco_results_round_trip() -> None:
    torch = pytest.importorskip("torch")
    boxes = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.123, 0.456, 7.891, 9.999]])
    scores = torch.tensor([0.9, 0.123456789])
    labels = torch.tensor([0, 2])
    results = detections_to_coco_results(7, boxes, scores, labels, [1, 3, 7])
    assert results[0] == {"image_id": 7, "category_id": 1, "bbox": [10.0, 20.0, 40.0, 60.0],
                          "score": pytest.approx(0.9, abs=1e-6)}
    assert results[1]["category_id"] == 7 and results[1]["score"] == 0.12346
    x, y, w, h = results[1]["bbox"]
    assert all(type(v) is float for v in results[1]["bbox"])
    assert np.allclose([x, y, x + w, y + h], boxes[1].tolist(), atol=0.011)
    as_numpy = detections_to_coco_results(7, boxes.numpy(), scores.numpy(), labels.numpy(), [1, 3, 7])
    assert as_numpy == results
    assert detections_to_coco_results(7, np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=int), [1]) == []
    with pytest.raises(ValueError, match=r"image 7: label 3"):
        detections_to_coco_results(7, boxes, scores, torch.tensor([0, 3]), [1, 3, 7])


def test_per_class_csv(tmp_path: Path, data: tuple[dict, list[dict]]) -> None:
    ground_truth, detections = copy.deepcopy(data)
    ground_truth["categories"].append({"id": 9, "name": "ghost"})
    result = evaluate_coco(ground_truth, detections)
    path = result.per_class_csv(tmp_path / "runs" / "per_class.csv")
    assert path == tmp_path / "runs" / "per_class.csv"
    assert [p.name for p in path.parent.iterdir()] == ["per_class.csv"]  # no temporary file left
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == list(PER_CLASS_CSV_COLUMNS) == ["category_id", "name", "num_gt", "num_det", "AP", "AP50",
                                                      "AP75", "AP_small", "AP_medium", "AP_large"]
    assert [row[0] for row in rows[1:]] == ["1", "3", "7", "9", "all"]
    for row, expected in zip(rows[1:-1], result.per_class):
        assert row[1] == expected["name"]
        assert int(row[2]) == expected["num_gt"] and int(row[3]) == expected["num_det"]
        for cell, name in zip(row[4:], PER_CLASS_METRICS):
            assert (cell == "" and math.isnan(expected[name])) or float(cell) == expected[name]
    assert rows[4][4:] == [""] * 6  # the ghost class: nothing computable
    summary = rows[-1]
    assert summary[:4] == ["all", "all", str(sum(r["num_gt"] for r in result.per_class)), str(result.num_detections)]
    stat_names = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")
    assert [float(cell) for cell in summary[4:]] == [result.stats[name] for name in stat_names]
    result.per_class_csv(path)  # overwriting works the same way
    assert path.read_text().count("\n") == 6


def test_confusion_matrix_hand_built() -> None:
    categories = [{"id": cid, "name": f"class{cid}"} for cid in (1, 3, 7)]  # indices 0, 1, 2; background 3
    images = [{"id": 10, "width": 640, "height": 480}, {"id": 11, "width": 640, "height": 480},
              {"id": 12, "width": 640, "height": 480}]
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [0, 0, 100, 100], "iscrowd": 0},  # found
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [200, 0, 100, 100], "iscrowd": 0},  # found as 7
        {"id": 3, "image_id": 10, "category_id": 7, "bbox": [0, 200, 100, 100], "iscrowd": 0},  # missed
        {"id": 4, "image_id": 10, "category_id": 1, "bbox": [300, 300, 200, 150], "iscrowd": 1},  # crowd
        {"id": 5, "image_id": 11, "category_id": 3, "bbox": [0, 0, 100, 100], "iscrowd": 0},  # IoU 0.499
        {"id": 6, "image_id": 11, "category_id": 7, "bbox": [200, 200, 100, 100], "iscrowd": 0},  # IoU 0.5
    ]
    ground_truth = {"images": images, "annotations": annotations, "categories": categories}
    detections = [
        # Listed before the better detection of the same box: matching must go by score, not input order.
        {"image_id": 10, "category_id": 1, "bbox": [5, 5, 100, 100], "score": 0.7},  # duplicate -> FP
        {"image_id": 10, "category_id": 1, "bbox": [0, 0, 100, 100], "score": 0.9},  # 1 -> 1
        {"image_id": 10, "category_id": 7, "bbox": [205, 0, 100, 100], "score": 0.8},  # 7 -> 3 (mix-up)
        {"image_id": 10, "category_id": 7, "bbox": [0, 200, 100, 100], "score": 0.1},  # below threshold
        {"image_id": 10, "category_id": 3, "bbox": [320, 320, 50, 50], "score": 0.6},  # inside the crowd
        {"image_id": 10, "category_id": 3, "bbox": [250, 250, 100, 100], "score": 0.6},  # ioa 0.25 -> FP
        {"image_id": 11, "category_id": 3, "bbox": [0, 0, 100, 49.9], "score": 0.5},  # IoU < 0.5: FP + miss
        {"image_id": 11, "category_id": 7, "bbox": [200, 200, 100, 50], "score": 0.25},  # IoU 0.5, score = thr
        {"image_id": 12, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.5},  # image without GT -> FP
    ]
    matrix = confusion_matrix(ground_truth, detections, iou_threshold=0.5, score_threshold=0.25)
    expected = np.array([
        # true: 1  3  7  background      predicted:
        [1, 0, 0, 2],  # 1: the exact box; the duplicate and the image-12 box are FPs
        [0, 0, 0, 2],  # 3: the box half on the crowd, the box at IoU 0.499
        [0, 1, 1, 0],  # 7: the mix-up of the class-3 box, the box at IoU exactly 0.5
        [0, 1, 1, 0],  # background: the missed 7 (its only detection is below threshold), the 3 at IoU 0.499
    ])
    assert matrix.dtype == np.int64 and np.array_equal(matrix, expected), matrix
    # Without the crowd flag the crowd box is a miss and the detection inside it (IoU 1/12) a false positive.
    uncrowded = copy.deepcopy(ground_truth)
    uncrowded["annotations"][3]["iscrowd"] = 0
    assert confusion_matrix(uncrowded, detections)[[3, 1], [0, 3]].tolist() == [1, 3]
    # A lower threshold lets the low-score detection find the missed class-7 box.
    assert confusion_matrix(ground_truth, detections, score_threshold=0.05)[2, 2] == 2
    assert np.array_equal(confusion_matrix(ground_truth, []), np.diag([0, 0, 0, 0]) + np.array(
        [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 2, 2, 0]]))
    with pytest.raises(ValueError, match="42"):
        confusion_matrix(ground_truth, [dict(detections[0], category_id=42)])
