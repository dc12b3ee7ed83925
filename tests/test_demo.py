"""The demo's recipe: from scratch it learns an easy scene (the loss falls by a clear margin; objects at places
no training image had them are found, boxed and classed), the moving average of the weights is what `best`
holds, and a resume continues that average."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

import anchorfree
from anchorfree import api
from anchorfree.checkpoint import load_checkpoint
from anchorfree.data.synth import CLASS_NAMES, _shape_mask

# The easy scene: one large shape per image, on a plain grey background, each class in its own colour.
EASY_CLASSES = ("circle", "cross")  # in CLASS_NAMES order, so the contiguous labels are 0 and 1 in this order
COLOURS = {"circle": (230, 60, 40), "cross": (40, 200, 80)}
BACKGROUND = (110, 110, 110)
IMAGE_SIDE = 64
OBJECT_SIDE = 32  # px, the shape's larger side: half the image
# Top-left corners of the training objects: x and y each in 2, 6, ..., 30 (64 places, every class at each).
TRAIN_CORNERS = range(2, IMAGE_SIDE - OBJECT_SIDE, 4)
# The validation images: (class, left, top) with left and top multiples of 4, so never a training place.
VAL_SCENES = [("circle", 4, 8), ("cross", 8, 16), ("circle", 12, 24), ("cross", 16, 4)]
# The demo preset's own model and recipe (its warmup included: a shorter one often leaves the classifier blind to
# the class), narrowed and with its input shrunk to the images' size so that the run takes seconds: 128 images
# in batches of 8 for 6 epochs, 96 steps. bf16 off so that the run is the same on every CPU.
SHORT_DEMO = {
    "model.backbone_width": 0.25,
    "model.fcos.fpn_channels": 32,
    "model.fcos.norm_groups": 8,
    "data.train_sizes": [IMAGE_SIDE],
    "data.val_size": IMAGE_SIDE,
    "data.max_size": IMAGE_SIDE,
    "train.batch_size": 8,
    "train.epochs": 6,
    "train.eval_every": 6,
    "train.amp": False,
    "train.seed": 0,
}

Planted = tuple[np.ndarray, list[float], int]  # (H, W, 3) uint8 pixels, the box (x1, y1, x2, y2), the label


def easy_image(name: str, left: int, top: int, seed: int) -> tuple[np.ndarray, list[float]]:
    """A (IMAGE_SIDE, IMAGE_SIDE, 3) uint8 image holding one shape with its top-left at (left, top), and the
    shape's tight box (x1, y1, x2, y2)."""
    mask = _shape_mask(CLASS_NAMES.index(name), OBJECT_SIDE, np.random.default_rng(seed))
    height, width = mask.shape
    pixels = np.full((IMAGE_SIDE, IMAGE_SIDE, 3), BACKGROUND, dtype=np.uint8)
    pixels[top : top + height, left : left + width][mask] = COLOURS[name]
    return pixels, [float(left), float(top), float(left + width), float(top + height)]


def write_split(root: Path, split: str, scenes: list[tuple[str, int, int]]) -> list[Planted]:
    """Write one JPEG per (class name, left, top) scene under `root/images/<split>/` and their COCO JSON,
    `root/instances_<split>.json`, with EASY_CLASSES as its categories; returns each image as `Planted`."""
    (root / "images" / split).mkdir(parents=True)
    images, annotations, written = [], [], []
    for image_id, (name, left, top) in enumerate(scenes, start=1):
        pixels, box = easy_image(name, left, top, seed=image_id)
        file_name = f"{split}/{image_id:03d}.jpg"
        Image.fromarray(pixels).save(root / "images" / file_name, quality=95)
        images.append({"id": image_id, "file_name": file_name, "width": IMAGE_SIDE, "height": IMAGE_SIDE})
        x1, y1, x2, y2 = box
        annotations.append({
            "id": image_id, "image_id": image_id, "category_id": CLASS_NAMES.index(name) + 1,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
        })
        written.append((pixels, box, EASY_CLASSES.index(name)))
    categories = [{"id": CLASS_NAMES.index(name) + 1, "name": name} for name in EASY_CLASSES]
    (root / f"instances_{split}.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return written


@pytest.fixture
def easy_dataset(tmp_path: Path) -> tuple[Path, list[Planted]]:
    """128 training images (each class at each of the 64 training places) and the 4 VAL_SCENES; returns the
    dataset folder and the validation images."""
    root = tmp_path / "easy"
    write_split(root, "train", [(name, left, top) for left in TRAIN_CORNERS for top in TRAIN_CORNERS for name in EASY_CLASSES])
    return root, write_split(root, "val", VAL_SCENES)


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_shortened_demo_learns_the_easy_scene_and_evaluates_the_weights_average(
    easy_dataset: tuple[Path, list[Planted]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, planted = easy_dataset
    monkeypatch.setattr(api, "synthetic_dataset_path", lambda: dataset)
    run_folder, result = anchorfree.demo("fcos", {**SHORT_DEMO, "train.project": str(tmp_path / "runs")}, progress=False)

    # The training loss (the sum of its terms, averaged over an epoch) falls by a clear margin: below half of the
    # first epoch's (it ends near 0.37 of it).
    history = rows(run_folder)
    assert len(history) == SHORT_DEMO["train.epochs"]
    first, last = (sum(float(row[key]) for key in row if key.startswith("loss/")) for row in (history[0], history[-1]))
    assert last < 0.5 * first, (first, last)

    # The validation objects, at places no training image had them, are found: AP50 at least 0.9 (it reaches 1.0).
    assert result.stats["AP50"] >= 0.9, result.stats

    # Each planted validation image, predicted through the public API at its default score threshold (0.3): the
    # most confident detection has the object's class and overlaps its box at IoU >= 0.5 (it scores about 0.8,
    # overlaps at 0.65 or more, and the other class scores far lower on the object).
    detector = anchorfree.load(run_folder / "weights" / "best.safetensors")
    assert detector.config.model.backbone == "csp_small" and not detector.config.model.pretrained_backbone
    assert detector.class_names == list(EASY_CLASSES)
    for index, (pixels, box, label) in enumerate(planted):
        detections = detector.predict(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())  # (H, W, 3) -> (3, H, W)
        assert len(detections["boxes"]) > 0, f"nothing found in validation image {index}"
        best = int(detections["scores"].argmax())
        assert int(detections["labels"][best]) == label, (index, detections)
        assert detections["names"][best] == EASY_CLASSES[label]
        assert box_iou(detections["boxes"][best : best + 1], torch.tensor([box])).item() >= 0.5, (index, box, detections)

    # `best` (the last epoch here: the only evaluation) holds the weights' average, not the trained weights.
    best_checkpoint, last_checkpoint = (load_checkpoint(run_folder / "weights" / f"{name}.safetensors") for name in ("best", "last"))
    average = last_checkpoint.extra["ema_state"]
    for name, tensor in best_checkpoint.model_state.items():
        assert torch.equal(tensor, average[f"module.{name}"]), name
    assert any(
        not torch.equal(tensor, last_checkpoint.model_state[name]) for name, tensor in best_checkpoint.model_state.items() if tensor.is_floating_point()
    )
    assert len(sorted((run_folder / "predictions").glob("*.jpg"))) == len(planted)


@pytest.mark.slow
def test_resume_restores_the_weights_average(tiny_overrides: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    # No validation split: nothing to evaluate, so the three short runs cost only their training steps.
    constant_lr = {"train__warmup_iters": 0, "train__final_lr_ratio": 1.0, "train__ema_decay": 0.9, "data__val": ""}
    straight = anchorfree.train("fcos_demo", tiny_overrides(tmp_path / "a", train__epochs=2, **constant_lr), progress=False)
    first = anchorfree.train("fcos_demo", tiny_overrides(tmp_path / "b", train__epochs=1, **constant_lr), progress=False)
    resumed = anchorfree.train(resume=first, overrides={"train.epochs": 2}, progress=False)
    expected = load_checkpoint(straight / "weights" / "last.safetensors").extra["ema_state"]
    actual = load_checkpoint(resumed / "weights" / "last.safetensors").extra["ema_state"]
    assert int(actual["n_averaged"]) == int(expected["n_averaged"]) == 8  # every step of both epochs
    for name, tensor in expected.items():
        assert torch.allclose(actual[name].float(), tensor.float(), atol=1e-6), name
