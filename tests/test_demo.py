"""The demo's recipe: it learns from scratch (a planted easy object is found, the loss falls), and the moving
average of the weights is what `best` holds and what a resume continues."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

import anchorfree
from anchorfree import api
from anchorfree.checkpoint import load_checkpoint
from anchorfree.config import get_preset
from anchorfree.data.synth import CLASS_NAMES, _shape_mask
from anchorfree.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from anchorfree.models import build_model

# The demo preset's own model and recipe, narrowed so that a run takes about a second.
SMALL_DEMO = {"model__backbone_width": 0.25, "model__fcos__fpn_channels": 32, "model__fcos__norm_groups": 8}


def planted_image(class_index: int, size: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One large synthetic shape on a plain grey background: a normalised (3, size, size) image and its (1, 4) box."""
    rng = np.random.default_rng(seed)
    mask = _shape_mask(class_index, 0.5 * size, rng)
    height, width = mask.shape
    top, left = (size - height) // 2, (size - width) // 2
    pixels = np.full((size, size, 3), 110, dtype=np.uint8)
    pixels[top : top + height, left : left + width][mask] = (230, 60, 40)
    image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255  # (H, W, 3) -> (3, H, W)
    image = (image - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    return image, torch.tensor([[left, top, left + width, top + height]], dtype=torch.float32)


def test_the_demo_model_from_scratch_finds_a_planted_object_after_a_short_overfit() -> None:
    torch.manual_seed(0)
    config = get_preset("fcos_demo")
    assert config.model.backbone == "csp_small" and not config.model.pretrained_backbone
    config.model.backbone_width, config.model.fcos.fpn_channels, config.model.fcos.norm_groups = 0.25, 32, 8
    model = build_model(config.model, len(CLASS_NAMES))
    classes = [CLASS_NAMES.index(name) for name in ("circle", "star", "cross", "triangle")]
    planted = [planted_image(class_index, seed=index) for index, class_index in enumerate(classes)]
    images = torch.stack([image for image, _ in planted])
    targets = [{"boxes": box, "labels": torch.tensor([label])} for (_, box), label in zip(planted, classes)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
    model.train()
    losses = []
    for _ in range(60):
        total = sum(model(images, targets).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < 0.3 * losses[0]
    model.eval()
    with torch.no_grad():
        detections = model(images)
    for detection, target in zip(detections, targets):
        assert len(detection["boxes"]) > 0
        assert detection["labels"][0] == target["labels"][0]
        assert box_iou(detection["boxes"][:1], target["boxes"]).item() > 0.5


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_shortened_demo_lowers_its_loss_and_evaluates_the_weights_average(
    tiny_dataset: Path, tiny_overrides: Callable[..., dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "synthetic_dataset_path", lambda: tiny_dataset)
    overrides = tiny_overrides(tmp_path, **SMALL_DEMO, train__epochs=8, train__eval_every=8, train__warmup_iters=4)
    for key in ("model.backbone", "model.fcos.head_convs", "model.pretrained_backbone"):
        overrides.pop(key)  # the demo preset's own
    run_folder, result = api.demo("fcos", overrides, progress=False)
    rows = _rows(run_folder)
    first, last = (sum(float(row[key]) for key in row if key.startswith("loss/")) for row in (rows[0], rows[-1]))
    assert last < 0.7 * first
    assert math.isfinite(result.stats["mAP"]) and 0.0 <= result.stats["AP50"] <= 1.0
    best, saved_last = load_checkpoint(run_folder / "weights" / "best.safetensors"), load_checkpoint(run_folder / "weights" / "last.safetensors")
    assert best.metadata["config"]["model"]["backbone"] == "csp_small"
    average = saved_last.extra["ema_state"]
    # `best` (the last epoch here: the only evaluation) holds the average, not the trained weights.
    for name, tensor in best.model_state.items():
        assert torch.equal(tensor, average[f"module.{name}"]), name
    assert any(not torch.equal(tensor, saved_last.model_state[name]) for name, tensor in best.model_state.items() if tensor.is_floating_point())
    assert len(sorted((run_folder / "predictions").glob("*.jpg"))) == 8


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
