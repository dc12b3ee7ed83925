"""Differential tests: anchorfree.evaluation must give exactly pycocotools' numbers."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from anchorfree.evaluation import STAT_NAMES, detections_to_coco_results, evaluate_coco

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


def test_per_class_ap_matches_single_category_runs(tmp_path: Path, data: tuple[dict, list[dict]]) -> None:
    ground_truth, detections = data
    result = evaluate_coco(ground_truth, detections)
    assert [row["category_id"] for row in result.per_class] == list(CATEGORY_IDS)
    for row in result.per_class:
        cid = row["category_id"]
        reference = reference_summarize(tmp_path, ground_truth, detections, cat_ids=[cid])
        assert abs(row["AP"] - reference[0]) < 1e-6 and abs(row["AP50"] - reference[1]) < 1e-6
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
    assert ghost["num_detections"] == 1
    assert_stats_equal(result.stats, reference_summarize(tmp_path, ground_truth, detections))
    real_aps = [row["AP"] for row in result.per_class[:-1]]
    assert abs(np.mean(real_aps) - result.stats["mAP"]) < 1e-6
    assert result.to_dict()["per_class"][-1]["AP"] is None


def test_zero_detections(data: tuple[dict, list[dict]]) -> None:
    ground_truth, _ = data
    with pytest.warns(UserWarning, match="no detections"):
        result = evaluate_coco(ground_truth, [])
    assert all(result.stats[name] == 0.0 for name in STAT_NAMES), result.stats
    assert all(row["AP"] == 0.0 for row in result.per_class)
    assert result.num_detections == 0


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
