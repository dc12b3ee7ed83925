"""The figures of a run folder and of `anchorfree val --plots`: training curves and the evaluation's analysis.

    plot_results("runs/fcos_cpu/metrics.csv", "runs/fcos_cpu/results.png")      # losses, lr, val mAP per epoch
    result, detections = engine.evaluate(model, val_data, config, device)
    write_evaluation_plots(result, val_data.coco_ground_truth(), detections, val_data, "runs/fcos_cpu/plots")

Every curve of the evaluation comes from pycocotools' own accumulated arrays (`EvaluationResult.precision` and
`.scores`, shape (T IoU thresholds, R recall points, K classes, A areas, M maxDets), -1 where a class has no
ground truth), so the figures show exactly the numbers behind the reported AP; nothing is matched twice.
Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot, so importing this
module changes no global matplotlib state (backend, rcParams, open figures). Every PNG is written atomically.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from torchvision.utils import draw_bounding_boxes, make_grid

from anchorfree.drawing import class_colour, fit_to_tile, save_figure, save_image, unit_rgb
from anchorfree.data.images import load_image
from anchorfree.data.records import DetectionData, ImageRecord
from anchorfree.evaluation import EvaluationResult, confusion_matrix

DPI = 100
AREA_ALL = 0  # pycocotools' area ranges are (all, small, medium, large)
CLASS_LEGEND_LIMIT = 20  # more classes than this: no per-class legend entries (they would hide the curves)
ANNOTATION_LIMIT = 30  # more confusion-matrix rows than this: no numbers in the cells (unreadable)
EVALUATION_PLOTS = (
    "per_class.csv",
    "pr_curve_50.png",
    "pr_curve_50_95.png",
    "f1_curve.png",
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "val_predictions.png",
)


# ---------------------------------------------------------------------------------------------- training curves


def read_metrics_columns(metrics_csv: str | Path) -> dict[str, np.ndarray]:
    """metrics.csv as {column: float array}; an empty cell (e.g. val/mAP of an epoch without validation) is nan."""
    with Path(metrics_csv).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, np.ndarray] = {}
    for name in rows[0] if rows else []:
        values = []
        for row in rows:
            text = row.get(name) or ""
            try:
                values.append(float(text))
            except ValueError:
                values.append(math.nan)
        columns[name] = np.asarray(values, dtype=np.float64)
    return columns


def plot_results(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Training curves of a run: one panel per loss term, one for the learning rate, one for val mAP and AP50.

    Args:
        metrics_csv: a run's metrics.csv (columns epoch, lr, loss/<term>..., val/mAP, val/AP50, ...; the val
            cells are empty in epochs without validation, which are skipped in that panel).
        out_png: the PNG to write (atomically).
    Returns the PNG's path. Raises ValueError when the file has no rows.
    """
    columns = read_metrics_columns(metrics_csv)
    if "epoch" not in columns or len(columns["epoch"]) == 0:
        raise ValueError(f"{metrics_csv}: no epochs to plot (an empty file or no 'epoch' column)")
    epochs = columns["epoch"]
    loss_names = [name for name in columns if name.startswith("loss/")]
    panels = len(loss_names) + 2
    panel_columns = min(panels, 4)
    panel_rows = math.ceil(panels / panel_columns)
    figure = Figure(figsize=(3.6 * panel_columns, 3.0 * panel_rows), layout="constrained")
    axes = figure.subplots(panel_rows, panel_columns, squeeze=False).ravel()
    for axis, name in zip(axes, loss_names):
        axis.plot(epochs, columns[name], marker="o", markersize=3, color="tab:blue")
        axis.set_title(name)
    lr_axis, val_axis = axes[len(loss_names)], axes[len(loss_names) + 1]
    if "lr" in columns:
        lr_axis.plot(epochs, columns["lr"], marker="o", markersize=3, color="tab:orange")
    lr_axis.set_title("learning rate (end of epoch)")
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    plotted = False
    for name, colour in (("val/mAP", "tab:green"), ("val/AP50", "tab:red")):
        values = columns.get(name)
        if values is None:
            continue
        evaluated = np.isfinite(values)  # epochs without validation have empty cells
        if evaluated.any():
            val_axis.plot(epochs[evaluated], values[evaluated], marker="o", markersize=3, color=colour, label=name.removeprefix("val/"))
            plotted = True
    val_axis.set_title("validation")
    if plotted:
        val_axis.legend(loc="lower right")
        val_axis.set_ylim(bottom=0)
    else:
        val_axis.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=val_axis.transAxes, color="grey")
    for axis in axes[:panels]:
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    for axis in axes[panels:]:
        axis.set_visible(False)
    return save_figure(figure, out_png, DPI)


# -------------------------------------------------------------------------------------- precision-recall and F1


def _class_names(result: EvaluationResult) -> list[str]:
    return [str(row["name"]) for row in result.per_class]


def _check_arrays(result: EvaluationResult) -> None:
    if result.precision is None or result.scores is None or result.iou_thresholds is None or result.recall_points is None:
        raise ValueError("this EvaluationResult has no precision/scores arrays (it was built by hand); use evaluate_coco's result")


def _iou_index(result: EvaluationResult, iou: float) -> int:
    _check_arrays(result)
    matches = np.flatnonzero(np.isclose(np.asarray(result.iou_thresholds), iou))
    if matches.size == 0:
        raise ValueError(f"IoU threshold {iou} is not among the evaluated thresholds {list(result.iou_thresholds)}")
    return int(matches[0])


def precision_curves(result: EvaluationResult, iou: str = "50") -> np.ndarray:
    """(K, R) precision at each recall point per class, area "all", the largest maxDets; nan for a class
    without ground truth.

    iou: "50" takes the IoU 0.5 slice; "50:95" averages the valid (> -1) entries over the 10 IoU thresholds,
    as COCO's AP does (so the area under each curve is the class's AP).
    """
    precision = np.asarray(result.precision, dtype=np.float64)[..., AREA_ALL, -1]  # (T, R, K, A, M) -> (T, R, K)
    if iou == "50":
        curves = precision[_iou_index(result, 0.5)]  # (R, K)
        curves = np.where(curves > -1, curves, np.nan)
    elif iou == "50:95":
        valid = precision > -1
        counts = valid.sum(axis=0)  # (R, K)
        with np.errstate(invalid="ignore"):
            curves = np.where(counts > 0, np.where(valid, precision, 0.0).sum(axis=0) / np.maximum(counts, 1), np.nan)
    else:
        raise ValueError(f"iou must be '50' or '50:95', got {iou!r}")
    return curves.T  # (R, K) -> (K, R)


def plot_pr_curves(result: EvaluationResult, out_png: str | Path, iou: str = "50") -> Path:
    """Precision against recall per class (thin) and their mean over classes (thick), from COCOeval's arrays.

    Args:
        result: an evaluation with `precision`, `iou_thresholds`, `recall_points` and `per_class`.
        iou: "50" (IoU 0.5) or "50:95" (averaged over IoU 0.5:0.95, COCO's mAP).
    The legend gives each class's AP at that IoU (the mean of its curve); classes without ground truth are left
    out. Returns the PNG's path.
    """
    curves = precision_curves(result, iou)  # (K, R)
    recall = np.asarray(result.recall_points, dtype=np.float64)
    names = _class_names(result)
    figure = Figure(figsize=(7.5, 6.0), layout="constrained")
    axis = figure.add_subplot()
    has_ground_truth = ~np.isnan(curves).all(axis=1)
    show_legend = has_ground_truth.sum() <= CLASS_LEGEND_LIMIT
    for k in np.flatnonzero(has_ground_truth):
        label = f"{names[k]} {np.nanmean(curves[k]):.3f}" if show_legend else None
        axis.plot(recall, curves[k], linewidth=1.0, alpha=0.8, color=unit_rgb(class_colour(int(k))), label=label)
    if has_ground_truth.any():
        mean = np.nanmean(curves[has_ground_truth], axis=0)  # (R,)
        axis.plot(recall, mean, linewidth=3.0, color="black", label=f"all classes {np.mean(mean):.3f}")
        axis.legend(loc="lower left", fontsize="small", title=f"AP@{'0.5' if iou == '50' else '0.5:0.95'}")
    else:
        axis.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=axis.transAxes, color="grey")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision (COCO 101-point interpolated)")
    axis.set_title(f"precision-recall, IoU {'0.5' if iou == '50' else '0.5:0.95 (mean)'}")
    axis.grid(alpha=0.3)
    return save_figure(figure, out_png, DPI)


def f1_curves(result: EvaluationResult, confidences: np.ndarray) -> np.ndarray:
    """(K, C) F1 at IoU 0.5 per class for each confidence threshold in `confidences` (C,); nan for a class
    without ground truth.

    Derived from COCO's accumulated arrays, not from a separate matcher: at recall point r, `scores[r]` is the
    score of the detection at which recall r is reached and `precision[r]` is the interpolated precision there
    (the best precision at any recall >= r), so F1 = 2 p r / (p + r) is an upper envelope of the raw F1 and its
    recall is rounded down to COCO's 101 recall points. Keeping the detections scoring >= c reaches the largest
    recall point whose score is >= c; a threshold above every such score keeps nothing (F1 = 0).
    """
    t = _iou_index(result, 0.5)
    precision = np.asarray(result.precision, dtype=np.float64)[t, :, :, AREA_ALL, -1]  # (R, K)
    scores = np.asarray(result.scores, dtype=np.float64)[t, :, :, AREA_ALL, -1]  # (R, K)
    recall = np.asarray(result.recall_points, dtype=np.float64)  # (R,)
    curves = np.full((precision.shape[1], len(confidences)), np.nan)
    for k in range(precision.shape[1]):
        if (precision[:, k] <= -1).all():
            continue  # no ground truth for this class
        # Recall points beyond the highest recall reached are left at precision 0 by pycocotools; the reached
        # ones form a prefix (scores fall as recall rises), each with precision > 0.
        reached = np.flatnonzero(precision[:, k] > 0)
        if reached.size == 0:
            curves[k] = 0.0
            continue
        p, r, s = precision[reached, k], recall[reached], scores[reached, k]
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        # s is non-increasing: the number of reached points with s >= c, minus one, indexes the largest recall.
        last = np.searchsorted(-s, -np.asarray(confidences), side="right") - 1  # (C,)
        curves[k] = np.where(last >= 0, f1[np.maximum(last, 0)], 0.0)
    return curves


def plot_f1_curve(result: EvaluationResult, out_png: str | Path, grid_points: int = 1001) -> Path:
    """F1 against confidence threshold at IoU 0.5, per class (thin) and the mean over classes (thick).

    The curves come from COCO's interpolated precision (see `f1_curves`), evaluated on a common grid of
    `grid_points` confidences in [0, 1]. The best threshold of the mean curve (the highest one of a tie) is
    marked and given in the title.
    Returns the PNG's path.
    """
    confidences = np.linspace(0.0, 1.0, grid_points)
    curves = f1_curves(result, confidences)  # (K, C)
    names = _class_names(result)
    figure = Figure(figsize=(7.5, 6.0), layout="constrained")
    axis = figure.add_subplot()
    has_ground_truth = ~np.isnan(curves).all(axis=1)
    show_legend = has_ground_truth.sum() <= CLASS_LEGEND_LIMIT
    for k in np.flatnonzero(has_ground_truth):
        label = names[k] if show_legend else None
        axis.plot(confidences, curves[k], linewidth=1.0, alpha=0.8, color=unit_rgb(class_colour(int(k))), label=label)
    title = "F1 at IoU 0.5 (from COCO's interpolated precision)"
    if has_ground_truth.any():
        mean = curves[has_ground_truth].mean(axis=0)  # (C,)
        # Of thresholds tied at the best F1, the highest: it keeps the fewest detections for the same F1.
        best = len(mean) - 1 - int(np.argmax(mean[::-1]))
        axis.plot(confidences, mean, linewidth=3.0, color="black", label="all classes")
        axis.axvline(confidences[best], color="black", linestyle="--", linewidth=1.0)
        axis.plot([confidences[best]], [mean[best]], marker="o", markersize=8, color="black")
        title += f"\nall classes: best F1 {mean[best]:.3f} at confidence {confidences[best]:.3f}"
        axis.legend(loc="lower left", fontsize="small")
    else:
        axis.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=axis.transAxes, color="grey")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("confidence threshold")
    axis.set_ylabel("F1")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    return save_figure(figure, out_png, DPI)


# ------------------------------------------------------------------------------------------- confusion matrix


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], out_png: str | Path, normalize: bool = False) -> Path:
    """A confusion matrix as a heat map with the numbers in the cells (up to 30 rows).

    Args:
        matrix: (K + 1, K + 1) counts; rows are predicted classes, columns true classes, the last row and
            column "background" (a detection matching no object / an object no detection found).
        class_names: the K names, in the matrix's order.
        normalize: divide each column by its sum, so a column shows where the objects of one true class went
            (a column with no objects stays 0).
    Returns the PNG's path.
    """
    matrix = np.asarray(matrix)
    size = len(class_names) + 1
    if matrix.shape != (size, size):
        raise ValueError(f"a confusion matrix for {len(class_names)} classes must be ({size}, {size}), got {matrix.shape}")
    values = matrix.astype(np.float64)
    if normalize:
        totals = values.sum(axis=0, keepdims=True)  # (1, K + 1): objects per true class
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
    labels = [*class_names, "background"]
    side = min(max(6.0, 0.45 * size + 2.5), 30.0)
    figure = Figure(figsize=(side, side * 0.85), layout="constrained")
    axis = figure.add_subplot()
    image = axis.imshow(values, cmap="Blues", vmin=0, vmax=1.0 if normalize else max(values.max(), 1.0))
    figure.colorbar(image, ax=axis, shrink=0.8)
    axis.set_xticks(range(size), labels, rotation=90)
    axis.set_yticks(range(size), labels)
    axis.set_xlabel("true")
    axis.set_ylabel("predicted")
    axis.set_title("confusion matrix" + (" (columns normalised by true class)" if normalize else " (counts)"))
    if size <= ANNOTATION_LIMIT:
        threshold = values.max() / 2 if values.max() > 0 else 1.0
        for row in range(size):
            for column in range(size):
                if values[row, column] == 0:
                    continue
                text = f"{values[row, column]:.2f}" if normalize else f"{int(matrix[row, column])}"
                colour = "white" if values[row, column] > threshold else "black"
                axis.text(column, row, text, ha="center", va="center", fontsize="small", color=colour)
    return save_figure(figure, out_png, DPI)


# ----------------------------------------------------------------------------------------- prediction samples


def _draw(tile: torch.Tensor, boxes: list[list[float]], labels: list[int], captions: list[str], scale: tuple[float, float]) -> torch.Tensor:
    if not boxes:
        return tile
    scaled = torch.tensor(boxes, dtype=torch.float32) * torch.tensor([scale[0], scale[1]] * 2)  # (D, 4) x1, y1, x2, y2 on the tile
    colours = [class_colour(label) for label in labels]
    # White text on a box of the class's colour: readable on any image.
    return draw_bounding_boxes(tile, scaled, labels=captions, colors=colours, width=2, label_colors="white", fill_labels=True)


def plot_predictions_grid(
    records: Sequence[ImageRecord],
    detections: list[dict[str, Any]],
    out_png: str | Path,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    count: int = 8,
    score_threshold: float = 0.3,
    pairs_per_row: int = 2,
    tile_size: int = 320,
) -> Path:
    """Sample images with their ground truth (left of each pair) and the detections scoring >= `score_threshold`
    (right), class names (and scores) drawn in each class's colour.

    Args:
        records: the evaluated split's images (`DetectionData.records`); boxes in their x1, y1, x2, y2 pixels.
        detections: COCO results for them ({"image_id", "category_id" (the dataset's ids), "bbox": [x, y, w, h]
            in original-image pixels, "score"}), as `engine.evaluate` returns them.
        class_names, category_ids: the split's classes in label order (`DetectionData.class_names` and
            `.category_ids`), mapping a detection's category id to its name and colour.
        count: images to draw, spread evenly over `records` (the same images every time for the same split).
    Each image is scaled to fit a `tile_size` square; pairs sit `pairs_per_row` to a row. Returns the PNG's path.
    """
    if not records:
        raise ValueError("no images to draw")
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for detection in detections:
        if detection["score"] >= score_threshold:
            by_image.setdefault(int(detection["image_id"]), []).append(detection)
    indices = sorted({int(i) for i in np.linspace(0, len(records) - 1, min(count, len(records)))})
    tiles = []
    for index in indices:
        record = records[index]
        tile, scale_x, scale_y = fit_to_tile(load_image(record.path), tile_size)
        labels = record.labels.tolist()
        truth = _draw(tile, record.boxes.tolist(), labels, [class_names[label] for label in labels], (scale_x, scale_y))
        found = sorted(by_image.get(record.image_id, []), key=lambda detection: -detection["score"])
        boxes = [[x, y, x + width, y + height] for x, y, width, height in (detection["bbox"] for detection in found)]
        found_labels = [label_of[int(detection["category_id"])] for detection in found]
        captions = [f"{class_names[label]} {detection['score']:.2f}" for label, detection in zip(found_labels, found)]
        tiles += [truth, _draw(tile, boxes, found_labels, captions, (scale_x, scale_y))]
    grid = make_grid(tiles, nrow=2 * pairs_per_row, padding=4, pad_value=255)  # (3, rows * (tile + 4) + 4, ...)
    return save_image(grid, out_png)


# ------------------------------------------------------------------------------------------- all of the above


def write_evaluation_plots(
    result: EvaluationResult,
    ground_truth: dict,
    detections: list[dict[str, Any]],
    data: DetectionData,
    out_folder: str | Path,
    class_names: Sequence[str] | None = None,
    confusion_iou: float = 0.5,
    confusion_score: float = 0.25,
    score_threshold: float = 0.3,
    count: int = 8,
) -> dict[str, Path]:
    """The analysis of one evaluation, written into `out_folder`: per_class.csv, pr_curve_50.png,
    pr_curve_50_95.png, f1_curve.png, confusion_matrix.png, confusion_matrix_normalized.png, val_predictions.png.

    Args:
        result, detections: what `engine.evaluate` returned for `data`.
        ground_truth: `data.coco_ground_truth()` (the evaluator's input).
        class_names: names to show (default: the split's).
        confusion_iou, confusion_score: a detection scoring >= `confusion_score` is matched to an object at
            IoU >= `confusion_iou` for the confusion matrix.
        score_threshold, count: detections drawn on, and images in, val_predictions.png.
    Returns {file name: path}.
    """
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    names = list(class_names or data.class_names)
    # The arrays (and the confusion matrix) order classes by category id, as the evaluator sorts them.
    sorted_names = [names[data.category_ids.index(category_id)] for category_id in sorted(data.category_ids)]
    paths = {name: out_folder / name for name in EVALUATION_PLOTS}
    result.per_class_csv(paths["per_class.csv"])
    plot_pr_curves(result, paths["pr_curve_50.png"], iou="50")
    plot_pr_curves(result, paths["pr_curve_50_95.png"], iou="50:95")
    plot_f1_curve(result, paths["f1_curve.png"])
    matrix = confusion_matrix(ground_truth, detections, iou_threshold=confusion_iou, score_threshold=confusion_score)
    plot_confusion_matrix(matrix, sorted_names, paths["confusion_matrix.png"])
    plot_confusion_matrix(matrix, sorted_names, paths["confusion_matrix_normalized.png"], normalize=True)
    plot_predictions_grid(data.records, detections, paths["val_predictions.png"], names, data.category_ids, count, score_threshold)
    return paths


# ------------------------------------------------------------------------------------------------ TensorBoard


class TensorBoardLogger:
    """The per-epoch scalars of metrics.csv, and images, in a TensorBoard log folder.

    With `enabled=False`, or when the `tensorboard` package is missing (which warns once), every call does
    nothing, so training goes on. Usable as a context manager (closes the writer).
    """

    def __init__(self, log_dir: str | Path, enabled: bool = True) -> None:
        self.log_dir = Path(log_dir)
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter  # imports the optional `tensorboard` package
        except ImportError as error:
            warnings.warn(f"train.tensorboard=true but TensorBoard is not available ({error}); install it with `pip install tensorboard`. "
                          "Training continues without TensorBoard logs.", stacklevel=2)
            return
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def log_scalars(self, row: dict[str, Any], epoch: int) -> None:
        """Every numeric column of a metrics.csv row (loss/*, lr, val/*, ...) at step `epoch`."""
        if self.writer is None:
            return
        for name, value in row.items():
            if name != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def log_image(self, tag: str, png: str | Path, epoch: int) -> None:
        """A PNG file (e.g. plots/val_predictions.png) as an image at step `epoch`."""
        if self.writer is None:
            return
        with Image.open(png) as image:
            pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
        self.writer.add_image(tag, pixels, epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
