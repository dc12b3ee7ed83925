"""What each family is trained to predict, and what it predicts, drawn on the image as the network sees it.

    model = build_model(config.model, len(data.class_names))       # or anchorfree.load(weights).model
    image, target = network_input(data, index, config)              # the config's evaluation transform
    drawn = draw_targets(model, image, target, data.class_names, "runs/targets/000000_fcos.png")

The model is used only through its contract (`anchorfree.models.detector.DetectionModel`): the targets drawn are
what `model.training_targets(model.head_outputs(batch), ...)` returns, the very targets its loss sees in training
(FCOS: `fcos.assign_targets`, whose positives are weighted by `fcos.centerness_targets` as `fcos_loss` weights
them; CenterNet: `centernet.centernet_targets`; CornerNet: `cornernet.cornernet_targets`), on the maps of its own
head outputs for this input. A map's stride is the padded input's size over the map's. With `predictions=True`
the model's head maps for the same input sit beside the targets, with its detections from the eval-mode forward
(the one decode path). The drawing is picked by `model.family` in `TARGET_DRAWINGS`.

Images are the de-normalised network input (resized, letterboxed when the config letterboxes); coordinates are
its pixels. Figures use matplotlib's object API (Figure + FigureCanvasAgg, no pyplot state); PNGs are written
atomically. Each drawing function returns what it drew (counts and arrays), so a test can check it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from anchorfree.drawing import IGNORE_COLOUR, class_colour, save_figure, unit_rgb
from anchorfree.config import Config
from anchorfree.data.records import DetectionData
from anchorfree.data.splits import evaluation_dataset
from anchorfree.data.transforms import denormalize
from anchorfree.models import centernet, cornernet, fcos
from anchorfree.models.detector import DetectionModel, batch_images
from anchorfree.outputs import data_inputs, refuse_overwriting_inputs, unique_output_names
from anchorfree.ops.boxes import boxes_to_distances

PANEL_INCHES = 5.5  # the longer side of a full panel
DPI = 100
LEGEND_INCHES = 0.9  # below the FCOS panels
LEVEL_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")  # FPN levels, finest first
OBJECT_COLOURS = matplotlib.colormaps["tab20"].colors  # CornerNet pairs, one per object
HEATMAP_COLOURS = "magma"
MAX_DRAWN_DETECTIONS = 50  # the best ones; an untrained model's many low-score boxes would hide the image
OVERRIDE_TOKEN = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")  # `model.fcos.head_convs=2`, as opposed to an image name


# --------------------------------------------------------------------------------------------------- inputs


def network_input(data: DetectionData, index: int, config: Config) -> tuple[torch.Tensor, dict[str, Any]]:
    """Image `index` of `data` through the config's evaluation transform, as `evaluate` feeds the model.

    Returns:
        image (3, H, W) float, normalised; target {"boxes" (M, 4) in its pixels, "labels", "iscrowd", ...}
        (see `DetectionDataset`).
    """
    return evaluation_dataset(config, data)[index]


def select_images(data: DetectionData, images: Sequence[int | str] | None = None, count: int = 4) -> list[int]:
    """Record indices for `images`: ints (or digit strings) are indices, other strings match a record's file
    name, its base name or its stem. Without `images`, the first `count` records.

    Raises:
        FileNotFoundError: an index out of range, or a name that no record (or more than one) has.
    """
    records = data.records
    if not images:
        return list(range(min(max(count, 0), len(records))))
    indices = []
    for image in images:
        if isinstance(image, int) or str(image).isdigit():
            index = int(image)
            if not 0 <= index < len(records):
                raise FileNotFoundError(f"image index {index} is out of range: {data.source} has {len(records)} images")
            indices.append(index)
            continue
        name = str(image)
        matches = [
            index
            for index, record in enumerate(records)
            if name in (record.file_name, Path(record.file_name).name, Path(record.file_name).stem, str(record.path))
        ]
        if len(matches) != 1:
            examples = ", ".join(record.file_name for record in records[:3])
            problem = "no image" if not matches else f"{len(matches)} images"
            raise FileNotFoundError(f"{data.source}: {problem} named {name!r} (give an index or a file name, e.g. {examples})")
        indices.append(matches[0])
    return indices


def split_override_tokens(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """(image tokens, dotted key=value tokens): the command line's `--images` list also swallows overrides after it."""
    overrides = [token for token in tokens if OVERRIDE_TOKEN.match(token)]
    return [token for token in tokens if not OVERRIDE_TOKEN.match(token)], overrides


# ---------------------------------------------------------------------------------------------- dispatcher


def draw_targets(
    model: torch.nn.Module,
    image: torch.Tensor,
    target: dict[str, Any],
    class_names: list[str],
    out_png: str | Path,
    predictions: bool = False,
    score_threshold: float = 0.3,
) -> dict[str, Any]:
    """Draw the training targets of `model`'s family for one network input (and, with `predictions`, its outputs).

    Args:
        model: a `DetectionModel` of a family in `TARGET_DRAWINGS` (its `training_targets` give the targets, its
            `head_outputs` the maps they fill). Its weights matter only with `predictions`.
        image: (3, H, W) normalised network input; target: its "boxes" (M, 4) in input pixels, "labels" (M,),
            "iscrowd" (M,) optional.
        class_names: in label order.
        out_png: the PNG to write (atomically).
        predictions: also draw the model's head maps and its detections above `score_threshold`.
        The model is put in eval mode and run on the input (also without `predictions`: its head outputs give
        the maps the targets fill).

    Returns:
        What was drawn, per family (see `draw_fcos_targets`, `draw_centernet_targets`, `draw_cornernet_targets`).

    Raises:
        TypeError: `model` is not a `DetectionModel`. ValueError: its family has no drawing.
    """
    if not isinstance(model, DetectionModel):
        raise TypeError(f"no target drawing for {type(model).__name__}: it is not a detection model (anchorfree.models.detector.DetectionModel)")
    drawing = TARGET_DRAWINGS.get(model.family)
    if drawing is None:
        raise ValueError(f"no target drawing for the {model.family!r} family; the families with one are {', '.join(TARGET_DRAWINGS)}")
    return drawing(model, image, target, class_names, out_png, predictions, score_threshold)


def write_targets(
    model: torch.nn.Module,
    config: Config,
    data: DetectionData,
    indices: Sequence[int],
    out: str | Path,
    predictions: bool = False,
    score_threshold: float = 0.3,
) -> list[Path]:
    """`draw_targets` for records `indices` of `data`, each to `<out>/<image stem>_<family>.png` (a counter,
    `<stem>_2_<family>.png`, where two images share a stem); returns the paths. Nothing is written when a path
    would replace one of the split's files (OutputOverwritesInput)."""
    names = [Path(data.records[index].file_name) for index in indices]
    paths, _ = unique_output_names(names, out, lambda _: f"_{config.model.name}.png")
    refuse_overwriting_inputs(paths, data_inputs(data), "targets --out")
    written = []
    for index, path in zip(indices, paths):
        image, target = network_input(data, index, config)
        draw_targets(model, image, target, data.class_names, path, predictions, score_threshold)
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------------ FCOS


@torch.no_grad()
def draw_fcos_targets(
    model: fcos.FCOS,
    image: torch.Tensor,
    target: dict[str, Any],
    class_names: list[str],
    out_png: str | Path,
    predictions: bool = False,
    score_threshold: float = 0.3,
) -> dict[str, Any]:
    """FCOS: each positive location as a dot in its FPN level's colour, size and opacity by its centerness target;
    for each (box, level) with positives, the box in the level's colour and, from its most central location, the
    four distances (l, t, r, b) it regresses; IGNORE (crowd) locations as grey crosses. With `predictions`: the
    detections, and per level the predicted class score (max over classes) and centerness.

    Returns:
        {"path", "positives" K, "ignored", "points" (K, 2) px, "levels" (K,) level index, "centerness" (K,),
         "boxes" (K, 4) the box each regresses, "labels" (K,), "level_strides", "predictions" bool,
         "detections" (with predictions)}.
    """
    run = _run_model(model, image, target, predictions)
    boxes, labels, iscrowd, image_size, detections = run.boxes, run.labels, run.iscrowd, run.image_size, run.detections
    class_logits, _, centerness_logits, locations = run.outputs
    point_labels, point_boxes = run.targets[0][0], run.targets[1][0]  # (1, P) -> (P,), (1, P, 4) -> (P, 4)
    device = locations.points.device
    positive = point_labels >= 0  # (P,)
    points = locations.points[positive]  # (K, 2)
    # The weight `fcos_loss` gives each positive (its box loss, and its centerness target).
    centerness = fcos.centerness_targets(boxes_to_distances(points, point_boxes[positive]))  # (K,)
    level_sizes = torch.tensor(locations.level_sizes, device=device)
    point_levels = torch.repeat_interleave(torch.arange(len(locations.level_sizes), device=device), level_sizes)  # (P,)
    # Each level's stride and size range, read at its first location.
    level_starts = np.cumsum([0, *locations.level_sizes[:-1]]).tolist()
    strides = [int(locations.strides[start]) for start in level_starts]
    size_ranges = [locations.size_ranges[start].tolist() for start in level_starts]  # [low, high] px per level
    drawn: dict[str, Any] = {
        "positives": int(positive.sum()),
        "ignored": int((point_labels == fcos.IGNORE).sum()),
        "points": points.cpu().numpy(),
        "levels": point_levels[positive].cpu().numpy(),
        "centerness": centerness.cpu().numpy(),
        "boxes": point_boxes[positive].cpu().numpy(),
        "labels": point_labels[positive].cpu().numpy(),
        "level_strides": strides,
        "predictions": predictions,
    }

    picture = _picture(image)
    panel_width, panel_height = _panel_size(image_size)
    columns = len(strides)
    if predictions:
        figure = Figure(figsize=(2 * panel_width + columns * panel_width / 2, panel_height + LEGEND_INCHES), dpi=DPI, layout="constrained")
        grid = figure.add_gridspec(2, 2 + columns, width_ratios=[2, 2] + [1] * columns)
        target_axes = figure.add_subplot(grid[:, 0])
    else:
        figure = Figure(figsize=(panel_width, panel_height + LEGEND_INCHES), dpi=DPI, layout="constrained")
        target_axes = figure.add_subplot()

    _show_picture(target_axes, picture, f"FCOS targets: {drawn['positives']} positive locations")
    _draw_ground_truth(target_axes, boxes.cpu(), labels.cpu(), iscrowd.cpu(), class_names, colour_by_class=False)
    ignored = point_labels == fcos.IGNORE
    if ignored.any():
        ignored_points = locations.points[ignored].cpu().numpy()
        target_axes.scatter(ignored_points[:, 0], ignored_points[:, 1], s=10, marker="x", linewidths=0.8, color=unit_rgb(IGNORE_COLOUR))
    levels, weights, point_array = drawn["levels"], drawn["centerness"], drawn["points"]
    if len(point_array):
        colours = np.array([matplotlib.colors.to_rgba(LEVEL_COLOURS[level % len(LEVEL_COLOURS)]) for level in levels])
        colours[:, 3] = 0.25 + 0.75 * weights
        target_axes.scatter(point_array[:, 0], point_array[:, 1], s=4 + 36 * weights, c=colours, edgecolors="none")
    regressed = drawn["boxes"]
    for key in sorted({(level, tuple(box)) for level, box in zip(levels.tolist(), regressed.tolist())}):
        level, box = key
        colour = LEVEL_COLOURS[level % len(LEVEL_COLOURS)]
        members = np.flatnonzero((levels == level) & (regressed == np.array(box, dtype=regressed.dtype)).all(axis=1))
        target_axes.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, edgecolor=colour, linewidth=1.2))
        # The most central location of this box on this level, with the four distances it regresses.
        x, y = point_array[members[np.argmax(weights[members])]]
        for end_x, end_y in ((box[0], y), (x, box[1]), (box[2], y), (x, box[3])):
            target_axes.plot([x, end_x], [y, end_y], color=colour, linewidth=0.8)
        target_axes.scatter([x], [y], s=40, facecolors="none", edgecolors="white", linewidths=1.0)

    handles: list[Any] = []
    for level, (stride, (low, high)) in enumerate(zip(strides, size_ranges)):
        count = int((levels == level).sum())
        high_text = "inf" if math.isinf(high) else f"{high:g}"
        handles.append(
            Line2D([], [], marker="o", linestyle="", color=LEVEL_COLOURS[level % len(LEVEL_COLOURS)],
                   label=f"P{int(math.log2(stride))} /{stride}: max(l,t,r,b) {low:g}-{high_text} px, {count}")
        )
    if drawn["ignored"]:
        handles.append(Line2D([], [], marker="x", linestyle="", color=unit_rgb(IGNORE_COLOUR), label=f"ignore (crowd), {drawn['ignored']}"))
    figure.legend(
        handles=handles, loc="outside lower left", ncols=2, fontsize=7, frameon=False,
        title="FPN level (dot size and opacity: centerness target)", title_fontsize=7,
    )

    if predictions:
        detections_axes = figure.add_subplot(grid[:, 1])
        _show_picture(detections_axes, picture, f"FCOS detections (score >= {score_threshold:g})")
        drawn["detections"] = _draw_detections(detections_axes, detections, class_names, score_threshold)
        scores = class_logits[0].float().sigmoid().max(dim=1).values  # (P, C) -> (P,)
        centerness_map = centerness_logits[0].float().sigmoid()  # (P,)
        start = 0
        for level, ((height, width), stride) in enumerate(zip(locations.level_shapes, strides)):
            level_slice = slice(start, start + height * width)
            start += height * width
            for row, (name, values) in enumerate((("score", scores), ("centerness", centerness_map))):
                axes = figure.add_subplot(grid[row, 2 + level])
                _show_picture(axes, picture, f"P{int(math.log2(stride))} {name}", faint=True)
                level_map = values[level_slice].reshape(height, width).cpu().numpy()  # (H_l * W_l,) -> (H_l, W_l)
                extent = (0, width * stride, height * stride, 0)
                axes.imshow(level_map, cmap="viridis", vmin=0.0, vmax=1.0, alpha=0.8, extent=extent, interpolation="nearest")
                _crop(axes, image_size)
    drawn["path"] = save_figure(figure, out_png, DPI)
    return drawn


# ------------------------------------------------------------------------------------------------- CenterNet


@torch.no_grad()
def draw_centernet_targets(
    model: centernet.CenterNet,
    image: torch.Tensor,
    target: dict[str, Any],
    class_names: list[str],
    out_png: str | Path,
    predictions: bool = False,
    score_threshold: float = 0.3,
) -> dict[str, Any]:
    """CenterNet: the target heatmap (max over classes) on the image, each object's peak in its class colour, and
    the box the peak encodes (centre cell + offset target, +/- size target / 2) with its size as a cross. With
    `predictions`: the predicted heatmap (sigmoid, max over classes) beside it, with the detections.

    Returns:
        {"path", "heatmap" (C, h, w) the target heatmap, "drawn_heatmap" (h, w) its max over classes, "peaks" (M, 2)
         px, "encoded_boxes" (M, 4) px, "labels" (M,), "predictions" bool, "predicted_heatmap" and "detections"
         (with predictions)}.
    """
    run = _run_model(model, image, target, predictions)
    boxes, labels, iscrowd, image_size, detections = run.boxes, run.labels, run.iscrowd, run.image_size, run.detections
    heatmap_logits = run.outputs[0]  # (1, C, h, w)
    targets = run.targets[0]  # the image's CenterNetTargets
    output_size = tuple(heatmap_logits.shape[-2:])
    stride, width = _map_stride(run.batch_size, output_size), output_size[1]
    cells = torch.stack([targets.indices % width, targets.indices // width], dim=1).float()  # (M, 2) x, y
    centres = (cells + targets.offsets) * stride  # (M, 2) px
    half_sizes = targets.sizes * stride / 2  # (M, 2) px
    # A centre's class is the channel that is exactly 1 at its cell.
    peak_labels = targets.heatmap.flatten(1)[:, targets.indices].argmax(dim=0)  # (C, h*w) -> (C, M) -> (M,)
    heatmap = targets.heatmap.cpu()
    drawn: dict[str, Any] = {
        "heatmap": heatmap,
        "drawn_heatmap": heatmap.max(dim=0).values.numpy(),
        "peaks": centres.cpu().numpy(),
        "encoded_boxes": torch.cat([centres - half_sizes, centres + half_sizes], dim=1).cpu().numpy(),
        "labels": peak_labels.cpu().numpy(),
        "predictions": predictions,
    }

    picture = _picture(image)
    figure, axes = _panels(image_size, 2 if predictions else 1)
    _show_picture(axes[0], picture, f"CenterNet targets: heatmap (max over classes), {_count(len(centres), 'peak')}")
    _overlay_heatmap(axes[0], drawn["drawn_heatmap"], stride, image_size)
    _draw_ground_truth(axes[0], boxes.cpu(), labels.cpu(), iscrowd.cpu(), class_names, crowd_only=True)
    for (x, y), (x1, y1, x2, y2), label in zip(drawn["peaks"], drawn["encoded_boxes"], drawn["labels"].tolist()):
        colour = unit_rgb(class_colour(label))
        axes[0].add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5))
        axes[0].plot([x1, x2], [y, y], color=colour, linewidth=0.8, linestyle=":")  # the width target
        axes[0].plot([x, x], [y1, y2], color=colour, linewidth=0.8, linestyle=":")  # the height target
        axes[0].scatter([x], [y], s=30, color=colour, edgecolors="white", linewidths=0.8, zorder=3)
    present = sorted(set(drawn["labels"].tolist()))
    if present:
        handles = [Patch(color=unit_rgb(class_colour(label)), label=class_names[label]) for label in present]
        axes[0].legend(handles=handles, loc="upper right", fontsize=6, framealpha=0.75)

    if predictions:
        predicted = heatmap_logits[0].float().sigmoid().max(dim=0).values.cpu().numpy()  # (C, h, w) -> (h, w)
        drawn["predicted_heatmap"] = predicted
        _show_picture(axes[1], picture, f"predicted heatmap (sigmoid, max over classes), detections >= {score_threshold:g}")
        _overlay_heatmap(axes[1], predicted, stride, image_size)
        drawn["detections"] = _draw_detections(axes[1], detections, class_names, score_threshold)
    drawn["path"] = save_figure(figure, out_png, DPI)
    return drawn


# ------------------------------------------------------------------------------------------------- CornerNet


@torch.no_grad()
def draw_cornernet_targets(
    model: cornernet.CornerNet,
    image: torch.Tensor,
    target: dict[str, Any],
    class_names: list[str],
    out_png: str | Path,
    predictions: bool = False,
    score_threshold: float = 0.3,
) -> dict[str, Any]:
    """CornerNet: the top-left and bottom-right target heatmaps (max over classes) in two panels, each object's
    corners (cell + offset target) marked and joined by a line, one colour per object. With `predictions`: the
    predicted corner heatmaps (sigmoid, max over classes) beside them, with the decoded boxes and their corners.

    Returns:
        {"path", "top_left_heatmap", "bottom_right_heatmap" (C, h, w), "pairs" M, "top_left", "bottom_right" (M, 2)
         px, "predictions" bool, "predicted_top_left", "predicted_bottom_right" (h, w) and "detections" (with
         predictions)}.
    """
    run = _run_model(model, image, target, predictions)
    boxes, labels, iscrowd, image_size, detections = run.boxes, run.labels, run.iscrowd, run.image_size, run.detections
    top_left_outputs, bottom_right_outputs = run.outputs.top_left, run.outputs.bottom_right
    targets = run.targets[0]  # the image's CornerNetTargets
    output_size = tuple(top_left_outputs[0].shape[-2:])
    stride, width = _map_stride(run.batch_size, output_size), output_size[1]

    def corner_pixels(indices: torch.Tensor, offsets: torch.Tensor) -> np.ndarray:
        cells = torch.stack([indices % width, indices // width], dim=1).float()  # (M, 2) x, y
        return ((cells + offsets) * stride).cpu().numpy()

    top_left = corner_pixels(targets.top_left_indices, targets.top_left_offsets)
    bottom_right = corner_pixels(targets.bottom_right_indices, targets.bottom_right_offsets)
    drawn: dict[str, Any] = {
        "top_left_heatmap": targets.top_left_heatmap.cpu(),
        "bottom_right_heatmap": targets.bottom_right_heatmap.cpu(),
        "pairs": len(top_left),
        "top_left": top_left,
        "bottom_right": bottom_right,
        "predictions": predictions,
    }

    picture = _picture(image)
    figure, axes = _panels(image_size, 4 if predictions else 2)
    corner_maps = (("top-left", drawn["top_left_heatmap"], top_left), ("bottom-right", drawn["bottom_right_heatmap"], bottom_right))
    for panel, (name, heatmap, corners) in zip(axes[:2], corner_maps):
        _show_picture(panel, picture, f"CornerNet {name} target heatmap, {_count(len(corners), 'pair')}")
        _overlay_heatmap(panel, heatmap.max(dim=0).values.numpy(), stride, image_size)
        _draw_ground_truth(panel, boxes.cpu(), labels.cpu(), iscrowd.cpu(), class_names, crowd_only=True)
        for number, (start, end) in enumerate(zip(top_left, bottom_right)):
            colour = OBJECT_COLOURS[number % len(OBJECT_COLOURS)]
            size = end - start
            panel.add_patch(Rectangle(start, size[0], size[1], fill=False, edgecolor=colour, linewidth=0.6, linestyle="--", alpha=0.7))
            panel.plot([start[0], end[0]], [start[1], end[1]], color=colour, linewidth=1.2)
            own = start if name == "top-left" else end
            panel.scatter([own[0]], [own[1]], s=30, color=colour, edgecolors="white", linewidths=0.8, zorder=3)

    if predictions:
        predicted_maps = (("top-left", "top_left", top_left_outputs), ("bottom-right", "bottom_right", bottom_right_outputs))
        for panel, (name, key, outputs) in zip(axes[2:], predicted_maps):
            predicted = outputs[0][0].float().sigmoid().max(dim=0).values.cpu().numpy()  # (C, h, w) -> (h, w)
            drawn[f"predicted_{key}"] = predicted
            _show_picture(panel, picture, f"predicted {name} heatmap, detections >= {score_threshold:g}")
            _overlay_heatmap(panel, predicted, stride, image_size)
            drawn["detections"] = _draw_detections(panel, detections, class_names, score_threshold, corner=key)
    drawn["path"] = save_figure(figure, out_png, DPI)
    return drawn


# The drawing of each family, by `DetectionModel.family` (the keys of anchorfree.models.MODELS): a plain dict.
TARGET_DRAWINGS: dict[str, Callable[..., dict[str, Any]]] = {
    "fcos": draw_fcos_targets,
    "centernet": draw_centernet_targets,
    "cornernet": draw_cornernet_targets,
}


# ---------------------------------------------------------------------------------------------------- shared


@dataclass
class _ModelRun:
    """One network input through the model's contract: everything a drawing reads."""

    outputs: Any  # model.head_outputs(batch) of the padded one-image batch
    targets: Any  # model.training_targets(outputs, [target], [image_size]): what the loss would see
    boxes: torch.Tensor  # (M, 4) the target's boxes, input pixels, on the model's device
    labels: torch.Tensor  # (M,) int64
    iscrowd: torch.Tensor  # (M,) bool
    image_size: tuple[int, int]  # (H, W) of the image
    batch_size: tuple[int, int]  # (H, W) of the padded batch
    detections: dict[str, torch.Tensor] | None  # with predictions: the eval-mode forward's, on the CPU


def _run_model(model: torch.nn.Module, image: torch.Tensor, target: dict[str, Any], predictions: bool) -> _ModelRun:
    """The model's head outputs and training targets for one image (padded as the model pads) and, with
    `predictions`, its eval-mode detections. The model is put in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    boxes, labels, iscrowd = _target_tensors(target, device)
    batch, image_sizes = batch_images([image.to(device)], model.size_divisor)
    outputs = model.head_outputs(batch)
    targets = model.training_targets(outputs, [{"boxes": boxes, "labels": labels, "iscrowd": iscrowd}], image_sizes)
    detections = {name: value.cpu() for name, value in model([image.to(device)])[0].items()} if predictions else None
    return _ModelRun(outputs, targets, boxes, labels, iscrowd, image_sizes[0], tuple(batch.shape[-2:]), detections)


def _map_stride(batch_size: tuple[int, int], map_size: tuple[int, int]) -> int:
    """Input pixels per cell of a head map: the padded batch's (H, W) over the map's (the model pads to a multiple)."""
    stride = batch_size[1] // map_size[1]
    if (map_size[0] * stride, map_size[1] * stride) != tuple(batch_size):
        raise ValueError(f"a head map of {map_size[0]}x{map_size[1]} cells does not tile the {batch_size[0]}x{batch_size[1]} input")
    return stride


def _target_tensors(target: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
    labels = torch.as_tensor(target["labels"], dtype=torch.int64, device=device)
    iscrowd = target.get("iscrowd")
    if iscrowd is None:
        return boxes, labels, torch.zeros(len(boxes), dtype=torch.bool, device=device)
    iscrowd = torch.as_tensor(iscrowd, device=device).bool()
    return boxes, labels, iscrowd


def _picture(image: torch.Tensor) -> np.ndarray:
    return denormalize(image.detach().cpu().float()).permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3) uint8


def _panel_size(image_size: tuple[int, int]) -> tuple[float, float]:
    """(width, height) in inches of a panel showing an image of (H, W) pixels, its longer side PANEL_INCHES."""
    height, width = image_size
    scale = PANEL_INCHES / max(height, width)
    return max(width * scale, 1.5), max(height * scale, 1.5) + 0.3  # + the title


def _panels(image_size: tuple[int, int], count: int) -> tuple[Figure, list[Axes]]:
    panel_width, panel_height = _panel_size(image_size)
    figure = Figure(figsize=(count * panel_width, panel_height), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, count, squeeze=False)[0]
    return figure, list(axes)


def _show_picture(axes: Axes, picture: np.ndarray, title: str, faint: bool = False) -> None:
    """The image in its own pixel frame: pixel (i, j) covers [j, j + 1) x [i, i + 1), as boxes and cells do."""
    height, width = picture.shape[:2]
    shown = (picture.mean(axis=2) if faint else picture).astype(np.uint8)
    axes.imshow(shown, extent=(0, width, height, 0), cmap="gray" if faint else None, alpha=0.45 if faint else 1.0, interpolation="bilinear")
    axes.set_title(title, fontsize=6 if faint else 8)
    axes.set_axis_off()
    _crop(axes, (height, width))


def _crop(axes: Axes, image_size: tuple[int, int]) -> None:
    axes.set_xlim(0, image_size[1])
    axes.set_ylim(image_size[0], 0)


def _overlay_heatmap(axes: Axes, heatmap: np.ndarray, stride: int, image_size: tuple[int, int]) -> None:
    """An (h, w) map in [0, 1] over the image: cell (i, j) covers input pixels [j s, (j + 1) s) x [i s, (i + 1) s),
    coloured by value and as opaque as it is high (the image shows through where the map is 0)."""
    values = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    colours = matplotlib.colormaps[HEATMAP_COLOURS](values)  # (h, w, 4)
    colours[..., 3] = 0.8 * values
    height, width = values.shape
    axes.imshow(colours, extent=(0, width * stride, height * stride, 0), interpolation="nearest")
    _crop(axes, image_size)


def _draw_ground_truth(
    axes: Axes,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    iscrowd: torch.Tensor,
    class_names: list[str],
    colour_by_class: bool = True,
    crowd_only: bool = False,
) -> None:
    """Ground-truth boxes, thin and dashed (crowd boxes grey, labelled "crowd"), with their class names."""
    for box, label, crowd in zip(boxes.tolist(), labels.tolist(), iscrowd.tolist()):
        if crowd_only and not crowd:
            continue
        colour = unit_rgb(IGNORE_COLOUR) if crowd else (unit_rgb(class_colour(label)) if colour_by_class else "white")
        axes.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, edgecolor=colour, linewidth=0.7, linestyle="--"))
        axes.text(box[0], box[1], "crowd" if crowd else class_names[label], fontsize=5, color="black", va="bottom",
                  bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.5, "alpha": 0.8})


def _draw_detections(
    axes: Axes, detections: dict[str, torch.Tensor] | None, class_names: list[str], score_threshold: float, corner: str = ""
) -> int:
    """The best MAX_DRAWN_DETECTIONS detections at or above `score_threshold` as boxes in their class colour with
    "name score"; with `corner` ("top_left" or "bottom_right"), that corner marked. Returns how many were drawn."""
    if detections is None:
        return 0
    keep = torch.nonzero(detections["scores"] >= score_threshold).squeeze(1)[:MAX_DRAWN_DETECTIONS]  # sorted by score
    boxes, scores, labels = detections["boxes"][keep].tolist(), detections["scores"][keep].tolist(), detections["labels"][keep].tolist()
    for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
        colour = unit_rgb(class_colour(label))
        axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.2))
        axes.text(x1, y1, f"{class_names[label]} {score:.2f}", fontsize=5, color="black", va="bottom",
                  bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.5, "alpha": 0.8})
        if corner:
            x, y = (x1, y1) if corner == "top_left" else (x2, y2)
            axes.scatter([x], [y], s=20, marker="s", color=colour, edgecolors="white", linewidths=0.6, zorder=3)
    return len(boxes)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


