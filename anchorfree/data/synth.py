"""Synthetic shape-detection dataset used by ``anchorfree demo``.

The dataset exists so that an FCOS detector can be trained end to end on a CPU in a few
minutes while still facing the problems a real detector faces. It is built to be a fair
small detection task rather than a toy:

* Six shape classes (circle, rectangle, triangle, star, cross, ring) that differ only in
  geometry. Colours are random per object, so the network cannot shortcut the task by
  colour; a colour is only rejected when it would be nearly invisible against the
  pixels it is drawn over.
* Object sizes follow a (slightly large-skewed) log-uniform law from 16 px up to 0.8 of the
  shorter image side, so every FPN level is assigned targets and COCO small / medium / large
  AP are all measured (a third of the boxes are COCO-small, under 32 x 32 px; an object of 16 px
  is 7-11% of the image side, where COCO's small objects end relative to a 480-640 px photo).
  Non-empty images hold 2 to 10 objects.
* Objects overlap: they are drawn in order and a placement is rejected if it would leave
  any earlier object less than 80% visible. Partial occlusion is therefore common but no
  annotated object is hidden beyond recognition. Objects may also be cut by the image
  border, as long as 60% of their mask stays inside.
* Boxes are the tight box of each object's visible pixels, as COCO annotates photos (an occluded
  object's box covers what can be seen of it, not its hidden part), so box regression has an exact
  target that the image shows.
* Backgrounds mix gradients, stripes, checkerboards, blurred noise and sensor noise, and
  carry clutter (thin lines, arcs, irregular blobs) that is not any of the classes, so the
  classifier must learn to reject shape-like distractors. About 8% of images hold no
  object at all.
* Image sizes and aspect ratios vary (each side 144..224 px, aspect 0.6..1.7) to exercise
  padding and resizing in the data pipeline. Small images keep every training step cheap: the
  demo trains a detector from random weights in minutes on two CPU cores.

Every image draws from its own generator seeded by (seed, split, index), so an image does
not depend on generation order and the same seed always gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES: tuple[str, ...] = ("circle", "rectangle", "triangle", "star", "cross", "ring")
# Raised whenever a change below alters the images or boxes a seed gives: the demo's cached copy is named by it.
VERSION = 7

MIN_SIDE, MAX_SIDE = 144, 224
MIN_ASPECT, MAX_ASPECT = 0.6, 1.7
MIN_OBJECT_SIZE = 16.0  # 12 px (v6): FCOS demo mAP 0.49-0.53, AP50 0.68-0.72; 16 px (v7): 0.58 / 0.78 (docs/benchmarks.md)
MAX_OBJECT_FRACTION = 0.8  # of the shorter image side
# Exponent < 1 tilts the log-uniform size draw towards larger objects: triangles, stars and
# crosses fill less of their box than a circle, and large placements fail the occlusion rule
# more often, so a plain log-uniform draw gives ~45% small objects instead of ~35%.
SIZE_SKEW = 0.8
EMPTY_IMAGE_PROB = 0.08
# Objects attempted per non-empty image (placements that would hide an earlier object are dropped). 2-10 gave
# the demo +0.08 mAP over 1-8 in the same four minutes (more objects to learn from per image); 3-12 gave no more.
MIN_OBJECTS, MAX_OBJECTS = 2, 10
PLACEMENT_ATTEMPTS = 25
MIN_VISIBLE_FRACTION = 0.8  # share of an object's in-image mask that must stay visible (0.7: -0.09 mAP in the demo)
MIN_INSIDE_FRACTION = 0.6  # share of an object's mask that must fall inside the image
MIN_COLOUR_DISTANCE = 80.0  # RGB distance to 90% of the pixels an object covers
COLOUR_ATTEMPTS = 20
JPEG_QUALITY = 92
CLUTTER_LINES, CLUTTER_ARCS, CLUTTER_BLOBS = 3, 2, 2  # the most distractors of each kind per image
SPLIT_CODES = {"train": 0, "val": 1}
PARALLEL_MIN_IMAGES = 200  # splits this large are rendered in worker processes (smaller: not worth starting them)
MAX_WORKERS = 4

Box = tuple[float, float, float, float]


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    return points @ np.array([[cos_a, sin_a], [-sin_a, cos_a]])


def _shape_outline(class_index: int, rng: np.random.Generator) -> np.ndarray:
    """Polygon vertices (N, 2) of a polygonal shape at unit scale, centred on the origin."""
    name = CLASS_NAMES[class_index]
    if name == "rectangle":
        aspect = math.exp(rng.uniform(math.log(0.4), math.log(2.5)))
        half_w, half_h = math.sqrt(aspect) / 2, 1 / math.sqrt(aspect) / 2
        points = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
        # Axis-aligned rectangles are common in real scenes, so keep many of them unrotated.
        angle = rng.uniform(0, math.pi) if rng.random() < 0.6 else 0.0
    elif name == "triangle":
        # Jittered corner angles and a vertical stretch give varied, never degenerate triangles.
        corner_angles = np.radians([90.0, 210.0, 330.0] + rng.uniform(-15, 15, size=3))
        points = np.stack([np.cos(corner_angles), np.sin(corner_angles) * rng.uniform(0.6, 1.4)], axis=1)
        angle = rng.uniform(0, 2 * math.pi)
    elif name == "star":
        # Sharp points and chunky arms: a small star and a small cross must still look different (the demo's worst
        # confusion with inner ratios 0.35-0.55 and arms 0.22-0.35 of their length).
        inner_ratio = rng.uniform(0.3, 0.45)
        radii = np.tile([1.0, inner_ratio], 5)
        point_angles = np.arange(10) * math.pi / 5
        points = np.stack([radii * np.cos(point_angles), radii * np.sin(point_angles)], axis=1)
        angle = rng.uniform(0, 2 * math.pi)
    elif name == "cross":
        half_x, half_y = rng.uniform(0.6, 1.6), 1.0
        half_t = rng.uniform(0.3, 0.4) * min(half_x, half_y)
        points = np.array([
            [-half_t, -half_y], [half_t, -half_y], [half_t, -half_t], [half_x, -half_t],
            [half_x, half_t], [half_t, half_t], [half_t, half_y], [-half_t, half_y],
            [-half_t, half_t], [-half_x, half_t], [-half_x, -half_t], [-half_t, -half_t],
        ])
        angle = rng.uniform(0, math.pi) if rng.random() < 0.6 else 0.0
    else:
        raise ValueError(f"{name!r} is not a polygonal shape")
    return _rotate(points, angle)


def _shape_mask(class_index: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of one object whose larger side is about `size` px, cropped to its tight box."""
    name = CLASS_NAMES[class_index]
    if name in ("circle", "ring"):
        diameter = max(size, MIN_OBJECT_SIZE)
        canvas_side = int(math.ceil(diameter)) + 2
        canvas = Image.new("L", (canvas_side, canvas_side), 0)
        draw = ImageDraw.Draw(canvas)
        draw.ellipse([1, 1, diameter, diameter], fill=255)
        if name == "ring":
            # Keep the band at least ~1.5 px wide so tiny rings stay rings after JPEG.
            hole = min(diameter * rng.uniform(0.45, 0.7), diameter - 3.0)
            margin = (diameter - hole) / 2
            draw.ellipse([1 + margin, 1 + margin, diameter - margin, diameter - margin], fill=0)
    else:
        points = _shape_outline(class_index, rng)
        extent = points.max(axis=0) - points.min(axis=0)
        points = (points - points.min(axis=0)) * (size / extent.max()) + 1.0
        canvas_w, canvas_h = (int(math.ceil(v)) + 2 for v in points.max(axis=0))
        canvas = Image.new("L", (canvas_w, canvas_h), 0)
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in points.tolist()], fill=255)
    mask = np.asarray(canvas) > 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def _texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A (H, W) float32 field in [0, 1]: stripes, checkerboard or blurred noise."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    kind = rng.integers(3)
    if kind == 0:
        period = rng.uniform(6, 40)
        wave = np.sin(along * (2 * math.pi / period))
        return (wave > 0).astype(np.float32) if rng.random() < 0.5 else 0.5 + 0.5 * wave
    if kind == 1:
        cell = rng.uniform(6, 40)
        across = -xs * math.sin(angle) + ys * math.cos(angle)
        return ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
    # Upsampling coarse noise is a cheap stand-in for a Gaussian blur of fine noise.
    cell = int(rng.integers(4, 33))
    coarse = rng.random((height // cell + 2, width // cell + 2), dtype=np.float32)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Float32 (H, W, 3) background: a linear gradient, optionally blended with a texture."""
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.arange(width, dtype=np.float32)[None, :] * math.cos(angle)
            + np.arange(height, dtype=np.float32)[:, None] * math.sin(angle))
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    start, end = _random_colour(rng), _random_colour(rng)
    image = start + ramp[..., None] * (end - start)
    if rng.random() < 0.6:
        weight = _texture(height, width, rng)[..., None] * rng.uniform(0.1, 0.3)
        image = image * (1 - weight) + _random_colour(rng) * weight
    return image


def _draw_clutter(image: Image.Image, rng: np.random.Generator) -> None:
    """Draw distractors that belong to no class: thin lines, short arcs and irregular blobs."""
    width, height = image.size
    draw = ImageDraw.Draw(image)

    def colour() -> tuple[int, int, int]:
        return tuple(int(c) for c in rng.integers(0, 256, size=3))

    for _ in range(rng.integers(0, CLUTTER_LINES + 1)):
        x1, x2 = rng.uniform(0, width, size=2)
        y1, y2 = rng.uniform(0, height, size=2)
        draw.line([(x1, y1), (x2, y2)], fill=colour(), width=int(rng.integers(1, 4)))
    for _ in range(rng.integers(0, CLUTTER_ARCS + 1)):
        radius = rng.uniform(8, 0.4 * min(width, height))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        start = rng.uniform(0, 360)
        # Spans stay below 200 degrees so an arc never passes for a ring.
        draw.arc([cx - radius, cy - radius, cx + radius, cy + radius], start, start + rng.uniform(30, 200),
                 fill=colour(), width=int(rng.integers(1, 4)))
    for _ in range(rng.integers(0, CLUTTER_BLOBS + 1)):
        # Jittered but evenly spread vertices with random radii: lumpy blobs. Fully random angles
        # leave a few dominant vertices and the blob reads as a triangle, i.e. a false negative.
        vertex_count = int(rng.integers(6, 11))
        spacing = 2 * math.pi / vertex_count
        vertex_angles = (np.arange(vertex_count) + rng.uniform(-0.3, 0.3, size=vertex_count)) * spacing
        radii = rng.uniform(3, 20) * rng.uniform(0.4, 1.0, size=vertex_count)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        blob = np.stack([cx + radii * np.cos(vertex_angles), cy + radii * np.sin(vertex_angles)], axis=1)
        draw.polygon([tuple(p) for p in blob.tolist()], fill=colour())


def _contrasting_colour(under: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour that stands out from the (N, 3) pixels it will cover.

    Comparing with the mean alone is not enough on a gradient: the colour can match one end
    of it, so most of the covered pixels (not just their mean) must be far from the colour.
    """
    sample = under[:: max(1, len(under) // 512)].astype(np.float32)
    best_colour, best_score = _random_colour(rng), -1.0
    for _ in range(COLOUR_ATTEMPTS):
        candidate = _random_colour(rng)
        score = float(np.quantile(np.linalg.norm(sample - candidate, axis=1), 0.1))
        if score >= MIN_COLOUR_DISTANCE:
            return candidate
        if score > best_score:
            best_colour, best_score = candidate, score
    return best_colour


def render_image(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, Box]]]:
    """Render one image (H, W, 3) uint8 RGB and its objects.

    Objects come as (class_index 0-based, (x1, y1, x2, y2)) in pixels. Boxes are tight on each
    object's visible pixels (what is left of it inside the image once later objects are drawn over it).
    """
    while True:
        width, height = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
        if MIN_ASPECT <= width / height <= MAX_ASPECT:
            break
    canvas = Image.fromarray(np.clip(_background(height, width, rng), 0, 255).astype(np.uint8))
    _draw_clutter(canvas, rng)
    image = np.array(canvas)

    # owner[y, x] is the index of the object visible at that pixel, -1 where none is.
    owner = np.full((height, width), -1, dtype=np.int32)
    visible_pixels: list[int] = []
    full_pixels: list[int] = []
    classes: list[int] = []  # of the objects placed, in drawing order
    object_count = 0 if rng.random() < EMPTY_IMAGE_PROB else int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    log_min, log_max = math.log(MIN_OBJECT_SIZE), math.log(MAX_OBJECT_FRACTION * min(width, height))
    for _ in range(object_count):
        class_index = int(rng.integers(len(CLASS_NAMES)))
        log_size = log_min + (log_max - log_min) * rng.random() ** SIZE_SKEW
        mask = _shape_mask(class_index, math.exp(log_size), rng)
        mask_h, mask_w = mask.shape
        mask_total = int(mask.sum())
        for _ in range(PLACEMENT_ATTEMPTS):
            left = int(rng.integers(-mask_w // 2, width - mask_w // 2 + 1))
            top = int(rng.integers(-mask_h // 2, height - mask_h // 2 + 1))
            x1, y1 = max(left, 0), max(top, 0)
            x2, y2 = min(left + mask_w, width), min(top + mask_h, height)
            inside = mask[y1 - top : y2 - top, x1 - left : x2 - left]
            inside_total = int(inside.sum())
            if inside_total < MIN_INSIDE_FRACTION * mask_total:
                continue
            owner_region = owner[y1:y2, x1:x2]
            covered = np.bincount(owner_region[inside] + 1, minlength=len(classes) + 1)[1:]
            remaining = np.asarray(visible_pixels, dtype=np.int64) - covered
            if np.any(remaining < MIN_VISIBLE_FRACTION * np.asarray(full_pixels, dtype=np.float64)):
                continue
            image_region = image[y1:y2, x1:x2]
            colour = _contrasting_colour(image_region[inside], rng)
            image_region[inside] = np.round(colour).astype(np.uint8)
            owner_region[inside] = len(classes)
            visible_pixels = [int(v) for v in remaining] + [inside_total]
            full_pixels.append(inside_total)
            classes.append(class_index)
            break
    # Boxes once every object is drawn: tight on the pixels each object still owns.
    objects: list[tuple[int, Box]] = []
    for index, class_index in enumerate(classes):
        rows, cols = np.nonzero(owner == index)
        box = (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
        objects.append((class_index, box))

    if rng.random() < 0.6:
        # Sensor noise over objects too, so object interiors are not perfectly flat.
        noise = rng.standard_normal((height, width, 3), dtype=np.float32) * rng.uniform(2, 10)
        image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return image, objects


def _write_image(root: Path, split: str, index: int, seed: int) -> tuple[str, int, int, list[tuple[int, Box]]]:
    """Render and save image `index` of a split; returns (file name, width, height, objects)."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    pixels, objects = render_image(rng)
    file_name = f"{split}/{index:06d}.jpg"
    Image.fromarray(pixels).save(root / "images" / file_name, quality=JPEG_QUALITY)
    height, width = pixels.shape[:2]
    return file_name, width, height, objects


def _write_split(root: Path, split: str, count: int, seed: int) -> None:
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    indices = range(count)
    workers = min(os.cpu_count() or 1, MAX_WORKERS)
    if count >= PARALLEL_MIN_IMAGES and workers > 1:
        # Each image has its own generator, so the files are the same however the work is shared out; the
        # demo counts generation in its five minutes, and two cores halve it.
        with ProcessPoolExecutor(workers) as pool:
            rendered = list(pool.map(_write_image, repeat(root), repeat(split), indices, repeat(seed), chunksize=32))
    else:
        rendered = [_write_image(root, split, index, seed) for index in indices]
    for index, (file_name, width, height, objects) in enumerate(rendered):
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for class_index, (x1, y1, x2, y2) in objects:
            box_w, box_h = x2 - x1, y2 - y1
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": class_index + 1,
                "bbox": [x1, y1, box_w, box_h], "area": box_w * box_h, "iscrowd": 0,
            })
    coco = {
        "info": {"description": "anchorfree synthetic shapes", "seed": seed, "split": split},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": index + 1, "name": name, "supercategory": "shape"}
            for index, name in enumerate(CLASS_NAMES)
        ],
    }
    with open(root / f"instances_{split}.json", "w", encoding="utf-8") as handle:
        json.dump(coco, handle, indent=None, separators=(",", ":"), sort_keys=True)


def write_synthetic_dataset(
    out_dir: str | Path, num_train: int = 800, num_val: int = 200, seed: int = 0
) -> Path:
    """Write images + `instances_train.json` + `instances_val.json` (COCO detection JSON) under out_dir.

    Returns out_dir. Writes into a temporary sibling folder and renames it into place at the end,
    so an interrupted run never leaves a half-written dataset at out_dir. Raises FileExistsError
    if out_dir exists and is not empty.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} already exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    finished = False
    try:
        # mkdtemp creates a private (0700) folder; the dataset should get ordinary permissions.
        staging.chmod(0o755)
        _write_split(staging, "train", num_train, seed)
        _write_split(staging, "val", num_val, seed)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above; os.replace cannot overwrite a directory
        os.replace(staging, out_dir)
        finished = True
    finally:
        if not finished:
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir
