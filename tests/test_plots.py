"""The figures: training curves, PR / F1 curves from COCOeval's arrays, confusion matrices, prediction grids,
and what a training run and `anchorfree val --plots` leave on disk."""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import anchorfree
from anchorfree import plots, run_folder
from anchorfree.cli import main
from anchorfree.data.formats import read_dataset
from anchorfree.evaluation import evaluate_coco

pytestmark = pytest.mark.filterwarnings("ignore:no detections on the evaluated images")

EVALUATION_PNGS = [name for name in plots.EVALUATION_PLOTS if name.endswith(".png")]


def assert_png(path: Path) -> None:
    """A complete PNG of a sane size (not a blank 1x1, not a runaway figure)."""
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        image.load()
    assert 300 <= width <= 4000 and 300 <= height <= 4000, (path, image.size)


def assert_no_temporaries(folder: Path) -> None:
    assert [path.name for path in folder.rglob("*.tmp")] == []


# A hand-made scene: 3 images, classes cat (id 3), dog (id 7) and bird (id 9, no ground truth).
GROUND_TRUTH = {
    "images": [{"id": image_id, "width": 200, "height": 200} for image_id in (1, 2, 3)],
    "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "bird"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 50, 50]},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [100, 100, 60, 40]},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [20, 30, 40, 40]},
        {"id": 4, "image_id": 3, "category_id": 7, "bbox": [5, 5, 100, 100]},
    ],
}
DETECTIONS = [
    {"image_id": 1, "category_id": 3, "bbox": [12, 10, 50, 48], "score": 0.9},  # cat TP
    {"image_id": 3, "category_id": 3, "bbox": [150, 150, 20, 20], "score": 0.8},  # cat FP (nothing there)
    {"image_id": 3, "category_id": 7, "bbox": [30, 30, 100, 100], "score": 0.7},  # dog FP (IoU 0.39)
    {"image_id": 1, "category_id": 7, "bbox": [100, 100, 60, 40], "score": 0.6},  # dog TP
    {"image_id": 2, "category_id": 7, "bbox": [20, 30, 40, 40], "score": 0.5},  # dog FP (on the cat)
    {"image_id": 2, "category_id": 3, "bbox": [22, 30, 40, 40], "score": 0.4},  # cat TP
]


@pytest.fixture(scope="module")
def scene_result():
    return evaluate_coco(GROUND_TRUTH, DETECTIONS)


# ---------------------------------------------------------------------------------------------- training curves


def write_metrics(path: Path, rows: list[dict[str, object]]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_plot_results_with_epochs_without_validation(tmp_path: Path) -> None:
    rows = []
    for epoch in range(1, 7):
        row: dict[str, object] = {"epoch": epoch, "step": 4 * epoch, "lr": 1e-3 / epoch,
                                  "loss/classification": 1.0 / epoch, "loss/box": 0.5 / epoch, "loss/centerness": 0.6,
                                  "images_per_second": 20.0}
        if epoch % 2 == 0:  # validation every second epoch: the other rows have empty val cells
            row.update({"val/mAP": 0.1 * epoch, "val/AP50": 0.15 * epoch})
        rows.append(row)
    metrics = write_metrics(tmp_path / "metrics.csv", rows)
    assert np.isnan(plots.read_metrics_columns(metrics)["val/mAP"][::2]).all()  # empty cells read as nan
    out = plots.plot_results(metrics, tmp_path / "results.png")
    assert out == tmp_path / "results.png"
    assert_png(out)
    assert_no_temporaries(tmp_path)


def test_plot_results_without_any_validation_and_of_an_empty_file(tmp_path: Path) -> None:
    metrics = write_metrics(tmp_path / "metrics.csv", [{"epoch": 1, "step": 4, "lr": 0.01, "loss/heatmap": 2.0}])
    assert_png(plots.plot_results(metrics, tmp_path / "results.png"))
    (tmp_path / "empty.csv").write_text("epoch,lr\n")
    with pytest.raises(ValueError, match="no epochs to plot"):
        plots.plot_results(tmp_path / "empty.csv", tmp_path / "empty.png")


# -------------------------------------------------------------------------------------------------- PR and F1


def test_precision_curves_average_to_the_reported_ap(scene_result) -> None:
    """The area under each plotted curve is the class's AP: the curves are COCOeval's own numbers."""
    for iou, key in (("50", "AP50"), ("50:95", "AP")):
        curves = plots.precision_curves(scene_result, iou)  # (K, R)
        assert curves.shape == (3, 101)
        for k, row in enumerate(scene_result.per_class[:2]):
            assert np.mean(curves[k]) == pytest.approx(row[key], abs=1e-12)
        assert np.isnan(curves[2]).all()  # bird: no ground truth
    assert np.nanmean(plots.precision_curves(scene_result, "50:95")[:2].mean(axis=1)) == pytest.approx(scene_result.stats["mAP"])


def test_f1_curves_match_the_f1_counted_by_hand(scene_result) -> None:
    confidences = np.array([0.0, 0.3, 0.45, 0.55, 0.65, 0.85, 0.95])
    cat, dog, bird = plots.f1_curves(scene_result, confidences)
    # cat: >= 0.4 keeps 3 detections, 2 TP of 2 objects: P 2/3, R 1 -> 0.8. Above 0.4: recall 0.5 with COCO's
    # interpolated precision 1 (the 0.9 detection alone) -> 2/3; above 0.9 nothing is kept -> 0.
    assert cat == pytest.approx([0.8, 0.8, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 0.0])
    # dog: its only TP scores 0.6, under a FP at 0.7: P 1/2, R 1/2 -> 0.5 up to 0.6, then 0.
    assert dog == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0])
    assert np.isnan(bird).all()


def test_pr_and_f1_plots_write_pngs(scene_result, tmp_path: Path) -> None:
    assert_png(plots.plot_pr_curves(scene_result, tmp_path / "pr_50.png", iou="50"))
    assert_png(plots.plot_pr_curves(scene_result, tmp_path / "pr_50_95.png", iou="50:95"))
    assert_png(plots.plot_f1_curve(scene_result, tmp_path / "f1.png"))
    with pytest.raises(ValueError, match="iou must be '50' or '50:95'"):
        plots.plot_pr_curves(scene_result, tmp_path / "bad.png", iou="75")
    assert_no_temporaries(tmp_path)


def test_pr_and_f1_plots_of_an_evaluation_without_detections(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="no detections"):
        empty = evaluate_coco(GROUND_TRUTH, [])
    assert (plots.f1_curves(empty, np.array([0.0, 0.5]))[:2] == 0).all()
    assert_png(plots.plot_pr_curves(empty, tmp_path / "pr.png"))
    assert_png(plots.plot_f1_curve(empty, tmp_path / "f1.png"))


# ------------------------------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_plots_counts_and_normalised(tmp_path: Path) -> None:
    matrix = np.array([[5, 1, 0, 2], [0, 7, 1, 0], [1, 0, 3, 4], [2, 1, 0, 0]], dtype=np.int64)
    assert_png(plots.plot_confusion_matrix(matrix, ["cat", "dog", "bird"], tmp_path / "counts.png"))
    assert_png(plots.plot_confusion_matrix(matrix, ["cat", "dog", "bird"], tmp_path / "normalized.png", normalize=True))
    with pytest.raises(ValueError, match=r"must be \(3, 3\)"):
        plots.plot_confusion_matrix(matrix, ["cat", "dog"], tmp_path / "bad.png")


def test_confusion_matrix_of_many_classes_stays_a_sane_size(tmp_path: Path) -> None:
    names = [f"class {index}" for index in range(80)]
    matrix = np.random.default_rng(0).integers(0, 5, size=(81, 81))
    assert_png(plots.plot_confusion_matrix(matrix, names, tmp_path / "coco80.png", normalize=True))


# ------------------------------------------------------------------------------------------ prediction samples


@pytest.fixture(scope="module")
def val_data(tiny_dataset: Path):
    return read_dataset(tiny_dataset / "instances_val.json", "val")


def perfect_detections(data) -> list[dict]:
    """Every ground-truth box as a detection of its class (original category ids, COCO xywh)."""
    return [
        {"image_id": record.image_id, "category_id": data.category_ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 0.9}
        for record in data.records
        for (x1, y1, x2, y2), label in zip(record.boxes.tolist(), record.labels.tolist())
    ]


def test_predictions_grid_draws_ground_truth_and_predictions_side_by_side(val_data, tmp_path: Path) -> None:
    detections = perfect_detections(val_data)
    detections.append({**detections[0], "score": 0.1})  # under the threshold: not drawn
    out = plots.plot_predictions_grid(
        val_data.records, detections, tmp_path / "grid.png", val_data.class_names, val_data.category_ids, count=4, tile_size=200
    )
    assert_png(out)
    with Image.open(out) as image:  # 4 pairs, 2 pairs a row: 2 rows of 4 tiles with 4 px gaps
        assert image.size == (4 * 204 + 4, 2 * 204 + 4)
        pixels = np.asarray(image.convert("RGB")).astype(int)
    # Perfect detections: the right tile of each pair shows the same boxes as the left one (captions differ).
    left, right = pixels[4:204, 4:204], pixels[4:204, 208:408]
    assert np.abs(left - right).mean() < 10


def test_write_evaluation_plots_writes_every_file(val_data, tmp_path: Path) -> None:
    detections = perfect_detections(val_data)
    result = evaluate_coco(val_data.coco_ground_truth(), detections)
    paths = plots.write_evaluation_plots(result, val_data.coco_ground_truth(), detections, val_data, tmp_path / "plots")
    assert sorted(paths) == sorted(plots.EVALUATION_PLOTS)
    for name in EVALUATION_PNGS:
        assert_png(paths[name])
    with paths["per_class.csv"].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == [*val_data.class_names, "all"]
    assert_no_temporaries(tmp_path)


# --------------------------------------------------------------------------------------------------- TensorBoard


def test_tensorboard_logger_warns_once_and_does_nothing_without_tensorboard(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import raise ImportError
    with pytest.warns(UserWarning, match="TensorBoard is not available"):
        logger = plots.TensorBoardLogger(tmp_path / "tensorboard")
    assert not logger.enabled
    logger.log_scalars({"epoch": 1, "loss/box": 0.5}, 1)
    logger.close()
    assert not (tmp_path / "tensorboard").exists()
    assert not plots.TensorBoardLogger(tmp_path / "off", enabled=False).enabled


# -------------------------------------------------------------------------------------- training and the CLI


@pytest.fixture(scope="module")
def plotted_run(tmp_path_factory: pytest.TempPathFactory, tiny_overrides) -> Path:
    # A zero score threshold: the untrained model's detections are never empty, so every plot has content.
    overrides = tiny_overrides(tmp_path_factory.mktemp("plots"), model__fcos__score_threshold=0.0)
    return anchorfree.train("fcos_cpu", overrides, progress=False)


def test_training_leaves_results_and_the_best_evaluations_plots(plotted_run: Path) -> None:
    assert_png(plotted_run / "results.png")
    for name in EVALUATION_PNGS:
        assert_png(plotted_run / "plots" / name)
    assert (plotted_run / "plots" / "per_class.csv").stat().st_size > 0
    assert not (plotted_run / "tensorboard").exists()  # train.tensorboard is off by default
    assert_no_temporaries(plotted_run)


def test_a_failing_plot_warns_once_and_training_goes_on(tmp_path: Path, tiny_overrides, monkeypatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no fonts here")

    monkeypatch.setattr(run_folder, "plot_results", broken)
    monkeypatch.setattr(run_folder, "write_evaluation_plots", broken)
    overrides = tiny_overrides(tmp_path, train__epochs=2)
    with pytest.warns(UserWarning, match="could not write") as caught:
        run = anchorfree.train("fcos_cpu", overrides, progress=False)
    messages = [str(warning.message) for warning in caught if "could not write" in str(warning.message)]
    assert len([message for message in messages if "results.png" in message]) == 1  # once, over two epochs
    assert (run / "weights" / "last.safetensors").is_file() and not (run / "results.png").exists()


def test_val_with_plots_writes_them_and_prints_the_per_class_table(plotted_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "val_plots"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["val", str(plotted_run / "weights" / "best.safetensors"), "--device", "cpu", "--plots", str(out)])
    assert code == 0
    printed = stdout.getvalue()
    assert printed.startswith("COCO bbox: 8 images, ") and "num_gt" in printed
    assert printed.strip().splitlines()[-1] == f"plots: {out}"
    for name in EVALUATION_PNGS:
        assert_png(out / name)
    assert (out / "per_class.csv").is_file()
